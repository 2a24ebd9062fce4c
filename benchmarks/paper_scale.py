"""The paper's experiment at its scale: rows x datasets x seeds, each a budgeted run of the paper's schedule.

Every (row, dataset, seed) is one run of the paper's schedule (ComplEx rank 2000, 100 epochs, validation
every 5, patience 5; the dataset's batch, DURA weight and relation prediction) through the library's
``train``, stopped by SIGTERM at its wall-clock deadline (``gpu_check._Deadline``: the loop finishes its
step and saves ``last.pt``), then its checkpoint chosen on validation (``best.pt`` or ``last.pt``,
whichever has the higher validation MRR of the row's reported model) is tested (filtered, both sides,
realistic ranks; the true student, masked on both sides, where the run has masks).  One small JSON per
(row, dataset, seed) under ``--results`` (``RESULTS/<dataset>/<row>-seed<k>.json``):

* a finished JSON is skipped; so is a JSON made with other settings (it says so; delete it to rerun);
* a partial JSON (the budget ran out) whose run folder is here (``--runs``: ``checkpoints/last.pt``)
  is resumed (``train(..., resume=True)``) and its JSON rewritten, the sessions listed one after another;
  a run folder without a JSON (a killed run) is resumed the same way;
* a partial JSON whose run folder is not here (another machine's session: rank-2000 checkpoints do not
  travel) is kept and reported as partial, with its epochs; ``--redo-partial`` trains it again from the start.

So the same command, run again in each device session, goes on where the results stop.  ``--jobs K``
runs K runs at once, each in its own spawned process on the same device (small rows leave most of an
H200 idle); the JSON records the peak GPU memory of each run, to choose K.

Rows (``ROWS``; the model each reports in brackets):

    dense 2000          plain, rank 2000: the teacher's recipe (DURA, relation prediction)        [teacher]
    dense 200           plain, rank 200: the students' non-zeros, same recipe                      [teacher]
    metasd element      MetaSD as the paper runs it: pipelines/configs/reference.yaml (element masks) [student, teacher]
    metasd dimension    the same with whole-coordinate masks (prune.structure=dimension)          [student, teacher]
    own student         the recommended student: pipelines/configs/own_student.yaml                [student, teacher]
    prune-only          prune, dimension masks (gradual magnitude pruning's baseline)             [student]
    prune-only element  prune, element masks (not in the default rows)                            [student]
    dense 2000 int8, metasd dimension int8, own student int8
                        the stored file of the source row's selected checkpoint, quantised
                        (``metasd_dgl.store.export.export_run_files``: int8, per-row scales), ranked from the
                        file; bytes of the int8 and the fp32 file.  Computed right after the source run
                        (in its process), or later from a source run folder that is here.

Relation prediction per dataset (``train.rp_weight``): FB15k-237 4 (the MetaSD reference code and
ComplEx-RP), WN18RR 0.05 (ComplEx-RP's best WN18RR run; the reference code switched it on there through a
flag bug).  The reference preset's own ``rp_weight`` (4) is replaced by the dataset's.  Other datasets
(``--tiny``: UMLS, datasets/toy) take FB15k-237's recipe.

The table (printed from whatever JSONs exist, also with ``--table-only``, which reads only): rows x
datasets, test MRR / Hits@1 / Hits@10 as mean ± sd over seeds (sample sd), epochs reached, the
paired difference against ``dense 200`` (per seed: the row's MRR minus dense 200's MRR of the same seed;
mean ± sd over the seeds both have), non-zeros, file bytes (quantised rows), and the paper's and kbc's
figures beside (docs: ../shared/METHOD.md).

Needs torch and numpy; PyYAML and tqdm are replaced by stand-ins where missing (``gpu_check``); no DGL,
no safetensors but for quantised rows, whose model files are safetensors.  Checkpoints are read with
the library's loader (``stages.load_run``, through ``harness.load_on``).

    python benchmarks/paper_scale.py --tiny --datasets umls --rows "dense 200,metasd dimension" --seeds 0,1
    PYTHONPATH=. python3 benchmarks/paper_scale.py --data datasets/kg --device cuda --budget 480 \\
        --jobs 6 --results $OUT/paper_scale            # one device session (benchmarks/README.md)
    python benchmarks/paper_scale.py --table-only       # the table of benchmarks/results/paper_scale
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from common import REPO, RESULTS, default_data_dir, format_table, machine_info, sample_sd, write_json
from common import paired as paired_stats
from gpu_check import _Deadline, stand_in_missing_packages

FORMAT = "metasd-paper-scale/1"
DEFAULT_RESULTS = RESULTS / "paper_scale"
DEFAULT_RUNS = REPO / "runs" / "paper_scale"
RATE = 0.9  # students keep 10 % of the prunable weights

# ------------------------------------------------------------------ the paper's settings
#: pipelines/configs/fb15k237_metasd.yaml (the paper's FB15k-237 setting) less method and device, plus RP 4
FB15K237 = {"data.dataset": "fb15k-237", "model.decoder": "complex", "model.dim": 2000, "train.epochs": 100,
            "train.batch_size": 1000, "train.lr": 0.1, "train.regularizer": "dura", "train.reg_weight": 0.05,
            "valid.every": 5, "valid.patience": 5, "prune.rate": RATE, "metasd.quiz_batch_size": 1000,
            "metasd.student": "shared", "metasd.one_way_kd": False, "metasd.kd_t2_scale": False,
            "train.rp_weight": 4.0}
#: pipelines/configs/wn18rr_metasd.yaml less method and device, plus ComplEx-RP's WN18RR weight 0.05
WN18RR = {"data.dataset": "wn18rr", "model.decoder": "complex", "model.dim": 2000, "train.epochs": 100,
          "train.batch_size": 100, "train.lr": 0.1, "train.regularizer": "dura", "train.reg_weight": 0.1,
          "valid.every": 5, "valid.patience": 5, "prune.rate": RATE, "metasd.quiz_batch_size": 100,
          "metasd.student": "shared", "metasd.one_way_kd": False, "metasd.kd_t2_scale": False,
          "train.rp_weight": 0.05}
PAPER_BASE = {"fb15k-237": FB15K237, "wn18rr": WN18RR}
#: pipelines/configs/reference.yaml (the MetaSD reference code), flat
REFERENCE = {"train.method": "metasd", "train.optimizer": "adagrad", "train.lr": 0.1, "train.regularizer": "dura",
             "train.rp_weight": 4.0, "prune.rate": RATE, "prune.scope": "global", "prune.structure": "element",
             "metasd.student": "shared", "metasd.one_way_kd": False,
             "metasd.meta_optimizer": "adagrad", "metasd.meta_lr": 1e-4, "metasd.virtual_lr": 0.1,
             "metasd.extra_teacher_step": True, "metasd.temperature": 3.0, "metasd.kd_weight": 1.0,
             "metasd.kd_forward_weight": 3.0,
             "metasd.kd_reverse_weight": 1.0, "metasd.real_kd_weighting": "self", "metasd.kd_t2_scale": False,
             "metasd.quiz_fraction": 0.02}
#: pipelines/configs/own_student.yaml (the recommended student), flat
OWN_STUDENT = {"train.method": "metasd", "prune.structure": "dimension", "prune.rate": RATE,
               "metasd.student": "own", "metasd.one_way_kd": True, "metasd.kd_t2_scale": True,
               "metasd.temperature": 1.0, "metasd.kd_weight": 8.2, "metasd.student_lr": 0.144}
#: --tiny: a CPU rehearsal of seconds (rank 16, the small rows rank 2, 2 epochs, validation every epoch)
TINY = {"model.dim": 16, "train.epochs": 2, "train.batch_size": 500, "metasd.quiz_batch_size": 500,
        "valid.every": 1, "valid.patience": 0}
#: options that do not change the experiment (not compared when deciding whether a stored result is this one)
VOLATILE = ("runtime.device", "runtime.num_threads", "data.processed_dir", "checkpoint.keep")

#: Published figures, filtered test MRR (../shared/METHOD.md): the paper's and kbc's (ComplEx-N3 by rank)
PAPER = {"fb15k-237": {"metasd": 0.391, "complex_rp_r1000": 0.388},
         "wn18rr": {"metasd": 0.491, "complex_rp_r1000": 0.488}}
KBC = {"fb15k-237": {100: 0.35, 500: 0.36, 1000: 0.37, 2000: 0.37}, "wn18rr": {100: 0.47, 500: 0.49}}


def base_overrides(dataset: str, tiny: bool, epochs: Optional[int] = None) -> dict:
    """The paper's recipe on ``dataset`` (other datasets: FB15k-237's), shrunk by ``--tiny``."""
    over = {**PAPER_BASE.get(dataset, FB15K237), "data.dataset": dataset, "checkpoint.keep": 0}
    if tiny:
        over.update(TINY)
    if epochs:
        over["train.epochs"] = epochs
    return over


def small_dim(base: Mapping[str, Any]) -> int:
    """Rank of the dense model with the students' non-zeros: round(0.1 x the teacher's)."""
    return max(1, round((1 - RATE) * base["model.dim"]))


@dataclass(frozen=True)
class Row:
    """A table row: ``overrides(base)`` on the dataset's base; ``reported`` models.  Quantised rows have a
    ``source`` row whose run they read, the ``role`` (teacher | student) and ``scheme`` of the file."""

    name: str
    overrides: Callable[[dict], dict] = lambda base: {}
    reported: Sequence[str] = ("teacher",)
    source: Optional[str] = None
    role: str = ""
    scheme: str = ""

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-." else "_" for c in self.name)


def _reference(structure: str) -> Callable[[dict], dict]:
    return lambda base: {**REFERENCE, "train.rp_weight": base["train.rp_weight"], "prune.structure": structure}


ROWS = [
    Row("dense 2000", lambda b: {"train.method": "plain"}),
    Row("dense 200", lambda b: {"train.method": "plain", "model.dim": small_dim(b)}),
    Row("metasd element", _reference("element"), ("student", "teacher")),
    Row("metasd dimension", _reference("dimension"), ("student", "teacher")),
    Row("own student", lambda b: dict(OWN_STUDENT), ("student", "teacher")),
    # the same students without the meta step (train.method=kd): what the meta step is worth at this scale
    Row("kd dimension", lambda b: {**_reference("dimension")(b), "train.method": "kd"}, ("student", "teacher")),
    Row("own student kd", lambda b: {**OWN_STUDENT, "train.method": "kd"}, ("student", "teacher")),
    Row("prune-only", lambda b: {"train.method": "prune", "prune.structure": "dimension"}, ("student",)),
    Row("prune-only element", lambda b: {"train.method": "prune", "prune.structure": "element"}, ("student",)),
    Row("dense 2000 int8", reported=("teacher",), source="dense 2000", role="teacher", scheme="int8"),
    Row("metasd dimension int8", reported=("student",), source="metasd dimension", role="student", scheme="int8"),
    Row("own student int8", reported=("student",), source="own student", role="student", scheme="int8"),
]
BY_NAME = {r.name: r for r in ROWS}
DEFAULT_ROWS = [r.name for r in ROWS if r.name != "prune-only element"]
PAIRED_AGAINST = "dense 200"


def find_row(text: str) -> Row:
    """A row by name or slug (``dense 2000`` or ``dense_2000``)."""
    for r in ROWS:
        if text.strip() in (r.name, r.slug):
            return r
    raise SystemExit(f"unknown row {text!r}; rows: {', '.join(BY_NAME)}")


def row_overrides(row: Row, dataset: str, tiny: bool, epochs: Optional[int] = None) -> dict:
    """The flat overrides of a training row on ``dataset`` (a quantised row: its source's)."""
    if row.source:
        return row_overrides(BY_NAME[row.source], dataset, tiny, epochs)
    base = base_overrides(dataset, tiny, epochs)
    return {**base, **row.overrides(base)}


def experiment_key(overrides: Mapping[str, Any]) -> dict:
    """The overrides that make the experiment (JSON-normalised, ``VOLATILE`` left out)."""
    return json.loads(json.dumps({k: v for k, v in overrides.items() if k not in VOLATILE}, sort_keys=True))


def key_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    a, b = experiment_key(a), experiment_key(b)
    return [f"{k}: {a.get(k)!r} (stored) vs {b.get(k)!r} (now)"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# ------------------------------------------------------------------ files
def json_path(results: Path, dataset: str, row: Row, seed: int) -> Path:
    return Path(results) / dataset / f"{row.slug}-seed{seed}.json"


def run_path(runs: Path, dataset: str, row: Row, seed: int) -> Path:
    return Path(runs) / dataset / f"{row.slug}-seed{seed}"


def read_json(path: Path) -> Optional[dict]:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def load_results(results: Path) -> list[dict]:
    """Every result JSON under ``results`` (``<dataset>/<row>-seed<k>.json``)."""
    out = []
    for p in sorted(Path(results).glob("*/*.json")):
        record = read_json(p)
        if record is not None:
            out.append(record)
    return out


# ------------------------------------------------------------------ data
def dataset_source(name: str):
    """What ``preprocess`` reads for ``name``: the repository's toy set, or a built-in name (its archive
    in ``--data``)."""
    return REPO / "datasets" / "toy" if name == "toy" else name


def prepare_data(names: Iterable[str], runs: Path, data_dir: Path) -> dict[str, str]:
    """Processed folders ``runs/data/<name>`` (made once; a second call finds them)."""
    from harness import load_processed, preprocess

    out = {}
    for name in names:
        t0 = time.perf_counter()
        path = preprocess(dataset_source(name), Path(runs) / "data" / name, Path(data_dir))
        d = load_processed(path)
        _say(f"data {name}: {d.num_entities} entities, {d.num_relations} relations, train/valid/test "
             f"{len(d.train)}/{len(d.valid)}/{len(d.test)} ({time.perf_counter() - t0:.1f} s) -> {path}")
        out[name] = str(Path(path).resolve())
    return out


def _say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------ the worker (a spawned process per task)
def run_task(task: dict) -> None:
    """Entry of a worker process: train (and quantise) one (row, dataset, seed), or quantise one stored run."""
    stand_in_missing_packages()
    try:
        if task["kind"] == "train":
            _train_task(task)
            for q in task.get("quantised", []):  # the quantised rows of this run, while its folder is here
                _quantised_task(q)
        else:
            _quantised_task(task)
    except Exception:  # noqa: BLE001 - the parent reports the failure; the other runs go on
        print(f"[{task['label']}] failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        raise SystemExit(1)


def _config(overrides: Mapping[str, Any], run_dir: Path):
    from harness import Config, apply_overrides, validate

    cfg = validate(apply_overrides(Config(), dict(overrides)))
    cfg.run_dir = str(run_dir)
    return cfg


def _history_epochs(run_dir: Path) -> int:
    from harness import history

    return max((r.get("epoch", 0) for r in history(run_dir) if "seconds" in r), default=0)


def _train_task(task: dict) -> None:
    import torch

    from harness import TrainingInterrupted, device_of, load_processed, train

    t0 = time.time()
    device = device_of(task["device"])
    run_dir = Path(task["run_dir"])
    over = {**task["overrides"], "runtime.device": str(device), "runtime.num_threads": task["threads"]}
    cfg = _config(over, run_dir)
    marker = run_dir / "paper_scale_task.json"
    last = run_dir / "checkpoints" / "last.pt"
    stored_key = json.loads(marker.read_text(encoding="utf-8")).get("key") if marker.is_file() else None
    resume = last.is_file() and stored_key == experiment_key(over)
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # another experiment's folder, or a run killed before its first checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"key": experiment_key(over)}, indent=2) + "\n", encoding="utf-8")
    from_epoch = _history_epochs(run_dir) if resume else 0
    data = load_processed(task["processed_dir"])
    # the training time: the per-run budget, cut to what the whole call has left less the reserve
    limits = [x for x in (task.get("per_run"),
                          None if task.get("end") is None else task["end"] - task["reserve"] - time.time())
              if x is not None]
    train_s = min(limits) if limits else None
    _say(f"[{task['label']}] {'resuming at epoch ' + str(from_epoch) if resume else 'training'} on {device}"
         + (f" for {train_s:.0f} s" if train_s is not None else " (no time limit)"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    deadline = _Deadline(time.perf_counter() + train_s) if train_s is not None else None
    t_train = time.time()
    try:
        trainer = train(cfg, data, run_dir, resume=resume, progress=False, console=_console(run_dir, task))
        status, stop = "finished", trainer.stop_reason
    except TrainingInterrupted:
        status, stop = "partial", "wall-clock budget spent"
    finally:
        if deadline is not None:
            deadline.close()
    train_wall = time.time() - t_train
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    t_eval = time.time()
    ev = evaluate_run(run_dir, device, BY_NAME[task["row"]].reported)
    previous = task.get("stored") or {}
    sessions = list(previous.get("sessions", [])) if resume else []
    sessions.append({"started": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="seconds"),
                     "resumed": resume, "from_epoch": from_epoch, "to_epoch": ev["state"]["epoch"],
                     "train_budget_s": train_s, "train_wall_s": train_wall, "eval_wall_s": time.time() - t_eval,
                     "wall_s": time.time() - t0, "jobs": task["jobs"], "peak_gpu_mb": peak, "stop": stop})
    record = {
        "format": FORMAT, "kind": "train", "row": task["row"], "dataset": task["dataset"], "seed": task["seed"],
        "tiny": task["tiny"], "overrides": experiment_key(over), "reported": list(BY_NAME[task["row"]].reported),
        "dim": cfg.model.dim, "status": status, "stop_reason": stop,
        "schedule_epochs": cfg.train.epochs, "epochs": ev["state"]["epoch"], "steps": ev["state"]["step"],
        "batch_in_epoch": ev["state"]["batch_in_epoch"],
        "wall_s": sum(s["wall_s"] for s in sessions), "train_wall_s": sum(s["train_wall_s"] for s in sessions),
        "sessions": sessions, "valid_history": ev["valid_history"], "selected": ev["selected"],
        "candidates": ev["candidates"], "valid": ev["valid"], "test": ev["test"], "nonzero": ev["nonzero"],
        "peak_gpu_mb": peak, "run_dir": str(run_dir), "machine": machine_info(device),
    }
    write_json(task["json"], record)
    who = next(iter(record["test"]))
    _say(f"[{task['label']}] {status}: {record['epochs']} of {record['schedule_epochs']} epochs, "
         f"{record['train_wall_s']:.0f} s; test {who} MRR {record['test'][who]['mrr']:.4f} "
         f"({record['selected']['checkpoint']}, epoch {record['selected']['epoch']}) -> {task['json']}")


def _console(run_dir: Path, task: dict):
    """The trainer's lines: all to ``train.log``; on stdout (readable) with ``--verbose``, else nothing
    (K runs at once would interleave their lines; each run says one line when it ends)."""
    import io

    from harness import Console

    if task.get("verbose"):
        return Console("normal", run_dir / "train.log")
    return Console("quiet", run_dir / "train.log", stream=io.StringIO())


def evaluate_run(run_dir: Path, device, reported: Sequence[str]) -> dict:
    """Validation of ``best.pt`` and ``last.pt`` (each one file for both models); the one with the higher
    validation MRR of the row's first reported model (its student where the run has masks) is tested.
    Test never chooses."""
    import gc

    import torch

    from harness import load_on, rank

    ck = Path(run_dir) / "checkpoints"
    candidates, chosen, state = [], None, None
    for path in (ck / "best.pt", ck / "last.pt"):
        if not path.is_file():
            continue
        cfg, data, model, student, ckpt = run = load_on(run_dir, path, device)
        st = ckpt["state"]
        if path.name == "last.pt":
            state = st
        if any(c["step"] == st["step"] for c in candidates):  # best.pt holds last.pt's weights: ranked once
            continue
        who = [w for w in reported if w == "teacher" or student]
        valid = {w: rank(cfg, data, model, "valid", student if w == "student" else None) for w in who}
        cand = {"checkpoint": path.name, "epoch": st["epoch"], "step": st["step"],
                "batch_in_epoch": st.get("batch_in_epoch", 0), "valid": valid, "by": who[0]}
        candidates.append(cand)
        if chosen is None or valid[who[0]]["mrr"] > chosen[1]["valid"][chosen[1]["by"]]["mrr"]:
            chosen = (run, cand)
        run = model = student = None
        gc.collect()
    if chosen is None:
        raise RuntimeError(f"{ck}: no checkpoint to evaluate")
    (cfg, data, model, student, ckpt), cand = chosen
    test = {w: rank(cfg, data, model, "test", student if w == "student" else None) for w in cand["valid"]}
    nonzero = {"teacher": sum(p.numel() for p in model.parameters())}
    if student:
        nonzero["student"] = sum(int((w != 0).sum()) for w in student.values())
    state = state or ckpt["state"]
    history = [{"epoch": r["epoch"], **{k: v.get("mrr") for k, v in r["valid"].items()}}
               for r in (state.get("history") or []) if "valid" in r]
    out = {"candidates": candidates, "valid": cand["valid"], "test": test, "nonzero": nonzero,
           "selected": {"checkpoint": cand["checkpoint"], "epoch": cand["epoch"], "step": cand["step"],
                        "by": f"valid {cand['by']} MRR"},
           "state": {k: state.get(k) for k in ("epoch", "step", "batch_in_epoch")}, "valid_history": history}
    chosen = model = student = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _quantised_task(task: dict) -> None:
    """Quantise the source run's selected checkpoint (teacher or student), rank it from the file."""
    import torch

    from harness import device_of, load_on, model_files, rank

    t0 = time.time()
    device = device_of(task["device"])
    row = BY_NAME[task["row"]]
    src = read_json(Path(task["source_json"]))
    if src is None:
        raise RuntimeError(f"{task['source_json']}: the source row's result is missing")
    run_dir = Path(task["run_dir"])
    path = run_dir / "checkpoints" / src["selected"]["checkpoint"]
    cfg, data, model, student, ckpt = load_on(run_dir, path, torch.device("cpu"))
    if ckpt["state"]["step"] != src["selected"]["step"]:
        raise RuntimeError(f"{path}: step {ckpt['state']['step']}, its result says "
                           f"{src['selected']['step']}: the run changed since; rerun the source row")
    out, q = run_dir / "quantised", model_files()
    info = q.export_run_files(cfg, data, model, student, ckpt, out, ("fp32", row.scheme), roles=(row.role,))
    _, (ent, rel), _ = q.file_tables(out / q.file_name(row.role, row.scheme), cfg, data, model)
    tables = (ent.to(device), rel.to(device))
    valid = {row.role: rank(cfg, data, model, "valid", tables=tables)}
    test = {row.role: rank(cfg, data, model, "test", tables=tables)}
    nbytes = {s: info[q.file_name(row.role, s)]["bytes"] for s in ("fp32", row.scheme)}
    record = {
        "format": FORMAT, "kind": "quantised", "row": row.name, "dataset": task["dataset"], "seed": task["seed"],
        "tiny": src.get("tiny", False), "overrides": src["overrides"], "reported": [row.role], "dim": src["dim"],
        "role": row.role, "scheme": row.scheme,
        "source": {"row": row.source, "json": str(task["source_json"]), "status": src["status"],
                   "epochs": src["epochs"], "steps": src["steps"], "selected": src["selected"],
                   "test": src["test"].get(row.role)},
        "status": src["status"], "stop_reason": src.get("stop_reason"), "schedule_epochs": src["schedule_epochs"],
        "epochs": src["epochs"], "steps": src["steps"], "wall_s": time.time() - t0,
        "valid": valid, "test": test, "bytes": nbytes, "ratio_to_fp32": nbytes[row.scheme] / nbytes["fp32"],
        "nonzero": {row.role: src["nonzero"].get(row.role)},
        "files": {s: str(out / q.file_name(row.role, s)) for s in nbytes}, "machine": machine_info(device),
    }
    write_json(task["json"], record)
    _say(f"[{task['label']}] {row.scheme} {row.role}: {nbytes[row.scheme]:,} bytes "
         f"({record['ratio_to_fp32']:.3f} of fp32), test MRR {test[row.role]['mrr']:.4f} "
         f"(fp32 {src['test'][row.role]['mrr']:.4f}) -> {task['json']}")


# ------------------------------------------------------------------ planning and scheduling
def quantised_fresh(record: Optional[dict], source: Optional[dict]) -> bool:
    """Whether a quantised row's JSON was made from the source's present result."""
    return bool(record and source and record["source"]["steps"] == source["steps"]
                and record["source"]["status"] == source["status"]
                and record["source"]["selected"] == source["selected"]
                and experiment_key(record["overrides"]) == experiment_key(source["overrides"]))


def plan(args, processed: Mapping[str, str]) -> tuple[list[dict], list[str]]:
    """-> (tasks in order: seed, dataset, row; why each other (row, dataset, seed) is not run)."""
    tasks, notes = [], []
    rows = sorted((find_row(r) for r in args.rows), key=lambda r: r.source is not None)  # sources first
    for seed in args.seeds:
        for ds in args.datasets:
            group: dict[str, dict] = {}
            for row in rows:
                label = f"{ds} {row.name} seed {seed}"
                over = {**row_overrides(row, ds, args.tiny, args.epochs), "train.seed": seed,
                        "data.processed_dir": processed[ds]}
                if args.precision != "fp32":  # part of the settings (the default fp32 is left unsaid)
                    over["train.precision"] = args.precision
                common = {"row": row.name, "dataset": ds, "seed": seed, "label": label, "device": args.device,
                          "processed_dir": processed[ds], "json": str(json_path(args.results, ds, row, seed)),
                          "tiny": args.tiny}
                stored = read_json(Path(common["json"]))
                if row.source:
                    src_row = BY_NAME[row.source]
                    src_json = json_path(args.results, ds, src_row, seed)
                    q = {**common, "kind": "quantised", "source_json": str(src_json),
                         "run_dir": str(run_path(args.runs, ds, src_row, seed))}
                    if src_row.name in group:  # its source trains in this call: quantised in that process
                        group[src_row.name].setdefault("quantised", []).append(q)
                        continue
                    src = read_json(src_json)
                    if src is None:
                        notes.append(f"{label}: no result of {src_row.name!r} yet (add it to --rows)")
                    elif quantised_fresh(stored, src):
                        notes.append(f"{label}: done")
                    elif not (Path(q["run_dir"]) / "checkpoints" / src["selected"]["checkpoint"]).is_file():
                        notes.append(f"{label}: the run folder of {src_row.name!r} is not here ({q['run_dir']})")
                    else:
                        tasks.append(q)
                    continue
                task = {**common, "kind": "train", "overrides": over, "stored": stored,
                        "run_dir": str(run_path(args.runs, ds, row, seed))}
                if stored is not None:
                    diff = key_differences(stored.get("overrides", {}), over)
                    last = Path(task["run_dir"]) / "checkpoints" / "last.pt"
                    if diff:
                        notes.append(f"{label}: stored with other settings ({'; '.join(diff[:3])}); "
                                     f"delete {common['json']} to rerun")
                        continue
                    if stored.get("status") == "finished":
                        notes.append(f"{label}: finished")
                        continue
                    if not last.is_file() and not args.redo_partial:
                        notes.append(f"{label}: partial ({stored.get('epochs')} epochs), its run folder is not here: "
                                     "kept (--redo-partial trains it again)")
                        continue
                group[row.name] = task
                tasks.append(task)
    return tasks, notes


def schedule(tasks: list[dict], args, end: Optional[float]) -> dict:
    """Run ``tasks`` in order, ``args.jobs`` spawned processes at a time; a task starts only while the call's
    budget leaves its reserve and a minimum of training.
    -> ``{"done": [...], "failed": [...], "not_started": [...]}`` (task labels)."""
    ctx = multiprocessing.get_context("spawn")
    queue, running = list(tasks), {}
    done, failed, not_started = [], [], []
    while queue or running:
        while queue and len(running) < args.jobs:
            task = queue.pop(0)
            left = None if end is None else end - time.time()
            need = args.reserve + (args.min_train if task["kind"] == "train" else 0.0)
            if left is not None and left < need:
                not_started.append(task["label"])
                _say(f"[{task['label']}] not started: {left:.0f} s left of the budget, {need:.0f} s needed")
                continue
            task = {**task, "end": end, "per_run": args.per_run_budget, "reserve": args.reserve,
                    "threads": args.threads, "jobs": args.jobs, "verbose": args.verbose}
            proc = ctx.Process(target=run_task, args=(task,), name=task["label"])
            proc.start()
            running[proc] = task
        for proc in [p for p in running if not p.is_alive()]:
            proc.join()
            task = running.pop(proc)
            (done if proc.exitcode == 0 else failed).append(task["label"])
            if proc.exitcode:
                _say(f"[{task['label']}] worker exited with code {proc.exitcode}")
        time.sleep(0.1)
    return {"done": done, "failed": failed, "not_started": not_started}


# ------------------------------------------------------------------ the table
def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    return sum(xs) / len(xs), sample_sd(xs)


def pm(xs: Sequence[Optional[float]], places: int = 4, sign: bool = False) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m, s = mean_sd(xs)
    return f"{m:+.{places}f} ± {s:.{places}f}" if sign else f"{m:.{places}f} ± {s:.{places}f}"


def paired(records: Sequence[dict], reference: Sequence[dict], model: str) -> Optional[dict]:
    """Per seed both have: the row's test MRR (``model``) minus the reference's (its first reported model)."""
    ref = {r["seed"]: r["test"][r["reported"][0]]["mrr"] for r in reference}
    ours = {r["seed"]: r["test"][model]["mrr"] for r in records if r["seed"] in ref and model in r["test"]}
    if not ours:
        return None
    seeds = sorted(ours)
    return {**paired_stats([ours[k] for k in seeds], [ref[k] for k in seeds]), "seeds": seeds}


def figures(dataset: str, row: Row, model: str) -> tuple[str, str]:
    """The paper's and kbc's figures beside a row (test MRR, filtered)."""
    name = row.source or row.name
    p, k = PAPER.get(dataset), KBC.get(dataset)
    if p is None:
        return "-", "-"
    kbc_big = f"N3 r{max(k)} {k[max(k)]:.2f}"
    paper = {("dense 2000", "teacher"): f"ComplEx-RP r1000 {p['complex_rp_r1000']:.3f}",
             ("metasd element", "student"): f"MetaSD {p['metasd']:.3f}",
             ("metasd dimension", "student"): f"MetaSD {p['metasd']:.3f} (element masks)",
             ("own student", "student"): f"MetaSD {p['metasd']:.3f} (to beat)"}.get((name, model), "-")
    kbc = {("dense 2000", "teacher"): kbc_big,
           ("dense 200", "teacher"): ", ".join(f"N3 r{r} {v:.2f}" for r, v in k.items() if r <= 500)}
    return paper, kbc.get((name, model), "-")


def table_rows(records: Sequence[dict], datasets: Optional[Sequence[str]] = None,
               rows: Optional[Sequence[str]] = None) -> list[dict]:
    """One entry per (dataset, row, reported model) with results: the numbers the table prints."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by.setdefault((r["dataset"], r["row"]), []).append(r)
    ds_order = list(datasets) if datasets else sorted({d for d, _ in by}, key=lambda d: (d not in PAPER_BASE, d))
    row_order = list(rows) if rows else [r.name for r in ROWS]
    out = []
    for ds in ds_order:
        ref = by.get((ds, PAIRED_AGAINST), [])
        for name in row_order:
            recs = sorted(by.get((ds, name), []), key=lambda r: r["seed"])
            if not recs:
                continue
            row = BY_NAME[name]
            for model in row.reported:
                have = [r for r in recs if model in r["test"]]
                if not have:
                    continue
                t = [r["test"][model] for r in have]
                out.append({
                    "dataset": ds, "row": name, "model": model, "dim": have[0].get("dim"),
                    "seeds": [r["seed"] for r in have], "finished": sum(r["status"] == "finished" for r in have),
                    "epochs": [r["epochs"] for r in have], "schedule_epochs": have[0].get("schedule_epochs"),
                    "mrr": [m["mrr"] for m in t], "hits@1": [m["hits@1"] for m in t],
                    "hits@10": [m["hits@10"] for m in t],
                    "nonzero": have[0].get("nonzero", {}).get(model),
                    "bytes": have[0].get("bytes", {}).get(row.scheme) if row.scheme else None,
                    "paired": None if name == PAIRED_AGAINST else paired(have, ref, model),
                    "mixed_settings": len({json.dumps(experiment_key({k: v for k, v in r["overrides"].items()
                                                                      if k != "train.seed"}), sort_keys=True)
                                           for r in have}) > 1,
                    "paper": figures(ds, row, model),
                })
    return out


def render(entries: Sequence[dict]) -> str:
    header = ["dataset", "row", "model", "dim", "seeds (fin.)", "epochs", "test MRR", "H@1", "H@10",
              f"MRR - {PAIRED_AGAINST} (n)", "non-zeros", "bytes", "paper", "kbc"]
    lines = []
    for e in entries:
        ep = e["epochs"]
        epochs = (f"{min(ep)}" if min(ep) == max(ep) else f"{min(ep)}-{max(ep)}") + f"/{e['schedule_epochs']}"
        p = e["paired"]
        diff = "-" if p is None else f"{p['mean']:+.4f} ± {p['sd']:.4f} ({len(p['seeds'])})"
        lines.append([e["dataset"], e["row"] + (" (mixed settings!)" if e["mixed_settings"] else ""), e["model"],
                      e["dim"], f"{len(e['seeds'])} ({e['finished']})", epochs, pm(e["mrr"]), pm(e["hits@1"]),
                      pm(e["hits@10"]), diff, "-" if e["nonzero"] is None else f"{e['nonzero']:,}",
                      "-" if e["bytes"] is None else f"{e['bytes']:,}", *e["paper"]])
    return format_table(header, lines, left=3)


def print_table(results: Path, datasets=None, rows=None, expected: Sequence[tuple[str, str, int]] = ()) -> str:
    records = load_results(results)
    entries = table_rows(records, datasets, rows)
    text = (f"paper scale: {len(records)} results in {results}; test, filtered, both sides; mean ± sd over seeds "
            f"(sample sd); seeds (fin.) = seeds (of them finished: the rest stopped by the budget); "
            f"MRR - {PAIRED_AGAINST}: per seed, mean ± sd (seeds)\n")
    text += render(entries) if entries else "(no results yet)"
    have = {(r["dataset"], r["row"], r["seed"]) for r in records}
    missing = [f"{d} {r} seed {s}" for d, r, s in expected if (d, r, s) not in have]
    if missing:
        text += f"\nno result yet: {'; '.join(missing)}"
    _say(text)
    return text


# ------------------------------------------------------------------ the command line
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=None, help="comma-separated (default fb15k-237,wn18rr; --tiny: umls); "
                    "fb15k-237, wn18rr, any built-in name, or toy (datasets/toy)")
    ap.add_argument("--rows", default=None,
                    help=f"comma-separated row names or slugs (default: {', '.join(DEFAULT_ROWS)})")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--budget", type=float, default=None,
                    help="wall-clock seconds for the whole call (default: none; --tiny 120)")
    ap.add_argument("--per-run-budget", type=float, default=None,
                    help="wall-clock seconds of training per run and session (default: the call's budget)")
    ap.add_argument("--reserve", type=float, default=None,
                    help="seconds kept after each run's training for checkpoint, evaluation and files "
                         "(default 90; --tiny 5)")
    ap.add_argument("--min-train", type=float, default=None,
                    help="a run starts only with this many seconds of training left (default 30; --tiny 1)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="the schedule's epochs (default: the paper's 100; --tiny 2); part of the settings")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                    help="train.precision of every run (default fp32, exact; tf32: CUDA only); part of the settings")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each in a spawned process on the device")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default cores / jobs)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    ap.add_argument("--data", default=None, help="folder with the archives (FB15k-237.tar.gz, WN18RR.tar.gz, ...; "
                    "default $METASD_DATA_DIR or datasets/kg)")
    ap.add_argument("--runs", default=None, help=f"run folders (default {DEFAULT_RUNS.relative_to(REPO)}; "
                    "--tiny: beside the results)")
    ap.add_argument("--results", default=None, help=f"the JSONs (default {DEFAULT_RESULTS.relative_to(REPO)}; "
                    "--tiny: a new temporary folder)")
    ap.add_argument("--redo-partial", action="store_true",
                    help="train again from the start a partial result whose run folder is not here")
    ap.add_argument("--verbose", action="store_true", help="show the trainers' epoch and validation lines")
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal: rank 16, 2 epochs, UMLS, seconds")
    ap.add_argument("--table-only", action="store_true", help="print the table of the JSONs in --results; run nothing")
    args = ap.parse_args(argv)
    args.datasets_given = args.datasets is not None
    args.rows_given = args.rows is not None
    default_datasets = "umls" if args.tiny else "fb15k-237,wn18rr"
    args.datasets = [d.strip().lower() for d in (args.datasets or default_datasets).split(",") if d.strip()]
    args.rows = [find_row(r).name for r in (args.rows.split(",") if args.rows else DEFAULT_ROWS) if r.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.tiny and args.budget is None:
        args.budget = 120.0
    args.reserve = args.reserve if args.reserve is not None else (5.0 if args.tiny else 90.0)
    args.min_train = args.min_train if args.min_train is not None else (1.0 if args.tiny else 30.0)
    args.jobs = max(1, args.jobs)
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    args.data = args.data or default_data_dir()
    if args.results is None:
        if args.tiny and not args.table_only:
            root = Path(tempfile.mkdtemp(prefix="paper_scale-tiny-"))
            args.results, args.runs = root / "results", Path(args.runs or root / "runs")
        else:
            args.results = DEFAULT_RESULTS
    args.results = Path(args.results).resolve()
    args.runs = Path(args.runs or (REPO / "runs" / "paper_scale_tiny" if args.tiny else DEFAULT_RUNS)).resolve()
    return args


def main(argv=None) -> int:
    start = time.time()
    args = parse_args(argv)
    expected = [(d, r, s) for s in args.seeds for d in args.datasets for r in args.rows]
    if args.table_only:
        print_table(args.results, args.datasets if args.datasets_given else None,
                    args.rows if args.rows_given else None, expected if args.datasets_given or args.rows_given else ())
        return 0
    end = None if args.budget is None else start + args.budget
    stand_ins = stand_in_missing_packages()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _say(f"paper_scale: python {platform.python_version()}, datasets {args.datasets}, rows {args.rows}, seeds "
         f"{args.seeds}, jobs {args.jobs} x {args.threads} threads, device {args.device}"
         + (f", budget {args.budget:.0f} s" if args.budget is not None else ", no budget")
         + (f" ({args.per_run_budget:.0f} s per run)" if args.per_run_budget else "")
         + (f"; stand-ins for missing {', '.join(stand_ins)}" if stand_ins else "")
         + f"\nresults {args.results}\nruns {args.runs}")
    processed = prepare_data(args.datasets, args.runs, Path(args.data))
    tasks, notes = plan(args, processed)
    for note in notes:
        _say(f"skip: {note}")
    _say(f"{len(tasks)} to run: " + ("; ".join(t["label"] + (" (resume)" if t["kind"] == "train" and (
        Path(t["run_dir"]) / "checkpoints" / "last.pt").is_file() else "") for t in tasks) or "nothing"))
    outcome = schedule(tasks, args, end)
    _say(f"\n{len(outcome['done'])} done, {len(outcome['failed'])} failed, {len(outcome['not_started'])} not started "
         f"({time.time() - start:.0f} s" + (f" of {args.budget:.0f})" if args.budget is not None else ")"))
    if outcome["failed"]:
        _say("failed: " + "; ".join(outcome["failed"]))
    print_table(args.results, None, None, expected)
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
