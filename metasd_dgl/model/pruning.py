"""Magnitude-pruning masks: the MetaSD student is the teacher's weights times a mask.

* ``compute_masks`` keeps *exactly* ``round((1 - rate) * numel)`` weights of
  the largest magnitude, either over all tensors together (``"global"``, the
  paper's default) or tensor by tensor (``"per-tensor"``).  Ties in magnitude
  are broken deterministically: among equal ``|w|`` the weight with the lower
  flat index wins, where the flat index runs over the tensors in the order of
  the ``params`` dict (``model.named_parameters()`` order) and row-major
  inside each tensor.  ``round`` is Python's (half to even), applied to the
  float ``(1 - rate) * numel``.
* ``prune.structure = "dimension"`` (pass ``coordinates``, from
  ``dimension_coordinates``): whole embedding coordinates are kept or pruned,
  the same ones in every table (ComplEx/RotatE: a complex coordinate's real
  and imaginary columns together).  Importance of a coordinate = the sum of
  its squared weights over all tables; the kept count is
  ``round((1 - rate) * dim)`` coordinates.  Why: the trilinear and distance
  scores only combine a coordinate where head, relation and tail all have it,
  so scattered (element-wise) survivors rarely meet at 10 % density; aligned
  survivors make the student an exact dense model of the smaller dimension.
* The student built from the masks is ``student.py``'s (``W * M``, or the
  kept columns of whole-coordinate masks).
* ``sparsity_report`` counts kept weights per tensor and in total.

Masks are recomputed from the teacher's current weights at the start of every
epoch by the training loop (pruned weights may come back); nothing here keeps
state between calls.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from metasd_dgl.typing import MaskDict, ParamDict

SCOPES = ("global", "per-tensor")
STRUCTURES = ("element", "dimension")


def make_masks(model: nn.Module, rate: float, scope: str = "global", structure: str = "element",
               dim: int = 0) -> MaskDict:
    """The masks of ``model``'s prunable weights at ``rate``: the one place a mask set is built.

    structure: ``"element"`` (single weights) or ``"dimension"`` (whole embedding coordinates,
    ``dim`` = ``model.dim``); scope as ``compute_masks``.
    """
    if structure not in STRUCTURES:
        raise ValueError(f"prune structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
    prunable = prunable_params(model)
    coords = dimension_coordinates(prunable, dim) if structure == "dimension" else None
    return compute_masks(prunable, rate, scope, coords)


def prunable_params(model: nn.Module) -> ParamDict:
    """``{name: detached weight}`` for ``model.prunable_names()``, in module order."""
    names = set(model.prunable_names())
    return {n: p.detach() for n, p in model.named_parameters() if n in names}


def keep_count(numel: int, rate: float) -> int:
    """Number of weights kept out of ``numel`` at prune rate ``rate``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"prune rate must be in [0, 1], got {rate}")
    return min(numel, max(0, int(round((1.0 - rate) * numel))))


def scheduled_rate(final_rate: float, epoch: int, gradual_epochs: int) -> float:
    """The prune rate of (0-based) ``epoch``: Zhu and Gupta (2017)'s cubic schedule.

    ``final_rate * (1 - (1 - epoch / gradual_epochs) ** 3)``: 0 at epoch 0, rising
    fast, then slowly, to ``final_rate`` at epoch ``gradual_epochs`` and after;
    ``gradual_epochs = 0`` prunes at the final rate from the start.
    """
    if gradual_epochs <= 0 or epoch >= gradual_epochs:
        return final_rate
    return final_rate * (1.0 - (1.0 - epoch / gradual_epochs) ** 3)


def _top_k_mask(magnitudes: Tensor, k: int) -> Tensor:
    """Bool mask over the 1-D ``magnitudes`` keeping exactly ``k`` largest.

    Ties at the threshold go to the lowest indices.  O(n): one ``kthvalue``
    and two comparisons instead of a full sort.
    """
    n = magnitudes.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=magnitudes.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=magnitudes.device)
    if torch.isnan(magnitudes).any():
        raise ValueError("cannot prune: a weight is NaN")
    # The k-th largest is the (n - k + 1)-th smallest.
    threshold = torch.kthvalue(magnitudes, n - k + 1).values
    keep = magnitudes > threshold
    missing = k - int(keep.sum())
    if missing > 0:
        tied = torch.nonzero(magnitudes == threshold).flatten()[:missing]
        keep[tied] = True
    return keep


def dimension_coordinates(params: ParamDict, dim: int) -> Dict[str, Tensor]:
    """``{name: (width,) long}``: the embedding coordinate of every column (``column % dim``).

    Every tensor must be a 2-D table whose width is a multiple of ``dim``
    (lookup tables of any decoder: width ``dim`` or ``2 * dim`` with the real
    parts first).  Raises ``ValueError`` otherwise (e.g. R-GCN weights).
    """
    out: Dict[str, Tensor] = {}
    for n, p in params.items():
        if p.dim() != 2 or p.shape[1] % dim:
            raise ValueError(f"prune structure 'dimension' needs embedding tables of width k * {dim}; "
                             f"{n} has shape {tuple(p.shape)} (use the kge encoder or prune.structure=element)")
        out[n] = torch.arange(p.shape[1], device=p.device) % dim
    return out


