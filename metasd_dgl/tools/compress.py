"""The compression report: every stored variant of a run (and of compared runs), its size and its accuracy.

``compress_report(run_dir, ...)`` writes each variant's file into ``RUN_DIR/compress/`` and scores
*that file* (loaded, dequantised to float32, ranked with the exact filtered protocol of
``evaluation.rank_split``) on validation and on test:

* this run's teacher: ``teacher.safetensors`` (fp32: the size baseline) and
  ``teacher.{fp16,int8,int4}.safetensors``;
* its student, where it has one: ``student.safetensors`` (fp32) and ``student.{int8,int4}.safetensors``
  (kept columns or kept values only; ``store/export.py``);
* each ``--compare LABEL=RUN_DIR[@teacher|@student]`` run (same dataset): its student (or its
  teacher when it has none, or as chosen) in fp32 and int8, under ``compress/compare/<LABEL>/``.

Per variant: bytes (the file's size on disk), ratio to the fp32 teacher file, MRR and Hits@10 on
valid and test, and the MRR of the rarest third of the relations (bucket 0 of the relation
frequency buckets with 3 buckets, ``data.stats``).  The reference is the best fp32 variant in the
report by validation MRR (this run's teacher, its student or a compared run's; ``reference`` names
another, ``choose_reference``); the recommendation is the smallest variant whose *validation* MRR
is at least the reference's validation MRR minus ``tolerance`` (an absolute MRR difference); test
never chooses.  The Pareto front is taken on (bytes, MRR of the
reported split): a variant is on it when no other is at most as large and at least as accurate,
one of them strictly.  ``report.json``, ``report.png`` (bytes on a log axis against MRR, the front
highlighted, the recommendation starred) and the markdown table are the output.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from metasd_dgl.store.atomic import atomic_write_json, recover_folder, write_with
from metasd_dgl.errors import UserError

RARE_BUCKETS = 3
TEACHER_SCHEMES = ("fp32", "fp16", "int8", "int4")
STUDENT_SCHEMES = ("fp32", "int8", "int4")
COMPARE_SCHEMES = ("fp32", "int8")
#: A compare run: (label, run folder, "teacher" | "student" | None = its student if it has one)
CompareSpec = Tuple[str, Path, Optional[str]]


def parse_compare(text: str) -> CompareSpec:
    """``LABEL=RUN_DIR[@teacher|@student]`` -> (label, folder, role or None); UserError otherwise."""
    if "=" not in text:
        raise UserError(f"--compare {text!r}: expected LABEL=RUN_DIR[@teacher|@student]")
    label, ref = (x.strip() for x in text.split("=", 1))
    role = None
    match = re.fullmatch(r"(.*)@(teacher|student)", ref)
    if match:
        ref, role = match.group(1), match.group(2)
    if not label or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", label):
        raise UserError(f"--compare {text!r}: the label must be letters, digits, '.', '_', '+' or '-'")
    if not Path(ref).is_dir():
        raise UserError(f"--compare {text!r}: {ref} is no run folder")
    return label, Path(ref), role


def pareto_front(points: Sequence[Tuple[float, float]]) -> list[bool]:
    """For (size, accuracy) points: True where no other point is at most as large and at least as
    accurate with one of the two strict (a point equal to another stays on the front)."""
    out = []
    for i, (b, m) in enumerate(points):
        dominated = any((b2 <= b and m2 >= m) and (b2 < b or m2 > m)
                        for j, (b2, m2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def recommend(variants: Sequence[Mapping[str, Any]], baseline_valid_mrr: float, tolerance: float) -> Optional[int]:
    """Index of the smallest variant with valid MRR >= baseline - tolerance (ties: the higher valid MRR)."""
    ok = [i for i, v in enumerate(variants) if v["valid"]["mrr"] is not None
          and v["valid"]["mrr"] >= baseline_valid_mrr - tolerance - 1e-12]
    if not ok:
        return None
    return min(ok, key=lambda i: (variants[i]["bytes"], -variants[i]["valid"]["mrr"]))


def reference_labels(variants: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``{label: index}`` of what ``--reference`` may name: every variant's name, and each fp32 variant
    by its run's label alone (``teacher``, ``student``: this run's; a ``--compare`` label: that run's)."""
    labels = {v["name"]: i for i, v in enumerate(variants)}
    for i, v in enumerate(variants):
        if v["scheme"] == "fp32":
            labels.setdefault(v["label"] or v["role"], i)
    return labels


def choose_reference(variants: Sequence[Mapping[str, Any]], label: Optional[str] = None) -> int:
    """Index of the tolerance's reference: the fp32 variant with the highest validation MRR (ties: the
    first listed), or the variant ``label`` names (``reference_labels``); UserError listing the labels
    when it names none.  Needs ``valid`` scores unless ``label`` is given."""
    if label is not None:
        labels = reference_labels(variants)
        if label not in labels:
            raise UserError(f"--reference {label!r}: no such variant in this report; labels: "
                            + ", ".join(repr(x) for x in labels))
        return labels[label]
    fp32 = [i for i, v in enumerate(variants) if v["scheme"] == "fp32" and v["valid"]["mrr"] is not None]
    return max(fp32, key=lambda i: (variants[i]["valid"]["mrr"], -i))


