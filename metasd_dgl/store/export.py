"""Compact export of the pruned student, and the dense teacher in the same container.

Both files are safetensors (no pickle anywhere): the dense teacher stores its
float tensors as they are; the student stores, per tensor, two ``uint8``
blobs and a JSON header in the safetensors metadata:

* ``<name>::mask``   -- which weights are kept: ``gaps-lzma`` (gaps between
  consecutive kept flat indices as LEB128 varints, LZMA-compressed) up to
  density 0.25, ``bitmap-lzma`` (``numpy.packbits`` of the row-major mask,
  LZMA-compressed) above.  At prune rate 0.9 the mask costs ~0.5 bit per
  weight (its entropy is 0.47 bit).
* ``<name>::values`` -- the kept values in row-major order, byte-shuffled
  (all first bytes, then all second bytes, ...) and LZMA-compressed when that
  is smaller (``shuffle-lzma``), raw otherwise.  Shuffling puts the sign and
  exponent bytes together, whose entropy is low for magnitude-pruned weights.
  The values are bit-exact: loading gives back exactly ``w * m``.

Tensors without a mask (e.g. R-GCN biases, not prunable) are stored whole,
as ``<name>::values`` with mask encoding ``dense``.  A sidecar
``<file>.manifest.json`` states non-zeros, bytes and the size ratio.
Every blob carries a CRC-32 in the header; loading checks it.
"""
from __future__ import annotations

import json
import lzma
import sys
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from metasd_dgl.store.atomic import atomic_write_bytes, atomic_write_json
from metasd_dgl.errors import CheckpointError
from metasd_dgl.typing import MaskDict, ParamDict

