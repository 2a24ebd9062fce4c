"""Training steps: against autograd references, finite differences, determinism, toy convergence; relation
prediction, embedding dropout, the real step's KD variants and gradient clipping."""
from __future__ import annotations

import copy

import pytest
import torch

from metasd_dgl.config import Config, apply_overrides
from metasd_dgl.model.predictor import build_model
from metasd_dgl.model.pruning import compute_masks, prunable_params
from metasd_dgl.model.student import MaskedStudent
from metasd_dgl.train.closed_form import CLOSED_FORM
from metasd_dgl.train.losses import AUTOGRAD, cross_entropy_1n, dura, kd_loss
from metasd_dgl.train.spec import KDSpec, StepSpec
from run_helpers import REPO
from step_helpers import (Stepper, apply_masks, config, kd_at_t3 as _kd, masked, one_thread,  # noqa: F401
                          overrides_stepper, queries, ref_losses as _ref_losses, scores_rows as _scores_rows,
                          seeded_queries as _queries, small_model as _model, stepper, tiny, toy_graph)


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("method", ["plain", "prune", "kd"])
def test_real_steps_match_autograd_reference(method):
    model = tiny()
    twin = copy.deepcopy(model)
    st = stepper(model, method, sgd_lr=0.3)
    gen = torch.Generator().manual_seed(2)
    batch = queries(9, gen)
    masks = compute_masks(prunable_params(model), 0.6)
    out = st.step(batch, None if method == "plain" else masked(model, masks))

    W = dict(twin.named_parameters())
    student, teacher = _ref_losses(twin, st, W, masks, batch, None)
    if method == "plain":
        T, rt = _scores_rows(twin, W, batch, None)
        loss = cross_entropy_1n(T, batch[:, 2]) + dura(*rt, 0.05, "complex")
    elif method == "prune":
        S, rs = _scores_rows(twin, apply_masks(W, masks), batch, None)
        loss = cross_entropy_1n(S, batch[:, 2]) + dura(*rs, 0.05, "complex")
    else:
        loss = student + teacher
    loss.backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.3 * p.grad
    assert out["loss"] == pytest.approx(loss.item(), abs=1e-12)
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-12), n


@pytest.mark.parametrize("method", ["plain", "prune", "kd", "metasd"])
def test_training_decreases_loss_on_toy_problem(method):
    gen = torch.Generator().manual_seed(0)
    model = build_model("kge", "complex", 20, 3, 8, init_scale=0.1, generator=gen)
    st = stepper(model, method)
    batch = queries(40, gen, 20, 3)
    student = masked(model, compute_masks(prunable_params(model), 0.5))
    key = "ce_teacher" if method == "plain" else "ce_student"
    first = st.step(batch, student, batch[:10])[key]
    for _ in range(25):
        last = st.step(batch, student, batch[:10])[key]
    assert last < 0.75 * first


def test_prune_step_leaves_pruned_weights_alone():
    model = tiny(dtype=torch.float32)
    st = stepper(model, "prune")
    masks = compute_masks(prunable_params(model), 0.7)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    st.step(queries(12, torch.Generator().manual_seed(4)), masked(model, masks))
    for n, p in model.named_parameters():
        assert torch.equal(p[~masks[n]], before[n][~masks[n]])
        assert not torch.equal(p[masks[n]], before[n][masks[n]])


@pytest.mark.parametrize("method,decoder", [("plain", "complex"), ("prune", "rotate")])
def test_negative_sampling_step(method, decoder):
    gen = torch.Generator().manual_seed(0)
    model = build_model("kge", decoder, 20, 3, 8, init_scale=0.1, generator=gen)
    cfg = apply_overrides(config(method, {"regime": "negative-sampling"}), {"negatives": {"num": 4, "margin": 2.0}})
    st = Stepper(model, cfg)
    student = masked(model, compute_masks(prunable_params(model), 0.5)) if method == "prune" else None
    pos, neg = queries(30, gen, 20, 3), torch.randint(0, 20, (30, 4), generator=gen)
    first = st.step(pos, student, negatives=neg)["ns_loss"]
    for _ in range(30):
        last = st.step(pos, student, negatives=neg)
    assert last["ns_loss"] < first
    assert set(last) == {"loss", "ns_loss", "reg", "grad_norm"}