def _scores(summary: dict, rare_label: str) -> dict[str, Any]:
    both = summary["both"]
    rare = summary.get("buckets", {}).get("relation", {}).get(rare_label, {})
    return {"mrr": both["mrr"], "hits@10": both["hits@10"], "count": both["count"],
            "rare_mrr": rare.get("mrr"), "rare_count": rare.get("count", 0)}


class _Scorer:
    """Ranks tables on valid and test of one dataset (the run's unseen policy; relation buckets of 3)."""

    def __init__(self, cfg, data) -> None:
        from metasd_dgl.data.stats import evaluation_buckets
        from metasd_dgl.evaluate.unseen import apply_unseen

        self.data = data
        self.max_memory_mb = cfg.eval.max_memory_mb
        self.splits: dict[str, Any] = {}
        for split in ("valid", "test"):
            triples, _ = apply_unseen(getattr(data, split), data.train, data.num_entities, data.num_relations,
                                      cfg.eval.unseen, split)
            buckets = evaluation_buckets(triples, data.train, data.num_entities, data.num_relations, RARE_BUCKETS)
            self.splits[split] = (triples, {"relation": buckets["relation"]}, buckets["relation"][1][0])

    def __call__(self, model, tables) -> dict[str, Any]:
        from metasd_dgl.evaluate.ranking import rank_split, summarize

        out = {}
        for split, (triples, buckets, rare_label) in self.splits.items():
            ranks = rank_split(model, triples, self.data.num_relations, self.data.filter, tables=tables,
                               max_memory_mb=self.max_memory_mb)
            out[split] = _scores(summarize(ranks, buckets), rare_label)
        out["rare_bucket"] = self.splits["test"][2]
        return out


