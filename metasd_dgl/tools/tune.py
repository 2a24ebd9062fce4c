"""Hyper-parameter search (``metasd-dgl tune``) on Optuna: TPE sampling, median pruning, SQLite study.

Study folder (``--study-dir``, default ``<config's run_dir>-tune``)::

    study.db        Optuna's RDB storage (SQLite): every trial, its params, state and reported MRRs
    study.json      what the study is of: config and search-space files and their sha256
    data/           the processed dataset, shared by every trial
    trial-0000/     a normal run folder (config.yaml, checkpoints/, metrics.jsonl, train.log), one per trial
    best.yaml       the search's whole config (CONFIG, every --config, the command line's options, merged)
                    with the best trial's params, no run_dir: ``metasd-dgl pipeline STUDY/best.yaml``
    best.json       the best trial: number, params, run folder, validation and test metrics

Selection is on the validation MRR only (the run's selection MRR, the best
over its validations); the test split is evaluated for the best trial alone,
after the search, and reported, never used to choose.  Each validation
reports its MRR to Optuna (``Trainer(on_validation=...)``); a trial the
pruner stops raises ``optuna.TrialPruned`` from inside the loop and counts
as finished.

Resuming (``--resume``): the study is loaded from ``study.db``; trials that
were running when the process died are marked failed, their params queued
again, and trials run until ``trials`` have finished (complete or pruned).
A finished trial is never lost: Optuna commits each to the database when it
ends.  The hidden env var ``METASD_TUNE_KILL_AT_TRIAL=K`` makes the process
SIGKILL itself at the start of trial K (tests of resuming, no timing).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from metasd_dgl.store.atomic import atomic_write_text  # checked: a full disk is one line naming the file
from metasd_dgl.config import Config, get, load_config
from metasd_dgl.data.registry import sha256_file
from metasd_dgl.errors import UserError
from metasd_dgl.tools.search_space import Param, default_space_path, load_space

STUDY_NAME = "metasd-dgl"
KILL_ENV = "METASD_TUNE_KILL_AT_TRIAL"
PRUNERS = ("median", "none")


@dataclass
class TuneResult:
    study_dir: Path
    best_number: int
    best_params: dict[str, Any]
    best_value: float
    valid: dict[str, Any]  # best trial's validation metrics (teacher/student rows)
    test: dict[str, Any]  # best trial's test metrics (reported, never used for selection)
    table: list[dict[str, Any]]  # one row per trial


def _identity(configs: list[Path], space: Path, overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The study's config (the files in order, each with its sha256, and the command line's options)
    and search space."""
    out: dict[str, Any] = {"config": ", ".join(str(c.resolve()) for c in configs),
                           "config_sha256": ",".join(sha256_file(c) for c in configs),
                           "space": str(space.resolve()), "space_sha256": sha256_file(space)}
    if overrides:
        out["options"] = {k: str(v) for k, v in overrides.items()}
    return out


def _check_study_dir(study_dir: Path, identity: dict[str, Any], resume: bool) -> bool:
    """True if a study is there to resume; UserError for a folder of another study or config."""
    marker = study_dir / "study.json"
    if not study_dir.exists() or (study_dir.is_dir() and not any(study_dir.iterdir())):
        if resume:
            raise UserError(f"{study_dir}: no study to resume; drop --resume to start one")
        return False
    if not marker.is_file():
        raise UserError(f"{study_dir}: exists and holds no study (no study.json); choose another --study-dir")
    try:
        old = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{marker}: unreadable; choose another --study-dir") from None
    changed = [k for k in ("config_sha256", "space_sha256") if old.get(k) != identity[k]]
    if old.get("options", {}) != identity.get("options", {}):
        changed.append("options")
    if changed:
        what = old.get("config") if "config_sha256" in changed or "options" in changed else old.get("space")
        if "options" in changed:
            what = f"{what}, options {old.get('options', {})}"
        raise UserError(f"{study_dir}: holds the study of another config ({what} with another content: "
                        f"{', '.join(k.split('_')[0] for k in changed)} differ); choose another --study-dir")
    if not resume:
        raise UserError(f"{study_dir}: holds a study of this config; pass --resume to continue it")
    return True


def _trial_config(base_files: list[Path], params: dict[str, Any], run_dir: Path, processed: Path,
                  options: Optional[dict[str, Any]] = None) -> Config:
    overrides = {**(options or {}), **params, "run_dir": str(run_dir), "data.processed_dir": str(processed)}
    return load_config(*base_files, overrides=overrides)


def _flat(mapping: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 0.1}, "model.dim": 8}`` -> ``{"train.lr": 0.1, "model.dim": 8}`` (order kept)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and "." not in str(key):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[str(key)] = value
    return out


