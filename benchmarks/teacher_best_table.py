"""Each model at its own best epoch: a student run's teacher scored from its own best checkpoint
(``checkpoints/best-teacher.pt``, the teacher's validation MRR) next to the teacher from the student's
best epoch (``checkpoints/best.pt``, the one file older runs kept) and next to a plain dense run of the
same budget.

It reads bench_compression run folders (no training) and scores each student run twice on the test
split, as ``metasd-dgl evaluate RUN`` and ``metasd-dgl evaluate RUN --checkpoint RUN/checkpoints/best.pt``
do; the dense rows come from the dense runs' stored ``result.json``.  Per row: test MRR mean ± sd over
the seeds, the epochs the checkpoints come from, and per seed the teacher's own best minus the teacher
at the student's best epoch.

    python benchmarks/bench_compression.py --datasets fb15k-237-top2000 --seeds 3 --jobs 1 \\
        --methods "dense,own student KD per dataset" --root ROOT --out A.json
    python benchmarks/teacher_best_table.py --runs ROOT/full/fb15k-237-top2000 --seeds 3 --out B.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from common import publish, sample_sd
from harness import seed_run_dir, stage_evaluate


def score(run_dir: Path, checkpoint: str) -> dict:
    """Test MRR of teacher and student, with the epoch each comes from (``stage_evaluate``)."""
    rec = stage_evaluate(run_dir, "test", checkpoint, echo=lambda *_: None)
    return {row: {"mrr": rec["results"][row]["both"]["mrr"], "epoch": rec["epochs"][row],
                  "file": Path(rec["checkpoint_files"][row]).name} for row in rec["results"]}


def summary(xs: list[float]) -> dict:
    return {"mean": sum(xs) / len(xs), "sd": sample_sd(xs), "per_seed": xs}


def build(runs: Path, seeds: list[int], student_method: str, dense_method: str) -> dict:
    own, old, dense = [], [], []
    for seed in seeds:
        run = seed_run_dir(runs, student_method, seed)
        old.append(score(run, str(run / "checkpoints" / "best.pt")))  # one file for both
        own.append(score(run, "best"))  # each model its own best (what `evaluate RUN` does)
        if dense_method:
            stored = json.loads((seed_run_dir(runs, dense_method, seed) / "result.json").read_text(encoding="utf-8"))
            dense.append({"mrr": stored["result"]["teacher"]["mrr"], "epoch": stored["result"]["best_epoch"]})
    rows = {
        "teacher, its own best (best-teacher.pt)": [s["teacher"] for s in own],
        "teacher at the student's best (best.pt)": [s["teacher"] for s in old],
        **({f"{dense_method} (plain, same budget)": dense} if dense_method else {}),
        "student (best.pt)": [s["student"] for s in own],
    }
    out = {"runs": str(runs), "seeds": seeds, "student_method": student_method, "dense_method": dense_method,
           "rows": {name: {**summary([r["mrr"] for r in rs]), "epochs": [r["epoch"] for r in rs]}
                    for name, rs in rows.items()}}
    diffs = [a["teacher"]["mrr"] - b["teacher"]["mrr"] for a, b in zip(own, old)]
    out["teacher_own_minus_old"] = summary(diffs)
    if dense:
        out["teacher_own_minus_dense"] = summary([a["teacher"]["mrr"] - d["mrr"] for a, d in zip(own, dense)])
    return out


def render(record: dict) -> str:
    lines = ["| model | test MRR (mean ± sd) | per seed | epoch per seed |", "|---|---|---|---|"]
    for name, r in record["rows"].items():
        lines.append(f"| {name} | {r['mean']:.4f} ± {r['sd']:.4f} | {' '.join(f'{x:.4f}' for x in r['per_seed'])} | "
                     f"{' '.join(map(str, r['epochs']))} |")
    for key, label in (("teacher_own_minus_old", "teacher own best - teacher at the student's best"),
                       ("teacher_own_minus_dense", "teacher own best - dense")):
        d = record.get(key)
        if d is None:
            continue
        lines.append(f"\n{label}, per seed: {' '.join(f'{x:+.4f}' for x in d['per_seed'])}; "
                     f"mean {d['mean']:+.4f} (sd {d['sd']:.4f})")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="a dataset's folder of bench_compression runs (ROOT/full/DATASET)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--student-method", default="own student KD per dataset")
    ap.add_argument("--dense-method", default="dense", help="the plain run of the same budget ('' for none)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    record = build(Path(args.runs), list(range(args.seeds)), args.student_method, args.dense_method)
    return publish(record, render(record), args.out)


if __name__ == "__main__":
    main()
