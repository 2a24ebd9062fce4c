"""Quantised model files (metasd_dgl/store/quantize.py, store/export.py): the per-row arithmetic against
hand-computed values, int4 packing, parts and sizes as the layout says, ranking from the file equal to
ranking brute-force dequantised tables, and every malformed or crafted file refused with one error
naming it, before anything large is read."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metasd_dgl.data.fingerprint import dataset_fingerprint
from metasd_dgl.data.preprocess import load_processed, preprocess
from metasd_dgl.errors import CheckpointError, UserError
from metasd_dgl.evaluate.ranking import encode_tables, metrics, rank_split
from metasd_dgl.model.predictor import build_model
from metasd_dgl.store.export import file_tables, read_model, run_meta, write_model
from metasd_dgl.store.quantize import pack_int4, quantize_rows, unpack_int4

REPO = Path(__file__).resolve().parents[1]
CFG = SimpleNamespace(model=SimpleNamespace(encoder="kge", decoder="complex", dim=4),
                      rgcn=SimpleNamespace(num_layers=2, num_bases=4, decomposition="basis"),
                      prune=SimpleNamespace(structure="element", rate=0.5))


def dequantize_rows(q: np.ndarray, s: np.ndarray, dtype=np.float32) -> np.ndarray:
    """q * s per row, the product in float64 (as the reader computes it)."""
    return (q.astype(np.float64) * s.astype(np.float64)[:, None]).astype(dtype)


def _parts(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


# ------------------------------------------------------------------ arithmetic
def test_int8_hand_computed_rows():
    # s = max|x| / 127: 1.0 for the first row (exact), 1 (any positive scale) for the zero row
    x = np.array([[127.0, -63.5, 31.75, -62.5, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    q, s = quantize_rows(x, "int8")
    assert s.dtype == np.float16 and s.tolist() == [1.0, 1.0]
    # round half to even: -63.5 -> -64, -62.5 -> -62; 31.75 -> 32
    assert q.tolist() == [[127, -64, 32, -62, 0], [0, 0, 0, 0, 0]]
    assert dequantize_rows(q, s).tolist() == [[127.0, -64.0, 32.0, -62.0, 0.0], [0.0] * 5]


def test_int4_hand_computed_row():
    x = np.array([[7.0, -3.5, 2.5, 1.2, -7.0]], dtype=np.float32)  # s = 7 / 7 = 1
    q, s = quantize_rows(x, "int4")
    assert s.tolist() == [1.0] and q.tolist() == [[7, -4, 2, 1, -7]]


@pytest.mark.parametrize("scheme,qmax", [("int8", 127), ("int4", 7)])
def test_error_bound_per_row(scheme, qmax):
    gen = np.random.default_rng(0)
    x = (gen.standard_normal((200, 33)) * gen.uniform(1e-4, 10.0, (200, 1))).astype(np.float32)
    x[7] = 0.0
    q, s = quantize_rows(x, scheme)
    assert np.abs(q).max() <= qmax and q.dtype == np.int8
    exact = np.abs(x).max(1).astype(np.float64) / qmax  # fp16 scales, rounded up: within one fp16 step
    exact[7] = 1.0  # the zero row's scale
    assert (s.astype(np.float64) >= exact).all()
    np.testing.assert_allclose(s.astype(np.float64), exact, rtol=2.0 ** -10)
    half = s.astype(np.float64)[:, None] / 2
    # |x - q s| <= s / 2 per element (exact product in float64)
    err64 = np.abs(x.astype(np.float64) - dequantize_rows(q, s, np.float64))
    assert (err64 <= half * (1 + 1e-12)).all(), float((err64 / np.maximum(half, 1e-300)).max())
    # the float32 tables a model reads: s / 2 plus the product's float32 rounding
    err32 = np.abs(x.astype(np.float64) - dequantize_rows(q, s).astype(np.float64))
    assert (err32 <= half + np.abs(x) * 2.0 ** -23).all()
    assert (dequantize_rows(q, s)[7] == 0).all()


def test_int4_packing_known_bytes():
    assert pack_int4(np.array([-8, 7])).tolist() == [0xF0]  # -8 -> nibble 0 (low), 7 -> nibble 15 (high)
    assert pack_int4(np.array([1])).tolist() == [0x09]  # odd count: a zero high nibble
    assert pack_int4(np.array([0, 0, -1])).tolist() == [0x88, 0x07]
    assert unpack_int4(np.array([0xF0, 0x09], dtype=np.uint8), 3).tolist() == [-8, 7, 1]
    with pytest.raises(ValueError):
        pack_int4(np.array([8]))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 17, 1001])
def test_int4_packing_round_trip_exact(n):
    values = np.random.default_rng(n).integers(-8, 8, n).astype(np.int8)
    packed = pack_int4(values)
    assert len(packed) == (n + 1) // 2
    assert np.array_equal(unpack_int4(packed, n), values)


def _brute(x: np.ndarray, qmax: int) -> np.ndarray:
    """q * s per row of (rows, w) ``x``, computed here: s = max|x| / qmax rounded up to fp16, q = round(x / s)."""
    x = x.astype(np.float64)
    exact = np.where(np.abs(x).max(1) > 0, np.abs(x).max(1) / qmax, 1.0)
    s16 = exact.astype(np.float16)
    s16 = np.where(s16.astype(np.float64) < exact, np.nextafter(s16, np.float16(np.inf)), s16)
    s = s16.astype(np.float64)[:, None]
    return np.clip(np.rint(x / s), -qmax, qmax) * s


@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (7, 9), (2, 3, 5)])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_file_round_trip_within_half_a_step(tmp_path, shape, scheme):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    write_model({"w": x}, tmp_path / "w.safetensors", scheme, {"role": "teacher"})
    qmax = {"int8": 127, "int4": 7}[scheme]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    want = {"int8": ("I8", shape), "int4": ("U8", ((x.numel() + 1) // 2,))}[scheme]
    assert _parts(tmp_path / "w.safetensors") == {"w": want, "w::scale": ("F16", (rows,))}
    params, _, _ = read_model(tmp_path / "w.safetensors")
    ref = _brute(x.reshape(-1, shape[-1]).numpy(), qmax)
    assert np.allclose(params["w"].numpy().reshape(-1, shape[-1]), ref, rtol=2 ** -23, atol=0)
    s = np.abs(ref).max(1, keepdims=True) / qmax  # (q_max * s) / qmax: the scale
    assert (np.abs(params["w"].numpy().reshape(-1, shape[-1]) - x.reshape(-1, shape[-1]).numpy())
            <= s / 2 * (1 + 1e-6) + 1e-7).all()


def test_teacher_parts_and_sizes(tmp_path):
    gen = torch.Generator().manual_seed(0)
    params = {"encoder.entity": torch.randn(5, 6, generator=gen), "encoder.relation": torch.randn(4, 6, generator=gen),
              "encoder.layers.0.bias": torch.randn(6, generator=gen)}  # 1-D: kept fp32 under int8/int4
    # data bytes by hand: values + fp16 scales (one per row: 5 + 4) + the 1-D tensor's 6 floats
    expected = {"fp32": 4 * 54 + 24, "fp16": 2 * 54 + 12, "int8": 30 + 24 + 2 * 9 + 24, "int4": 15 + 12 + 2 * 9 + 24}
    for scheme, data_bytes in expected.items():
        path = tmp_path / f"t.{scheme}.safetensors"
        size = write_model(params, path, scheme, {"role": "teacher"})
        raw = path.read_bytes()
        header = int.from_bytes(raw[:8], "little")  # safetensors: u64 header length, JSON header, data
        assert size == len(raw) == 8 + header + data_bytes, scheme
        assert json.loads(json.loads(raw[8:8 + header])["__metadata__"]["metasd"])["scheme"] == scheme


def test_student_parts_by_layout(tmp_path):
    w = torch.randn(40, 10, generator=torch.Generator().manual_seed(1))
    cols = torch.tensor([True, False, False, True, False, False, False, False, False, False]).expand(40, 10).clone()
    dense = torch.rand(40, 10, generator=torch.Generator().manual_seed(3)) < 0.5  # bitmap (50) < int32 list
    nnz = int(dense.sum())
    for scheme, values in (("fp32", ("F32", (40, 2))), ("int8", ("I8", (40, 2))), ("int4", ("U8", (40,)))):
        path = tmp_path / f"s.{scheme}.safetensors"
        write_model({"c": w * cols, "e": w * dense}, path, scheme, {"role": "student"}, {"c": cols, "e": dense})
        parts = _parts(path)
        assert parts["c"] == values and parts["c::index"] == ("U8", (2,)) and parts["e::index"] == ("U8", (50,))
        assert parts["e"] == {"fp32": ("F32", (nnz,)), "int8": ("I8", (nnz,)), "int4": ("U8", ((nnz + 1) // 2,))}[scheme]
        params, masks, _ = read_model(path)
        assert torch.equal(masks["c"], cols) and torch.equal(masks["e"], dense)
        for name, m in (("c", cols), ("e", dense)):
            if scheme == "fp32":
                assert torch.equal(params[name], w * m)
                continue
            assert (params[name][~m] == 0).all()
            # brute force per row over the kept values only
            qmax = {"int8": 127, "int4": 7}[scheme]
            for r in range(40):
                kept = (w[r][m[r]]).numpy()
                if kept.size:
                    np.testing.assert_allclose(params[name][r][m[r]].numpy(), _brute(kept[None, :], qmax)[0],
                                               rtol=2 ** -22, atol=0)


# --------------------------------------------------------- ranking from the file
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "data"
    preprocess(str(REPO / "datasets" / "toy"), out)
    return load_processed(out)


def _toy_model(data):
    return build_model("kge", "complex", data.num_entities, data.num_relations, 4, init_scale=0.5,
                       generator=torch.Generator().manual_seed(5))


def _write(path, model, data, scheme="int8", **meta):
    write_model({n: p.detach() for n, p in model.named_parameters()}, path, scheme,
                {**run_meta(CFG, data, "teacher"), **meta})
    return path


@pytest.mark.parametrize("scheme", ["int8", "int4", "fp16"])
def test_ranking_from_file_equals_ranking_dequantised_tables(tmp_path, toy, scheme):
    model = _toy_model(toy)
    params = {n: p.detach() for n, p in model.named_parameters()}
    _, tables, _ = file_tables(_write(tmp_path / "m.safetensors", model, toy, scheme), CFG, toy, model)
    from_file = rank_split(model, toy.test, toy.num_relations, toy.filter, tables=tables)
    ref = {n: torch.from_numpy((p.numpy().astype(np.float16) if scheme == "fp16" else
                                _brute(p.numpy(), {"int8": 127, "int4": 7}[scheme])).astype(np.float32))
           for n, p in params.items()}
    ranks = rank_split(model, toy.test, toy.num_relations, toy.filter, tables=encode_tables(model, None, ref))
    a, b = metrics(from_file.both()), metrics(ranks.both())
    for key in ("mrr", "mr", "hits@1", "hits@3", "hits@10"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert not torch.equal(tables[0], params["encoder.entity"])  # it did read the quantised weights


def test_fp32_file_ranks_exactly_like_the_model(tmp_path, toy):
    model = _toy_model(toy)
    m, tables, _ = file_tables(_write(tmp_path / "m.safetensors", model, toy, "fp32"), CFG, toy, model)
    a = rank_split(m, toy.valid, toy.num_relations, toy.filter, tables=tables)
    b = rank_split(model, toy.valid, toy.num_relations, toy.filter)
    assert torch.equal(a.both(), b.both())


# ------------------------------------------------------------------ bad files
def _craft(path, src, edit_tensors=lambda t: None, edit_meta=lambda m: None):
    """A copy of model file ``src`` with its tensors and metadata edited, re-saved as valid safetensors
    (safetensors' own checks pass: only this project's can refuse it)."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    tensors = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["metasd"])
    edit_tensors(tensors)
    edit_meta(meta)
    save_file(tensors, str(path), metadata={"metasd": json.dumps(meta)})
    return path


