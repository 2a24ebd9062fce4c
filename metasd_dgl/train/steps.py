"""One training step per batch: plain, prune and kd here, each a short function; MetaSD in ``metasd.py``.

* ``plain_step``  -- CE(T) + reg(T); optimiser step.
* ``prune_step``  -- CE(S) + reg(S) of the student alone.
* ``kd_step``     -- the real step of ``docs/method.md`` (step 3): teacher
  ``CE(T) + reg(T) + KD(S -> T)`` (S detached) plus student
  ``CE(S) + reg(S) + KD(T -> S)`` (T detached), one optimiser step on the sum.
* ``negative_step`` -- the negative-sampling regime (plain, or prune with a student).

``KD(A -> B) = s * [fw * KL(p_A || p_B) + rw * KL(p_B || p_A)]`` (source A,
learner B) with ``s = kd_weight`` (times ``T**2`` with ``metasd.kd_t2_scale``).
With ``extra_teacher_step`` a plain teacher step runs first (kd and metasd).
Losses are applied as gradients with respect to the score matrices
(``closed_form.py``; ``losses.AUTOGRAD`` is the tests' reference), then
back-propagated through the model.  Every forward is functional
(``model.encode(graph, weights)``), so one code path drives the lookup and the
R-GCN encoders, the teacher, the student and MetaSD's virtual student.

Every optimiser step goes through ``optimizers.apply_gradients``: gradients
averaged over ranks under torchrun (weighted by the rows each rank had),
clipped, applied, and their norm reported (``grad_norm``).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from metasd_dgl.train.optimizers import apply_gradients
from metasd_dgl.runtime.precision import score_products
from metasd_dgl.model.student import Student
from metasd_dgl.typing import HEAD, REL, TAIL, ParamDict
from metasd_dgl.train.closed_form import CLOSED_FORM
from metasd_dgl.train.losses import cross_entropy_1n, negative_sampling_loss, regularizer
from metasd_dgl.train.spec import LossBackend, StepSpec

Pairs = List[Tuple[Tensor, Tensor]]  # (output, cotangent): back-propagated together


class Forward(NamedTuple):
    """One model's forward on a batch of tail queries ``(b, 3)``."""

    scores: Tensor  # (b, N): every tail
    rows: Tuple[Tensor, Tensor, Tensor]  # the batch's (h, r, t) rows, for the regulariser
    rel_scores: Optional[Tensor]  # (b, 2R): every relation given (h, t); only with train.rp_weight


