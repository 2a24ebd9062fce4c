"""Triple classification: filtered DGL negatives, per-relation thresholds, AUC / AP / accuracy."""
import json
from pathlib import Path
import math
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from metasd_dgl.tools.classification import best_thresholds, corrupt, triple_classification
from metasd_dgl.data.triples import triple_keys
from metasd_dgl.model.decoders import Decoder

N, R = 12, 2


class TableDecoder(Decoder):
    """score(h, r, t) = pos[r] if (h, r, t) is a known fact else neg[r]; rows carry the ids."""

    def __init__(self, facts, pos, neg):
        super().__init__()
        self.keys = triple_keys(facts, N, R)
        self.pos, self.neg = torch.tensor(pos), torch.tensor(neg)

    def score(self, h, r, t):
        h, r, t = h[..., 0].long(), r[..., 0].long(), t[..., 0].long()
        known = torch.isin((h * R + r) * N + t, self.keys)
        return torch.where(known, self.pos[r], self.neg[r])


def _data():
    gen = torch.Generator().manual_seed(0)
    every = torch.cartesian_prod(torch.arange(N), torch.arange(R), torch.arange(N))  # (N*R*N, 3)
    triples = every[torch.randperm(len(every), generator=gen)[:60]]  # 60 distinct facts
    train, valid, test = triples[:40], triples[40:50], triples[50:]
    return SimpleNamespace(train=train, valid=valid, test=test, num_entities=N, num_relations=R,
                           relation_names=["likes", "knows"])


def test_best_thresholds_hand_checked():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 1.0, 1.0, 1.0])
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    thr, acc, present = best_thresholds(scores, labels, groups, 3)
    # group 0 sorted: 0.1 n, 0.35 p, 0.4 n, 0.8 p -> cut below 0.35 gets 3/4 (the lowest best cut)
    assert thr[0].item() == pytest.approx(0.225) and acc[0].item() == pytest.approx(0.75)
    # group 1: three equal scores, 2 positives -> all "true": threshold min - 1
    assert thr[1].item() == pytest.approx(0.0) and acc[1].item() == pytest.approx(2 / 3)
    assert present.tolist() == [True, True, False] and math.isnan(thr[2].item())
    thr, acc, _ = best_thresholds(torch.tensor([0.9, 0.2]), torch.tensor([False, False]), torch.tensor([0, 0]), 1)
    assert thr[0].item() == pytest.approx(1.9) and acc[0].item() == 1.0  # all "false": max + 1


def test_negatives_are_never_known_and_are_deterministic():
    data = _data()
    known = torch.cat([data.train, data.valid, data.test])
    pos = data.test
    neg, src, counts = corrupt(pos, known, N, R, torch.Generator().manual_seed(1), num_negatives=30)
    assert counts["drawn"] == 30 * len(pos) and counts["redrawn"] > 0  # small dense graph: collisions happen
    assert not torch.isin(triple_keys(neg, N, R), triple_keys(known, N, R)).any()
    assert len(neg) == counts["drawn"] - counts["dropped"]
    assert torch.equal(neg[:, 1], pos[src, 1])  # relation kept
    changed = (neg[:, [0, 2]] != pos[src][:, [0, 2]]).sum(1)
    assert (changed == 1).all()  # exactly one side corrupted
    heads = (neg[:, 0] != pos[src, 0]).float().mean()
    assert 0.3 < heads < 0.7  # both sides get corrupted
    again, _, _ = corrupt(pos, known, N, R, torch.Generator().manual_seed(1), num_negatives=30)
    assert torch.equal(neg, again)


def test_perfect_scores_give_auc_and_accuracy_one():
    data = _data()
    facts = torch.cat([data.train, data.valid, data.test])
    decoder = TableDecoder(facts, pos=[3.0, 10.0], neg=[0.0, -5.0])
    ent = torch.arange(N, dtype=torch.float32)[:, None]  # rows carry their ids
    rel = torch.arange(2 * R, dtype=torch.float32)[:, None]
    out = triple_classification((ent, rel), decoder, data, torch.Generator().manual_seed(0), num_negatives=3)
    for split in ("valid", "test"):
        o = out["overall"][split]
        assert o["roc_auc"] == 1.0 and o["average_precision"] == 1.0 and o["accuracy"] == 1.0
        assert o["positives"] == len(getattr(data, split)) and o["negatives"] == 3 * o["positives"] - \
            out["negatives"][split]["dropped"]
    # thresholds: midpoint between each relation's negative and positive score
    assert set(out["relations"]) == {"likes", "knows"}
    for name, mid in (("likes", 1.5), ("knows", 2.5)):
        rel = out["relations"][name]
        assert rel["threshold_from"] == "relation" and rel["threshold"] == pytest.approx(mid)
        assert rel["valid"]["accuracy"] == 1.0 and rel["test"]["accuracy"] == 1.0
        assert rel["test"]["roc_auc"] == 1.0
    json.dumps(out)  # JSON-ready


