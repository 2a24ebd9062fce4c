"""MetaSD's training step, in the three blocks of ``docs/method.md``.

(1) Virtual student ``S' = S - virtual_lr * grad_S[CE(S) + reg(S) + KD(T -> S)]``
on the batch, built with ``create_graph`` from a detached copy of the student,
so that ``S'`` depends on the teacher's weights ``W`` through the teacher's
predictions in the KD term only (the reference code's path, MetaDistil's).
Only the student's own (masked) tensors move, and they stay inside the student
(``student.restrict``); non-prunable weights keep the teacher's values.

(2) Meta step: ``CE(S' on quiz)`` (plain cross-entropy, no smoothing, no
regulariser, no dropout, as in the reference code), back-propagated to ``W``;
the meta optimiser steps on it.  ``metasd.meta_every = k`` runs (1)-(2) every
``k`` batches.

(3) Real step: ``steps.real_step``, the same as method ``kd``'s.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from metasd_dgl.train.optimizers import apply_gradients
from metasd_dgl.model.student import Student
from metasd_dgl.typing import TAIL
from metasd_dgl.train.steps import Steps, as_floats, extra_teacher_step, real_step


def metasd_step(s: Steps, meta_optimizer: torch.optim.Optimizer, batch: Tensor, student: Student,
                quiz: Tensor, graph=None, do_meta: bool = True) -> Dict[str, float]:
    """One MetaSD batch: ``batch (b, 3)`` tail queries, ``quiz (q, 3)`` held-out queries; the meta
    optimiser steps over the teacher's weights.  ``do_meta`` False: the real step alone
    (``metasd.meta_every``).  Returns the losses as floats, with ``meta_quiz_loss`` and
    ``meta_grad_norm`` when the meta step ran."""
    out = extra_teacher_step(s, batch, graph)
    if do_meta:
        # (1) the virtual student, a differentiable function of W through the teacher's scores
        start = {n: w.detach().requires_grad_(n in student.names) for n, w in student.weights(s.params).items()}
        fs, ft = s.forward(start, batch, graph), s.forward(None, batch, graph, relations=False)  # (KD reads T's tails)
        g = s.losses.virtual_grad(fs.scores.detach(), ft.scores, batch[:, TAIL], s.spec.kd)  # dL_S / d scores
        terms = s.model_losses(fs, batch)  # regulariser, relation prediction
        pairs = [(fs.scores, g)] + [(v, torch.ones_like(v)) for v in terms.values() if v.requires_grad]
        wrt = [n for n, w in start.items() if w.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], [start[n] for n in wrt], [c for _, c in pairs],
                                    create_graph=True, allow_unused=True)
        virtual = dict(start)
        for n, grad in zip(wrt, grads):
            if grad is not None:
                virtual[n] = start[n] - s.spec.virtual_lr * student.restrict(n, grad)
        # (2) the meta step: the virtual student's loss on the quiz, back to W
        q = s.forward(virtual, quiz, graph, train=False, relations=False).scores
        gq, quiz_loss = s.losses.ce_grad(q.detach(), quiz[:, TAIL])
        meta = [None if m is None else m.detach() for m in s.backprop([(q, gq)])]
        out["meta_quiz_loss"] = quiz_loss
        out["meta_grad_norm"] = apply_gradients(meta_optimizer, s.leaves, meta, len(batch), s.spec.grad_clip)
    # (3) the real step: teacher and student learn from the data and from each other
    return as_floats({**out, **real_step(s, batch, student, graph)})
