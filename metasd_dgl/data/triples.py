"""Triples: readers (TSV files, folders, ``.tar.gz`` archives, DGL-KE layouts,
built-in names) and the two helpers on id triples (``triple_keys``,
``reciprocal_queries``).

The readers return *string* triples (``RawKG``); ids are assigned later
by ``metasd_dgl.data.preprocess``.  Every problem with the input is a
``DataError`` whose message starts with the file (and line) at fault:
``path:LINE: expected 3 tab-separated fields, got K``, ``path:LINE: empty
field``, ``path:LINE: not UTF-8 text``, ``path: file not found``,
``path: no triples``.

Layouts (``fmt``):

* ``tsv``: ``train``/``valid``/``test`` with suffix ``.txt``, ``.tsv`` or
  none, one ``head<TAB>relation<TAB>tail`` per line (CR stripped, blank lines
  skipped).  A ``.tar.gz``/``.tgz``/``.tar`` holding such a folder (at any
  depth) is extracted safely into a scratch folder.
* ``raw_udd_hrt`` (DGL-KE): the same files, names in h, r, t order.  Read by
  DGL-KE's own ``KGDatasetUDDRaw``, which *writes* ``entities.tsv`` and
  ``relations.tsv`` into the folder it reads, so it is given a scratch copy
  (normalised: CR and blank lines removed, which DGL-KE does not handle);
  the input folder is never modified.
* ``udd_hrt`` (DGL-KE): ``entities.tsv`` and ``relations.tsv`` (``id<TAB>name``,
  ids 0..n-1; ``.dict`` also accepted) plus integer triple files.  DGL-KE's
  ``KGDatasetUDD`` reads the integer triples but only *counts* the lines of the
  map files (it never returns the names) and reports bad input through
  ``assert``; so the maps and every triple line are validated here (file:line
  errors), the triples are then read by ``KGDatasetUDD`` from a scratch copy and
  checked equal.  The user's ids are kept (``RawKG.entities``/``relations``).
* hard negatives: a ``tsv``/``raw_udd_hrt`` folder (or archive) that also holds
  ``valid_negatives.txt`` and/or ``test_negatives.txt`` (CoDEx-S ships them:
  plausible triples verified false) has them read, with the same file:line
  errors, into ``RawKG.negatives``; ``named_ids`` maps such name triples to
  ids (``path:LINE: unknown entity 'x'``).
* ``auto``: ``udd_hrt`` when the folder has both map files and the first
  train line is three integers, else ``tsv``.

Built-in names (``metasd_dgl.data.registry``) win over a same-named relative folder;
write ``./umls`` to mean the folder.
"""
from __future__ import annotations

import contextlib
from collections import Counter
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from metasd_dgl.store.atomic import check_input_file, remove_stale, write_error
from metasd_dgl.data import registry
from metasd_dgl.errors import DataError, UserError, short
from metasd_dgl.typing import HEAD, REL, TAIL

StrTriple = Tuple[str, str, str]
SPLITS = ("train", "valid", "test")
FORMATS = ("auto", "tsv", "raw_udd_hrt", "udd_hrt")
_SUFFIXES = (".txt", ".tsv", "")
_ENTITY_MAPS = ("entities.tsv", "entities.dict")
_RELATION_MAPS = ("relations.tsv", "relations.dict")
_ARCHIVES = (".tar.gz", ".tgz", ".tar")


@dataclass
class NamedTriples:
    """Name triples read from ``path`` with the line number of each (for error messages)."""

    path: Path
    triples: List[StrTriple]
    lines: List[int]


@dataclass
class RawKG:
    """String triples of the three splits and where they came from."""

    train: List[StrTriple]
    valid: List[StrTriple]
    test: List[StrTriple]
    source: str  # one-line description, e.g. "built-in umls from data_dir: /x/umls.tar.gz"
    format: str = "tsv"  # layout actually read: tsv | raw_udd_hrt | udd_hrt
    input_sha256: Dict[str, str] = field(default_factory=dict)  # input file -> sha256
    builtin: Optional[str] = None  # canonical built-in name, if one
    entities: Optional[List[str]] = None  # fixed id order (udd_hrt), else None
    relations: Optional[List[str]] = None
    negatives: Dict[str, NamedTriples] = field(default_factory=dict)  # "valid"/"test" -> hard negatives

    def splits(self) -> Dict[str, List[StrTriple]]:
        """``{"train": ..., "valid": ..., "test": ...}``."""
        return {"train": self.train, "valid": self.valid, "test": self.test}


