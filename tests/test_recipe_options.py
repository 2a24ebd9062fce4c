"""The tuned-recipe options: relation prediction, embedding dropout, the plateau LR scheduler."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from metasd_dgl.checkpoint import load_checkpoint
from metasd_dgl.cli import main
from metasd_dgl.config import Config, ConfigError, apply_overrides, validate
from metasd_dgl.model import build_model
from metasd_dgl.pruning import compute_masks, prunable_params
from metasd_dgl.student import MaskedStudent
from metasd_dgl.train.losses import cross_entropy_1n, dura
from metasd_dgl.train.closed_form import CLOSED_FORM
from metasd_dgl.train.losses import AUTOGRAD
from step_helpers import Stepper

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "datasets" / "toy")
N, R = 6, 2


def _model(decoder="complex"):
    gen = torch.Generator().manual_seed(0)
    return build_model("kge", decoder, N, R, 3, init_scale=0.5, generator=gen).to(torch.float64)


def _queries(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, N, (n,), generator=gen), torch.randint(0, 2 * R, (n,), generator=gen),
                        torch.randint(0, N, (n,), generator=gen)], 1)


def _stepper(model, method, **train):
    cfg = apply_overrides(Config(), {"train": {"method": method, "reg_weight": 0.05, **train}})
    return Stepper(model, cfg, sgd_lr=0.3, meta_lr=0.05)


@pytest.mark.parametrize("decoder", ["complex", "distmult"])
def test_relation_scores_by_brute_force(decoder):
    """score_relations(h, t, R)[i, j] = score(h_i, R_j, t_i) for every relation row."""
    model = _model(decoder)
    ent, rel = model.encode(None)
    h, t = ent[[0, 3, 5]], ent[[1, 1, 4]]
    got = model.decoder.score_relations(h, t, rel)
    want = torch.stack([model.decoder.score(h, rel[j].expand_as(h), t) for j in range(2 * R)], 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_plain_step_with_relation_prediction_matches_autograd():
    """loss = CE(tails) + DURA + w * CE(relations | h, t); the closed-form step equals autograd's."""
    model, twin = _model(), None
    twin = copy.deepcopy(model)
    batch = _queries(7, 1)
    out = _stepper(model, "plain", rp_weight=4.0).step(batch)
    ent, rel = twin.encode(None)
    h, r, t = ent[batch[:, 0]], rel[batch[:, 1]], ent[batch[:, 2]]
    ce = cross_entropy_1n(twin.decoder.score_all(h, r, ent), batch[:, 2])
    rp = 4.0 * cross_entropy_1n(twin.decoder.score_relations(h, t, rel), batch[:, 1])
    loss = ce + dura(h, r, t, 0.05, "complex") + rp
    loss.backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.3 * p.grad
    assert out["rp"] == pytest.approx(rp.item(), abs=1e-12) and out["loss"] == pytest.approx(loss.item(), abs=1e-12)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method,opts", [("prune", {}), ("kd", {}), ("metasd", {}),
                                         ("metasd", {"metasd.extra_teacher_step": True})])
def test_relation_prediction_in_every_method_on_both_backends(method, opts):
    """Teacher, student and virtual step all carry the RP term; closed-form and autograd backends agree."""
    model = _model()
    masks = compute_masks(prunable_params(model), 0.5)
    batch, quiz = _queries(7, 2), _queries(4, 3)
    after = []
    for backend in (CLOSED_FORM, AUTOGRAD):
        m = copy.deepcopy(model)
        cfg = apply_overrides(Config(), {"train.method": method, "train.rp_weight": 2.0,
                                         "metasd.virtual_lr": 0.5, **opts})
        st = Stepper(m, cfg, sgd_lr=0.3, meta_lr=0.05, backend=backend)
        out = st.step(batch, MaskedStudent(masks, dict(m.named_parameters())), quiz)
        after.append((dict(m.named_parameters()), out))
    (w0, o0), (w1, o1) = after
    assert o0["rp"] > 0 and o1["rp"] == pytest.approx(o0["rp"], rel=1e-10)
    for n in w0:
        torch.testing.assert_close(w1[n], w0[n], rtol=1e-10, atol=1e-12)
    no_rp = copy.deepcopy(model)  # and the term does change the step
    _stepper(no_rp, method, **({"rp_weight": 0.0})).step(batch, MaskedStudent(masks, dict(no_rp.named_parameters())),
                                                        quiz)
    assert not torch.allclose(dict(no_rp.named_parameters())["encoder.relation"], w0["encoder.relation"])


