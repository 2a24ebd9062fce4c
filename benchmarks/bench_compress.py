"""Bytes against accuracy on the compression study's datasets: quantised teachers and students, seeds.

For every dataset and seed of the compression study (``bench_compression.py``, whose run folders it
reads: run that first), ``metasd-dgl compress`` on the dense teacher's run with the study's
students compared: the recipe (``own student KD per dataset``, its student), ``dense small`` (its
only model) and ``prune-only`` (its student).  Every size is a file on disk, every score that
file's (filtered, both sides, dequantised to float32); the recommendation is the smallest variant
within ``--tolerance`` of the fp32 teacher's *validation* MRR.  Per variant: bytes, ratio to the
fp32 teacher file, test MRR (mean ± sd over seeds); then the issue's targets, per dataset:

* teacher int8 within 0.002 test MRR of the fp32 teacher at <= 26 % of its bytes;
* the recipe's student in int8 >= 35x fewer bytes than the fp32 teacher file, within 0.003 of
  the fp32 student (its fp32 file);
* the recommended variant >= 10x smaller than the fp32 teacher file and within 0.01 of its test MRR.

    python benchmarks/bench_compress.py --root /tmp/cruns --datasets umls,kinship
    python benchmarks/bench_compress.py          # the study's default run root, every dataset it has
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("DGLBACKEND", "pytorch")

from common import RESULTS, format_table, machine_info, publish, sample_sd  # noqa: E402

RECIPE = "own student KD per dataset"
COMPARED = {"recipe": (RECIPE, "student"), "dense small": ("dense small", "teacher"),
            "prune-only": ("prune-only", "student")}
TARGETS = {"teacher_int8_mrr": 0.002, "teacher_int8_ratio": 0.26, "student_int8_times": 35.0,
           "student_int8_mrr": 0.003, "recommended_times": 10.0, "recommended_mrr": 0.01}


def slug(method: str) -> str:
    """The run folder name of a study method (``harness.Variant.slug``)."""
    from harness import Variant

    return Variant(method).slug


def one_seed(root: Path, dataset: str, seed: int, tolerance: float) -> dict[str, Any]:
    """The compress report of one seed's dense run, with the study's students compared."""
    from harness import compress_report

    run = root / dataset / f"dense-seed{seed}"
    compare = [(label, root / dataset / f"{slug(method)}-seed{seed}", role)
               for label, (method, role) in COMPARED.items()
               if (root / dataset / f"{slug(method)}-seed{seed}" / "checkpoints").is_dir()]
    return compress_report(run, compare, tolerance=tolerance, echo=lambda line: None)


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "sd": sample_sd(values), "n": len(values)}


def summarise(reports: list[dict]) -> dict[str, Any]:
    """Per variant over seeds, and the targets."""
    names = [v["name"] for v in reports[0]["variants"]]
    by = {n: [next(v for v in r["variants"] if v["name"] == n) for r in reports] for n in names}
    variants = {n: {"bytes": mean_sd([float(v["bytes"]) for v in vs]), "ratio": mean_sd([v["ratio"] for v in vs]),
                    "valid_mrr": mean_sd([v["valid"]["mrr"] for v in vs]),
                    "test_mrr": mean_sd([v["test"]["mrr"] for v in vs]),
                    "test_rare_mrr": mean_sd([v["test"]["rare_mrr"] for v in vs if v["test"].get("rare_mrr") is not None]
                                             or [float("nan")])}
                for n, vs in by.items()}

    def diffs(a: str, b: str) -> list[float]:
        return [x["test"]["mrr"] - y["test"]["mrr"] for x, y in zip(by[a], by[b])]

    out: dict[str, Any] = {"variants": variants, "targets": {}}
    t = out["targets"]
    d = diffs("teacher int8", "teacher fp32")
    ratio = variants["teacher int8"]["ratio"]["mean"]
    t["teacher int8"] = {"test_mrr_diff": mean_sd(d), "ratio": ratio,
                         "met": max(abs(x) for x in d) <= TARGETS["teacher_int8_mrr"]
                         and ratio <= TARGETS["teacher_int8_ratio"]}
    if "recipe student int8" in by:
        times = [r["variants"][0]["bytes"] / v["bytes"] for r, v in zip(reports, by["recipe student int8"])]
        d = diffs("recipe student int8", "recipe student fp32")
        t["recipe student int8"] = {"times_smaller": mean_sd(times), "test_mrr_diff": mean_sd(d),
                                    "met": min(times) >= TARGETS["student_int8_times"]
                                    and max(abs(x) for x in d) <= TARGETS["student_int8_mrr"]}
    rec = []
    for r in reports:
        v = r["variants"][r["recommended_index"]]
        rec.append({"name": v["name"], "times_smaller": 1 / v["ratio"],
                    "test_mrr_diff": v["test"]["mrr"] - r["variants"][0]["test"]["mrr"]})
    t["recommended"] = {"per_seed": rec,
                        "met": all(x["times_smaller"] >= TARGETS["recommended_times"]
                                   and abs(x["test_mrr_diff"]) <= TARGETS["recommended_mrr"] for x in rec)}
    return out


def render(record: dict) -> str:
    rows = []
    for ds, res in record["results"].items():
        for name, v in res["variants"].items():
            rows.append([ds, name, f"{v['bytes']['mean']:,.0f}", f"{v['ratio']['mean']:.4f}",
                         f"{1 / v['ratio']['mean']:.1f}x",
                         f"{v['valid_mrr']['mean']:.4f}", f"{v['test_mrr']['mean']:.4f} ± {v['test_mrr']['sd']:.4f}"])
    table = format_table(["dataset", "variant", "bytes", "ratio", "smaller", "valid MRR", "test MRR"], rows, left=2)
    lines = [table, ""]
    for ds, res in record["results"].items():
        t = res["targets"]
        ti = t["teacher int8"]
        lines.append(f"{ds}: teacher int8 {ti['ratio']:.1%} of the bytes, test MRR "
                     f"{ti['test_mrr_diff']['mean']:+.4f} ({'met' if ti['met'] else 'NOT met'})")
        if "recipe student int8" in t:
            s = t["recipe student int8"]
            lines.append(f"{ds}: recipe student int8 {s['times_smaller']['mean']:.1f}x smaller, test MRR vs its "
                         f"fp32 file {s['test_mrr_diff']['mean']:+.4f} ({'met' if s['met'] else 'NOT met'})")
        r = t["recommended"]
        picks = ", ".join(f"{x['name']} {x['times_smaller']:.1f}x {x['test_mrr_diff']:+.4f}" for x in r["per_seed"])
        lines.append(f"{ds}: recommended per seed: {picks} ({'met' if r['met'] else 'NOT met'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(RESULTS / "compression_runs"),
                    help="bench_compression.py's --root (its full/ study is read)")
    ap.add_argument("--datasets", default="umls,kinship,codex-s,fb15k-237-top2000")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--out", default=str(RESULTS / "compress.json"))
    args = ap.parse_args(argv)
    root = Path(args.root) / "full"
    record: dict[str, Any] = {"machine": machine_info(), "tolerance": args.tolerance, "targets": TARGETS,
                              "results": {}, "seeds": {}}
    for ds in args.datasets.split(","):
        seeds = [s for s in range(args.seeds) if (root / ds / f"dense-seed{s}" / "checkpoints").is_dir()]
        if not seeds:
            print(f"{ds}: no dense runs under {root / ds}; run bench_compression.py first", file=sys.stderr)
            continue
        reports = []
        for s in seeds:
            print(f"[{ds}] seed {s}: compress", flush=True)
            reports.append(one_seed(root, ds, s, args.tolerance))
        record["seeds"][ds] = seeds
        record["results"][ds] = summarise(reports)
    return publish(record, render(record), args.out)


if __name__ == "__main__":
    main()
