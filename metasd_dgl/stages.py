"""Pipeline stages: preprocess -> train -> evaluate (-> export), path in, path out.

Each stage takes the resolved ``Config`` and paths, and skips work that is
already current (a processed folder whose manifest matches the source, a
finished training run).  The CLI commands and ``metasd-dgl pipeline`` are
thin wrappers over these functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from metasd_dgl.store.atomic import atomic_write_json, recover_folder, remove_stale
from metasd_dgl.runtime.memory import check_memory
from metasd_dgl.store.checkpoint import load_checkpoint
from metasd_dgl.store.lock import folder_lock
from metasd_dgl.evaluate.unseen import apply_unseen, unseen_line
from metasd_dgl.config import Config, from_dict
from metasd_dgl.data.preprocess import load_processed, preprocess
from metasd_dgl.data.stats import evaluation_buckets
from metasd_dgl.errors import CheckpointError, DataError, UserError
from metasd_dgl.evaluate.ranking import format_table, summarize
from metasd_dgl.store.export import export_run_files, file_tables, owned_folder
from metasd_dgl.evaluate.ranking import REFERENCE_PRUNE_RATE, rank_split, rank_split_reference
from metasd_dgl.data.fingerprint import check_run_dataset, dataset_fingerprint
from metasd_dgl.model.predictor import make_model
from metasd_dgl.model.pruning import make_masks
from metasd_dgl.runtime.process import cpu_budget_spent
from metasd_dgl.model.student import checkpoint_student
from metasd_dgl.train.loop import train


def processed_dir(cfg: Config) -> Path:
    return Path(cfg.data.processed_dir) if cfg.data.processed_dir else Path(cfg.run_dir) / "data"


def stage_preprocess(cfg: Config, force: bool = False, echo=None) -> Path:
    """Preprocess ``cfg``'s dataset, holding the run folder's lock (a training run in it is not disturbed).

    A processed folder as the dataset (``metasd-dgl preprocess``'s output) is used in place: nothing is
    read or written; ``load_config`` has set ``data.processed_dir`` to its absolute path."""
    from metasd_dgl.data.registry import processed_folder

    folder = processed_folder(cfg.data.dataset)
    if folder is not None:
        if Path(cfg.data.processed_dir or "").resolve() != folder:
            raise UserError(f"data.dataset {cfg.data.dataset} is a processed folder, used in place; "
                            f"data.processed_dir={cfg.data.processed_dir} names another: drop it")
        return folder
    data_dir = cfg.data.data_dir  # else the registry reads METASD_DATA_DIR
    with folder_lock(cfg.run_dir or ".", what="run folder", on_stale=echo):
        return preprocess(cfg.data.dataset, processed_dir(cfg), Path(data_dir) if data_dir else None,
                          cfg.data.format, force=force, echo=echo)


def stage_train(cfg: Config, resume: bool = False, progress: bool = True, console=None,
                command: str = "train", echo=print) -> Path:
    """Train ``cfg`` into its run folder.

    A folder that already holds a run: finished with the same config -> skipped
    (says so); unfinished with the same config -> resumed when ``command`` is
    "pipeline" (re-running an interrupted pipeline continues it); otherwise a
    UserError naming the flag of ``command`` that continues it.  One process
    trains a folder at a time (``metasd_dgl.store.lock``: a second gets one line
    naming the holder's pid); checkpoint temporaries of a killed run are
    removed; the memory the run needs is checked before anything is allocated
    (``metasd_dgl.runtime.memory``).
    """
    with folder_lock(cfg.run_dir, what="run folder", on_stale=echo):
        remove_stale(Path(cfg.run_dir) / "checkpoints", locked=True)
        if not resume and not (Path(cfg.run_dir) / "checkpoints" / "last.pt").exists():
            # records of a run killed before its first checkpoint: this run starts them again
            (Path(cfg.run_dir) / "metrics.jsonl").unlink(missing_ok=True)
        return _stage_train(cfg, resume, progress, console, command, echo)


def _stage_train(cfg: Config, resume: bool, progress: bool, console, command: str, echo) -> Path:
    data = load_processed(processed_dir(cfg))
    run_dir = Path(cfg.run_dir)
    status = None if resume else run_status(run_dir, cfg)
    if status is not None:
        if status["finished"]:
            echo(f"already trained (epoch {status['epoch']}, valid MRR {status['best_mrr']:.4f}): "
                 "skipping training")
            return run_dir
        if command == "pipeline" and not status["differences"]:
            resume = True
        elif command == "pipeline":
            raise UserError(f"{run_dir} holds a run with another config ({'; '.join(status['differences'][:3])}); "
                            "pass --resume to continue it with this config, or choose another --run-dir")
        else:
            raise UserError(f"{run_dir} already holds a training run; continue it with "
                            f"metasd-dgl train --resume {run_dir}, or choose another --run-dir")
    check_memory(cfg, data.num_entities, data.num_relations, echo)
    train(cfg, data, run_dir, resume=resume, progress=progress, console=console)
    return run_dir


def run_status(run_dir: Path, cfg: Config) -> Optional[dict[str, Any]]:
    """None without ``checkpoints/last.pt``; else ``{"finished", "differences", "epoch", "best_mrr"}``:
    finished means done under ``cfg`` (epochs reached or early-stopped) with the same config,
    ``differences`` lists the options that differ (``"train.epochs: 4 (run) vs 6 (now)"``)."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
    except CheckpointError:
        return {"finished": False, "differences": [f"{path} is unreadable"], "epoch": 0, "best_mrr": -1.0}
    from metasd_dgl.config import to_dict, with_defaults

    old, new = with_defaults(state.get("config", {})), to_dict(cfg)  # options the run predates: defaults
    differences = [f"{sec}.{k}: {old.get(sec, {}).get(k)!r} (run) vs {new[sec].get(k)!r} (now)"
                   for sec in new if isinstance(new[sec], dict)
                   for k in sorted(set(new[sec]) | set(old.get(sec, {}))) if old.get(sec, {}).get(k) != new[sec].get(k)]
    st = state["state"]
    stopped = cfg.valid.patience and st["bad_validations"] >= cfg.valid.patience
    spent = cpu_budget_spent(cfg.budget.cpu_minutes, st.get("cpu_seconds", 0.0))
    done = bool(st["epoch"] >= cfg.train.epochs or stopped or spent) and not st.get("batch_in_epoch")
    return {"finished": done and not differences, "differences": differences, "epoch": st["epoch"],
            "best_mrr": st.get("best_mrr", -1.0)}


def load_run(run_dir: Path, checkpoint: str = "best", teacher_fallback: bool = False):
    """-> (cfg, data, model with the teacher's weights, the true student's weights or None, checkpoint dict).

    The student (``student.checkpoint_student``) is ``{name: full-width tensor}``, zero where pruned,
    for ``model.encode(graph, student)``; ``None`` for a plain run.

    ``checkpoint="best"``: each model from its own best validation epoch -- the student (and a plain
    run's model) from ``best.pt``, the teacher of a run with a student from ``best-teacher.pt``
    (runs that predate that file: ``best.pt`` for both).  A teacher file the run wrote that is now
    missing or unreadable is a CheckpointError naming it, unless ``teacher_fallback``: then the
    teacher comes from the student's file too.  "last" or a path: one file for both.  The returned
    dict is the student's checkpoint, with ``path``, ``teacher_path``, ``teacher_epoch`` and
    ``teacher_note`` (why the teacher shares the student's file, or None) added."""
    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint not in ("best", "last") else run_dir / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.exists():
        last = run_dir / "checkpoints" / "last.pt"
        if not last.exists():
            raise CheckpointError(f"{path}: checkpoint not found (nor {last.name}); is {run_dir} a run folder?")
        path = last
    ckpt = load_checkpoint(path)
    cfg = from_dict(ckpt["config"], f"{path} config")
    cfg.run_dir = str(run_dir)
    if not (processed_dir(cfg) / "manifest.json").is_file():
        raise DataError(f"{run_dir}: needs its processed dataset folder {processed_dir(cfg)}, which is missing; "
                        f"restore it, or rebuild it with metasd-dgl preprocess SOURCE --out {processed_dir(cfg)}")
    data = load_processed(processed_dir(cfg))
    if ckpt.get("dataset") != dataset_fingerprint(data):
        raise CheckpointError(f"{path}: trained on another dataset than {data.path}")
    model = make_model(cfg, data.num_entities, data.num_relations, torch.Generator().manual_seed(0))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        from metasd_dgl.config import retired_settings

        retired = "; ".join(retired_settings(ckpt.get("config") or {}))
        why = f"; it was trained with {retired}" if retired else ""
        raise CheckpointError(f"{path}: weights do not fit the configured model "
                              f"({str(exc).splitlines()[0]}){why}") from None
    ckpt["path"] = str(path)
    student = checkpoint_student(dict(model.named_parameters()), ckpt.get("masks"), ckpt.get("student_weights"))
    if student:  # the student's tensors are its own copies: the model may now take the teacher's weights
        student = {n: w.detach().clone() for n, w in student.items()}
    ckpt["teacher_path"], ckpt["teacher_epoch"], ckpt["teacher_note"] = str(path), ckpt["state"]["epoch"], None
    if checkpoint == "best" and student:
        _load_teacher_best(run_dir, model, ckpt, data, teacher_fallback)
    return cfg, data, model, student, ckpt


def _load_teacher_best(run_dir: Path, model, ckpt: dict, data, fallback: bool) -> None:
    """The teacher's own best weights into ``model`` (``load_run``), or the note why it keeps the student's file's."""
    from metasd_dgl.train.loop import TEACHER_BEST

    tpath = run_dir / "checkpoints" / TEACHER_BEST
    if ckpt["state"].get("teacher_best_epoch", -1) <= 0 and not tpath.exists():
        ckpt["teacher_note"] = f"the run keeps no {TEACHER_BEST} (it predates it): the teacher is from {ckpt['path']}"
        return
    try:
        tckpt = load_checkpoint(tpath)
        if tckpt.get("dataset") != ckpt.get("dataset") or \
                (tckpt.get("config") or {}).get("model") != (ckpt.get("config") or {}).get("model"):
            raise CheckpointError(f"{tpath}: not of the same run as {ckpt['path']} (another model or dataset)")
        model.load_state_dict(tckpt["model"])
    except (CheckpointError, RuntimeError, KeyError) as exc:
        why = str(exc).splitlines()[0] if isinstance(exc, CheckpointError) else f"{tpath}: unreadable ({exc!r:.80})"
        if not fallback:
            raise CheckpointError(f"the teacher's best checkpoint is missing or damaged ({why}); the student's "
                                  f"{ckpt['path']} is intact: pass --teacher-fallback to score the teacher from it "
                                  f"(epoch {ckpt['state']['epoch']}), or --checkpoint PATH for one file") from None
        ckpt["teacher_note"] = f"teacher from {ckpt['path']}, the student's file: {why}"
        model.load_state_dict(ckpt["model"])
        return
    ckpt["teacher_path"], ckpt["teacher_epoch"] = str(tpath), tckpt["state"]["epoch"]


#: The row of ``protocol="reference"``: the reference code's scoring of its "student".
REFERENCE_ROW = "reference student"


def stage_evaluate(run_dir: Path, split: str = "test", checkpoint: str = "best",
                   compact: Optional[Path] = None, echo=print, protocol: str = "true",
                   from_file: Optional[Path] = None, teacher_fallback: bool = False) -> dict[str, Any]:
    """Teacher and true student, overall and per long-tail bucket; writes eval/<split>.json.

    Each model from its own best epoch (``load_run``; ``teacher_fallback`` as there); the record
    names each model's file and epoch (``checkpoint_files``, ``epochs``).

    ``protocol="reference"`` adds the row ``REFERENCE_ROW``: the reference code's
    score (query side masked, candidate entity table dense) at its prune rate
    0.8, masks recomputed from the checkpoint's teacher weights with the run's
    prune structure and scope (``evaluation.rank_split_reference``).

    ``from_file``: a model file (``metasd_dgl.store.export``); the row of its role (teacher or
    student) is scored from the file's dequantised weights.  ``compact``: a student file, likewise.
    """
    if protocol not in ("true", "reference"):
        raise UserError(f"protocol must be true or reference, got {protocol!r}")
    cfg, data, model, student, ckpt = load_run(run_dir, checkpoint, teacher_fallback)
    masks = ckpt.get("masks")
    triples, unseen = apply_unseen(getattr(data, split), data.train, data.num_entities, data.num_relations,
                                   cfg.eval.unseen, split)
    graph = data.graph if cfg.model.encoder == "rgcn" else None
    buckets = evaluation_buckets(triples, data.train, data.num_entities, data.num_relations, cfg.eval.num_buckets)
    variants: dict[str, Any] = {"teacher": None}
    if student:
        variants["student"] = student
    file_role, from_files = None, {}  # role -> tables of a model file (--from-file, --compact)
    for path, flag in ((from_file, "--from-file"), (compact, "--compact")):
        if path is None:
            continue
        _, tables, meta = file_tables(path, cfg, data, model)
        role = meta.get("role")
        if flag == "--compact" and role != "student":
            raise UserError(f"{path}: holds a {role}; --compact takes a student file (export/student.safetensors)")
        if role not in variants:
            raise UserError(f"{path}: holds a {role}, which {run_dir} does not have (train.method={cfg.train.method})")
        if role in from_files:
            raise UserError("--compact and --from-file both give the student; pass one of them")
        from_files[role] = tables
        file_role = role if flag == "--from-file" else file_role
    results: dict[str, Any] = {}
    for name, m in variants.items():
        tables = from_files.get(name)
        ranks = rank_split(model, triples, data.num_relations, data.filter, graph=graph, weights=m,
                           max_memory_mb=cfg.eval.max_memory_mb, tables=tables)
        results[name] = summarize(ranks, buckets)
    reference = None
    if protocol == "reference":
        pc = cfg.prune
        reference = {"prune_rate": REFERENCE_PRUNE_RATE, "prune_structure": pc.structure,
                     "prune_scope": pc.scope, "query": "masked", "candidates": "dense teacher table"}
        ref_masks = make_masks(model, REFERENCE_PRUNE_RATE, pc.scope, pc.structure, cfg.model.dim)
        ranks = rank_split_reference(model, triples, data.num_relations, data.filter, ref_masks, graph=graph,
                                     max_memory_mb=cfg.eval.max_memory_mb)
        results[REFERENCE_ROW] = summarize(ranks, buckets)
    out_dir = Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    # prune-only trains the masked model: its weights without the mask are no teacher
    teacher_trained = cfg.train.method != "prune"
    from metasd_dgl.console import named_rows, row_names

    names = row_names(results, cfg.train.method)  # "results" keyed by slot; "names": what each is called
    record = {"split": split, "checkpoint": checkpoint, "checkpoint_file": ckpt["path"],
              "epoch": ckpt["state"]["epoch"],
              "epochs": {"teacher": ckpt["teacher_epoch"], **({"student": ckpt["state"]["epoch"]} if student else {})},
              "checkpoint_files": {"teacher": ckpt["teacher_path"], **({"student": ckpt["path"]} if student else {})},
              "student_source": str(compact) if compact is not None and masks else ("masks" if masks else None),
              "teacher_trained": teacher_trained, "names": names, "results": results}
    if reference is not None:
        record["reference_protocol"] = reference
    if file_role is not None:
        record[f"{file_role}_source"] = str(from_file)
    record["unseen"] = unseen
    atomic_write_json(out_dir / f"{split}.json", record)
    echo(format_table(named_rows(results, names=names)))
    if not teacher_trained:
        echo(f"note: method prune trains the masked model; '{names['teacher']}' is its weights without the mask "
             "(pruned weights train only through the masked model, or not at all) and is no teacher")
    if reference is not None:
        echo(f"note: '{REFERENCE_ROW}' is scored as the reference code did: query rows from the student masked at "
             f"rate {REFERENCE_PRUNE_RATE} ({reference['prune_structure']} masks recomputed from the teacher), "
             "candidates from the dense teacher entity table -- it needs every teacher weight and is no compressed "
             "model; 'student' is the true student (both sides masked, the run's own masks)")
    echo(unseen_line(split, unseen))
    source = f"student from {compact}" if compact is not None and masks else ""
    if file_role is not None:
        source = f"{names.get(file_role, file_role)} from {from_file}" + (f"; {source}" if source else "")
    if student and ckpt["teacher_path"] != ckpt["path"]:
        scored = (f"scored {names['teacher']} {ckpt['teacher_path']} (epoch {ckpt['teacher_epoch']}), "
                  f"{names['student']} {ckpt['path']} (epoch {record['epoch']})")
    else:
        scored = f"scored {ckpt['path']} (epoch {record['epoch']})"
    if ckpt.get("teacher_note") and checkpoint == "best":
        echo(f"note: {ckpt['teacher_note']}")
    echo(f"{scored}{'; ' + source if source else ''}")
    return record


def stage_export(run_dir: Path, checkpoint: str = "best", quantize: tuple[str, ...] = ()) -> dict[str, Any]:
    """The teacher and the student as model files (``store/export.py``): ``teacher.safetensors``,
    ``student.safetensors`` (fp32) and, per ``quantize`` scheme, ``teacher.<scheme>.safetensors`` and
    ``student.<scheme>.safetensors``; -> the manifest (sizes, sha256 of every file).

    The files go into a temporary folder renamed over ``export/`` at the end, under export/'s lock: a
    kill or a full disk leaves the old set or the new one.  Model files written earlier and not written
    again are kept; a folder holding files the manifest does not list is refused (``owned_folder``).
    """
    final = Path(run_dir) / "export"
    check_run_dataset(run_dir)  # before the lock and the staging folder are written
    info: dict[str, Any] = {}
    with folder_lock(final, inside=False, what="export folder"):
        recover_folder(final)
        with owned_folder(final, "export", info, keep_earlier=True) as out:
            info.update(_export_into(Path(run_dir), checkpoint, out, quantize, final))
    return info


def _export_into(run_dir: Path, checkpoint: str, out: Path, quantize: tuple[str, ...], final: Path) -> dict[str, Any]:
    cfg, data, model, student, ckpt = load_run(run_dir, checkpoint)
    files = export_run_files(cfg, data, model, student, ckpt, out, ("fp32", *quantize))
    teacher = files["teacher.safetensors"]
    info: dict[str, Any] = {"checkpoint": ckpt["path"], "teacher_file": str(final / "teacher.safetensors"),
                            "teacher_bytes": teacher["bytes"], "teacher_params": teacher["params"]}
    if student:
        s = files["student.safetensors"]
        info.update({"student_file": str(final / "student.safetensors"), "student_bytes": s["bytes"],
                     "student_nonzero": s["nonzero"], "ratio_to_teacher_file": s["bytes"] / teacher["bytes"]})
    return {**info, "files": files}
