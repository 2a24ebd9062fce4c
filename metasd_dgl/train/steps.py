"""One training step per batch: ``plain | prune | kd | metasd``, each a short function.

The epoch loop owns batching, the quiz split and the masks (recomputed once
per epoch, then wrapped in a ``student.Student``); it calls
``Stepper.step(batch, student, quiz, graph)`` once per batch.  The method
functions below read as ``docs/method.md``'s steps:

* ``plain``  -- CE(T) + reg(T); optimiser step.
* ``prune``  -- CE(S) + reg(S) of the student alone.
* ``kd``     -- step (3) only: teacher ``CE(T) + reg(T) + KD(S -> T)`` (S
  detached) plus student ``CE(S) + reg(S) + KD(T -> S)`` (T detached), one
  optimiser step on the sum.
* ``metasd`` -- (1) virtual student, (2) meta step on the quiz batch, (3) the
  real step of ``kd`` (``meta.py`` holds (1) and (2)).
* ``metasd_shared`` -- ``metasd.share_forward``: steps 1-3 from one forward
  pass of S and T, the real step's gradients taken at the pre-meta weights
  (an approximation, faster).

``KD(A -> B) = s * [fw * KL(p_A || p_B) + rw * KL(p_B || p_A)]`` (source A,
learner B) with ``s = kd_weight`` (times ``T**2`` with ``metasd.kd_t2_scale``).
With ``extra_teacher_step`` (kd, metasd) a plain teacher step runs first;
with ``student_owns_kept`` the teacher's real-step loss skips the student's
weights.  Losses are applied as gradients with respect to the score matrices
(``spec.LossBackend``: closed form in ``fused.py``, autograd in
``losses.py``), then back-propagated through the model.  Every forward is
functional (``model.encode(graph, weights)``), so one code path drives the
lookup and the R-GCN encoders, the teacher, the student and the virtual student.

Every optimiser step goes through ``Stepper.update``: gradients averaged over
ranks under torchrun (weighted by the rows each rank had), clipped, applied,
and their norm reported (``grad_norm``, ``meta_grad_norm``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ..config import Config
from ..distributed import average_gradients
from ..student import Student
from ..typing import HEAD, REL, TAIL, ParamDict
from .fused import FUSED
from .losses import AUTOGRAD, cross_entropy_1n, negative_sampling_loss, regularizer
from .meta import meta_gradient, virtual_student, virtual_student_reference
from .spec import StepSpec

BACKENDS = {"fused": FUSED, "autograd": AUTOGRAD}
OWN = "student:"  # prefix of a student's own weights among gradients (student.OwnStudent)
Grads = Dict[str, Optional[Tensor]]
Pairs = List[Tuple[Tensor, Tensor]]  # (output, cotangent): back-propagated together


class Forward(NamedTuple):
    """One model's forward on a batch of tail queries ``(b, 3)``."""

    scores: Tensor  # (b, N): every tail
    rows: Tuple[Tensor, Tensor, Tensor]  # the batch's (h, r, t) rows, for the regulariser
    rel_scores: Optional[Tensor]  # (b, 2R): every relation given (h, t); only with train.rp_weight


