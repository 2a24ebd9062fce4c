"""Quantised models: the teacher or the student as fp32, fp16, int8 or int4 in one checked file (``.msq``).

Quantisation (``int8``, ``int4``): symmetric absmax per row of a tensor's last axis.  A tensor of
shape ``(..., w)`` is seen as ``rows = prod(shape[:-1])`` rows of ``w`` values (an embedding table:
one row per entity or relation; an R-GCN ``bases`` (B, in, out): ``B * in`` rows of ``out``).  Per
row ``s = max|x_row| / qmax`` (stored as float32; ``qmax`` 127 for int8, 7 for int4),
``q = round(x / s)`` (half to even) in ``[-qmax, qmax]``, and ``x ~ q * s`` with
``|x - q * s| <= s / 2`` for every element (plus float32 rounding of the product).  A row of zeros
has ``s = 0``.  int4 values are stored ``q + 8`` in a nibble, two to a byte, the first value in the
low nibble, flat over the whole tensor (an odd count ends with a zero nibble).  1-D tensors (R-GCN
biases) are kept float32 under int8/int4 and float16 under fp16.  ``fp16`` stores every value
as IEEE half, ``fp32`` as it is.

The student's pruned tensors are stored by their mask's shape:

* ``columns``: a whole-coordinate mask (``prune.structure = dimension``; every row keeps the same
  columns) stores the kept columns only, ``(rows, k)``, and the column mask (``numpy.packbits``
  of the ``w`` columns);
* ``element``: any other mask stores the kept values only (row-major order; scales per row over
  its kept values) and the mask's index: a bitmap (``numpy.packbits`` of the flat mask,
  ``ceil(numel / 8)`` bytes) or the sorted flat indices (little-endian uint32, or uint64 beyond
  2**32 weights), whichever is smaller.  Its bytes are in the file, so the file's size counts it.

Unmasked tensors (the teacher's, the student's shared ones) are ``dense``.

File layout (version 1, little-endian, written with ``struct``/``numpy``, read without pickle)::

    8 bytes   magic b"MSDQUANT"
    4 bytes   uint32 format version (1)
    8 bytes   uint64 length L of the JSON metadata
    L bytes   JSON metadata (UTF-8): format, version, role, scheme, model config, decoder,
              encoder, dim, num_entities, num_relations, dataset fingerprint, tensors
              {name: shape, layout, encoding, rows, count, buffers {part: [offset, nbytes]}},
              data_bytes D
    D bytes   the buffers, offsets relative to the start of this section
    32 bytes  sha256 of everything before

so a file's size is exactly ``20 + L + D + 32`` (``file_size``).  Loading checks the magic,
the version, the length (truncated or trailing bytes), the checksum, then every entry.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from metasd_dgl.store.atomic import atomic_write_bytes
from metasd_dgl.errors import CheckpointError, UserError
from metasd_dgl.typing import MaskDict, ParamDict

MAGIC = b"MSDQUANT"
VERSION = 1
FORMAT = "metasd-quantized"
SUFFIX = ".msq"
_HEAD = struct.Struct("<8sIQ")  # magic, version, metadata length
HEAD_BYTES = _HEAD.size  # 20
DIGEST_BYTES = 32  # sha256
SCHEMES = ("fp32", "fp16", "int8", "int4")
QMAX = {"int8": 127, "int4": 7}
#: numpy dtypes of the stored parts (explicitly little-endian)
_FLOAT = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}
_SCALE = np.dtype("<f2")  # per-row scales in fp16, rounded up so that |x| / s <= qmax still holds
_MAX_META = 1 << 30


def file_size(meta_bytes: int, data_bytes: int) -> int:
    """Bytes of a file with ``meta_bytes`` of JSON metadata and ``data_bytes`` of buffers."""
    return HEAD_BYTES + meta_bytes + data_bytes + DIGEST_BYTES


def file_name(role: str, scheme: str) -> str:
    """``teacher.int8.msq`` and the like."""
    return f"{role}.{scheme}{SUFFIX}"


# ----------------------------------------------------------------- the arithmetic
def row_scales(values: np.ndarray, rows: np.ndarray, n_rows: int, qmax: int) -> np.ndarray:
    """(n_rows,) fp16 ``max |x| / qmax`` over the values of each row, rounded up to the next fp16
    (0 for a row without any non-zero): two bytes a row, and every ``|x| / s`` stays within qmax."""
    peak = np.zeros(n_rows, dtype=np.float64)
    if values.size:
        np.maximum.at(peak, rows, np.abs(values.astype(np.float64)))
    exact = peak / qmax
    if exact.size and exact.max() > float(np.finfo(_SCALE).max):
        raise ValueError("cannot quantise: a weight is beyond the fp16 scale range (|x| > 8e6)")
    scales = exact.astype(_SCALE)
    low = scales.astype(np.float64) < exact
    scales[low] = np.nextafter(scales[low], np.array(np.inf, dtype=_SCALE))
    return scales


def quantize_values(values: np.ndarray, rows: np.ndarray, n_rows: int, qmax: int) -> Tuple[np.ndarray, np.ndarray]:
    """1-D ``values`` with the row of each -> (int8 ``q`` in [-qmax, qmax], fp16 scales per row).

    ``q = round(x / s)`` (half to even) with ``s = max |x_row| / qmax``; a zero scale gives ``q = 0``.
    """
    values = np.asarray(values)
    if values.size and not np.isfinite(values).all():
        raise ValueError("cannot quantise non-finite weights (NaN or inf)")
    scales = row_scales(values, rows, n_rows, qmax)
    s = scales.astype(np.float64)[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s > 0, np.rint(values.astype(np.float64) / np.where(s > 0, s, 1.0)), 0.0)
    return np.clip(q, -qmax, qmax).astype(np.int8), scales


def dequantize_values(q: np.ndarray, scales: np.ndarray, rows: np.ndarray,
                      dtype: np.dtype = np.float32) -> np.ndarray:
    """``q * s_row`` (computed in float64, returned as ``dtype``)."""
    return (q.astype(np.float64) * scales.astype(np.float64)[rows]).astype(dtype)


def quantize_rows(x: np.ndarray, scheme: str) -> Tuple[np.ndarray, np.ndarray]:
    """(rows, w) array -> (int8 ``q`` (rows, w), fp16 scales (rows,)) for int8 or int4."""
    x = np.asarray(x)
    n_rows, width = x.shape
    rows = np.repeat(np.arange(n_rows), width)
    q, s = quantize_values(x.reshape(-1), rows, n_rows, QMAX[scheme])
    return q.reshape(n_rows, width), s


def dequantize_rows(q: np.ndarray, scales: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
    """Inverse of ``quantize_rows`` (up to the rounding): (rows, w) ``q * s_row``."""
    return (q.astype(np.float64) * scales.astype(np.float64)[:, None]).astype(dtype)


def pack_int4(q: np.ndarray) -> bytes:
    """Integers in [-8, 7] -> ``ceil(n / 2)`` bytes: ``q + 8`` per nibble, first value in the low nibble."""
    q = np.asarray(q).reshape(-1)
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("int4 values must be in [-8, 7]")
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    if u.size % 2:
        u = np.concatenate([u, np.zeros(1, dtype=np.uint8)])
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    """Inverse of ``pack_int4``: the first ``count`` values as int8."""
    b = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(b.size * 2, dtype=np.int8)
    out[0::2] = (b & 0x0F).astype(np.int8) - 8
    out[1::2] = (b >> 4).astype(np.int8) - 8
    return out[:count]


def _values_bytes(encoding: str, count: int) -> int:
    return {"fp32": 4 * count, "fp16": 2 * count, "int8": count, "int4": (count + 1) // 2}[encoding]


# ------------------------------------------------------------------- writing
def _as_rows(shape: Tuple[int, ...]) -> Tuple[int, int]:
    width = shape[-1] if shape else 1
    return (int(np.prod(shape[:-1])) if len(shape) > 1 else 1), int(width)


def _column_mask(mask: np.ndarray) -> Optional[np.ndarray]:
    """The shared column mask of a 2-D ``mask`` whose rows all keep the same columns, else None."""
    if mask.ndim != 2 or mask.shape[0] == 0:
        return None
    first = mask[0]
    return first.copy() if bool((mask == first[None, :]).all()) else None


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[int]:
        where = [self.size, len(data)]
        self.parts.append(data)
        self.size += len(data)
        return where


def _encode_values(w: _Writer, entry: Dict[str, Any], values: np.ndarray, rows: np.ndarray, n_rows: int,
                   encoding: str, name: str) -> None:
    entry["encoding"] = encoding
    bufs = entry["buffers"]
    if encoding in _FLOAT:
        with np.errstate(over="ignore"):
            out = values.astype(_FLOAT[encoding])
        if encoding == "fp16" and values.size and not np.isfinite(out).all() and np.isfinite(values).all():
            raise ValueError(f"{name}: a weight exceeds the fp16 range (|x| > 65504); use int8 or fp32")
        bufs["values"] = w.add(out.tobytes())
        return
    q, scales = quantize_values(values, rows, n_rows, QMAX[encoding])
    bufs["values"] = w.add(q.tobytes() if encoding == "int8" else pack_int4(q))
    bufs["scales"] = w.add(scales.tobytes())


def encode_file(params: ParamDict, scheme: str, meta: Dict[str, Any],
                masks: Optional[MaskDict] = None) -> bytes:
    """The bytes of a ``.msq`` file of ``params`` (full-width, zero where pruned) under ``scheme``.

    ``masks``: the student's ``{name: bool tensor}`` (its tensors are stored compactly); ``meta``:
    JSON-ready facts (role, model config, dataset fingerprint, counts...) kept in the metadata.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    masks = masks or {}
    w = _Writer()
    tensors: Dict[str, Any] = {}
    for name, p in params.items():
        x = p.detach().cpu().to(torch.float32).contiguous().numpy()
        shape = tuple(int(d) for d in x.shape)
        n_rows, width = _as_rows(shape)
        encoding = scheme if (scheme in _FLOAT or len(shape) >= 2) else "fp32"
        entry: Dict[str, Any] = {"shape": list(shape), "rows": n_rows, "buffers": {}}
        mask = masks.get(name)
        if mask is not None:
            m = mask.detach().cpu().numpy().astype(bool)
            if m.shape != shape:
                raise ValueError(f"{name}: mask shape {m.shape} != weight shape {shape}")
            cols = _column_mask(m.reshape(n_rows, width)) if len(shape) == 2 else None
        if mask is None:
            entry["layout"] = "dense"
            values = x.reshape(-1)
            rows = np.repeat(np.arange(n_rows), width)
        elif cols is not None:
            entry["layout"] = "columns"
            entry["buffers"]["columns"] = w.add(np.packbits(cols).tobytes())
            kept = x.reshape(n_rows, width)[:, cols]
            values = kept.reshape(-1)
            rows = np.repeat(np.arange(n_rows), int(cols.sum()))
        else:
            entry["layout"] = "element"
            flat = m.reshape(-1)
            idx = np.flatnonzero(flat)
            bitmap = np.packbits(flat).tobytes()
            index_dtype = np.dtype("<u4") if flat.size <= 2 ** 32 else np.dtype("<u8")
            if idx.size * index_dtype.itemsize < len(bitmap):
                entry["index"] = f"indices-{'u4' if index_dtype.itemsize == 4 else 'u8'}"
                entry["buffers"]["index"] = w.add(idx.astype(index_dtype).tobytes())
            else:
                entry["index"] = "bitmap"
                entry["buffers"]["index"] = w.add(bitmap)
            values = x.reshape(-1)[idx]
            rows = idx // max(width, 1)
        entry["count"] = int(values.size)
        _encode_values(w, entry, values, rows, n_rows, encoding, name)
        tensors[name] = entry
    header = {"format": FORMAT, "version": VERSION, "scheme": scheme, "byteorder": "little", **meta,
              "tensors": tensors, "data_bytes": w.size}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = _HEAD.pack(MAGIC, VERSION, len(text)) + text + b"".join(w.parts)
    return body + hashlib.sha256(body).digest()


