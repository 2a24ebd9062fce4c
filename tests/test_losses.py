"""Losses by hand on tiny tensors, and the closed-form gradients of closed_form.py against autograd."""
from __future__ import annotations

import math

import pytest
import torch

from metasd_dgl.train.closed_form import ce_grad, mutual_grads, virtual_grad
from metasd_dgl.train.losses import (
    AUTOGRAD, cross_entropy_1n, dura, kd_loss, log_probs, n3, negative_sampling_loss, regularizer,
)
from metasd_dgl.train.spec import KDSpec


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in double precision; the default is restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_cross_entropy_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    y = torch.tensor([1, 0])
    hand = [-(2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(0.5))),
            -(0.0 - math.log(2 + math.exp(3)))]
    assert cross_entropy_1n(s, y).item() == pytest.approx(sum(hand) / 2)
    lse = [math.log(math.exp(1) + math.exp(2) + math.exp(0.5)), math.log(2 + math.exp(3))]
    smooth = [0.9 * h + 0.1 * (lse[i] - s[i].mean().item()) for i, h in enumerate(hand)]
    assert cross_entropy_1n(s, y, 0.1).item() == pytest.approx(sum(smooth) / 2)


def test_kd_by_hand_and_zero_when_equal():
    a = torch.tensor([[1.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 2.0, 0.0]])
    T = 3.0
    ps, pt = torch.softmax(a / T, -1)[0].tolist(), torch.softmax(b / T, -1)[0].tolist()
    kl_ts = sum(t * math.log(t / s) for s, t in zip(ps, pt))
    kl_st = sum(s * math.log(s / t) for s, t in zip(ps, pt))
    got = kd_loss(log_probs(a, T), log_probs(b, T), 3.0, 1.0, T * T)
    assert got.item() == pytest.approx(T * T * (3 * kl_ts + kl_st))
    got1 = kd_loss(log_probs(a, T), log_probs(b, T), 3.0, 1.0, scale=1.0)
    assert got1.item() == pytest.approx(3 * kl_ts + kl_st)
    x = torch.randn(4, 7)
    assert kd_loss(log_probs(x, T), log_probs(x.clone(), T), 3.0, 1.0, 1.0).item() == 0.0
    assert kd_loss(log_probs(x, T), log_probs(x + 5.0, T), 3.0, 1.0, 1.0).abs().item() < 1e-12  # shift invariant


def test_dura_by_hand_complex_and_real():
    h = torch.tensor([[1.0, 2.0, 0.0, 1.0]])  # complex (1 + 0i, 2 + 1i)
    r = torch.tensor([[0.5, 1.0, 0.5, 0.0]])  # (0.5 + 0.5i, 1 + 0i)
    t = torch.tensor([[0.0, 1.0, 1.0, 1.0]])  # (0 + 1i, 1 + 1i)
    h2, r2, t2 = [1.0, 5.0], [0.5, 1.0], [1.0, 2.0]
    hand = 0.5 * (sum(h2) + sum(t2)) + 1.5 * sum((a + c) * b for a, b, c in zip(h2, r2, t2))
    assert dura(h, r, t, 0.1, "complex").item() == pytest.approx(0.1 * hand)
    hand_real = 0.5 * (6 + 3) + 1.5 * sum((a * a + c * c) * b * b for a, b, c in zip(h[0], r[0], t[0])).item()
    assert dura(h, r, t, 0.1, "distmult").item() == pytest.approx(0.1 * hand_real)
    two = torch.cat([h, h])  # batch mean
    assert dura(two, torch.cat([r, r]), torch.cat([t, t]), 0.1, "complex").item() == pytest.approx(0.1 * hand)
    assert regularizer("none", h, r, t, 0.1, "complex").item() == 0.0


def test_n3_by_hand_and_second_derivative_at_zero():
    h = torch.tensor([[3.0, 0.0, 4.0, 0.0]])  # |.| = (5, 0)
    r = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # (1, 1)
    t = torch.tensor([[0.0, 2.0, 0.0, 0.0]])  # (0, 2)
    assert n3((h, r, t), 0.01, "complex").item() == pytest.approx(0.01 * (125 + 2 + 8))
    assert n3((h, r, t), 0.01, "distmult").item() == pytest.approx(0.01 * (27 + 64 + 1 + 1 + 8))
    z = torch.zeros(2, 4, requires_grad=True)
    (g,) = torch.autograd.grad(n3((z, z, z), 1.0), z, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), z)
    assert torch.isfinite(gg).all()


