"""Model files (metasd_dgl/store/export.py): exact fp32 round trip of teacher and student, identical
scores, sizes equal to the layout's formula, the index as bitmap or int32 list (the smaller), and
export folders that keep what they did not write."""
from __future__ import annotations

import json

import pytest
import torch

from metasd_dgl.errors import CheckpointError, UserError
from metasd_dgl.model.predictor import build_model, call
from metasd_dgl.model.pruning import compute_masks, prunable_params
from metasd_dgl.model.student import MaskedStudent
from metasd_dgl.store.export import check_owned, file_name, read_model, write_model


def apply_masks(params: dict, masks: dict) -> dict:
    """The student's weights ``W * M`` (student.MaskedStudent, the one place they are built)."""
    return MaskedStudent(masks, params).weights(params)


def _parts(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


def test_file_names():
    assert [file_name("teacher", s) for s in ("fp32", "fp16")] == ["teacher.safetensors", "teacher.fp16.safetensors"]
    assert file_name("student", "int4") == "student.int4.safetensors"


def test_round_trip_exact_and_parts_on_random_tables(tmp_path):
    gen = torch.Generator().manual_seed(0)
    params = {"encoder.entity": torch.randn(2000, 64, generator=gen),
              "encoder.relation": torch.randn(40, 64, generator=gen),
              "encoder.bias": torch.randn(64, generator=gen)}  # not prunable: stored whole
    masks = compute_masks({n: params[n] for n in ("encoder.entity", "encoder.relation")}, 0.9)
    teacher = write_model(params, tmp_path / "teacher.safetensors", "fp32", {"role": "teacher"})
    size = write_model(apply_masks(params, masks), tmp_path / "student.safetensors", "fp32", {"epoch": 3}, masks)
    assert teacher == (tmp_path / "teacher.safetensors").stat().st_size
    # element masks at rate 0.9: a bitmap (numel / 8 bytes) beats an int32 list (4 * 0.1 numel)
    parts = _parts(tmp_path / "student.safetensors")
    nnz = {n: int(m.sum()) for n, m in masks.items()}
    assert parts["encoder.entity::index"] == ("U8", (2000 * 64 // 8,))
    assert parts["encoder.entity"] == ("F32", (nnz["encoder.entity"],))
    assert parts["encoder.bias"] == ("F32", (64,))
    data = 4 * (sum(nnz.values()) + 64) + (2000 * 64 + 40 * 64) // 8
    assert data < size < data + 2000  # the rest: the JSON header
    assert size <= 0.14 * teacher  # 4 bytes of 10 % + 1 bit of every weight
    loaded, loaded_masks, meta = read_model(tmp_path / "student.safetensors")
    assert meta["epoch"] == 3 and meta["scheme"] == "fp32"
    expected = apply_masks(params, masks)
    assert set(loaded) == set(params) and set(loaded_masks) == set(masks)
    for n in params:
        assert torch.equal(loaded[n], expected[n])
    for n in masks:
        assert torch.equal(loaded_masks[n], masks[n])
    dense, no_masks, _ = read_model(tmp_path / "teacher.safetensors")
    assert no_masks == {} and all(torch.equal(dense[n], params[n]) for n in params)


def test_sparse_index_is_an_int32_list_and_columns_are_kept_columns(tmp_path):
    w = torch.randn(40, 10, generator=torch.Generator().manual_seed(2))
    sparse = torch.zeros(40, 10, dtype=torch.bool)
    sparse.view(-1)[torch.tensor([3, 50, 51, 399])] = True  # 16 bytes of int32 < 50 bytes of bitmap
    cols = torch.tensor([True, False, False, True, False, False, True, False, False, False]).expand(40, 10).clone()
    write_model({"a": w * sparse, "b": w * cols}, tmp_path / "s.safetensors", "fp32", {}, {"a": sparse, "b": cols})
    parts = _parts(tmp_path / "s.safetensors")
    assert parts["a::index"] == ("I32", (4,)) and parts["a"] == ("F32", (4,))
    assert parts["b"] == ("F32", (40, 3)) and parts["b::index"] == ("U8", (2,))  # 2 bytes < 3 int32
    params, masks, meta = read_model(tmp_path / "s.safetensors")
    assert meta["tensors"]["b"]["layout"] == "columns" and meta["tensors"]["a"]["layout"] == "element"
    assert torch.equal(params["a"], w * sparse) and torch.equal(params["b"], w * cols)
    assert torch.equal(masks["a"], sparse) and torch.equal(masks["b"], cols)


@pytest.mark.parametrize("decoder", ["complex", "rotate"])
def test_loaded_student_gives_identical_scores(tmp_path, decoder):
    gen = torch.Generator().manual_seed(1)
    model = build_model("kge", decoder, 50, 4, 8, init_scale=0.3, generator=gen)
    masks = compute_masks(prunable_params(model), 0.9, "per-tensor")
    queries = torch.stack([torch.arange(50), torch.arange(50) % 8], 1)
    weights = dict(model.named_parameters())
    with torch.no_grad():
        expected = call(model, apply_masks(weights, masks), queries)
        write_model(apply_masks(weights, masks), tmp_path / "s.safetensors", "fp32", {}, masks)
        params, loaded_masks, _ = read_model(tmp_path / "s.safetensors")
        fresh = build_model("kge", decoder, 50, 4, 8, generator=torch.Generator().manual_seed(9))
        fresh.load_state_dict(params)
        assert torch.equal(fresh(queries), expected)


def test_edge_cases_round_trip(tmp_path):
    params = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.float32), "c": torch.ones(4, 4)}
    masks = {"a": torch.zeros(3, 5, dtype=torch.bool), "b": torch.ones(7, dtype=torch.bool),
             "c": torch.eye(4, dtype=torch.bool)}
    for scheme in ("fp32", "int8", "int4"):
        write_model(apply_masks(params, masks), tmp_path / "e.safetensors", scheme, {}, masks)
        loaded, lm, _ = read_model(tmp_path / "e.safetensors")
        for n in params:
            assert torch.equal(lm[n], masks[n])
            assert torch.equal(loaded[n], params[n] * masks[n]) or scheme != "fp32"
        step = {"fp32": 0.0, "int8": 1 / 127, "int4": 1 / 7}[scheme]  # s = 1 / qmax for the rows of c
        assert (loaded["a"] == 0).all() and ((loaded["c"] - torch.eye(4)).abs() <= step / 2 * 1.001).all()


def test_bad_files_are_refused(tmp_path):
    params = {"a": torch.randn(100, 8)}
    write_model(params, tmp_path / "s.safetensors", "int8", {})
    with pytest.raises(CheckpointError, match="file not found"):
        read_model(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_model(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="lacks 'b'"):
        read_model(tmp_path / "s.safetensors", {"a": (100, 8), "b": (3,)})
    with pytest.raises(CheckpointError, match=r"has shape \(100, 8\), this run's model needs \(100, 9\)"):
        read_model(tmp_path / "s.safetensors", {"a": (100, 9)})
    with pytest.raises(ValueError):
        write_model(params, tmp_path / "x.safetensors", "fp32", {}, {"a": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError):
        write_model({"w": torch.tensor([[1.0, float("nan")]])}, tmp_path / "x.safetensors", "int8", {})
    with pytest.raises(ValueError, match="fp16 range"):
        write_model({"w": torch.tensor([[1e6, 1.0]])}, tmp_path / "x.safetensors", "fp16", {})


def test_check_owned_names_what_the_manifest_does_not_list(tmp_path):
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    (folder / "teacher.safetensors").write_bytes(b"x")
    (folder / "NOTES.md").write_text("mine")
    (folder / "manifest.json").write_text(json.dumps({"files": {"teacher.safetensors": {}}}))
    with pytest.raises(UserError, match=r"export: export replaces only the files its manifest.json lists, and this "
                                        r"folder also holds NOTES.md, sub/; move them"):
        check_owned(folder, "export")
    (folder / "NOTES.md").unlink()
    (folder / "sub").rmdir()
    assert set(check_owned(folder, "export")["files"]) == {"teacher.safetensors"}
    assert check_owned(tmp_path / "none", "export")["files"] == {}  # no folder yet
