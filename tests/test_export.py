"""Compact student export: exact round trip, identical scores, size at most 12% of the dense file."""
from __future__ import annotations

import json

import pytest
import torch

from metasd_dgl.errors import CheckpointError
from metasd_dgl.store.export import dense_size_bytes, export_student, load_dense, load_student, save_dense
from metasd_dgl.model.predictor import build_model, call
from metasd_dgl.model.pruning import compute_masks, prunable_params
from metasd_dgl.model.student import MaskedStudent


def apply_masks(params: dict, masks: dict) -> dict:
    """The student's weights ``W * M`` (student.MaskedStudent, the one place they are built)."""
    return MaskedStudent(masks, params).weights(params)


def test_round_trip_and_size_ratio_on_random_table(tmp_path):
    gen = torch.Generator().manual_seed(0)
    params = {"encoder.entity": torch.randn(2000, 64, generator=gen),
              "encoder.relation": torch.randn(40, 64, generator=gen),
              "encoder.bias": torch.randn(64, generator=gen)}  # not prunable: stored whole
    masks = compute_masks({n: params[n] for n in ("encoder.entity", "encoder.relation")}, 0.9)
    dense_bytes = save_dense(params, tmp_path / "teacher.safetensors", {"role": "teacher"})
    manifest = export_student(params, masks, tmp_path / "student.msd", {"epoch": 3},
                              dense_file=tmp_path / "teacher.safetensors")
    size = (tmp_path / "student.msd").stat().st_size
    assert manifest["bytes"] == size and manifest["dense_file_bytes"] == dense_bytes
    assert size <= 0.12 * dense_bytes, manifest["ratio_to_dense_file"]
    assert manifest["nonzeros"] == sum(int(m.sum()) for m in masks.values()) + 64
    assert manifest["dense_bytes"] == dense_size_bytes(params)
    on_disk = json.loads((tmp_path / "student.msd.manifest.json").read_text())
    assert on_disk["ratio"] == pytest.approx(size / dense_size_bytes(params))

    loaded, loaded_masks, meta = load_student(tmp_path / "student.msd")
    assert meta == {"epoch": 3}
    expected = apply_masks(params, masks)
    assert set(loaded) == set(params) and set(loaded_masks) == set(masks)
    for n in params:
        assert loaded[n].dtype == params[n].dtype and torch.equal(loaded[n], expected[n])
    for n in masks:
        assert torch.equal(loaded_masks[n], masks[n])
    teacher, tmeta = load_dense(tmp_path / "teacher.safetensors")
    assert tmeta == {"role": "teacher"} and all(torch.equal(teacher[n], params[n]) for n in params)


@pytest.mark.parametrize("decoder,dtype", [("complex", torch.float32), ("rotate", torch.float64)])
def test_loaded_student_gives_identical_scores(tmp_path, decoder, dtype):
    gen = torch.Generator().manual_seed(1)
    model = build_model("kge", decoder, 50, 4, 8, init_scale=0.3, generator=gen).to(dtype)
    masks = compute_masks(prunable_params(model), 0.9, "per-tensor")
    queries = torch.stack([torch.arange(50), torch.arange(50) % 8], 1)
    weights = dict(model.named_parameters())
    with torch.no_grad():
        expected = call(model, apply_masks(weights, masks), queries)
        export_student(weights, masks, tmp_path / "s.msd")
        params, loaded_masks, _ = load_student(tmp_path / "s.msd")
        fresh = build_model("kge", decoder, 50, 4, 8, generator=torch.Generator().manual_seed(9)).to(dtype)
        fresh.load_state_dict(params)
        assert torch.equal(fresh(queries), expected)
        assert torch.equal(call(fresh, apply_masks(dict(fresh.named_parameters()), loaded_masks), queries),
                           expected)


def test_edge_cases_round_trip(tmp_path):
    params = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.float32), "c": torch.ones(4, 4)}
    masks = {"a": torch.zeros(3, 5, dtype=torch.bool), "b": torch.ones(7, dtype=torch.bool),
             "c": torch.eye(4, dtype=torch.bool)}
    export_student(params, masks, tmp_path / "e.msd")
    loaded, lm, _ = load_student(tmp_path / "e.msd")
    for n in params:
        assert torch.equal(loaded[n], params[n] * masks[n]) and torch.equal(lm[n], masks[n])


def test_bad_files_are_refused(tmp_path):
    params = {"a": torch.randn(100, 8)}
    masks = compute_masks(params, 0.9)
    export_student(params, masks, tmp_path / "s.msd")
    save_dense(params, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError):
        load_student(tmp_path / "d.safetensors")  # a dense file is not a student
    with pytest.raises(CheckpointError):
        load_student(tmp_path / "missing.msd")
    raw = bytearray((tmp_path / "s.msd").read_bytes())
    raw[-20:] = b"\x00" * 20  # damage the compressed payload
    (tmp_path / "bad.msd").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_student(tmp_path / "bad.msd")
    (tmp_path / "junk.msd").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load_student(tmp_path / "junk.msd")
    with pytest.raises(ValueError):
        export_student(params, {"a": torch.ones(3, dtype=torch.bool)}, tmp_path / "x.msd")
