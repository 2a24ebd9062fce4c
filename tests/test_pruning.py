"""Pruning masks: exact counts, deterministic ties, the student ignores pruned weights, whole-coordinate
masks, the one mask builder, and the gradual (cubic) prune schedule."""
from __future__ import annotations

import pytest
import torch

from metasd_dgl.store.checkpoint import load_checkpoint
from metasd_dgl.cli import main
from metasd_dgl.model.predictor import build_model, call
from metasd_dgl.model.pruning import (compute_masks, dimension_coordinates, keep_count, make_masks, prunable_params,
                                 scheduled_rate, sparsity_report)
from metasd_dgl.model.student import MaskedStudent
from run_helpers import TOY, train_toy as _train


def apply_masks(params: dict, masks: dict) -> dict:
    """The student's weights ``W * M`` (student.MaskedStudent, the one place they are built)."""
    return MaskedStudent(masks, params).weights(params)


def _params(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(37, 11, generator=gen), "b": torch.randn(5, generator=gen),
            "c": torch.randn(3, 4, 6, generator=gen)}


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0])
def test_global_keeps_exact_count_and_largest(rate):
    params = _params()
    masks = compute_masks(params, rate, "global")
    total = sum(p.numel() for p in params.values())
    assert sum(int(m.sum()) for m in masks.values()) == round((1 - rate) * total)
    kept = torch.cat([p[m].abs() for p, m in zip(params.values(), masks.values())])
    dropped = torch.cat([p[~m].abs() for p, m in zip(params.values(), masks.values())])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()
    for n, m in masks.items():
        assert m.dtype == torch.bool and m.shape == params[n].shape


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9, 1.0])
def test_per_tensor_keeps_exact_count_each(rate):
    params = _params(1)
    masks = compute_masks(params, rate, "per-tensor")
    for n, p in params.items():
        assert int(masks[n].sum()) == round((1 - rate) * p.numel())
        if 0 < masks[n].sum() < p.numel():
            assert p[masks[n]].abs().min() >= p[~masks[n]].abs().max()


def test_ties_are_broken_by_position_and_deterministic():
    # 10 + 6 weights of equal magnitude (signs mixed): keep 4 -> the first 4 in dict order.
    params = {"x": torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0]),
              "y": torch.full((2, 3), -1.0)}
    masks = compute_masks(params, 0.75, "global")
    assert masks["x"].tolist() == [True] * 4 + [False] * 6
    assert not masks["y"].any()
    # A larger weight wins over ties; the remaining slots go to the lowest indices.
    params["y"][1, 2] = 2.0
    masks = compute_masks(params, 0.75, "global")
    assert masks["y"].sum() == 1 and masks["y"][1, 2]
    assert masks["x"].tolist() == [True] * 3 + [False] * 7
    again = compute_masks(params, 0.75, "global")
    assert all(torch.equal(masks[n], again[n]) for n in masks)
    per = compute_masks({"z": torch.zeros(7)}, 0.5, "per-tensor")
    assert per["z"].tolist() == [True] * 4 + [False] * 3  # round(3.5) = 4 (half to even)


def test_many_ties_large_tensor_exact():
    gen = torch.Generator().manual_seed(3)
    p = {"e": torch.randint(-3, 4, (1000, 50), generator=gen).float()}  # 7 distinct values
    masks = compute_masks(p, 0.9)
    assert int(masks["e"].sum()) == 5000
    assert torch.equal(masks["e"], compute_masks(p, 0.9)["e"])


