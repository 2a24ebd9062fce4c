"""One training step per batch for ``--method plain | prune | kd | metasd``.

The epoch loop owns batching, the quiz split, mask recomputation (once per
epoch, ``pruning.compute_masks(pruning.prunable_params(model), ...)``) and
logging; it calls ``Stepper.step`` once per batch.  Every forward pass is
functional (``torch.func.functional_call`` on ``model.encoder`` with a dict of
weights, the DGL graph passed through), so the same code drives the lookup
encoder and the R-GCN encoder: the student is the encoder evaluated on
``apply_masks(weights, masks)``, the virtual student on weights that are a
differentiable function of the teacher's.

Methods (1-N regime; batches are reciprocal tail queries ``(h, r, t)``):

* ``plain``  -- CE(T) + reg(T); optimiser step.
* ``prune``  -- CE(S) + reg(S) with ``S = W * M``; the gradient reaches the
  dense ``W`` through the product, so pruned weights get exactly zero
  gradient (chain rule, as in the reference code; no straight-through).
* ``kd``     -- METHOD.md step 3 only: teacher loss ``CE(T) + reg(T) +
  KD(S -> T)`` (S detached) plus student loss ``CE(S) + reg(S) + KD(T -> S)``
  (T detached), one optimiser step on the sum.  ``KD(A -> B) = s * [fw *
  KL(p_A || p_B) + rw * KL(p_B || p_A)]`` for either direction (source A,
  learner B); the reference code weights its real-step teacher term the
  other way round (``3 KL(T || S) + KL(S || T)`` for the teacher).
* ``metasd`` -- steps 1-3: (1) virtual student ``S' = W*M - lr_v * M *
  grad_{W*M}[CE(S) + reg(S) + KD(T -> S)]`` with ``create_graph``; (2) quiz
  loss ``CE(S' on Q)`` back-propagated to ``W``, meta-optimiser step; (3) the
  ``kd`` step.  ``do_meta=False`` skips (1)-(2) (``meta_every``).  With
  ``extra_teacher_step`` a plain teacher step runs first (also for ``kd``, so
  that the ablation differs from ``metasd`` by the meta step only).
  ``student_owns_kept`` (kd, metasd): in the real step the teacher's loss
  skips the weights the student keeps; they learn from the student's losses
  only (off = METHOD.md: one step on the sum, both losses reach them).

Design decisions
* Losses are applied as closed-form score gradients (``fused.py``): one
  softmax per score matrix and temperature, the second-order terms of the
  virtual step as an exact Hessian-vector product.
* The meta step (virtual student, quiz loss, options ``meta_grad_path`` and
  ``share_forward``) lives in ``meta.py``.
* With whole-coordinate masks (``metasd.prune_structure = "dimension"``) the
  student is computed on the kept columns only (``student_weights``): the
  same scores as ``W * M`` (pruned coordinates add exactly zero to every
  score function and regulariser), a tenth of the matrix-product work, and
  the gradients still land in the kept columns of ``W``.
* Options that ``config.py`` does not declare yet are read with defaults:
  ``metasd.meta_grad_path`` ("full"), ``metasd.share_forward`` (False),
  ``metasd.kd_t2_scale`` (True), ``train.tune_malloc`` (True).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..config import MetaSDConfig, TrainConfig
from ..distributed import average_gradients
from ..pruning import apply_masks
from ..typing import HEAD, REL, TAIL, MaskDict, ParamDict
from .fused import KDSpec, ce_grad, mutual_grads, tune_malloc
from .losses import negative_sampling_loss, regularizer
from .meta import MetaSteps

METHODS = ("plain", "prune", "kd", "metasd")
META_GRAD_PATHS = ("full", "kd")


def _option(cfg: object, name: str, default):
    """An option the config may not declare yet (see the module docstring)."""
    return getattr(cfg, name, default)


def make_optimizers(
    model: nn.Module, train_cfg: TrainConfig, metasd_cfg: MetaSDConfig
) -> Tuple[torch.optim.Optimizer, Optional[torch.optim.Optimizer]]:
    """Main optimiser over all weights and, for ``metasd``, the meta optimiser over the same weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "adagrad":
        opt: torch.optim.Optimizer = torch.optim.Adagrad(params, lr=train_cfg.lr)
    elif train_cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=train_cfg.lr)
    else:
        raise ValueError(f"unknown optimizer {train_cfg.optimizer!r}")
    if train_cfg.method != "metasd":
        return opt, None
    kind, lr = metasd_cfg.meta_optimizer, metasd_cfg.meta_lr
    meta = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}[kind](params, lr=lr)
    return opt, meta


