"""Training steps: against autograd references, finite differences, determinism, toy convergence."""
from __future__ import annotations

import copy

import dgl
import pytest
import torch
from torch.func import functional_call

from metasd_dgl.config import Config, apply_overrides
from metasd_dgl.graph.sampling import dst_norm
from metasd_dgl.model import build_model, call
from metasd_dgl.optimizers import OPTIMIZERS
from metasd_dgl.pruning import compute_masks, dimension_coordinates, prunable_params
from metasd_dgl.student import ColumnStudent, MaskedStudent, make_student
from metasd_dgl.train.closed_form import CLOSED_FORM
from metasd_dgl.train.losses import AUTOGRAD, cross_entropy_1n, dura, kd_loss, log_probs, regularizer
from metasd_dgl.train.loop import run_step
from metasd_dgl.train.spec import KDSpec, StepSpec
from metasd_dgl.train.steps import Steps
from step_helpers import Stepper

N, R = 6, 2


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP synchronisation costs more than it saves (and more under load)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def queries(n: int, gen: torch.Generator, num_entities: int = N, num_relations: int = R) -> torch.Tensor:
    return torch.stack([torch.randint(0, num_entities, (n,), generator=gen),
                        torch.randint(0, 2 * num_relations, (n,), generator=gen),
                        torch.randint(0, num_entities, (n,), generator=gen)], 1)


def toy_graph(seed: int = 0) -> dgl.DGLGraph:
    gen = torch.Generator().manual_seed(seed)
    h, r, t = queries(10, gen).unbind(1)
    r = r % R
    g = dgl.graph((torch.cat([h, t]), torch.cat([t, h])), num_nodes=N)
    g.edata["etype"] = torch.cat([r, r + R])
    g.edata["norm"] = dst_norm(g)
    return g


