"""Students (student.py): one constructor for masked and column students, the column student stepping exactly
like the masked one, and the student with its own weights (its step, its remask, its run and resume)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from metasd_dgl.store.checkpoint import load_checkpoint
from metasd_dgl.cli import main
from metasd_dgl.model.predictor import build_model
from metasd_dgl.model.pruning import compute_masks, dimension_coordinates, prunable_params
from metasd_dgl.model.student import ColumnStudent, MaskedStudent, RegrowingStudent, make_student
from metasd_dgl.train.losses import cross_entropy_1n, dura
from run_helpers import train_toy as _train
from step_helpers import (N, R, kd_at_t3 as _kd, one_thread, overrides_stepper, queries,  # noqa: F401
                          seeded_queries as _queries, small_model as _model, stepper)


def test_students_are_built_in_one_place():
    """make_student: masked ``W * M`` for element masks, kept columns for whole-coordinate masks."""
    gen = torch.Generator().manual_seed(8)
    model = build_model("kge", "complex", N, R, 4, init_scale=0.5, generator=gen).to(torch.float64)
    params = dict(model.named_parameters())
    prunable = prunable_params(model)
    element = make_student(compute_masks(prunable, 0.5), params, "element")
    assert type(element) is MaskedStudent
    for n, w in element.weights(params).items():
        expected = params[n] * element.bool_masks[n] if n in element.bool_masks else params[n]
        assert torch.equal(w, expected)
    masks = compute_masks(prunable, 0.5, "global", dimension_coordinates(prunable, 4))
    cols = make_student(masks, params, "dimension")
    assert type(cols) is ColumnStudent
    ent = cols.weights(params)["encoder.entity"]
    keep = masks["encoder.entity"][0]
    assert torch.equal(ent, params["encoder.entity"][:, keep])  # (N, 2k): the kept real, then imaginary columns
    assert torch.equal(cols.restrict("encoder.entity", torch.ones_like(ent)), torch.ones_like(ent))


@pytest.mark.parametrize("decoder", ["complex", "distmult", "rotate", "transe"])
@pytest.mark.parametrize("method,opts", [("prune", {}), ("kd", {}), ("metasd", {}), ("kd", {"extra_teacher_step": True})])
def test_narrow_student_equals_masked_student(decoder, method, opts):
    """Whole-coordinate masks: the student on the kept columns takes exactly the masked student's step."""
    gen = torch.Generator().manual_seed(5)
    model = build_model("kge", decoder, N, R, 6, init_scale=0.5, generator=gen).to(torch.float64)
    prunable = prunable_params(model)
    masks = compute_masks(prunable, 0.5, "global", dimension_coordinates(prunable, 6))
    batch, quiz = queries(5, gen), queries(4, gen)
    after = []
    for strategy in (MaskedStudent, ColumnStudent):
        m = copy.deepcopy(model)
        st = stepper(m, method, sgd_lr=0.1, **opts)
        student = strategy(masks, dict(m.named_parameters()))
        for _ in range(2):
            out = st.step(batch, student, quiz)
        after.append(({n: p.detach().clone() for n, p in m.named_parameters()}, out))
    (w0, o0), (w1, o1) = after
    for n in w0:
        torch.testing.assert_close(w1[n], w0[n], rtol=1e-10, atol=1e-12)
    assert set(o0) == set(o1)
    for k in o0:
        assert o1[k] == pytest.approx(o0[k], rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------ a student with its own weights

@pytest.mark.parametrize("one_way", [True, False])
def test_own_student_step_by_hand(one_way):
    """metasd.student=own: the student's loss moves only its own tensors (its own optimiser), the
    teacher's loss only the teacher (with KD from the student unless one_way_kd)."""
    from metasd_dgl.model.student import OwnStudent
    model = _model()
    params = dict(model.named_parameters())
    masks = compute_masks(prunable_params(model), 0.5)
    student = OwnStudent(masks, params, "element")
    for n, w in student.leaves.items():  # initialised from the teacher's kept weights
        assert torch.equal(w, params[n].detach() * masks[n]) and w is not params[n]
    S0 = {n: w.detach().clone() for n, w in student.leaves.items()}
    W0 = {n: p.detach().clone() for n, p in params.items()}
    batch = _queries(8, 3)
    st = overrides_stepper(model, {"train.method": "kd", "metasd.student": "own", "metasd.one_way_kd": one_way,
                                   "metasd.student_lr": 0.2})  # the own student's SGD step: lr 0.2
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
    from metasd_dgl.model.student import OwnStudent
    model = _model()
    params = dict(model.named_parameters())
    m0 = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.5 for n, p in params.items()}
    m1 = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) < 0.5 for n, p in params.items()}
    student = OwnStudent(m0, params, "element")
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


