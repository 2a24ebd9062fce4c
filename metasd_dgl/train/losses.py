"""Losses and regularisers, written as plain differentiable torch functions.

These are the *reference* definitions (readable, autograd-friendly, used by
the tests and by the negative-sampling regime).  ``AUTOGRAD`` is the loss
backend built on them, the tests' oracle; the training steps use
``closed_form.CLOSED_FORM``, the very same gradients in closed form with one
softmax per score matrix.  The tests run every method on both.

Conventions
-----------
* Scores are logits ``(b, N)``: one row per query, one column per candidate.
* Distillation (``kd_loss``) uses the temperature-``T`` distributions
  ``p = softmax(scores / T)`` and is

      scale * [fw * KL(source || learner) + rw * KL(learner || source)]

  averaged over the batch (sum over candidates, mean over rows); ``scale`` is
  ``kd_weight`` times ``T**2`` when ``metasd.kd_t2_scale`` is on (Hinton et
  al. 2015: keeps the gradient size independent of ``T``; off by default, as
  in the reference code), see ``spec.KDSpec.scale``.  ``source`` is the model being distilled *from*
  (detached in the real step) and ``learner`` the model being trained, so
  ``fw`` (3 in the reference code) weights the forward, mode-covering KL.
* Regularisers are averaged over the batch rows, as in the reference code.
* Every batch mean of an empty batch is 0 (a rank's share of a short last
  batch under torchrun can be empty).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from metasd_dgl.train.spec import KDSpec, LossBackend

_TINY = 1e-30  # floor under |f|^2 inside the square root of N3


def _rows(x: Tensor) -> int:
    """The batch size to divide by: the number of rows, at least 1."""
    return max(x.shape[0], 1)


def cross_entropy_1n(scores: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of ``(b, N)`` scores against ``(b,)`` target ids, batch mean.

    With smoothing ``eps`` the target distribution is ``(1 - eps) * onehot + eps / N``.
    """
    return F.cross_entropy(scores, targets, label_smoothing=label_smoothing, reduction="sum") / _rows(scores)


