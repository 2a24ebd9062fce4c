"""MetaSD and its ablations in one table: UMLS and Kinship (full training), FB15k-237 (CPU budget).

Per dataset, every variant trains from the same seed with the same budget
(dim, epochs, batch, lr, regulariser), selects its checkpoint on the
validation split only, and is evaluated on test (filtered, both sides,
realistic ranks).  Student masks are whole-coordinate masks
(``prune.structure=dimension``, see ``metasd_dgl/model/pruning.py``) unless
the row says "element masks" (the paper's element-wise global magnitude):

    dense (plain)          dense ComplEx at dim D, method plain              -> teacher row
    metasd                 MetaSD at dim D, prune rate 0.9, exact meta step  -> teacher and student rows
    metasd (meta/4)        the exact meta step every 4th batch               -> student row
    metasd element masks   MetaSD with element-wise masks                    -> student row
    kd                     mutual distillation without the meta step          -> student row
    prune-only             the dynamic-mask student trained alone              -> student row
    dense small            dense ComplEx at dim round(0.1 D): the student's non-zeros

Variants marked ``seeded`` run once per seed of ``--seeds`` on the datasets
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
import tempfile
from pathlib import Path

from common import RESULTS, default_data_dir, format_table, machine_info, peak_rss_mb, write_json
from harness import Variant, preprocess, run_variants, variant_rows

# Budgets: dim, epochs, batch, lr, regulariser weight, validation every k epochs, variants skipped,
# batches per epoch (0 = all), seeds for the seeded variants.
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

DIM = {"prune.structure": "dimension"}
VARIANTS = [
    Variant("dense (plain)", {"train.method": "plain"}),
    Variant("metasd", {"train.method": "metasd", **DIM}, ("teacher", "student"), seeded=True),
    Variant("metasd (meta/4)", {"train.method": "metasd", "metasd.meta_every": 4, **DIM}, ("student",)),
    Variant("metasd element masks", {"train.method": "metasd", "prune.structure": "element"}, ("student",)),
    Variant("kd", {"train.method": "kd", **DIM}, ("student",), seeded=True),
    Variant("prune-only", {"train.method": "prune", **DIM}, ("student",), seeded=True),
    Variant("dense small", {"train.method": "plain"}, seeded=True),  # dim round(0.1 D): the student's non-zeros
]


def base_overrides(data_path: Path, budget: dict, threads: int) -> dict:
    return {"data.processed_dir": str(data_path), "model.decoder": "complex", "model.dim": budget["dim"],
            "train.epochs": budget["epochs"], "train.batch_size": budget["batch"], "train.lr": budget["lr"],
            "train.reg_weight": budget["reg"], "valid.every": budget["valid_every"], "valid.patience": 0,
            "checkpoint.keep": 0, "runtime.num_threads": threads, "metasd.quiz_batch_size": budget["batch"],
            "budget.batches_per_epoch": budget.get("batches_per_epoch", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--datasets", default="umls,kinship,fb15k-237")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="first seed; seeded variants use seed .. seed + seeds - 1")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", default=str(RESULTS / "metasd.json"))
    args = ap.parse_args()
    budgets = QUICK if args.quick else {d: BUDGETS[d] for d in args.datasets.split(",")}
    record = {"machine": machine_info(), "budgets": budgets, "results": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_metasd_") as tmp:
        for ds, budget in budgets.items():
            root = Path(tmp) / ds
            data_path = preprocess(ds, root / "data", Path(args.data_dir))
            variants = [v for v in VARIANTS if v.name not in budget.get("skip", ())]
            small = max(1, round(budget["dim"] * 0.1))
            res = record["results"][ds] = {}

            def keep(name: str, result: dict) -> None:
                res[name] = result
                write_json(args.out, record)

            run_variants(variants, base_overrides(data_path, budget, args.threads), root,
                         range(args.seed, args.seed + budget.get("seeds", 1)), keep,
                         adjust=lambda v, over: {**over, "model.dim": small} if v.name == "dense small" else over)
            plain = res["dense (plain)"]["seconds_per_epoch"]
            rows += variant_rows(VARIANTS, res, lambda label, r, m: [
                ds, label, r["dim"], r["seeds"], f"{m['mrr']:.4f}" + (f" ±{m['mrr_std']:.4f}" if "mrr_std" in m else ""),
                f"{m['hits@1']:.4f}", f"{m['hits@10']:.4f}", f"{m['nonzero']:,}", f"{m['bytes']:,}",
                f"{r['seconds_per_epoch']:.2f}", f"{r['seconds_per_epoch'] / plain:.2f}x", f"{m['rarest_mrr']:.4f}"])
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