#: ``train.optimizer`` / ``metasd.meta_optimizer`` names -> torch optimisers.
OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def make_optimizers(model: nn.Module, cfg: Config) -> Tuple[torch.optim.Optimizer, Optional[torch.optim.Optimizer]]:
    """Main optimiser over all weights and, for ``metasd``, the meta optimiser over the same weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    tc, mc = cfg.train, cfg.metasd
    main = OPTIMIZERS[tc.optimizer](params, lr=tc.lr)
    meta = OPTIMIZERS[mc.meta_optimizer](params, lr=mc.meta_lr) if tc.method == "metasd" else None
    return main, meta


class Stepper:
    """The model, its optimisers and the step's constants; ``step`` runs one batch of the method.

    model: a ``LinkPredictor``; optimizer / meta_optimizer over all of its
    parameters (the meta optimiser only for ``metasd``); spec: from
    ``StepSpec.from_config``.  ``generator`` (set by the caller before each
    step) draws the embedding-dropout masks; only dropout uses randomness.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 meta_optimizer: Optional[torch.optim.Optimizer], spec: StepSpec) -> None:
        if spec.method == "metasd" and meta_optimizer is None:
            raise ValueError("method 'metasd' needs a meta optimizer")
        self.model, self.optimizer, self.meta_optimizer, self.spec = model, optimizer, meta_optimizer, spec
        self.losses = BACKENDS[spec.loss_backend]
        self.params: ParamDict = dict(model.named_parameters())
        self.decoder = model.decoder
        self.reg_kind = spec.regularizer if self.decoder.kind == "bilinear" else "none"
        self.method: Callable = metasd_shared if spec.method == "metasd" and spec.share_forward else METHODS[spec.method]
        self.virtual = virtual_student if spec.meta_grad_path == "full" else virtual_student_reference
        self.generator: Optional[torch.Generator] = None

    # ------------------------------------------------------------ pieces
    def forward(self, weights: Optional[ParamDict], queries: Tensor, graph=None, train: bool = True) -> Forward:
        """One model on ``queries (b, 3)``: scores of every tail, the batch rows, relation scores.

        weights: ``{name: tensor}`` overriding the module's (``None``: the teacher's own).
        train: apply embedding dropout (``train.entity_dropout`` / ``relation_dropout``);
        the quiz loss of the meta step is scored without it, like an evaluation.
        """
        ent, rel = self.model.encode(graph, weights)
        if train:
            ent, rel = self._dropout(ent, self.spec.entity_dropout), self._dropout(rel, self.spec.relation_dropout)
        h, r, t = ent[queries[:, HEAD]], rel[queries[:, REL]], ent[queries[:, TAIL]]
        rel_scores = self.decoder.score_relations(h, t, rel) if self.spec.rp_weight else None
        return Forward(self.decoder.score_all(h, r, ent), (h, r, t), rel_scores)

    def _dropout(self, x: Tensor, rate: float) -> Tensor:
        """Inverted dropout of the rows' entries.  The mask is drawn on ``x``'s device from a seed that
        ``self.generator`` (the epoch's CPU stream, resumable) gives, so no table-sized mask is copied."""
        if not rate:
            return x
        if self.generator is None:
            raise ValueError("embedding dropout needs Stepper.generator")
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator))
        keep = torch.rand(x.shape, generator=torch.Generator(x.device).manual_seed(seed), device=x.device) >= rate
        return x * keep.to(x.dtype) * (1.0 / (1.0 - rate))

    def own_terms(self, f: Forward, queries: Tensor) -> Tuple[Pairs, Dict[str, Tensor]]:
        """A model's terms beside the data CE: the regulariser and relation prediction.

        Returns the (output, cotangent) pairs to back-propagate and their values
        ``{"reg"}``, plus ``"rp"`` (``rp_weight * CE`` over relations) when it is on.
        """
        reg = regularizer(self.reg_kind, *f.rows, self.spec.reg_weight, self.decoder.name)
        pairs: Pairs = [(reg, torch.ones_like(reg))]
        values = {"reg": reg.detach()}
        if f.rel_scores is not None:
            g, ce = self.losses.ce_grad(f.rel_scores.detach(), queries[:, REL])
            pairs.append((f.rel_scores, g * self.spec.rp_weight))
            values["rp"] = ce * self.spec.rp_weight
        return pairs, values

    def own_losses(self, f: Forward, queries: Tensor) -> Dict[str, Tensor]:
        """The same terms as differentiable scalars (the virtual step differentiates them twice)."""
        reg = regularizer(self.reg_kind, *f.rows, self.spec.reg_weight, self.decoder.name)
        if f.rel_scores is None:
            return {"reg": reg}
        return {"reg": reg, "rp": self.spec.rp_weight * cross_entropy_1n(f.rel_scores, queries[:, REL])}

    def backprop(self, pairs: List[Tuple[Tensor, Tensor]], retain_graph: bool = False,
                 student: Optional[Student] = None) -> Grads:
        """``{name: d/dW[name] of sum <output, cotangent>}`` over ``(output, cotangent)`` pairs.

        With a student of its own weights, its leaves' gradients too, as ``OWN + name``.
        """
        leaves = {n: p for n, p in self.params.items() if p.requires_grad}
        if student is not None:
            leaves.update({OWN + n: w for n, w in student.leaves.items()})
        pairs = [(o, c) for o, c in pairs if o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], list(leaves.values()), [c for _, c in pairs],
                                    allow_unused=True, retain_graph=retain_graph)
        return dict(zip(leaves, grads))

    def update(self, opt: torch.optim.Optimizer, grads: Grads, rows: int, student: Optional[Student] = None) -> float:
        """The one update path: average over ranks, clip, step; returns the gradient norm before clipping.

        rows: this process's batch rows (the weight of its gradients in the average under torchrun).
        student: its own leaves' gradients (``OWN + name``) step its own optimiser the same way.
        """
        own = {n[len(OWN):]: g for n, g in grads.items() if n.startswith(OWN)}
        if own and student is not None:
            self._apply(student.optimizer, student.leaves, own, rows)
        return self._apply(opt, self.params, {n: g for n, g in grads.items() if not n.startswith(OWN)}, rows)

    def _apply(self, opt: torch.optim.Optimizer, params: ParamDict, grads: Grads, rows: int) -> float:
        leaves = []
        for n, g in grads.items():
            params[n].grad = g
            if g is not None:
                leaves.append(params[n])
        average_gradients(leaves, rows)  # no-op unless running under torchrun
        norms = [torch.linalg.vector_norm(p.grad) for p in leaves]
        norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        if self.spec.grad_clip > 0 and norm > self.spec.grad_clip:
            for p in leaves:
                p.grad.mul_(self.spec.grad_clip / (norm + 1e-6))
        opt.step()
        for p in leaves:
            p.grad = None
        return norm

    # ------------------------------------------------------------ steps
    def step(self, batch: Tensor, student: Optional[Student] = None, quiz: Optional[Tensor] = None,
             graph=None, do_meta: bool = True) -> Dict[str, float]:
        """One batch of tail queries ``(b, 3)``; returns the losses as floats.

        student: from ``student.make_student`` (prune, kd, metasd); quiz:
        ``(q, 3)`` (metasd); do_meta: False skips the meta step
        (``metasd.meta_every``).  Keys: ``loss`` (what the optimiser
        minimised), ``ce_teacher`` and/or ``ce_student``, ``reg``, ``rp``
        (relation prediction, when on), ``grad_norm``; for kd/metasd ``kd_student``, ``kd_teacher``,
        ``kl_teacher_student``, ``kl_student_teacher``; with a meta step
        ``meta_quiz_loss``, ``meta_grad_norm``; with the extra teacher step
        ``extra_teacher_loss``.
        """
        if self.spec.method != "plain" and student is None:
            raise ValueError(f"method {self.spec.method!r} needs a student (masks)")
        if self.spec.method == "metasd" and do_meta and quiz is None:
            raise ValueError("the meta step needs a quiz batch")
        out = self.method(self, batch, student, quiz, graph, do_meta)
        return {k: float(v) for k, v in out.items()}

    def teacher_step(self, batch: Tensor, graph=None) -> Dict[str, float]:
        """A plain teacher step (``metasd.warmup_epochs``: the teacher trains alone first)."""
        return {k: float(v) for k, v in single_step(self, None, batch, graph, "ce_teacher").items()}

    def step_negative(self, positives: Tensor, negatives: Tensor, student: Optional[Student] = None,
                      graph=None) -> Dict[str, float]:
        """Negative-sampling regime (plain or prune): ``positives (b, 3)``, ``negatives (b, k)`` tail ids.

        The negatives come from DGL's uniform sampler (``graph.sampling.negative_tails``).
        Loss ``negative_sampling_loss(pos, neg, margin, decoder.kind) + reg`` of
        the teacher, or of the student when given.
        """
        if self.spec.method not in ("plain", "prune"):
            raise ValueError(f"the negative-sampling regime supports plain and prune, not {self.spec.method!r}")
        if self.spec.method == "prune" and student is None:
            raise ValueError("method 'prune' needs a student (masks)")
        ent, rel = self.model.encode(graph, None if student is None else student.weights(self.params))
        ent, rel = self._dropout(ent, self.spec.entity_dropout), self._dropout(rel, self.spec.relation_dropout)
        h, r, t = ent[positives[:, HEAD]], rel[positives[:, REL]], ent[positives[:, TAIL]]
        pos = self.decoder.score(h, r, t)
        neg = self.decoder.score(h.unsqueeze(1), r.unsqueeze(1), ent[negatives])
        loss = negative_sampling_loss(pos, neg, self.spec.margin, self.decoder.kind)
        reg = regularizer(self.reg_kind, h, r, t, self.spec.reg_weight, self.decoder.name)
        total = loss + reg
        norm = self.update(self.optimizer, self.backprop([(total, torch.ones_like(total))]), len(positives))
        return {"loss": float(total.detach()), "ns_loss": float(loss.detach()), "reg": float(reg.detach()),
                "grad_norm": norm}


