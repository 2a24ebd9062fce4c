"""Quantisation arithmetic, and how one tensor is laid out in a stored model file (``store/export.py``).

Schemes fp32, fp16, int8, int4.  int8/int4: symmetric absmax per row of the last axis (``(..., w)`` is
``prod(shape[:-1])`` rows of ``w``): ``s = max|x_row| / qmax`` (127, 7) as fp16 rounded up, ``q =
round(x / s)``, so ``|x - q s| <= s / 2`` (plus float32 rounding); a row without a non-zero value gets
``s = 1``: every scale is finite and positive.  1-D tensors stay fp32 under int8/int4.

Tensor ``NAME`` of shape ``S`` is stored as ``NAME``: its values -- ``dense``: ``S``; ``columns`` (a
mask whose rows keep the same columns): ``(rows, k)``; ``element`` (any other mask): ``(count,)`` kept
values row-major -- fp32, fp16, int8 codes, or int4 codes ``q + 8`` two per uint8 (first in the low
nibble); ``NAME::scale``: fp16 ``(rows,)`` (int8/int4); ``NAME::index``: kept columns or flat positions,
a uint8 bitmap (``numpy.packbits``) or a sorted int32 list, the smaller.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from metasd_dgl.errors import CheckpointError

SCHEMES = ("fp32", "fp16", "int8", "int4")
QMAX = {"int8": 127, "int4": 7}
_SCALE = np.dtype("<f2")
_DTYPE = {"fp32": "F32", "fp16": "F16", "int8": "I8", "int4": "U8"}


def quantize_values(values: np.ndarray, rows: np.ndarray, n_rows: int, qmax: int) -> Tuple[np.ndarray, np.ndarray]:
    """1-D ``values`` with the row of each -> (int8 ``q`` in [-qmax, qmax], fp16 scales per row:
    ``max |x| / qmax`` rounded up to the next fp16, so every ``|x| / s`` stays within qmax)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size and not np.isfinite(values).all():
        raise ValueError("cannot quantise non-finite weights (NaN or inf)")
    peak = np.zeros(n_rows, dtype=np.float64)
    np.maximum.at(peak, rows, np.abs(values))
    exact = np.where(peak > 0, peak / qmax, 1.0)
    if exact.size and exact.max() > float(np.finfo(_SCALE).max):
        raise ValueError("cannot quantise: a weight is beyond the fp16 scale range (|x| > 8e6)")
    scales = exact.astype(_SCALE)
    low = scales.astype(np.float64) < exact
    scales[low] = np.nextafter(scales[low], np.array(np.inf, dtype=_SCALE))
    q = np.rint(values / scales.astype(np.float64)[rows])
    return np.clip(q, -qmax, qmax).astype(np.int8), scales


def quantize_rows(x: np.ndarray, scheme: str) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, w) array -> (int8 ``q`` (rows, w), fp16 scales (rows,)) for int8 or int4."""
    n_rows, width = np.shape(x)
    q, s = quantize_values(np.asarray(x).reshape(-1), np.repeat(np.arange(n_rows), width), n_rows, QMAX[scheme])
    return q.reshape(n_rows, width), s


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Integers in [-8, 7] -> ``ceil(n / 2)`` uint8: ``q + 8`` per nibble, first value in the low nibble."""
    q = np.asarray(q).reshape(-1)
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("int4 values must be in [-8, 7]")
    u = np.concatenate([(q.astype(np.int16) + 8).astype(np.uint8), np.zeros(q.size % 2, dtype=np.uint8)])
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of ``pack_int4``: the first ``count`` values as int8."""
    b = np.asarray(packed, dtype=np.uint8).reshape(-1)
    return np.stack([(b & 0x0F), (b >> 4)], 1).reshape(-1)[:count].astype(np.int8) - 8


def _rows(shape) -> Tuple[int, int]:
    return (int(np.prod(shape[:-1])) if len(shape) > 1 else 1), (int(shape[-1]) if shape else 1)


def _index(flat: np.ndarray) -> Tensor:
    """A bool vector's kept positions: uint8 bitmap or int32 list, the smaller."""
    idx = np.flatnonzero(flat)
    if 4 * idx.size < (flat.size + 7) // 8:
        return torch.from_numpy(idx.astype(np.int32))
    return torch.from_numpy(np.packbits(flat))


