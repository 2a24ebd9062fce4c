"""MetaSD's meta step (METHOD.md steps 1-2) and its shared-forward variant, mixed into ``Stepper``.

* Virtual student: ``S' = W*M - virtual_lr * M * grad_{W*M}[CE(S) + reg(S) +
  KD(T -> S)]`` on the batch, built with ``create_graph``.  Only the prunable
  tensors move (``S'`` stays inside the mask); non-prunable weights (e.g.
  R-GCN biases) keep the teacher's values.
* Meta gradient ``d CE(S' on quiz) / dW`` (option ``metasd.meta_grad_path``):
  ``"full"`` (default) differentiates ``S'`` through the teacher's predictions
  in the KD term *and* through ``W * M``; ``"kd"`` only through the teacher's
  predictions -- the reference code's behaviour (its ``deepcopy`` of the
  weights cuts the other path) and cheaper: no ``dG/dS`` and no second pass
  back to ``W * M`` (17 instead of 21 score-sized matrix products per step).
* The quiz loss is plain cross-entropy (no smoothing, no regulariser), as in
  the reference code; the meta optimiser steps on it with its own state.
* ``metasd.share_forward`` (default False): the real step's gradients are
  taken at the pre-meta weights so that one forward pass of S and T serves
  steps 1-3 (an approximation of METHOD.md's order, see ``_meta_shared``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..distributed import average_gradients
from ..config import MetaSDConfig, TrainConfig
from ..typing import TAIL, MaskDict, ParamDict
from .fused import KDSpec, ce_grad, mutual_grads, virtual_grad


class MetaSteps:
    """Mixin: needs ``Stepper``'s weights, configs, optimisers, ``forward`` and ``_reg``."""

    params: ParamDict
    spec: KDSpec
    train_cfg: TrainConfig
    metasd_cfg: MetaSDConfig
    optimizer: torch.optim.Optimizer
    meta_optimizer: Optional[torch.optim.Optimizer]
    meta_grad_path: str
    student_owns_kept: bool
    narrow_student: bool

    # Provided by Stepper (declared here for readers and type checkers).
    def float_masks(self, masks: MaskDict) -> MaskDict:
        raise NotImplementedError

    def student_weights(self, masks: MaskDict) -> ParamDict:
        raise NotImplementedError

    def widen(self, name: str, grad: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, weights: Optional[ParamDict], queries: Tensor, graph=None) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        raise NotImplementedError

    def _reg(self, rows: Tuple[Tensor, ...]) -> Tensor:
        raise NotImplementedError

    def _mutual_values(self, v: Dict[str, Tensor], reg: Tensor) -> Dict[str, float]:
        raise NotImplementedError

    def meta_gradient(
        self, batch: Tensor, masks: MaskDict, quiz: Tensor, graph=None
    ) -> Tuple[Dict[str, Optional[Tensor]], Tensor]:
        """METHOD.md steps 1-2 without the update: ``d CE(S'(W) on quiz) / dW``.

        Returns ``({name: gradient or None where none reaches}, quiz loss scalar)``.
        ``S' = W*M - virtual_lr * M * grad[CE(S) + reg(S) + KD(T -> S)]`` on
        ``batch``, built with ``create_graph`` (see ``meta_grad_path``).
        """
        meta, quiz_loss, _ = self._virtual(batch, masks, quiz, graph, share=False)
        return meta, quiz_loss

    def _virtual(self, batch: Tensor, masks: MaskDict, quiz: Tensor, graph, share: bool):
        """Steps 1-2; with ``share`` also the pieces of the real step at the same weights."""
        masks = self.float_masks(masks)
        full = self.meta_grad_path == "full"
        W = self.params
        student = self.student_weights(masks)  # W * M, or W's kept columns (whole-coordinate masks)
        if not full:  # S' depends on W only through the teacher's predictions
            student = {n: w.detach().requires_grad_(share or n in masks) for n, w in student.items()}
        wrt = [n for n, w in student.items() if w.requires_grad and (share or n in masks)]
        s_scores, s_rows = self.forward(student, batch, graph)
        t_scores, t_rows = self.forward(None, batch, graph)
        g = virtual_grad(s_scores if full else s_scores.detach(), t_scores, batch[:, TAIL], self.spec)
        reg = self._reg(s_rows)
        outputs, cotangents = [s_scores], [g]
        if reg.requires_grad:
            outputs.append(reg)
            cotangents.append(torch.ones_like(reg))
        grads = dict(zip(wrt, torch.autograd.grad(
            outputs, [student[n] for n in wrt], cotangents, create_graph=True, allow_unused=True)))
        lr = self.metasd_cfg.virtual_lr
        virtual = dict(student)
        for n in masks:
            if grads.get(n) is not None:
                step = grads[n] if self.narrow_student else grads[n] * masks[n]
                virtual[n] = student[n] - lr * step
        q_scores, _ = self.forward(virtual, quiz, graph)
        gq, quiz_loss = ce_grad(q_scores.detach(), quiz[:, TAIL])
        leaves = [n for n, p in W.items() if p.requires_grad]
        meta = torch.autograd.grad([q_scores], [W[n] for n in leaves], [gq], allow_unused=True, retain_graph=share)
        meta_grads = {n: (None if gr is None else gr.detach()) for n, gr in zip(leaves, meta)}
        if not share:
            return meta_grads, quiz_loss, None
        # The student's real-step gradient is the virtual step's: d/dW (W*M) = M.
        s_grads = {n: self.widen(n, gr.detach()) for n, gr in grads.items() if gr is not None}
        return meta_grads, quiz_loss, (s_scores.detach(), t_scores, t_rows, reg.detach(), s_grads)

    def _set_grads_and_step(self, opt: torch.optim.Optimizer, grads: Dict[str, Optional[Tensor]]) -> float:
        """``p.grad = grads[name]``, clip, ``opt.step()``, clear; returns the gradient norm."""
        for n, gr in grads.items():
            self.params[n].grad = gr
        leaves = [self.params[n] for n in grads]
        average_gradients(leaves)  # no-op unless running under torchrun
        sq = sum(float(p.grad.double().pow(2).sum()) for p in leaves if p.grad is not None)
        if self.train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(leaves, self.train_cfg.grad_clip)
        opt.step()
        for p in leaves:
            p.grad = None
        return sq**0.5

    def _meta(self, batch: Tensor, masks: MaskDict, quiz: Tensor, graph) -> Dict[str, float]:
        """Meta-optimiser step on ``meta_gradient``; the main optimiser's state is untouched."""
        grads, quiz_loss = self.meta_gradient(batch, masks, quiz, graph)
        assert self.meta_optimizer is not None
        norm = self._set_grads_and_step(self.meta_optimizer, grads)
        return {"meta_quiz_loss": float(quiz_loss), "meta_grad_norm": norm}

    def _meta_shared(self, batch: Tensor, masks: MaskDict, quiz: Tensor, graph) -> Dict[str, float]:
        """``share_forward``: steps 1-3 from one forward pass of S and T (an approximation).

        The real step's gradients are taken at the weights *before* the meta
        update, so that the virtual step's scores, softmaxes and student
        gradient serve both; then the meta update and the real update are
        applied in that order.  Not METHOD.md's exact order (there the real
        step sees the meta-updated teacher); saves two score products, two
        backward products and a softmax pass per batch.
        """
        meta, quiz_loss, (s_det, t_scores, t_rows, reg_s, s_grads) = self._virtual(batch, masks, quiz, graph, True)
        _, gt, v = mutual_grads(s_det, t_scores.detach(), batch[:, TAIL], self.spec)
        reg_t = self._reg(t_rows)
        outputs, cotangents = [t_scores], [gt]
        if reg_t.requires_grad:
            outputs.append(reg_t)
            cotangents.append(torch.ones_like(reg_t))
        names = [n for n, p in self.params.items() if p.requires_grad]
        t_grads = torch.autograd.grad(outputs, [self.params[n] for n in names], cotangents, allow_unused=True)
        real: Dict[str, Optional[Tensor]] = {}
        fm = self.float_masks(masks)
        for n, gr in zip(names, t_grads):
            if gr is not None and self.student_owns_kept and n in fm:
                gr = gr - gr * fm[n]  # the teacher's loss skips the student's weights
            parts = [x for x in (gr, s_grads.get(n)) if x is not None]
            real[n] = None if not parts else (parts[0] if len(parts) == 1 else parts[0] + parts[1])
        assert self.meta_optimizer is not None
        norm = self._set_grads_and_step(self.meta_optimizer, meta)
        self._set_grads_and_step(self.optimizer, real)
        out = self._mutual_values(v, reg_s + reg_t.detach())
        return {"meta_quiz_loss": float(quiz_loss), "meta_grad_norm": norm, **out}
