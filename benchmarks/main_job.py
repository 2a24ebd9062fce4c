"""The main job's student against the two baselines of its budget, over seeds.

``metasd-dgl pipeline`` (no arguments: ComplEx dim 100 on UMLS, MetaSD, the recommended student with
dimension masks at rate 0.9, so 10 of 100 complex coordinates kept), next to

* ``dense small``  -- the same job with ``train.method=plain`` and ``model.dim=10``: a dense model
  with the student's non-zeros, trained alone;
* ``prune-only``   -- the same job with ``train.method=prune``: gradual magnitude pruning of one model;
* ``paper student`` -- the same job with ``pipelines/configs/paper_student.yaml`` (shared weights).

Each row is a ``metasd-dgl pipeline`` command run as printed (its own run folder under ``--work``),
seed by seed (``--set train.seed=S``); the table shows test MRR and the MRR on the rarest third of
relations (mean ± sd over seeds), and the paired difference of the main job's student to each row.  Model selection
is on validation only (each run's best checkpoint); test is reported.

    python benchmarks/main_job.py --seeds 3            # -> benchmarks/results/main_job.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, format_table, machine_info, paired, publish, sample_sd

CONFIGS = REPO / "pipelines" / "configs"
ROWS = {  # row -> (extra pipeline arguments, which model of the run is the row)
    "main job student": ([], "student"),
    "main job teacher": ([], "teacher"),
    "dense small (dim 10)": (["--set", "train.method=plain", "--set", "model.dim=10"], "teacher"),
    "prune-only": (["--set", "train.method=prune"], "student"),
    "paper student": ([str(CONFIGS / "umls_metasd.yaml"), str(CONFIGS / "paper_student.yaml")], "student"),
}


def run(args: list, run_dir: Path) -> dict:
    """One ``metasd-dgl pipeline`` run -> its eval/test.json results (seconds of wall time added)."""
    cmd = [sys.executable, "-m", "metasd_dgl.cli", "pipeline", *args, "--run-dir", str(run_dir), "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    out = json.loads((run_dir / "eval" / "test.json").read_text(encoding="utf-8"))["results"]
    shown = [str(Path(a).relative_to(REPO)) if a.startswith(str(REPO)) else a for a in args]  # as a user types it
    return {"results": out, "wall_s": round(time.perf_counter() - t0, 1),
            "command": " ".join(["metasd-dgl", "pipeline", *shown])}


def mean_sd(xs: list) -> tuple:
    return sum(xs) / len(xs), sample_sd(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", default=None, help="folder for the run folders (default: a temporary one)")
    ap.add_argument("--out", default=str(RESULTS / "main_job.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="main_job-"))
    runs: dict = {}  # (extra args) -> per seed results
    mrr: dict = {row: [] for row in ROWS}
    rare: dict = {row: [] for row in ROWS}
    commands: dict = {}
    folders = {key: i for i, key in enumerate(dict.fromkeys(tuple(extra) for extra, _ in ROWS.values()))}
    for seed in range(args.seeds):
        for row, (extra, model) in ROWS.items():
            key = tuple(extra)
            if (key, seed) not in runs:
                runs[(key, seed)] = run([*extra, "--set", f"train.seed={seed}"], work / f"{folders[key]}-seed{seed}")
                print(f"seed {seed}: {runs[(key, seed)]['command']} ({runs[(key, seed)]['wall_s']} s)", flush=True)
            res = runs[(key, seed)]["results"][model]
            commands[row] = runs[(key, seed)]["command"].replace(f"train.seed={seed}", "train.seed=S")
            mrr[row].append(res["both"]["mrr"])
            rare[row].append(next(iter(res["buckets"]["relation"].values()))["mrr"])  # the rarest third
    main_student = mrr["main job student"]
    table, record = [], {"seeds": list(range(args.seeds)), "rows": {}, "machine": machine_info()}
    for row in ROWS:
        m, s = mean_sd(mrr[row])
        pair = paired(main_student, mrr[row])
        diffs, dm, ds = pair["diffs"], pair["mean"], pair["sd"]
        rm, rs = mean_sd(rare[row])
        table.append([row, f"{m:.4f} ± {s:.4f}", f"{rm:.4f} ± {rs:.4f}",
                      "" if row == "main job student" else f"{dm:+.4f} ({ds:.4f})", commands[row]])
        record["rows"][row] = {"test_mrr": mrr[row], "mean": m, "sd": s, "rare_third_mrr": rare[row],
                               "student_minus_row": diffs, "diff_mean": dm, "diff_sd": ds, "command": commands[row]}
    publish(record, format_table(["row", "test MRR", "rarest third of relations", "main student - row (sd)",
                                  "command"], table), args.out)


if __name__ == "__main__":
    main()