class Steps:
    """What every step reads: the model (the teacher's weights), its optimiser, the step's constants.

    spec: from ``StepSpec.from_config``; losses: the score-gradient backend (the tests pass
    ``losses.AUTOGRAD``).  ``generator`` (set by the loop before each epoch) draws the
    embedding-dropout masks; only dropout uses randomness.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, spec: StepSpec,
                 losses: LossBackend = CLOSED_FORM) -> None:
        self.model, self.optimizer, self.spec, self.losses = model, optimizer, spec, losses
        self.params: ParamDict = dict(model.named_parameters())
        self.leaves: List[Tensor] = [p for p in self.params.values() if p.requires_grad]  # what optimisers step
        self.decoder = model.decoder
        self.reg_kind = spec.regularizer if self.decoder.kind == "bilinear" else "none"
        self.generator: Optional[torch.Generator] = None

    def forward(self, weights: Optional[ParamDict], queries: Tensor, graph=None, train: bool = True,
                relations: bool = True) -> Forward:
        """One model on ``queries (b, 3)``: scores of every tail, the batch rows, relation scores.

        weights: ``{name: tensor}`` overriding the module's (``None``: the teacher's own).
        train: apply embedding dropout (``train.entity_dropout`` / ``relation_dropout``);
        the quiz loss of the meta step is scored without it, like an evaluation.
        relations: score every relation too (with ``train.rp_weight``); False where no loss reads them.
        """
        ent, rel = self.model.encode(graph, weights)
        if train:
            ent, rel = self._dropout(ent, self.spec.entity_dropout), self._dropout(rel, self.spec.relation_dropout)
        h, r, t = ent[queries[:, HEAD]], rel[queries[:, REL]], ent[queries[:, TAIL]]
        with score_products(self.spec.precision, ent.device):  # fp32: as written; bf16: autocast
            scores = self.decoder.score_all(h, r, ent)
            rel_scores = self.decoder.score_relations(h, t, rel) if self.spec.rp_weight and relations else None
        if self.spec.precision == "bf16":  # the losses and their gradients on float32 score matrices
            scores, rel_scores = scores.float(), None if rel_scores is None else rel_scores.float()
        return Forward(scores, (h, r, t), rel_scores)

    def _dropout(self, x: Tensor, rate: float) -> Tensor:
        """Inverted dropout of the rows' entries.  The mask is drawn on ``x``'s device from a seed that
        ``self.generator`` (the epoch's CPU stream, resumable) gives, so no table-sized mask is copied."""
        if not rate:
            return x
        if self.generator is None:
            raise ValueError("embedding dropout needs Steps.generator")
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator))
        keep = torch.rand(x.shape, generator=torch.Generator(x.device).manual_seed(seed), device=x.device) >= rate
        return x * keep.to(x.dtype) * (1.0 / (1.0 - rate))

    def model_terms(self, f: Forward, queries: Tensor) -> Tuple[Pairs, Dict[str, Tensor]]:
        """A model's terms beside the data CE, the regulariser and relation prediction: the
        (output, cotangent) pairs to back-propagate, and their values ``{"reg"[, "rp"]}``."""
        reg = regularizer(self.reg_kind, *f.rows, self.spec.reg_weight, self.decoder.name)
        pairs: Pairs = [(reg, torch.ones_like(reg))]
        values = {"reg": reg.detach()}
        if f.rel_scores is not None:
            g, ce = self.losses.ce_grad(f.rel_scores.detach(), queries[:, REL])
            pairs.append((f.rel_scores, g * self.spec.rp_weight))
            values["rp"] = ce * self.spec.rp_weight
        return pairs, values

    def model_losses(self, f: Forward, queries: Tensor) -> Dict[str, Tensor]:
        """The same terms as differentiable scalars (MetaSD's virtual step differentiates them twice)."""
        reg = regularizer(self.reg_kind, *f.rows, self.spec.reg_weight, self.decoder.name)
        if f.rel_scores is None:
            return {"reg": reg}
        return {"reg": reg, "rp": self.spec.rp_weight * cross_entropy_1n(f.rel_scores, queries[:, REL])}

    def backprop(self, pairs: Pairs, extra: Sequence[Tensor] = ()) -> List[Optional[Tensor]]:
        """The gradients of ``sum <output, cotangent>`` with respect to ``leaves`` then ``extra``
        (an own student's tensors), in that order; ``None`` where an output does not reach."""
        pairs = [(o, c) for o, c in pairs if o.requires_grad]
        return list(torch.autograd.grad([o for o, _ in pairs], [*self.leaves, *extra], [c for _, c in pairs],
                                        allow_unused=True))

    def update(self, grads: Sequence[Optional[Tensor]], rows: int) -> float:
        """Step the teacher's optimiser on the gradients of ``leaves``; returns their norm."""
        return apply_gradients(self.optimizer, self.leaves, grads, rows, self.spec.grad_clip)


def as_floats(out: Dict[str, Tensor]) -> Dict[str, float]:
    return {k: float(v) for k, v in out.items()}


def single_step(s: Steps, weights: Optional[ParamDict], batch: Tensor, graph, name: str) -> Dict[str, Tensor]:
    """CE + reg (+ relation prediction) of one model (the teacher with ``weights=None``, else the
    student); optimiser step."""
    f = s.forward(weights, batch, graph)
    g, ce = s.losses.ce_grad(f.scores.detach(), batch[:, TAIL], s.spec.label_smoothing)
    pairs, terms = s.model_terms(f, batch)
    norm = s.update(s.backprop([(f.scores, g), *pairs]), len(batch))
    return {"loss": ce + sum(terms.values()), name: ce, **terms, "grad_norm": norm}


def plain_step(s: Steps, batch: Tensor, graph=None) -> Dict[str, float]:
    """``batch (b, 3)`` tail queries: the teacher's CE + reg; returns the losses as floats."""
    return as_floats(single_step(s, None, batch, graph, "ce_teacher"))