def test_negative_sampling_loss_by_hand():
    pos, neg = torch.tensor([1.0, -2.0]), torch.tensor([[0.0, 1.0], [3.0, -1.0]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    hand = ((sp(-1) + (sp(0) + sp(1)) / 2) + (sp(2) + (sp(3) + sp(-1)) / 2)) / 2
    assert negative_sampling_loss(pos, neg, kind="bilinear").item() == pytest.approx(hand)
    m = 2.0
    hand_d = ((sp(-(1 + m)) + (sp(m) + sp(1 + m)) / 2) + (sp(-(m - 2)) + (sp(3 + m) + sp(-1 + m)) / 2)) / 2
    assert negative_sampling_loss(pos, neg, m, "distance").item() == pytest.approx(hand_d)
    with pytest.raises(ValueError):
        negative_sampling_loss(pos, neg, kind="other")


# ---------------------------------------------------------------- closed_form.py
def _reference_student_loss(x, z, y, spec: KDSpec):
    T = spec.temperature
    kd = kd_loss(log_probs(x, T), log_probs(z, T), spec.forward_weight, spec.reverse_weight, scale=spec.scale)
    return cross_entropy_1n(x, y, spec.label_smoothing) + kd


SPECS = [KDSpec(temperature=3.0, forward_weight=3.0, reverse_weight=1.0, kd_weight=1.0, t2_scale=True,
                label_smoothing=0.0), KDSpec(temperature=1.0, forward_weight=0.5, reverse_weight=2.0, kd_weight=0.3,
                          t2_scale=False, label_smoothing=0.1)]


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ce_grad_matches_autograd(smoothing):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 9, generator=gen) * 3).requires_grad_()
    y = torch.randint(0, 9, (5,), generator=gen)
    ref = cross_entropy_1n(x, y, smoothing)
    (g_ref,) = torch.autograd.grad(ref, x)
    g, loss = ce_grad(x.detach(), y, smoothing)
    assert torch.allclose(g, g_ref, atol=1e-12) and loss.item() == pytest.approx(ref.item(), abs=1e-12)


def _logits(seed: int, rows: int, cols: int):
    """Learner and source logits ``(rows, cols)`` (requiring grad) and targets ``(rows,)``."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=gen) * 2).requires_grad_()
    z = (torch.randn(rows, cols, generator=gen) * 2).requires_grad_()
    return x, z, torch.randint(0, cols, (rows,), generator=gen), gen


@pytest.mark.parametrize("spec", SPECS)
def test_mutual_grads_match_autograd(spec):
    x, z, y, _ = _logits(1, 6, 11)
    (gx_ref,) = torch.autograd.grad(_reference_student_loss(x, z.detach(), y, spec), x)
    (gz_ref,) = torch.autograd.grad(_reference_student_loss(z, x.detach(), y, spec), z)
    gx, gz, v = mutual_grads(x.detach(), z.detach(), y, spec)
    assert torch.allclose(gx, gx_ref, atol=1e-12) and torch.allclose(gz, gz_ref, atol=1e-12)
    T = spec.temperature
    assert v["kl_teacher_student"].item() == pytest.approx(kd_loss(log_probs(x, T), log_probs(z, T), 1, 0, 1).item())
    assert v["kl_student_teacher"].item() == pytest.approx(kd_loss(log_probs(x, T), log_probs(z, T), 0, 1, 1).item())
    assert v["ce_student"].item() == pytest.approx(cross_entropy_1n(x, y, spec.label_smoothing).item())


@pytest.mark.parametrize("spec", SPECS)
def test_one_way_mutual_grads_leave_the_teacher_its_cross_entropy(spec):
    """``teacher_kd=False`` (``metasd.one_way_kd``): the teacher's gradient is ``ce_grad``'s, bit for bit,
    in both backends; the student's gradient and every value are those of the two-way call."""
    x, z, y, _ = _logits(4, 7, 13)
    two_way = mutual_grads(x.detach(), z.detach(), y, spec)
    gx, gz, values = mutual_grads(x.detach(), z.detach(), y, spec, teacher_kd=False)
    assert torch.equal(gz, ce_grad(z.detach(), y, spec.label_smoothing)[0]) and torch.equal(gx, two_way[0])
    assert all(torch.equal(values[k], two_way[2][k]) for k in values)
    (gz_ref,) = torch.autograd.grad(cross_entropy_1n(z, y, spec.label_smoothing), z)
    auto = AUTOGRAD.mutual_grads(x.detach(), z.detach(), y, spec, teacher_kd=False)
    assert torch.allclose(auto[1], gz_ref, atol=1e-12) and torch.allclose(auto[0], two_way[0], atol=1e-12)


