"""DGL-KE interop: export embeddings in DGL-KE's layout, import DGL-KE-trained embeddings.

DGL-KE layout (``dglke/utils.py:save_model``, ``general_models.py:save_emb``)::

    <dataset>_<Model>_entity.npy     (N, w_e) float32, row i = entity id i
    <dataset>_<Model>_relation.npy   (R, w_r) float32, row r = relation id r
    entities.tsv / relations.tsv     "id<TAB>name" per line (DGL-KE's udd/raw maps)
    config.json                      dataset, model, emb_size (hidden_dim), gamma,
                                     double_ent, double_rel, emap_file, rmap_file, ...

Model names and storage (read from dglke 0.1.2 ``models/pytorch/score_fun.py``):

=============  =========  ========  ===========================================
DGL-KE         ours       widths    score
=============  =========  ========  ===========================================
``DistMult``   distmult   d, d      sum h*r*t
``ComplEx``    complex    2d, 2d    Re(<h, r, conj t>), rows ``[re | im]`` (as ours)
``TransE_l2``  transe     d, d      gamma - ||h + r - t||_2 (ours: gamma = 0)
``TransE_l1``  (import)   d, d      gamma - ||h + r - t||_1 (no native decoder)
``RotatE``     rotate     2d, d     gamma - sum_k |h_k e^{i phase_k} - t_k|
=============  =========  ========  ===========================================

RotatE phases: DGL-KE stores ``x`` and rotates by ``x / (emb_init / pi)`` with
``emb_init = (gamma + 2) / hidden_dim``; ours rotates by ``x * pi``, so
``ours = dglke / emb_init``.  DGL-KE's RotatE distance is the *sum of complex
moduli*; ours is the L2 norm over all ``2d`` coordinates, so the same
embeddings rank differently under the two scores (``scoring`` below).

Reciprocal relations: DGL-KE has none (a head query scores ``(h', r, t)`` for
every ``h'``).  Export writes forward rows ``[0, R)`` as ``_relation.npy`` and
our learned inverse rows ``[R, 2R)`` alongside as ``_relation_inverse.npy``
(same layout and units; DGL-KE ignores it).  Import builds inverse rows so
that ``score(t, r + R, h) == score(h, r, t)``: DistMult ``r``, ComplEx
``conj r``, TransE ``-r``, RotatE ``-phase`` (``scoring="dglke"``), or reads
``_relation_inverse.npy`` when present (``scoring="native"``: exact round trip).

Export writes ``gamma = 0`` by default: ``dglke_predict`` (score_func none) rebuilds
RotatE with gamma 0 whatever config.json says; only gamma 0 is right everywhere.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metasd_dgl.store.atomic import atomic_write_text, write_error, write_with
from metasd_dgl.model.decoders import DECODERS, Decoder, RotatE
from metasd_dgl.model.lookup import LookupEncoder
from metasd_dgl.errors import UserError
from metasd_dgl.model.predictor import LinkPredictor

#: our decoder name -> DGL-KE model name written on export.
DGLKE_MODEL = {"complex": "ComplEx", "distmult": "DistMult", "transe": "TransE_l2", "rotate": "RotatE"}
#: DGL-KE model name -> our decoder name (None: no native decoder).
NATIVE = {"ComplEx": "complex", "DistMult": "distmult", "TransE": "transe", "TransE_l2": "transe",
          "TransE_l1": None, "RotatE": "rotate"}
#: DGL-KE's EMB_INIT_EPS (general_models.py).
EMB_INIT_EPS = 2.0
_SCORE_CHUNK = 1 << 24  # elements of the (b, N, d) tensor that DGLKERotatE.score_all builds at once


class InteropError(UserError):
    """A DGL-KE folder that is missing files, disagrees with the dataset, or names an unknown model."""


def emb_init(gamma: float, hidden_dim: int) -> float:
    """DGL-KE's ``emb_init = (gamma + EMB_INIT_EPS) / hidden_dim`` (RotatE phase unit)."""
    return (gamma + EMB_INIT_EPS) / hidden_dim