#: Longest line accepted (bytes): a triple line is short; a longer one means the file is no triples
#: file (e.g. a 2 GB single line), which is refused after reading this much, not loaded whole.
MAX_LINE_BYTES = 1 << 20


def _text_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, UTF-8 text without the newline) of each line, streamed; DataError for a
    missing file, a line that is not UTF-8, or one longer than ``MAX_LINE_BYTES``."""
    if os.path.lexists(path):  # a FIFO or a device would block or never end
        try:
            check_input_file(path, "dataset file")
        except UserError as exc:
            raise DataError(str(exc)) from None
    try:
        fh = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DataError(f"{path}: file not found") from None
    with fh:
        number = 0
        while True:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{number}: line longer than {MAX_LINE_BYTES >> 20} MiB; not a file of "
                                "head<TAB>relation<TAB>tail lines (is it the right file, or compressed?)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{number}: not UTF-8 text") from None
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield number, text.rstrip("\n")


def _read_rows(path: Path, ncols: int, what: str) -> Tuple[List[Tuple[str, ...]], List[int]]:
    """Parse a tab-separated file into rows of ``ncols`` non-empty fields and their line numbers."""
    rows: List[Tuple[str, ...]] = []
    lines: List[int] = []
    for number, line in _text_lines(path):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != ncols:
            raise DataError(f"{path}:{number}: expected {ncols} tab-separated fields, got {len(fields)}")
        if any(not f.strip() for f in fields):
            raise DataError(f"{path}:{number}: empty field")
        rows.append(tuple(fields))
        lines.append(number)
    if not rows:
        raise DataError(f"{path}: no {what}")
    return rows, lines


def read_tsv(path: Union[str, Path]) -> List[StrTriple]:
    """Read ``head<TAB>relation<TAB>tail`` lines (UTF-8; CR stripped; blank lines skipped)."""
    rows, _ = _read_rows(Path(path), 3, "triples")
    return rows  # type: ignore[return-value]


def read_named(path: Union[str, Path]) -> NamedTriples:
    """``read_tsv`` keeping each triple's line number."""
    rows, lines = _read_rows(Path(path), 3, "triples")
    return NamedTriples(Path(path), rows, lines)  # type: ignore[arg-type]


def named_ids(named: NamedTriples, entities: List[str], relations: List[str]) -> np.ndarray:
    """(n, 3) int64 ids of ``named`` under the id maps; an unknown name is ``path:LINE: unknown ...``."""
    import pandas as pd

    arr = np.array(named.triples, dtype=object).reshape(-1, 3)
    ent, rel = pd.Index(entities), pd.Index(relations)
    ids = np.stack([ent.get_indexer(arr[:, 0]), rel.get_indexer(arr[:, 1]), ent.get_indexer(arr[:, 2])], axis=1)
    bad = np.argwhere(ids < 0)
    if len(bad):
        i, j = bad[0]
        kind = "relation" if j == 1 else "entity"
        raise DataError(f"{named.path}:{named.lines[i]}: unknown {kind} {arr[i, j]!r} (not in the dataset)")
    return ids.astype(np.int64)


def _read_negatives(folder: Path) -> Dict[str, NamedTriples]:
    """``{split: hard negatives}`` for each ``<split>_negatives`` file the folder holds."""
    out: Dict[str, NamedTriples] = {}
    for split in ("valid", "test"):
        path = _find(folder, tuple(f"{split}_negatives{s}" for s in _SUFFIXES))
        if path is not None:
            out[split] = read_named(path)
    return out


def _find(folder: Path, names: Tuple[str, ...]) -> Optional[Path]:
    """First of ``folder/name`` that is there and not a folder (a FIFO or device is found, then refused
    when read, saying what it is), or None."""
    return next((folder / n for n in names if os.path.lexists(folder / n) and not (folder / n).is_dir()), None)


