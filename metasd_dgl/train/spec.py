"""The frozen constants a training step reads, built once from the run's ``Config``.

Every option is declared, defaulted and checked in ``config.py``; nothing
here has a default of its own, so a default can only ever differ in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

from metasd_dgl.config import Config


@dataclass(frozen=True)
class KDSpec:
    """Constants of the distillation term (``losses.kd_loss``, ``closed_form.mutual_grads``)."""

    temperature: float
    forward_weight: float  # KL(source || learner)
    reverse_weight: float  # KL(learner || source)
    kd_weight: float  # weight next to the cross-entropy
    t2_scale: bool  # multiply the KL terms by temperature^2
    label_smoothing: float

    @property
    def scale(self) -> float:
        """``s``: the factor in front of ``fw * KL + rw * KL``."""
        return self.kd_weight * (self.temperature**2 if self.t2_scale else 1.0)


@dataclass(frozen=True)
class StepSpec:
    """What one batch does: its losses, the distillation and the meta step's constants."""

    regularizer: str  # dura | n3 | none (distance decoders always use none)
    reg_weight: float
    label_smoothing: float
    rp_weight: float  # relation prediction (0 = off)
    entity_dropout: float
    relation_dropout: float
    grad_clip: float  # 0 = off
    precision: str  # fp32 | tf32 | bf16: the score products (precision.score_products)
    kd: KDSpec  # the virtual step's distillation (the student learning from the teacher)
    kd_real: KDSpec  # the real step's, for each learner (metasd.real_kd_weighting)
    one_way_kd: bool  # real step: the teacher does not learn from the student
    virtual_lr: float
    extra_teacher_step: bool
    margin: float  # negative-sampling regime, distance decoders

    @classmethod
    def from_config(cls, cfg: Config) -> "StepSpec":
        tc, mc = cfg.train, cfg.metasd
        kd = KDSpec(temperature=mc.temperature, forward_weight=mc.kd_forward_weight,
                    reverse_weight=mc.kd_reverse_weight, kd_weight=mc.kd_weight,
                    t2_scale=mc.kd_t2_scale, label_smoothing=tc.label_smoothing)
        return cls(regularizer=tc.regularizer, reg_weight=tc.reg_weight,
                   label_smoothing=tc.label_smoothing, rp_weight=tc.rp_weight, entity_dropout=tc.entity_dropout,
                   relation_dropout=tc.relation_dropout, grad_clip=tc.grad_clip, precision=tc.precision,
                   kd=kd, kd_real=kd if mc.real_kd_weighting == "source" else replace(
                       kd, forward_weight=mc.kd_reverse_weight, reverse_weight=mc.kd_forward_weight),
                   one_way_kd=mc.one_way_kd, virtual_lr=mc.virtual_lr,
                   extra_teacher_step=mc.extra_teacher_step, margin=cfg.negatives.margin)


class LossBackend(NamedTuple):
    """The 1-N losses as gradients with respect to score matrices, one interface, two backends.

    ``ce_grad(x, targets, smoothing) -> (dCE/dx, CE)``;
    ``mutual_grads(x, z, targets, kd, teacher_kd=True) -> (dL_student/dx, dL_teacher/dz, values)``
    (``teacher_kd=False``: the teacher's loss is its cross-entropy alone, ``metasd.one_way_kd``);
    ``virtual_grad(x, z, targets, kd) -> G = dL_student/dx``, differentiable in ``x`` and ``z``.
    ``closed_form.CLOSED_FORM`` writes them in closed form; ``losses.AUTOGRAD`` takes them from
    the reference losses by autograd.  The tests run every method on both.
    """

    ce_grad: Callable
    mutual_grads: Callable
    virtual_grad: Callable