@pytest.mark.parametrize("encoder,decoder", [("kge", "complex"), ("rgcn", "distmult")])
@pytest.mark.parametrize("method,opts", [
    ("plain", {}), ("prune", {}), ("kd", {}), ("kd", {"extra_teacher_step": True, "one_way_kd": True}),
    ("metasd", {}), ("metasd", {"extra_teacher_step": True, "real_kd_weighting": "self"}),
])
def test_every_method_gives_the_same_step_on_both_loss_backends(encoder, decoder, method, opts):
    """closed-form (the steps') and autograd (losses.py, the reference) backends: the same losses and
    the same updated weights."""
    model = tiny(encoder, decoder)
    graph = toy_graph() if encoder == "rgcn" else None
    gen = torch.Generator().manual_seed(6)
    batch, quiz = queries(7, gen), queries(4, gen)
    masks = compute_masks(prunable_params(model), 0.5)
    after = []
    for backend in (CLOSED_FORM, AUTOGRAD):
        m = copy.deepcopy(model)
        st = stepper(m, method, sgd_lr=0.2, meta_lr=0.05, backend=backend, virtual_lr=0.5, **opts)
        assert st.losses is backend
        outs = [st.step(batch, masked(m, masks), quiz, graph) for _ in range(2)]
        after.append(({n: p.detach().clone() for n, p in m.named_parameters()}, outs[-1]))
    (w0, o0), (w1, o1) = after
    assert set(o0) == set(o1)
    for k in o0:
        assert o1[k] == pytest.approx(o0[k], rel=1e-9, abs=1e-12), k
    for n in w0:
        torch.testing.assert_close(w1[n], w0[n], rtol=1e-10, atol=1e-12)
    assert any(not torch.equal(w0[n], p) for n, p in model.named_parameters())  # the step did move


def test_kd_t2_scaling_has_one_default_in_config():
    """config.py's ``metasd.kd_t2_scale`` (on: the recommended student's T^2 scaling) is the only default."""
    cfg = Config()
    assert cfg.metasd.kd_t2_scale is True
    assert StepSpec.from_config(cfg).kd.scale == cfg.metasd.kd_weight * cfg.metasd.temperature ** 2
    on = StepSpec.from_config(config("kd", kd_t2_scale=True, temperature=2.0))
    assert on.kd.scale == 4.0
    assert StepSpec.from_config(config("kd", temperature=2.0)).kd.scale == 1.0  # the paper's: unscaled
    with pytest.raises(TypeError):
        KDSpec()  # no defaults of its own
    with pytest.raises(TypeError):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), 3.0, 1.0)  # scale must be given


@pytest.mark.parametrize("method", ["plain", "prune", "kd", "metasd"])
def test_empty_batch_step_is_finite_and_moves_nothing(method):
    """Under torchrun a rank's share of a short last batch can be empty: no crash, no NaN, no update."""
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    st = stepper(model, method, sgd_lr=0.3)
    student = masked(model, compute_masks(prunable_params(model), 0.5))
    out = st.step(queries(0, torch.Generator()), student, queries(4, torch.Generator().manual_seed(1)))
    assert all(v == v and abs(v) != float("inf") for v in out.values()), out
    if method != "metasd":  # the meta step's quiz batch is not sharded; everything else is empty
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n]), n


# ------------------------------------------------------------------ relation prediction, embedding dropout

def _stepper(model, method, **train):
    cfg = apply_overrides(Config(), {"train": {"method": method, "reg_weight": 0.05, **train}})
    return Stepper(model, cfg, sgd_lr=0.3, meta_lr=0.05)


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


def test_embedding_dropout_is_seeded_scaled_and_training_only():
    model = _model()
    batch = _queries(5, 4)
    st = _stepper(model, "plain", entity_dropout=0.5, relation_dropout=0.25).method
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


# ------------------------------------------------------------------ the real step's KD variants

@pytest.mark.parametrize("one_way,weighting", [(True, "source"), (False, "self"), (True, "self")])
def test_real_step_kd_variants_match_autograd(one_way, weighting):
    """one_way_kd: the teacher's loss is CE + reg only; real_kd_weighting=self: each learner
    3 KL(self || other) + KL(other || self) (the reference code's real step)."""
    model = _model()
    twin = copy.deepcopy(model)
    masks = compute_masks(prunable_params(model), 0.5)
    batch = _queries(8, 1)
    st = overrides_stepper(model, {"train.method": "kd", "metasd.one_way_kd": one_way,
                                   "metasd.real_kd_weighting": weighting})
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