def split_files(folder: Path) -> Dict[str, Path]:
    """``{split: path}`` for train/valid/test (``.txt``, ``.tsv`` or no suffix)."""
    found: Dict[str, Path] = {}
    for split in SPLITS:
        path = _find(folder, tuple(split + s for s in _SUFFIXES))
        if path is None:
            raise DataError(f"{folder}: missing split '{split}' (expected {split}.txt or {split}.tsv)")
        found[split] = path
    return found


def _input_hashes(path: Path) -> Dict[str, str]:
    """sha256 of an archive, or of a folder's split and map files (names relative)."""
    if path.is_file():
        return {path.name: registry.sha256_file(path)}
    names = [s + x for s in SPLITS + ("valid_negatives", "test_negatives") for x in _SUFFIXES] \
        + list(_ENTITY_MAPS + _RELATION_MAPS)
    return {n: registry.sha256_file(path / n) for n in names if (path / n).is_file()}


def detect_format(folder: Path) -> str:
    """``udd_hrt`` if both id maps exist and train's first line is integers, else ``tsv``."""
    if _find(folder, _ENTITY_MAPS) is None or _find(folder, _RELATION_MAPS) is None:
        return "tsv"
    rows, _ = _read_rows(split_files(folder)["train"], 3, "triples")
    return "udd_hrt" if all(f.strip().lstrip("-").isdigit() for f in rows[0]) else "tsv"


def _write_copy(folder: Path, name: str, rows: List[Tuple[str, ...]]) -> None:
    (folder / name).write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def _dglke_reader(kind: str, folder: Path, files: List[str]):  # -> dglke KGDataset
    """Run DGL-KE's ``KGDatasetUDDRaw``/``KGDatasetUDD`` quietly on a scratch copy."""
    from dglke.dataloader.KGDataset import KGDatasetUDD, KGDatasetUDDRaw

    cls = KGDatasetUDDRaw if kind == "raw_udd_hrt" else KGDatasetUDD
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cls(str(folder), kind, "\t", files, "hrt")
    except (AssertionError, KeyError, ValueError, IndexError) as exc:
        raise DataError(f"{folder}: DGL-KE's {kind} reader failed: {exc!r}") from None


def _as_names(names: np.ndarray, h: np.ndarray, r: np.ndarray, t: np.ndarray,
              rel_names: np.ndarray) -> List[StrTriple]:
    """Integer columns -> list of name triples (vectorised lookups)."""
    return list(zip(names[h].tolist(), rel_names[r].tolist(), names[t].tolist()))


def _read_raw_udd(folder: Path, work: Path) -> Dict[str, List[StrTriple]]:
    files = split_files(folder)
    parsed = {s: read_tsv(p) for s, p in files.items()}  # validation with file:line errors
    copy = work / "raw_udd_hrt"
    copy.mkdir()
    for split, rows in parsed.items():
        _write_copy(copy, f"{split}.tsv", rows)  # type: ignore[arg-type]
    ds = _dglke_reader("raw_udd_hrt", copy, [f"{s}.tsv" for s in SPLITS])
    ents = np.empty(len(ds.entity2id), dtype=object)
    ents[list(ds.entity2id.values())] = list(ds.entity2id.keys())
    rels = np.empty(len(ds.relation2id), dtype=object)
    rels[list(ds.relation2id.values())] = list(ds.relation2id.keys())
    out = {s: _as_names(ents, *getattr(ds, s), rel_names=rels) for s in SPLITS}
    if out != parsed:  # e.g. DGL-KE opened the copy with a non-UTF-8 locale encoding
        raise DataError(f"{folder}: DGL-KE's raw_udd_hrt reader disagrees with the files; use format tsv")
    return out


def _read_map(path: Path) -> List[str]:
    """``id<TAB>name`` lines with ids exactly 0..n-1 -> names in id order."""
    rows, lines = _read_rows(path, 2, "entries")
    names: List[Optional[str]] = [None] * len(rows)
    for (raw_id, name), line in zip(rows, lines):
        if not raw_id.strip().isdigit() or int(raw_id) >= len(rows):
            raise DataError(f"{path}:{line}: expected 'id<TAB>name' with id in 0..{len(rows) - 1}, "
                            f"got id {raw_id!r}")
        if names[int(raw_id)] is not None:
            raise DataError(f"{path}:{line}: id {int(raw_id)} given twice")
        names[int(raw_id)] = name
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a name is given two ids")
    return names  # type: ignore[return-value]


