"""Dense teachers at tuned quality: the shipped ``<dataset>_dense.yaml`` configs, trained and tested.

For each dataset the shipped config (``pipelines/configs/<dataset>_dense.yaml``, found by
``metasd-dgl tune``; its header says with which command and validation MRR) is trained through the
library (checkpoint selected on validation MRR), then tested (filtered, both sides, realistic ranks).
The table: dataset, config, epochs run, train minutes on this machine, test MRR / H@1 / H@3 / H@10,
and the best published figure found.  ``--rp-effect DATASETS`` adds, for each, the same config with
relation prediction off (``train.rp_weight=0``) and on (the config's weight, or 0.5 if it has none),
at the same epoch budget.

    python benchmarks/bench_quality.py --threads 1                           # every shipped dense config
    python benchmarks/bench_quality.py --datasets codex-s --rp-effect codex-s
    python benchmarks/bench_quality.py --quick                               # smoke run (seconds)

Writes ``benchmarks/results/quality.json`` and prints the table (markdown).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import default_data_dir, format_table, machine_info, write_json
from harness import load_config, load_processed, preprocess, stage_evaluate, train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"
#: Published filtered test figures (MRR, H@1, H@3, H@10) and where they come from.
PUBLISHED = {
    "codex-s": ((0.465, 0.372, 0.504, 0.646), "LibKGE ComplEx (Safavi and Koutra 2020)"),
    "umls": ((0.878, None, None, None), "DistMult, best embedding MRR in irokin/Link-Prediction-Experiment-Results"),
    "kinship": ((0.833, None, None, None), "ConvE, best embedding MRR in irokin/Link-Prediction-Experiment-Results"),
    "nations": ((None, None, None, None), "none found"),
}


def run(dataset: str, overrides: dict, root: Path, data_dir: str, label: str) -> dict:
    """Train the shipped config of ``dataset`` with ``overrides``, test its best checkpoint -> a result dict."""
    config = CONFIGS / f"{dataset}_dense.yaml"
    run_dir = root / f"{dataset}-{label}"
    processed = root / f"{dataset}-data"
    cfg = load_config(config, overrides={"run_dir": str(run_dir), "data.data_dir": data_dir,
                                         "data.processed_dir": str(processed), **overrides})
    data = load_processed(preprocess(cfg.data.dataset, processed, Path(data_dir)))
    t0 = time.perf_counter()
    train(cfg, data, run_dir, progress=False)
    minutes = (time.perf_counter() - t0) / 60
    record = stage_evaluate(run_dir, "test", "best", echo=lambda *_: None)
    both = record["results"]["teacher"]["both"]
    return {"dataset": dataset, "config": str(config.relative_to(ROOT)), "label": label,
            "overrides": overrides, "epochs": record["epoch"], "train_minutes": minutes,
            **{k: both[k] for k in ("mrr", "hits@1", "hits@3", "hits@10")}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="umls,kinship,nations,codex-s")
    ap.add_argument("--rp-effect", default="", help="datasets to also train with relation prediction off / on")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--root", default=str(ROOT / "benchmarks" / "results" / "quality_runs"))
    ap.add_argument("--quick", action="store_true", help="2 epochs, dim 16: a smoke run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    args = ap.parse_args(argv)
    root = Path(args.root) / ("quick" if args.quick else "full")
    base = {"runtime.num_threads": args.threads}
    if args.quick:
        base.update({"train.epochs": 2, "model.dim": 16, "valid.every": 1})
    rows = []
    for ds in [d for d in args.datasets.split(",") if d]:
        rows.append(run(ds, base, root, args.data_dir, "tuned"))
        print(f"[{ds}] tuned: test MRR {rows[-1]['mrr']:.4f} in {rows[-1]['train_minutes']:.1f} min", flush=True)
    for ds in [d for d in args.rp_effect.split(",") if d]:
        tuned = load_config(CONFIGS / f"{ds}_dense.yaml").train
        weight = tuned.rp_weight or 0.5
        epochs = {"train.epochs": tuned.epochs if not args.quick else 2, "valid.patience": 0}
        for label, w in (("rp off", 0.0), (f"rp {weight:g}", weight)):
            rows.append(run(ds, {**base, **epochs, "train.rp_weight": w}, root, args.data_dir, label.replace(" ", "")))
            rows[-1]["label"] = label
    table_rows = []
    for r in rows:
        ref, src = PUBLISHED.get(r["dataset"], ((None,) * 4, "none found"))
        table_rows.append([r["dataset"], f"{r['config']} ({r['label']})", r["epochs"], f"{r['train_minutes']:.1f}",
                           *(f"{r[k]:.4f}" for k in ("mrr", "hits@1", "hits@3", "hits@10")),
                           " / ".join("-" if x is None else f"{x:.3f}" for x in ref) + f" ({src})"])
    table = format_table(["dataset", "config", "best epoch", "train min", "MRR", "H@1", "H@3", "H@10",
                          "published MRR / H@1 / H@3 / H@10"], table_rows, left=2)
    print(table)
    record = {"machine": machine_info(), "threads": args.threads, "quick": args.quick, "rows": rows, "table": table}
    write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
