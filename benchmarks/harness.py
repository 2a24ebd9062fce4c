"""The benchmark harness: variants -> train and test through the library -> table rows and JSON.

A *variant* is a name, config overrides and the rows it reports (``teacher``,
``student``).  ``run_variants`` trains each one from the same base overrides
with the library's ``train``, tests its validation-selected checkpoint with the
evaluate stage (test split, filtered, both sides, realistic ranks; the true
student when the run has masks), exports it, and returns one result per variant
(``train_and_test``'s keys).  ``variant_rows`` turns results into table rows.

Every library entry point the benchmarks use is imported here, in one place (bench_train.py's PyKEEN
process alone imports ``metasd_dgl.runtime.process.tune_malloc`` directly: it must not load the rest).
Nothing here needs DGL, pandas, safetensors or click (``gpu_check.py`` and ``paper_scale.py`` run without
them); the model-file module is imported on use (``model_files()``).  A benchmark that drives ``Trainer``
itself applies the process-wide settings a training run gets from ``train()`` (``runtime.tune_malloc``) first.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

# --- library entry points
from metasd_dgl.stages import load_run, stage_evaluate, stage_export  # noqa: F401
from metasd_dgl.runtime import precision as precision_modes  # noqa: F401
from metasd_dgl.runtime.device import resolve_device  # noqa: F401
from metasd_dgl.runtime.process import configure_threads, tune_malloc  # noqa: F401
from metasd_dgl.config import Config, apply_overrides, load_config, validate  # noqa: F401
from metasd_dgl.console import Console  # noqa: F401
from metasd_dgl.data.filters import FilterIndex  # noqa: F401
from metasd_dgl.data.preprocess import KGData, load_processed, preprocess  # noqa: F401
from metasd_dgl.data.triples import reciprocal_queries  # noqa: F401
from metasd_dgl.model.decoders import DistMult  # noqa: F401
from metasd_dgl.evaluate.ranking import DEFAULT_BATCH_SIZE, chunk_size, evaluate_ranking, metrics, model_score_fn  # noqa: F401
from metasd_dgl.evaluate.ranking import rank_split  # noqa: F401
from metasd_dgl.evaluate.unseen import apply_unseen  # noqa: F401
from metasd_dgl.model.predictor import build_model  # noqa: F401
from metasd_dgl.model.predictor import make_model  # noqa: F401
from metasd_dgl.model.pruning import keep_count, make_masks  # noqa: F401
from metasd_dgl.tools.compress import compress_report  # noqa: F401
from metasd_dgl.train.loop import Trainer, TrainingInterrupted, train  # noqa: F401
from metasd_dgl.train.methods import make_method  # noqa: F401
from common import sample_sd

ROWS = ("teacher", "student")


@dataclass(frozen=True)
class Variant:
    """One benchmark row group: ``overrides`` on top of the script's base config; ``reported`` rows."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    reported: Sequence[str] = ("teacher",)
    seeded: bool = False  # runs once per seed of the budget (rows are means), else with the first seed

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-." else "_" for c in self.name)


