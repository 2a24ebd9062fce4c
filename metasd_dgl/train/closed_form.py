"""Closed-form gradients of the 1-N losses with respect to the score matrices.

Why: at FB15k-237 sizes a MetaSD step spends most of its time in elementwise
work over ``(b, N)`` score matrices when log-softmax, cross-entropy, two KL
terms and their second-order backward are left to autograd.  Here each loss
is replaced by its gradient with respect to the logits, written out once:

* ``ce_grad``:       ``dCE/dx = (softmax(x) - y) / b``            (plain, prune, quiz)
* ``mutual_grads``:  ``dL/dx`` and ``dL/dz`` of the real mutual-distillation
  step (each model learns from the other, the other detached)
* ``virtual_grad``:  ``G(x, z) = dL_student/dx`` for the virtual step, an
  autograd ``Function`` whose backward is the exact Hessian-vector product
  ``(v -> v . dG/dx, v . dG/dz)``, so that ``create_graph`` stays cheap.

The training step then back-propagates ``G`` through the score function
(``torch.autograd.backward(scores, G)``), which is the same as back-propagating
the loss.  The reference definitions live in ``losses.py``; the tests check
these formulas (and the second-order backward) against autograd on them.

Notation (one row per query): ``x`` learner logits, ``z`` source logits,
``tau`` temperature, ``px = softmax(x / tau)``, ``pz = softmax(z / tau)``,
``d = log px - log pz``, ``p1 = softmax(x)``, ``y`` the (smoothed) one-hot
targets, ``s = kd_weight * tau^2`` (or ``kd_weight`` without T^2 scaling).
Per row, ``L = CE(x) + s * [fw * KL(pz || px) + rw * KL(px || pz)]`` and

    dL/dx = p1 - y + (s / tau) * [fw * (px - pz) + rw * px * (d - <px, d>)],

all divided by ``b`` for the batch mean (an empty batch, e.g. a rank's share
of a short last batch under torchrun, gives zero gradients and zero losses).  ``once_differentiable`` marks where
third derivatives are not provided (MetaSD needs second order only).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from metasd_dgl.train.spec import KDSpec, LossBackend


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product ``(b, N), (b, N) -> (b, 1)`` without a (b, N) temporary.

    (``linalg.vecdot`` is about twice as fast on the CPU but sums in another order: its last-bit
    differences change where a long run ends up, so the summation order stays this one.)"""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1, 1)


def _subtract_targets(g: Tensor, targets: Tensor, smoothing: float, scale: float) -> None:
    """In place: ``g -= scale * y`` with ``y = (1 - eps) * onehot + eps / N``."""
    rows = torch.arange(g.shape[0], device=g.device)
    g[rows, targets] -= scale * (1.0 - smoothing)
    if smoothing:
        g.sub_(scale * smoothing / g.shape[1])


