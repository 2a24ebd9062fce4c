"""The MetaSD step (train/methods.py, ``MetaSD``): its meta gradient against autograd through the reference construction
and finite differences, the meta update then the KD step, determinism, and the step without the meta step."""
from __future__ import annotations

import copy

import pytest
import torch

from metasd_dgl.model.pruning import compute_masks, prunable_params
from step_helpers import (masked, one_thread, queries, ref_losses as _ref_losses,  # noqa: F401
                          ref_quiz_loss as _ref_quiz_loss, stepper, tiny, toy_graph)


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
    for group in st.method.optimizer.param_groups:
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