def write_quantized(params: ParamDict, path: str | Path, scheme: str, meta: Dict[str, Any],
                    masks: Optional[MaskDict] = None) -> int:
    """Write ``encode_file(...)`` to ``path`` atomically; returns the file's size in bytes."""
    path = Path(path)
    atomic_write_bytes(path, encode_file(params, scheme, meta, masks))
    return path.stat().st_size


# ------------------------------------------------------------------- reading
def read_header(path: str | Path) -> Tuple[Dict[str, Any], bytes]:
    """-> (metadata, buffers) of a ``.msq`` file, its framing and checksum verified (CheckpointError)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) < HEAD_BYTES:
        if MAGIC.startswith(raw[: len(MAGIC)]):
            raise CheckpointError(f"{path}: truncated ({len(raw)} bytes, shorter than the {HEAD_BYTES}-byte header)")
        raise CheckpointError(f"{path}: not a quantised model file (metasd-dgl export --quantize writes them)")
    magic, version, meta_len = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise CheckpointError(f"{path}: not a quantised model file (metasd-dgl export --quantize writes them)")
    if version != VERSION:
        raise CheckpointError(f"{path}: unknown format version {version} (this metasd-dgl reads version "
                              f"{VERSION}); re-export it with this version: metasd-dgl export RUN_DIR --quantize ...")
    if meta_len > _MAX_META:
        raise CheckpointError(f"{path}: corrupted (metadata length {meta_len} is implausible)")
    if len(raw) < file_size(meta_len, 0):
        raise CheckpointError(f"{path}: truncated ({len(raw)} bytes, the header declares at least "
                              f"{file_size(meta_len, 0)})")
    try:
        meta = json.loads(raw[HEAD_BYTES:HEAD_BYTES + meta_len].decode("utf-8"))
        data_bytes = int(meta["data_bytes"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        meta, data_bytes = None, None
    if meta is not None and isinstance(meta, dict) and data_bytes is not None:
        want = file_size(meta_len, data_bytes)
        if len(raw) < want:
            raise CheckpointError(f"{path}: truncated ({len(raw)} of {want} bytes)")
        if len(raw) > want:
            raise CheckpointError(f"{path}: corrupted ({len(raw) - want} bytes after the checksum; expected {want})")
    body, digest = raw[:-DIGEST_BYTES], raw[-DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: corrupted (sha256 checksum mismatch)")
    if not isinstance(meta, dict) or data_bytes is None:
        raise CheckpointError(f"{path}: malformed metadata")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: malformed metadata (format {meta.get('format')!r})")
    return meta, body[HEAD_BYTES + meta_len:]


def _part(data: bytes, entry: Dict[str, Any], part: str, nbytes: int, what: str) -> bytes:
    try:
        offset, size = (int(v) for v in entry["buffers"][part])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{what}: malformed entry (no {part} buffer)") from None
    if size != nbytes or offset < 0 or offset + size > len(data):
        raise CheckpointError(f"{what}: {part} buffer of {size} bytes at {offset}, expected {nbytes} bytes "
                              f"inside {len(data)}")
    return data[offset:offset + size]


def _decode_values(data: bytes, entry: Dict[str, Any], count: int, rows: np.ndarray, n_rows: int,
                   what: str) -> np.ndarray:
    enc = entry.get("encoding")
    if enc not in SCHEMES:
        raise CheckpointError(f"{what}: unknown encoding {enc!r}")
    blob = _part(data, entry, "values", _values_bytes(enc, count), what)
    if enc in _FLOAT:
        return np.frombuffer(blob, dtype=_FLOAT[enc]).astype(np.float32)
    q = np.frombuffer(blob, dtype=np.int8) if enc == "int8" else unpack_int4(blob, count)
    scales = np.frombuffer(_part(data, entry, "scales", _SCALE.itemsize * n_rows, what), dtype=_SCALE)
    return dequantize_values(q, scales, rows)


def decode_tensor(data: bytes, entry: Dict[str, Any], what: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """One metadata entry -> (float32 full-width array, bool mask or None)."""
    try:
        shape = tuple(int(d) for d in entry["shape"])
        count, layout = int(entry["count"]), str(entry["layout"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{what}: malformed entry") from None
    if any(d < 0 for d in shape):
        raise CheckpointError(f"{what}: malformed shape {list(shape)}")
    numel = int(np.prod(shape)) if shape else 1
    n_rows, width = _as_rows(shape)
    if not 0 <= count <= numel:
        raise CheckpointError(f"{what}: {count} values for {numel} weights")
    if layout == "dense":
        if count != numel:
            raise CheckpointError(f"{what}: dense tensor with {count} of {numel} values")
        rows = np.repeat(np.arange(n_rows), width)
        return _decode_values(data, entry, count, rows, n_rows, what).reshape(shape), None
    if layout == "columns":
        if len(shape) != 2:
            raise CheckpointError(f"{what}: column layout needs a 2-D tensor")
        cols = np.unpackbits(np.frombuffer(_part(data, entry, "columns", (width + 7) // 8, what),
                                           dtype=np.uint8))[:width].astype(bool)
        k = int(cols.sum())
        if k * n_rows != count:
            raise CheckpointError(f"{what}: {k} kept columns of {n_rows} rows, but {count} values")
        rows = np.repeat(np.arange(n_rows), k)
        out = np.zeros((n_rows, width), dtype=np.float32)
        out[:, cols] = _decode_values(data, entry, count, rows, n_rows, what).reshape(n_rows, k)
        return out, np.broadcast_to(cols[None, :], (n_rows, width)).copy()
    if layout == "element":
        kind = entry.get("index")
        if kind == "bitmap":
            blob = _part(data, entry, "index", (numel + 7) // 8, what)
            flat = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))[:numel].astype(bool)
            idx = np.flatnonzero(flat)
            if idx.size != count:
                raise CheckpointError(f"{what}: the mask holds {idx.size} weights, the entry says {count}")
        elif kind in ("indices-u4", "indices-u8"):
            dt = np.dtype("<u4") if kind == "indices-u4" else np.dtype("<u8")
            idx = np.frombuffer(_part(data, entry, "index", count * dt.itemsize, what), dtype=dt).astype(np.int64)
            if idx.size and (idx[-1] >= numel or (np.diff(idx) <= 0).any()):
                raise CheckpointError(f"{what}: mask indices out of range or unsorted")
        else:
            raise CheckpointError(f"{what}: unknown mask index {kind!r}")
        out = np.zeros(numel, dtype=np.float32)
        out[idx] = _decode_values(data, entry, count, idx // max(width, 1), n_rows, what)
        mask = np.zeros(numel, dtype=bool)
        mask[idx] = True
        return out.reshape(shape), mask.reshape(shape)
    raise CheckpointError(f"{what}: unknown layout {layout!r}")


def read_quantized(path: str | Path) -> Tuple[ParamDict, MaskDict, Dict[str, Any]]:
    """A ``.msq`` file -> (``{name: float32 full-width tensor}``, ``{name: bool mask}`` of the compactly
    stored tensors, metadata).  Every failure is one CheckpointError naming the file."""
    meta, data = read_header(path)
    params: ParamDict = {}
    masks: MaskDict = {}
    tensors = meta.get("tensors")
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{path}: malformed metadata (no tensors)")
    for name, entry in tensors.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: {name}: malformed entry")
        array, mask = decode_tensor(data, entry, f"{path}: {name}")
        params[name] = torch.from_numpy(np.ascontiguousarray(array))
        if mask is not None:
            masks[name] = torch.from_numpy(mask)
    return params, masks, meta


# --------------------------------------------------------- a run's model, quantised
def run_meta(cfg, data, role: str, ckpt: Optional[dict] = None) -> Dict[str, Any]:
    """The metadata facts of a run's teacher or student: model, dataset, counts, source."""
    import dataclasses

    from metasd_dgl.data.fingerprint import dataset_fingerprint

    meta: Dict[str, Any] = {"role": role, "model": dataclasses.asdict(cfg.model), "rgcn": dataclasses.asdict(cfg.rgcn), "encoder": cfg.model.encoder,
                            "decoder": cfg.model.decoder, "dim": cfg.model.dim,
                            "num_entities": int(data.num_entities), "num_relations": int(data.num_relations),
                            "dataset": dataset_fingerprint(data)}
    if role == "student":
        meta["structure"] = cfg.prune.structure
        meta["prune_rate"] = cfg.prune.rate
    if ckpt is not None:  # the epoch of the checkpoint it came from (no paths: a file's size is its own)
        meta["epoch"] = (ckpt.get("state") or {}).get("epoch")
    return meta