def _dimension_masks(params: ParamDict, rate: float, coordinates: Dict[str, Tensor]) -> MaskDict:
    dim = int(max(int(c.max()) for c in coordinates.values())) + 1
    importance = torch.zeros(dim, dtype=torch.float64)
    for n, p in params.items():
        importance.index_add_(0, coordinates[n].cpu(), p.detach().double().pow(2).sum(0).cpu())
    keep = _top_k_mask(importance, max(1, keep_count(dim, rate)))
    return {n: keep.to(p.device)[coordinates[n]].expand(p.shape).clone() for n, p in params.items()}


def compute_masks(
    params: ParamDict, rate: float, scope: str = "global", coordinates: Optional[Dict[str, Tensor]] = None
) -> MaskDict:
    """Magnitude masks for every tensor in ``params`` (True = kept).

    params: ``{name: (any shape) float tensor}`` -- pass only the prunable
        tensors (``prunable_params(model)``); the values are not modified.
    rate: share of weights zeroed, in [0, 1].
    scope: ``"global"`` (one threshold over all tensors) or ``"per-tensor"``.
    coordinates: ``dimension_coordinates(params, dim)`` for whole-coordinate
        masks (structure ``"dimension"``; global by nature, ``scope`` must be
        ``"global"``); ``None`` for element-wise masks.
    Returns ``{name: bool tensor of the same shape and device}``.
    """
    if scope not in SCOPES:
        raise ValueError(f"prune scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not params:
        return {}
    if coordinates is not None:
        if scope != "global":
            raise ValueError("prune structure 'dimension' keeps the same coordinates in every table: "
                             "use prune.scope=global")
        with torch.no_grad():
            return _dimension_masks(params, rate, coordinates)
    with torch.no_grad():
        if scope == "per-tensor":
            return {
                n: _top_k_mask(p.detach().abs().flatten(), keep_count(p.numel(), rate)).view(p.shape)
                for n, p in params.items()
            }
        dtype = torch.promote_types(torch.float32, _common_dtype(params.values()))
        flat = torch.cat([p.detach().abs().flatten().to(dtype) for p in params.values()])
        keep = _top_k_mask(flat, keep_count(flat.numel(), rate))
        masks: MaskDict = {}
        start = 0
        for n, p in params.items():
            masks[n] = keep[start : start + p.numel()].view(p.shape).clone()
            start += p.numel()
        return masks


def _common_dtype(tensors: Iterable[Tensor]) -> torch.dtype:
    dtype: Optional[torch.dtype] = None
    for t in tensors:
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype if dtype is not None else torch.float32


def sparsity_report(masks: MaskDict) -> Dict[str, dict]:
    """Per tensor and total: ``numel``, ``nonzero`` (kept), ``density`` (kept / numel).

    Returns ``{"tensors": {name: {...}}, "total": {...}}`` with plain Python numbers.
    """
    tensors: Dict[str, dict] = {}
    total, kept = 0, 0
    for n, m in masks.items():
        numel, nz = m.numel(), int(m.sum())
        tensors[n] = {"numel": numel, "nonzero": nz, "density": nz / numel if numel else 0.0}
        total += numel
        kept += nz
    return {
        "tensors": tensors,
        "total": {"numel": total, "nonzero": kept, "density": kept / total if total else 0.0},
    }


def coordinate_keep(mask: Tensor, dim: int) -> Tensor:
    """``(rows, width)`` bool mask -> ``(rows, dim)``: whether each row keeps any part of each coordinate.

    Column ``c`` belongs to coordinate ``c % dim`` (the layout of ``dimension_coordinates``: complex
    tables hold the real parts first, then the imaginary parts).  A complex coordinate counts as kept
    for a row when its real part, its imaginary part or both are kept.
    """
    rows, width = mask.shape
    if width % dim:
        raise ValueError(f"a table of width {width} is no k * {dim} coordinates")
    return mask.view(rows, width // dim, dim).any(dim=1)


def triple_overlap(entity_mask: Tensor, relation_mask: Tensor, triples: Tensor, dim: int,
                   reciprocal: bool = True, chunk: int = 65536) -> Dict[str, float]:
    """How many kept coordinates a triple's head, relation and tail rows share.

    entity_mask: ``(N, w_e)`` bool, relation_mask: ``(R', w_r)`` bool (the student's masks of the
    lookup tables), triples: ``(n, 3)`` long (head, relation, tail), dim: the model's ``dim``.
    A coordinate is shared by a triple when the head's, the relation's and the tail's rows all keep
    it (``coordinate_keep``: for complex tables, either part of it).  In a trilinear score (DistMult,
    ComplEx) only shared coordinates add anything: a triple that shares none scores exactly 0.
    ``reciprocal``: the relation table holds ``R' = 2R`` rows, the reciprocal relations second;
    each triple is then counted in both directions, with relation row ``r`` and with ``r + R``.

    Returns ``{"mean_shared": mean shared coordinates, "none_share": share of (triple, direction)
    pairs sharing none, "dim": dim, "count": pairs counted}``.
    """
    ent = coordinate_keep(entity_mask.bool(), dim)
    rel = coordinate_keep(relation_mask.bool(), dim)
    offsets = [0, relation_mask.shape[0] // 2] if reciprocal else [0]
    total, none, count = 0, 0, 0
    for start in range(0, len(triples), chunk):
        t = triples[start:start + chunk].to(ent.device)
        both = ent[t[:, 0]] & ent[t[:, 2]]
        for off in offsets:
            shared = (both & rel[t[:, 1] + off]).sum(dim=1)
            total += int(shared.sum())
            none += int((shared == 0).sum())
            count += len(t)
    return {"mean_shared": total / count if count else 0.0, "none_share": none / count if count else 0.0,
            "dim": dim, "count": count}