def widths(model_name: str, hidden_dim: int) -> tuple[int, int]:
    """(entity width, relation width) of a DGL-KE model of ``hidden_dim``."""
    ent = 2 * hidden_dim if model_name in ("ComplEx", "RotatE") else hidden_dim
    rel = 2 * hidden_dim if model_name == "ComplEx" else hidden_dim
    return ent, rel


def inverse_relations(relation: Tensor, model_name: str) -> Tensor:
    """(R, w_r) forward rows -> (R, w_r) rows with score(t, r', h) = score(h, r, t).

    RotatE rows are phases (any units); negating the phase inverts the rotation.
    """
    if model_name == "DistMult":
        return relation.clone()
    if model_name == "ComplEx":
        d = relation.shape[1] // 2
        return torch.cat([relation[:, :d], -relation[:, d:]], dim=1)
    if model_name in ("TransE", "TransE_l1", "TransE_l2", "RotatE"):
        return -relation
    raise InteropError(f"unknown DGL-KE model {model_name!r}; expected one of {', '.join(NATIVE)}")


class DGLKETransE(Decoder):
    """DGL-KE's TransE: ``gamma - ||h + r - t||_p`` (p = 1 or 2)."""
    kind = "distance"

    def __init__(self, p: int = 2, gamma: float = 0.0) -> None:
        super().__init__()
        self.p, self.gamma, self.name = p, float(gamma), f"dglke-transe_l{p}"

    def score(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """(..., d) rows -> (...)."""
        return self.gamma - torch.linalg.vector_norm(h + r - t, ord=self.p, dim=-1)

    def score_all(self, h: Tensor, r: Tensor, entities: Tensor) -> Tensor:
        """(b, d), (b, d), (N, d) -> (b, N)."""
        return self.gamma - torch.cdist(h + r, entities, p=float(self.p))


class DGLKERotatE(Decoder):
    """DGL-KE's RotatE: ``gamma - sum_k |(h o r)_k - t_k|``; phases in units of pi (as ours)."""
    name, kind = "dglke-rotate", "distance"

    def __init__(self, gamma: float = 0.0) -> None:
        super().__init__()
        self.gamma = float(gamma)

    def entity_width(self, dim: int) -> int:
        return 2 * dim

    def score(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """(..., 2d), (..., d), (..., 2d) -> (...)."""
        diff = RotatE.query(h, r) - t
        d = diff.shape[-1] // 2
        return self.gamma - torch.sqrt(diff[..., :d] ** 2 + diff[..., d:] ** 2).sum(-1)

    def score_all(self, h: Tensor, r: Tensor, entities: Tensor) -> Tensor:
        """(b, 2d), (b, d), (N, 2d) -> (b, N); builds (chunk, N, d) moduli, chunked over queries."""
        q = RotatE.query(h, r)
        d = q.shape[-1] // 2
        step = max(1, _SCORE_CHUNK // max(1, entities.shape[0] * d))
        e_re, e_im = entities[None, :, :d], entities[None, :, d:]
        parts = [
            torch.sqrt((qc[:, None, :d] - e_re) ** 2 + (qc[:, None, d:] - e_im) ** 2).sum(-1)
            for qc in q.split(step)
        ]
        return self.gamma - torch.cat(parts) if parts else q.new_zeros(0, entities.shape[0])


def dglke_decoder(model_name: str, gamma: float = 0.0) -> Decoder:
    """A decoder whose score equals DGL-KE's score function for ``model_name`` exactly."""
    if model_name in ("DistMult", "ComplEx"):
        return DECODERS[model_name.lower()]()
    if model_name in ("TransE", "TransE_l2", "TransE_l1"):
        return DGLKETransE(1 if model_name == "TransE_l1" else 2, gamma)
    if model_name == "RotatE":
        return DGLKERotatE(gamma)
    raise InteropError(f"unknown DGL-KE model {model_name!r}; expected one of {', '.join(NATIVE)}")


@dataclass
class DGLKEEmbeddings:
    """A DGL-KE embedding pair in DGL-KE's ids and units (numpy float32)."""

    model_name: str
    dataset: str
    hidden_dim: int
    gamma: float
    entity: np.ndarray  # (N, w_e)
    relation: np.ndarray  # (R, w_r)
    relation_inverse: Optional[np.ndarray] = None  # (R, w_r), our export only
    entity_names: Optional[list[str]] = None  # index = DGL-KE id
    relation_names: Optional[list[str]] = None
    config: dict[str, Any] = field(default_factory=dict)


def _write_map(path: Path, names: Sequence[str]) -> None:
    bad = [n for n in names if "\t" in n or "\n" in n]
    if bad:
        raise InteropError(f"name {bad[0]!r} holds a tab or newline; DGL-KE's id maps cannot store it")
    atomic_write_text(path, "".join(f"{i}\t{n}\n" for i, n in enumerate(names)))


def export_dglke(entity: Tensor, relation: Tensor, decoder: str, num_relations: int, out_dir: str | Path,
                 dataset: str, entity_names: Sequence[str], relation_names: Sequence[str],
                 gamma: float = 0.0) -> dict[str, Path]:
    """Write tables ``entity`` (N, w_e) and reciprocal ``relation`` (2R, w_r) in DGL-KE's layout.

    ``decoder`` is our decoder name.  Returns ``{"entity", "relation",
    "relation_inverse", "entities", "relations", "config"}`` paths.
    """
    if decoder not in DGLKE_MODEL:
        raise InteropError(f"decoder {decoder!r} has no DGL-KE counterpart ({', '.join(DGLKE_MODEL)})")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", dataset):
        raise InteropError(f"dataset name {dataset!r}: use letters, digits, '.', '_' and '-'")
    name = DGLKE_MODEL[decoder]
    if relation.shape[0] != 2 * num_relations:
        raise InteropError(f"expected {2 * num_relations} reciprocal relation rows, got {relation.shape[0]}")
    hidden = relation.shape[1] if decoder == "rotate" else entity.shape[1] // (2 if decoder == "complex" else 1)
    scale = emb_init(gamma, hidden) if decoder == "rotate" else 1.0
    rel = relation.detach().cpu().double() * scale
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc, "could not create the folder") from None
    prefix = out / f"{dataset}_{name}"
    paths = {"entity": Path(f"{prefix}_entity.npy"), "relation": Path(f"{prefix}_relation.npy"),
             "relation_inverse": Path(f"{prefix}_relation_inverse.npy"),
             "entities": out / "entities.tsv", "relations": out / "relations.tsv", "config": out / "config.json"}
    write_with(paths["entity"], lambda fh: np.save(fh, entity.detach().cpu().numpy().astype(np.float32)))
    write_with(paths["relation"], lambda fh: np.save(fh, rel[:num_relations].numpy().astype(np.float32)))
    write_with(paths["relation_inverse"], lambda fh: np.save(fh, rel[num_relations:].numpy().astype(np.float32)))
    _write_map(paths["entities"], entity_names)
    _write_map(paths["relations"], relation_names)
    config = {"dataset": dataset, "model": name, "emb_size": hidden, "gamma": gamma,
              "double_ent": decoder in ("complex", "rotate"), "double_rel": decoder == "complex",
              **dict.fromkeys(("max_train_step", "batch_size", "neg_sample_size", "lr", "adversarial_temperature",
                               "regularization_coef", "regularization_norm")), "neg_adversarial_sampling": False,
              "emap_file": "entities.tsv", "rmap_file": "relations.tsv",
              "exported_by": "metasd-dgl", "relation_inverse_file": paths["relation_inverse"].name}
    atomic_write_text(paths["config"], json.dumps(config, indent=4) + "\n")
    return paths


def _read_map(path: Path, count: int) -> list[str]:
    """``id<TAB>name`` lines (any order) -> names indexed by id; ids must be 0..count-1."""
    try:
        frame = pd.read_csv(path, sep="\t", header=None, names=["id", "name"], dtype={"id": "Int64", "name": str},
                            keep_default_na=False, quoting=3)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InteropError(f"{path}: expected 'id<TAB>name' lines ({exc})") from None
    ids = frame["id"].to_numpy(dtype=np.int64)
    if len(frame) != count or not np.array_equal(np.sort(ids), np.arange(count)):
        raise InteropError(f"{path}: expected ids 0..{count - 1} once each for {count} embedding rows")
    names = np.empty(count, dtype=object)
    names[ids] = frame["name"].to_numpy()
    return [str(n) for n in names]


def _find_pair(folder: Path, dataset: Optional[str], model: Optional[str]) -> tuple[str, str]:
    if dataset and model:
        return dataset, model
    found = []
    for path in sorted(folder.glob("*_entity.npy")):
        stem = path.name[: -len("_entity.npy")]
        for m in sorted(NATIVE, key=len, reverse=True):
            if stem.endswith("_" + m) and (model is None or m == model):
                d = stem[: -len(m) - 1]
                if dataset is None or d == dataset:
                    found.append((d, m))
                break
    if len(found) != 1:
        what = "none" if not found else ", ".join(f"{d}_{m}" for d, m in found)
        raise InteropError(f"{folder}: expected one <dataset>_<model>_entity.npy (found {what}); "
                           "pass the dataset name and model")
    return found[0]


#: config.json keys read, and the check each value must pass
_CONFIG_CHECKS = {
    "model": (lambda v: isinstance(v, str), "a model name such as \"ComplEx\""),
    "dataset": (lambda v: isinstance(v, str) and v != "", "a dataset name"),
    "emb_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20,
                 "a positive integer (the hidden dimension)"),
    "gamma": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v), "a number"),
    "emap_file": (lambda v: isinstance(v, str), "a file name"),
    "rmap_file": (lambda v: isinstance(v, str), "a file name"),
}


