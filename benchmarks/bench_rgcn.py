"""R-GCN + DistMult: UMLS dense / prune-only / MetaSD, FB15k-237 speed vs PyKEEN's RGCN, dim-500 memory.

Parts (each writes into the JSON as soon as it finishes, so partial results survive):

``umls``
    R-GCN encoder + DistMult decoder, full training in the 1-n regime
    (full-graph message passing with ``rgcn.edge_dropout`` of the training
    edges hidden, the batch's own triples always hidden, scoring against all
    entities).  Variants from the same seed and budget: dense (plain), prune-only
    student, MetaSD teacher and student.  Pruning uses
    ``prune.scope=per-tensor``: the global magnitude threshold of the
    KGE path would prune whole R-GCN tensors, because input embeddings, bases,
    coefficients and self-loop weights live on different scales.  Checkpoint
    chosen on validation MRR; test metrics filtered, both sides, realistic ranks.

``fb-quality``
    FB15k-237 MRR/H@10 at a CPU budget (``FB_BUDGET``: dim 100, 16 bases, batch
    2000, one epoch cut to 150 random batches, about 25 minutes in all): dense,
    prune-only and MetaSD (exact meta step every 4th batch; every batch would be
    ~6x a plain batch) in the 1-n regime on the full graph, plus a dense run at
    PyKEEN's configuration of ``fb-speed`` (one negative, batch 1000, sampled
    subgraphs, 300 batches).  PyKEEN's R-GCN gets no MRR row: at ~100 s per
    batch (``fb-speed``) the same budget is ~15 of its batches.

``fb-speed``
    FB15k-237 at PyKEEN's R-GCN configuration: dim 100, 2 layers, 16 bases,
    DistMult, one negative per positive, batch 1000.  Ours: the
    ``negative-sampling`` regime (DGL uniform negatives, message passing on an
    edge-sampled subgraph of ``rgcn.sample_edges`` training triples per batch,
    0 = the whole training graph) through the trainer with ``budget.batches_per_epoch``
    N: a warm-up epoch of N batches, then a timed epoch of N (``metrics.jsonl`` seconds);
    our epoch = 2 x 272,115 reciprocal examples / 1000 = 545 batches.  PyKEEN:
    ``pykeen_peer.rgcn_batches`` (its ``RGCN``, sLCWA, 1 negative, Adam), whose epoch
    is 272,115 triples (no inverse triples: RGCN adds inverse edges itself) / 1000 = 273 batches.

``fb-memory``
    FB15k-237 at dim 500 (PyKEEN's default dim), same regime, a few batches in a
    subprocess; peak RSS of that subprocess up to the end of its training batches (its
    VmHWM, ``common.peak_rss_mb``, read when the trainer starts its validation) and s/batch.

    python benchmarks/bench_rgcn.py            # everything (~20 min on 2 busy cores)
    python benchmarks/bench_rgcn.py --quick    # smoke run (< 2 min, no PyKEEN)
    python benchmarks/bench_rgcn.py --parts umls
    python benchmarks/bench_rgcn.py --parts fb-quality --out benchmarks/results/rgcn_fb_quality.json

Every torch process uses ``--threads`` (default 1) threads.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from common import RESULTS, default_data_dir, format_table, in_child, machine_info, peak_rss_mb, write_json  # noqa: E402

FB_TRIPLES = 272_115

UMLS_BUDGET = dict(dim=64, layers=2, bases=4, epochs=25, batch=1000, lr=0.1, reg=0.0, valid_every=5,
                   edge_dropout=0.5, dropout=0.2)
UMLS_QUICK = dict(dim=16, layers=2, bases=2, epochs=3, batch=1000, lr=0.1, reg=0.0, valid_every=3,
                  edge_dropout=0.5, dropout=0.2)
# FB15k-237 quality rows: a CPU budget of about 25 minutes for all four runs (stated in the table).
FB_BUDGET = dict(dim=100, layers=2, bases=16, epochs=1, batch=2000, batches_per_epoch=150, lr=0.1, reg=0.0,
                 valid_every=1, edge_dropout=0.5, dropout=0.2)
FB_QUICK = dict(FB_BUDGET, dim=16, bases=2, batches_per_epoch=2)


def _variants(kind: str):
    from harness import Variant

    metasd = {"train.method": "metasd", **({"metasd.meta_every": 4} if kind == "fb" else {})}
    tag = "metasd (meta/4)" if kind == "fb" else "metasd"
    out = [Variant("dense (plain)", {"train.method": "plain"}),
           Variant("prune-only", {"train.method": "prune"}, ("student",)),
           Variant(tag, metasd, ("teacher", "student"))]
    if kind == "fb":  # PyKEEN's configuration of the speed rows: one DGL negative per positive, sampled subgraphs
        out.append(Variant("dense, 1 negative", {
            "train.method": "plain", "train.regime": "negative-sampling", "negatives.num": 1,
            "train.batch_size": 1000, "rgcn.sample_edges": 30000, "budget.batches_per_epoch": 300}))
    return out


def rgcn_overrides(data_path: Path, budget: dict, threads: int) -> dict:
    return {"data.processed_dir": str(data_path), "model.encoder": "rgcn", "model.decoder": "distmult",
            "model.dim": budget["dim"], "rgcn.num_layers": budget["layers"], "rgcn.num_bases": budget["bases"],
            "rgcn.dropout": budget["dropout"], "train.regime": "1-n", "rgcn.edge_dropout": budget["edge_dropout"],
            "train.epochs": budget["epochs"], "train.batch_size": budget["batch"], "train.lr": budget["lr"],
            "train.reg_weight": budget["reg"], "valid.every": budget["valid_every"], "valid.patience": 0,
            "checkpoint.keep": 0, "runtime.num_threads": threads,
            "budget.batches_per_epoch": budget.get("batches_per_epoch", 0),
            "prune.scope": "per-tensor", "metasd.quiz_batch_size": budget["batch"]}


def part_quality(args, record, root: Path, kind: str) -> None:
    """UMLS (``kind="umls"``) or FB15k-237 at a CPU budget (``"fb"``): the variants through the harness."""
    from harness import preprocess, run_variants

    name = "umls" if kind == "umls" else "fb15k-237"
    budget = record["umls_budget"] if kind == "umls" else (FB_QUICK if args.quick else FB_BUDGET)
    if kind == "fb":
        record["fb_quality_budget"] = budget
    data_path = preprocess(name, Path(args.cache) / name, Path(args.data_dir))
    res = record["results"].setdefault(name if kind == "umls" else "fb15k-237 quality", {})
    variants = [v for v in _variants(kind) if not args.only or v.name in args.only]

    def adjust(v, over: dict) -> dict:
        return {**over, "budget.batches_per_epoch": 2} if args.quick and "negative" in v.name else over

    def keep(vname: str, result: dict) -> None:
        if kind == "fb":
            v = next(v for v in variants if v.name == vname)
            result["batches"] = adjust(v, {**budget_over, **v.overrides})["budget.batches_per_epoch"]
        res[vname] = result
        write_json(args.out, record)
        print(f"[{name}] {vname}: {result['seconds_per_epoch']:.2f} s/epoch, best epoch {result['best_epoch']}, "
              f"teacher={result.get('teacher', {}).get('mrr')} student={result.get('student', {}).get('mrr')}",
              file=sys.stderr, flush=True)

    budget_over = rgcn_overrides(data_path, budget, args.threads)
    run_variants(variants, budget_over, root / kind, [args.seed], keep, adjust)


# ----------------------------------------------------------------------------- FB15k-237 speed and memory
def worker_ours(processed: str, run_dir: str, dim: int, sample_edges: int, batches: int, warmup: bool,
                threads: int) -> dict:
    """Our negative-sampling R-GCN trainer: a warm-up epoch of ``batches`` batches (if ``warmup``), then the
    timed one; seconds from ``metrics.jsonl``, peak RSS up to the end of training (before its validation)."""
    from harness import Trainer, history, load_config, load_processed, tune_malloc

    class Measured(Trainer):
        def validate(self):
            self.peak_rss_mb = peak_rss_mb()
            return super().validate()

    torch.set_num_threads(threads)
    tune_malloc()  # what train() applies
    data = load_processed(processed)
    rss_loaded = peak_rss_mb()
    epochs = 2 if warmup else 1
    cfg = load_config(overrides={
        "run_dir": run_dir, "data.processed_dir": processed,
        "model.encoder": "rgcn", "model.decoder": "distmult", "model.dim": dim,
        "rgcn.num_layers": 2, "rgcn.num_bases": 16, "rgcn.decomposition": "basis",
        "train.method": "plain", "train.regime": "negative-sampling", "negatives.num": 1,
        "train.batch_size": 1000, "rgcn.sample_edges": sample_edges, "budget.batches_per_epoch": batches,
        "train.epochs": epochs, "valid.every": epochs, "checkpoint.keep": 0,
        "train.seed": 0, "runtime.num_threads": threads})
    t0 = time.perf_counter()
    trainer = Measured(cfg, data, Path(run_dir), progress=False)
    setup_s = time.perf_counter() - t0
    trainer.run()
    epochs_run = [r for r in history(run_dir) if "seconds" in r]
    n_ex, spb = len(trainer.examples), epochs_run[-1]["seconds"] / batches
    return {
        "dim": dim, "sample_edges": sample_edges, "batch": 1000, "timed_batches": batches,
        "warmup_batches": batches if warmup else 0, "seconds_per_batch": spb,
        "epoch_seconds": [r["seconds"] for r in epochs_run], "losses": [r.get("loss") for r in epochs_run],
        "examples_per_epoch": n_ex, "batches_per_epoch": math.ceil(n_ex / 1000),
        "seconds_per_epoch_extrapolated": spb * math.ceil(n_ex / 1000), "setup_s": setup_s,
        "torch_threads": torch.get_num_threads(), "params": sum(p.numel() for p in trainer.model.parameters()),
        "peak_rss_mb_after_load": rss_loaded, "peak_rss_mb": trainer.peak_rss_mb,
        "peak_rss_mb_with_validation": peak_rss_mb()}


def worker_pykeen(processed: str, dim: int, batches: int, threads: int) -> dict:
    import pykeen_peer
    from harness import load_processed

    torch.set_num_threads(threads)
    data = load_processed(processed)
    return {**pykeen_peer.rgcn_batches(data.train, data.num_entities, data.num_relations, dim, 1000, batches),
            "peak_rss_mb": peak_rss_mb()}


def part_fb(args, record, root: Path, quick: bool) -> None:
    from harness import preprocess

    data_path = str(preprocess("fb15k-237", Path(args.cache) / "fb15k-237", Path(args.data_dir)))
    res = record["results"].setdefault("fb15k-237", {})

    def run(key: str, fn, *fn_args) -> None:
        print(f"[fb15k-237] {key} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res[key] = in_child(fn, *fn_args)
        res[key]["worker_wall_s"] = time.perf_counter() - t0
        write_json(args.out, record)
        print(f"[fb15k-237] {key}: {res[key].get('seconds_per_batch')} s/batch, peak {res[key].get('peak_rss_mb')} MB"
              f" {res[key].get('error', '')}", file=sys.stderr, flush=True)

    if "fb-speed" in args.parts:
        runs = [(30000, 3 if quick else args.fb_batches)]
        if not quick and args.fb_full_batches:
            runs.append((0, args.fb_full_batches))
        for edges, n in runs:
            run(f"ours dim100 sample_edges={edges}", worker_ours, data_path, str(root / f"fb_{edges}"), 100, edges,
                n, not quick, args.threads)
        if not quick and not args.no_pykeen:
            run("pykeen dim100", worker_pykeen, data_path, 100, args.pykeen_batches, args.threads)
    if "fb-memory" in args.parts:
        run("ours dim500 sample_edges=30000", worker_ours, data_path, str(root / "fb500"), 500, 30000,
            1 if quick else args.mem_batches, not quick, args.threads)


# ----------------------------------------------------------------------------- tables
def tables(record) -> str:
    from harness import variant_rows

    out = []
    umls = record["results"].get("umls")
    if umls:
        rows = variant_rows(_variants("umls"), umls, lambda label, r, m: [
            label, r["dim"], f"{m['mrr']:.4f}", f"{m['hits@10']:.4f}", f"{r['seconds_per_epoch']:.2f}",
            f"{m['nonzero']:,}", f"{m['bytes']:,}", f"{m['rarest_mrr']:.4f}", f"{r['best_epoch']}/{r['epochs']}"])
        out.append("UMLS, R-GCN + DistMult, 1-n regime (test, filtered, both sides)\n" + format_table(
            ["model", "dim", "MRR", "H@10", "s/epoch", "non-zeros", "bytes", "rarest-rel MRR", "best/epochs"], rows))
    fbq = record["results"].get("fb15k-237 quality")
    if fbq:
        b = record.get("fb_quality_budget", FB_BUDGET)
        fb_variants = _variants("fb")
        sizes = {v.name: v.overrides.get("train.batch_size", b["batch"]) for v in fb_variants}

        def cells(label: str, r: dict, m: dict) -> list:
            size = sizes[label.rsplit(" ", 1)[0]]
            return [label, f"{m['mrr']:.4f}", f"{m['hits@10']:.4f}", f"{r['batches']} x {size}",
                    f"{r['seconds_per_epoch']:.0f}",
                    f"{r['seconds_per_epoch'] * math.ceil(2 * FB_TRIPLES / size) / r['batches']:,.0f}",
                    f"{m['nonzero']:,}", f"{m['bytes']:,}", f"{m['rarest_mrr']:.4f}"]
        rows = variant_rows(fb_variants, fbq, cells)
        out.append(f"FB15k-237, R-GCN ({b['layers']} layers, {b['bases']} bases, dim {b['dim']}) + DistMult, "
                   f"{b['epochs']} epoch cut to the batches shown (test, filtered, both sides)\n" + format_table(
                       ["model", "MRR", "H@10", "batches", "train s", "s/full epoch (extrap.)", "non-zeros",
                        "bytes", "rarest-rel MRR"], rows))
    fb = record["results"].get("fb15k-237")
    if fb:
        pk_epoch = fb.get("pykeen dim100", {}).get("seconds_per_epoch_extrapolated")
        rows = [[key, "error"] + [""] * 5 if "error" in r else [
            key, f"{r['seconds_per_batch']:.3f}", r["timed_batches"], r["batches_per_epoch"],
            f"{r['seconds_per_epoch_extrapolated']:,.0f}",
            f"{pk_epoch / r['seconds_per_epoch_extrapolated']:.1f}x" if pk_epoch and key.startswith("ours") else "",
            f"{r['peak_rss_mb']:,.0f}"] for key, r in fb.items()]
        out.append("FB15k-237, R-GCN (2 layers, 16 bases) + DistMult, 1 negative, batch 1000 (timed batches, "
                   "extrapolated epochs)\n" + format_table(
                       ["run", "s/batch", "timed", "batches/epoch", "s/epoch (extrap.)", "PyKEEN/ours epoch",
                        "peak RSS MB"], rows))
        if pk_epoch:
            out.append("(ours' epoch = 2 x 272,115 reciprocal examples = 545 batches; PyKEEN's sLCWA epoch = 272,115 "
                       "triples without inverse triples = 273 batches; both epochs cover every training triple once, "
                       "ours in both directions, so the epoch ratio is also the per-triple ratio)")
    return "\n\n".join(out)


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--parts", default="umls,fb-quality,fb-speed,fb-memory")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "bench_rgcn_data"),
                    help="processed datasets are kept here between runs")
    ap.add_argument("--umls-epochs", type=int, default=None)
    ap.add_argument("--umls-lr", type=float, default=None)
    ap.add_argument("--fb-batches", type=int, default=20)
    ap.add_argument("--fb-full-batches", type=int, default=3, help="batches with sample_edges=0 (0 = skip)")
    ap.add_argument("--mem-batches", type=int, default=3)
    ap.add_argument("--pykeen-batches", type=int, default=3)
    ap.add_argument("--no-pykeen", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="", help="comma-separated variant names of umls / fb-quality (default: all)")
    ap.add_argument("--merge", action="store_true", help="keep the results already in --out, add these")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.parts = args.parts.split(",")
    args.out = args.out or (os.path.join(tempfile.gettempdir(), "rgcn_quick.json") if args.quick
                            else str(RESULTS / "rgcn.json"))
    budget = dict(UMLS_QUICK if args.quick else UMLS_BUDGET)
    if args.umls_epochs:
        budget["epochs"] = args.umls_epochs
    if args.umls_lr:
        budget["lr"] = args.umls_lr
    record = {"machine": machine_info(), "command": " ".join(sys.argv), "quick": args.quick,
              "umls_budget": budget, "notes": {
                  "prune_scope": "per-tensor (global magnitudes differ per R-GCN tensor)",
                  "fb_regime": "negative-sampling, DGL uniform negatives (1 per positive), edge-sampled subgraph "
                               "with rgcn.sample_edges message edges per batch (0 = whole graph), edge_dropout 0.5",
                  "fb_epoch_ours": "2 x 272,115 reciprocal examples / 1000 = 545 batches",
                  "fb_epoch_pykeen": "272,115 triples (create_inverse_triples=False, required by RGCN) / 1000 = 273",
                  "threads": args.threads}, "results": {}}
    args.only = [x for x in args.only.split(",") if x]
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        record["results"] = old.get("results", {})
        record["merged_into"] = {k: old[k] for k in ("command", "machine") if k in old}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_rgcn_") as tmp:
        root = Path(tmp)
        if "umls" in args.parts:
            part_quality(args, record, root, "umls")
        if "fb-quality" in args.parts:
            part_quality(args, record, root, "fb")
        if "fb-speed" in args.parts or "fb-memory" in args.parts:
            part_fb(args, record, root, args.quick)
    record["peak_rss_mb_main"] = peak_rss_mb()
    record["wall_s"] = time.perf_counter() - t_start
    table = tables(record)
    record["table"] = table
    print(table)
    print(f"UMLS budget: {json.dumps(budget)}")
    print(f"wall {record['wall_s']:.0f}s; JSON: {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