class Stepper(MetaSteps):
    """Runs one batch of the configured method and returns its losses as floats.

    model: a ``LinkPredictor`` (``model.encoder(graph) -> (entities (N, w_e),
        relations (2R, w_r))``, ``model.decoder``, ``model.prunable_names()``).
    optimizer: over all of ``model.parameters()`` (Adagrad, lr 0.1 by default).
    meta_optimizer: over the same parameters; required for ``metasd``.
    num_relations: the dataset's R (the relation table has 2R rows).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta_optimizer: Optional[torch.optim.Optimizer],
        train_cfg: TrainConfig,
        metasd_cfg: MetaSDConfig,
        num_relations: int,
    ) -> None:
        self.model, self.optimizer, self.meta_optimizer = model, optimizer, meta_optimizer
        self.train_cfg, self.metasd_cfg, self.num_relations = train_cfg, metasd_cfg, num_relations
        self.method = train_cfg.method
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}")
        if self.method == "metasd" and meta_optimizer is None:
            raise ValueError("method 'metasd' needs a meta optimizer")
        self.meta_grad_path = _option(metasd_cfg, "meta_grad_path", "full")
        if self.meta_grad_path not in META_GRAD_PATHS:
            raise ValueError(f"meta_grad_path must be one of {META_GRAD_PATHS}, got {self.meta_grad_path!r}")
        self.share_forward = bool(_option(metasd_cfg, "share_forward", False))
        self.student_owns_kept = bool(_option(metasd_cfg, "student_owns_kept", False))
        self.decoder = model.decoder
        self.params: ParamDict = dict(model.named_parameters())
        self.prunable: List[str] = list(model.prunable_names())
        self.spec = KDSpec(
            temperature=metasd_cfg.temperature,
            forward_weight=metasd_cfg.kd_forward_weight,
            reverse_weight=metasd_cfg.kd_reverse_weight,
            kd_weight=metasd_cfg.kd_weight,
            t2_scale=_option(metasd_cfg, "kd_t2_scale", True),
            label_smoothing=train_cfg.label_smoothing,
        )
        self.reg_kind = train_cfg.regularizer if self.decoder.kind == "bilinear" else "none"
        self._mask_source: Optional[MaskDict] = None
        self._mask_versions: Tuple[int, ...] = ()
        self._float_masks: MaskDict = {}
        self._columns: Dict[str, Tensor] = {}
        self.narrow_student = _option(metasd_cfg, "prune_structure", "element") == "dimension"
        if _option(train_cfg, "tune_malloc", True):
            tune_malloc()

    def float_masks(self, masks: MaskDict) -> MaskDict:
        """``masks`` as 0/1 tensors of the weights' dtype, converted once per mask set.

        Multiplying by a bool mask converts it on every call; the loop hands
        the same dict to every batch of an epoch, so the conversion is cached
        (keyed by the dict itself, which the cache keeps alive, and the
        tensors' version counters, so in-place edits are seen).
        """
        if masks is self._float_masks:
            return masks
        versions = tuple(m._version for m in masks.values())
        if masks is not self._mask_source or versions != self._mask_versions:
            self._float_masks = {
                n: m.to(self.params[n].dtype) if n in self.params else m for n, m in masks.items()
            }
            if self.narrow_student:  # whole columns: the kept ones, in order (real parts, then imaginary)
                self._columns = {n: torch.nonzero(m[0]).flatten() for n, m in masks.items()}
            self._mask_source, self._mask_versions = masks, versions
        return self._float_masks

    def student_weights(self, masks: MaskDict) -> ParamDict:
        """The student's weights: ``W * M``, or the kept columns of ``W`` with whole-coordinate masks.

        Narrow tables (``(N, k)`` for ``k`` kept columns) give the same scores
        and regulariser values as the masked full tables; gradients reach
        ``W``'s kept columns through ``index_select``.
        """
        fm = self.float_masks(masks)
        if not self.narrow_student:
            return apply_masks(self.params, fm)
        return {n: (p.index_select(1, self._columns[n]) if n in self._columns else p)
                for n, p in self.params.items()}

    def widen(self, name: str, grad: Tensor) -> Tensor:
        """A gradient with respect to the student's ``name`` as a gradient with respect to ``W[name]``."""
        if not self.narrow_student or name not in self._columns:
            fm = self._float_masks
            return grad * fm[name] if name in fm else grad
        return torch.zeros_like(self.params[name]).index_copy_(1, self._columns[name], grad)

    # ------------------------------------------------------------------ forward
    def encode(self, weights: Optional[ParamDict], graph=None) -> Tuple[Tensor, Tensor]:
        """``model.encoder(graph)`` on ``weights`` (``None``: the module's own) -> (N, w_e), (2R, w_r)."""
        return self.model.encode(graph, weights)

    def forward(self, weights: Optional[ParamDict], queries: Tensor, graph=None) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        """Scores ``(b, N)`` of every tail and the batch rows ``(h, r, t)`` (each ``(b, w)``).

        weights: ``{name: tensor}`` overriding the module's (``None``: the module's own).
        queries: ``(b, 3)`` (head, relation, tail); the tail feeds the regulariser only.
        """
        ent, rel = self.encode(weights, graph)
        h, r, t = ent[queries[:, HEAD]], rel[queries[:, REL]], ent[queries[:, TAIL]]
        return self.decoder.score_all(h, r, ent), (h, r, t)

    def _reg(self, rows: Tuple[Tensor, ...]) -> Tensor:
        return regularizer(self.reg_kind, *rows, self.train_cfg.reg_weight, self.decoder.name)

    def _apply(self, opt: torch.optim.Optimizer, outputs: List[Tensor], cotangents: List[Tensor]) -> None:
        """Back-propagate ``cotangents`` from ``outputs``, clip, step ``opt``."""
        pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward([o for o, _ in pairs], [c for _, c in pairs])
        average_gradients(self.params.values())  # no-op unless running under torchrun
        if self.train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params.values(), self.train_cfg.grad_clip)
        opt.step()

    # -------------------------------------------------------------------- steps
    def step(
        self,
        batch: Tensor,
        masks: Optional[MaskDict] = None,
        quiz: Optional[Tensor] = None,
        graph=None,
        do_meta: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, float]:
        """One step. batch: ``(b, 3)`` tail queries; quiz: ``(q, 3)`` (metasd with do_meta).

        masks: ``{name: bool tensor}`` from ``compute_masks`` (prune, kd, metasd).
        generator: draws the negatives of the negative-sampling regime
        (``step_negative``); the 1-N regime uses no randomness.
        Returns floats: ``loss`` (what the optimiser minimised), ``ce_teacher``
        and/or ``ce_student``, ``reg``, and for kd/metasd ``kd_student``,
        ``kd_teacher``, ``kl_teacher_student``, ``kl_student_teacher``; with a
        meta step ``meta_quiz_loss`` and ``meta_grad_norm``; with the extra
        teacher step ``extra_teacher_loss``.
        """
        if self.method != "plain" and masks is None:
            raise ValueError(f"method {self.method!r} needs masks")
        masks = None if masks is None else self.float_masks(masks)
        if self.train_cfg.regime == "negative-sampling":
            return self.step_negative(batch, None, masks, graph, generator)
        if self.method == "plain":
            return self._single(batch, None, graph, "ce_teacher")
        if self.method == "prune":
            return self._single(batch, masks, graph, "ce_student")
        out: Dict[str, float] = {}
        if self.metasd_cfg.extra_teacher_step:
            out["extra_teacher_loss"] = self._single(batch, None, graph, "ce_teacher")["loss"]
        if self.method == "metasd" and do_meta:
            if quiz is None:
                raise ValueError("the meta step needs a quiz batch")
            if self.share_forward:
                return {**out, **self._meta_shared(batch, masks, quiz, graph)}
            out.update(self._meta(batch, masks, quiz, graph))
        out.update(self._mutual(batch, masks, graph))
        return out

    def _single(self, batch: Tensor, masks: Optional[MaskDict], graph, name: str) -> Dict[str, float]:
        """plain (masks None) or prune: CE + reg of one model; optimiser step."""
        weights = None if masks is None else self.student_weights(masks)
        scores, rows = self.forward(weights, batch, graph)
        g, ce = ce_grad(scores.detach(), batch[:, TAIL], self.train_cfg.label_smoothing)
        reg = self._reg(rows)
        self._apply(self.optimizer, [scores, reg], [g, torch.ones_like(reg)])
        return {"loss": float(ce + reg.detach()), name: float(ce), "reg": float(reg.detach())}

    def _mutual(self, batch: Tensor, masks: MaskDict, graph) -> Dict[str, float]:
        """METHOD.md step 3: teacher and student learn from the data and from each other."""
        s_scores, s_rows = self.forward(self.student_weights(masks), batch, graph)
        t_scores, t_rows = self.forward(self.teacher_weights(masks), batch, graph)
        gs, gt, v = mutual_grads(s_scores.detach(), t_scores.detach(), batch[:, TAIL], self.spec)
        reg = self._reg(s_rows) + self._reg(t_rows)
        self._apply(self.optimizer, [s_scores, t_scores, reg], [gs, gt, torch.ones_like(reg)])
        return self._mutual_values(v, reg.detach())

    def teacher_weights(self, masks: MaskDict) -> Optional[ParamDict]:
        """The teacher's weights for the real step: its own (``None``), or with
        ``student_owns_kept`` the kept weights detached, ``W * (1 - M) + stop_grad(W * M)``,
        so that the teacher's loss moves only the weights the student does not keep."""
        if not self.student_owns_kept:
            return None
        fm = self.float_masks(masks)
        return {n: (p - p * fm[n] + (p * fm[n]).detach()) if n in fm else p for n, p in self.params.items()}

    def _mutual_values(self, v: Dict[str, Tensor], reg: Tensor) -> Dict[str, float]:
        fw, rw, s = self.spec.forward_weight, self.spec.reverse_weight, self.spec.scale
        kd_s = s * (fw * v["kl_teacher_student"] + rw * v["kl_student_teacher"])
        kd_t = s * (fw * v["kl_student_teacher"] + rw * v["kl_teacher_student"])
        loss = v["ce_student"] + v["ce_teacher"] + kd_s + kd_t + reg
        out = {"loss": loss, "reg": reg, "kd_student": kd_s, "kd_teacher": kd_t, **v}
        return {k: float(x) for k, x in out.items()}

    # ------------------------------------------------------- negative sampling
    def step_negative(
        self,
        positives: Tensor,
        negatives: Optional[Tensor] = None,
        masks: Optional[MaskDict] = None,
        graph=None,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, float]:
        """Negative-sampling regime (plain or prune): ``positives (b, 3)``, ``negatives (b, k)`` tail ids.

        ``negatives=None`` draws ``train.num_negatives`` tails per positive
        uniformly over the encoder's entity rows from ``generator`` (the
        distribution of DGL's ``Uniform`` sampler, which keeps the head).
        Loss ``negative_sampling_loss(pos, neg, margin, decoder.kind) + reg``;
        the model is the student ``W * M`` when ``masks`` is given.
        """
        if self.method not in ("plain", "prune"):
            raise ValueError(f"the negative-sampling regime supports plain and prune, not {self.method!r}")
        if self.method == "prune" and masks is None:
            raise ValueError("method 'prune' needs masks")
        ent, rel = self.encode(None if masks is None else self.student_weights(masks), graph)
        if negatives is None:
            if generator is None:
                raise ValueError("the negative-sampling regime needs negatives or a generator")
            k = self.train_cfg.num_negatives
            negatives = torch.randint(0, ent.shape[0], (positives.shape[0], k), generator=generator)
            negatives = negatives.to(positives.device)
        h, r, t = ent[positives[:, HEAD]], rel[positives[:, REL]], ent[positives[:, TAIL]]
        pos = self.decoder.score(h, r, t)
        neg = self.decoder.score(h.unsqueeze(1), r.unsqueeze(1), ent[negatives])
        loss = negative_sampling_loss(pos, neg, self.train_cfg.margin, self.decoder.kind)
        reg = self._reg((h, r, t))
        total = loss + reg
        self._apply(self.optimizer, [total], [torch.ones_like(total)])
        return {"loss": float(total.detach()), "ns_loss": float(loss.detach()), "reg": float(reg.detach())}
