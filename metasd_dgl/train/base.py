"""What every training method shares: the model's forward on a batch, its extra terms, back-propagation,
and the one update path every optimiser step goes through.

A method (``methods.py``) is a ``Method`` that owns its optimisers (the teacher's, MetaSD's meta
optimiser, an own student's) and its student, and takes one ``step`` per batch.  Losses are applied as
gradients with respect to the score matrices (``closed_form.py``; ``losses.AUTOGRAD`` is the tests'
reference) and back-propagated through the model.  Every forward is functional
(``model.encode(graph, weights)``), so one code path drives the lookup and the R-GCN encoders, the
teacher, the student and MetaSD's virtual student.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from metasd_dgl.model.student import Student, make_student
from metasd_dgl.runtime.distributed import average_gradients
from metasd_dgl.runtime.precision import score_products
from metasd_dgl.train.closed_form import CLOSED_FORM
from metasd_dgl.train.losses import cross_entropy_1n, regularizer
from metasd_dgl.train.optimizers import make_optimizer
from metasd_dgl.train.spec import LossBackend, StepSpec
from metasd_dgl.typing import HEAD, REL, TAIL, MaskDict, ParamDict

Pairs = List[Tuple[Tensor, Tensor]]  # (output, cotangent): back-propagated together


def as_floats(values: Dict[str, Tensor]) -> Dict[str, float]:
    """A step's losses as Python floats (what ``Method.step`` returns)."""
    return {k: float(v) for k, v in values.items()}


class Forward(NamedTuple):
    """One model's forward on a batch of tail queries ``(b, 3)``."""

    scores: Tensor  # (b, N): every tail
    embeddings: Tuple[Tensor, Tensor, Tensor]  # the batch's (h, r, t) embeddings, for the regulariser
    rel_scores: Optional[Tensor]  # (b, 2R): every relation given (h, t); only with train.rp_weight


