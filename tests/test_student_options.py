"""The student's options: one-way and swapped real-step KD, the gradual prune schedule, the own-weights
student (its step, its remask, its resume), and option combinations that do not exist."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from metasd_dgl.checkpoint import load_checkpoint
from metasd_dgl.cli import main
from metasd_dgl.config import Config, ConfigError, apply_overrides, load_config
from metasd_dgl.model import build_model
from metasd_dgl.pruning import compute_masks, keep_count, prunable_params, scheduled_rate
from metasd_dgl.student import MaskedStudent
from metasd_dgl.train.losses import cross_entropy_1n, dura, kd_loss, log_probs
from step_helpers import Stepper

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "datasets" / "toy")
N, R = 6, 2


def _model():
    gen = torch.Generator().manual_seed(0)
    return build_model("kge", "complex", N, R, 3, init_scale=0.5, generator=gen).to(torch.float64)


def _queries(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, N, (n,), generator=gen), torch.randint(0, 2 * R, (n,), generator=gen),
                        torch.randint(0, N, (n,), generator=gen)], 1)


def _stepper(model, overrides):
    cfg = apply_overrides(Config(), {"train.reg_weight": 0.05, **overrides})
    return Stepper(model, cfg, sgd_lr=0.3)


def _kd(learner, source, fw, rw):
    return kd_loss(log_probs(learner, 3.0), log_probs(source, 3.0), fw, rw, 1.0)


@pytest.mark.parametrize("one_way,weighting", [(True, "source"), (False, "self"), (True, "self")])
def test_real_step_kd_variants_match_autograd(one_way, weighting):
    """one_way_kd: the teacher's loss is CE + reg only; real_kd_weighting=self: each learner
    3 KL(self || other) + KL(other || self) (the reference code's real step)."""
    model = _model()
    twin = copy.deepcopy(model)
    masks = compute_masks(prunable_params(model), 0.5)
    batch = _queries(8, 1)
    st = _stepper(model, {"train.method": "kd", "metasd.one_way_kd": one_way, "metasd.real_kd_weighting": weighting})
    out = st.step(batch, MaskedStudent(masks, dict(model.named_parameters())))
    fw, rw = (3.0, 1.0) if weighting == "source" else (1.0, 3.0)  # weights of KL(source||learner), KL(learner||source)
    W = dict(twin.named_parameters())
    S_w = {n: w * masks[n] if n in masks else w for n, w in W.items()}

    def fwd(weights):
        ent, rel = weights["encoder.entity"], weights["encoder.relation"]
        h, r, t = ent[batch[:, 0]], rel[batch[:, 1]], ent[batch[:, 2]]
        return twin.decoder.score_all(h, r, ent), (h, r, t)

    S, rs = fwd(S_w)
    T, rt = fwd(W)
    y = batch[:, 2]
    student = cross_entropy_1n(S, y) + dura(*rs, 0.05) + _kd(S, T.detach(), fw, rw)
    teacher = cross_entropy_1n(T, y) + dura(*rt, 0.05) + (0 if one_way else _kd(T, S.detach(), fw, rw))
    (student + teacher).backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.3 * p.grad
    assert out["loss"] == pytest.approx((student + teacher).item(), abs=1e-12)
    assert (out["kd_teacher"] == 0.0) == one_way
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_cubic_schedule_by_hand():
    assert [scheduled_rate(0.9, e, 4) for e in range(6)] == pytest.approx(
        [0.0, 0.9 * (1 - 0.75 ** 3), 0.9 * (1 - 0.5 ** 3), 0.9 * (1 - 0.25 ** 3), 0.9, 0.9])
    assert scheduled_rate(0.9, 0, 0) == 0.9


def _train(run, *extra):
    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--dim", "4", "--batch-size", "4",
            "--set", "train.valid_every=1", "--set", "train.patience=0", *extra]
    assert main(args) == 0
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


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


def test_resume_may_not_change_the_student_strategy(tmp_path):
    from metasd_dgl.errors import CheckpointError  # noqa: F401  (the CLI reports it as one error line)
    own = ["--method", "metasd", "--set", "metasd.quiz_fraction=0.2", "--set", "prune.rate=0.5"]
    _train(tmp_path / "run", "--epochs", "1", *own, "--set", "metasd.student=own")
    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(tmp_path / "run"), "--dim", "4",
            "--batch-size", "4", "--epochs", "2", *own, "--set", "metasd.student=shared", "--resume",
            str(tmp_path / "run")]
    assert main(args) == 2  # metasd.student: 'own' (checkpoint) vs 'shared' (now)


def test_option_combinations_that_do_not_exist_are_config_errors():
    for over in ({"metasd.student": "own", "train.method": "prune"},
                 {"train.method": "kd", "train.regime": "negative-sampling"},
                 {"prune.gradual_epochs": 50, "train.method": "prune", "train.epochs": 50},
                 {"prune.structure": "dimension", "prune.scope": "per-tensor", "train.method": "prune"},
                 {"metasd.student": "own", "train.method": "kd", "train.lr_scheduler": "plateau"},
                 # options the method would silently ignore
                 {"prune.gradual_epochs": 2, "train.method": "plain"},
                 {"metasd.one_way_kd": True, "train.method": "prune"},
                 {"metasd.student_lr": 0.1, "train.method": "metasd"}):
        with pytest.raises(ConfigError):
            load_config(overrides=over)
    for retired in ({"metasd.straight_through": True}, {"metasd.share_forward": True},
                    {"metasd.warmup_epochs": 2}, {"metasd.mask_source": "student"}, {"train.init_from": "x.pt"}):
        with pytest.raises(ConfigError, match="retired"):
            load_config(overrides=retired)


