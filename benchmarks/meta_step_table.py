"""What the meta step is worth: the own-weights student with MetaSD's meta step against the same student
trained with ``train.method=kd`` (the same distillation values, budget and seeds; no virtual step, no
meta step), seed by seed.

It reads bench_compression results (no training): the MetaSD rows are ``own student KD per dataset``,
the kd rows ``own student kd``; each JSON may hold several datasets, and a later file's row replaces an
earlier one's.  Per dataset: each arm's teacher and student test MRR (mean ± sd), the student's MRR on
the rarest third of relations, seconds per epoch (as stored: runs made at different times on a shared
machine; compare them as orders of magnitude), and the paired student difference MetaSD - kd per seed
with its mean, sd and the number of seeds where kd is ahead.

    python benchmarks/meta_step_table.py                       # the stored files, -> results/meta_step.json
    python benchmarks/meta_step_table.py --metasd A.json --kd B.json C.json --out X.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from common import REPO, RESULTS, paired, publish

METASD_ROW = "own student KD per dataset"
KD_ROW = "own student kd"


def rows_of(paths: Sequence[Path], method: str) -> dict:
    """``{dataset: (aggregate, seeds)}`` of ``method`` in the files (later files win)."""
    out: dict = {}
    for path in paths:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        for ds, res in record.get("results", {}).items():
            if method in res:
                shown = Path(path).resolve()  # named relative to the repository, as the commands are
                out[ds] = (res[method], list(record["seeds"]),
                           str(shown.relative_to(REPO)) if shown.is_relative_to(REPO) else str(path))
    return out


def paired_meta(metasd: Sequence[float], kd: Sequence[float]) -> dict:
    """Per seed ``metasd - kd`` -> diffs, mean, sd (n - 1), seeds, kd_better (seeds where kd is higher)."""
    p = paired(metasd, kd)
    return {**p, "kd_better": sum(d < 0 for d in p["diffs"])}


def build(metasd_files: Sequence[Path], kd_files: Sequence[Path]) -> dict:
    ms, kd = rows_of(metasd_files, METASD_ROW), rows_of(kd_files, KD_ROW)
    out: dict = {"metasd_row": METASD_ROW, "kd_row": KD_ROW, "datasets": {}, "missing": {}}
    for ds in sorted(set(ms) | set(kd)):
        if ds not in ms or ds not in kd:
            out["missing"][ds] = "no MetaSD row" if ds not in ms else "no kd row"
            continue
        (m, m_seeds, m_file), (k, k_seeds, k_file) = ms[ds], kd[ds]
        if m_seeds != k_seeds:
            out["missing"][ds] = f"seeds differ: {m_seeds} vs {k_seeds}"
            continue
        arms = {}
        for name, agg, path in (("metasd", m, m_file), ("kd", k, k_file)):
            arms[name] = {"file": path, "seconds_per_epoch": agg["seconds_per_epoch"],
                          **{f"{row}_{key}": agg[row][key] for row in ("teacher", "student")
                             for key in ("mrr", "mrr_std", "rarest_mrr", "rarest_mrr_std", "per_seed_mrr")}}
        out["datasets"][ds] = {"seeds": m_seeds, **arms,
                               "student_paired": paired_meta(m["student"]["per_seed_mrr"], k["student"]["per_seed_mrr"]),
                               "teacher_paired": paired_meta(m["teacher"]["per_seed_mrr"], k["teacher"]["per_seed_mrr"])}
    return out


def render(record: dict) -> str:
    head = ["dataset", "arm", "teacher test MRR", "student test MRR", "student rarest-third MRR", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pm = lambda a, key: f"{a[key]:.4f} ± {a[key + '_std']:.4f}"  # noqa: E731
    for ds, r in record["datasets"].items():
        for arm in ("metasd", "kd"):
            a = r[arm]
            lines.append(f"| {ds} | {arm} | {pm(a, 'teacher_mrr')} | {pm(a, 'student_mrr')} | "
                         f"{pm(a, 'student_rarest_mrr')} | {a['seconds_per_epoch']:.3f} |")
    lines += ["", "| dataset | seeds | student MetaSD - kd per seed | mean | sd | kd ahead | teacher MetaSD - kd mean |",
              "|---|---|---|---|---|---|---|"]
    for ds, r in record["datasets"].items():
        p, t = r["student_paired"], r["teacher_paired"]
        lines.append(f"| {ds} | {p['seeds']} | {' '.join(f'{d:+.4f}' for d in p['diffs'])} | {p['mean']:+.4f} | "
                     f"{p['sd']:.4f} | {p['kd_better']} of {p['seeds']} | {t['mean']:+.4f} (sd {t['sd']:.4f}) |")
    for ds, why in record["missing"].items():
        lines.append(f"\n{ds}: not paired ({why})")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metasd", nargs="+", default=[str(RESULTS / "compression_5seeds.json")])
    ap.add_argument("--kd", nargs="+", default=[str(p) for p in sorted(RESULTS.glob("compression_kd_own_*.json"))])
    ap.add_argument("--out", default=str(RESULTS / "meta_step.json"))
    args = ap.parse_args(argv)
    record = build([Path(p) for p in args.metasd], [Path(p) for p in args.kd])
    return publish(record, render(record), args.out)


if __name__ == "__main__":
    main()