def history(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (epoch records carry ``seconds``; validations ``valid``)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.is_file() else []


def epoch_seconds(run_dir: str | Path) -> list[float]:
    return [r["seconds"] for r in history(run_dir) if "seconds" in r]


def evaluate_run(run_dir: str | Path) -> dict:
    """Test and export the ``best`` checkpoint of a finished run -> ``{best_epoch, export, teacher[, student]}``."""
    record = stage_evaluate(Path(run_dir), "test", "best", echo=lambda *_: None)
    export = stage_export(Path(run_dir), "best")
    out: dict[str, Any] = {"best_epoch": record["epoch"],
                           "export": {k: v for k, v in export.items() if not k.endswith("_file")}}
    for row, s in record["results"].items():
        rel, ent = s["buckets"]["relation"], s["buckets"]["entity"]
        rarest = next(iter(rel))
        student = row == "student"
        out[row] = {"mrr": s["both"]["mrr"], "hits@1": s["both"]["hits@1"], "hits@10": s["both"]["hits@10"],
                    "rarest_bucket": rarest, "rarest_mrr": rel[rarest]["mrr"], "buckets": rel,
                    "rarest_entity_mrr": ent[next(iter(ent))]["mrr"],
                    "nonzero": export["student_nonzero" if student else "teacher_params"],
                    "bytes": export["student_bytes" if student else "teacher_bytes"]}
    return out


def train_and_test(cfg: Config) -> dict:
    """Train ``cfg`` into ``cfg.run_dir`` (data: ``cfg.data.processed_dir``), then ``evaluate_run``.

    -> ``{epochs, best_epoch, seconds_per_epoch, train_wall_s, valid_mrr, export, teacher[, student]}``.
    """
    import time

    run_dir = Path(cfg.run_dir)
    t0 = time.perf_counter()
    train(cfg, load_processed(cfg.data.processed_dir), run_dir, progress=False)
    wall = time.perf_counter() - t0
    secs = epoch_seconds(run_dir)
    valid = [{"epoch": r["epoch"], **{k: v["mrr"] for k, v in r["valid"].items()}}
             for r in history(run_dir) if "valid" in r]
    return {"epochs": len(secs), "seconds_per_epoch": sum(secs) / len(secs), "train_wall_s": wall,
            "valid_mrr": valid, **evaluate_run(run_dir)}


def mean_rows(runs: list[dict]) -> dict:
    """Seed runs of one variant -> one result: means of the numbers, ``mrr_std`` and the per-seed results."""
    if len(runs) == 1:
        return {**runs[0], "seeds": 1}
    out = {**runs[0], "seeds": len(runs), "per_seed": runs,
           "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in runs) / len(runs)}
    for row in ROWS:
        if row not in runs[0]:
            continue
        vals = [r[row] for r in runs]
        keys = [k for k in MEANED if all(v.get(k) is not None for v in vals)]
        mean = {k: sum(v[k] for v in vals) / len(vals) for k in keys}
        mean.update({f"{k}_std": sample_sd([v[k] for v in vals]) for k in keys})
        out[row] = {**vals[0], **mean}
    return out


#: Row metrics ``mean_rows`` averages over seeds (each also gets ``<key>_std``).
MEANED = ("mrr", "hits@1", "hits@10", "rarest_mrr", "rarest_entity_mrr")


def model_files():
    """The library's model-file module (``metasd_dgl.store.export``: safetensors files of every scheme),
    imported on use."""
    from metasd_dgl.store import export as module

    return module


def device_of(name: str):
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda[:N]`` -> ``torch.device``, checked by the library
    (no graph: DGL is not asked)."""
    import torch

    return resolve_device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def load_on(run_dir: str | Path, checkpoint: str | Path, device) -> tuple:
    """``stages.load_run`` (the one checkpoint loader) with the model and the true student moved to ``device``.

    -> (cfg, data, model, student or None, checkpoint dict); ``checkpoint``: "best", "last" or a file."""
    cfg, data, model, student, ckpt = load_run(Path(run_dir), str(checkpoint))
    if student:
        student = {n: w.to(device) for n, w in student.items()}
    return cfg, data, model.to(device), student, ckpt


def rank(cfg: Config, data: KGData, model, split: str, weights=None, tables=None) -> dict:
    """Filtered metrics, both sides, of ``model`` on ``split`` (``eval.unseen`` applied); ``weights``: the
    true student's, ``tables``: given (entity, relation) tables."""
    triples, _ = apply_unseen(getattr(data, split), data.train, data.num_entities, data.num_relations,
                              cfg.eval.unseen, split)
    ranks = rank_split(model, triples, data.num_relations, data.filter, weights=weights, tables=tables,
                       max_memory_mb=cfg.eval.max_memory_mb)
    return metrics(ranks.both())


def seed_run_dir(root: Path, name: str, seed: int) -> Path:
    """The run folder of variant ``name`` at ``seed`` under ``root`` (``run_variant_seed``'s)."""
    return Path(root) / f"{Variant(name).slug}-seed{seed}"


def run_variant_seed(v: Variant, base: Mapping[str, Any], root: Path, seed: int,
                     adjust: Callable[[Variant, dict], dict] = lambda v, over: over, resume: bool = False) -> dict:
    """Train and test one variant at one seed in ``root/<variant>-seed<k>`` -> ``train_and_test``'s result.

    The result is also stored as ``result.json`` in the run folder; with ``resume`` a folder whose
    ``result.json`` was made with the same overrides is not retrained (its result is returned), and
    a folder holding anything else is cleared first (an interrupted run starts again).
    """
    import shutil
    import sys

    over = adjust(v, {**base, "train.seed": seed, **v.overrides, "run_dir": str(seed_run_dir(root, v.name, seed))})
    run_dir, stored = Path(over["run_dir"]), Path(over["run_dir"]) / "result.json"
    if resume and stored.is_file():
        record = json.loads(stored.read_text(encoding="utf-8"))
        if record.get("overrides") == json.loads(json.dumps(over)):
            print(f"[{root.name}] {v.name} seed {seed}: stored result, not retrained", file=sys.stderr, flush=True)
            return record["result"]
    if resume and run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"[{root.name}] {v.name} seed {seed} ...", file=sys.stderr, flush=True)
    result = {"dim": over["model.dim"], **train_and_test(load_config(overrides=over))}
    stored.write_text(json.dumps({"overrides": over, "result": result}, indent=2), encoding="utf-8")
    return result


def run_variants(variants: Iterable[Variant], base: Mapping[str, Any], root: Path, seeds: Sequence[int],
                 on_result: Callable[[str, dict], None] = lambda name, result: None,
                 adjust: Callable[[Variant, dict], dict] = lambda v, over: over) -> dict:
    """Train and test every variant (``seeded`` ones once per seed, the others with ``seeds[0]``).

    Overrides: ``base``, then the variant's, then ``adjust(variant, overrides)``; run folders
    ``root/<variant>-seed<k>``.  ``on_result(name, result)`` after each variant (e.g. write the JSON).
    """
    results = {}
    for v in variants:
        runs = [run_variant_seed(v, base, root, seed, adjust) for seed in (seeds if v.seeded else seeds[:1])]
        results[v.name] = {**mean_rows(runs), "reported": list(v.reported)}
        on_result(v.name, results[v.name])
    return results


def variant_rows(variants: Iterable[Variant], results: Mapping[str, dict],
                 cells: Callable[[str, dict, dict], list]) -> list[list]:
    """One table row per reported row of every variant in ``results``: ``cells(label, result, row metrics)``."""
    return [cells(f"{v.name} {row}", results[v.name], results[v.name][row])
            for v in variants if v.name in results for row in v.reported]