def _set_scale(value):
    def edit(t):
        t["encoder.entity::scale"][3] = value
    return edit


@pytest.mark.parametrize("value", [float("nan"), 0.0, -0.5, float("inf")])
def test_bad_scales_are_refused(tmp_path, toy, value):
    model = _toy_model(toy)
    bad = _craft(tmp_path / "s.safetensors", _write(tmp_path / "m.safetensors", model, toy), _set_scale(value))
    with pytest.raises(CheckpointError, match=r"s\.safetensors: encoder.entity: a quantisation scale is zero, "
                                              r"negative or not finite"):
        file_tables(bad, CFG, toy, model)


def test_out_of_range_and_unsorted_indices_are_refused(tmp_path, toy):
    w = torch.randn(40, 10)
    mask = torch.zeros(40, 10, dtype=torch.bool)
    mask.view(-1)[torch.tensor([3, 50, 51, 399])] = True
    write_model({"e": w * mask}, tmp_path / "m.safetensors", "int8", {}, {"e": mask})
    for name, idx in (("high", [3, 50, 51, 400]), ("negative", [-1, 50, 51, 399]), ("unsorted", [50, 3, 51, 399])):
        bad = _craft(tmp_path / f"{name}.safetensors", tmp_path / "m.safetensors",
                     lambda t: t.__setitem__("e::index", torch.tensor(idx, dtype=torch.int32)))
        with pytest.raises(CheckpointError, match=rf"{name}\.safetensors: e: e::index holds positions out of range"):
            read_model(bad, {"e": (40, 10)})
    bits = torch.zeros(2, dtype=torch.uint8)  # a 10-column bitmap with a bit set beyond the 10th column
    bits[1] = 0x01
    cols = torch.tensor([True] * 3 + [False] * 7).expand(40, 10).clone()
    write_model({"c": w * cols}, tmp_path / "c.safetensors", "fp32", {}, {"c": cols})
    bad = _craft(tmp_path / "pad.safetensors", tmp_path / "c.safetensors", lambda t: t.__setitem__("c::index", bits))
    with pytest.raises(CheckpointError, match=r"c::index marks positions beyond the tensor's 10"):
        read_model(bad, {"c": (40, 10)})


