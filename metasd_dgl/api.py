"""Python API: one call trains, exports and evaluates; another loads a run back.

    from metasd_dgl import pipeline, load_run

    result = pipeline(dataset="umls", method="metasd", config={"train": {"epochs": 2}}, run_dir="runs/x")
    result.test["student"]["both"]["mrr"]        # also result.teacher, result.student, result.buckets
    run = load_run(result.run_dir)
    run.student.score_triples(run.data.test[:5])  # the true (pruned) student, a plain LinkPredictor

Both are thin layers over the pipeline stages that the CLI runs
(``pipelines.stages``): same files, same ``UserError`` messages.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from metasd_dgl.config import ConfigError

PathLike = Union[str, Path]


@dataclass
class PipelineResult:
    """What ``pipeline()`` produced: test metrics, the run folder and the exported files."""

    run_dir: Path
    test: dict[str, Any]  # eval/test.json "results": {"teacher": {...}, "student": {...}}
    exports: dict[str, Any]  # export/manifest.json: teacher_file, student_file, sizes
    plots: list[Path] = field(default_factory=list)
    config: Any = None  # the resolved metasd_dgl.config.Config

    @property
    def teacher(self) -> dict[str, Any]:
        """Teacher metrics, both directions (mrr, hits@k, ...)."""
        return self.test["teacher"]["both"]

    @property
    def student(self) -> Optional[dict[str, Any]]:
        """Student metrics, both directions; None for a run without a student (plain)."""
        return self.test["student"]["both"] if "student" in self.test else None

    @property
    def buckets(self) -> dict[str, Any]:
        """``{"teacher": {kind: {bucket: metrics}}, "student": ...}``: the long-tail buckets."""
        return {name: res.get("buckets", {}) for name, res in self.test.items()}


@dataclass
class LoadedRun:
    """A trained run: models ready to score (eval mode, no gradients needed)."""

    run_dir: Path
    config: Any
    data: Any  # metasd_dgl.data.preprocess.ProcessedKG (names, splits, filter)
    teacher: Any  # LinkPredictor
    student: Optional[Any]  # LinkPredictor with the pruned weights zeroed, or None
    masks: Optional[dict]
    checkpoint: dict


def pipeline(dataset: Optional[str] = None, method: Optional[str] = None,
             config: Union[None, dict[str, Any], PathLike] = None, run_dir: Optional[PathLike] = None,
             *, resume: bool = False, reevaluate: bool = False, force: bool = False,
             quiet: bool = True, plots: bool = True) -> PipelineResult:
    """Preprocess, train, export and evaluate one run, like ``metasd-dgl pipeline``.

    ``config``: overrides of the defaults, a ``{"train": {"epochs": 2}}`` /
    ``{"train.epochs": 2}`` mapping or a YAML file; ``dataset``, ``method`` and
    ``run_dir`` win over it.  A finished run with the same config is not
    retrained (nor re-evaluated unless ``reevaluate``); an interrupted one is
    resumed.  ``quiet=False`` prints the console lines.  Raises the CLI's
    ``UserError``s (``ConfigError``, ``DataError``, ...).
    """
    import json

    from metasd_dgl.stages import run_status, stage_evaluate, stage_export, stage_preprocess, stage_train

    from metasd_dgl.config import load_config
    from metasd_dgl.console import Console

    files: list[PathLike] = []
    overrides: dict[str, Any] = {}
    if isinstance(config, (str, Path)):
        files.append(config)
    elif isinstance(config, dict):
        overrides.update(config)
    elif config is not None:
        raise ConfigError(f"config: expected a mapping or a YAML file path, got {type(config).__name__}")
    for key, value in (("data.dataset", dataset), ("train.method", method), ("run_dir", run_dir)):
        if value is not None:
            overrides[key] = str(value)
    cfg = load_config(*files, overrides=overrides)
    out = Path(cfg.run_dir)
    console = Console("quiet" if quiet else "normal", out / "train.log")
    stage_preprocess(cfg, force=force)
    status = None if resume else run_status(out, cfg)
    stage_train(cfg, resume=resume and (out / "checkpoints" / "last.pt").exists(), console=console,
                command="pipeline", echo=console.result if not quiet else (lambda _: None))
    stored = out / "eval" / "test.json"
    manifest = out / "export" / "manifest.json"
    finished = status is not None and status["finished"]
    if finished and not reevaluate and stored.is_file() and manifest.is_file():
        test = json.loads(stored.read_text(encoding="utf-8"))["results"]
        exports = json.loads(manifest.read_text(encoding="utf-8"))
    else:
        exports = stage_export(out)
        test = stage_evaluate(out, "test", echo=console.result if not quiet else (lambda _: None))["results"]
    made: list[Path] = []
    if plots:
        from metasd_dgl.tools.plots import make_plots

        made = make_plots(out, split="test")
    return PipelineResult(run_dir=out, test=test, exports=exports, plots=made, config=cfg)


def load_run(run_dir: PathLike, checkpoint: str = "best", teacher_fallback: bool = False) -> LoadedRun:
    """The teacher and (for prune/kd/metasd runs) the true student of a run folder, in eval mode.

    ``checkpoint``: "best" (each model from its own best validation epoch: the teacher of a run with a
    student from ``checkpoints/best-teacher.pt``, the student from ``best.pt``; ``teacher_fallback``:
    the teacher from ``best.pt`` when its own file is missing or damaged), "last" or a checkpoint path
    (one file for both; ``checkpoint["teacher_path"]``, ``["teacher_epoch"]`` say where the teacher
    came from).  The student is a copy
    of the teacher with the pruned weights set to zero, so that
    ``student(queries)`` / ``student.score_triples(triples)`` score exactly
    what ``evaluate`` ranks.
    """
    import torch

    from metasd_dgl.stages import load_run as _load

    cfg, data, model, weights, ckpt = _load(Path(run_dir), checkpoint, teacher_fallback)
    masks = ckpt.get("masks")
    model.eval()
    student = None
    if weights:
        student = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in student.named_parameters():
                p.copy_(weights[name])
        student.eval()
    return LoadedRun(run_dir=Path(run_dir), config=cfg, data=data, teacher=model, student=student,
                     masks=masks, checkpoint=ckpt)