def export_run_files(cfg, data, model, student: Optional[ParamDict], ckpt: dict, out: Path,
                     schemes, roles=("teacher", "student")) -> Dict[str, Any]:
    """Write ``out/<role>.<scheme>.msq`` of a loaded run (``stages.load_run``) for each scheme;
    -> ``{"<role>_<scheme>_file": path, "<role>_<scheme>_bytes": size}``.  No student file without one."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    info: Dict[str, Any] = {}
    for role in roles:
        if role == "student" and not student:
            continue
        weights, masks = (params, None) if role == "teacher" else (student, ckpt.get("masks"))
        for scheme in schemes:
            path = Path(out) / file_name(role, scheme)
            size = write_quantized(weights, path, scheme, run_meta(cfg, data, role, ckpt), masks)
            info[f"{role}_{scheme}_file"] = str(path)
            info[f"{role}_{scheme}_bytes"] = size
    return info


def check_fits(meta: Dict[str, Any], data, path: str | Path, what: str = "this run's dataset") -> None:
    """CheckpointError unless the file's dataset (entity and relation counts, fingerprint) is ``data``."""
    from metasd_dgl.data.fingerprint import dataset_fingerprint

    for key, have in (("num_entities", data.num_entities), ("num_relations", data.num_relations)):
        got = meta.get(key)
        if got != have:
            noun = key.split("_")[1]
            raise CheckpointError(f"{path}: holds a model of {got} {noun}, {what} ({data.path}) has {have}: "
                                  "it is another dataset's model")
    if meta.get("dataset") != dataset_fingerprint(data):
        raise CheckpointError(f"{path}: was written for another dataset than {data.path} (its entity/relation "
                              "names differ)")