# ------------------------------------------------------------------ the real steps
def single_step(s: Stepper, weights: Optional[ParamDict], batch: Tensor, graph, name: str) -> Dict[str, Tensor]:
    """CE + reg (+ relation prediction) of one model (the teacher with ``weights=None``, else the
    student); optimiser step."""
    f = s.forward(weights, batch, graph)
    g, ce = s.losses.ce_grad(f.scores.detach(), batch[:, TAIL], s.spec.label_smoothing)
    pairs, own = s.own_terms(f, batch)
    norm = s.update(s.optimizer, s.backprop([(f.scores, g), *pairs]), len(batch))
    return {"loss": ce + sum(own.values()), name: ce, **own, "grad_norm": norm}


def mutual_step(s: Stepper, batch: Tensor, student: Student, graph) -> Dict[str, Tensor]:
    """Step (3): teacher and student learn from the data and from each other; one step on the sum."""
    teacher = student.without_kept(s.params) if s.spec.student_owns_kept else None
    fs = s.forward(student.weights(s.params), batch, graph)
    ft = s.forward(teacher, batch, graph)
    gs, gt, values = real_step_grads(s, fs.scores.detach(), ft.scores.detach(), batch)
    pairs_s, own_s = s.own_terms(fs, batch)
    pairs_t, own_t = s.own_terms(ft, batch)
    grads = s.backprop([(fs.scores, gs), (ft.scores, gt), *pairs_s, *pairs_t], student=student)
    norm = s.update(s.optimizer, grads, len(batch), student)
    return {**mutual_values(s.spec, values, own_s, own_t), "grad_norm": norm}