def log_probs(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(scores / T)`` over the last axis: ``(b, N) -> (b, N)``."""
    if temperature == 1.0:
        return torch.log_softmax(scores, dim=-1)
    return torch.log_softmax(scores / temperature, dim=-1)


def kd_loss(student_logp: Tensor, teacher_logp: Tensor, forward_weight: float, reverse_weight: float,
            scale: float) -> Tensor:
    """Two-way KL distillation, batch mean (scalar).

    student_logp: ``(b, N)`` log-probabilities at temperature ``T`` of the learner.
    teacher_logp: ``(b, N)`` log-probabilities at temperature ``T`` of the source
        (detach it yourself when the source must not learn).
    Returns ``scale * [fw * KL(teacher || student) + rw * KL(student || teacher)]``.
    One difference tensor is shared by both KL terms:
    ``sum((fw * p_t - rw * p_s) * (log p_t - log p_s))``.
    """
    diff = teacher_logp - student_logp
    weights = forward_weight * teacher_logp.exp() - reverse_weight * student_logp.exp()
    return scale * (weights * diff).sum() / _rows(diff)


def _squared_modulus(x: Tensor, is_complex: bool) -> Tensor:
    """``|x|^2`` per component: ``(..., 2d) -> (..., d)`` for complex ``[re | im]`` rows."""
    if not is_complex:
        return x * x
    d = x.shape[-1] // 2
    return x[..., :d] ** 2 + x[..., d:] ** 2


def dura(h: Tensor, r: Tensor, t: Tensor, weight: float, decoder_name: str = "complex") -> Tensor:
    """DURA (Zhang et al. 2020), the reference code's weighted form, batch mean.

    h, r, t: ``(b, w)`` head, relation and tail rows of the batch.
    ``weight * [0.5 * sum(|h|^2 + |t|^2) + 1.5 * sum(|h|^2 |r|^2 + |t|^2 |r|^2)] / b``
    with ``|x|^2 = re^2 + im^2`` per complex component for ComplEx and RotatE
    (``decoder_name`` in {"complex", "rotate"}) and ``x^2`` otherwise.
    """
    if weight == 0.0:
        return h.new_zeros(())
    is_complex = decoder_name in ("complex", "rotate")
    h2, r2, t2 = (_squared_modulus(x, is_complex) for x in (h, r, t))
    norm = 0.5 * (h2.sum() + t2.sum()) + 1.5 * ((h2 + t2) * r2).sum()
    return weight * norm / _rows(h)


def n3(factors: Sequence[Tensor], weight: float, decoder_name: str = "complex") -> Tensor:
    """N3 (Lacroix et al. 2018): ``weight * sum_f sum |f|^3 / b`` over ``(b, w)`` factors.

    ``|f|`` is the complex modulus per component for ComplEx/RotatE rows.
    ``|f|^3`` is computed as ``|f|^2 * sqrt(max(|f|^2, tiny))`` so that its
    first *and second* derivatives stay finite at pruned (exactly zero)
    weights, which the MetaSD virtual step differentiates twice.
    """
    if weight == 0.0:
        return factors[0].new_zeros(())
    is_complex = decoder_name in ("complex", "rotate")
    total = factors[0].new_zeros(())
    for f in factors:
        f2 = _squared_modulus(f, is_complex)
        total = total + (f2 * f2.clamp_min(_TINY).sqrt()).sum()
    return weight * total / _rows(factors[0])


def regularizer(
    kind: str, h: Tensor, r: Tensor, t: Tensor, weight: float, decoder_name: str
) -> Tensor:
    """Dispatch ``"dura" | "n3" | "none"`` on the batch rows ``(b, w)``."""
    if kind == "dura":
        return dura(h, r, t, weight, decoder_name)
    if kind == "n3":
        return n3((h, r, t), weight, decoder_name)
    if kind == "none":
        return h.new_zeros(())
    raise ValueError(f"unknown regularizer {kind!r}")


def negative_sampling_loss(pos: Tensor, neg: Tensor, margin: float = 9.0, kind: str = "bilinear") -> Tensor:
    """Logistic loss of positives ``(b,)`` against their negatives ``(b, k)``, batch mean.

    * ``"bilinear"`` (ComplEx, DistMult): ``softplus(-pos) + mean_k softplus(neg)``,
      i.e. ``-log sigmoid(pos) - mean log sigmoid(-neg)``.
    * ``"distance"`` (TransE, RotatE; scores are ``-distance``): RotatE's loss
      without self-adversarial weighting,
      ``-log sigmoid(margin + pos) - mean_k log sigmoid(-(margin + neg))``.
    """
    if kind == "bilinear":
        shift = 0.0
    elif kind == "distance":
        shift = margin
    else:
        raise ValueError(f"unknown score kind {kind!r}")
    return (F.softplus(-(pos + shift)) + F.softplus(neg + shift).mean(-1)).sum() / _rows(pos)


# ------------------------------------------------------- the autograd backend
def _kd(learner: Tensor, source: Tensor, kd: KDSpec) -> Tensor:
    """``KD(source -> learner)`` on logits: ``scale * [fw KL(p_source || p_learner) + rw KL(p_learner || p_source)]``."""
    T = kd.temperature
    return kd_loss(log_probs(learner, T), log_probs(source, T), kd.forward_weight, kd.reverse_weight, kd.scale)


def _leaf(x: Tensor) -> Tensor:
    return x.detach().requires_grad_(True)


def autograd_ce_grad(x: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tuple[Tensor, Tensor]:
    """``(dCE/dx, CE)`` by autograd on ``cross_entropy_1n``."""
    with torch.enable_grad():
        x = _leaf(x)
        loss = cross_entropy_1n(x, targets, smoothing)
        (g,) = torch.autograd.grad(loss, x)
    return g, loss.detach()


def autograd_mutual_grads(x: Tensor, z: Tensor, targets: Tensor, kd: KDSpec,
                          teacher_kd: bool = True) -> Tuple[Tensor, Tensor, dict]:
    """Student ``CE(x) + KD(z -> x)``, teacher ``CE(z) + KD(x -> z)`` (``CE(z)`` alone without
    ``teacher_kd``), each source detached."""
    eps = kd.label_smoothing
    with torch.enable_grad():
        x, z = _leaf(x), _leaf(z)
        ce_x, ce_z = cross_entropy_1n(x, targets, eps), cross_entropy_1n(z, targets, eps)
        (gx,) = torch.autograd.grad(ce_x + _kd(x, z.detach(), kd), x)
        (gz,) = torch.autograd.grad(ce_z + _kd(z, x.detach(), kd) if teacher_kd else ce_z, z)
    lx, lz = log_probs(x.detach(), kd.temperature), log_probs(z.detach(), kd.temperature)
    values = {"ce_student": ce_x.detach(), "ce_teacher": ce_z.detach(),
              "kl_teacher_student": kd_loss(lx, lz, 1.0, 0.0, 1.0),
              "kl_student_teacher": kd_loss(lx, lz, 0.0, 1.0, 1.0)}
    return gx, gz, values


def autograd_virtual_grad(x: Tensor, z: Tensor, targets: Tensor, kd: KDSpec) -> Tensor:
    """``G = d[CE(x) + KD(z -> x)]/dx`` with ``create_graph``: differentiable in ``x`` (if it
    requires grad) and ``z``."""
    with torch.enable_grad():
        leaf = x if x.requires_grad else _leaf(x)
        loss = cross_entropy_1n(leaf, targets, kd.label_smoothing) + _kd(leaf, z, kd)
        (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
    return g


AUTOGRAD = LossBackend(ce_grad=autograd_ce_grad, mutual_grads=autograd_mutual_grads,
                       virtual_grad=autograd_virtual_grad)