# ------------------------------------------------------------------ gradient clipping

def _one_sgd_step(tmp_path, grad_clip: float, lr: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights before, after) one Trainer step whose optimiser step is plain SGD ``w -= lr * grad``
    (on the gradient as the Stepper left it: clipped when ``train.grad_clip`` > 0)."""
    from metasd_dgl.config import Config
    from metasd_dgl.data.preprocess import load_processed, preprocess
    from metasd_dgl.train.loop import Trainer

    data = load_processed(preprocess(REPO / "datasets" / "toy", tmp_path / f"data{grad_clip}"))
    cfg = Config()
    cfg.model.dim, cfg.model.init_scale, cfg.train.grad_clip, cfg.train.seed = 4, 1.0, grad_clip, 7
    trainer = Trainer(cfg, data, tmp_path / f"run{grad_clip}", progress=False)
    params = [p for group in trainer.method.optimizer.param_groups for p in group["params"]]

    def sgd_step(closure=None):  # noqa: ARG001
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= lr * p.grad

    trainer.method.optimizer.step = sgd_step
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in params])  # noqa: E731
    before = flat().clone()
    trainer.method.step(trainer.examples.queries[:8].to(trainer.device))
    return before, flat()


def test_grad_clip_bounds_the_update(tmp_path):
    """One SGD step with clip c moves the weights by exactly lr * c * g / |g| when |g| > c
    (so by lr * c in norm), and by lr * g when |g| <= c."""
    lr = 0.5
    before, free = _one_sgd_step(tmp_path, 0.0, lr)
    g = (before - free) / lr  # the unclipped gradient
    norm = float(torch.linalg.vector_norm(g))
    assert norm > 0.1
    c = norm / 4
    before_c, clipped = _one_sgd_step(tmp_path, c, lr)
    assert torch.equal(before_c, before)  # same initialisation
    step = before - clipped
    assert float(torch.linalg.vector_norm(step)) == pytest.approx(lr * c, rel=1e-5)
    torch.testing.assert_close(step, lr * c * g / norm, rtol=1e-4, atol=1e-7)
    _, loose = _one_sgd_step(tmp_path, 4 * norm, lr)  # clip above |g|: no effect
    torch.testing.assert_close(loose, free, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["plain", "kd", "metasd"])
def test_bf16_score_products_keep_weights_losses_and_state_in_float32(method):
    """train.precision=bf16: the score products run in bfloat16 (autocast), the score matrices the losses
    see, the weights and the optimiser's state stay float32; one step lands near the float32 step (the
    difference is bfloat16's 8 mantissa bits, not a different method)."""
    gen = torch.Generator().manual_seed(3)
    model = build_model("kge", "complex", 30, 3, 8, init_scale=0.3, generator=gen)
    twin = copy.deepcopy(model)
    batch, quiz = queries(16, gen, 30, 3), queries(8, gen, 30, 3)
    masks = compute_masks(prunable_params(model), 0.5)
    outs = []
    for m, precision in ((model, "bf16"), (twin, "fp32")):
        cfg = apply_overrides(Config(), {"train.method": method, "train.precision": precision,
                                         "train.rp_weight": 1.0})
        st = Stepper(m, cfg, sgd_lr=0.5, meta_lr=0.05)
        st.method.generator = torch.Generator().manual_seed(0)
        f = st.method.forward(None, batch)
        assert f.scores.dtype == torch.float32 and f.rel_scores.dtype == torch.float32
        outs.append(st.step(batch, masked(m, masks), quiz))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert outs[0]["loss"] == pytest.approx(outs[1]["loss"], rel=2e-2)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert not torch.equal(a, b)  # bf16 products do differ ...
        torch.testing.assert_close(a, b, rtol=0, atol=3e-2)  # ... by rounding only


def test_a_precision_the_device_cannot_do_is_one_error_line(tmp_path):
    from metasd_dgl.cli import main

    args = ["train", "--quiet", "--dataset", str(REPO / "datasets" / "toy"), "--run-dir", str(tmp_path / "r"),
            "--dim", "4", "--epochs", "1", "--set", "train.precision=tf32"]
    assert main(args) == 2  # tf32 is a CUDA matmul mode
    assert not (tmp_path / "r" / "checkpoints").exists()
