"""Stored models: one safetensors file per model and scheme, and the folders that hold them.

File names (``file_name``): ``teacher.safetensors`` and ``student.safetensors`` (fp32), and
``<role>.<scheme>.safetensors`` for the others (``teacher.fp16.safetensors``,
``student.int8.safetensors``, ``student.int4.safetensors``...).  The teacher is stored dense; the
student (prune, kd, metasd) as its kept columns or kept values with their index
(``store/quantize.py`` says how each tensor is laid out).  The safetensors string metadata
``metasd`` holds JSON: format and version, role, scheme, the model (encoder, decoder, dim, R-GCN
shape), the dataset's identity (entity and relation counts, fingerprint of the names), the source
checkpoint's epoch and, per tensor, its shape, layout and encoding.

Reading (``load_for``): safetensors checks every offset and shape against the file; this module
checks what safetensors cannot know, before anything is allocated: the file is a regular file, its
model is the run's, its dataset is the run's, every part's dtype and shape fit the run's model, and
quantisation scales are finite and positive.  The ``.msd``/``.msq`` files of older versions are
refused with one line saying to re-export.

An export folder (``RUN/export``, ``RUN/compress``) is replaced whole (``atomic.replaced_folder``)
under its lock.  Its ``manifest.json`` lists every file with its sha256 and size; a folder holding
anything the manifest does not list is refused, naming it, and nothing is deleted.  ``export`` keeps
the variants written earlier.  A sha256 in the manifest shows that a file is unchanged since it was
written; it is not a signature: anyone who edits a file can recompute it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from metasd_dgl.errors import CheckpointError, UserError
from metasd_dgl.store.atomic import atomic_write_bytes, atomic_write_json
from metasd_dgl.store.quantize import SCHEMES, decode_tensor, encode_tensor
from metasd_dgl.typing import MaskDict, ParamDict

FORMAT = "metasd-model"
VERSION = 1
_OLD = ("metasd-student-v1", "metasd-dense-v1")
_REEXPORT = "re-export the run with this version: metasd-dgl export RUN_DIR [--quantize int8 ...]"


def file_name(role: str, scheme: str) -> str:
    """``teacher.safetensors`` (fp32), ``student.int8.safetensors`` and the like."""
    return f"{role}.safetensors" if scheme == "fp32" else f"{role}.{scheme}.safetensors"


def write_model(params: ParamDict, path: str | Path, scheme: str, meta: Dict[str, Any],
                masks: Optional[MaskDict] = None) -> int:
    """Write ``params`` (full-width, zero where pruned; ``masks`` for the student's compact tensors)
    under ``scheme`` with ``meta`` in its metadata; returns the file's size in bytes."""
    from safetensors.torch import save  # (imported where used: the torch-only path has none)

    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    tensors: Dict[str, Tensor] = {}
    entries: Dict[str, Any] = {}
    for name, p in params.items():
        entries[name], parts = encode_tensor(name, p, (masks or {}).get(name), scheme)
        tensors.update(parts)
    header = {"format": FORMAT, "version": VERSION, "scheme": scheme, **meta, "tensors": entries}
    atomic_write_bytes(path, save(tensors, metadata={"metasd": json.dumps(header, sort_keys=True)}))
    return Path(path).stat().st_size


def _open(path: Path):
    """-> (metadata, open safetensors handle) of a model file, or one CheckpointError naming it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket or other special file")
        raise CheckpointError(f"{path}: is {kind}, not a regular file; pass a model file of metasd-dgl export")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if magic == b"MSDQUANT" or path.suffix in (".msd", ".msq"):
        raise CheckpointError(f"{path}: an .msd/.msq file of an older metasd-dgl, no longer read; {_REEXPORT}")
    try:
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
    except ImportError:
        raise CheckpointError(f"{path}: reading it needs the safetensors package (pip install safetensors)") from None
    except Exception as exc:  # safetensors' own error types: truncated, bad header, offsets
        raise CheckpointError(f"{path}: not a model file of metasd-dgl export (not a readable safetensors "
                              f"file, or truncated: {str(exc).splitlines()[0][:120]})") from None
    try:
        meta = json.loads((handle.metadata() or {}).get("metasd", "{}"))
    except ValueError:
        meta = None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt in _OLD:
        raise CheckpointError(f"{path}: a model file of an older metasd-dgl ({fmt}), no longer read; {_REEXPORT}")
    if fmt != FORMAT or meta.get("version") != VERSION or not isinstance(meta.get("tensors"), dict):
        raise CheckpointError(f"{path}: not a model file of this metasd-dgl's export (format {fmt!r}, "
                              f"version {meta.get('version') if fmt else None!r}); {_REEXPORT}")
    return meta, handle


def read_model(path: str | Path, expect: Optional[Dict[str, Tuple[int, ...]]] = None,
               check: Callable[[Dict[str, Any]], None] = lambda meta: None,
               ) -> Tuple[ParamDict, MaskDict, Dict[str, Any]]:
    """A model file -> (``{name: float32 full-width tensor}``, ``{name: bool mask}`` of the compact
    tensors, metadata).  ``check(metadata)`` runs first; ``expect``: ``{name: shape}`` of the run's
    model, against which every part is checked before it is read (without it the file's own shapes
    are trusted: only for files this process wrote)."""
    path = Path(path)
    meta, handle = _open(path)
    check(meta)
    tensors = meta["tensors"]
    if expect is None:
        expect = {n: tuple(int(d) for d in e.get("shape", [])) for n, e in tensors.items() if isinstance(e, dict)}
    missing, extra = sorted(set(expect) - set(tensors)), sorted(set(tensors) - set(expect))
    if missing or extra:
        which = f"lacks {missing[0]!r}" if missing else f"holds {extra[0]!r}, which this run's model does not have"
        raise CheckpointError(f"{path}: {which}: it is another model's file; export this run's with "
                              "metasd-dgl export RUN_DIR")
    params: ParamDict = {}
    masks: MaskDict = {}
    with handle as f:
        for name, shape in expect.items():
            entry = tensors[name] if isinstance(tensors[name], dict) else {}
            params[name], mask = decode_tensor(f, name, entry, tuple(shape), f"{path}: {name}")
            if mask is not None:
                masks[name] = mask
    return params, masks, meta


# --------------------------------------------------------- a run's model, stored
def model_identity(cfg) -> Dict[str, Any]:
    """What makes two models the same shape: encoder, decoder, dim (and the R-GCN's layers and bases)."""
    m = cfg.model
    out = {"encoder": m.encoder, "decoder": m.decoder, "dim": int(m.dim)}
    if m.encoder == "rgcn":
        r = getattr(cfg, "rgcn", m)
        out.update(num_layers=r.num_layers, num_bases=r.num_bases, decomposition=r.decomposition)
    return out


def run_meta(cfg, data, role: str, ckpt: Optional[dict] = None) -> Dict[str, Any]:
    """The metadata of a run's teacher or student file: model, dataset identity, source epoch."""
    from metasd_dgl.data.fingerprint import dataset_fingerprint

    meta = {"role": role, "model": model_identity(cfg), "dataset": {
        "fingerprint": dataset_fingerprint(data), "num_entities": int(data.num_entities),
        "num_relations": int(data.num_relations)}, "epoch": ((ckpt or {}).get("state") or {}).get("epoch")}
    if role == "student":
        meta.update(structure=cfg.prune.structure, prune_rate=cfg.prune.rate)
    return meta


def export_run_files(cfg, data, model, student: Optional[ParamDict], ckpt: dict, out: Path,
                     schemes, roles=("teacher", "student")) -> Dict[str, Dict[str, Any]]:
    """Write ``out/file_name(role, scheme)`` of a loaded run (``stages.load_run``) for each scheme;
    -> ``{file name: {role, scheme, bytes, params, nonzero, epoch}}``.  No student file without one."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    files: Dict[str, Dict[str, Any]] = {}
    for role in roles:
        if role == "student" and not student:
            continue
        weights, masks = (params, None) if role == "teacher" else (student, ckpt.get("masks"))
        nonzero = sum(int(torch.count_nonzero(masks[n])) if masks and n in masks else p.numel()
                      for n, p in weights.items())
        for scheme in dict.fromkeys(schemes):
            size = write_model(weights, Path(out) / file_name(role, scheme), scheme, run_meta(cfg, data, role, ckpt),
                               masks if role == "student" else None)
            files[file_name(role, scheme)] = {"role": role, "scheme": scheme, "bytes": size, "nonzero": nonzero,
                                              "params": sum(p.numel() for p in weights.values()),
                                              "checkpoint": ckpt.get("path"), "epoch": (ckpt.get("state") or {}).get("epoch")}
    return files


def check_fits(meta: Dict[str, Any], cfg, data, path: str | Path) -> None:
    """CheckpointError unless the file's dataset is ``data`` and its model is the run's (``cfg``)."""
    from metasd_dgl.data.fingerprint import dataset_fingerprint

    ds = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    for key in ("num_entities", "num_relations"):
        if ds.get(key) != getattr(data, key):
            raise CheckpointError(f"{path}: holds a model of {ds.get(key)} {key[4:]}, this run's dataset "
                                  f"({data.path}) has {getattr(data, key)}: it is another dataset's model")
    if ds.get("fingerprint") != dataset_fingerprint(data):
        raise CheckpointError(f"{path}: was written for another dataset than {data.path} (its entity/relation "
                              "names differ)")
    want, got = model_identity(cfg), meta.get("model")
    if got != want:
        diff = [k for k in want if not isinstance(got, dict) or got.get(k) != want[k]] or sorted(got or {})
        have = got.get(diff[0]) if isinstance(got, dict) else got
        raise CheckpointError(f"{path}: holds a model with {diff[0]}={str(have)[:40]}, this run's has "
                              f"{diff[0]}={want.get(diff[0])}: it is another model's file; export this run's "
                              "with metasd-dgl export RUN_DIR")


def load_for(path: str | Path, cfg, data, model) -> Tuple[ParamDict, MaskDict, Dict[str, Any]]:
    """A model file of the run (``cfg``, ``data``, ``model``): its dataset and model checked, then every
    tensor read against the shapes of ``model``'s parameters."""
    return read_model(path, {n: tuple(p.shape) for n, p in model.named_parameters()},
                      lambda meta: check_fits(meta, cfg, data, path))


def file_tables(path: str | Path, cfg, data, model) -> Tuple[Any, Tuple[Tensor, Tensor], Dict[str, Any]]:
    """-> (model, (entity, relation) float32 tables of the file's weights, metadata): what
    ``evaluation.rank_split(model, ..., tables=...)`` ranks."""
    from metasd_dgl.evaluate.ranking import encode_tables

    params, _, meta = load_for(path, cfg, data, model)
    graph = data.graph if cfg.model.encoder == "rgcn" else None
    return model, encode_tables(model, graph, params), meta


# --------------------------------------------------------- export folders
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listed(folder: Path) -> Tuple[Dict[str, Any], set]:
    """-> (the folder's manifest, the relative paths it lists: also an older version's flat
    ``*_file`` keys and their sidecars, and an older compress report's files)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    manifest = manifest if isinstance(manifest, dict) else {}
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    ours = {"manifest.json", *files}
    for key, value in manifest.items():
        if key.endswith("_file") and isinstance(value, str):
            ours |= {Path(value).name, Path(value).name + ".manifest.json"}
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        ours |= {"report.json", "report.png", *(str(v["file"]) for v in report["variants"])}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {**manifest, "files": files}, ours


def check_owned(folder: Path, command: str) -> Dict[str, Any]:
    """UserError naming what ``folder`` holds besides the files its manifest lists; -> its manifest."""
    manifest, ours = _listed(folder)
    foreign = []
    for root, dirs, names in os.walk(folder) if folder.is_dir() else ():
        rel = Path(root).relative_to(folder)
        for d in list(dirs):
            if not any(o.startswith(f"{(rel / d).as_posix()}/") for o in ours):
                foreign.append(f"{(rel / d).as_posix()}/")
                dirs.remove(d)
        foreign += [(rel / n).as_posix() for n in names if (rel / n).as_posix() not in ours]
    if foreign:
        shown = ", ".join(sorted(foreign)[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"{folder}: {command} replaces only the files its manifest.json lists, and this folder "
                        f"also holds {shown}; move them elsewhere and run it again (nothing was changed)")
    return manifest


@contextlib.contextmanager
def owned_folder(final: Path, command: str, manifest: Optional[Dict[str, Any]] = None,
                 keep_earlier: bool = False) -> Iterator[Path]:
    """Yield a staging folder that replaces ``final`` whole at the end (call with ``final``'s lock held).

    Refused, before anything is written, when ``final`` holds files its manifest does not list.  At
    the end ``manifest`` (the caller's facts; ``files``: entries of the files it wrote) is completed
    and written as ``manifest.json``: with ``keep_earlier`` the listed model files not written again
    are kept, and every file gets its bytes and sha256."""
    from metasd_dgl.store.atomic import replaced_folder

    manifest = {} if manifest is None else manifest
    old = check_owned(final, command)
    with replaced_folder(final) as out:
        yield out
        files = manifest.setdefault("files", {})
        for rel, entry in old["files"].items() if keep_earlier else ():
            src = final / rel
            if rel not in files and rel.endswith(".safetensors") and "/" not in rel and src.is_file():
                try:
                    os.link(src, out / rel)
                except OSError:
                    shutil.copy2(src, out / rel)
                files[rel] = entry
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            rel = path.relative_to(out).as_posix()
            if rel != "manifest.json" and "sha256" not in files.get(rel, {}):
                files[rel] = {**files.get(rel, {}), "bytes": path.stat().st_size, "sha256": _sha256(path)}
        manifest["files"] = dict(sorted(files.items()))
        atomic_write_json(out / "manifest.json", manifest)
