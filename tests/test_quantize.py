"""Quantised model files (metasd_dgl/store/quantize.py): the per-row arithmetic against hand-computed values,
int4 packing, file sizes equal to the format's formula, ranking from the file equal to ranking the
dequantised tables, and every malformed file refused with one error naming it."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from metasd_dgl.data.fingerprint import dataset_fingerprint
from metasd_dgl.data.preprocess import load_processed, preprocess
from metasd_dgl.errors import CheckpointError, UserError
from metasd_dgl.evaluate.ranking import encode_tables, metrics, rank_split
from metasd_dgl.model.predictor import build_model
from metasd_dgl.store.quantize import (DIGEST_BYTES, HEAD_BYTES, MAGIC, dequantize_rows, encode_file, file_size,
                                 file_tables, pack_int4, quantize_rows, read_header, read_quantized,
                                 unpack_int4, write_quantized)

REPO = Path(__file__).resolve().parents[1]


def _meta_len(data: bytes) -> int:
    return struct.unpack_from("<8sIQ", data)[2]


# ------------------------------------------------------------------ arithmetic
def test_int8_hand_computed_rows():
    # s = max|x| / 127: 1.0 for the first row (exact), 0 for the zero row
    x = np.array([[127.0, -63.5, 31.75, -62.5, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    q, s = quantize_rows(x, "int8")
    assert s.dtype == np.float16 and s.tolist() == [1.0, 0.0]
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
    assert pack_int4(np.array([-8, 7])) == bytes([0xF0])  # -8 -> nibble 0 (low), 7 -> nibble 15 (high)
    assert pack_int4(np.array([1])) == bytes([0x09])  # odd count: a zero high nibble
    assert pack_int4(np.array([0, 0, -1])) == bytes([0x88, 0x07])
    assert unpack_int4(bytes([0xF0, 0x09]), 3).tolist() == [-8, 7, 1]
    with pytest.raises(ValueError):
        pack_int4(np.array([8]))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 17, 1001])
def test_int4_packing_round_trip_exact(n):
    values = np.random.default_rng(n).integers(-8, 8, n).astype(np.int8)
    packed = pack_int4(values)
    assert len(packed) == (n + 1) // 2
    assert np.array_equal(unpack_int4(packed, n), values)


@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (7, 9), (2, 3, 5)])
def test_int4_file_round_trip_odd_widths(tmp_path, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    q, s = quantize_rows(x.reshape(-1, shape[-1]).numpy(), "int4")
    write_quantized({"w": x}, tmp_path / "w.msq", "int4", {"role": "teacher"})
    params, _, meta = read_quantized(tmp_path / "w.msq")
    assert meta["tensors"]["w"]["buffers"]["values"][1] == (x.numel() + 1) // 2
    assert torch.equal(params["w"], torch.from_numpy(dequantize_rows(q, s)).reshape(shape))


# ------------------------------------------------------------------ file sizes
def test_teacher_file_sizes_equal_the_formula(tmp_path):
    gen = torch.Generator().manual_seed(0)
    params = {"encoder.entity": torch.randn(5, 6, generator=gen), "encoder.relation": torch.randn(4, 6, generator=gen),
              "encoder.layers.0.bias": torch.randn(6, generator=gen)}  # 1-D: kept fp32 under int8/int4
    # buffers by hand: values + fp16 scales (one per row: 5 + 4) + the 1-D tensor's 6 floats
    expected_data = {"fp32": 4 * 54 + 24, "fp16": 2 * 54 + 12, "int8": 30 + 24 + 2 * 9 + 24,
                     "int4": 15 + 12 + 2 * 9 + 24}
    for scheme, data_bytes in expected_data.items():
        path = tmp_path / f"t.{scheme}.msq"
        size = write_quantized(params, path, scheme, {"role": "teacher"})
        raw = path.read_bytes()
        meta_len = _meta_len(raw)
        meta = json.loads(raw[HEAD_BYTES:HEAD_BYTES + meta_len])
        assert meta["data_bytes"] == data_bytes, scheme
        assert size == len(raw) == HEAD_BYTES + meta_len + data_bytes + DIGEST_BYTES == file_size(meta_len, data_bytes)
        assert raw[:8] == MAGIC and raw[-32:] == hashlib.sha256(raw[:-32]).digest()


def test_student_column_layout_stores_kept_columns_only(tmp_path):
    w = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    cols = torch.tensor([True, False, False, True, False, False])
    mask = cols.expand(5, 6).clone()
    for scheme, values in (("fp32", 4 * 10), ("int8", 10), ("int4", 5)):
        path = tmp_path / f"s.{scheme}.msq"
        write_quantized({"encoder.entity": w * mask}, path, scheme, {"role": "student"}, {"encoder.entity": mask})
        meta, _ = read_header(path)
        entry = meta["tensors"]["encoder.entity"]
        scales = 0 if scheme == "fp32" else 2 * 5
        assert entry["layout"] == "columns" and entry["count"] == 10
        assert meta["data_bytes"] == 1 + values + scales  # 1 byte: the packed 6-column mask
        params, masks, _ = read_quantized(path)
        assert torch.equal(masks["encoder.entity"], mask)
        assert (params["encoder.entity"][:, ~cols] == 0).all()
        if scheme == "fp32":
            assert torch.equal(params["encoder.entity"], w * mask)
        else:
            s = (w * mask).abs().amax(1, keepdim=True) / {"int8": 127, "int4": 7}[scheme]
            assert ((params["encoder.entity"] - w * mask).abs() <= s / 2 + 1e-6).all()


def test_student_element_layout_counts_its_index(tmp_path):
    w = torch.randn(40, 10, generator=torch.Generator().manual_seed(2))
    sparse = torch.zeros(40, 10, dtype=torch.bool)
    sparse.view(-1)[torch.tensor([3, 50, 51, 399])] = True  # 4 kept: 16 bytes of indices < 50 of bitmap
    dense = torch.rand(40, 10, generator=torch.Generator().manual_seed(3)) < 0.5  # bitmap (50) < indices
    for mask, kind, index_bytes in ((sparse, "indices-u4", 4 * 4), (dense, "bitmap", 50)):
        nnz = int(mask.sum())
        path = tmp_path / f"{kind}.msq"
        size = write_quantized({"encoder.entity": w * mask}, path, "int8", {"role": "student"},
                               {"encoder.entity": mask})
        meta, _ = read_header(path)
        entry = meta["tensors"]["encoder.entity"]
        assert entry["layout"] == "element" and entry["index"] == kind and entry["count"] == nnz
        assert entry["buffers"]["index"][1] == index_bytes
        assert meta["data_bytes"] == index_bytes + nnz + 2 * 40
        assert size == file_size(_meta_len(path.read_bytes()), meta["data_bytes"])
        params, masks, _ = read_quantized(path)
        assert torch.equal(masks["encoder.entity"], mask)
        s = (w * mask).abs().amax(1, keepdim=True) / 127
        assert ((params["encoder.entity"] - w * mask).abs() <= s / 2 + 1e-6).all()
        assert (params["encoder.entity"][~mask] == 0).all()


# --------------------------------------------------------- ranking from the file
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "data"
    preprocess(str(REPO / "datasets" / "toy"), out)
    return load_processed(out)


def _toy_meta(data, **kw):
    meta = {"role": "teacher", "model": {"encoder": "kge", "decoder": "complex", "dim": 4},
            "encoder": "kge", "decoder": "complex", "dim": 4, "num_entities": data.num_entities,
            "num_relations": data.num_relations, "dataset": dataset_fingerprint(data)}
    meta.update(kw)
    return meta


def _toy_model(data):
    return build_model("kge", "complex", data.num_entities, data.num_relations, 4, init_scale=0.5,
                       generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("scheme", ["int8", "int4", "fp16"])
def test_ranking_from_file_equals_ranking_dequantised_tables(tmp_path, toy, scheme):
    model = _toy_model(toy)
    params = {n: p.detach() for n, p in model.named_parameters()}
    path = tmp_path / f"m.{scheme}.msq"
    write_quantized(params, path, scheme, _toy_meta(toy))
    loaded_model, tables, _ = file_tables(path, toy)
    from_file = rank_split(loaded_model, toy.test, toy.num_relations, toy.filter, tables=tables)
    # the dequantised tables computed here, independently: q = round(x / s), x' = q * s
    ref = {}
    for name, p in params.items():
        x = p.numpy().astype(np.float64)
        if scheme == "fp16":
            ref[name] = torch.from_numpy(x.astype(np.float16).astype(np.float32))
            continue
        qmax = {"int8": 127, "int4": 7}[scheme]
        exact = np.abs(x).max(1) / qmax
        s16 = exact.astype(np.float16)  # the stored scale: fp16, rounded up
        s16 = np.where(s16.astype(np.float64) < exact, np.nextafter(s16, np.float16(np.inf)), s16)
        s = s16.astype(np.float64)[:, None]
        ref[name] = torch.from_numpy((np.rint(x / s) * s).astype(np.float32))
    ranks = rank_split(model, toy.test, toy.num_relations, toy.filter, tables=encode_tables(model, None, ref))
    a, b = metrics(from_file.both()), metrics(ranks.both())
    for key in ("mrr", "mr", "hits@1", "hits@3", "hits@10"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    if scheme != "fp16":
        assert not torch.equal(tables[0], params["encoder.entity"])  # it did read the quantised weights


def test_fp32_file_ranks_exactly_like_the_model(tmp_path, toy):
    model = _toy_model(toy)
    write_quantized(dict(model.named_parameters()), tmp_path / "m.msq", "fp32", _toy_meta(toy))
    m, tables, _ = file_tables(tmp_path / "m.msq", toy)
    a = rank_split(m, toy.valid, toy.num_relations, toy.filter, tables=tables)
    b = rank_split(model, toy.valid, toy.num_relations, toy.filter)
    assert torch.equal(a.both(), b.both())


# ------------------------------------------------------------------ bad files
@pytest.fixture
def good_file(tmp_path, toy):
    path = tmp_path / "good.msq"
    write_quantized(dict(_toy_model(toy).named_parameters()), path, "int8", _toy_meta(toy))
    return path


@pytest.mark.parametrize("keep", [0, 5, 19, 60, -40, -1])
def test_truncated_file_is_refused(tmp_path, good_file, toy, keep):
    """Cut inside the magic, the header, the metadata, the buffers, the checksum (keep < 0: bytes cut off the end)."""
    raw = good_file.read_bytes()
    bad = tmp_path / "bad.msq"
    bad.write_bytes(raw[:keep] if keep >= 0 else raw[:len(raw) + keep])
    with pytest.raises(CheckpointError, match=r"bad\.msq: truncated \(\d+ (of \d+ )?bytes"):
        file_tables(bad, toy)


def test_wrong_checksum_is_refused(tmp_path, good_file, toy):
    raw = bytearray(good_file.read_bytes())
    raw[-40] ^= 0x01  # a value byte
    bad = tmp_path / "flip.msq"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"flip\.msq: corrupted \(sha256 checksum mismatch\)"):
        file_tables(bad, toy)
    raw = bytearray(good_file.read_bytes())
    raw[-1] ^= 0xFF  # the checksum itself
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_quantized(bad)


def test_unknown_version_is_refused(tmp_path, good_file):
    raw = bytearray(good_file.read_bytes())
    struct.pack_into("<I", raw, 8, 2)
    body = bytes(raw[:-32])
    bad = tmp_path / "v2.msq"
    bad.write_bytes(body + hashlib.sha256(body).digest())  # a well-formed file of a later version
    with pytest.raises(CheckpointError, match=r"v2\.msq: unknown format version 2 \(this metasd-dgl reads version 1\)"):
        read_quantized(bad)


def test_not_a_quantised_file(tmp_path):
    bad = tmp_path / "x.msq"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CheckpointError, match=r"x\.msq: not a quantised model file"):
        read_quantized(bad)


def test_another_datasets_entity_count_is_refused(tmp_path, toy):
    model = build_model("kge", "complex", toy.num_entities + 3, toy.num_relations, 4)
    path = tmp_path / "other.msq"
    write_quantized(dict(model.named_parameters()), path, "int8",
                    _toy_meta(toy, num_entities=toy.num_entities + 3, dataset="other:other"))
    with pytest.raises(CheckpointError, match=rf"other\.msq: holds a model of {toy.num_entities + 3} entities, "
                                              rf"this run's dataset .* has {toy.num_entities}"):
        file_tables(path, toy)
    # same counts, other names: the fingerprint
    path2 = tmp_path / "renamed.msq"
    write_quantized(dict(_toy_model(toy).named_parameters()), path2, "int8", _toy_meta(toy, dataset="a:b"))
    with pytest.raises(CheckpointError, match=r"renamed\.msq: was written for another dataset"):
        file_tables(path2, toy)


def test_errors_are_user_errors():
    assert issubclass(CheckpointError, UserError)


def test_encode_refuses_non_finite_and_bad_scheme():
    with pytest.raises(ValueError):
        encode_file({"w": torch.tensor([[1.0, float("nan")]])}, "int8", {})
    with pytest.raises(ValueError):
        encode_file({"w": torch.ones(2, 2)}, "int3", {})
    with pytest.raises(ValueError, match="fp16 range"):
        encode_file({"w": torch.tensor([[1e6, 1.0]])}, "fp16", {})