def _read_config(path: Path) -> dict[str, Any]:
    """DGL-KE's config.json ({} when absent); InteropError naming the key whose value is wrong."""
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InteropError(f"{path}: not UTF-8 text; expected DGL-KE's config.json") from None
    except ValueError as exc:
        raise InteropError(f"{path}: not JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise InteropError(f"{path}: expected a JSON object (DGL-KE's config.json), got a {type(cfg).__name__}")
    for key, (ok, what) in _CONFIG_CHECKS.items():
        if cfg.get(key) is not None and not ok(cfg[key]):
            raise InteropError(f"{path}: {key} is {cfg[key]!r}; expected {what}")
    return cfg


def _read_table(path: Path) -> np.ndarray:
    """A (rows, width) float embedding table as float32; InteropError for a missing, truncated,
    non-float, non-2-D or non-finite one."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode=None)
    except FileNotFoundError:
        raise InteropError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InteropError(f"{path}: not a readable .npy file, or truncated ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise InteropError(f"{path}: not a .npy array")
    if arr.dtype.kind != "f":
        raise InteropError(f"{path}: dtype {arr.dtype}; expected float embeddings (float32)")
    if arr.ndim != 2:
        raise InteropError(f"{path}: shape {arr.shape}; expected a 2-D (rows, width) table")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InteropError(f"{path}: holds NaN or infinite values")
    return arr


def read_dglke(folder: str | Path, dataset: Optional[str] = None, model: Optional[str] = None,
               gamma: Optional[float] = None) -> DGLKEEmbeddings:
    """Read a DGL-KE save folder (config.json optional; then name the model or let the file name tell).

    ``gamma`` overrides config.json (RotatE needs it for the phase unit).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InteropError(f"{folder}: not a folder")
    cfg = _read_config(folder / "config.json")
    model = model or cfg.get("model")
    if model is not None and (not isinstance(model, str) or model not in NATIVE):
        raise InteropError(f"unknown DGL-KE model {model!r}; expected one of {', '.join(NATIVE)}")
    dataset, model = _find_pair(folder, dataset or cfg.get("dataset"), model)
    prefix = folder / f"{dataset}_{model}"
    ent = _read_table(Path(f"{prefix}_entity.npy"))
    rel = _read_table(Path(f"{prefix}_relation.npy"))
    inv_path = Path(f"{prefix}_relation_inverse.npy")
    inv = _read_table(inv_path) if inv_path.is_file() else None
    if cfg.get("emb_size") is not None:
        hidden = cfg["emb_size"]
    else:
        hidden = rel.shape[1] if model == "RotatE" else ent.shape[1] // (1 + (model == "ComplEx"))
    if (ent.shape[1], rel.shape[1]) != widths(model, hidden):
        raise InteropError(f"{prefix}: shapes {ent.shape}, {rel.shape} do not fit {model} with "
                           f"hidden_dim {hidden} (expected widths {widths(model, hidden)})")
    if inv is not None and inv.shape != rel.shape:
        raise InteropError(f"{inv_path}: shape {inv.shape} differs from the relation file's {rel.shape}")
    if gamma is None:
        if model == "RotatE" and "gamma" not in cfg:
            raise InteropError(f"{folder}: RotatE needs gamma (no config.json); pass the training gamma")
        gamma = float(cfg.get("gamma") or 0.0)
    if ent.shape[0] == 0 or rel.shape[0] == 0:
        raise InteropError(f"{prefix}: empty embedding table (shapes {ent.shape}, {rel.shape})")
    maps = []
    for key, default, count in (("emap_file", "entities.tsv", ent.shape[0]), ("rmap_file", "relations.tsv", rel.shape[0])):
        candidates = [folder / Path(cfg[key]).name] if cfg.get(key) else []
        candidates += [folder / default, folder / default.replace(".tsv", ".dict")]
        path = next((p for p in candidates if p.is_file()), None)
        maps.append(_read_map(path, count) if path else None)
    return DGLKEEmbeddings(model, dataset, hidden, float(gamma), ent, rel, inv, maps[0], maps[1], cfg)


def _order(theirs: Optional[list[str]], ours: Sequence[str], what: str, count: int) -> np.ndarray:
    """Row of the DGL-KE table for each of our ids, matched by name (identity without a map)."""
    if theirs is None:
        if count != len(ours):
            plural = "entities" if what == "entity" else what + "s"
            raise InteropError(f"the DGL-KE {what} table has {count} rows but the dataset has {len(ours)} {plural} "
                               f"(and the folder has no {what} id map to match names): it was trained on another "
                               "dataset; pass that dataset's processed folder as --dataset")
        return np.arange(count)
    index = pd.Index(theirs)
    if not index.is_unique:
        raise InteropError(f"the DGL-KE {what} map repeats a name")
    rows = index.get_indexer(list(ours))
    missing = [n for n, i in zip(ours, rows) if i < 0]
    if missing:
        raise InteropError(f"{len(missing)} {what}s of the dataset are not in the DGL-KE map, e.g. "
                           + ", ".join(repr(m) for m in missing[:5]))
    return rows


def import_dglke(emb: DGLKEEmbeddings, entity_names: Sequence[str], relation_names: Sequence[str],
                 scoring: str = "dglke") -> LinkPredictor:
    """Build a LinkPredictor on our ids and reciprocal convention from DGL-KE embeddings.

    ``scoring="dglke"``: DGL-KE's score function exactly (gamma included) in
    both directions, inverse rows derived.  ``scoring="native"``: our decoder
    (``TransE_l1`` has none), inverse rows from ``_relation_inverse.npy`` when
    present (exact round trip of ``export_dglke``), else derived.
    """
    if scoring not in ("dglke", "native"):
        raise InteropError(f"scoring must be 'dglke' or 'native', got {scoring!r}")
    model_name = emb.model_name
    ent = torch.from_numpy(emb.entity[_order(emb.entity_names, entity_names, "entity", emb.entity.shape[0])])
    rrows = _order(emb.relation_names, relation_names, "relation", emb.relation.shape[0])
    rel = torch.from_numpy(emb.relation[rrows])
    unit = emb_init(emb.gamma, emb.hidden_dim) if model_name == "RotatE" else 1.0
    if scoring == "native" and emb.relation_inverse is not None:
        inv = torch.from_numpy(emb.relation_inverse[rrows])
    else:
        inv = inverse_relations(rel, model_name)
    table = torch.cat([rel, inv]).double() / unit
    if scoring == "dglke":
        decoder = dglke_decoder(model_name, emb.gamma)
    else:
        native = NATIVE[model_name]
        if native is None:
            raise InteropError(f"{model_name} has no native decoder; import it with scoring='dglke'")
        decoder = DECODERS[native]()
    encoder = LookupEncoder(ent.shape[0], rel.shape[0], ent.shape[1], rel.shape[1], 0.0,
                            torch.Generator().manual_seed(0))
    with torch.no_grad():
        encoder.entity.copy_(ent)
        encoder.relation.copy_(table.float())
    return LinkPredictor(encoder, decoder)