def test_huge_claims_are_refused_before_anything_is_read(tmp_path, toy):
    """Metadata claiming a huge tensor or model: refused against the run's model, nothing allocated
    (the reader never builds a model or a tensor from the file's claims)."""
    model = _toy_model(toy)
    good = _write(tmp_path / "m.safetensors", model, toy)
    huge = _craft(tmp_path / "shape.safetensors", good,
                  edit_meta=lambda m: m["tensors"]["encoder.entity"].__setitem__("shape", [10 ** 9, 10 ** 6]))
    with pytest.raises(CheckpointError, match=r"encoder.entity: has shape \(1000000000, 1000000\), this run's model "
                                              r"needs \(\d+, 8\)"):
        file_tables(huge, CFG, toy, model)
    dim = _craft(tmp_path / "dim.safetensors", good, edit_meta=lambda m: m["model"].__setitem__("dim", 10 ** 12))
    with pytest.raises(CheckpointError, match=r"holds a model with dim=1000000000000, this run's has dim=4"):
        file_tables(dim, CFG, toy, model)
    count = _craft(tmp_path / "count.safetensors", good,
                   edit_meta=lambda m: m["dataset"].__setitem__("num_entities", float("inf")))
    with pytest.raises(CheckpointError, match=r"holds a model of inf entities"):
        file_tables(count, CFG, toy, model)


