"""The reference code's evaluation protocol (query side masked, candidates dense) against brute force."""
from __future__ import annotations

import json

import pytest
import torch

from metasd_dgl.data.filters import FilterIndex
from metasd_dgl.evaluation import encode_tables, metrics, rank_split, rank_split_reference
from metasd_dgl.model import build_model
from metasd_dgl.pruning import compute_masks, make_masks, prunable_params
from metasd_dgl.student import checkpoint_student


def _brute_ranks(model, triples, num_relations, masks, known):
    """Filtered realistic ranks by a Python loop: query rows of W*M, candidates of the dense W."""
    params = dict(model.named_parameters())
    ent_name = next(n for n in masks if "ent" in n)
    rel_name = next(n for n in masks if "rel" in n)
    e_dense = params[ent_name].detach().double()
    e_mask = e_dense * masks[ent_name].double()
    r_mask = params[rel_name].detach().double() * masks[rel_name].double()
    ranks = []
    for side in ("tail", "head"):
        for h, r, t in triples.tolist():
            q, rel, target = (h, r, t) if side == "tail" else (t, r + num_relations, h)
            s = (e_mask[q] * r_mask[rel]) @ e_dense.t()  # DistMult on masked query, dense candidates
            keep = [e for e in range(e_dense.shape[0]) if e == target or (q, rel, e) not in known]
            better = sum(1 for e in keep if s[e] > s[target])
            not_worse = sum(1 for e in keep if s[e] >= s[target])
            ranks.append((1 + better + not_worse) / 2)
    return torch.tensor(ranks, dtype=torch.float64)


def test_reference_ranks_equal_brute_force_with_hand_masks():
    gen = torch.Generator().manual_seed(3)
    n_ent, n_rel, dim = 7, 2, 4
    model = build_model("kge", "distmult", n_ent, n_rel, dim, init_scale=1.0, generator=gen)
    triples = torch.tensor([[0, 0, 1], [2, 1, 3], [4, 0, 5], [6, 1, 0], [1, 0, 2]])
    known_triples = torch.cat([triples, torch.tensor([[0, 0, 3], [2, 1, 5]])])
    filt = FilterIndex.from_triples(known_triples, n_ent, n_rel)
    known = set()
    for h, r, t in known_triples.tolist():
        known.add((h, r, t))
        known.add((t, r + n_rel, h))
    names = prunable_params(model)
    masks = {}
    for n, p in names.items():  # hand-built: drop coordinate 1 everywhere and a few single weights
        m = torch.ones_like(p, dtype=torch.bool)
        m[:, 1] = False
        m[::2, 3] = False
        masks[n] = m
    ref = rank_split_reference(model, triples, n_rel, filt, masks)
    brute = _brute_ranks(model, triples, n_rel, masks, known)
    assert torch.allclose(ref.both(), brute)
    true = rank_split(model, triples, n_rel, filt, weights=checkpoint_student(dict(model.named_parameters()),
                                                                             masks)).both()
    assert not torch.equal(true, ref.both())  # the true student scores masked candidates
    dense = rank_split(model, triples, n_rel, filt).both()
    assert not torch.equal(dense, ref.both())


def test_make_masks_is_compute_masks_over_the_prunable_weights():
    model = build_model("kge", "complex", 9, 2, 10, init_scale=1.0, generator=torch.Generator().manual_seed(1))
    for structure in ("element", "dimension"):
        got = make_masks(model, 0.8, structure=structure, dim=10)
        from metasd_dgl.pruning import dimension_coordinates

        params = prunable_params(model)
        coords = dimension_coordinates(params, 10) if structure == "dimension" else None
        want = compute_masks(params, 0.8, "global", coords)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
        kept = sum(int(m.sum()) for m in got.values()) / sum(m.numel() for m in got.values())
        assert kept == pytest.approx(0.2, abs=0.05)


def test_evaluate_protocol_reference_on_a_trained_run(tmp_path, kg_dir, capsys):
    """A tiny MetaSD run: the reference row equals the brute-force protocol and beats the true student."""
    from metasd_dgl.cli import main
    from metasd_dgl.stages import REFERENCE_ROW, load_run

    run = tmp_path / "run"
    assert main(["train", "--dataset", "umls", "--data-dir", str(kg_dir), "--run-dir", str(run), "--quiet",
                 "--decoder", "distmult", "--dim", "16", "--epochs", "3", "--method", "metasd", "--batch-size",
                 "1000", "--set", "prune.structure=dimension", "--set", "train.valid_every=3"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--protocol", "reference", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert REFERENCE_ROW in out and "query rows" in out
    record = json.loads((run / "eval" / "test.json").read_text())
    assert set(record["results"]) == {"teacher", "student", REFERENCE_ROW}
    assert record["reference_protocol"]["prune_rate"] == 0.8
    assert record["reference_protocol"]["prune_structure"] == "dimension"
    cfg, data, model, masks, _ = load_run(run)
    ref_masks = make_masks(model, 0.8, "global", "dimension", 16)
    ent, rel = encode_tables(model, None, checkpoint_student(dict(model.named_parameters()), ref_masks))
    dense_ent, _ = encode_tables(model)
    fn_ranks = rank_split(model, data.test, data.num_relations, data.filter, tables=(ent, rel),
                          candidates=dense_ent)
    # the same score written out: (h*M)(r*M) against the dense table (DistMult)
    assert record["results"][REFERENCE_ROW]["both"]["mrr"] == pytest.approx(metrics(fn_ranks.both())["mrr"], abs=1e-12)
    h = ent[data.test[:5, 0]] * rel[data.test[:5, 1]]
    assert torch.allclose(model.decoder.score_all(ent[data.test[:5, 0]], rel[data.test[:5, 1]], dense_ent),
                          h @ dense_ent.t())
    ref_mrr = record["results"][REFERENCE_ROW]["both"]["mrr"]
    true_mrr = record["results"]["student"]["both"]["mrr"]
    assert ref_mrr != true_mrr
