"""Stored models: one safetensors file per role and scheme, and the folders that hold them.

Names (``file_name``): ``teacher.safetensors``, ``student.safetensors`` (fp32), else
``<role>.<scheme>.safetensors`` (``teacher.fp16.safetensors``, ``student.int8.safetensors``...).  The
teacher is stored dense, the student as its kept columns or values and their index (``quantize.py``).
The string metadata ``metasd`` holds JSON: format, version, role, scheme, the model (encoder, decoder,
dim, R-GCN shape), the dataset (entity and relation counts, fingerprint), the source epoch and per
tensor its shape, layout and encoding.  safetensors checks every offset and shape against the file;
the reader checks, before reading any part, what it cannot know: a regular file of this format, the
run's model and dataset, every part's dtype and shape against the run's model, finite positive
scales.  Older ``.msd``/``.msq`` files get one line saying to re-export.

``RUN/export`` and ``RUN/compress`` are replaced whole under their lock (``owned_folder``); their
``manifest.json`` lists every file with its bytes and sha256; a folder holding anything it does not
list is refused, naming it.  ``export`` keeps the variants written earlier.  A sha256 shows that a
file is unchanged; it is not a signature: whoever edits a file can recompute it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor

from metasd_dgl.data.registry import sha256_file
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
    tensors, entries = {}, {}
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
        if stat.S_ISREG(mode):  # (a FIFO or a device is never opened)
            with open(path, "rb") as fh:
                magic = fh.read(8)
    except OSError as exc:
        why = "file not found" if isinstance(exc, FileNotFoundError) else f"cannot read ({exc.strerror or exc})"
        raise CheckpointError(f"{path}: {why}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket or other special file")
        raise CheckpointError(f"{path}: is {kind}, not a regular file; pass a model file of metasd-dgl export")
    if magic == b"MSDQUANT" or path.suffix in (".msd", ".msq"):
        raise CheckpointError(f"{path}: an .msd/.msq file of an older metasd-dgl, no longer read; {_REEXPORT}")
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")
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
    """A model file -> (``{name: float32 full-width tensor}``, ``{name: bool mask}`` of the compact tensors,
    metadata).  ``check(metadata)`` runs first; every part is checked against ``expect`` (``{name: shape}``
    of the run's model) before it is read; without it the file's shapes are trusted (files just written)."""
    path = Path(path)
    meta, handle = _open(path)
    check(meta)
    tensors = meta["tensors"]
    if expect is None:
        expect = {n: tuple(e.get("shape") or ()) for n, e in tensors.items() if isinstance(e, dict)}
    missing, extra = sorted(set(expect) - set(tensors)), sorted(set(tensors) - set(expect))
    if missing or extra:
        which = f"lacks {missing[0]!r}" if missing else f"holds {extra[0]!r}, which this run's model does not have"
        raise CheckpointError(f"{path}: {which}: it is another model's file; export this run's with "
                              "metasd-dgl export RUN_DIR")
    params, masks = {}, {}
    with handle as f:
        for name, shape in expect.items():
            entry = tensors[name] if isinstance(tensors[name], dict) else {}
            params[name], mask = decode_tensor(f, name, entry, tuple(shape), f"{path}: {name}")
            if mask is not None:
                masks[name] = mask
    return params, masks, meta


def model_identity(cfg) -> Dict[str, Any]:
    """What makes two models the same shape: encoder, decoder, dim (and the R-GCN's layers and bases)."""
    m, r = cfg.model, cfg.rgcn
    rgcn = {k: getattr(r, k) for k in ("num_layers", "num_bases", "decomposition")} if m.encoder == "rgcn" else {}
    return {"encoder": m.encoder, "decoder": m.decoder, "dim": int(m.dim), **rgcn}


def run_meta(cfg, data, role: str, epoch: Optional[int] = None) -> Dict[str, Any]:
    """The metadata of a run's teacher or student file: model, dataset identity, source epoch."""
    from metasd_dgl.data.fingerprint import dataset_fingerprint

    student = {"structure": cfg.prune.structure, "prune_rate": cfg.prune.rate} if role == "student" else {}
    return {"role": role, "model": model_identity(cfg), "dataset": {
        "fingerprint": dataset_fingerprint(data), "num_entities": int(data.num_entities),
        "num_relations": int(data.num_relations)}, "epoch": epoch, **student}


def export_run_files(cfg, data, model, student: Optional[ParamDict], ckpt: dict, out: Path,
                     schemes, roles=("teacher", "student")) -> Dict[str, Dict[str, Any]]:
    """Write ``out/file_name(role, scheme)`` of a loaded run (``stages.load_run``: the teacher from its own
    best) for each scheme; -> ``{file name: {role, scheme, bytes, params, nonzero, checkpoint, epoch}}``."""
    files: Dict[str, Dict[str, Any]] = {}
    for role in [r for r in roles if r == "teacher" or student]:
        weights = {n: p.detach() for n, p in model.named_parameters()} if role == "teacher" else student
        masks = ckpt.get("masks") if role == "student" else None
        own_best = role == "teacher" and ckpt.get("teacher_path")  # load_run's teacher file
        src, epoch = ((ckpt["teacher_path"], ckpt.get("teacher_epoch")) if own_best
                      else (ckpt.get("path"), (ckpt.get("state") or {}).get("epoch")))
        facts = {"role": role, "params": sum(p.numel() for p in weights.values()), "nonzero": sum(
            int(torch.count_nonzero(masks[n])) if masks and n in masks else p.numel() for n, p in weights.items()),
            "checkpoint": src, "epoch": epoch}
        for scheme in dict.fromkeys(schemes):
            size = write_model(weights, Path(out) / file_name(role, scheme), scheme, run_meta(cfg, data, role, epoch),
                               masks)
            files[file_name(role, scheme)] = {**facts, "scheme": scheme, "bytes": size}
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
    want = model_identity(cfg)
    got = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    for key in (k for k in want if got.get(k) != want[k]):
        raise CheckpointError(f"{path}: holds a model with {key}={str(got.get(key))[:40]}, this run's has "
                              f"{key}={want[key]}: it is another model's file; export this run's with "
                              "metasd-dgl export RUN_DIR")


def file_tables(path: str | Path, cfg, data, model) -> Tuple[Any, Tuple[Tensor, Tensor], Dict[str, Any]]:
    """A model file of the run (``cfg``, ``data``, ``model``), its dataset and model checked and every
    tensor read against ``model``'s shapes -> (model, (entity, relation) float32 tables, metadata):
    what ``evaluation.rank_split(model, ..., tables=...)`` ranks."""
    from metasd_dgl.evaluate.ranking import encode_tables

    params, _, meta = read_model(path, {n: tuple(p.shape) for n, p in model.named_parameters()},
                                 lambda meta: check_fits(meta, cfg, data, path))
    graph = data.graph if cfg.model.encoder == "rgcn" else None
    return model, encode_tables(model, graph, params), meta


def _listed(folder: Path) -> Tuple[Dict[str, Any], set]:
    """-> (manifest, the paths it lists; also an older export's ``*_file`` keys, an older report's files)."""
    try:
        manifest = dict(json.loads((folder / "manifest.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        manifest = {}
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
    """Yield a staging folder that replaces ``final`` whole (call with its lock held); refused first
    when ``final`` holds files its manifest does not list.  At the end ``manifest`` (the caller's facts,
    ``files`` those it wrote) gets, with ``keep_earlier``, the listed model files not written again,
    and every file's bytes and sha256, and is written as ``manifest.json``."""
    from metasd_dgl.store.atomic import replaced_folder

    manifest = {} if manifest is None else manifest
    old = check_owned(final, command)
    with replaced_folder(final) as out:
        yield out
        files = manifest.setdefault("files", {})
        for rel, entry in old["files"].items() if keep_earlier else ():
            src = final / rel
            if rel not in files and rel.endswith(".safetensors") and "/" not in rel and src.is_file():
                shutil.copy2(src, out / rel)
                files[rel] = entry
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            rel = path.relative_to(out).as_posix()
            if rel != "manifest.json" and "sha256" not in files.get(rel, {}):
                files[rel] = {**files.get(rel, {}), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        manifest["files"] = dict(sorted(files.items()))
        atomic_write_json(out / "manifest.json", manifest)
