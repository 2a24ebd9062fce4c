"""MetaSD and its ablations in one table: UMLS and Kinship (full training), FB15k-237 (CPU budget).

Per dataset, every variant trains from the same seed with the same budget
(dim, epochs, batch, lr, regulariser), selects its checkpoint on the
validation split only, and is evaluated on test (filtered, both sides,
realistic ranks).  Student masks are whole-coordinate masks
(``metasd.prune_structure=dimension``, see ``metasd_dgl/pruning.py``) unless
the row says "element masks" (the paper's element-wise global magnitude):

    dense (plain)          dense ComplEx at dim D, method plain              -> teacher row
    metasd                 MetaSD at dim D, prune rate 0.9, exact meta step  -> teacher and student rows
    metasd fast            meta_grad_path=kd, share_forward (see train/meta.py) -> teacher and student rows
    metasd (meta/4)        the exact meta step every 4th batch               -> student row
    metasd element masks   MetaSD with element-wise masks                    -> student row
    kd                     mutual distillation without the meta step          -> student row
    prune-only             the dynamic-mask student trained alone              -> student row
    dense small            dense ComplEx at dim round(0.1 D): the student's non-zeros

Variants marked in ``SEEDED`` run once per seed of ``--seeds`` on the datasets
that list them (their table rows are means, with the standard deviation of
MRR); the others run with the first seed.  Columns: MRR, Hits@1/10, non-zero
parameters, bytes on disk (teacher: safetensors; student: the compact
export), seconds per epoch and its ratio to ``plain`` in the same run, and
MRR on the rarest relation-frequency bucket.

    python benchmarks/bench_metasd.py --threads 1     # the full table (~45 min on 2 busy cores)
    python benchmarks/bench_metasd.py --quick         # a smoke run (~2 min)
    python benchmarks/bench_metasd.py --datasets umls
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import RESULTS, default_data_dir, format_table, machine_info, peak_rss_mb, write_json
from variant import train_and_test

from metasd_dgl.config import load_config
from metasd_dgl.data.preprocess import preprocess

# Budgets: dim, epochs, batch, lr, regulariser weight, validation every k epochs, variants skipped,
# batches per epoch (0 = all), seeds for the SEEDED variants.
BUDGETS = {
    "umls": dict(dim=128, epochs=60, batch=500, lr=0.1, reg=0.01, valid_every=10, seeds=3),
    "kinship": dict(dim=128, epochs=60, batch=500, lr=0.1, reg=0.01, valid_every=10,
                    skip=("metasd (meta/4)", "metasd element masks")),
    # CPU budget: dim 64, one epoch cut to 120 batches of 1000 (22 % of the 545 reciprocal batches);
    # no element-mask MetaSD (its exact step is ~8.5x a plain one, see bench_step.py).
    "fb15k-237": dict(dim=64, epochs=1, batch=1000, lr=0.1, reg=0.01, valid_every=1, batches_per_epoch=120,
                      skip=("metasd element masks",)),
}
QUICK = {"umls": dict(dim=32, epochs=4, batch=500, lr=0.1, reg=0.01, valid_every=2, seeds=2)}

DIM = {"metasd.prune_structure": "dimension"}
VARIANTS = [  # name, overrides, rows reported
    ("dense (plain)", {"train.method": "plain"}, ("teacher",)),
    ("metasd", {"train.method": "metasd", **DIM}, ("teacher", "student")),
    ("metasd fast", {"train.method": "metasd", "metasd.meta_grad_path": "kd", "metasd.share_forward": True, **DIM},
     ("teacher", "student")),
    ("metasd (meta/4)", {"train.method": "metasd", "metasd.meta_every": 4, **DIM}, ("student",)),
    ("metasd element masks", {"train.method": "metasd", "metasd.prune_structure": "element"}, ("student",)),
    ("kd", {"train.method": "kd", **DIM}, ("student",)),
    ("prune-only", {"train.method": "prune", **DIM}, ("student",)),
    ("dense small", {"train.method": "plain", "small": True}, ("teacher",)),
]
SEEDED = ("metasd", "metasd fast", "kd", "prune-only", "dense small")


def run_variant(name, overrides, data_path, budget, root: Path, seed: int, threads: int) -> dict:
    over = {k: v for k, v in overrides.items() if k != "small"}
    dim = max(1, round(budget["dim"] * 0.1)) if overrides.get("small") else budget["dim"]
    cfg = load_config(overrides={
        "run_dir": str(root / f"{name.replace(' ', '_').replace('/', '')}-seed{seed}"),
        "data.processed_dir": str(data_path), "model.decoder": "complex", "model.dim": dim,
        "train.epochs": budget["epochs"], "train.batch_size": budget["batch"], "train.lr": budget["lr"],
        "train.reg_weight": budget["reg"], "train.valid_every": budget["valid_every"], "train.patience": 0,
        "train.seed": seed, "train.keep_checkpoints": 0, "train.num_threads": threads,
        "metasd.quiz_batch_size": budget["batch"], "train.batches_per_epoch": budget.get("batches_per_epoch", 0),
        **over})
    return {"dim": dim, **train_and_test(cfg, data_path)}


def _mean_rows(runs: list) -> dict:
    """Seed runs of one variant -> one result: means of the numbers, ``mrr_std`` and the per-seed results."""
    if len(runs) == 1:
        return {**runs[0], "seeds": 1}
    out = {**runs[0], "seeds": len(runs), "per_seed": runs}
    out["seconds_per_epoch"] = sum(r["seconds_per_epoch"] for r in runs) / len(runs)
    for row in ("teacher", "student"):
        if row not in runs[0]:
            continue
        vals = [r[row] for r in runs]
        mean = {k: sum(v[k] for v in vals) / len(vals) for k in ("mrr", "hits@1", "hits@10", "rarest_mrr")}
        mrrs = [v["mrr"] for v in vals]
        mean["mrr_std"] = (sum((x - mean["mrr"]) ** 2 for x in mrrs) / (len(mrrs) - 1)) ** 0.5
        out[row] = {**vals[0], **mean}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--datasets", default="umls,kinship,fb15k-237")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="first seed; SEEDED variants use seed .. seed + seeds - 1")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", default=str(RESULTS / "metasd.json"))
    args = ap.parse_args()
    budgets = QUICK if args.quick else {d: BUDGETS[d] for d in args.datasets.split(",")}
    record = {"machine": machine_info(), "budgets": budgets, "results": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_metasd_") as tmp:
        root = Path(tmp)
        for ds, budget in budgets.items():
            data_path = preprocess(ds, root / ds / "data", Path(args.data_dir))
            res = {}
            for name, overrides, reported in VARIANTS:
                if name in budget.get("skip", ()):
                    continue
                seeds = range(args.seed, args.seed + (budget.get("seeds", 1) if name in SEEDED else 1))
                runs = []
                for seed in seeds:
                    print(f"[{ds}] {name} seed {seed} ...", file=sys.stderr, flush=True)
                    runs.append(run_variant(name, overrides, data_path, budget, root / ds, seed, args.threads))
                res[name] = _mean_rows(runs)
                res[name]["reported"] = list(reported)
                record["results"][ds] = res
                write_json(args.out, record)
            plain = res["dense (plain)"]["seconds_per_epoch"]
            for name, _, reported in VARIANTS:
                if name not in res:
                    continue
                r = res[name]
                for row in reported:
                    m = r[row]
                    mrr = f"{m['mrr']:.4f}" + (f" ±{m['mrr_std']:.4f}" if "mrr_std" in m else "")
                    rows.append([ds, f"{name} {row}", r["dim"], r["seeds"], mrr, f"{m['hits@1']:.4f}",
                                 f"{m['hits@10']:.4f}", f"{m['nonzero']:,}", f"{m['bytes']:,}",
                                 f"{r['seconds_per_epoch']:.2f}", f"{r['seconds_per_epoch'] / plain:.2f}x",
                                 f"{m['rarest_mrr']:.4f}"])
            write_json(args.out, record)
    record["peak_rss_mb"] = peak_rss_mb()
    header = ["dataset", "model", "dim", "seeds", "MRR (± std)", "H@1", "H@10", "non-zeros", "bytes", "s/epoch",
              "vs plain", "rarest-rel MRR"]
    table = format_table(header, rows, left=2)
    print(table)
    record["table"] = table
    print(f"budgets: {json.dumps(budgets)}")
    print(f"peak RSS {record['peak_rss_mb']:.0f} MB; JSON: {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
