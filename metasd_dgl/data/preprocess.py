"""Raw triples -> processed folder (ids, integer splits, DGL graph, filter, stats, manifest).

Processed folder layout (all written into a temporary sibling folder that is
renamed into place at the end; on any error it is removed, so no partial
output is ever left):

==================  ==========================================================
``entities.tsv``    ``id<TAB>name``, one line per entity, ids 0..N-1
``relations.tsv``   ``id<TAB>name``, ids 0..R-1 (inverses ``r + R`` not listed)
``train.npy``       (n, 3) int64 ``[h, r, t]``; also ``valid.npy``, ``test.npy``
``graph.bin``       ``dgl.save_graphs`` of ``metasd_dgl.graph.build.build_graph``
                    (only where DGL imports; see below)
``filter.npz``      ``FilterIndex.from_triples(train+valid+test).save``
``stats.json``      ``metasd_dgl.data.stats.summarize`` of the train triples
``*_negatives.npy`` (n, 3) int64 hard negatives of valid/test, only when the
                    source ships them (e.g. CoDEx-S); kept as given (no dedupe)
``manifest.json``   counts, policies, source, input and output sha256, version
==================  ==========================================================

Policies (recorded in the manifest):

* ids: order of first appearance over train, then valid, then test, head
  before tail within a line (deterministic); ``udd_hrt`` input keeps its ids;
* duplicates: a triple repeated *within* a split is counted and removed (first
  copy kept, order kept); triples shared *between* splits are counted and kept;
* unseen entities: valid/test triples with an entity absent from train are
  kept and ranked like any other (the common protocol), and counted;
* unseen relations: valid/test triples whose relation never occurs in train
  are counted too (``unseen_relations``); what evaluation does with unseen
  triples is ``metasd_dgl.evaluate.unseen``'s policy, stated on the console and in
  ``eval/<split>.json``;
* graph: ``graph.bin`` is written when DGL can be imported; without DGL
  (e.g. a torch newer than DGL's wheels) it is skipped and the manifest's
  ``graph`` says so.  Only the R-GCN encoder and negative sampling need the
  graph; ``KGData.graph`` builds it from ``train.npy`` (with DGL, at that
  moment) for a folder written without it, so such a folder works later with
  DGL too, and nothing in the folder changes.

Writers: one process at a time writes a processed folder (the sibling lock
``.OUT.lock``, ``metasd_dgl.store.lock``; a second one gets one ``error:`` line
naming the holder's pid).  Temporaries of a killed run (``.OUT.tmp-*``,
``.OUT.old-*``, the system temp folder's ``metasd-read-PID-*``) are removed
by the next run.  A failed write (full disk, file-size limit, read-only
folder) is one line naming the file and the cause; the old folder is kept.
``--force`` replaces only a folder whose files are all listed in its manifest
(the files this project wrote); anything else there makes it refuse.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from metasd_dgl.data import registry
from metasd_dgl import __version__
from metasd_dgl.store.atomic import diagnose, recover_folder, staging_folder, publish_folder, write_error
from metasd_dgl.data import stats as kgstats
from metasd_dgl.data.filters import FilterIndex
from metasd_dgl.data.triples import (SPLITS, RawKG, named_ids, normalise_names, read_source, source_identity,
                                     triple_keys)
from metasd_dgl.errors import DataError
from metasd_dgl.graph.build import build_graph, load_graph, save_graph
from metasd_dgl.graph.dgl_import import dgl_available, require_dgl
from metasd_dgl.store.lock import folder_lock

MANIFEST_VERSION = 1
_CHECKED = ("entities.tsv", "relations.tsv", "train.npy", "valid.npy", "test.npy", "stats.json")


def _factorize(seq: np.ndarray) -> Tuple[np.ndarray, List[str]]:
    """Values -> (ids numbered in order of first appearance, the distinct values in that order)."""
    uniq, first, inverse = np.unique(seq, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inverse.reshape(-1)], [str(x) for x in uniq[order]]


def _lookup(names: List[str], seq: np.ndarray) -> np.ndarray:
    """Ids of ``seq`` in ``names`` (-1 where absent)."""
    index = {name: i for i, name in enumerate(names)}
    return np.fromiter((index.get(x, -1) for x in seq), dtype=np.int64, count=len(seq))


def encode(raw: RawKG) -> Tuple[List[str], List[str], Dict[str, np.ndarray]]:
    """Names -> ids (policy in the module docstring); returns names and (n, 3) int64 per split.

    numpy only (no pandas), so that preprocessing runs where only torch and numpy are installed."""
    arrays = {s: np.array(rows, dtype=object).reshape(-1, 3) for s, rows in raw.splits().items()}
    ent_seq = np.concatenate([a[:, [0, 2]].ravel() for a in arrays.values()])  # h0 t0 h1 t1 ...
    rel_seq = np.concatenate([a[:, 1] for a in arrays.values()])
    if raw.entities is not None and raw.relations is not None:
        entities, relations = list(raw.entities), list(raw.relations)
        ent_ids, rel_ids = _lookup(entities, ent_seq), _lookup(relations, rel_seq)
        if (ent_ids < 0).any() or (rel_ids < 0).any():
            raise DataError(f"{raw.source}: a triple names an entity or relation missing from the id maps")
    else:
        ent_ids, entities = _factorize(ent_seq)
        rel_ids, relations = _factorize(rel_seq)
    out: Dict[str, np.ndarray] = {}
    start = 0
    for split, arr in arrays.items():
        n = len(arr)
        ht = np.asarray(ent_ids[2 * start: 2 * (start + n)], dtype=np.int64).reshape(n, 2)
        r = np.asarray(rel_ids[start: start + n], dtype=np.int64)
        out[split] = np.stack([ht[:, 0], r, ht[:, 1]], axis=1)
        start += n
    return entities, relations, out


def dedupe(ids: np.ndarray, n_ent: int, n_rel: int) -> Tuple[np.ndarray, int]:
    """Drop repeated triples (first copy kept, order kept); return kept rows and the number dropped."""
    _, first = np.unique(triple_keys(ids, n_ent, n_rel), return_index=True)
    keep = np.sort(first)
    return ids[keep], len(ids) - len(keep)


def _sha(path: Path) -> str:
    return registry.sha256_file(path)


def _write_names(path: Path, names: List[str]) -> None:
    path.write_text("".join(f"{i}\t{n}\n" for i, n in enumerate(names)), encoding="utf-8")


def _check_published(raw: RawKG, raw_counts: Dict[str, int], n_ent: int, n_rel: int) -> Optional[bool]:
    if raw.builtin is None:
        return None
    expected = registry.get(raw.builtin).counts()
    got = dict(raw_counts, entities=n_ent, relations=n_rel)
    if got != expected:
        raise DataError(f"{raw.source}: counts {got} differ from the published {expected}")
    want = registry.get(raw.builtin).negatives
    have = {s: len(n.triples) for s, n in raw.negatives.items()}
    if have != want:
        raise DataError(f"{raw.source}: hard negatives {have} differ from the published {want}")
    return True


def _put(tmp: Path, name: str, writer, final: Optional[Path], kept: bool) -> None:
    """``writer(tmp / name)``; a failed write is a WriteError naming ``final / name`` and its cause."""
    try:
        writer(tmp / name)
    except Exception as exc:
        cause = diagnose(tmp / name, exc)
        if cause is None:
            raise
        note = f"the previous {final} is kept" if kept else f"nothing was written to {final}" if final else ""
        raise write_error((final or tmp) / name, cause, note=note) from None


def _save_graph_checked(graph, path: Path) -> None:
    """``save_graph`` read back: DGL's writer reports some failed writes (a file-size limit) by
    silently truncating the file, so a file that does not load whole is a failed write."""
    save_graph(graph, path)
    try:
        back = load_graph(path)
        whole = back.num_nodes() == graph.num_nodes() and back.num_edges() == graph.num_edges()
    except DataError:
        whole = False
    if not whole:
        raise DataError(f"{path}: DGL's save_graphs wrote an incomplete file")


def _build(raw: RawKG, tmp: Path, identity: Dict[str, Any], spec: str, num_buckets: int,
           final: Optional[Path] = None, kept: bool = False) -> None:
    """Write every output file of the processed folder into ``tmp`` (``final``: where it goes, for messages)."""
    def put(name: str, writer) -> None:
        _put(tmp, name, writer, final, kept)

    entities, relations, ids = encode(raw)
    n_ent, n_rel = len(entities), len(relations)
    raw_counts = {s: len(ids[s]) for s in SPLITS}
    published = _check_published(raw, raw_counts, n_ent, n_rel)
    dups: Dict[str, int] = {}
    for split in SPLITS:
        ids[split], dups[split] = dedupe(ids[split], n_ent, n_rel)
    keys = {s: triple_keys(ids[s], n_ent, n_rel) for s in SPLITS}
    in_train = np.zeros(n_ent, dtype=bool)
    in_train[ids["train"][:, [0, 2]].ravel()] = True
    unseen = {s: int((~in_train[ids[s][:, 0]] | ~in_train[ids[s][:, 2]]).sum()) for s in ("valid", "test")}
    rel_in_train = np.zeros(n_rel, dtype=bool)
    rel_in_train[ids["train"][:, 1]] = True
    unseen_rel = {s: int((~rel_in_train[ids[s][:, 1]]).sum()) for s in ("valid", "test")}

    put("entities.tsv", lambda p: _write_names(p, entities))
    put("relations.tsv", lambda p: _write_names(p, relations))
    for split in SPLITS:
        put(f"{split}.npy", lambda p, a=ids[split]: np.save(p, np.ascontiguousarray(a, dtype=np.int64)))
    negatives = {s: named_ids(n, entities, relations) for s, n in raw.negatives.items()}
    for split, neg in negatives.items():
        put(f"{split}_negatives.npy", lambda p, a=neg: np.save(p, np.ascontiguousarray(a, dtype=np.int64)))
    train = torch.from_numpy(ids["train"])
    graph_note = "graph.bin"
    if dgl_available():
        graph = build_graph(train, n_ent, n_rel)
        put("graph.bin", lambda p: _save_graph_checked(graph, p))
    else:
        graph_note = "not written (DGL not importable at preprocess time); built from train.npy when needed"
    everything = torch.from_numpy(np.concatenate([ids[s] for s in SPLITS]))
    index = FilterIndex.from_triples(everything, n_ent, n_rel)
    put("filter.npz", index.save)
    summary = json.dumps(kgstats.summarize(train, n_ent, n_rel, num_buckets))
    put("stats.json", lambda p: p.write_text(summary, encoding="utf-8"))

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "metasd_dgl_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"spec": spec, "key": identity["key"], "description": raw.source,
                   "format": raw.format, "builtin": raw.builtin, "input_sha256": raw.input_sha256,
                   "matches_published_counts": published},
        "counts": {"entities": n_ent, "relations": n_rel, **{s: len(ids[s]) for s in SPLITS}},
        "raw_counts": raw_counts,
        "id_order": "given by the udd_hrt id maps" if raw.entities is not None else
                    "first appearance over train, valid, test; head before tail within a line",
        "duplicates": {"policy": "removed within a split (first copy kept)", **dups},
        "overlap": {"policy": "kept",
                    "valid_in_train": int(np.isin(keys["valid"], keys["train"]).sum()),
                    "test_in_train": int(np.isin(keys["test"], keys["train"]).sum()),
                    "test_in_valid": int(np.isin(keys["test"], keys["valid"]).sum())},
        "unseen_entities": {"policy": "kept (ranked like any other triple)",
                            "entities_not_in_train": int(n_ent - in_train.sum()),
                            "valid_triples": unseen["valid"], "test_triples": unseen["test"],
                            "total_triples": unseen["valid"] + unseen["test"]},
        "unseen_relations": {"policy": "kept (ranked like any other triple)",
                             "relations_not_in_train": int(n_rel - rel_in_train.sum()),
                             "valid_triples": unseen_rel["valid"], "test_triples": unseen_rel["test"],
                             "total_triples": unseen_rel["valid"] + unseen_rel["test"]},
        "filter": "filter.npz",
        "graph": graph_note,
        "negatives": {s: len(n) for s, n in negatives.items()},
        "files": {p.name: _sha(p) for p in sorted(tmp.iterdir()) if p.is_file()},
    }
    text = json.dumps(manifest, indent=2) + "\n"
    put("manifest.json", lambda p: p.write_text(text, encoding="utf-8"))


def _read_manifest(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(manifest: Optional[Dict[str, Any]], identity: Dict[str, Any], out: Path) -> bool:
    if manifest is None or manifest.get("manifest_version") != MANIFEST_VERSION:
        return False
    src = manifest.get("source", {})
    if src.get("key") != identity["key"]:
        return False
    if identity["input_sha256"] is not None and src.get("input_sha256") != identity["input_sha256"]:
        return False
    return all((out / name).is_file() for name in manifest.get("files", {}))


#: Names this project writes into a processed folder (a folder whose manifest is unreadable is
#: replaced by --force only if it holds nothing else).
_OWN = frozenset(_CHECKED + ("graph.bin", "filter.npz", "manifest.json", "valid_negatives.npy",
                             "test_negatives.npy"))


def _foreign(out: Path, manifest: Optional[Dict[str, Any]]) -> List[str]:
    """Entries of ``out`` that this project did not write (not in its manifest's ``files``)."""
    listed = set((manifest or {}).get("files") or {}) if isinstance((manifest or {}).get("files"), dict) else set()
    own = (listed | {"manifest.json"}) if listed else set(_OWN)
    return sorted(p.name for p in out.iterdir() if p.name not in own)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def preprocess(source: Union[str, Path], out_dir: Union[str, Path], data_dir: Optional[Path] = None,
               fmt: str = "auto", force: bool = False, num_buckets: int = 3,
               echo=None) -> Path:
    """Process ``source`` into ``out_dir`` (layout and policies in the module docstring).

    If ``out_dir`` already holds a complete processed folder of the same source
    (same built-in name, or same path with the same input sha256), nothing is
    done unless ``force``.  A processed folder of another source is replaced
    only with ``force``, and only when it holds nothing but the files its
    manifest lists; an existing non-empty folder without a manifest is never
    touched (DataError).  One writer at a time (``FolderLockedError`` for a
    second); temporaries of killed runs are removed first.  ``echo`` hears
    about a stale lock taken over.  Returns ``out_dir``.
    """
    out = Path(out_dir)
    identity = source_identity(source, fmt)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    with folder_lock(out, inside=False, what="processed dataset folder", on_stale=echo):
        recover_folder(out)  # a killed run's .OUT.tmp-* / .OUT.old-* (the old folder put back if needed)
        if out.exists():
            manifest = _read_manifest(out)
            if (out / "manifest.json").exists():
                if not force and _is_current(manifest, identity, out):
                    return out
                if not force:
                    read_source(source, data_dir, fmt)  # a bad source says so, not that the folder is taken
                    was = (manifest or {}).get("source", {}).get("description", "unreadable manifest")
                    raise DataError(f"{out}: holds another processed dataset ({was}); "
                                    "pass --force to replace it or choose another folder")
                foreign = _foreign(out, manifest)
                if foreign:
                    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                    raise DataError(f"{out}: --force replaces only files metasd-dgl wrote, and this folder also "
                                    f"holds {shown}; move them elsewhere or choose another folder")
            elif any(out.iterdir()):
                raise DataError(f"{out}: exists and is not a processed dataset folder; choose another folder")
        raw = read_source(source, data_dir, fmt)  # all input errors surface before anything is written
        for warning in normalise_names(raw):  # names stripped of surrounding whitespace; case kept
            (echo or _stderr)(f"warning: {source}: {warning}")
        kept = out.exists()
        tmp = staging_folder(out)
        try:
            _build(raw, tmp, identity, str(source), num_buckets, out, kept)
            publish_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _read_names(path: Path) -> List[str]:
    names = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines[:-1] if lines and lines[-1] == "" else lines):
        idx, _, name = line.partition("\t")
        if idx != str(number) or not name:
            raise DataError(f"{path}:{number + 1}: expected '{number}<TAB>name'")
        names.append(name)
    return names