def test_relation_prediction_needs_a_bilinear_decoder():
    cfg = apply_overrides(Config(), {"train.rp_weight": 1.0, "model.decoder": "transe"})
    with pytest.raises(ConfigError, match="train.rp_weight"):
        validate(cfg)


def test_embedding_dropout_is_seeded_scaled_and_training_only():
    model = _model()
    batch = _queries(5, 4)
    st = _stepper(model, "plain", entity_dropout=0.5, relation_dropout=0.25).steps
    with pytest.raises(ValueError, match="generator"):
        st.forward(None, batch)
    st.generator = torch.Generator().manual_seed(3)
    a = st.forward(None, batch).scores
    st.generator = torch.Generator().manual_seed(3)
    b = st.forward(None, batch).scores
    assert torch.equal(a, b)  # the masks come from the generator
    plain = st.forward(None, batch, train=False).scores  # no dropout outside training steps
    ent, rel = model.encode(None)
    torch.testing.assert_close(plain, model.decoder.score_all(ent[batch[:, 0]], rel[batch[:, 1]], ent))
    assert not torch.allclose(a, plain)
    x = torch.ones(200, 50, dtype=torch.float64)
    st.generator = torch.Generator().manual_seed(0)
    dropped = st._dropout(x, 0.5)
    assert set(dropped.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept entries scaled by 1/(1-p)
    assert abs(dropped.mean().item() - 1.0) < 0.03


def _train(run, *extra):
    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--dim", "4", "--batch-size", "4",
            "--set", "train.valid_every=1", "--set", "train.patience=0", *extra]
    assert main(args) == 0


def test_dropout_off_in_evaluation(tmp_path):
    """A run trained with dropout evaluates deterministically: the same ranks as its weights without dropout."""
    run = tmp_path / "run"
    _train(run, "--epochs", "2", "--set", "train.entity_dropout=0.3", "--set", "train.relation_dropout=0.3")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["valid"]["teacher"]["mrr"] for r in rows if "valid" in r][-1]
    assert main(["evaluate", str(run), "--split", "valid", "--checkpoint", "last", "--no-plots"]) == 0
    again = json.loads((run / "eval" / "valid.json").read_text())
    assert again["results"]["teacher"]["both"]["mrr"] == pytest.approx(logged, abs=1e-12)


def test_plateau_scheduler_drops_lr_and_resumes_exactly(tmp_path):
    plateau = ["--lr", "0.5", "--set", "train.lr_scheduler=plateau", "--set", "train.lr_patience=0",
               "--set", "train.lr_factor=0.5"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    _train(whole, "--epochs", "6", *plateau)
    _train(part, "--epochs", "3", *plateau)
    _train(part, "--epochs", "6", *plateau, "--resume", str(part))
    a, b = load_checkpoint(whole / "checkpoints" / "last.pt"), load_checkpoint(part / "checkpoints" / "last.pt")
    for n, w in a["model"].items():
        assert torch.equal(w, b["model"][n]), n
    assert a["scheduler"] == b["scheduler"]
    # Patience 0: every validation without a (relative 1e-4) gain halves the lr; replay the rule.
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    lr, best = 0.5, -1.0
    for mrr in [r["valid"]["teacher"]["mrr"] for r in rows if "valid" in r]:
        if mrr > best * (1 + 1e-4):
            best = mrr
        else:
            lr *= 0.5
    assert lr < 0.5, "the run should have hit a plateau"
    assert a["scheduler"]["_last_lr"] == [lr] and a["optimizer"]["param_groups"][0]["lr"] == lr
    logged = [r["lr"] for r in rows if "lr" in r]
    assert logged[0] == 0.5 and logged == sorted(logged, reverse=True)
