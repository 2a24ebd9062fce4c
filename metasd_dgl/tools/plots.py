"""Plots of a run (matplotlib's object API on an Agg canvas, no pyplot and no
backend switch; PNG files in ``<run_dir>/plots/``).

* ``training_curves.png``: mean training loss terms per epoch in two panels
  (the total loss and cross-entropies; the distillation terms ``kd_*``/``kl_*``,
  which are orders of magnitude smaller) and validation MRR of each row per
  validated epoch;
* ``buckets_<kind>.png``: MRR per long-tail bucket, one file per bucket kind
  in the eval files (relation frequency, degree of the predicted head/tail
  entity, ...), grouped bars, one bar per compared model (e.g. a plain run's
  dense model, a MetaSD teacher and student, prune-only's student);
* ``teacher_vs_student_<kind>.png``: this run's teacher and student per bucket,
  the gap (student - teacher) written over each pair;
* ``relation_frequency.png``: train triples per relation, rarest first (the
  bucket plots' order), log scale, coloured by frequency bucket, with the
  cumulative share of triples.

Legends sit outside the axes; the value axes leave room for the bar labels.
Rows are shown by their names (``console.ROW_NAMES``: "dense", "teacher",
"student", "dense (unmasked)"; the files key them by slot, "teacher" or
"student").  A prune-only run's dense weights are not a trained teacher (eval
JSON ``teacher_trained: false``): they are left out of the bucket plots.

The series are read by small helpers (``training_series``,
``bucket_series``, ``relation_frequency_series``) so that what is plotted
can be checked against the files.  A resumed run may log an epoch twice:
the last record of each epoch wins.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import matplotlib
import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from metasd_dgl.store.atomic import write_with
from metasd_dgl.console import row_names
from metasd_dgl.errors import DataError

PathLike = Union[str, Path]
#: An eval JSON, or (eval JSON, variant) to pick "teacher"/"student".
EvalRef = Union[PathLike, tuple[PathLike, str]]
_NOT_LOSSES = {"epoch", "step", "seconds", "density", "valid", "lr"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable JSON ({exc})") from None


def training_series(metrics_path: PathLike) -> dict[str, Any]:
    """``metrics.jsonl`` -> ``{"epoch": [..], "losses": {name: [..]}, "valid_epoch": [..],
    "valid_mrr": {"teacher": [..], "student": [..]}}`` (epochs ascending; a
    loss missing in an epoch is NaN; gradient norms and timings are left out)."""
    path = Path(metrics_path)
    train: dict[int, dict[str, float]] = {}
    valid: dict[int, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                continue  # the line a running trainer is writing: read next time
            raise DataError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(rec, dict) or "epoch" not in rec:
            continue
        if isinstance(rec.get("valid"), dict):
            valid[int(rec["epoch"])] = rec["valid"]
        else:
            train[int(rec["epoch"])] = {k: float(v) for k, v in rec.items() if k not in _NOT_LOSSES
                                        and "norm" not in k and isinstance(v, (int, float))}
    epochs = sorted(train)
    names = sorted({k for r in train.values() for k in r}, key=lambda k: (k != "loss", k))
    v_epochs = sorted(valid)
    variants = sorted({k for r in valid.values() for k in r if isinstance(r[k], dict)})
    return {
        "epoch": epochs,
        "losses": {n: [train[e].get(n, math.nan) for e in epochs] for n in names},
        "valid_epoch": v_epochs,
        "valid_mrr": {v: [float(valid[e].get(v, {}).get("mrr", math.nan)) for e in v_epochs] for v in variants},
    }


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _legend_below(ax: Any, **kw: Any) -> None:
    """A legend under the axes (never over the data)."""
    handles, _ = ax.get_legend_handles_labels()
    if handles or kw.get("handles"):
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False, **kw)


def is_distillation(name: str) -> bool:
    """kd_* and kl_* terms: plotted apart from the cross-entropies."""
    return name.startswith(("kd", "kl_"))


def plot_training_curves(metrics_path: PathLike, out_png: PathLike, method: Optional[str] = None) -> Path:
    """Loss and cross-entropies, distillation terms (own panel), validation MRR -> ``out_png``;
    ``method`` (train.method) names the validation rows (``console.row_names``)."""
    series = training_series(metrics_path)
    losses = series["losses"]
    groups = [(title, {n: v for n, v in losses.items() if is_distillation(n) == kd})
              for title, kd in (("loss and cross-entropy", False), ("distillation terms (KD, KL)", True))]
    groups = [g for g in groups if g[1]] or [("training losses", {})]
    fig = _figure(5.2 * (len(groups) + 1), 4.6)
    axes = fig.subplots(1, len(groups) + 1)
    for ax, (title, group) in zip(axes, groups):
        for name, values in group.items():
            ax.plot(series["epoch"], values, marker=".", label=name, linewidth=2 if name == "loss" else 1)
        ax.set(xlabel="epoch", ylabel="mean over batches", title=title)
        _legend_below(ax)
    ax_v = axes[-1]
    names = row_names(series["valid_mrr"], method)
    for slot, values in series["valid_mrr"].items():
        ax_v.plot(series["valid_epoch"], values, marker="o", label=names[slot])
    ax_v.set(xlabel="epoch", ylabel="filtered MRR", title="validation MRR")
    _legend_below(ax_v)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, out_png, bottom=0.3, right=0.97)


def _bucket_group(buckets: Mapping[str, Any], kind: str) -> Optional[Mapping[str, Any]]:
    """The bucket table of ``kind`` ("relation" or "entity"), tolerant of naming."""
    if kind in buckets:
        return buckets[kind]
    for key, value in buckets.items():
        if key.lower().startswith(kind[:3].lower()) and isinstance(value, Mapping):
            return value
    return None


def _mrr(metrics: Any) -> float:
    if not isinstance(metrics, Mapping):
        return math.nan
    for key in ("mrr", "MRR", "both"):
        if key in metrics:
            value = metrics[key]
            return _mrr(value) if key == "both" else (math.nan if value is None else float(value))
    return math.nan


def bucket_series(eval_json: PathLike, variant: Optional[str] = None, kind: str = "relation",
                  ) -> tuple[list[str], list[float], str]:
    """eval/<split>.json -> (bucket labels, MRR per bucket, variant used).

    ``variant`` defaults to "student" when the file has one, else "teacher".
    Buckets are looked up under ``results[variant]["buckets"][kind]`` (a
    ``{label: metrics}`` mapping or a list of ``{"label", "mrr", ...}``).
    """
    path = Path(eval_json)
    results = _read_json(path).get("results", {})
    if variant is None:
        variant = "student" if "student" in results else "teacher"
    if variant not in results:
        raise DataError(f"{path}: no {variant!r} results (has {', '.join(results) or 'none'})")
    group = _bucket_group(results[variant].get("buckets", {}) or {}, kind)
    if group is None:
        return [], [], variant
    if isinstance(group, Mapping):
        return list(group), [_mrr(m) for m in group.values()], variant
    labels = [str(m.get("label", i)) for i, m in enumerate(group)]
    return labels, [_mrr(m) for m in group], variant


def bucket_kinds(refs: Iterable[EvalRef]) -> list[str]:
    """Bucket kinds (e.g. "relation", "head", "tail") found in the eval files, in order of appearance."""
    kinds: dict[str, None] = {}
    for ref in refs:
        path, variant = (ref if isinstance(ref, tuple) else (ref, None))
        results = _read_json(Path(path)).get("results", {})
        chosen = variant or ("student" if "student" in results else "teacher")
        kinds.update(dict.fromkeys((results.get(chosen, {}) or {}).get("buckets", {}) or {}))
    return list(kinds)


def bucket_comparison(runs: Mapping[str, EvalRef], out_png: PathLike, kind: str = "relation") -> Path:
    """Grouped bars of MRR per bucket, one bar per run label -> ``out_png``.

    ``runs``: label -> eval JSON path, or (path, "teacher"|"student").
    Buckets are aligned by label (order of first appearance).
    """
    table: dict[str, dict[str, float]] = {}
    labels: list[str] = []
    for name, ref in runs.items():
        path, variant = (ref if isinstance(ref, tuple) else (ref, None))
        b_labels, mrrs, _ = bucket_series(path, variant, kind)
        table[name] = dict(zip(b_labels, mrrs))
        labels += [b for b in b_labels if b not in labels]
    fig = _figure(max(6.0, 1.6 * len(labels) * max(1, len(runs)) / 2) + 2.5, 4.2)
    ax = fig.subplots()
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(runs))
    top = 0.0
    for i, (name, values) in enumerate(table.items()):
        heights = [values.get(b, math.nan) for b in labels]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, heights, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
        top = max([top] + [h for h in heights if math.isfinite(h)])
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, max(top, 1e-3) * 1.15)  # room for the labels above the bars
    ax.set(ylabel="filtered MRR", title=f"MRR per {kind} bucket (left: long tail)")
    if table:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, out_png, right=0.72)


def plot_teacher_student(eval_json: PathLike, out_png: PathLike, kind: str = "relation") -> Path:
    """This run's teacher and student per ``kind`` bucket, the gap (student - teacher) over each pair."""
    labels, teacher, _ = bucket_series(eval_json, "teacher", kind)
    s_labels, student, _ = bucket_series(eval_json, "student", kind)
    student_by = dict(zip(s_labels, student))
    student = [student_by.get(b, math.nan) for b in labels]
    fig = _figure(max(6.0, 1.7 * len(labels)) + 2.5, 4.2)
    ax = fig.subplots()
    x = np.arange(len(labels))
    for offset, values, name, color in ((-0.2, teacher, "teacher", "tab:blue"),
                                        (0.2, student, "student", "tab:orange")):
        bars = ax.bar(x + offset, values, 0.4, label=name, color=color)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    finite = [v for v in teacher + student if math.isfinite(v)]
    top = max(finite, default=1e-3) or 1e-3
    for i, (t, st) in enumerate(zip(teacher, student)):
        if math.isfinite(t) and math.isfinite(st):
            # the teacher's height over the student bar, joined to the student's beside the bar
            ax.plot([i, i + 0.44], [t, t], color="crimson", linestyle="--", linewidth=1)
            ax.plot([i + 0.44, i + 0.44], [min(t, st), max(t, st)], color="crimson", linewidth=1.5)
            ax.text(i, max(t, st) + 0.1 * top, f"gap {st - t:+.3f}", ha="center", fontsize=8, color="crimson")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, top * 1.25)
    ax.set(ylabel="filtered MRR", title=f"teacher vs student per {kind} bucket (left: long tail)")
    handles = ax.get_legend_handles_labels()[0] + [Line2D([], [], color="crimson", label="gap: student - teacher")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, out_png, right=0.72)


