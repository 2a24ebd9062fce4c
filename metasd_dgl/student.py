"""The student as a strategy: how its weights come from the teacher's, and how its gradients go back.

The MetaSD student is the teacher's own weights ``W`` under a pruning mask
``M`` (True = kept, from ``pruning.compute_masks``).  Two strategies give the
same scores, losses and updates:

* ``MaskedStudent`` -- the student's tables are ``W * M`` (any mask, any
  encoder); the gradient of a pruned weight is exactly zero (the chain rule
  through the product, not a straight-through estimator).
* ``ColumnStudent`` -- whole-coordinate masks (``prune_structure =
  "dimension"``): the student's tables are the kept columns of ``W``,
  ``(N, k)`` instead of ``(N, w)``.  Pruned coordinates add exactly zero to
  every score function and regulariser, so the scores equal ``W * M``'s with a
  tenth of the product work; gradients land in ``W``'s kept columns.

Both are built once per mask set (the loop recomputes masks once per epoch)
and are the only place student weights are made: training steps, validation,
evaluation and export all call ``student.weights(params)``.  Two more
strategies change what the student learns: ``StraightThroughStudent``
(prune-only whose pruned weights keep their gradient) and ``OwnStudent`` (a
student with its own weights, initialised from the teacher's; its mask from
the teacher's magnitudes or, with ``own_mask``, from its own).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .typing import MaskDict, ParamDict


class MaskedStudent:
    """``S = W * M`` on every masked tensor; other weights are shared with the teacher."""

    leaves: ParamDict = {}  # tensors of the student's own (OwnStudent); none: it is the teacher's weights
    optimizer = None  # the optimiser of ``leaves``
    own_mask = False  # whether the next mask comes from the student's own magnitudes (OwnStudent)

    def __init__(self, masks: MaskDict, params: ParamDict) -> None:
        self.bool_masks = masks
        self.masks = {n: m.to(params[n].dtype) for n, m in masks.items()}  # 0/1 of the weights' dtype
        self.names: Tuple[str, ...] = tuple(masks)  # the weights the student owns (its masked tensors)

    def weights(self, params: ParamDict) -> ParamDict:
        """``{name: W * M}`` for masked names, ``W`` otherwise; differentiable in ``W``."""
        return {n: (p * self.masks[n] if n in self.masks else p) for n, p in params.items()}

    def restrict(self, name: str, grad: Tensor) -> Tensor:
        """A gradient with respect to the student's ``name`` kept inside the student (zero where pruned)."""
        return grad * self.masks[name] if name in self.masks else grad

    def to_teacher(self, name: str, grad: Tensor) -> Tensor:
        """A gradient with respect to the student's ``name`` as one with respect to ``W[name]``."""
        return self.restrict(name, grad)

    def without_kept(self, params: ParamDict) -> ParamDict:
        """``W * (1 - M) + stop_grad(W * M)``: the teacher whose loss cannot move the student's weights."""
        return {n: (p - p * self.masks[n] + (p * self.masks[n]).detach()) if n in self.masks else p
                for n, p in params.items()}

    def drop_kept(self, name: str, grad: Tensor) -> Tensor:
        """``grad * (1 - M)``: a teacher gradient with the student's weights left out."""
        return grad - grad * self.masks[name] if name in self.masks else grad


class ColumnStudent(MaskedStudent):
    """Whole-coordinate masks: the student's tables are ``W[:, kept]``, ``(rows, k)``."""

    def __init__(self, masks: MaskDict, params: ParamDict) -> None:
        super().__init__(masks, params)
        # The kept columns, in order (real parts, then imaginary parts).
        self.columns: Dict[str, Tensor] = {n: torch.nonzero(m[0]).flatten() for n, m in masks.items()}

    def weights(self, params: ParamDict) -> ParamDict:
        return {n: (p.index_select(1, self.columns[n]) if n in self.columns else p) for n, p in params.items()}

    def restrict(self, name: str, grad: Tensor) -> Tensor:
        return grad  # a narrow tensor holds kept columns only

    def to_teacher(self, name: str, grad: Tensor) -> Tensor:
        if name not in self.columns:
            return grad
        width = self.masks[name].shape[1]
        return grad.new_zeros(grad.shape[0], width).index_copy_(1, self.columns[name], grad)