def test_classify_command(tmp_path):
    from test_predict import make_run

    from metasd_dgl.tools.commands import classify_command

    run = make_run(tmp_path)
    res = CliRunner().invoke(classify_command, [str(run), "--num-negatives", "2", "--seed", "3"])
    assert res.exit_code == 0, res.output
    record = json.loads((run / "eval" / "triple_classification.json").read_text())
    assert set(record["results"]) == {"teacher", "student"} and record["num_negatives"] == 2
    t = record["results"]["teacher"]
    assert 0.0 <= t["overall"]["test"]["roc_auc"] <= 1.0 and set(t["relations"]) <= {"likes", "knows", "lives_in"}
    assert record["results"]["student"]["negatives"] == t["negatives"]  # same draws for both


# ------------------------------------------------------------- given negatives
class KeyDecoder(Decoder):
    """score(h, r, t) = table[(h, r, t)]: hand-set scores; rows carry the ids."""

    def __init__(self, table, n, r):
        super().__init__()
        self.n, self.r, self.table = n, r, {(h * r + rel) * n + t: s for (h, rel, t), s in table.items()}

    def score(self, h, r, t):
        keys = (h[..., 0].long() * self.r + r[..., 0].long()) * self.n + t[..., 0].long()
        return torch.tensor([self.table[k] for k in keys.tolist()])


def brute_force_thresholds(scores, labels, groups, num_groups):
    """Every cut over all distinct scores and midpoints: the best validation accuracy per group."""
    best = []
    for g in range(num_groups):
        s, y = scores[groups == g].tolist(), labels[groups == g].tolist()
        if not s:
            best.append(None)
            continue
        cands = sorted(set(s)) + [(a + b) / 2 for a, b in zip(sorted(set(s)), sorted(set(s))[1:])]
        cands += [min(s) - 1, max(s) + 1]
        best.append(max(sum((si >= c) == yi for si, yi in zip(s, y)) / len(s) for c in cands))
    return best


def test_thresholds_equal_brute_force_on_random_ties():
    gen = torch.Generator().manual_seed(5)
    for trial in range(20):
        n = int(torch.randint(1, 30, (1,), generator=gen))
        scores = torch.randint(0, 6, (n,), generator=gen).float() / 2  # many ties
        labels = torch.rand(n, generator=gen) < 0.5
        groups = torch.randint(0, 4, (n,), generator=gen)
        thr, acc, present = best_thresholds(scores, labels, groups, 4)
        for g, want in enumerate(brute_force_thresholds(scores, labels, groups, 4)):
            if want is None:
                assert not present[g]
                continue
            m = groups == g
            got = ((scores[m].double() >= thr[g]) == labels[m]).double().mean().item()
            assert got == pytest.approx(want) and acc[g].item() == pytest.approx(want), (trial, g)


def tiny_given():
    """3 relations; relation 2 has no validation example (global threshold). Scores by hand."""
    valid_pos = {(0, 0, 1): 0.9, (1, 0, 2): 0.4, (3, 1, 0): 2.0}
    valid_neg = {(0, 0, 2): 0.5, (2, 0, 3): 0.1, (3, 1, 1): 1.0}
    test_pos = {(1, 0, 3): 0.3, (0, 1, 2): 1.2, (0, 2, 1): 0.5}
    test_neg = {(3, 0, 0): 0.2, (2, 1, 0): 1.7, (1, 2, 0): 0.1}
    t = lambda d: torch.tensor(list(d), dtype=torch.long)  # noqa: E731
    data = SimpleNamespace(train=t(valid_pos), valid=t(valid_pos), test=t(test_pos), num_entities=4,
                           num_relations=3, relation_names=["a", "b", "c"])
    decoder = KeyDecoder({**valid_pos, **valid_neg, **test_pos, **test_neg}, 4, 3)
    return data, decoder, {"valid": t(valid_neg), "test": t(test_neg)}