# ------------------------------------------------------------------ a student with its own weights
def _adagrad(leaves):
    return torch.optim.SGD(leaves, lr=0.2)


@pytest.mark.parametrize("one_way", [True, False])
def test_own_student_step_by_hand(one_way):
    """metasd.student=own: the student's loss moves only its own tensors (its own optimiser), the
    teacher's loss only the teacher (with KD from the student unless one_way_kd)."""
    from metasd_dgl.student import OwnStudent
    model = _model()
    params = dict(model.named_parameters())
    masks = compute_masks(prunable_params(model), 0.5)
    student = OwnStudent(masks, params, "element", _adagrad)
    for n, w in student.leaves.items():  # initialised from the teacher's kept weights
        assert torch.equal(w, params[n].detach() * masks[n]) and w is not params[n]
    S0 = {n: w.detach().clone() for n, w in student.leaves.items()}
    W0 = {n: p.detach().clone() for n, p in params.items()}
    batch = _queries(8, 3)
    st = _stepper(model, {"train.method": "kd", "metasd.student": "own", "metasd.one_way_kd": one_way})
    out = st.step(batch, student)

    Sr = {n: w.clone().requires_grad_(True) for n, w in S0.items()}
    Wr = {n: w.clone().requires_grad_(True) for n, w in W0.items()}

    def fwd(weights):
        ent, rel = weights["encoder.entity"], weights["encoder.relation"]
        h, r, t = ent[batch[:, 0]], rel[batch[:, 1]], ent[batch[:, 2]]
        return model.decoder.score_all(h, r, ent), (h, r, t)

    S, rs = fwd({n: Sr[n] * masks[n] for n in Sr})
    T, rt = fwd(Wr)
    y = batch[:, 2]
    ls = cross_entropy_1n(S, y) + dura(*rs, 0.05) + _kd(S, T.detach(), 3.0, 1.0)
    lt = cross_entropy_1n(T, y) + dura(*rt, 0.05) + (0 if one_way else _kd(T, S.detach(), 3.0, 1.0))
    gs = torch.autograd.grad(ls, list(Sr.values()))
    gt = torch.autograd.grad(lt, list(Wr.values()))
    for (n, w), g in zip(student.leaves.items(), gs):
        torch.testing.assert_close(w.detach(), S0[n] - 0.2 * g, rtol=1e-12, atol=1e-12)
    for (n, p), g in zip(params.items(), gt):
        torch.testing.assert_close(p.detach(), W0[n] - 0.3 * g, rtol=1e-12, atol=1e-12)
    assert out["loss"] == pytest.approx((ls + lt).item(), abs=1e-12)


def test_own_student_remask_keeps_regrows_and_prunes():
    from metasd_dgl.student import OwnStudent
    model = _model()
    params = dict(model.named_parameters())
    m0 = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.5 for n, p in params.items()}
    m1 = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) < 0.5 for n, p in params.items()}
    student = OwnStudent(m0, params, "element", _adagrad)
    with torch.no_grad():
        for w in student.leaves.values():
            w.add_(10.0)  # the student has learned something of its own
    student.remask(m1, params)
    for n, w in student.leaves.items():
        p = params[n].detach()
        assert torch.equal(w[m0[n] & m1[n]], p[m0[n] & m1[n]] + 10.0)  # kept: its own values
        assert torch.equal(w[~m0[n] & m1[n]], p[~m0[n] & m1[n]])  # regrown: from the teacher
        assert torch.all(w[~m1[n]] == 0)  # pruned: zero
    assert all(torch.equal(student.weights(params)[n], w * m1[n]) for n, w in student.leaves.items())


def test_own_student_runs_evaluates_and_resumes_exactly(tmp_path):
    own = ["--method", "metasd", "--set", "metasd.student=own", "--set", "prune.structure=dimension",
           "--set", "metasd.quiz_fraction=0.2", "--set", "prune.rate=0.5", "--set", "metasd.one_way_kd=true"]
    rows = _train(tmp_path / "whole", "--epochs", "3", *own)
    _train(tmp_path / "part", "--epochs", "2", *own)
    _train(tmp_path / "part", "--epochs", "3", *own, "--resume", str(tmp_path / "part"))
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("whole", "part"))
    for key in ("model", "student_weights"):
        for n, w in a[key].items():
            assert torch.equal(w, b[key][n]), (key, n)
    kept = a["masks"]["encoder.entity"]
    assert not torch.equal(a["student_weights"]["encoder.entity"][kept], a["model"]["encoder.entity"][kept])  # its own
    logged = [r["valid"]["student"]["mrr"] for r in rows if "valid" in r][-1]
    assert main(["evaluate", str(tmp_path / "whole"), "--split", "valid", "--checkpoint", "last", "--no-plots"]) == 0
    again = json.loads((tmp_path / "whole" / "eval" / "valid.json").read_text())["results"]["student"]["both"]["mrr"]
    assert again == pytest.approx(logged, abs=1e-12)