def tiny(encoder: str = "kge", decoder: str = "complex", seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    opts = dict(num_layers=1, num_bases=2, dropout=0.0)
    model = build_model(encoder, decoder, N, R, 2, init_scale=0.5, generator=gen, rgcn_options=opts)
    return model.to(dtype)


def config(method: str, train: dict | None = None, **metasd) -> Config:
    return apply_overrides(Config(), {"train": {"method": method, "reg_weight": 0.05, **(train or {})},
                                      "metasd": metasd})


def stepper(model, method: str, sgd_lr: float = 0.0, meta_lr: float = 1e-2, backend=CLOSED_FORM, **mc) -> Stepper:
    return Stepper(model, config(method, **mc), sgd_lr, meta_lr, backend)


def masked(model, masks) -> MaskedStudent:
    return MaskedStudent(masks, dict(model.named_parameters()))


def apply_masks(weights, masks):
    """The reference student weights, written out: ``W * M`` on the masked names."""
    return {n: (w * masks[n] if n in masks else w) for n, w in weights.items()}


# ------------------------------------------------------------- references
def _scores_rows(model, weights, q, graph):
    own = {n[len("encoder."):]: w for n, w in weights.items() if n.startswith("encoder.")}
    ent, rel = functional_call(model.encoder, own, (graph,))
    scores = call(model, weights, q[:, :2], graph=graph)
    return scores, (ent[q[:, 0]], rel[q[:, 1]], ent[q[:, 2]])


def _ref_losses(model, st: Stepper, W, masks, batch, graph, detach_other=True):
    """Reference (autograd, losses.py) student and teacher losses of the real step."""
    spec, y = st.spec.kd, batch[:, 2]
    S, rs = _scores_rows(model, apply_masks(W, masks), batch, graph)
    T, rt = _scores_rows(model, W, batch, graph)
    reg = lambda rows: regularizer(st.reg_kind, *rows, 0.05, model.decoder.name)  # noqa: E731
    kd = lambda a, b: kd_loss(log_probs(a, spec.temperature), log_probs(b, spec.temperature),  # noqa: E731
                              spec.forward_weight, spec.reverse_weight, spec.scale)
    other = (lambda x: x.detach()) if detach_other else (lambda x: x)
    student = cross_entropy_1n(S, y) + reg(rs) + kd(S, other(T))
    teacher = cross_entropy_1n(T, y) + reg(rt) + kd(T, other(S))
    return student, teacher


def _ref_quiz_loss(model, st: Stepper, W, W0, masks, batch, quiz, graph, path):
    """CE(S' on quiz) with S' built by autograd (create_graph) from losses.py."""
    names = [n for n in model.prunable_names() if n in masks]
    if path == "full":
        student = apply_masks(W, masks)
    else:
        student = {n: w.detach() for n, w in apply_masks(W0, masks).items()}
        for n in names:
            student[n].requires_grad_(True)
    S, rs = _scores_rows(model, student, batch, graph)
    T, _ = _scores_rows(model, W, batch, graph)
    spec = st.spec.kd
    loss = cross_entropy_1n(S, batch[:, 2]) + regularizer(st.reg_kind, *rs, 0.05, model.decoder.name) + kd_loss(
        log_probs(S, spec.temperature), log_probs(T, spec.temperature),
        spec.forward_weight, spec.reverse_weight, spec.scale)
    grads = torch.autograd.grad(loss, [student[n] for n in names], create_graph=True)
    virtual = dict(student)
    for n, g in zip(names, grads):
        virtual[n] = student[n] - st.spec.virtual_lr * g * masks[n]
    Q, _ = _scores_rows(model, virtual, quiz, graph)
    return cross_entropy_1n(Q, quiz[:, 2])


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("encoder,decoder", [
    ("kge", "complex"), ("kge", "distmult"), ("kge", "transe"), ("rgcn", "distmult"), ("rgcn", "complex"),
])
def test_meta_gradient_matches_finite_differences(encoder, decoder):
    """The meta step's gradient, read off a MetaSD step whose real step has lr 0 and whose meta
    optimiser is SGD at lr 1 (``W0 - W1``), against autograd through the reference construction."""
    path = "kd"  # the only path: S' depends on W through the teacher's predictions
    model = tiny(encoder, decoder)
    graph = toy_graph() if encoder == "rgcn" else None
    W0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    st = stepper(model, "metasd", sgd_lr=1e-300, meta_lr=1.0, virtual_lr=0.5)
    for group in st.steps.optimizer.param_groups:
        group["lr"] = 0.0  # the real step moves nothing
    gen = torch.Generator().manual_seed(1)
    batch, quiz = queries(8, gen), queries(5, gen)
    masks = compute_masks(prunable_params(model), 0.5)
    quiz_loss = st.step(batch, masked(model, masks), quiz, graph)["meta_quiz_loss"]
    grads = {n: W0[n] - p.detach() for n, p in model.named_parameters()}

    def f(W):
        W = {n: w.clone().requires_grad_(True) for n, w in W.items()}
        return _ref_quiz_loss(model, st, W, W0, masks, batch, quiz, graph, path).item()

    assert quiz_loss == pytest.approx(f(W0), abs=1e-12)
    # Exact: autograd through the reference construction, every element.
    W = {n: w.clone().requires_grad_(True) for n, w in W0.items()}
    ref = torch.autograd.grad(_ref_quiz_loss(model, st, W, W0, masks, batch, quiz, graph, path),
                              list(W.values()), allow_unused=True)
    for (name, w), r in zip(W0.items(), ref):
        got = grads[name] if grads[name] is not None else torch.zeros_like(w)
        assert torch.allclose(got, torch.zeros_like(w) if r is None else r, atol=1e-11, rtol=1e-9), name
    # Finite differences on a few elements of every tensor (checks the reference itself).
    eps, checked, pick = 1e-6, 0, torch.Generator().manual_seed(5)
    for name, w in W0.items():
        got = (grads[name] if grads[name] is not None else torch.zeros_like(w)).flatten()
        for i in torch.randperm(w.numel(), generator=pick)[:3].tolist():
            bump = torch.zeros(w.numel(), dtype=w.dtype)
            bump[i] = eps
            plus, minus = dict(W0), dict(W0)
            plus[name], minus[name] = w + bump.view_as(w), w - bump.view_as(w)
            fd = (f(plus) - f(minus)) / (2 * eps)
            assert got[i].item() == pytest.approx(fd, abs=1e-7, rel=1e-5), (name, i)
            checked += abs(fd) > 1e-6
    assert checked > 0
    assert grads["encoder.entity"].abs().sum() > 0 and grads["encoder.relation"].abs().sum() > 0


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


def test_metasd_step_is_meta_update_then_kd_step():
    model = tiny()
    twin = copy.deepcopy(model)
    st = stepper(model, "metasd", sgd_lr=0.3, meta_lr=0.05)
    gen = torch.Generator().manual_seed(3)
    batch, quiz = queries(9, gen), queries(4, gen)
    masks = compute_masks(prunable_params(model), 0.6)
    out = st.step(batch, masked(model, masks), quiz)
    assert {"meta_quiz_loss", "meta_grad_norm", "kd_student", "ce_teacher"} <= set(out)
    W = dict(twin.named_parameters())
    W0 = {n: w.detach().clone() for n, w in W.items()}
    q = _ref_quiz_loss(twin, st, W, W0, masks, batch, quiz, None, "kd")
    q.backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.05 * p.grad
            p.grad = None
    student, teacher = _ref_losses(twin, st, W, masks, batch, None)
    (student + teacher).backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.3 * p.grad
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-12)