def test_bad_arguments():
    with pytest.raises(ValueError):
        compute_masks(_params(), 0.5, "layer")
    with pytest.raises(ValueError):
        keep_count(10, 1.5)
    with pytest.raises(ValueError):
        compute_masks({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    assert compute_masks({}, 0.5) == {}


def test_masked_student_gradient_is_zero_on_pruned():
    params = {n: p.clone().requires_grad_() for n, p in _params().items()}
    masks = compute_masks({n: p.detach() for n, p in params.items()}, 0.8)
    masked = apply_masks(params, {"a": masks["a"], "c": masks["c"]})
    assert masked["b"] is params["b"]
    (sum((v**2).sum() for v in masked.values())).backward()
    for n in ("a", "c"):
        assert torch.all(params[n].grad[~masks[n]] == 0)
        assert torch.equal(params[n].grad[masks[n]], 2 * params[n].detach()[masks[n]])


def test_sparsity_report():
    masks = {"a": torch.tensor([True, False, False, True]), "b": torch.zeros(2, 3, dtype=torch.bool)}
    rep = sparsity_report(masks)
    assert rep["tensors"]["a"] == {"numel": 4, "nonzero": 2, "density": 0.5}
    assert rep["tensors"]["b"]["nonzero"] == 0
    assert rep["total"] == {"numel": 10, "nonzero": 2, "density": 0.2}


@pytest.mark.parametrize("decoder", ["complex", "distmult", "rotate", "transe"])
def test_pruned_weights_do_not_change_student_scores(decoder):
    gen = torch.Generator().manual_seed(0)
    model = build_model("kge", decoder, 30, 4, 6, init_scale=0.5, generator=gen)
    masks = compute_masks(prunable_params(model), 0.9)
    assert set(masks) == set(model.prunable_names())
    queries = torch.stack([torch.randint(0, 30, (9,), generator=gen), torch.randint(0, 8, (9,), generator=gen)], 1)
    weights = dict(model.named_parameters())
    s1 = call(model, apply_masks(weights, masks), queries)
    noisy = {n: p.detach() + torch.randn(p.shape, generator=gen) * (~masks[n]) for n, p in weights.items()}
    s2 = call(model, apply_masks(noisy, masks), queries)
    assert torch.equal(s1, s2)
    s3 = call(model, noisy, queries)  # the dense model does see them
    assert not torch.equal(s1, s3)


# ----------------------------------------------------------------------------- prune_structure = "dimension"
def _kept_coordinates_by_brute_force(params: dict, dim: int, k: int) -> list:
    importance = [0.0] * dim
    for p in params.values():
        for row in p.tolist():
            for j, w in enumerate(row):
                importance[j % dim] += w * w
    return sorted(sorted(range(dim), key=lambda c: -importance[c])[:k])


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9, 0.99])
def test_dimension_masks_keep_whole_top_coordinates(rate):
    gen = torch.Generator().manual_seed(3)
    dim = 10
    params = {"ent": torch.randn(7, 2 * dim, generator=gen), "rel": torch.randn(4, dim, generator=gen)}
    masks = compute_masks(params, rate, "global", dimension_coordinates(params, dim))
    k = max(1, round((1 - rate) * dim))
    expect = _kept_coordinates_by_brute_force(params, dim, k)
    for n, p in params.items():
        cols = masks[n].all(0)
        assert torch.equal(masks[n], cols.expand_as(p))  # whole columns
        assert sorted({j % dim for j in torch.nonzero(cols).flatten().tolist()}) == expect
        assert int(cols.sum()) == k * p.shape[1] // dim  # real and imaginary parts together


def test_dimension_masks_need_tables_and_global_scope():
    params = {"w": torch.randn(2, 3, 4)}
    with pytest.raises(ValueError, match="dimension"):
        dimension_coordinates(params, 4)
    table = {"e": torch.randn(3, 4)}
    with pytest.raises(ValueError, match="global"):
        compute_masks(table, 0.5, "per-tensor", dimension_coordinates(table, 4))