def model_of(meta: Dict[str, Any], data, path: str | Path):
    """The (untrained) model the file's metadata describes, on ``data``'s counts."""
    from metasd_dgl.config import from_dict
    from metasd_dgl.model.predictor import make_model

    try:
        model_cfg = from_dict({"model": dict(meta["model"]), "rgcn": dict(meta.get("rgcn") or {})},
                              f"{path} model config")
    except (KeyError, TypeError, ValueError, UserError) as exc:
        raise CheckpointError(f"{path}: malformed model config ({exc})") from None
    return make_model(model_cfg, data.num_entities, data.num_relations, torch.Generator().manual_seed(0))


def load_for(path: str | Path, data) -> Tuple[Any, ParamDict, Dict[str, Any]]:
    """-> (model, dequantised ``{name: float32 tensor}``, metadata) of a ``.msq`` file on ``data``,
    checked to be of ``data``'s dataset and to fit the model its metadata describes."""
    params, _, meta = read_quantized(path)
    check_fits(meta, data, path)
    model = model_of(meta, data, path)
    want = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for name, shape in want.items():
        if name not in params:
            raise CheckpointError(f"{path}: lacks {name!r} of its {meta.get('encoder')}+{meta.get('decoder')} model")
        if tuple(params[name].shape) != shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(params[name].shape)}, its model needs {shape}")
    extra = sorted(set(params) - set(want))
    if extra:
        raise CheckpointError(f"{path}: holds {extra[0]!r}, which its model does not have")
    return model, params, meta


def file_tables(path: str | Path, data) -> Tuple[Any, Tuple[Tensor, Tensor], Dict[str, Any]]:
    """-> (model, (entity (N, w_e), relation (2R, w_r)) float32 tables of the file's weights, metadata):
    what ``evaluation.rank_split(model, ..., tables=...)`` ranks."""
    from metasd_dgl.evaluate.ranking import encode_tables

    model, params, meta = load_for(path, data)
    graph = data.graph if meta.get("encoder") == "rgcn" else None
    return model, encode_tables(model, graph, params), meta