def test_prune_only_student_regrows_pruned_weights():
    """Method prune with element masks: ``W * M`` forward, every weight gets its masked value's gradient
    (straight-through), so pruned weights move and the next magnitude mask can bring them back; the
    masked student of kd/metasd gives a pruned weight no gradient at all."""
    model = _model()
    params = dict(model.named_parameters())
    masks = compute_masks(prunable_params(model), 0.7)
    regrow = make_student(masks, params, "element", regrow=True)
    assert type(regrow) is RegrowingStudent and type(regrow.remask(masks, params)) is RegrowingStudent
    assert type(make_student(masks, params, "element")) is MaskedStudent
    weights = regrow.weights(params)
    for n in masks:  # forward: exactly the masked weights
        assert torch.equal(weights[n], params[n] * masks[n])
    loss = sum((w ** 2).sum() for w in weights.values())
    grads = torch.autograd.grad(loss, list(params.values()))
    for (n, p), g in zip(params.items(), grads):  # backward: identity, so d/dW = 2 * (W * M) everywhere
        torch.testing.assert_close(g, 2 * (p * masks[n]).detach())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    overrides_stepper(model, {"train.method": "prune"}).step(_queries(12, 2), regrow)
    for n, p in model.named_parameters():  # pruned weights moved (they do get gradient)
        assert not torch.equal(p[~masks[n]], before[n][~masks[n]])
    default = _model()
    overrides_stepper(default, {"train.method": "prune"}).step(
        _queries(12, 2), MaskedStudent(masks, dict(default.named_parameters())))
    for n, p in default.named_parameters():  # the masked student does not move them
        assert torch.equal(p[~masks[n]], before[n][~masks[n]])


def test_prune_only_runs_regrow_and_whole_coordinate_masks_need_no_regrowth(tmp_path):
    """A prune-only run's element mask moves between epochs (pruned weights came back); with
    whole-coordinate masks the column student takes the regrowing student's step exactly (a pruned
    coordinate's gradient is zero in every score and regulariser)."""
    rows = _train(tmp_path / "run", "--epochs", "3", "--method", "prune", "--set", "checkpoint.keep=3",
                  "--set", "train.lr=0.5")
    assert all("density" in r for r in rows if "seconds" in r)
    masks = [load_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch-{k}.pt")["masks"] for k in (1, 3)]
    assert any(not torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    gen = torch.Generator().manual_seed(5)
    model = build_model("kge", "complex", N, R, 6, init_scale=0.5, generator=gen).to(torch.float64)
    prunable = prunable_params(model)
    dim_masks = compute_masks(prunable, 0.5, "global", dimension_coordinates(prunable, 6))
    batch = queries(5, gen)
    after = []
    for build in (lambda p: make_student(dim_masks, p, "dimension", regrow=True),
                  lambda p: RegrowingStudent(dim_masks, p)):
        m = copy.deepcopy(model)
        student = build(dict(m.named_parameters()))
        overrides_stepper(m, {"train.method": "prune"}).step(batch, student)
        after.append({n: p.detach().clone() for n, p in m.named_parameters()})
    for n in after[0]:
        torch.testing.assert_close(after[0][n], after[1][n], rtol=1e-10, atol=1e-12)


def test_checkpoint_student_is_the_masked_weights_of_its_own_tensors():
    """The one rebuild of a student from a checkpoint: ``W * M`` of the student's own tensors where
    it has them (``student_weights``), of the teacher's elsewhere; None without masks."""
    from metasd_dgl.model.student import checkpoint_student

    model = _model()
    params = dict(model.named_parameters())
    masks = compute_masks(prunable_params(model), 0.5)
    own = {"encoder.entity": torch.full_like(params["encoder.entity"], 2.0)}
    got = checkpoint_student(params, masks, own)
    assert torch.equal(got["encoder.entity"], 2.0 * masks["encoder.entity"].to(torch.float64))
    assert torch.equal(got["encoder.relation"], params["encoder.relation"].detach() * masks["encoder.relation"])
    assert not any(w.requires_grad for w in got.values())
    assert checkpoint_student(params, None) is None and checkpoint_student(params, {}) is None
