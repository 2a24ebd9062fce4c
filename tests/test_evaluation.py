"""Filtered ranking: brute-force oracle, hand-computed ranks, PyKEEN, FilterIndex; the reference code's
evaluation protocol (query side masked, candidates dense) against brute force; no dropout in evaluation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from metasd_dgl.cli import main
from metasd_dgl.data import filters
from metasd_dgl.data.filters import FilterIndex
from metasd_dgl.data.triples import reciprocal_queries
from metasd_dgl.model.decoders import DistMult
from metasd_dgl.evaluate.ranking import (
    BYTES_PER_CELL, Ranks, chunk_size, encode_tables, evaluate_ranking, format_table, metrics, model_score_fn,
    rank_queries, rank_split, rank_split_reference, summarize,
)
from metasd_dgl.model.predictor import build_model
from metasd_dgl.model.pruning import make_masks, prunable_params
from metasd_dgl.model.student import checkpoint_student
from run_helpers import train_toy as _train

N, R = 30, 4


def _graph(seed: int = 0):
    """Random graph: (train, test) triples and a (N, 2R, N) score table with many ties."""
    g = torch.Generator().manual_seed(seed)
    triples = torch.stack([torch.randint(0, N, (240,), generator=g), torch.randint(0, R, (240,), generator=g),
                           torch.randint(0, N, (240,), generator=g)], 1)
    triples = torch.unique(triples, dim=0)
    perm = torch.randperm(triples.shape[0], generator=g)
    test, train = triples[perm[:40]], triples[perm[40:]]
    table = torch.randint(0, 4, (N, 2 * R, N), generator=g).float() / 4  # 4 score levels: many ties
    return train, test, table


def _table_fn(table: torch.Tensor):
    return lambda hr: table[hr[:, 0], hr[:, 1]].clone()


def _python_known(triples: torch.Tensor) -> set:
    known = set()
    for h, r, t in triples.tolist():
        known.add((h, r, t))
        known.add((t, r + R, h))
    return known


def _oracle(table: torch.Tensor, queries: torch.Tensor, known: set | None) -> list[float]:
    """Realistic ranks by pure Python loops over queries and entities."""
    out = []
    for h, r, t in queries.tolist():
        row = table[h, r].tolist()
        target = row[t]
        opt, pess = 1, 0
        for e in range(len(row)):
            if e != t and known is not None and (h, r, e) in known:
                continue
            opt += row[e] > target
            pess += row[e] >= target
        out.append((opt + pess) / 2)
    return out


@pytest.mark.parametrize("filtered", [False, True])
def test_matches_brute_force(filtered):
    train, test, table = _graph()
    everything = torch.cat([train, test])
    index = FilterIndex.from_triples(everything, N, R) if filtered else None
    ranks = evaluate_ranking(_table_fn(table), test, R, index, batch_size=16)
    known = _python_known(everything) if filtered else None
    expected = _oracle(table, reciprocal_queries(test, R), known)
    assert ranks.tail.dtype == torch.float64
    assert torch.cat([ranks.tail, ranks.head]).tolist() == expected
    assert any(x != int(x) for x in expected)  # ties did occur


def test_hand_computed_ranks():
    # N = 5, R = 1: relation 0 and its inverse 1.
    train = torch.tensor([[0, 0, 1], [0, 0, 2], [4, 0, 3]])
    test = torch.tensor([[0, 0, 3]])
    table = torch.zeros(5, 2, 5)
    table[0, 0] = torch.tensor([0.5, 0.9, 0.7, 0.7, 0.7])  # tail query (0, 0, ?), target 3
    table[3, 1] = torch.tensor([0.2, 0.1, 0.3, 0.0, 0.2])  # head query (?, 0, 3) as (3, 1, ?), target 0
    fn = lambda hr: table[hr[:, 0], hr[:, 1]].clone()  # noqa: E731
    raw = evaluate_ranking(fn, test, 1, None, batch_size=4)
    # tail: better {1} -> optimistic 2; not worse {1, 2, 3, 4} -> pessimistic 4; realistic 3
    # head: better {2} -> 2; not worse {0, 2, 4} -> 3; realistic 2.5
    assert raw.tail.tolist() == [3.0] and raw.head.tolist() == [2.5]
    index = FilterIndex.from_triples(torch.cat([train, test]), 5, 1)
    filt = evaluate_ranking(fn, test, 1, index, batch_size=4)
    # tail: 1 and 2 are known tails of (0, 0): left 0 (0.5), 3 (0.7), 4 (0.7) -> (1 + 2) / 2 = 1.5
    # head: 4 is a known head of (?, 0, 3): left 0 (0.2), 1, 2 (0.3), 3 -> (2 + 2) / 2 = 2.0
    assert filt.tail.tolist() == [1.5] and filt.head.tolist() == [2.0]


def test_chunk_sizes_agree():
    train, test, table = _graph(1)
    index = FilterIndex.from_triples(torch.cat([train, test]), N, R)
    queries = reciprocal_queries(test, R)
    results = [rank_queries(_table_fn(table), queries, index, bs) for bs in (1, 7, queries.shape[0])]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_infinite_scores():
    # a target scored -inf ties only with the unfiltered -inf entities, never with filtered ones
    table = torch.full((3, 2, 3), -math.inf)
    table[0, 0, 1] = 1.0
    table[1, 0] = torch.tensor([math.inf, math.inf, 2.0])
    table[2, 0] = torch.tensor([math.inf, -math.inf, 5.0])
    fn = lambda hr: table[hr[:, 0], hr[:, 1]].clone()  # noqa: E731
    index = FilterIndex.from_triples(torch.tensor([[0, 0, 0], [0, 0, 2]]), 3, 1)
    queries = torch.tensor([[0, 0, 2], [1, 0, 1], [2, 0, 2], [0, 0, 0]])
    # (0,0,2): entity 0 filtered, 1 beats the target -> 2; (1,0,1): +inf tie with 0 -> 1.5;
    # (2,0,2): +inf above, -inf below -> 2; (0,0,0): 1 above, 2 filtered -> 2
    assert rank_queries(fn, queries, index, 3).tolist() == [2.0, 1.5, 2.0, 2.0]
    assert rank_queries(fn, queries, None, 3).tolist() == [2.5, 1.5, 2.0, 2.5]


@pytest.mark.parametrize("cell", [(5, 2, 7), (5, 2, 9), (5, 2, 4)])
def test_nan_raises(cell):
    # NaN in a plain cell, in the target cell, and in a filtered cell
    table = torch.rand(N, 2 * R, N, generator=torch.Generator().manual_seed(3))
    table[cell] = math.nan
    queries = torch.tensor([[1, 0, 3], [5, 2, 9]])
    index = FilterIndex.from_triples(torch.tensor([[5, 2, 4], [1, 0, 3]]), N, R)
    for filt in (None, index):
        with pytest.raises(ValueError, match="NaN for query 1"):
            rank_queries(_table_fn(table), queries, filt, 8)


def test_filter_known_matches_python_set():
    train, test, _ = _graph(2)
    everything = torch.cat([train, test, train[:5]])  # duplicates are stored once
    index = FilterIndex.from_triples(everything, N, R)
    known = _python_known(everything)
    g = torch.Generator().manual_seed(4)
    pairs = torch.randperm(N * 2 * R, generator=g)[:200]  # distinct (head, relation) queries
    heads, rels = pairs // (2 * R), pairs % (2 * R)
    rows, ents = index.known(heads, rels)
    got = {(int(heads[i]), int(rels[i]), int(e)) for i, e in zip(rows.tolist(), ents.tolist())}
    expected = {(h, r, e) for h, r in zip(heads.tolist(), rels.tolist()) for e in range(N) if (h, r, e) in known}
    assert got == expected and len(got) == rows.shape[0]  # no duplicates
    assert torch.all(rows[1:] >= rows[:-1])
    same_row = rows[1:] == rows[:-1]
    assert torch.all(ents[1:][same_row] > ents[:-1][same_row])  # sorted per row
    assert index.count(heads, rels).tolist() == torch.bincount(rows, minlength=200).tolist()
    flat, count = index.known_flat(heads, rels, N)
    assert torch.equal(flat, rows * N + ents) and torch.equal(count, index.count(heads, rels))
    assert len(index) == len(known)
    e_rows, e_ents = index.known(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    assert e_rows.numel() == 0 and e_ents.numel() == 0


def test_filter_unpacked_build_matches(monkeypatch):
    train, test, _ = _graph(8)
    everything = torch.cat([train, test, test])
    packed = FilterIndex.from_triples(everything, N, R)
    monkeypatch.setattr(filters, "PACK_LIMIT", 0)  # the lexsort path of huge graphs
    unpacked = FilterIndex.from_triples(everything, N, R)
    for name in ("keys", "offsets", "values"):
        assert torch.equal(getattr(packed, name), getattr(unpacked, name))


def test_filter_save_load_round_trip(tmp_path):
    train, test, _ = _graph(5)
    index = FilterIndex.from_triples(torch.cat([train, test]), N, R)
    path = tmp_path / "filter.npz"
    index.save(path)
    assert path.exists()
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype == np.int64 for k in z.files)
    back = FilterIndex.load(path)
    assert (back.num_entities, back.num_relations) == (N, R)
    for name in ("keys", "offsets", "values"):
        assert torch.equal(getattr(back, name), getattr(index, name))
    assert back.to("cpu") is back
    q = torch.arange(N)
    for a, b in zip(back.known(q, q % (2 * R)), index.known(q, q % (2 * R))):
        assert torch.equal(a, b)
    np.savez(tmp_path / "bad.npz", keys=np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError):
        FilterIndex.load(tmp_path / "bad.npz")


def test_same_as_pykeen():
    pytest.importorskip("pykeen")
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.evaluation.evaluator import create_sparse_positive_filter_, filter_scores_
    from pykeen.evaluation.ranks import Ranks as PKRanks

    train, test, table = _graph(6)
    everything = torch.cat([train, test])
    index = FilterIndex.from_triples(everything, N, R)
    ours = evaluate_ranking(_table_fn(table), test, R, index, batch_size=9)
    evaluator = RankBasedEvaluator(filtered=True)
    for side, column, ranks in (("tail", 2, ours.tail), ("head", 0, ours.head)):
        rows = table[test[:, 0], test[:, 1]] if side == "tail" else table[test[:, 2], test[:, 1] + R]
        scores = rows.clone()
        positives, _ = create_sparse_positive_filter_(test, everything, filter_col=column)
        true = scores[torch.arange(test.shape[0]), test[:, column]].clone()
        scores = filter_scores_(scores, positives)
        scores[torch.arange(test.shape[0]), test[:, column]] = true
        theirs = PKRanks.from_scores(true.unsqueeze(1), scores)
        assert torch.equal(ranks, theirs.realistic.double())
        evaluator.process_scores_(test, side, scores, true.unsqueeze(1))
    result = evaluator.finalize()
    mine = summarize(ours)
    for side in ("both", "head", "tail"):
        assert mine[side]["mrr"] == pytest.approx(result.get_metric(f"{side}.realistic.inverse_harmonic_mean_rank"))
        assert mine[side]["mr"] == pytest.approx(result.get_metric(f"{side}.realistic.arithmetic_mean_rank"))
        for k in (1, 3, 10):
            assert mine[side][f"hits@{k}"] == pytest.approx(result.get_metric(f"{side}.realistic.hits_at_{k}"))


def test_model_score_fn_and_chunk_size():
    g = torch.Generator().manual_seed(7)
    ent, rel = torch.randn(N, 6, generator=g), torch.randn(2 * R, 6, generator=g)
    hr = torch.tensor([[0, 1], [5, 7], [29, 3]])
    s = model_score_fn(ent, rel, DistMult())(hr)
    ref = DistMult().score(ent[hr[:, 0]].unsqueeze(1), rel[hr[:, 1]].unsqueeze(1), ent.unsqueeze(0))
    assert s.shape == (3, N) and torch.allclose(s, ref, atol=1e-5)
    assert 0 < chunk_size(14541, 512) * 14541 * BYTES_PER_CELL <= 512 * 2 ** 20
    assert chunk_size(10 ** 9, 1) == 1


def test_metrics_summarize_and_table():
    r = torch.tensor([1.0, 1.5, 3.0, 10.0, 11.0], dtype=torch.float64)
    m = metrics(r)
    assert m["mrr"] == pytest.approx((1 + 1 / 1.5 + 1 / 3 + 0.1 + 1 / 11) / 5)
    assert m["mr"] == pytest.approx(5.3)
    assert (m["hits@1"], m["hits@3"], m["hits@10"], m["count"]) == (0.2, 0.6, 0.8, 5)
    ranks = Ranks(tail=r, head=r.flip(0))
    per_triple = torch.tensor([0, 0, 1, 1, 1])
    per_side = torch.tensor([0, 1, 0, 1, 0, 1, 1, 1, 1, 1])
    s = summarize(ranks, {"relation": (per_triple, ["rare", "common", "empty"]), "side": per_side})
    both = torch.cat([r, r.flip(0)])
    assert s["both"] == metrics(both)
    assert s["buckets"]["relation"]["rare"]["mrr"] == pytest.approx(metrics(both[[0, 1, 5, 6]])["mrr"])
    assert s["buckets"]["relation"]["empty"]["count"] == 0
    assert s["buckets"]["side"]["1"]["mr"] == pytest.approx(metrics(both[per_side == 1])["mr"])
    with pytest.raises(ValueError):
        summarize(ranks, {"bad": torch.zeros(3, dtype=torch.long)})
    text = format_table({"teacher": s, "student": summarize(ranks)})
    assert "teacher" in text and "student" in text and "MRR" in text and "rare" in text


# ------------------------------------------------------------------ the reference protocol

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


def test_evaluate_protocol_reference_on_a_trained_run(tmp_path, kg_dir, capsys):
    """A tiny MetaSD run: the reference row equals the brute-force protocol and beats the true student."""
    from metasd_dgl.cli import main
    from metasd_dgl.stages import REFERENCE_ROW, load_run

    run = tmp_path / "run"
    assert main(["train", "--dataset", "umls", "--data-dir", str(kg_dir), "--run-dir", str(run), "--quiet",
                 "--decoder", "distmult", "--dim", "16", "--epochs", "3", "--method", "metasd", "--batch-size",
                 "1000", "--set", "prune.structure=dimension", "--set", "valid.every=3"]) == 0
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


# ------------------------------------------------------------------ dropout

def test_dropout_off_in_evaluation(tmp_path):
    """A run trained with dropout evaluates deterministically: the same ranks as its weights without dropout."""
    run = tmp_path / "run"
    _train(run, "--epochs", "2", "--set", "train.entity_dropout=0.3", "--set", "train.relation_dropout=0.3")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["valid"]["teacher"]["mrr"] for r in rows if "valid" in r][-1]
    assert main(["evaluate", str(run), "--split", "valid", "--checkpoint", "last", "--no-plots"]) == 0
    again = json.loads((run / "eval" / "valid.json").read_text())
    assert again["results"]["teacher"]["both"]["mrr"] == pytest.approx(logged, abs=1e-12)