def best_config(base_files: list[Path], options: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """What ``best.yaml`` holds: the options the base files set (in order), then the command line's,
    then the best trial's params, nested by section -- complete on its own, without ``run_dir`` (the
    search's folders are its own; a run of it defaults to runs/<dataset>-<decoder>-<method>)."""
    flat: dict[str, Any] = {}
    for path in base_files:
        flat.update(_flat(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}))
    flat.update(options)
    flat.update(params)
    flat.pop("run_dir", None)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, option = key.partition(".")
        if option:
            out.setdefault(section, {})[option] = value
        else:
            out[section] = value
    return out


def _typed(cfg: Config, key: str, value: Any) -> Any:
    """A command-line value as ``cfg`` holds it (``"8"`` -> 8 for model.dim); the text if ``key`` is no option."""
    try:
        return get(cfg, key)
    except AttributeError:  # a moved name: load_config accepted it already
        return value


def _minutes(trial) -> Optional[float]:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds() / 60


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(study) -> list[dict[str, Any]]:
    """One row per trial: number, params, valid MRR, state, minutes."""
    return [{"number": t.number, "params": dict(t.params), "valid_mrr": t.value if t.values else
             (max(t.intermediate_values.values()) if t.intermediate_values else None),
             "state": t.state.name.lower(), "minutes": _minutes(t)} for t in study.trials]


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'trial':>5}  {'state':<8} {'valid MRR':>9} {'min':>6}  params"]
    for r in rows:
        mrr = f"{r['valid_mrr']:.4f}" if r["valid_mrr"] is not None else "-"
        minutes = f"{r['minutes']:.2f}" if r["minutes"] is not None else "-"
        params = " ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
        lines.append(f"{r['number']:>5}  {r['state']:<8} {mrr:>9} {minutes:>6}  {params}")
    return lines


def _finished(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def _recover(study, echo: Callable[[str], None]) -> None:
    """Trials left running by a killed process: marked failed, their params queued to run again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(dict(t.params), skip_if_exists=False)
        echo(f"trial {t.number} was interrupted: marked failed, its params queued again")


def _objective(base_files: list[Path], space: list[Param], study_dir: Path, processed: Path,
               options: Optional[dict[str, Any]] = None):
    import optuna

    from metasd_dgl.console import Console
    from metasd_dgl.data.preprocess import load_processed
    from metasd_dgl.train.loop import train

    data = load_processed(processed)

    def objective(trial: "optuna.Trial") -> float:
        params = {p.name: p.suggest(trial) for p in space}
        kill_at = os.environ.get(KILL_ENV)
        if kill_at is not None and int(kill_at) == trial.number:  # tests: a process killed mid-study
            os.kill(os.getpid(), signal.SIGKILL)
        run_dir = study_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = _trial_config(base_files, params, run_dir, processed, options)

        def on_validation(epoch: int, mrr: float) -> None:
            trial.report(mrr, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (valid MRR {mrr:.4f})")

        console = Console("quiet", run_dir / "train.log", stream=io.StringIO())
        trainer = train(cfg, data, run_dir, progress=False, console=console, on_validation=on_validation)
        return float(trainer.state.best_mrr)

    return objective


def _progress(total: int, echo: Callable[[str], None]):
    from optuna.trial import TrialState

    def callback(study, trial) -> None:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return
        value = trial.value if trial.state == TrialState.COMPLETE else \
            (max(trial.intermediate_values.values()) if trial.intermediate_values else None)
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        minutes = _minutes(trial)
        echo(f"trial {trial.number} {trial.state.name.lower()} ({_finished(study)}/{total}): valid MRR "
             f"{value:.4f} in {minutes:.2f} min; {best}; "
             + " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items()))

    return callback


def _evaluate_best(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from metasd_dgl.stages import stage_evaluate

    quiet = lambda _line: None  # noqa: E731
    valid = stage_evaluate(run_dir, "valid", echo=quiet)["results"]
    test = stage_evaluate(run_dir, "test", echo=quiet)["results"]
    return valid, test


def open_study(db: Path, seed: int, pruner: str = "median"):
    """The Optuna study stored in SQLite file ``db`` (created, or loaded to continue)."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{Path(db).resolve()}")
    return optuna.create_study(
        storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if pruner == "median"
        else optuna.pruners.NopPruner())


@contextlib.contextmanager
def database_errors(db: Path):
    """SQLite's refusals to write the study (a full disk, a file-size limit, a read-only folder) as one
    UserError naming the file; the trials already stored stay."""
    try:
        yield
    except Exception as exc:  # sqlalchemy.exc.OperationalError / sqlite3.OperationalError
        text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
        if type(exc).__name__ != "OperationalError" or not any(
                word in text.lower() for word in ("full", "readonly", "read-only", "i/o", "unable to open")):
            raise
        raise UserError(f"{db}: could not write the study database: {text}; free space (or raise the file-size "
                        f"limit) and run the same command again: finished trials are kept") from None


