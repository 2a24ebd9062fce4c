"""MetaSD's steps (1) and (2): the virtual student and the meta gradient on the quiz batch.

(1) Virtual student ``S' = S - virtual_lr * grad_S[CE(S) + reg(S) + KD(T -> S)]``
on the batch, built with ``create_graph`` so that ``S'`` is a differentiable
function of the teacher's weights ``W``.  Only the student's own (masked)
tensors move, and they stay inside the student (``student.restrict``);
non-prunable weights (e.g. R-GCN biases) keep the teacher's values.  Two ways
``S'`` may depend on ``W`` (option ``metasd.meta_grad_path``), two functions:

* ``virtual_student`` (``full``): through the teacher's predictions in the KD
  term *and* through ``S = W * M``.
* ``virtual_student_reference`` (``kd``): through the teacher's predictions
  only -- the reference code's behaviour (its deep copy of the weights cuts the
  other path; the MetaDistil analogue) and cheaper: no ``dG/dx`` and no second
  pass back to ``W * M``.

(2) ``meta_gradient``: ``d CE(S' on quiz) / dW``, plain cross-entropy (no
smoothing, no regulariser), as in the reference code.  The caller steps the
meta optimiser on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..student import Student
from ..typing import TAIL, ParamDict

if TYPE_CHECKING:
    from .steps import Forward, Stepper


@dataclass
class Virtual:
    """The virtual student and what its step computed on the batch (reused by ``share_forward``)."""

    weights: ParamDict  # S', differentiable in W
    student_grads: Dict[str, Optional[Tensor]]  # grad_S of the student's batch loss (student-shaped)
    student_scores: Tensor  # (b, N), detached
    teacher: "Forward"  # the teacher's forward on the batch, attached to W
    student_own: Dict[str, Tensor]  # the student's regulariser and relation-prediction values, detached


def virtual_student(s: "Stepper", batch: Tensor, student: Student, graph, every_weight: bool = False) -> Virtual:
    """(1), ``meta_grad_path = full``: ``S'`` depends on ``W`` through ``W * M`` and through T's predictions.

    every_weight: also take the batch gradient of the student's shared
    (non-masked) weights, for ``share_forward``'s real step.
    """
    start = student.weights(s.params)  # differentiable in W
    return _virtual_step(s, start, batch, student, graph, every_weight, second_order_in_student=True)


def virtual_student_reference(s: "Stepper", batch: Tensor, student: Student, graph,
                              every_weight: bool = False) -> Virtual:
    """(1), ``meta_grad_path = kd``: ``S'`` starts from a detached copy of the student, so it
    depends on ``W`` only through the teacher's predictions in the KD term."""
    start = {n: w.detach().requires_grad_(every_weight or n in student.names)
             for n, w in student.weights(s.params).items()}
    return _virtual_step(s, start, batch, student, graph, every_weight, second_order_in_student=False)


def _virtual_step(s: "Stepper", start: ParamDict, batch: Tensor, student: Student, graph, every_weight: bool,
                  second_order_in_student: bool) -> Virtual:
    """One SGD step of the student from ``start`` on its distillation loss, kept differentiable."""
    wrt = [n for n, w in start.items() if w.requires_grad and (every_weight or n in student.names)]
    fs = s.forward(start, batch, graph)
    ft = s.forward(None, batch, graph)
    x = fs.scores if second_order_in_student else fs.scores.detach()
    g = s.losses.virtual_grad(x, ft.scores, batch[:, TAIL], s.spec.kd)  # dL_student / d scores
    own = s.own_losses(fs, batch)  # regulariser, relation prediction
    pairs = [(fs.scores, g)] + [(v, torch.ones_like(v)) for v in own.values() if v.requires_grad]
    grads = dict(zip(wrt, torch.autograd.grad([o for o, _ in pairs], [start[n] for n in wrt], [c for _, c in pairs],
                                              create_graph=True, allow_unused=True)))
    lr = s.spec.virtual_lr
    weights = dict(start)
    for n in student.names:
        if grads.get(n) is not None:
            weights[n] = start[n] - lr * student.restrict(n, grads[n])
    return Virtual(weights, grads, fs.scores.detach(), ft, {k: v.detach() for k, v in own.items()})


def meta_gradient(s: "Stepper", virtual: Virtual, quiz: Tensor, graph,
                  retain_graph: bool = False) -> Tuple[Dict[str, Optional[Tensor]], Tensor]:
    """(2): ``({name: d CE(S' on quiz) / dW[name] or None}, quiz loss)``."""
    q_scores = s.forward(virtual.weights, quiz, graph, train=False).scores
    gq, quiz_loss = s.losses.ce_grad(q_scores.detach(), quiz[:, TAIL])
    grads = s.backprop([(q_scores, gq)], retain_graph=retain_graph)
    return {n: (None if g is None else g.detach()) for n, g in grads.items()}, quiz_loss
