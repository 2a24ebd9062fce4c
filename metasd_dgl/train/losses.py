"""Losses and regularisers, written as plain differentiable torch functions.

These are the *reference* definitions (readable, autograd-friendly, used by
the tests and by the negative-sampling regime).  The 1-N training steps use
the closed-form gradients of ``metasd_dgl.train.fused``, which compute the
very same quantities with one softmax per score matrix; the tests check the
two against each other.

Conventions
-----------
* Scores are logits ``(b, N)``: one row per query, one column per candidate.
* Distillation (``kd_loss``) uses the temperature-``T`` distributions
  ``p = softmax(scores / T)`` and is

      scale * [fw * KL(source || learner) + rw * KL(learner || source)]

  averaged over the batch (sum over candidates, mean over rows), with
  ``scale = T**2`` by default (Hinton et al. 2015: keeps the gradient size
  independent of ``T``).  ``source`` is the model being distilled *from*
  (detached in the real step) and ``learner`` the model being trained, so
  ``fw`` (3 in the reference code) weights the forward, mode-covering KL.
  The reference code does not multiply by ``T**2``: pass ``scale=1``.
* Regularisers are averaged over the batch rows, as in the reference code.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_TINY = 1e-30  # floor under |f|^2 inside the square root of N3


def cross_entropy_1n(scores: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of ``(b, N)`` scores against ``(b,)`` target ids, batch mean.

    With smoothing ``eps`` the target distribution is ``(1 - eps) * onehot + eps / N``.
    """
    return F.cross_entropy(scores, targets, label_smoothing=label_smoothing)


def log_probs(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(scores / T)`` over the last axis: ``(b, N) -> (b, N)``."""
    if temperature == 1.0:
        return torch.log_softmax(scores, dim=-1)
    return torch.log_softmax(scores / temperature, dim=-1)


def kd_loss(
    student_logp: Tensor,
    teacher_logp: Tensor,
    forward_weight: float = 3.0,
    reverse_weight: float = 1.0,
    temperature: float = 3.0,
    scale: float | None = None,
) -> Tensor:
    """Two-way KL distillation, batch mean (scalar).

    student_logp: ``(b, N)`` log-probabilities at temperature ``T`` of the learner.
    teacher_logp: ``(b, N)`` log-probabilities at temperature ``T`` of the source
        (detach it yourself when the source must not learn).
    Returns ``scale * [fw * KL(teacher || student) + rw * KL(student || teacher)]``
    with ``scale = T**2`` unless given.  One difference tensor is shared by both
    KL terms: ``sum((fw * p_t - rw * p_s) * (log p_t - log p_s))``.
    """
    if scale is None:
        scale = temperature**2
    diff = teacher_logp - student_logp
    weights = forward_weight * teacher_logp.exp() - reverse_weight * student_logp.exp()
    return scale * (weights * diff).sum(-1).mean()


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
    return weight * norm / h.shape[0]


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
    return weight * total / factors[0].shape[0]


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
    return (F.softplus(-(pos + shift)) + F.softplus(neg + shift).mean(-1)).mean()