def tune(config: Path, trials: int, study_dir: Path, space_path: Optional[Path] = None,
         timeout_min: Optional[float] = None, resume: bool = False, pruner: str = "median",
         extra_configs: tuple[Path, ...] = (), echo: Callable[[str], None] = print,
         overrides: Optional[dict[str, Any]] = None) -> TuneResult:
    """Run (or continue) a study of ``trials`` finished trials; module docstring for the layout.

    ``overrides``: the command line's options (``{"data.dataset": ...}``), applied after the files
    in every trial, part of the study's identity and of ``best.yaml``.
    """
    import optuna

    from metasd_dgl.data.preprocess import preprocess
    from metasd_dgl.data.registry import processed_folder
    from metasd_dgl.train.loop import NumericalError

    config = Path(config)
    base_files = [config, *map(Path, extra_configs)]
    overrides = dict(overrides or {})
    base = load_config(*base_files, overrides=overrides)  # a bad config fails before anything is written
    space_path = Path(space_path) if space_path else default_space_path(config)
    space = load_space(space_path, base)
    if pruner not in PRUNERS:
        raise UserError(f"pruner {pruner!r} is not one of {', '.join(PRUNERS)}")
    study_dir = Path(study_dir)
    identity = _identity(base_files, space_path, overrides)
    existing = _check_study_dir(study_dir, identity, resume)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data_dir = base.data.data_dir  # empty: registry.resolve reads METASD_DATA_DIR itself
    processed = study_dir / "data"
    if base.data.processed_dir and processed_folder(base.data.dataset):  # a processed folder: used in place
        processed = Path(base.data.processed_dir)
    else:
        preprocess(base.data.dataset, processed, Path(data_dir) if data_dir else None, base.data.format)
    if not existing:
        atomic_write_text(study_dir / "study.json", json.dumps(identity, indent=2) + "\n")
    with database_errors(study_dir / "study.db"):
        study = open_study(study_dir / "study.db", base.train.seed, pruner)
    if existing:
        _recover(study, echo)
    todo = trials - _finished(study)
    echo(f"study {study_dir}: {len(space)} options searched, {_finished(study)} of {trials} trials finished"
         + (f", {todo} to run" if todo > 0 else ""))
    if todo > 0:
        started = time.monotonic()
        objective = _objective(base_files, space, study_dir, processed, overrides)
        progress = _progress(trials, echo)
        # A diverged trial (NaN: NumericalError) is marked failed and another runs in its place;
        # any other error (Ctrl-C, a bug) ends the command, the finished trials stay in study.db.
        for _round in range(3):  # failed trials are replaced, up to twice
            if _finished(study) >= trials:
                break
            left = None if timeout_min is None else timeout_min * 60 - (time.monotonic() - started)
            if left is not None and left <= 0:
                echo(f"timeout ({timeout_min} min) reached with {_finished(study)} of {trials} trials finished")
                break
            with database_errors(study_dir / "study.db"):
                study.optimize(objective, n_trials=trials - _finished(study), timeout=left,
                               callbacks=[progress], catch=(NumericalError,))
    rows = table_rows(study)
    for line in format_table(rows):
        echo(line)
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(f"{study_dir}: no trial completed; see the trial folders' train.log") from None
    best_dir = Path(best.user_attrs["run_dir"])
    valid, test = _evaluate_best(best_dir)
    best_yaml = study_dir / "best.yaml"
    run_it = f"metasd-dgl pipeline {shlex.quote(str(best_yaml))}"
    sources = ", ".join([*(str(f) for f in base_files), *(f"{k}={v}" for k, v in overrides.items())])
    header = (f"# best trial {best.number} of {study_dir} (valid MRR {best.value:.4f}): the search's config "
              f"({sources}) with the trial's values\n# run it: {run_it}\n")
    typed = {k: _typed(base, k, v) for k, v in overrides.items()}  # --set's strings as the option's type
    atomic_write_text(best_yaml, header + yaml.safe_dump(best_config(base_files, typed, dict(best.params)),
                                                         sort_keys=False))
    from metasd_dgl.console import named_rows, row_names

    method = best.params.get("train.method", base.train.method)
    record = {"number": best.number, "params": best.params, "valid_mrr": best.value, "run_dir": str(best_dir),
              "names": row_names(valid, method), "valid": valid, "test": test,
              "note": "selected on valid MRR; test evaluated for the best trial only, never used to select"}
    atomic_write_text(study_dir / "best.json", json.dumps(record, indent=2) + "\n")
    for split, res in (("valid", valid), ("test", test)):
        for name, m in named_rows(res, method).items():
            o = m["both"]
            echo(f"best trial {best.number} {name} {split}: " + "  ".join(
                f"{k} {o[k]:.4f}" for k in ("mrr", "hits@1", "hits@3", "hits@10") if k in o))
    echo(f"best config: {best_yaml}; train it with: {run_it}")
    return TuneResult(study_dir, best.number, dict(best.params), float(best.value), valid, test, rows)