@pytest.mark.parametrize("decoder", ["complex", "distmult", "rotate", "transe"])
def test_dimension_student_is_the_dense_model_of_the_kept_coordinates(decoder):
    """The student equals a dense model of dimension k holding only the kept coordinates."""
    gen = torch.Generator().manual_seed(0)
    dim, n_ent, n_rel = 12, 25, 3
    model = build_model("kge", decoder, n_ent, n_rel, dim, init_scale=0.5, generator=gen)
    prunable = prunable_params(model)
    masks = compute_masks(prunable, 0.75, "global", dimension_coordinates(prunable, dim))
    kept = torch.nonzero(masks["encoder.relation"][0]).flatten() % dim
    kept = torch.unique(kept)
    assert len(kept) == 3
    small = build_model("kge", decoder, n_ent, n_rel, 3, init_scale=0.5, generator=gen)
    with torch.no_grad():
        for name in ("encoder.entity", "encoder.relation"):
            w = dict(model.named_parameters())[name]
            parts = w.shape[1] // dim  # 1 (real) or 2 (real, imaginary halves)
            cols = torch.cat([kept + i * dim for i in range(parts)])
            dict(small.named_parameters())[name].copy_(w[:, cols])
    queries = torch.stack([torch.randint(0, n_ent, (8,), generator=gen),
                           torch.randint(0, 2 * n_rel, (8,), generator=gen)], 1)
    student = call(model, apply_masks(dict(model.named_parameters()), masks), queries)
    torch.testing.assert_close(student, small(queries), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(student, model(queries), atol=1e-3)  # the teacher differs


def test_dimension_structure_config_checks():
    from metasd_dgl.config import ConfigError, load_config

    load_config(overrides={"prune.structure": "dimension"})
    with pytest.raises(ConfigError, match="prune.structure"):
        load_config(overrides={"prune.structure": "dimension", "model.encoder": "rgcn"})
    with pytest.raises(ConfigError, match="prune.structure"):
        load_config(overrides={"prune.structure": "dimension", "prune.scope": "per-tensor"})


def test_dimension_masks_train_and_evaluate(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "2", "--dim", "10",
                 "--method", "metasd", "--batch-size", "4", "--set", "prune.structure=dimension",
                 "--set", "metasd.quiz_fraction=0.2", "--set", "prune.rate=0.8"]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    masks = state["masks"]
    kept = None
    for name, m in masks.items():
        cols = m.all(0)
        assert torch.equal(m, cols.expand_as(m))  # whole columns
        coords = set((torch.nonzero(cols).flatten() % 10).tolist())
        assert len(coords) == 2  # round(0.2 * 10) coordinates, real and imaginary parts together
        kept = coords if kept is None else kept
        assert coords == kept  # the same coordinates in every table
    assert main(["evaluate", str(run), "--no-plots"]) == 0  # teacher and true student


# ------------------------------------------------------------------ one mask builder

def test_make_masks_is_compute_masks_over_the_prunable_weights():
    model = build_model("kge", "complex", 9, 2, 10, init_scale=1.0, generator=torch.Generator().manual_seed(1))
    for structure in ("element", "dimension"):
        got = make_masks(model, 0.8, structure=structure, dim=10)
        from metasd_dgl.model.pruning import dimension_coordinates

        params = prunable_params(model)
        coords = dimension_coordinates(params, 10) if structure == "dimension" else None
        want = compute_masks(params, 0.8, "global", coords)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
        kept = sum(int(m.sum()) for m in got.values()) / sum(m.numel() for m in got.values())
        assert kept == pytest.approx(0.2, abs=0.05)


# ------------------------------------------------------------------ gradual pruning

def test_cubic_schedule_by_hand():
    assert [scheduled_rate(0.9, e, 4) for e in range(6)] == pytest.approx(
        [0.0, 0.9 * (1 - 0.75 ** 3), 0.9 * (1 - 0.5 ** 3), 0.9 * (1 - 0.25 ** 3), 0.9, 0.9])
    assert scheduled_rate(0.9, 0, 0) == 0.9


def test_gradual_pruning_kept_counts_per_epoch(tmp_path):
    rows = _train(tmp_path / "run", "--epochs", "5", "--method", "prune", "--set", "prune.gradual_epochs=4")
    numel = 11 * 8 + 6 * 8  # toy: 11 entities, 3 relations (6 with inverses), ComplEx dim 4 -> width 8
    expected = [keep_count(numel, scheduled_rate(0.9, e, 4)) / numel for e in range(5)]
    got = [r["density"] for r in rows if "density" in r]
    assert got == pytest.approx(expected) and got[0] == 1.0 and got[-1] == pytest.approx(0.1, abs=0.01)
    # best.pt is chosen only among students at the final rate (a denser one would flatter the student)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["state"]["epoch"] == 5 and best["state"]["best_epoch"] == 5
    kept = sum(int(m.sum()) for m in best["masks"].values())
    assert kept == keep_count(numel, 0.9)


def _overlap_by_loop(ent_mask, rel_mask, triples, dim):
    """The overlap diagnostic, one triple, direction and coordinate at a time."""
    R = rel_mask.shape[0] // 2
    kept = lambda row, k: any(bool(row[j * dim + k]) for j in range(row.numel() // dim))  # noqa: E731
    counts = []
    for h, r, t in triples.tolist():
        for rr in (r, r + R):
            counts.append(sum(1 for k in range(dim)
                              if kept(ent_mask[h], k) and kept(rel_mask[rr], k) and kept(ent_mask[t], k)))
    return sum(counts) / len(counts), sum(c == 0 for c in counts) / len(counts)


@pytest.mark.parametrize("decoder,density", [("complex", 0.15), ("complex", 0.6), ("distmult", 0.3)])
def test_triple_overlap_matches_a_loop_and_zero_overlap_scores_zero(decoder, density):
    from metasd_dgl.model.pruning import triple_overlap

    gen = torch.Generator().manual_seed(7)
    dim, n_ent, n_rel = 6, 9, 3
    model = build_model("kge", decoder, n_ent, n_rel, dim, init_scale=1.0, generator=gen)
    params = {n: p.detach() for n, p in model.named_parameters()}
    masks = {n: torch.rand(p.shape, generator=gen) < density for n, p in params.items()}
    triples = torch.stack([torch.randint(0, n_ent, (40,), generator=gen), torch.randint(0, n_rel, (40,), generator=gen),
                           torch.randint(0, n_ent, (40,), generator=gen)], 1)
    got = triple_overlap(masks["encoder.entity"], masks["encoder.relation"], triples, dim, chunk=7)
    mean, none = _overlap_by_loop(masks["encoder.entity"], masks["encoder.relation"], triples, dim)
    assert got["count"] == 80
    assert got["mean_shared"] == pytest.approx(mean, abs=1e-12)
    assert got["none_share"] == pytest.approx(none, abs=1e-12)
    # a triple sharing no kept coordinate scores exactly 0 under the masked trilinear score
    student = apply_masks(params, masks)
    e, r_ = student["encoder.entity"], student["encoder.relation"]
    scores = model.decoder.score(e[triples[:, 0]], r_[triples[:, 1]], e[triples[:, 2]])
    ent, rel = masks["encoder.entity"], masks["encoder.relation"]
    for (h, r, t), s in zip(triples.tolist(), scores.tolist()):
        alone = triple_overlap(ent, rel, torch.tensor([[h, r, t]]), dim, reciprocal=False)
        if alone["mean_shared"] == 0:
            assert s == 0.0
    assert any(triple_overlap(ent, rel, t[None], dim, reciprocal=False)["mean_shared"] == 0 for t in triples) \
        or density > 0.5  # the sparse cases do test the zero-score claim


def test_triple_overlap_of_dimension_masks_is_the_kept_count():
    from metasd_dgl.model.pruning import triple_overlap

    model = build_model("kge", "complex", 7, 2, 10, init_scale=1.0, generator=torch.Generator().manual_seed(1))
    masks = make_masks(model, 0.7, structure="dimension", dim=10)
    got = triple_overlap(masks["encoder.entity"], masks["encoder.relation"], torch.tensor([[0, 1, 3], [6, 0, 6]]), 10)
    assert got == {"mean_shared": 3.0, "none_share": 0.0, "dim": 10, "count": 4}