def _table(report: dict) -> str:
    split = report["split"]
    head = ["variant", "file", "bytes", "ratio", "valid MRR", f"{split} MRR", f"{split} H@10",
            f"{split} rare-third MRR", "front"]
    rows = []
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for i, v in enumerate(report["variants"]):
        name = v["name"] + (" **(recommended)**" if i == report["recommended_index"] else "") \
            + (" *(reference)*" if v["name"] == report["reference"] else "")
        s = v[split]
        rows.append([name, v["file"], f"{v['bytes']:,}", f"{v['ratio']:.4f}", fmt(v["valid"]["mrr"]),
                     fmt(s["mrr"]), fmt(s["hits@10"]), fmt(s["rare_mrr"]), "yes" if v["pareto"] else ""])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_report(report: dict, out_png: Path) -> Path:
    """Bytes (log x axis) against the reported split's MRR; the Pareto front joined and highlighted,
    the recommendation starred."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    split = report["split"]
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    vs = report["variants"]
    xs = [v["bytes"] for v in vs]
    ys = [v[split]["mrr"] for v in vs]
    front = sorted((x, y) for x, y, v in zip(xs, ys, vs) if v["pareto"])
    ax.scatter([x for x, v in zip(xs, vs) if not v["pareto"]], [y for y, v in zip(ys, vs) if not v["pareto"]],
               color="0.6", s=30, label="dominated", zorder=2)
    ax.scatter([x for x, _ in front], [y for _, y in front], color="tab:red", s=45, label="Pareto front", zorder=3)
    if front:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="tab:red", lw=1, zorder=1)
    rec = report["recommended_index"]
    if rec is not None:
        ax.scatter([xs[rec]], [ys[rec]], marker="*", s=260, facecolor="none", edgecolor="k", lw=1.2,
                   label=f"recommended (valid MRR >= {report['reference']}'s - {report['tolerance']:g})", zorder=4)
    for x, y, v in zip(xs, ys, vs):
        ax.annotate(v["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(report["baseline"][split]["mrr"], color="0.8", ls="--", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.2, max(xs) * 1.8)  # room for the labels
    ax.set_xlabel("file size (bytes, log scale)")
    ax.set_ylabel(f"{split} MRR (from the stored file)")
    ax.set_title(f"{report['dataset']}: size vs accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.2)
    write_with(out_png, lambda fh: fig.savefig(fh, dpi=100, format="png"), "could not write the plot")
    return Path(out_png)


def compress_report(run_dir: Path, compare: Sequence[CompareSpec] = (), tolerance: float = 0.01,
                    split: str = "test", checkpoint: str = "best", echo: Callable[[str], None] = print,
                    reference: Optional[str] = None) -> dict:
    """Write and score every variant (module docstring); -> the report (also ``compress/report.json``)."""
    from metasd_dgl.data.fingerprint import dataset_fingerprint
    from metasd_dgl.store.export import export_run_files, file_name, file_tables, owned_folder
    from metasd_dgl.store.lock import folder_lock
    from metasd_dgl.stages import load_run

    if not tolerance >= 0:  # also refuses NaN
        raise UserError(f"--tolerance {tolerance}: must be >= 0 (an absolute MRR difference, e.g. 0.01)")
    if split not in ("valid", "test"):
        raise UserError(f"--split {split!r}: must be valid or test")
    run_dir = Path(run_dir)
    cfg, data, model, student, ckpt = load_run(run_dir, checkpoint)
    runs = [("", run_dir, cfg, data, model, student, ckpt, None)]
    labels = set()
    for label, folder, role in compare:
        if label in labels:
            raise UserError(f"--compare {label}=...: the label {label!r} is given twice")
        labels.add(label)
        c = load_run(folder, checkpoint)
        if dataset_fingerprint(c[1]) != dataset_fingerprint(data):
            raise UserError(f"--compare {label}={folder}: trained on another dataset ({c[1].num_entities} entities, "
                            f"{c[1].num_relations} relations, {c[1].path}) than {run_dir} ({data.num_entities} "
                            f"entities, {data.num_relations} relations); compare runs of the same dataset")
        if role == "student" and not c[3]:
            raise UserError(f"--compare {label}={folder}@student: that run has no student "
                            f"(train.method={c[0].train.method}); drop @student")
        runs.append((label, folder, *c, role or ("student" if c[3] else "teacher")))
    scorer = _Scorer(cfg, data)
    final = run_dir / "compress"
    with folder_lock(final, inside=False, what="compress folder"):
        recover_folder(final)
        with owned_folder(final, "compress") as out:
            # every file first (sizes, the plan), then the scoring, the long part
            plan: list[dict[str, Any]] = []
            for label, folder, c_cfg, c_data, c_model, c_student, c_ckpt, role in runs:
                where = out / "compare" / label if label else out
                where.mkdir(parents=True, exist_ok=True)
                prefix = f"{label} " if label else ""
                roles = [("teacher", TEACHER_SCHEMES), ("student", STUDENT_SCHEMES)] if not label else \
                    [(role, COMPARE_SCHEMES)]
                for r, schemes in roles:
                    if r == "student" and not c_student:
                        continue
                    export_run_files(c_cfg, c_data, c_model, c_student, c_ckpt, where, schemes, roles=(r,))
                    for s in schemes:
                        plan.append({"name": f"{prefix}{r} {s}", "run": str(folder), "label": label or None,
                                     "role": r, "scheme": s, "path": where / file_name(r, s), "cfg": c_cfg,
                                     "model": c_model})
            base_bytes = (out / "teacher.safetensors").stat().st_size
            if reference is not None:
                choose_reference(plan, reference)  # a label not in the report: refused before the scoring
            variants = []
            for i, p in enumerate(plan, start=1):
                size = p["path"].stat().st_size
                echo(f"[{i}/{len(plan)}] {p['name']}: {size:,} bytes; scoring valid and test from the file")
                m, tables, _ = file_tables(p["path"], p["cfg"], data, p["model"])
                scores = scorer(m, tables)
                variants.append({"name": p["name"], "run": p["run"], "label": p["label"], "role": p["role"],
                                 "scheme": p["scheme"], "file": p["path"].relative_to(out).as_posix(), "bytes": size,
                                 "ratio": size / base_bytes, "valid": scores["valid"], "test": scores["test"]})
            rare_label = scorer.splits["test"][2]
            front = pareto_front([(v["bytes"], v[split]["mrr"] or 0.0) for v in variants])
            for v, on in zip(variants, front):
                v["pareto"] = on
            baseline = variants[choose_reference(variants, reference)]
            rec = recommend(variants, baseline["valid"]["mrr"], tolerance)
            report = {
                "run_dir": str(run_dir), "checkpoint": ckpt["path"], "dataset": str(cfg.data.dataset),
                "split": split, "tolerance": tolerance, "reference": baseline["name"],
                "reference_chosen": "given (--reference)" if reference is not None else "best fp32 by valid MRR",
                "baseline": {"name": baseline["name"], "bytes": baseline["bytes"], "valid": baseline["valid"],
                             "test": baseline["test"]},
                "rule": ("recommended: the smallest variant whose validation MRR >= the reference's validation "
                         "MRR - tolerance (the reference: the best fp32 variant by validation MRR unless given); "
                         "Pareto front on (bytes, " + split + " MRR); every score from the file"),
                "rare_bucket": {"kind": "relation", "num_buckets": RARE_BUCKETS, "label": rare_label},
                "variants": variants,
                "recommended_index": rec,
                "recommended": variants[rec]["name"] if rec is not None else None,
            }
            report["table"] = _table(report)
            plot_report(report, out / "report.png")
            atomic_write_json(out / "report.json", report)
    echo(report["table"])
    if rec is not None:
        v = variants[rec]
        echo(f"recommended: {v['name']} ({v['bytes']:,} bytes, {v['ratio']:.1%} of the fp32 teacher file; valid MRR "
             f"{v['valid']['mrr']:.4f} vs the reference {baseline['name']}'s {baseline['valid']['mrr']:.4f}, "
             f"tolerance {tolerance:g})")
    echo(f"rarest third of relations: {rare_label} ({RARE_BUCKETS} relation-frequency buckets, bucket 0)")
    echo(f"report: {final / 'report.json'}")
    echo(f"plot: {final / 'report.png'}")
    return report