def _int_triples(path: Path, num_entities: int, num_relations: int) -> np.ndarray:
    """Validated (n, 3) int64 ids of an integer triple file."""
    rows, lines = _read_rows(path, 3, "triples")
    text = np.array(rows)
    ok = np.char.isdigit(np.char.strip(text))
    if not ok.all():
        i, j = np.argwhere(~ok)[0]
        raise DataError(f"{path}:{lines[i]}: expected non-negative integer ids, got {rows[i][j]!r}")
    ids = text.astype(np.int64)
    bad = (ids[:, [0, 2]] >= num_entities).any(axis=1) | (ids[:, 1] >= num_relations)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}:{lines[i]}: id out of range (entities 0..{num_entities - 1}, "
                        f"relations 0..{num_relations - 1})")
    return ids


def _read_udd(folder: Path, work: Path) -> Tuple[Dict[str, List[StrTriple]], List[str], List[str]]:
    files = split_files(folder)
    emap, rmap = _find(folder, _ENTITY_MAPS), _find(folder, _RELATION_MAPS)
    if emap is None or rmap is None:
        raise DataError(f"{folder}: udd_hrt needs entities.tsv and relations.tsv ('id<TAB>name')")
    entities, relations = _read_map(emap), _read_map(rmap)
    ours = {s: _int_triples(p, len(entities), len(relations)) for s, p in files.items()}
    copy = work / "udd_hrt"
    copy.mkdir()
    _write_copy(copy, "entities.tsv", [(str(i), n) for i, n in enumerate(entities)])
    _write_copy(copy, "relations.tsv", [(str(i), n) for i, n in enumerate(relations)])
    for split, ids in ours.items():
        _write_copy(copy, f"{split}.tsv", [tuple(map(str, row)) for row in ids.tolist()])
    ds = _dglke_reader("udd_hrt", copy, ["entities.tsv", "relations.tsv"] + [f"{s}.tsv" for s in SPLITS])
    ents, rels = np.array(entities, dtype=object), np.array(relations, dtype=object)
    out: Dict[str, List[StrTriple]] = {}
    for split in SPLITS:
        h, r, t = getattr(ds, split)
        if not np.array_equal(np.stack([h, r, t], axis=1), ours[split]):
            raise DataError(f"{files[split]}: DGL-KE's udd_hrt reader disagrees with the file")
        out[split] = _as_names(ents, h, r, t, rel_names=rels)
    return out, entities, relations


