"""Triple classification: filtered DGL negatives, per-relation thresholds, AUC / AP / accuracy."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from metasd_dgl.classification import best_thresholds, corrupt, triple_classification
from metasd_dgl.data.triples import triple_keys
from metasd_dgl.decoders import Decoder

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

    from metasd_dgl.cli_tools import classify_command

    run = make_run(tmp_path)
    res = CliRunner().invoke(classify_command, [str(run), "--num-negatives", "2", "--seed", "3"])
    assert res.exit_code == 0, res.output
    record = json.loads((run / "eval" / "triple_classification.json").read_text())
    assert set(record["results"]) == {"teacher", "student"} and record["num_negatives"] == 2
    t = record["results"]["teacher"]
    assert 0.0 <= t["overall"]["test"]["roc_auc"] <= 1.0 and set(t["relations"]) <= {"likes", "knows", "lives_in"}
    assert record["results"]["student"]["negatives"] == t["negatives"]  # same draws for both