def _softmaxes(x: Tensor, tau: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(p1, pt, lse1, lset, xt)`` of logits ``x (b, N)``.

    ``p1 = softmax(x)``, ``pt = softmax(x / tau)`` (the same tensor when
    ``tau == 1``), their log-normalisers ``(b, 1)``, and ``xt = x / tau``.
    ``torch.softmax`` is one fused kernel (about 2.5x cheaper than
    ``log_softmax`` then ``exp``); the log-normalisers come from the row
    maximum, whose probability is at least ``1/N`` and so never underflows:
    ``lse = max - log p[argmax]``.  ``p[argmax]`` is the row maximum of ``p`` (the softmax is
    monotonic), so two ``amax`` passes give it, bit for bit, without the slower ``max`` with indices.
    """
    m = x.amax(dim=1, keepdim=True)
    p1 = torch.softmax(x, dim=1)
    lse1 = m - p1.amax(dim=1, keepdim=True).log()
    if tau == 1.0:
        return p1, p1, lse1, lse1, x
    xt = x * (1.0 / tau)
    pt = torch.softmax(xt, dim=1)
    lset = m * (1.0 / tau) - pt.amax(dim=1, keepdim=True).log()
    return p1, pt, lse1, lset, xt


def _ce_value(x: Tensor, lse: Tensor, targets: Tensor, smoothing: float) -> Tensor:
    """Batch-mean cross-entropy from logits ``(b, N)`` and their log-normaliser ``(b, 1)``."""
    rows = torch.arange(x.shape[0], device=x.device)
    nll = lse.view(-1) - x[rows, targets]
    if smoothing:
        nll = (1.0 - smoothing) * nll + smoothing * (lse.view(-1) - x.mean(1))
    return _mean(nll)


def _mean(values: Tensor) -> Tensor:
    """Mean over the batch rows; 0 for an empty batch."""
    return values.mean() if values.numel() else values.sum()


def ce_grad(x: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tuple[Tensor, Tensor]:
    """``x (b, N)`` logits, ``targets (b,)`` -> (``dCE/dx (b, N)``, CE value scalar).

    One softmax, one in-place scaling, one scatter.
    """
    with torch.no_grad():
        b = max(x.shape[0], 1)
        m = x.amax(dim=1, keepdim=True)
        g = torch.softmax(x, dim=1)
        loss = _ce_value(x, m - g.amax(dim=1, keepdim=True).log(), targets, smoothing)  # see _softmaxes
        g.mul_(1.0 / b)
        _subtract_targets(g, targets, smoothing, 1.0 / b)
        return g, loss


def _log_ratio(xt: Tensor, zt: Tensor, lse_x: Tensor, lse_z: Tensor, inplace: bool) -> Tensor:
    """``d = log px - log pz = (xt - lse_x) - (zt - lse_z)`` in two passes."""
    d = xt.sub_(zt) if inplace else xt.sub(zt)
    return d.sub_(lse_x - lse_z)


def mutual_grads(x: Tensor, z: Tensor, targets: Tensor, spec: KDSpec,
                 teacher_kd: bool = True) -> Tuple[Tensor, Tensor, dict]:
    """Gradients of the real step: each of two models learns from the other.

    x: student logits ``(b, N)``; z: teacher logits ``(b, N)``; targets ``(b,)``.
    Student loss ``CE(x) + KD(z -> x)``, teacher loss ``CE(z) + KD(x -> z)``,
    the source detached in each; ``teacher_kd=False`` (``metasd.one_way_kd``): the teacher's
    loss is its ``CE(z)`` alone.  Returns ``(dL_s/dx, dL_t/dz, values)`` with
    ``values`` holding the scalar tensors ``ce_student, ce_teacher,
    kl_teacher_student = KL(pz||px), kl_student_teacher = KL(px||pz)``
    (batch means, unscaled).  Two softmaxes per matrix (temperature 1 and
    ``tau``); ``d = log px - log pz`` is shared by all four KL terms, and its buffer
    then holds the teacher's KD term (with ``teacher_kd``).
    """
    with torch.no_grad():
        b, tau = max(x.shape[0], 1), spec.temperature
        fw, rw, eps = spec.forward_weight, spec.reverse_weight, spec.label_smoothing
        c = spec.scale / (tau * b)
        gx, px, lse1x, lsetx, xt = _softmaxes(x, tau)
        gz, pz, lse1z, lsetz, zt = _softmaxes(z, tau)
        ce_x, ce_z = _ce_value(x, lse1x, targets, eps), _ce_value(z, lse1z, targets, eps)
        d = _log_ratio(xt, zt, lsetx, lsetz, inplace=tau != 1.0)
        kx = _rowdot(px, d)  # KL(px || pz) per row
        kz = -_rowdot(pz, d)  # KL(pz || px) per row
        # both KD terms before gx and gz change in place (at tau 1 they are px and pz)
        # student: c [px (rw (d - kx) + fw) - fw pz]; teacher: c [pz (fw - rw (d + kz)) - fw px], in d's buffer
        ts = torch.add(fw - rw * kx, d, alpha=rw).mul_(px).add_(pz, alpha=-fw)
        tz = torch.add(fw - rw * kz, d, alpha=-rw, out=d).mul_(pz).add_(px, alpha=-fw) if teacher_kd else None
        gx.mul_(1.0 / b).add_(ts, alpha=c)  # p1x/b - y/b + c [...]
        _subtract_targets(gx, targets, eps, 1.0 / b)
        gz.mul_(1.0 / b)  # p1z/b - y/b (+ c [...])
        if tz is not None:
            gz.add_(tz, alpha=c)
        _subtract_targets(gz, targets, eps, 1.0 / b)
        values = {
            "ce_student": ce_x,
            "ce_teacher": ce_z,
            "kl_teacher_student": _mean(kz),
            "kl_student_teacher": _mean(kx),
        }
        return gx, gz, values


def _virtual_forward(x: Tensor, z: Tensor, targets: Tensor, spec: KDSpec):
    """G = dL_s/dx and the tensors its backward needs: (G, p1, px, pz, h)."""
    b, tau = max(x.shape[0], 1), spec.temperature
    fw, rw = spec.forward_weight, spec.reverse_weight
    c = spec.scale / (tau * b)
    p1, px, _, lsetx, xt = _softmaxes(x, tau)
    mz = z.amax(dim=1, keepdim=True)
    zt = z * (1.0 / tau) if tau != 1.0 else z
    pz = torch.softmax(zt, dim=1)
    lsetz = mz * (1.0 / tau) - pz.amax(dim=1, keepdim=True).log()  # see _softmaxes
    h = _log_ratio(xt, zt, lsetx, lsetz, inplace=tau != 1.0)  # d
    h.sub_(_rowdot(px, h)).mul_(px)  # h = px (d - <px, d>)
    g = p1.mul(1.0 / b)
    _subtract_targets(g, targets, spec.label_smoothing, 1.0 / b)
    g.add_(h, alpha=c * rw).add_(px, alpha=c * fw).sub_(pz, alpha=c * fw)
    return g, p1, px, pz, h


def _virtual_backward(v: Tensor, p1: Tensor, px: Tensor, pz: Tensor, h: Tensor, spec: KDSpec,
                      need_x: bool, need_z: bool) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Hessian-vector products ``v . dG/dx`` and ``v . dG/dz`` (each (b, N) or None).

    With ``u = x / tau``: ``d(px)/du . v = px (v - <px, v>)`` and, for
    ``h = px (d - <px, d>)``: ``v . dh/du = (h + px)(v - <px, v>) - px <h, v>``,
    ``v . dh/dw = -px (v - <px, v>)`` (``w = z / tau``).
    """
    b, tau = max(v.shape[0], 1), spec.temperature
    fw, rw = spec.forward_weight, spec.reverse_weight
    c2 = spec.scale / (tau * tau * b)
    vx = v - _rowdot(px, v)  # v - <px, v>
    dx = dz = None
    if need_z:
        dz = v.sub(_rowdot(pz, v)).mul_(pz).mul_(-c2 * fw)
        dz.addcmul_(px, vx, value=-c2 * rw)
    if need_x:
        rh = _rowdot(h, v)
        dx = v.sub(_rowdot(p1, v)).mul_(p1).mul_(1.0 / b)
        t = vx.mul(fw + rw).sub_(rh, alpha=rw).mul_(px)
        t.addcmul_(h, vx, value=rw)
        dx.add_(t, alpha=c2)
    return dx, dz


class _VirtualGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, z: Tensor, targets: Tensor, spec: KDSpec) -> Tensor:  # type: ignore[override]
        g, p1, px, pz, h = _virtual_forward(x, z, targets, spec)
        ctx.save_for_backward(p1, px, pz, h)
        ctx.spec = spec
        return g

    @staticmethod
    @once_differentiable
    def backward(ctx, v: Tensor):  # type: ignore[override]
        p1, px, pz, h = ctx.saved_tensors
        dx, dz = _virtual_backward(
            v.contiguous(), p1, px, pz, h, ctx.spec, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return dx, dz, None, None


def virtual_grad(x: Tensor, z: Tensor, targets: Tensor, spec: KDSpec) -> Tensor:
    """``G = d[CE(x) + KD(z -> x)]/dx``, ``(b, N)``, differentiable in ``x`` and ``z``.

    x: student logits, z: teacher logits (both ``(b, N)``, may require grad),
    targets ``(b,)``.  Differentiating ``G`` (once) gives the exact second-order
    terms of the virtual step; pass ``x.detach()`` to skip ``dG/dx``.
    """
    return _VirtualGrad.apply(x, z, targets, spec)


CLOSED_FORM = LossBackend(ce_grad=ce_grad, mutual_grads=mutual_grads, virtual_grad=virtual_grad)

__all__ = ("CLOSED_FORM", "ce_grad", "mutual_grads", "virtual_grad")
