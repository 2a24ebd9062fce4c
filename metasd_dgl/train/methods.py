"""One object per training method, each owning its optimisers and taking one ``step`` per batch.

* ``Plain``   -- CE(T) + reg(T); a step of the teacher's optimiser.
* ``Prune``   -- CE(S) + reg(S) of the student alone (gradual magnitude pruning of one dense model).
* ``KD``      -- the real step of ``docs/method.md`` (step 3): teacher ``CE(T) + reg(T) + KD(S -> T)``
  (S detached) plus student ``CE(S) + reg(S) + KD(T -> S)`` (T detached), one step on the sum.
* ``MetaSD``  -- (1) the virtual student, (2) the meta step on the quiz, (3) the real step (KD's).
* ``NegativeSampling`` -- the negative-sampling regime (plain, or prune with a student).

``KD(A -> B) = s * [fw * KL(p_A || p_B) + rw * KL(p_B || p_A)]`` (source A, learner B) with
``s = kd_weight`` (times ``T**2`` with ``metasd.kd_t2_scale``).  With ``metasd.extra_teacher_step``
a plain teacher step runs first (kd and metasd).  ``make_method`` is the one factory.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from metasd_dgl.config import Config
from metasd_dgl.train.base import Method, as_floats
from metasd_dgl.train.closed_form import CLOSED_FORM
from metasd_dgl.train.losses import negative_sampling_loss, regularizer
from metasd_dgl.train.optimizers import make_optimizer
from metasd_dgl.train.spec import LossBackend, StepSpec
from metasd_dgl.typing import HEAD, REL, TAIL


class Plain(Method):
    """The dense model alone."""

    def step(self, batch: Tensor, graph=None, quiz=None, negatives=None) -> Dict[str, float]:
        return as_floats(self.single_step(None, batch, graph, "ce_teacher"))


class Prune(Method):
    """Prune-only: the student's CE + reg; pruned weights keep their gradients (element masks)."""

    regrows = True

    def step(self, batch: Tensor, graph=None, quiz=None, negatives=None) -> Dict[str, float]:
        out = self.single_step(self.student.weights(self.params), batch, graph, "ce_student")
        return as_floats(out)


class KD(Method):
    """Mutual distillation of teacher and student, without the meta step (MetaSD's step 3)."""

    def step(self, batch: Tensor, graph=None, quiz=None, negatives=None) -> Dict[str, float]:
        out = self.extra_teacher_step(batch, graph) if self.spec.extra_teacher_step else {}
        return as_floats({**out, **self.real_step(batch, graph)})

    def extra_teacher_step(self, batch: Tensor, graph) -> Dict[str, Tensor]:
        """The reference code's ordinary teacher step before the others (``metasd.extra_teacher_step``)."""
        return {"extra_teacher_loss": self.single_step(None, batch, graph, "ce_teacher")["loss"]}

    def real_step(self, batch: Tensor, graph) -> Dict[str, Tensor]:
        """Step (3): teacher and student learn from the data and from each other; one step on the sum.

        Student ``CE + KD(T -> S)``, teacher ``CE + KD(S -> T)`` (or its CE alone with
        ``one_way_kd``), each with its regulariser; an own student's tensors step its own optimiser.
        """
        spec, student = self.spec, self.student
        fs = self.forward(student.weights(self.params), batch, graph)
        ft = self.forward(None, batch, graph)
        gs, gt, v = self.losses.mutual_grads(fs.scores.detach(), ft.scores.detach(), batch[:, TAIL], spec.kd_real,
                                             teacher_kd=not spec.one_way_kd)
        pairs_s, terms_s = self.model_terms(fs, batch)
        pairs_t, terms_t = self.model_terms(ft, batch)
        student_leaves = list(student.leaves.values())  # an own student's tensors (none for a view)
        grads = self.backprop([(fs.scores, gs), (ft.scores, gt), *pairs_s, *pairs_t], student_leaves)
        if student_leaves:
            self.apply(self.student_optimizer, student_leaves, grads[len(self.leaves):], len(batch))
        norm = self.apply(self.optimizer, self.leaves, grads[:len(self.leaves)], len(batch))
        # the loss and its parts, from the unscaled KL values
        fw, rw, sc = spec.kd_real.forward_weight, spec.kd_real.reverse_weight, spec.kd_real.scale
        kd_s = sc * (fw * v["kl_teacher_student"] + rw * v["kl_student_teacher"])
        kd_t = torch.zeros_like(kd_s) if spec.one_way_kd else sc * (fw * v["kl_student_teacher"]
                                                                     + rw * v["kl_teacher_student"])
        terms = {k: terms_s[k] + terms_t[k] for k in terms_s}  # reg, and rp when it is on
        loss = v["ce_student"] + v["ce_teacher"] + kd_s + kd_t + sum(terms.values())
        return {"loss": loss, **terms, "kd_student": kd_s, "kd_teacher": kd_t, **v, "grad_norm": norm}