def test_classify_given_by_hand():
    from metasd_dgl.tools.classification import classify_given, f1_score

    data, decoder, negatives = tiny_given()
    ent = torch.arange(4, dtype=torch.float32)[:, None]
    rel = torch.arange(6, dtype=torch.float32)[:, None]
    out = classify_given((ent, rel), decoder, data, negatives, "by hand")
    rels = out["relations"]
    # a: 0.1 n, 0.4 p, 0.5 n, 0.9 p -> 3/4 at cuts 0.25, 0.45, 0.7; the lowest is kept
    assert rels["a"]["threshold"] == pytest.approx(0.25) and rels["a"]["threshold_from"] == "relation"
    assert rels["b"]["threshold"] == pytest.approx(1.5)  # 1.0 n, 2.0 p
    # c: no validation example -> the global cut: all six valid scores, 4/6 at best, lowest cut 0.25
    assert rels["c"]["threshold"] == pytest.approx(0.25) and rels["c"]["threshold_from"] == "all relations"
    # test: a 0.3 p -> T (TP), 0.2 n -> F (TN); b 1.2 p -> F (FN), 1.7 n -> T (FP); c 0.5 p TP, 0.1 n TN
    test = out["overall"]["test"]
    assert test["accuracy"] == pytest.approx(4 / 6) and test["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert (test["positives"], test["negatives"]) == (3, 3)
    assert out["overall"]["valid"]["accuracy"] == pytest.approx(5 / 6)  # a 3/4, b 2/2
    assert rels["b"]["test"]["f1"] == 0.0 and rels["c"]["test"]["f1"] == 1.0
    assert out["negatives"] == {"valid": {"given": 3}, "test": {"given": 3}}
    assert f1_score(torch.tensor([False]), torch.tensor([False])) is None
    json.dumps(out)


def test_classify_command_given_negatives_and_bad_files(tmp_path, capsys):
    from test_predict import make_run

    from metasd_dgl.cli import main

    run = make_run(tmp_path)
    out_json = run / "eval" / "triple_classification.json"
    good_v = tmp_path / "nv.txt"
    good_v.write_text("alice\tknows\tgina\nbob\tlikes\toslo\n")
    good_t = tmp_path / "nt.txt"
    good_t.write_text("gina\tknows\tcarol\n")
    cases = [("bad.txt", "alice\tknows\tgina\n\nbob\tlikes\n", r"bad.txt:3: expected 3 tab-separated fields, got 2"),
             ("unk.txt", "alice\tknows\tgina\nzed\tlikes\tbob\n", r"unk.txt:2: unknown entity 'zed'"),
             ("unr.txt", "alice\thates\tgina\n", r"unr.txt:1: unknown relation 'hates'")]
    for name, text, message in cases:
        bad = tmp_path / name
        bad.write_text(text)
        assert main(["classify", str(run), "--negatives-valid", str(good_v), "--negatives-test", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and __import__("re").search(message, err[0]), err
        assert not out_json.exists()  # nothing half-written
    assert main(["classify", str(run), "--negatives-valid", str(good_v)]) == 2
    assert "go together" in capsys.readouterr().err and not out_json.exists()
    assert main(["classify", str(run), "--negatives-valid", str(good_v), "--negatives-test", str(good_t)]) == 0
    shown = capsys.readouterr().out
    assert "f1" in shown and f"negatives: files {good_v}, {good_t}" in shown
    record = json.loads(out_json.read_text())
    assert record["results"]["teacher"]["negatives"] == {"valid": {"given": 2}, "test": {"given": 1}}
    assert record["results"]["teacher"]["overall"]["test"]["negatives"] == 1


def test_classify_uses_the_negatives_a_dataset_ships(tmp_path, capsys):
    import shutil

    from test_predict import make_run

    from metasd_dgl.cli import main
    from metasd_dgl.data.preprocess import preprocess

    run = make_run(tmp_path)
    toy = tmp_path / "toy"
    shutil.copytree(Path(__file__).resolve().parents[1] / "datasets" / "toy", toy)
    (toy / "valid_negatives.txt").write_text("alice\tknows\tgina\nbob\tlikes\toslo\n")
    (toy / "test_negatives.txt").write_text("gina\tknows\tcarol\n")
    preprocess(toy, tmp_path / "data", force=True)  # same ids: the run still fits its data
    assert main(["classify", str(run)]) == 0
    assert "negatives: shipped with the dataset" in capsys.readouterr().out
    record = json.loads((run / "eval" / "triple_classification.json").read_text())
    assert record["num_negatives"] is None and record["seed"] is None
    assert record["results"]["student"]["negatives"] == {"valid": {"given": 2}, "test": {"given": 1}}