def _run_metasd(seed: int) -> dict:
    model = tiny(seed=0, dtype=torch.float32)
    st = stepper(model, "metasd", extra_teacher_step=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(3):
        masks = compute_masks(prunable_params(model), 0.9)
        st.step(queries(16, gen), masked(model, masks), queries(8, gen), do_meta=(i != 1))
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_metasd_step_is_deterministic():
    a, b, c = _run_metasd(7), _run_metasd(7), _run_metasd(8)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


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
    cfg = config(method, {"regime": "negative-sampling", "num_negatives": 4, "margin": 2.0})
    st = Steps(model, OPTIMIZERS[cfg.train.optimizer](model.parameters(), lr=cfg.train.lr), StepSpec.from_config(cfg))
    student = masked(model, compute_masks(prunable_params(model), 0.5)) if method == "prune" else None
    pos, neg = queries(30, gen, 20, 3), torch.randint(0, 20, (30, 4), generator=gen)
    first = run_step(method, st, pos, student, negatives=neg)["ns_loss"]
    for _ in range(30):
        last = run_step(method, st, pos, student, negatives=neg)
    assert last["ns_loss"] < first
    assert set(last) == {"loss", "ns_loss", "reg", "grad_norm"}


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
    """config.py's ``metasd.kd_t2_scale`` (off, as in the reference code) is the only default."""
    cfg = Config()
    assert cfg.metasd.kd_t2_scale is False
    assert StepSpec.from_config(cfg).kd.scale == cfg.metasd.kd_weight  # no T^2 by default
    on = StepSpec.from_config(config("kd", kd_t2_scale=True, temperature=2.0))
    assert on.kd.scale == 4.0
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


def test_a_step_without_the_meta_step_is_the_kd_step():
    """``do_meta=False`` (``metasd.meta_every``): the MetaSD step is the kd step, weight for weight."""
    model = tiny()
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(9)
    batch, quiz = queries(6, gen), queries(4, gen)
    masks = compute_masks(prunable_params(model), 0.5)
    out = stepper(model, "metasd", sgd_lr=0.3).step(batch, masked(model, masks), quiz, do_meta=False)
    ref = stepper(twin, "kd", sgd_lr=0.3).step(batch, masked(twin, masks))
    assert "meta_quiz_loss" not in out and out == ref
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