@pytest.mark.parametrize("keep", [0, 5, 7, 60, -40, -1])
def test_truncated_file_is_refused(tmp_path, toy, keep):
    raw = _write(tmp_path / "m.safetensors", _toy_model(toy), toy).read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(raw[:keep] if keep >= 0 else raw[:len(raw) + keep])
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: not a model file of metasd-dgl export \(not a "
                                              r"readable safetensors file, or truncated"):
        file_tables(bad, CFG, toy, _toy_model(toy))


def test_older_formats_say_re_export(tmp_path, toy):
    msq = tmp_path / "teacher.int8.msq"
    msq.write_bytes(b"MSDQUANT" + b"\1\0\0\0" + b"\0" * 100)
    renamed = tmp_path / "renamed.bin"
    renamed.write_bytes(msq.read_bytes())
    from safetensors.torch import save_file

    msd = tmp_path / "old.safetensors"  # an older student.msd under another name
    save_file({"a::values": torch.zeros(3, dtype=torch.uint8)}, str(msd),
              metadata={"metasd": json.dumps({"format": "metasd-student-v1"})})
    for path in (msq, renamed, msd):
        with pytest.raises(CheckpointError, match=r"of an older metasd-dgl.*no longer read; re-export the run with this "
                                                  r"version: metasd-dgl export RUN_DIR"):
            read_model(path)


def test_special_files_are_named(tmp_path, toy):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO \\(named pipe\\)"), (Path("/dev/zero"), "a device"), (tmp_path, "a folder")):
        with pytest.raises(CheckpointError, match=rf"is {kind}, not a regular file"):
            read_model(path)


def test_another_dataset_is_refused(tmp_path, toy):
    model = build_model("kge", "complex", toy.num_entities + 3, toy.num_relations, 4)
    path = tmp_path / "other.safetensors"
    write_model(dict(model.named_parameters()), path, "int8",
                {**run_meta(CFG, toy, "teacher"), "dataset": {"num_entities": toy.num_entities + 3,
                                                              "num_relations": toy.num_relations}})
    with pytest.raises(CheckpointError, match=rf"other\.safetensors: holds a model of {toy.num_entities + 3} entities, "
                                              rf"this run's dataset .* has {toy.num_entities}"):
        file_tables(path, CFG, toy, _toy_model(toy))
    renamed = _write(tmp_path / "renamed.safetensors", _toy_model(toy), toy, dataset={
        "fingerprint": "a:b", "num_entities": toy.num_entities, "num_relations": toy.num_relations})
    with pytest.raises(CheckpointError, match=r"renamed\.safetensors: was written for another dataset"):
        file_tables(renamed, CFG, toy, _toy_model(toy))
    assert run_meta(CFG, toy, "teacher")["dataset"]["fingerprint"] == dataset_fingerprint(toy)


def test_errors_are_user_errors():
    assert issubclass(CheckpointError, UserError)
