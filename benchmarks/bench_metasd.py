"""MetaSD and its ablations in one table: UMLS and Kinship (full training), FB15k-237 (CPU budget).

Per dataset, every variant trains from the same seed with the same budget
(dim, epochs, batch, lr, regulariser), selects its checkpoint on the
validation split only, and is evaluated on test (filtered, both sides,
realistic ranks):

    dense (plain)       dense ComplEx at dim D, method plain            -> teacher row
    metasd              MetaSD at dim D, prune rate 0.9                 -> teacher and student rows
    metasd (meta/4)     the same with the meta step every 4th batch     -> student row
    kd                  mutual distillation without the meta step        -> student row
    prune-only          the dynamic-mask student trained alone            -> student row
    dense small         dense ComplEx at dim round(0.1 D): ~ the student's non-zeros

Columns: MRR, Hits@1/10, non-zero parameters, bytes on disk (teacher:
safetensors; student: the compact export), seconds per epoch and its ratio to
``plain`` in the same run, and MRR on the rarest relation-frequency bucket.

    python benchmarks/bench_metasd.py                 # the full table (~40 min on 2 cores)
    python benchmarks/bench_metasd.py --quick         # a smoke run (~2 min)
    python benchmarks/bench_metasd.py --datasets umls
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import RESULTS, default_data_dir, format_table, machine_info, peak_rss_mb, write_json

from metasd_dgl.config import load_config
from metasd_dgl.data.preprocess import load_processed, preprocess
from metasd_dgl.data.stats import evaluation_buckets
from metasd_dgl.evaluation import summarize
from metasd_dgl.inference import rank_split
from metasd_dgl.train.loop import Trainer
from pipelines.stages import load_run, stage_export

# Budgets: dim, epochs, batch, lr, regulariser weight, validation every k epochs.
BUDGETS = {
    "umls": dict(dim=128, epochs=60, batch=500, lr=0.1, reg=0.01, valid_every=10),
    "kinship": dict(dim=128, epochs=60, batch=500, lr=0.1, reg=0.01, valid_every=10),
    # CPU budget: one epoch at dim 32 (a MetaSD epoch is ~8x a plain one; see bench_step.py).
    "fb15k-237": dict(dim=32, epochs=1, batch=1000, lr=0.1, reg=0.01, valid_every=1,
                      skip=("metasd (meta/4)",)),
}
QUICK = {"umls": dict(dim=32, epochs=4, batch=500, lr=0.1, reg=0.01, valid_every=2)}

VARIANTS = [  # name, overrides, rows reported
    ("dense (plain)", {"train.method": "plain"}, ("teacher",)),
    ("metasd", {"train.method": "metasd"}, ("teacher", "student")),
    ("metasd (meta/4)", {"train.method": "metasd", "metasd.meta_every": 4}, ("student",)),
    ("kd", {"train.method": "kd"}, ("student",)),
    ("prune-only", {"train.method": "prune"}, ("student",)),
    ("dense small", {"train.method": "plain", "small": True}, ("teacher",)),
]


def run_variant(name, overrides, data_path, budget, root: Path, seed: int, threads: int) -> dict:
    over = {k: v for k, v in overrides.items() if k != "small"}
    dim = max(1, round(budget["dim"] * 0.1)) if overrides.get("small") else budget["dim"]
    cfg = load_config(overrides={
        "run_dir": str(root / name.replace(" ", "_").replace("/", "")),
        "data.processed_dir": str(data_path), "model.decoder": "complex", "model.dim": dim,
        "train.epochs": budget["epochs"], "train.batch_size": budget["batch"], "train.lr": budget["lr"],
        "train.reg_weight": budget["reg"], "train.valid_every": budget["valid_every"], "train.patience": 0,
        "train.seed": seed, "train.keep_checkpoints": 0, "train.num_threads": threads,
        "metasd.quiz_batch_size": budget["batch"], **over})
    data = load_processed(data_path)
    t0 = time.perf_counter()
    Trainer(cfg, data, Path(cfg.run_dir), progress=False).run()
    wall = time.perf_counter() - t0
    epochs = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in epochs if "seconds" in r]
    _, data, model, masks, ckpt = load_run(Path(cfg.run_dir), "best")
    buckets = evaluation_buckets(data.test, data.train, data.num_entities, data.num_relations, 3)
    out = {"dim": dim, "epochs": len(secs), "best_epoch": ckpt["state"]["best_epoch"],
           "seconds_per_epoch": sum(secs) / len(secs), "train_wall_s": wall}
    export = stage_export(Path(cfg.run_dir), "best")
    for row, m in (("teacher", None), ("student", masks)):
        if row == "student" and not masks:
            continue
        s = summarize(rank_split(model, data.test, data.num_relations, data.filter, masks=m), buckets)
        rare = s["buckets"]["relation"]
        rarest = next(iter(rare))
        out[row] = {"mrr": s["both"]["mrr"], "hits@1": s["both"]["hits@1"], "hits@10": s["both"]["hits@10"],
                    "rarest_bucket": rarest, "rarest_mrr": rare[rarest]["mrr"], "buckets": rare,
                    "nonzero": export["student_nonzero"] if m else export["teacher_params"],
                    "bytes": export["student_bytes"] if m else export["teacher_bytes"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--datasets", default="umls,kinship,fb15k-237")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
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
                print(f"[{ds}] {name} ...", file=sys.stderr, flush=True)
                res[name] = run_variant(name, overrides, data_path, budget, root / ds, args.seed, args.threads)
                res[name]["reported"] = list(reported)
            record["results"][ds] = res
            plain = res["dense (plain)"]["seconds_per_epoch"]
            for name, _, reported in VARIANTS:
                if name not in res:
                    continue
                r = res[name]
                for row in reported:
                    m = r[row]
                    rows.append([ds, f"{name} {row}", r["dim"], f"{m['mrr']:.4f}", f"{m['hits@1']:.4f}",
                                 f"{m['hits@10']:.4f}", f"{m['nonzero']:,}", f"{m['bytes']:,}",
                                 f"{r['seconds_per_epoch']:.2f}", f"{r['seconds_per_epoch'] / plain:.2f}x",
                                 f"{m['rarest_mrr']:.4f}"])
            write_json(args.out, record)
    record["peak_rss_mb"] = peak_rss_mb()
    header = ["dataset", "model", "dim", "MRR", "H@1", "H@10", "non-zeros", "bytes", "s/epoch", "vs plain",
              "rarest-rel MRR"]
    table = format_table(header, rows, left=2)
    print(table)
    record["table"] = table
    print(f"budgets: {json.dumps(budgets)}")
    print(f"peak RSS {record['peak_rss_mb']:.0f} MB; JSON: {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