@pytest.mark.parametrize("spec", SPECS)
def test_virtual_grad_and_its_hessian_vector_product(spec):
    x, z, y, gen = _logits(2, 4, 8)
    v = torch.randn(4, 8, generator=gen)
    (g_ref,) = torch.autograd.grad(_reference_student_loss(x, z, y, spec), x, create_graph=True)
    g = virtual_grad(x, z, y, spec)
    assert torch.allclose(g, g_ref, atol=1e-12)
    hx_ref, hz_ref = torch.autograd.grad(g_ref, (x, z), v)
    hx, hz = torch.autograd.grad(g, (x, z), v)
    assert torch.allclose(hx, hx_ref, atol=1e-12) and torch.allclose(hz, hz_ref, atol=1e-12)
    # Only z requires grad: the x-part is skipped and z's is unchanged.
    (hz_only,) = torch.autograd.grad(virtual_grad(x.detach(), z, y, spec), z, v)
    assert torch.allclose(hz_only, hz_ref, atol=1e-12)


# -------------------------------------------- the two backends, one interface
@pytest.mark.parametrize("spec", SPECS)
def test_autograd_backend_equals_closed_form(spec):
    """``losses.AUTOGRAD`` and ``closed_form`` give the same gradients, values and second-order terms."""
    x, z, y, gen = _logits(3, 5, 9)
    g1, l1 = ce_grad(x.detach(), y, 0.1)
    g2, l2 = AUTOGRAD.ce_grad(x.detach(), y, 0.1)
    assert torch.allclose(g1, g2, atol=1e-12) and l1.item() == pytest.approx(l2.item(), abs=1e-12)
    a, b = mutual_grads(x.detach(), z.detach(), y, spec), AUTOGRAD.mutual_grads(x.detach(), z.detach(), y, spec)
    assert torch.allclose(a[0], b[0], atol=1e-12) and torch.allclose(a[1], b[1], atol=1e-12)
    assert {k: pytest.approx(v.item(), abs=1e-12) for k, v in a[2].items()} == {k: v.item() for k, v in b[2].items()}
    v = torch.randn(5, 9, generator=gen)
    h1 = torch.autograd.grad(virtual_grad(x, z, y, spec), (x, z), v)
    h2 = torch.autograd.grad(AUTOGRAD.virtual_grad(x, z, y, spec), (x, z), v)
    assert all(torch.allclose(p, q, atol=1e-12) for p, q in zip(h1, h2))


def test_empty_batch_gives_zero_gradients_and_losses():
    """A rank's share of a short last batch under torchrun can be empty: zeros, never NaN or a crash."""
    spec = SPECS[0]
    x, y = torch.zeros(0, 6), torch.zeros(0, dtype=torch.int64)
    for backend in ((ce_grad, mutual_grads, virtual_grad), AUTOGRAD):
        g, loss = backend[0](x, y, 0.1)
        assert g.shape == (0, 6) and loss.item() == 0.0
        gx, gz, values = backend[1](x, x, y, spec)
        assert gx.shape == gz.shape == (0, 6) and all(v.item() == 0.0 for v in values.values())
        assert backend[2](x, x, y, spec).shape == (0, 6)
    rows = torch.zeros(0, 4)
    assert dura(rows, rows, rows, 0.1).item() == 0.0 and n3((rows, rows, rows), 0.1).item() == 0.0
    for kind in ("bilinear", "distance"):
        assert negative_sampling_loss(torch.zeros(0), torch.zeros(0, 3), 2.0, kind).item() == 0.0
