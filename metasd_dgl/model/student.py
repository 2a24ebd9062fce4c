"""The student: how its weights come from the teacher's (or its own), and where its gradients go.

The MetaSD student is the teacher's own weights ``W`` under a pruning mask
``M`` (True = kept, from ``pruning.make_masks``).  ``make_student`` picks one
of four strategies from the run's options; all give the student's tables by
``weights(params)`` and keep a gradient inside the student by ``restrict``:

* ``MaskedStudent`` -- the student's tables are ``W * M`` (any mask, any
  encoder); the gradient of a pruned weight is exactly zero (the chain rule
  through the product).
* ``ColumnStudent`` -- whole-coordinate masks (``prune.structure =
  dimension``): the student's tables are the kept columns of ``W``,
  ``(N, k)`` instead of ``(N, w)``.  Pruned coordinates add exactly zero to
  every score function and regulariser, so the scores equal ``W * M``'s with a
  tenth of the product work; gradients land in ``W``'s kept columns.
* ``RegrowingStudent`` (method ``prune``, element masks) -- ``W * M`` in the
  forward pass, and every weight of ``W`` gets the gradient of its masked
  value (straight-through): pruned weights keep training, so the next
  magnitude mask can bring them back.  With the prune schedule this is
  gradual magnitude pruning of one dense model (Zhu and Gupta 2017), the
  field's standard baseline.  (Whole-coordinate masks need no such view: a
  pruned coordinate's gradient is exactly zero in every score and
  regulariser, so ``ColumnStudent`` already takes the same step.)
* ``OwnStudent`` (``metasd.student = own``) -- a student with weights of its
  own (``leaves``), initialised from the teacher's kept weights; the training
  method steps them with an optimiser of their own.  Its mask still comes
  from the teacher.

The loop recomputes the mask once per epoch and calls ``remask``.
``checkpoint_student`` rebuilds the true student's full-width tensors from a
checkpoint (or a live student): evaluation, export, the API and the CLI tools
all read the student through it.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from metasd_dgl.model.pruning import STRUCTURES
from metasd_dgl.typing import MaskDict, ParamDict


class MaskedStudent:
    """``S = W * M`` on every masked tensor; other weights are shared with the teacher."""

    leaves: ParamDict = {}  # the student's own tensors: none, it reads the teacher's

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

    def remask(self, masks: MaskDict, params: ParamDict) -> "MaskedStudent":
        """The student of a new mask (a view of the teacher: nothing to carry over)."""
        return type(self)(masks, params)


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


class RegrowingStudent(MaskedStudent):
    """``S = W * M`` forward, ``dS/dW = 1`` backward: pruned weights train on, the mask can move."""

    def weights(self, params: ParamDict) -> ParamDict:
        return {n: (p + (p * self.masks[n] - p).detach() if n in self.masks else p) for n, p in params.items()}

    def restrict(self, name: str, grad: Tensor) -> Tensor:
        return grad


def _view(masks: MaskDict, params: ParamDict, structure: str) -> MaskedStudent:
    return (ColumnStudent if structure == "dimension" else MaskedStudent)(masks, params)


class OwnStudent:
    """A student with its own weights (``metasd.student = own``).

    Its prunable tensors are its own leaves, initialised from the teacher's
    kept weights when the mask is first computed, stepped by an optimiser of their own
    (the training method's ``student_optimizer``).
    The mask still comes from the teacher every epoch (``remask``): kept
    weights keep their values, weights the new mask brings back start again
    from the teacher's, pruned ones are zeroed; shared (non-prunable) weights,
    e.g. R-GCN biases, stay the teacher's.  Its tables are the masked or column
    view of its own tensors, so its scores cost the same as the shared
    student's.  ``train.grad_clip`` clips its gradients and the teacher's separately.
    """

    def __init__(self, masks: MaskDict, params: ParamDict, structure: str) -> None:
        self.structure = structure
        self.view = _view(masks, params, structure)
        self.names = self.view.names
        self.leaves: ParamDict = {n: (params[n].detach() * self.view.masks[n]).requires_grad_(True)
                                  for n in self.names}

    @property
    def bool_masks(self) -> MaskDict:
        return self.view.bool_masks

    def weights(self, params: ParamDict) -> ParamDict:
        """The student's tables: its own tensors under the mask, the teacher's shared weights."""
        return self.view.weights({**params, **self.leaves})

    def restrict(self, name: str, grad: Tensor) -> Tensor:
        return self.view.restrict(name, grad)

    def remask(self, masks: MaskDict, params: ParamDict) -> "OwnStudent":
        """A new mask: regrown weights start from the teacher's, pruned ones are zeroed."""
        new = _view(masks, params, self.structure)
        with torch.no_grad():
            for n in self.names:
                w, old, keep = self.leaves[n], self.view.masks[n], new.masks[n]
                w.copy_((w * old + params[n].detach() * (1 - old)) * keep)
        self.view = new
        return self


Student = MaskedStudent  # the interface every strategy implements


def make_student(masks: MaskDict, params: ParamDict, structure: str = "element",
                 own: bool = False, regrow: bool = False) -> MaskedStudent:
    """The student of ``masks``: its own weights with ``own`` (``metasd.student = own``), else a
    view of ``params``: kept columns for whole-coordinate masks (``structure = "dimension"``),
    ``W * M`` otherwise, whose pruned weights keep their gradients with ``regrow`` (method
    ``prune``: gradual magnitude pruning)."""
    if structure not in STRUCTURES:
        raise ValueError(f"prune structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
    if own:
        return OwnStudent(masks, params, structure)  # type: ignore[return-value]
    if regrow and structure == "element":
        return RegrowingStudent(masks, params)
    return _view(masks, params, structure)


@torch.no_grad()
def checkpoint_student(params: ParamDict, masks: Optional[MaskDict],
                       student_weights: Optional[ParamDict] = None) -> Optional[ParamDict]:
    """The true student's full-width tensors, ``{name: W * M}`` (``W``: the student's weights where it
    has its own, a checkpoint's ``student_weights``); ``None`` without masks."""
    if not masks:
        return None
    merged = {**params, **(student_weights or {})}
    return MaskedStudent(masks, merged).weights(merged)