class Method:
    """A training method on ``model`` (the teacher's weights): its optimisers, its student, its step.

    spec: the step's constants (``StepSpec.from_config``); optimizer: ``(name, lr)`` of the teacher's
    optimiser (``train.optimizer``, ``train.lr``), also the own student's kind; losses: the
    score-gradient backend.  ``generator`` (set by the loop before each epoch) draws the
    embedding-dropout masks; only dropout uses randomness.
    """

    def __init__(self, model: nn.Module, spec: StepSpec, optimizer: Tuple[str, float],
                 losses: LossBackend = CLOSED_FORM) -> None:
        self.model, self.spec, self.losses = model, spec, losses
        self.params: ParamDict = dict(model.named_parameters())
        self.leaves: List[Tensor] = [p for p in self.params.values() if p.requires_grad]  # what optimisers step
        self.decoder = model.decoder
        self.reg_kind = spec.regularizer if self.decoder.kind == "bilinear" else "none"
        self.generator: Optional[torch.Generator] = None
        self.optimizer_name, self.lr = optimizer
        self.optimizer = make_optimizer(self.optimizer_name, self.leaves, self.lr)
        self.student: Optional[Student] = None
        self.student_optimizer: Optional[torch.optim.Optimizer] = None  # an own student's

    # ------------------------------------------------------------------ the student
    def remask(self, masks: MaskDict, structure: str) -> None:
        """The student of this epoch's ``masks`` (built at the first, remasked after)."""
        if self.student is None:
            self.set_student(make_student(masks, self.params, structure, own=self.own_student,
                                          regrow=self.regrows))
        else:
            self.student = self.student.remask(masks, self.params)

    own_student = False  # kd, metasd: metasd.student = own
    regrows = False  # prune: pruned weights keep their gradients
    student_lr = 0.0  # the own student's lr (0 = the teacher's)

    def set_student(self, student: Student) -> None:
        """Take ``student``; one with weights of its own gets its optimiser (the teacher's kind)."""
        self.student = student
        leaves = list(student.leaves.values())
        lr = self.student_lr or self.lr
        self.student_optimizer = make_optimizer(self.optimizer_name, leaves, lr) if leaves else None

    # ------------------------------------------------------------------ one model's forward
    def forward(self, weights: Optional[ParamDict], queries: Tensor, graph=None, train: bool = True,
                relations: bool = True) -> Forward:
        """One model on ``queries (b, 3)``: scores of every tail, the batch's embeddings, relation scores.

        weights: ``{name: tensor}`` overriding the module's (``None``: the teacher's own).
        train: apply embedding dropout (``train.entity_dropout`` / ``relation_dropout``); the quiz
        loss of the meta step is scored without it, like an evaluation.
        relations: score every relation too (with ``train.rp_weight``); False where no loss reads them.
        The score products run in ``train.precision`` (bf16: autocast; the scores come back float32).
        """
        ent, rel = self.model.encode(graph, weights)
        if train and (self.spec.entity_dropout or self.spec.relation_dropout):
            ent, rel = self._dropout(ent, self.spec.entity_dropout), self._dropout(rel, self.spec.relation_dropout)
        h, r, t = ent[queries[:, HEAD]], rel[queries[:, REL]], ent[queries[:, TAIL]]
        bf16 = self.spec.precision == "bf16"
        with score_products(self.spec.precision, ent.device):
            scores = self.decoder.score_all(h, r, ent)
            rel_scores = self.decoder.score_relations(h, t, rel) if self.spec.rp_weight and relations else None
        if bf16:  # the losses and their gradients on float32 score matrices
            scores, rel_scores = scores.float(), None if rel_scores is None else rel_scores.float()
        return Forward(scores, (h, r, t), rel_scores)

    def _dropout(self, x: Tensor, rate: float) -> Tensor:
        """Inverted dropout of the rows' entries.  The mask is drawn on ``x``'s device from a seed that
        ``self.generator`` (the epoch's CPU stream, resumable) gives, so no table-sized mask is copied."""
        if not rate:
            return x
        if self.generator is None:
            raise ValueError("embedding dropout needs Method.generator")
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator))
        keep = torch.rand(x.shape, generator=torch.Generator(x.device).manual_seed(seed), device=x.device) >= rate
        return x * keep.to(x.dtype) * (1.0 / (1.0 - rate))

    # ------------------------------------------------------------------ terms beside the data CE
    def model_terms(self, f: Forward, queries: Tensor) -> Tuple[Pairs, Dict[str, Tensor]]:
        """A model's terms beside the data CE, the regulariser and relation prediction: the
        (output, cotangent) pairs to back-propagate, and their values ``{"reg"[, "rp"]}``."""
        reg = regularizer(self.reg_kind, *f.embeddings, self.spec.reg_weight, self.decoder.name)
        pairs: Pairs = [(reg, torch.ones_like(reg))]
        values = {"reg": reg.detach()}
        if f.rel_scores is not None:
            g, ce = self.losses.ce_grad(f.rel_scores.detach(), queries[:, REL])
            pairs.append((f.rel_scores, g * self.spec.rp_weight))
            values["rp"] = ce * self.spec.rp_weight
        return pairs, values

    def model_losses(self, f: Forward, queries: Tensor) -> Dict[str, Tensor]:
        """The same terms as differentiable scalars (MetaSD's virtual step differentiates them twice)."""
        reg = regularizer(self.reg_kind, *f.embeddings, self.spec.reg_weight, self.decoder.name)
        if f.rel_scores is None:
            return {"reg": reg}
        return {"reg": reg, "rp": self.spec.rp_weight * cross_entropy_1n(f.rel_scores, queries[:, REL])}

    # ------------------------------------------------------------------ gradients and updates
    def backprop(self, pairs: Pairs, extra: Sequence[Tensor] = ()) -> List[Optional[Tensor]]:
        """The gradients of ``sum <output, cotangent>`` with respect to ``leaves`` then ``extra``
        (an own student's tensors), in that order; ``None`` where an output does not reach."""
        pairs = [(o, c) for o, c in pairs if o.requires_grad]
        return list(torch.autograd.grad([o for o, _ in pairs], [*self.leaves, *extra], [c for _, c in pairs],
                                        allow_unused=True))

    def apply(self, optimizer: torch.optim.Optimizer, params: Sequence[Tensor],
              grads: Sequence[Optional[Tensor]], count: int) -> float:
        """The one update path: set ``grads`` on ``params`` (in order; ``None`` = no gradient), average
        them over ranks (``count``: this process's queries of the batch, their weight under torchrun), clip their
        joint norm to ``train.grad_clip`` (0 = off), step ``optimizer``; returns the norm before clipping."""
        stepped = []
        for p, g in zip(params, grads):
            p.grad = g
            if g is not None:
                stepped.append(p)
        average_gradients(stepped, count)  # no-op unless running under torchrun
        norms = [torch.linalg.vector_norm(p.grad) for p in stepped]
        norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        clip = self.spec.grad_clip
        if clip > 0 and norm > clip:
            for p in stepped:
                p.grad.mul_(clip / (norm + 1e-6))
        optimizer.step()
        for p in stepped:
            p.grad = None
        return norm

    def single_step(self, weights: Optional[ParamDict], batch: Tensor, graph, name: str) -> Dict[str, Tensor]:
        """CE + reg (+ relation prediction) of one model (the teacher with ``weights=None``, else the
        student); a step of the teacher's optimiser."""
        f = self.forward(weights, batch, graph)
        g, ce = self.losses.ce_grad(f.scores.detach(), batch[:, TAIL], self.spec.label_smoothing)
        pairs, terms = self.model_terms(f, batch)
        norm = self.apply(self.optimizer, self.leaves, self.backprop([(f.scores, g), *pairs]), len(batch))
        return {"loss": ce + sum(terms.values()), name: ce, **terms, "grad_norm": norm}

    def step(self, batch: Tensor, graph=None, quiz: Optional[Tensor] = None,
             negatives: Optional[Tensor] = None) -> Dict[str, float]:
        """One batch of tail queries ``(b, 3)``; returns the losses as floats."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state (checkpoints)
    def state_dict(self) -> dict:
        """The optimisers' states and an own student's weights (the checkpoint's keys)."""
        weights = {n: w.detach().clone() for n, w in self.student.leaves.items()} if self.student_optimizer else None
        return {"optimizer": self.optimizer.state_dict(),
                "meta_optimizer": None,  # MetaSD's (its state_dict fills it)
                "student_weights": weights,
                "student_optimizer": self.student_optimizer.state_dict() if self.student_optimizer else None}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("student_weights") is not None and self.student_optimizer is not None:
            with torch.no_grad():
                for n, w in self.student.leaves.items():
                    w.copy_(state["student_weights"][n].to(w.device))
            self.student_optimizer.load_state_dict(state["student_optimizer"])