def prune_step(s: Steps, batch: Tensor, student: Student, graph=None) -> Dict[str, float]:
    """The student's CE + reg alone (prune-only)."""
    return as_floats(single_step(s, student.weights(s.params), batch, graph, "ce_student"))


def kd_step(s: Steps, batch: Tensor, student: Student, graph=None) -> Dict[str, float]:
    """Mutual distillation without the meta step (MetaSD's step 3)."""
    return as_floats({**extra_teacher_step(s, batch, graph), **real_step(s, batch, student, graph)})


def extra_teacher_step(s: Steps, batch: Tensor, graph) -> Dict[str, Tensor]:
    """The reference code's ordinary teacher step before the others (``metasd.extra_teacher_step``)."""
    if not s.spec.extra_teacher_step:
        return {}
    return {"extra_teacher_loss": single_step(s, None, batch, graph, "ce_teacher")["loss"]}


def real_step(s: Steps, batch: Tensor, student: Student, graph) -> Dict[str, Tensor]:
    """Step (3): teacher and student learn from the data and from each other; one step on the sum.

    Student ``CE + KD(T -> S)``, teacher ``CE + KD(S -> T)`` (or its CE alone with
    ``one_way_kd``), each with its regulariser; an own student's tensors step its own optimiser.
    """
    fs = s.forward(student.weights(s.params), batch, graph)
    ft = s.forward(None, batch, graph)
    gs, gt, v = s.losses.mutual_grads(fs.scores.detach(), ft.scores.detach(), batch[:, TAIL], s.spec.kd_real)
    if s.spec.one_way_kd:
        gt, _ = s.losses.ce_grad(ft.scores.detach(), batch[:, TAIL], s.spec.label_smoothing)
    pairs_s, terms_s = s.model_terms(fs, batch)
    pairs_t, terms_t = s.model_terms(ft, batch)
    own = list(student.leaves.values())
    grads = s.backprop([(fs.scores, gs), (ft.scores, gt), *pairs_s, *pairs_t], own)
    student.step(grads[len(s.leaves):], len(batch), s.spec.grad_clip)
    norm = s.update(grads[:len(s.leaves)], len(batch))
    # the loss and its parts, from the unscaled KL values
    kd = s.spec.kd_real
    fw, rw, sc = kd.forward_weight, kd.reverse_weight, kd.scale
    kd_s = sc * (fw * v["kl_teacher_student"] + rw * v["kl_student_teacher"])
    kd_t = torch.zeros_like(kd_s) if s.spec.one_way_kd else sc * (fw * v["kl_student_teacher"]
                                                                  + rw * v["kl_teacher_student"])
    terms = {k: terms_s[k] + terms_t[k] for k in terms_s}  # reg, and rp when it is on
    loss = v["ce_student"] + v["ce_teacher"] + kd_s + kd_t + sum(terms.values())
    return {"loss": loss, **terms, "kd_student": kd_s, "kd_teacher": kd_t, **v, "grad_norm": norm}


def negative_step(s: Steps, positives: Tensor, negatives: Tensor, student: Optional[Student] = None,
                  graph=None) -> Dict[str, float]:
    """Negative-sampling regime (plain, or prune with ``student``): ``positives (b, 3)``,
    ``negatives (b, k)`` tail ids from DGL's uniform sampler (``graph.sampling.negative_tails``).

    Loss ``negative_sampling_loss(pos, neg, margin, decoder.kind) + reg``.
    """
    ent, rel = s.model.encode(graph, None if student is None else student.weights(s.params))
    ent, rel = s._dropout(ent, s.spec.entity_dropout), s._dropout(rel, s.spec.relation_dropout)
    h, r, t = ent[positives[:, HEAD]], rel[positives[:, REL]], ent[positives[:, TAIL]]
    pos = s.decoder.score(h, r, t)
    neg = s.decoder.score(h.unsqueeze(1), r.unsqueeze(1), ent[negatives])
    loss = negative_sampling_loss(pos, neg, s.spec.margin, s.decoder.kind)
    reg = regularizer(s.reg_kind, h, r, t, s.spec.reg_weight, s.decoder.name)
    total = loss + reg
    norm = s.update(s.backprop([(total, torch.ones_like(total))]), len(positives))
    return {"loss": float(total.detach()), "ns_loss": float(loss.detach()), "reg": float(reg.detach()),
            "grad_norm": norm}