STUDENT_FORMAT = "metasd-student-v1"
DENSE_FORMAT = "metasd-dense-v1"
_DTYPES = {str(d).replace("torch.", ""): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def dense_size_bytes(params: ParamDict) -> int:
    """Bytes of the raw tensor data of ``params`` (the floor of any dense file)."""
    return sum(p.numel() * p.element_size() for p in params.values())


def _atomic_save(tensors: Dict[str, Tensor], path: Path, metadata: Dict[str, str]) -> None:
    """Serialise in memory, then write atomically from Python (a full disk is a WriteError naming
    ``path``; safetensors' own writer would raise an opaque SafetensorError)."""
    from safetensors.torch import save as save_bytes  # (imported where used: the torch-only path has none)

    atomic_write_bytes(path, save_bytes(tensors, metadata=metadata))


def save_dense(params: ParamDict, path: str | Path, meta: Optional[dict] = None) -> int:
    """Write ``{name: tensor}`` as a plain safetensors file (the teacher); returns its size in bytes."""
    path = Path(path)
    tensors = {n: p.detach().cpu().contiguous() for n, p in params.items()}
    header = {"format": DENSE_FORMAT, "meta": meta or {}}
    _atomic_save(tensors, path, {"metasd": json.dumps(header)})
    return path.stat().st_size


def load_dense(path: str | Path) -> Tuple[ParamDict, dict]:
    """Inverse of ``save_dense``: ``(params, meta)``."""
    header, handle = _open(path, DENSE_FORMAT)
    with handle as f:
        params = {n: f.get_tensor(n) for n in f.keys()}
    return params, header.get("meta", {})


# ----------------------------------------------------------------- encodings
def _lzma(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=3)


def _unlzma(data: bytes, expected: int, what: str) -> bytes:
    """Decompress at most ``expected`` bytes (guards against decompression bombs)."""
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        out = dec.decompress(data, max_length=expected + 1)
    except lzma.LZMAError as exc:
        raise CheckpointError(f"{what}: corrupted compressed block ({exc})") from None
    if len(out) != expected or not dec.eof:
        raise CheckpointError(f"{what}: compressed block does not hold {expected} bytes")
    return out


def _varints(values: np.ndarray) -> bytes:
    """LEB128 encoding of non-negative int64 ``values`` (vectorised)."""
    values = values.astype(np.uint64)
    nbytes = np.ones(values.shape, dtype=np.int64)
    for k in range(1, 10):
        nbytes += values >= (np.uint64(1) << np.uint64(7 * k))
    width = int(nbytes.max()) if values.size else 1
    shifts = (np.arange(width, dtype=np.uint64) * np.uint64(7))[None, :]
    groups = ((values[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    more = np.arange(width)[None, :] < (nbytes[:, None] - 1)
    groups |= (more * 0x80).astype(np.uint8)
    return groups[np.arange(width)[None, :] < nbytes[:, None]].tobytes()


def _unvarints(data: bytes, count: int, what: str) -> np.ndarray:
    """Inverse of ``_varints``: exactly ``count`` int64 values, or CheckpointError."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        if count:
            raise CheckpointError(f"{what}: malformed gap list")
        return np.zeros(0, dtype=np.int64)
    last = (raw & 0x80) == 0
    if int(last.sum()) != count or not last[-1]:
        raise CheckpointError(f"{what}: malformed gap list")
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    group = np.cumsum(np.concatenate([[0], last[:-1]])).astype(np.int64)
    pos = np.arange(raw.size) - starts[group]
    if pos.max() > 9:
        raise CheckpointError(f"{what}: malformed gap list")
    parts = (raw & 0x7F).astype(np.uint64) << (pos.astype(np.uint64) * np.uint64(7))
    return np.add.reduceat(parts, starts).astype(np.int64)


def _encode_mask(mask: Tensor) -> Tuple[str, bytes, int]:
    """-> (encoding, blob, uncompressed varint bytes or 0).

    Gap coding below density 0.25 (about 1.1 bytes of varint per kept weight
    before compression), a bitmap above (1 bit per weight before compression).
    """
    flat = mask.detach().cpu().flatten().numpy().astype(bool)
    if flat.size and flat.mean() > 0.25:
        return "bitmap-lzma", _lzma(np.packbits(flat).tobytes()), 0
    varints = _varints(np.diff(np.concatenate([[-1], np.flatnonzero(flat)])) - 1)
    return "gaps-lzma", _lzma(varints), len(varints)


def _decode_mask(kind: str, blob: bytes, numel: int, nnz: int, varint_bytes: int, what: str) -> np.ndarray:
    if kind == "bitmap-lzma":
        bits = np.unpackbits(np.frombuffer(_unlzma(blob, (numel + 7) // 8, what), dtype=np.uint8))[:numel]
        flat = bits.astype(bool)
    elif kind == "gaps-lzma":
        gaps = _unvarints(_unlzma(blob, varint_bytes, what), nnz, what)
        idx = np.cumsum(gaps + 1) - 1
        if idx.size and (idx[-1] >= numel or gaps.min() < 0):
            raise CheckpointError(f"{what}: mask index out of range")
        flat = np.zeros(numel, dtype=bool)
        flat[idx] = True
    else:
        raise CheckpointError(f"{what}: unknown mask encoding {kind!r}")
    if int(flat.sum()) != nnz:
        raise CheckpointError(f"{what}: mask holds {int(flat.sum())} weights, header says {nnz}")
    return flat


def _encode_values(values: Tensor) -> Tuple[str, bytes]:
    """1-D tensor -> (encoding, bytes); byte-shuffled then LZMA when smaller."""
    size = values.element_size()
    raw = values.detach().cpu().contiguous().view(torch.uint8).view(-1, size)
    shuffled = _lzma(raw.t().contiguous().numpy().tobytes())
    if len(shuffled) < raw.numel():
        return "shuffle-lzma", shuffled
    return "raw", raw.numpy().tobytes()


def _decode_values(kind: str, blob: bytes, count: int, dtype: torch.dtype, what: str) -> Tensor:
    size = torch.empty((), dtype=dtype).element_size()
    if count == 0:
        return torch.zeros(0, dtype=dtype)
    if kind == "shuffle-lzma":
        planes = np.frombuffer(_unlzma(blob, count * size, what), dtype=np.uint8).reshape(size, count)
        data = np.ascontiguousarray(planes.T)
    elif kind == "raw":
        if len(blob) != count * size:
            raise CheckpointError(f"{what}: expected {count * size} value bytes, found {len(blob)}")
        data = np.frombuffer(blob, dtype=np.uint8).reshape(count, size)
    else:
        raise CheckpointError(f"{what}: unknown value encoding {kind!r}")
    return torch.from_numpy(data.copy()).view(dtype).view(-1)


def _blob(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


# -------------------------------------------------------------------- student
def export_student(
    params: ParamDict, masks: MaskDict, path: str | Path, meta: Optional[dict] = None,
    dense_file: Optional[str | Path] = None,
) -> Dict[str, Any]:
    """Write the student ``{name: w * m}`` compactly; return (and write) its manifest.

    params: every tensor of the model (teacher weights or already masked).
    masks: ``{name: bool tensor}`` for the pruned tensors; others are stored whole.
    meta: JSON-serialisable facts to keep (config, epoch, metrics...).
    dense_file: the teacher's ``save_dense`` file, to state the ratio to its size.
    The manifest (``<path>.manifest.json``) holds ``nonzeros``, ``numel``,
    ``bytes`` (this file), ``dense_bytes`` (raw float bytes of ``params``),
    ``ratio = bytes / dense_bytes`` and, with ``dense_file``, ``ratio_to_dense_file``.
    """
    path = Path(path)
    tensors: Dict[str, Tensor] = {}
    entries: Dict[str, dict] = {}
    for name, p in params.items():
        p = p.detach().cpu()
        dtype = str(p.dtype).replace("torch.", "")
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: cannot export dtype {dtype}")
        entry: Dict[str, Any] = {"shape": list(p.shape), "dtype": dtype}
        if name in masks:
            m = masks[name].detach().cpu()
            if m.shape != p.shape:
                raise ValueError(f"{name}: mask shape {tuple(m.shape)} != weight shape {tuple(p.shape)}")
            kept = p.flatten()[m.flatten()]
            entry["mask"], mask_blob, entry["varint_bytes"] = _encode_mask(m)
            entry["mask_crc32"] = zlib.crc32(mask_blob)
            tensors[f"{name}::mask"] = _blob(mask_blob)
        else:
            kept = p.flatten()
            entry["mask"] = "dense"
        entry["nnz"] = int(kept.numel())
        entry["values"], value_blob = _encode_values(kept)
        entry["values_crc32"] = zlib.crc32(value_blob)
        tensors[f"{name}::values"] = _blob(value_blob)
        entries[name] = entry
    header = {"format": STUDENT_FORMAT, "byteorder": sys.byteorder, "tensors": entries, "meta": meta or {}}
    _atomic_save(tensors, path, {"metasd": json.dumps(header)})
    size = path.stat().st_size
    dense = dense_size_bytes(params)
    manifest: Dict[str, Any] = {
        "format": STUDENT_FORMAT,
        "file": path.name,
        "nonzeros": sum(e["nnz"] for e in entries.values()),
        "numel": sum(int(np.prod(e["shape"])) for e in entries.values()),
        "bytes": size,
        "dense_bytes": dense,
        "ratio": size / dense if dense else 0.0,
        "tensors": {n: {"nnz": e["nnz"], "numel": int(np.prod(e["shape"])), "mask": e["mask"],
                        "values": e["values"]} for n, e in entries.items()},
    }
    if dense_file is not None:
        manifest["dense_file_bytes"] = Path(dense_file).stat().st_size
        manifest["ratio_to_dense_file"] = size / manifest["dense_file_bytes"]
    atomic_write_json(path.with_name(path.name + ".manifest.json"), manifest)
    return manifest


def _open(path: str | Path, expected: str):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(f"{path}: reading it needs the safetensors package (pip install safetensors)") from None
    try:
        handle = safe_open(str(path), framework="pt")
        header = json.loads(handle.metadata().get("metasd", "{}"))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if header.get("format") != expected:
        what = {STUDENT_FORMAT: "a compact student (export/student.msd)",
                DENSE_FORMAT: "a dense teacher (export/teacher.safetensors)"}
        raise CheckpointError(f"{path}: format {header.get('format')!r}, expected {expected!r}; pass "
                              f"{what.get(expected, 'a file metasd-dgl export wrote')} from metasd-dgl export")
    return header, handle


def _checked(handle, key: str, crc: Optional[int], what: str) -> bytes:
    """The bytes of blob ``key``, verified against the CRC-32 stored in the header."""
    try:
        data = handle.get_tensor(key).numpy().tobytes()
    except Exception as exc:  # missing key or truncated file
        raise CheckpointError(f"{what}: cannot read {key} ({exc})") from None
    if crc is None or zlib.crc32(data) != int(crc):
        raise CheckpointError(f"{what}: {key} is corrupted (checksum mismatch)")
    return data


def load_student(path: str | Path) -> Tuple[ParamDict, MaskDict, dict]:
    """Read an ``export_student`` file: ``(params dense with zeros, masks, meta)``.

    ``params[name]`` equals ``w * m`` of the exported weights exactly; tensors
    stored whole come back with no entry in ``masks``.
    """
    header, handle = _open(path, STUDENT_FORMAT)
    if header.get("byteorder") != sys.byteorder:
        raise CheckpointError(f"{path}: written on a {header.get('byteorder')}-endian machine")
    params: ParamDict = {}
    masks: MaskDict = {}
    with handle as f:
        for name, e in dict(header.get("tensors", {})).items():
            what = f"{path}: {name}"
            try:
                dtype, shape, nnz = _DTYPES[e["dtype"]], tuple(int(d) for d in e["shape"]), int(e["nnz"])
                kinds = (str(e["values"]), str(e["mask"]), int(e.get("varint_bytes", 0)))
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{what}: malformed header entry") from None
            numel = int(np.prod(shape)) if shape else 1
            if not 0 <= nnz <= numel:
                raise CheckpointError(f"{what}: {nnz} values for {numel} weights")
            blob = _checked(f, f"{name}::values", e.get("values_crc32"), what)
            values = _decode_values(kinds[0], blob, nnz, dtype, what)
            if kinds[1] == "dense":
                if nnz != numel:
                    raise CheckpointError(f"{what}: dense tensor with {nnz} of {numel} values")
                params[name] = values.view(shape).clone()
                continue
            blob = _checked(f, f"{name}::mask", e.get("mask_crc32"), what)
            flat = torch.from_numpy(_decode_mask(kinds[1], blob, numel, nnz, kinds[2], what))
            dense = torch.zeros(numel, dtype=dtype)
            dense[flat] = values
            params[name] = dense.view(shape)
            masks[name] = flat.view(shape)
    return params, masks, header.get("meta", {})


def check_student_fits(params: ParamDict, reference: Dict[str, Tensor], path: str | Path) -> None:
    """CheckpointError (one line) unless every tensor of a loaded student file has a same-named,
    same-shaped tensor in ``reference`` (the run's model state): a student file of another
    dataset (entity or relation count) or model (dim, decoder, encoder) is named as such."""
    for name, p in params.items():
        if name not in reference:
            raise CheckpointError(f"{path}: holds {name!r}, which this run's model does not have: it is the "
                                  "student of another model; export this run's with metasd-dgl export RUN_DIR")
        want, got = tuple(reference[name].shape), tuple(p.shape)
        if want != got:
            raise CheckpointError(f"{path}: {name} has shape {got}, this run's model needs {want}: it is the "
                                  "student of another dataset or model; export this run's with "
                                  "metasd-dgl export RUN_DIR")