def real_step_grads(s: Stepper, x: Tensor, z: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    """Score gradients of the real step: student ``CE + KD(T -> S)``, teacher ``CE + KD(S -> T)``,
    or the teacher's CE alone with ``one_way_kd``."""
    gs, gt, values = s.losses.mutual_grads(x, z, batch[:, TAIL], s.spec.kd_real)
    if s.spec.one_way_kd:
        gt, _ = s.losses.ce_grad(z, batch[:, TAIL], s.spec.label_smoothing)
    return gs, gt, values


def mutual_values(spec: StepSpec, v: Dict[str, Tensor], own_s: Dict[str, Tensor],
                  own_t: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The real step's loss and its parts from the unscaled KL values of ``mutual_grads``."""
    kd = spec.kd_real
    fw, rw, sc = kd.forward_weight, kd.reverse_weight, kd.scale
    kd_s = sc * (fw * v["kl_teacher_student"] + rw * v["kl_student_teacher"])
    kd_t = sc * (fw * v["kl_student_teacher"] + rw * v["kl_teacher_student"])
    if spec.one_way_kd:
        kd_t = torch.zeros_like(kd_t)
    own = {k: own_s[k] + own_t[k] for k in own_s}  # reg, and rp when it is on
    loss = v["ce_student"] + v["ce_teacher"] + kd_s + kd_t + sum(own.values())
    return {"loss": loss, **own, "kd_student": kd_s, "kd_teacher": kd_t, **v}


def extra_teacher_step(s: Stepper, batch: Tensor, graph) -> Dict[str, Tensor]:
    """The reference code's ordinary teacher step before the others (``metasd.extra_teacher_step``)."""
    if not s.spec.extra_teacher_step:
        return {}
    return {"extra_teacher_loss": single_step(s, None, batch, graph, "ce_teacher")["loss"]}


# ------------------------------------------------------------------ the methods
def plain(s: Stepper, batch: Tensor, student, quiz, graph, do_meta) -> Dict[str, Tensor]:
    return single_step(s, None, batch, graph, "ce_teacher")


def prune(s: Stepper, batch: Tensor, student: Student, quiz, graph, do_meta) -> Dict[str, Tensor]:
    return single_step(s, student.weights(s.params), batch, graph, "ce_student")


def kd(s: Stepper, batch: Tensor, student: Student, quiz, graph, do_meta) -> Dict[str, Tensor]:
    out = extra_teacher_step(s, batch, graph)
    return {**out, **mutual_step(s, batch, student, graph)}


def metasd(s: Stepper, batch: Tensor, student: Student, quiz: Tensor, graph, do_meta: bool) -> Dict[str, Tensor]:
    out = extra_teacher_step(s, batch, graph)
    if do_meta:
        virtual = s.virtual(s, batch, student, graph)  # (1) S' = S - lr * grad[CE + reg + KD(T -> S)]
        grads, quiz_loss = meta_gradient(s, virtual, quiz, graph)  # (2) d CE(S' on quiz) / dW
        out.update(meta_quiz_loss=quiz_loss, meta_grad_norm=s.update(s.meta_optimizer, grads, len(batch)))
    return {**out, **mutual_step(s, batch, student, graph)}  # (3) the real step


def metasd_shared(s: Stepper, batch: Tensor, student: Student, quiz: Tensor, graph,
                  do_meta: bool) -> Dict[str, Tensor]:
    """``share_forward``: steps 1-3 from one forward pass of S and T (an approximation).

    The real step's gradients are taken at the weights *before* the meta
    update, so that the virtual step's scores, softmaxes and student
    gradient serve both; then the meta update and the real update are
    applied in that order.  Not ``metasd``'s exact order (there the real
    step sees the meta-updated teacher); saves two score products, two
    backward products and a softmax pass per batch.
    """
    if not do_meta:
        return kd(s, batch, student, quiz, graph, do_meta)
    out = extra_teacher_step(s, batch, graph)
    virtual = s.virtual(s, batch, student, graph, every_weight=True)  # (1), gradients of all student weights
    meta, quiz_loss = meta_gradient(s, virtual, quiz, graph, retain_graph=True)  # (2)
    ft = virtual.teacher
    _, gt, values = real_step_grads(s, virtual.student_scores, ft.scores.detach(), batch)
    pairs_t, own_t = s.own_terms(ft, batch)
    teacher = s.backprop([(ft.scores, gt), *pairs_t])
    real: Grads = {}
    for n, g in teacher.items():  # (3) teacher part + student part (the virtual step's gradient)
        if g is not None and s.spec.student_owns_kept:
            g = student.drop_kept(n, g)
        g_s = virtual.student_grads.get(n)
        g_s = None if g_s is None else student.to_teacher(n, g_s.detach())
        parts = [x for x in (g, g_s) if x is not None]
        real[n] = None if not parts else (parts[0] if len(parts) == 1 else parts[0] + parts[1])
    out.update(meta_quiz_loss=quiz_loss, meta_grad_norm=s.update(s.meta_optimizer, meta, len(batch)))
    norm = s.update(s.optimizer, real, len(batch))
    return {**out, **mutual_values(s.spec, values, virtual.student_own, own_t), "grad_norm": norm}


METHODS = {"plain": plain, "prune": prune, "kd": kd, "metasd": metasd}