def read_folder(folder: Path, fmt: str, work: Path) -> RawKG:
    """Read a folder in layout ``fmt`` (see module docstring); ``work`` is scratch space."""
    layout = detect_format(folder) if fmt == "auto" else fmt
    entities = relations = None
    if layout == "tsv":
        splits = {s: read_tsv(p) for s, p in split_files(folder).items()}
    elif layout == "raw_udd_hrt":
        splits = _read_raw_udd(folder, work)
    else:
        splits, entities, relations = _read_udd(folder, work)
    negatives = _read_negatives(folder) if layout != "udd_hrt" else {}
    return RawKG(splits["train"], splits["valid"], splits["test"], f"{layout} folder {folder}",
                 layout, _input_hashes(folder), None, entities, relations, negatives)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    """Copy one member to ``target``; a failed *write* (full disk, file-size limit) names the
    scratch file and the cause -- the archive is not to blame."""
    src = tar.extractfile(member)
    if src is None:
        raise tarfile.ExtractError(f"member {member.name!r} has no data")
    doing = "could not extract the archive into the scratch folder (TMPDIR chooses where it goes)"
    with src:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(target, "wb")
        except OSError as exc:
            raise write_error(target, exc, doing) from None
        with out:
            while True:
                block = src.read(1 << 20)  # a read error is the archive's (caught by the caller)
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as exc:
                    raise write_error(target, exc, doing) from None
            try:
                out.flush()
            except OSError as exc:
                raise write_error(target, exc, doing) from None


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract regular files of a tar archive into ``dest``; return the folder holding train.

    Absolute member paths, ``..`` components and links are rejected (DataError).
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.name.startswith(("/", "\\")) or Path(member.name).is_absolute() or ".." in parts:
                    raise DataError(f"{archive}: unsafe member path {member.name!r}")
                if member.issym() or member.islnk() or member.isdev():
                    raise DataError(f"{archive}: member {member.name!r} is a link or device")
                if member.isfile():
                    target = dest.joinpath(*parts)
                    _extract_member(tar, member, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: not a readable tar archive ({exc})") from None
    homes = sorted({p.parent for s in _SUFFIXES for p in dest.rglob("train" + s) if p.is_file()})
    if not homes:
        raise DataError(f"{archive}: no train.txt/valid.txt/test.txt inside")
    if len(homes) > 1:
        raise DataError(f"{archive}: several folders hold a train split: "
                        + ", ".join(str(h.relative_to(dest)) for h in homes))
    return homes[0]


def _looks_like_path(source: str) -> bool:
    return any(c in source for c in "/\\") or source.startswith((".", "~")) or \
        source.endswith(_ARCHIVES + (".txt", ".tsv"))


@contextlib.contextmanager
def _scratch(workdir: Optional[Path]) -> Iterator[Path]:
    """A scratch folder ``metasd-read-PID-XXXX``, removed on every exit path; those of killed
    processes (pid no longer running) are removed first."""
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    remove_stale(workdir if workdir is not None else tempfile.gettempdir(), "metasd-read-*")
    try:
        path = Path(tempfile.mkdtemp(prefix=f"metasd-read-{os.getpid()}-", dir=workdir))
    except OSError as exc:
        raise write_error(workdir if workdir is not None else tempfile.gettempdir(), exc,
                          "could not create a scratch folder") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_source(source: Union[str, Path], data_dir: Optional[Path] = None, fmt: str = "auto",
                workdir: Optional[Path] = None) -> RawKG:
    """Read a built-in name, a folder, or a tar archive into string triples.

    ``data_dir`` is where built-in archives are looked for first (see
    ``metasd_dgl.data.registry.resolve``); ``workdir`` hosts a scratch folder that is
    removed before returning (default: the system temp folder).
    """
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    text = str(source)
    entry = None if isinstance(source, Path) or _looks_like_path(text) else registry.lookup(text)
    with _scratch(workdir) as work:
        if entry is not None:
            if fmt not in ("auto", "tsv"):
                raise DataError(f"{text}: built-in datasets are TSV; format {fmt!r} does not apply")
            found = registry.resolve(entry.name, data_dir)
            if found.kind == "archive":
                raw = read_folder(extract_archive(found.path, work / "archive"), "tsv", work)
            else:
                raw = read_folder(found.path, "tsv", work)
            raw.source, raw.input_sha256, raw.builtin = found.describe(), found.input_sha256, entry.name
            return raw
        path = Path(text).expanduser()
        if path.is_dir():
            return read_folder(path, fmt, work)
        if path.is_file():
            if not path.name.endswith(_ARCHIVES):
                raise DataError(f"{path}: not a folder or a .tar.gz archive")
            raw = read_folder(extract_archive(path, work / "archive"), fmt, work)
            raw.source, raw.input_sha256 = f"{raw.format} archive {path}", _input_hashes(path)
            return raw
        if os.path.lexists(path):  # neither a folder nor a regular file: say what it is
            try:
                check_input_file(path, "dataset archive")
            except UserError as exc:
                raise DataError(str(exc)) from None
        if _looks_like_path(text):
            raise DataError(f"{path}: file not found")
        raise DataError(f"{short(text) if len(text) > 200 else text}: not a built-in dataset ({', '.join(registry.known_names())}) "
                        "nor an existing file or folder")


def source_identity(source: Union[str, Path], fmt: str = "auto") -> Dict[str, object]:
    """Cheap identity of a source, without parsing it: ``{"key", "input_sha256"}``.

    Built-ins are pinned by the registry, so their key suffices
    (``input_sha256`` None); paths are identified by the sha256 of their files.
    """
    text = str(source)
    entry = None if isinstance(source, Path) or _looks_like_path(text) else registry.lookup(text)
    if entry is not None:
        return {"key": f"builtin:{entry.name}", "input_sha256": None}
    path = Path(text).expanduser().resolve()
    hashes = _input_hashes(path) if path.exists() else {}
    return {"key": f"path:{path}:{fmt}", "input_sha256": hashes}


# ------------------------------------------------------------------ id triples
IdTriples = Union[torch.Tensor, np.ndarray]


def triple_keys(triples: IdTriples, num_entities: int, num_relations: int) -> IdTriples:
    """(n, 3) ``[h, r, t]`` ids (tensor or int64 array) -> (n,) int64 key ``(h * R + r) * N + t``.

    One key per distinct triple for relations in ``[0, R)`` (pass ``2R`` for
    reciprocal facts); keys sort like the triples (by head, relation, tail).
    """
    if isinstance(triples, torch.Tensor):
        triples = triples.long()
    return (triples[:, HEAD] * num_relations + triples[:, REL]) * num_entities + triples[:, TAIL]


def reciprocal_queries(triples: torch.Tensor, num_relations: int) -> torch.Tensor:
    """(n, 3) triples -> (2n, 3) tail queries: the n originals, then (t, r+R, h)."""
    inverse = torch.stack(
        [triples[:, TAIL], triples[:, REL] + num_relations, triples[:, HEAD]], dim=1
    )
    return torch.cat([triples, inverse], dim=0)


#: Words of a header line (``head<TAB>relation<TAB>tail``, ``subject predicate object``, ...).
_HEADER_WORDS = frozenset({"head", "relation", "tail", "h", "r", "t", "subject", "predicate", "object", "s", "p",
                           "o", "source", "target", "rel", "edge", "src", "dst", "head_entity", "tail_entity",
                           "entity1", "entity2", "from", "to", "type", "label"})


def strip_name(name: str) -> str:
    """The one name policy of files, ``predict --head/--tail`` and ``--queries``: surrounding whitespace
    (spaces, tabs' neighbours, no-break spaces, ...) is not part of a name."""
    return name.strip()


def normalise_names(raw: RawKG) -> List[str]:
    """Apply ``strip_name`` to every name of ``raw`` (in place; a dataset read through id maps keeps its
    names), and return warnings, with counts, about: names that had surrounding whitespace (and how
    many of them became one with another name), names that differ from another only by case (kept
    distinct), and a first line of a split that looks like a header (read as a triple)."""
    warnings: List[str] = []
    for split, rows in raw.splits().items():
        if rows and sum(f.strip().lower() in _HEADER_WORDS for f in rows[0]) >= 2:
            warnings.append(f"{split}: the first line {' '.join(rows[0])!r} looks like a header; it was read as "
                            "a triple: remove it from the file if it is one")
    if raw.entities is None and raw.relations is None:
        for kind, cols in (("entity", (0, 2)), ("relation", (1,))):
            names = {x[c] for rows in raw.splits().values() for x in rows for c in cols}
            padded = {n for n in names if strip_name(n) != n}
            if padded:
                plain, stripped = names - padded, Counter(strip_name(n) for n in padded)
                merged = sum(1 for n in padded if strip_name(n) in plain or stripped[strip_name(n)] > 1)
                example = next(iter(sorted(padded)))
                warnings.append(f"{len(padded)} {kind} names had surrounding whitespace (e.g. {example!r}); it was "
                                f"stripped, which made {merged} of them the same {kind} as another spelling")
        strip = lambda x: (strip_name(x[0]), strip_name(x[1]), strip_name(x[2]))  # noqa: E731
        raw.train, raw.valid, raw.test = ([strip(x) for x in rows] for rows in (raw.train, raw.valid, raw.test))
        for named in raw.negatives.values():
            named.triples = [strip(x) for x in named.triples]
    for kind, cols in (("entity", (0, 2)), ("relation", (1,))):
        names = ({x[c] for rows in raw.splits().values() for x in rows for c in cols} if raw.entities is None
                 else set(raw.entities if kind == "entity" else raw.relations or []))
        folded = Counter(n.casefold() for n in names)
        clashes = sorted(n for n in names if folded[n.casefold()] > 1)
        if clashes:
            groups = sum(1 for k in folded.values() if k > 1)
            warnings.append(f"{len(clashes)} {kind} names differ from another only by case, in {groups} groups "
                            f"(e.g. {', '.join(repr(n) for n in clashes[:2])}); they are kept as distinct "
                            f"{'entities' if kind == 'entity' else 'relations'}")
    return warnings