def encode_tensor(name: str, x: Tensor, mask: Optional[Tensor], scheme: str) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    """-> (metadata entry, ``{part name: tensor}``) of ``x`` (zero where ``mask`` is False) under ``scheme``."""
    a = x.detach().cpu().to(torch.float32).contiguous().numpy()
    shape = tuple(int(d) for d in a.shape)
    n_rows, width = _rows(shape)
    enc = scheme if (scheme in ("fp32", "fp16") or len(shape) >= 2) else "fp32"
    parts: Dict[str, Tensor] = {}
    m = None if mask is None else mask.detach().cpu().numpy().astype(bool)
    if m is not None and m.shape != shape:
        raise ValueError(f"{name}: mask shape {m.shape} != weight shape {shape}")
    if m is None:
        layout, values, rows = "dense", a, np.repeat(np.arange(n_rows), width)
    elif len(shape) == 2 and n_rows and bool((m == m[:1]).all()):  # every row keeps the same columns
        layout, values = "columns", a[:, m[0]]
        rows = np.repeat(np.arange(n_rows), int(m[0].sum()))
        parts[f"{name}::index"] = _index(m[0])
    else:
        idx = np.flatnonzero(m.reshape(-1))
        layout, values, rows = "element", a.reshape(-1)[idx], idx // max(width, 1)
        parts[f"{name}::index"] = _index(m.reshape(-1))
    if enc in ("fp32", "fp16"):
        with np.errstate(over="ignore"):
            out = values.astype(np.float16 if enc == "fp16" else np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{name}: a weight is NaN, infinite or beyond the fp16 range (|x| > 65504)")
        parts[name] = torch.from_numpy(np.ascontiguousarray(out))
    else:
        q, s = quantize_values(values.reshape(-1), rows, n_rows, QMAX[enc])
        parts[name] = torch.from_numpy(q.reshape(values.shape) if enc == "int8" else pack_int4(q))
        parts[f"{name}::scale"] = torch.from_numpy(s)
    return {"shape": list(shape), "layout": layout, "encoding": enc}, parts


def _kind(f, key: str, what: str) -> Tuple[str, Tuple[int, ...]]:
    try:
        return f.get_slice(key).get_dtype(), tuple(f.get_slice(key).get_shape())
    except Exception:  # safetensors' own error types
        raise CheckpointError(f"{what}: the file lacks {key!r}") from None


def _part(f, key: str, dtype: str, shape: Tuple[int, ...], what: str) -> Tensor:
    """Part ``key`` of safetensors handle ``f``, read only once its dtype and shape are as expected."""
    got = _kind(f, key, what)
    if got != (dtype, tuple(shape)):
        raise CheckpointError(f"{what}: {key} is {got[0]} {list(got[1])}, this run's model needs "
                              f"{dtype} {list(shape)}: it is another model's file, or a damaged one")
    return f.get_tensor(key)


def _positions(f, key: str, n: int, what: str) -> np.ndarray:
    """The kept positions (sorted, in [0, n)) stored under ``key``, checked before use."""
    dtype, shape = _kind(f, key, what)
    if dtype == "U8":
        bits = np.unpackbits(_part(f, key, "U8", ((n + 7) // 8,), what).numpy())
        if bits[n:].any():
            raise CheckpointError(f"{what}: {key} marks positions beyond the tensor's {n}")
        return np.flatnonzero(bits[:n])
    if dtype != "I32" or len(shape) != 1 or shape[0] > n:
        raise CheckpointError(f"{what}: {key} is {dtype} {list(shape)}, expected a bitmap or at most {n} int32")
    idx = _part(f, key, "I32", shape, what).numpy().astype(np.int64)
    if idx.size and (idx[0] < 0 or idx[-1] >= n or (np.diff(idx) <= 0).any()):
        raise CheckpointError(f"{what}: {key} holds positions out of range [0, {n}) or unsorted")
    return idx


def decode_tensor(f, name: str, entry: Dict[str, Any], shape: Tuple[int, ...], what: str) -> Tuple[Tensor, Optional[Tensor]]:
    """One stored tensor of reference ``shape`` (the run's model) -> (float32 tensor, bool mask or None).
    Every part's dtype and shape is checked against ``shape`` before it is read."""
    layout, enc = entry.get("layout"), entry.get("encoding")
    if layout not in ("dense", "columns", "element") or enc not in SCHEMES:
        raise CheckpointError(f"{what}: unknown layout {layout!r} or encoding {enc!r}")
    if entry.get("shape") != list(shape):
        raise CheckpointError(f"{what}: has shape {str(tuple(entry.get('shape') or ()))[:80]}, this run's model needs "
                              f"{tuple(shape)}: it is another dataset's or model's file")
    n_rows, width = _rows(shape)
    numel = n_rows * width
    mask = None
    if layout == "dense":
        vshape, rows = tuple(shape), np.repeat(np.arange(n_rows), width)
    elif layout == "columns" and len(shape) == 2:
        cols = np.zeros(width, dtype=bool)
        cols[_positions(f, f"{name}::index", width, what)] = True
        k = int(cols.sum())
        vshape, rows, mask = (n_rows, k), np.repeat(np.arange(n_rows), k), np.tile(cols, n_rows)
    elif layout == "element":
        idx = _positions(f, f"{name}::index", numel, what)
        vshape, rows = (idx.size,), idx // max(width, 1)
        mask = np.zeros(numel, dtype=bool)
        mask[idx] = True
    else:
        raise CheckpointError(f"{what}: column layout needs a 2-D tensor")
    count = int(np.prod(vshape))
    stored = (((count + 1) // 2),) if enc == "int4" else vshape
    v = _part(f, name, _DTYPE[enc], stored, what).numpy()
    if enc in QMAX:
        s = _part(f, f"{name}::scale", "F16", (n_rows,), what).numpy()
        if not (np.isfinite(s) & (s > 0)).all():
            raise CheckpointError(f"{what}: a quantisation scale is zero, negative or not finite: a damaged "
                                  "or crafted file; re-export it")
        q = v.reshape(-1) if enc == "int8" else unpack_int4(v, count)
        v = q.astype(np.float64) * s.astype(np.float64)[rows]  # float64 product, then float32
    v = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(vshape)
    if not torch.isfinite(v).all():
        raise CheckpointError(f"{what}: holds NaN or infinite weights: a damaged or crafted file; re-export it")
    if mask is None:
        return v, None
    out = torch.zeros(numel, dtype=torch.float32)
    out[torch.from_numpy(mask.reshape(-1))] = v.reshape(-1)
    return out.reshape(shape), torch.from_numpy(mask.reshape(shape))