def _verified(folder: Path, manifest: Dict[str, Any], name: str) -> Path:
    """``folder/name``, checked against its sha256 in ``manifest``; DataError if missing or changed."""
    path = folder / name
    if not path.is_file():
        raise DataError(f"{path}: file not found; re-run preprocess with --force")
    if _sha(path) != manifest["files"].get(name):
        raise DataError(f"{path}: sha256 differs from manifest.json; re-run preprocess with --force")
    return path


@dataclass(frozen=True, eq=False)
class KGData:
    """A loaded processed folder (built whole by ``load_processed``; fields are not reassigned).

    ``graph`` and ``filter`` load on first use.  For a variant (e.g. fewer
    train triples) build a new one with ``dataclasses.replace``.
    """

    path: Path
    num_entities: int  # N
    num_relations: int  # R, without inverses
    entity_names: List[str]
    relation_names: List[str]
    train: torch.Tensor  # (n_train, 3) int64 [h, r, t]
    valid: torch.Tensor  # (n_valid, 3)
    test: torch.Tensor  # (n_test, 3)
    stats: Dict[str, Any] = field(repr=False)
    manifest: Dict[str, Any] = field(repr=False)
    negatives: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # split -> (m, 3) hard negatives

    def split(self, name: str) -> torch.Tensor:
        """The (n, 3) triples of split ``name`` (train | valid | test)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def all_triples(self) -> torch.Tensor:
        """(n_train + n_valid + n_test, 3) train, valid, test concatenated."""
        return torch.cat([self.train, self.valid, self.test])

    def _verified(self, name: str) -> Path:
        return _verified(self.path, self.manifest, name)

    @cached_property
    def graph(self) -> Any:
        """``dgl.DGLGraph`` of the train triples (see ``metasd_dgl.graph.build``): graph.bin, or
        built from the train triples for a folder written without DGL; DGLUnavailableError
        without DGL."""
        require_dgl("the training graph (R-GCN encoder, negative sampling)")
        if "graph.bin" in self.manifest["files"]:
            return load_graph(self._verified("graph.bin"))
        return build_graph(self.train, self.num_entities, self.num_relations)

    @cached_property
    def filter(self) -> FilterIndex:
        """``FilterIndex`` over train+valid+test: filter.npz (DataError if its sha256 is wrong),
        or built from the triples for a folder written without one."""
        if "filter.npz" in self.manifest["files"]:
            return FilterIndex.load(self._verified("filter.npz"))
        return FilterIndex.from_triples(self.all_triples, self.num_entities, self.num_relations)


def load_processed(path: Union[str, Path]) -> KGData:
    """Load and check a processed folder; missing or corrupt files -> DataError."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise DataError(f"{path}: not a processed dataset folder (no manifest.json); run preprocess first")
    manifest = _read_manifest(path)
    if manifest is None or manifest.get("manifest_version") != MANIFEST_VERSION or "files" not in manifest:
        raise DataError(f"{path / 'manifest.json'}: unreadable or of another version; re-run preprocess")
    for name in _CHECKED:
        _verified(path, manifest, name)
    entity_names = _read_names(path / "entities.tsv")
    relation_names = _read_names(path / "relations.tsv")
    counts = manifest.get("counts", {})
    splits: Dict[str, torch.Tensor] = {}
    for split in SPLITS:
        try:
            arr = np.load(path / f"{split}.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path / (split + '.npy')}: unreadable ({exc})") from None
        if arr.dtype != np.int64 or arr.ndim != 2 or arr.shape[1] != 3 or len(arr) != counts.get(split):
            raise DataError(f"{path / (split + '.npy')}: expected ({counts.get(split)}, 3) int64")
        splits[split] = torch.from_numpy(arr)
    if (counts.get("entities"), counts.get("relations")) != (len(entity_names), len(relation_names)):
        raise DataError(f"{path}: entities.tsv/relations.tsv disagree with manifest.json counts")
    negatives: Dict[str, torch.Tensor] = {}
    for split, n in (manifest.get("negatives") or {}).items():
        name = f"{split}_negatives.npy"
        arr = np.load(_verified(path, manifest, name), allow_pickle=False)
        if arr.dtype != np.int64 or arr.ndim != 2 or arr.shape[1] != 3 or len(arr) != n:
            raise DataError(f"{path / name}: expected ({n}, 3) int64")
        negatives[split] = torch.from_numpy(arr)
    stats = json.loads((path / "stats.json").read_text(encoding="utf-8"))
    return KGData(path, len(entity_names), len(relation_names), entity_names, relation_names,
                  splits["train"], splits["valid"], splits["test"], stats=stats, manifest=manifest,
                  negatives=negatives)