def relation_frequency_series(stats_json: PathLike) -> dict[str, list]:
    """stats.json -> ``{"relation": ids sorted by frequency, rarest first, "frequency": counts,
    "bucket": bucket id per sorted relation, "labels": bucket labels}``."""
    stats = _read_json(Path(stats_json))
    freq = np.asarray(stats.get("relation_frequency", []), dtype=np.int64)
    order = np.argsort(freq, kind="stable")
    buckets = stats.get("relation_buckets", {}) or {}
    bucket = np.asarray(buckets.get("bucket", [0] * len(freq)), dtype=np.int64)
    return {"relation": order.tolist(), "frequency": freq[order].tolist(),
            "bucket": bucket[order].tolist() if len(bucket) == len(freq) else [0] * len(freq),
            "labels": list(buckets.get("labels", []))}


def plot_relation_frequency(stats_json: PathLike, out_png: PathLike,
                            relation_names: Optional[Sequence[str]] = None) -> Path:
    """Sorted relation frequencies (log scale) with the cumulative share -> ``out_png``."""
    s = relation_frequency_series(stats_json)
    freq = np.asarray(s["frequency"], dtype=float)
    fig = _figure(11.5, 4.2)
    ax = fig.subplots()
    x = np.arange(len(freq))
    colors = matplotlib.colormaps["viridis"]
    nb = max(1, len(s["labels"]) or (max(s["bucket"], default=0) + 1))
    ax.bar(x, np.maximum(freq, 0.5), color=[colors(b / max(1, nb - 1)) for b in s["bucket"]], width=1.0)
    ax.set_yscale("log")
    ax.set(xlabel="relations, rarest first", ylabel="train triples (log)",
           title=f"relation frequency ({len(freq)} relations, {int(freq.sum())} triples)")
    named = relation_names is not None and len(freq) <= 40
    if named:
        ax.set_xticks(x, [relation_names[r] for r in s["relation"]], rotation=90, fontsize=6)
    twin = ax.twinx()
    total = freq.sum() or 1.0
    twin.plot(x, np.cumsum(freq) / total, color="crimson", linewidth=1)
    twin.set(ylabel="cumulative share of triples", ylim=(0, 1.02))
    handles = [Patch(color=colors(b / max(1, nb - 1)), label=label) for b, label in enumerate(s["labels"])]
    handles.append(Line2D([], [], color="crimson", label="cumulative share (right axis)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 1.0), frameon=False)
    return _save(fig, out_png, bottom=0.35 if named else 0.14, right=0.72)


def _save(fig: Figure, out_png: PathLike, bottom: float = 0.14, right: float = 0.9) -> Path:
    """Fixed margins (``tight_layout`` costs seconds per figure on a busy CPU)."""
    out = Path(out_png)
    fig.subplots_adjust(left=0.07, right=right, top=0.9, bottom=bottom, wspace=0.3)
    # atomic and checked: a full disk is one line naming the PNG; the previous plot is kept
    write_with(out, lambda fh: fig.savefig(fh, dpi=100, format="png"), "could not write the plot")
    return out


def run_method(run_dir: PathLike) -> Optional[str]:
    """``train.method`` of the run's ``config.yaml`` (None without a readable one)."""
    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    method = (cfg.get("train") or {}).get("method") if isinstance(cfg, dict) else None
    return method if isinstance(method, str) else None


def stats_path(run_dir: PathLike) -> Optional[Path]:
    """``stats.json`` of the run's processed folder (config ``data.processed_dir``, else ``<run>/data``)."""
    run_dir = Path(run_dir)
    processed = run_dir / "data"
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            cfg = {}
        given = (cfg.get("data") or {}).get("processed_dir") if isinstance(cfg, dict) else None
        if given:
            processed = Path(given)
    path = processed / "stats.json"
    return path if path.is_file() else None


def eval_file(run_dir: PathLike, split: str = "test") -> Optional[Path]:
    """``<run>/eval/<split>.json`` (falling back to the other split), or None."""
    for s in (split, "valid" if split == "test" else "test"):
        path = Path(run_dir) / "eval" / f"{s}.json"
        if path.is_file():
            return path
    return None


def make_plots(run_dir: PathLike, compare: Optional[Mapping[str, EvalRef]] = None, split: str = "test",
                relation_names: Optional[Sequence[str]] = None) -> list[Path]:
    """Write every plot the run's files allow into ``<run_dir>/plots``; return their paths.

    ``compare``: extra label -> run folder or eval JSON (optionally with a
    variant) shown next to this run's teacher and student in the bucket plots.
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    made: list[Path] = []
    method = run_method(run_dir)
    if (run_dir / "metrics.jsonl").is_file():
        made.append(plot_training_curves(run_dir / "metrics.jsonl", plots / "training_curves.png", method))
    runs: dict[str, EvalRef] = {}
    own = eval_file(run_dir, split)
    pair = False
    if own is not None:
        record = _read_json(own)
        results = record.get("results", {})
        trained = record.get("teacher_trained", True)
        names = record.get("names") or record.get("rows") or row_names(results, method)  # "rows": older files
        for variant in ("teacher", "student"):
            if variant in results and (variant == "student" or trained):
                runs[f"{run_dir.name} {names.get(variant, variant)}"] = (own, variant)
        pair = trained and "teacher" in results and "student" in results
    for label, ref in (compare or {}).items():
        path, variant = (ref if isinstance(ref, tuple) else (ref, None))
        path = Path(path)
        if path.is_dir():
            found = eval_file(path, split)
            if found is None:
                raise DataError(f"{path}: no eval/{split}.json; run evaluate on it first")
            path = found
        runs[label] = (path, variant) if variant else path
    for kind in bucket_kinds(runs.values()):
        safe = re.sub(r'[^A-Za-z0-9_.-]+', '-', kind)
        made.append(bucket_comparison(runs, plots / f"buckets_{safe}.png", kind))
        if pair:
            made.append(plot_teacher_student(own, plots / f"teacher_vs_student_{safe}.png", kind))
    stats = stats_path(run_dir)
    if stats is not None:
        made.append(plot_relation_frequency(stats, plots / "relation_frequency.png", relation_names))
    return made