class MetaSD(KD):
    """MetaSD: KD's real step after a meta step that teaches the teacher to teach (``docs/method.md``).

    (1) Virtual student ``S' = S - virtual_lr * grad_S[CE(S) + reg(S) + KD(T -> S)]`` on the batch,
    built with ``create_graph`` from a detached copy of the student, so that ``S'`` depends on the
    teacher's weights ``W`` through the teacher's predictions in the KD term only (the reference
    code's path, MetaDistil's).  Only the student's own (masked) tensors move, and they stay inside
    the student (``student.restrict``); non-prunable weights keep the teacher's values.
    (2) Meta step: ``CE(S' on quiz)`` (plain cross-entropy, no smoothing, no regulariser, no dropout,
    as in the reference code), back-propagated to ``W``; the meta optimiser steps on it.
    (3) Real step: ``KD.real_step``.
    """

    def __init__(self, model: nn.Module, spec: StepSpec, optimizer, meta_optimizer, losses=CLOSED_FORM) -> None:
        super().__init__(model, spec, optimizer, losses)
        self.meta_optimizer = make_optimizer(meta_optimizer[0], self.leaves, meta_optimizer[1])

    def step(self, batch: Tensor, graph=None, quiz: Optional[Tensor] = None, negatives=None) -> Dict[str, float]:
        """``quiz (q, 3)``: held-out queries for the meta step (``None``: the real step alone, as on the
        batches ``metasd.meta_every`` skips).  Adds ``meta_quiz_loss`` and ``meta_grad_norm``."""
        out = self.extra_teacher_step(batch, graph) if self.spec.extra_teacher_step else {}
        student, y = self.student, batch[:, TAIL]
        if quiz is not None:
            # (1) the virtual student, a differentiable function of W through the teacher's scores
            start = {n: w.detach().requires_grad_(n in student.names) for n, w in student.weights(self.params).items()}
            fs = self.forward(start, batch, graph)
            ft = self.forward(None, batch, graph, relations=False)  # KD reads the teacher's tail scores only
            g = self.losses.virtual_grad(fs.scores.detach(), ft.scores, y, self.spec.kd)  # dL_S / d scores
            terms = self.model_losses(fs, batch)  # regulariser, relation prediction
            pairs = [(fs.scores, g)] + [(v, torch.ones_like(v)) for v in terms.values() if v.requires_grad]
            wrt = [n for n, w in start.items() if w.requires_grad]
            grads = torch.autograd.grad([o for o, _ in pairs], [start[n] for n in wrt], [c for _, c in pairs],
                                        create_graph=True, allow_unused=True)
            virtual = dict(start)
            for n, grad in zip(wrt, grads):
                if grad is not None:
                    virtual[n] = start[n] - self.spec.virtual_lr * student.restrict(n, grad)
            # (2) the meta step: the virtual student's loss on the quiz, back to W
            q = self.forward(virtual, quiz, graph, train=False, relations=False).scores
            gq, quiz_loss = self.losses.ce_grad(q.detach(), quiz[:, TAIL])
            meta = [None if m is None else m.detach() for m in self.backprop([(q, gq)])]
            out["meta_quiz_loss"] = quiz_loss
            out["meta_grad_norm"] = self.apply(self.meta_optimizer, self.leaves, meta, len(batch))
        # (3) the real step: teacher and student learn from the data and from each other
        return as_floats({**out, **self.real_step(batch, graph)})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "meta_optimizer": self.meta_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("meta_optimizer"):
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])


class NegativeSampling(Method):
    """The negative-sampling regime: ``positives (b, 3)``, ``negatives (b, k)`` tail ids from DGL's
    uniform sampler (``graph.sampling.negative_tails``); the student's (prune) or the teacher's (plain)
    ``negative_sampling_loss(pos, neg, margin, decoder.kind) + reg``."""

    def step(self, batch: Tensor, graph=None, quiz=None, negatives: Optional[Tensor] = None) -> Dict[str, float]:
        weights = None if self.student is None else self.student.weights(self.params)
        ent, rel = self.model.encode(graph, weights)
        ent, rel = self._dropout(ent, self.spec.entity_dropout), self._dropout(rel, self.spec.relation_dropout)
        h, r, t = ent[batch[:, HEAD]], rel[batch[:, REL]], ent[batch[:, TAIL]]
        pos = self.decoder.score(h, r, t)
        neg = self.decoder.score(h.unsqueeze(1), r.unsqueeze(1), ent[negatives])
        loss = negative_sampling_loss(pos, neg, self.spec.margin, self.decoder.kind)
        reg = regularizer(self.reg_kind, h, r, t, self.spec.reg_weight, self.decoder.name)
        total = loss + reg
        norm = self.apply(self.optimizer, self.leaves, self.backprop([(total, torch.ones_like(total))]), len(batch))
        return {"loss": float(total.detach()), "ns_loss": float(loss.detach()), "reg": float(reg.detach()),
                "grad_norm": norm}


def make_method(cfg: Config, model: nn.Module, losses: LossBackend = CLOSED_FORM) -> Method:
    """The run's method (``train.method``, ``train.regime``) on ``model``, with its optimisers."""
    tc, mc = cfg.train, cfg.metasd
    spec, optimizer = StepSpec.from_config(cfg), (tc.optimizer, tc.lr)
    if tc.regime == "negative-sampling":
        method: Method = NegativeSampling(model, spec, optimizer, losses)
        method.regrows = tc.method == "prune"
    elif tc.method == "metasd":
        method = MetaSD(model, spec, optimizer, (mc.meta_optimizer, mc.meta_lr), losses)
    else:
        method = {"plain": Plain, "prune": Prune, "kd": KD}[tc.method](model, spec, optimizer, losses)
    if tc.method in ("kd", "metasd"):
        method.own_student, method.student_lr = mc.student == "own", mc.student_lr
    return method