class StraightThroughStudent(MaskedStudent):
    """``S = W * M`` in the forward pass, ``dS/dW = 1`` in the backward (straight-through).

    Pruned weights keep receiving the student's gradient, so they move and the
    next epoch's magnitude mask can bring them back: a dynamic-sparse prune-only
    baseline (``metasd.straight_through``; full width, any mask structure).
    """

    def weights(self, params: ParamDict) -> ParamDict:
        return {n: (p + (p * self.masks[n] - p).detach()) if n in self.masks else p for n, p in params.items()}

    def restrict(self, name: str, grad: Tensor) -> Tensor:
        return grad

    def to_teacher(self, name: str, grad: Tensor) -> Tensor:
        return grad


class OwnStudent:  # the MaskedStudent interface, with leaves and an optimiser of its own
    """A student with its own weights (``metasd.student = own``): a third strategy.

    Its prunable tensors are its own leaves (``leaves``, with their own
    optimiser), initialised from the teacher's kept weights when the mask is
    first computed; by default the mask still comes from the teacher every
    epoch (``remask``): kept weights keep their values, weights the new mask
    brings back start again from the teacher's, pruned ones are zeroed, and
    shared (non-prunable) weights, e.g. R-GCN biases, stay the teacher's.  The
    student's tables are built by the masked or column view of its own tensors,
    so its scores cost the same as the shared student's.  Its losses reach its
    own leaves (and the shared weights it reads); the teacher learns from its
    own losses (and, unless ``metasd.one_way_kd``, from the student's
    predictions).  ``grad_clip`` clips the student's and the teacher's
    gradients separately.

    ``own_mask`` (``metasd.mask_source = student``): the student is prune-only's
    masked model with a teacher to learn from.  It owns every weight it reads
    (the non-prunable ones too), starting from the teacher's whole tensors; a
    pruned weight keeps its value and gets no gradient (it moves only on an
    optimiser's momentum, as in prune-only), and the next mask comes from the
    student's own magnitudes (``magnitudes``), so a weight that regrows comes
    back with its own value, as in prune-only.
    """

    def __init__(self, masks: MaskDict, params: ParamDict, structure: str, optimizer_factory,
                 own_mask: bool = False) -> None:
        self.structure = structure
        self.own_mask = own_mask
        self.view = _view(masks, params, structure)
        self.names = self.view.names
        owned = [n for n, p in params.items() if p.requires_grad] if own_mask else self.names
        self.leaves: ParamDict = {n: (params[n].detach().clone() if own_mask
                                      else params[n].detach() * self.view.masks[n]).requires_grad_(True)
                                  for n in owned}
        self.optimizer = optimizer_factory(list(self.leaves.values()))

    @property
    def bool_masks(self) -> MaskDict:
        return self.view.bool_masks

    def remask(self, masks: MaskDict, params: ParamDict) -> None:
        """A new mask: regrown weights start from the teacher's, pruned ones are zeroed (with
        ``own_mask`` every weight keeps its own value)."""
        new = _view(masks, params, self.structure)
        if not self.own_mask:
            with torch.no_grad():
                for n in self.names:
                    w, old, keep = self.leaves[n], self.view.masks[n], new.masks[n]
                    w.copy_((w * old + params[n].detach() * (1 - old)) * keep)
        self.view = new

    def magnitudes(self) -> ParamDict:
        """``{name: tensor}`` of the prunable weights the next mask is computed from, with ``own_mask``."""
        return {n: self.leaves[n].detach() for n in self.names}

    def weights(self, params: ParamDict) -> ParamDict:
        """The student's tables: its own tensors under the mask, the teacher's shared weights."""
        return self.view.weights({**params, **self.leaves})

    def restrict(self, name: str, grad: Tensor) -> Tensor:
        return self.view.restrict(name, grad)

    def state_dict(self) -> dict:
        return {"weights": {n: w.detach().clone() for n, w in self.leaves.items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for n, w in self.leaves.items():
                w.copy_(state["weights"][n])
        self.optimizer.load_state_dict(state["optimizer"])


def _view(masks: MaskDict, params: ParamDict, structure: str) -> MaskedStudent:
    return (ColumnStudent if structure == "dimension" else MaskedStudent)(masks, params)


Student = MaskedStudent  # the interface every strategy implements (OwnStudent adds leaves and an optimiser)


def make_student(masks: Optional[MaskDict], params: ParamDict, structure: str = "element",
                 straight_through: bool = False) -> Optional[Student]:
    """The student for ``masks`` (``None`` without masks): columns for whole-coordinate masks,
    straight-through gradients with ``straight_through``."""
    if not masks:
        return None
    if structure not in ("element", "dimension"):
        raise ValueError(f"prune structure must be element or dimension, got {structure!r}")
    if straight_through:
        return StraightThroughStudent(masks, params)
    return _view(masks, params, structure)
