"""R-GCN + DistMult: UMLS dense / prune-only / MetaSD, FB15k-237 speed vs PyKEEN's RGCN, dim-500 memory.

Parts (each writes into the JSON as soon as it finishes, so partial results survive):

``umls``
    R-GCN encoder + DistMult decoder, full training in the 1-n regime
    (full-graph message passing with ``train.edge_dropout`` of the training
    edges hidden, the batch's own triples always hidden, scoring against all
    entities).  Variants from the same seed and budget: dense (plain), prune-only
    student, MetaSD teacher and student.  Pruning uses
    ``metasd.prune_scope=per-tensor``: the global magnitude threshold of the
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
    edge-sampled subgraph of ``train.sample_edges`` training triples per batch,
    0 = the whole training graph), N timed batches after one warm-up batch.
    Our epoch = 2 x 272,115 reciprocal examples / 1000 = 545 batches.
    PyKEEN: ``pykeen.models.RGCN`` on a ``CoreTriplesFactory`` *without*
    inverse triples (its ``RGCNRepresentation`` refuses a factory with
    ``create_inverse_triples=True`` and adds inverse edges itself); sLCWA
    batches through ``SLCWATrainingLoop._process_batch_static`` (PyKEEN's own
    per-batch code) with ``BasicNegativeSampler(num_negs_per_pos=1)``, Adam.
    PyKEEN's epoch = 272,115 triples / 1000 = 273 batches.  Both are also
    reported per training triple seen, so the ratio is shown both ways.

``fb-memory``
    FB15k-237 at dim 500 (PyKEEN's default dim), same regime, a few batches in a
    subprocess; peak RSS of that subprocess (its own ru_maxrss) and s/batch.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from common import RESULTS, default_data_dir, format_table, machine_info, peak_rss_mb, write_json  # noqa: E402

FB_TRIPLES = 272_115

UMLS_BUDGET = dict(dim=64, layers=2, bases=4, epochs=25, batch=1000, lr=0.1, reg=0.0, valid_every=5,
                   edge_dropout=0.5, dropout=0.2)
UMLS_QUICK = dict(dim=16, layers=2, bases=2, epochs=3, batch=1000, lr=0.1, reg=0.0, valid_every=3,
                  edge_dropout=0.5, dropout=0.2)
# FB15k-237 quality rows: a CPU budget of about 25 minutes for all four runs (stated in the table).
FB_BUDGET = dict(dim=100, layers=2, bases=16, epochs=1, batch=2000, batches_per_epoch=150, lr=0.1, reg=0.0,
                 valid_every=1, edge_dropout=0.5, dropout=0.2)
FB_QUICK = dict(FB_BUDGET, dim=16, bases=2, batches_per_epoch=2)
FB_VARIANTS = [  # name, overrides, rows reported
    ("dense (plain)", {"train.method": "plain"}, ("teacher",)),
    ("prune-only", {"train.method": "prune"}, ("student",)),
    ("metasd (meta/4)", {"train.method": "metasd", "metasd.meta_every": 4}, ("teacher", "student")),
    ("metasd (meta/4) + student owns kept", {"train.method": "metasd", "metasd.meta_every": 4,
                                            "metasd.student_owns_kept": True}, ("teacher", "student")),
    # PyKEEN's configuration of the speed rows: one DGL negative per positive, batch 1000, sampled subgraphs.
    ("dense, 1 negative", {"train.method": "plain", "train.regime": "negative-sampling", "train.num_negatives": 1,
                           "train.batch_size": 1000, "train.sample_edges": 30000, "train.batches_per_epoch": 300},
     ("teacher",)),
]
UMLS_VARIANTS = [  # name, overrides, rows reported
    ("dense (plain)", {"train.method": "plain"}, ("teacher",)),
    ("prune-only", {"train.method": "prune"}, ("student",)),
    ("metasd", {"train.method": "metasd"}, ("teacher", "student")),
    ("metasd + student owns kept", {"train.method": "metasd", "metasd.student_owns_kept": True},
     ("teacher", "student")),
]


# ----------------------------------------------------------------------------- helpers
def _threads(n: int) -> None:
    torch.set_num_threads(n)


def _python_worker(args: list[str], timeout: float) -> dict:
    """Run this script as a worker subprocess; it prints one JSON line last."""
    cmd = [sys.executable, str(Path(__file__).resolve())] + args
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": f"rc={proc.returncode}", "stderr_tail": proc.stderr[-2000:], "wall_s": wall}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    out["worker_wall_s"] = wall
    return out


# ----------------------------------------------------------------------------- UMLS
def run_umls_variant(name, overrides, data_path, budget, root: Path, seed: int, threads: int) -> dict:
    from metasd_dgl.config import load_config
    from variant import train_and_test

    run_dir = root / name.replace(" ", "_").replace("(", "").replace(")", "")
    cfg = load_config(overrides={
        "run_dir": str(run_dir), "data.processed_dir": str(data_path),
        "model.encoder": "rgcn", "model.decoder": "distmult", "model.dim": budget["dim"],
        "model.num_layers": budget["layers"], "model.num_bases": budget["bases"],
        "model.dropout": budget["dropout"],
        "train.regime": "1-n", "train.edge_dropout": budget["edge_dropout"],
        "train.epochs": budget["epochs"], "train.batch_size": budget["batch"], "train.lr": budget["lr"],
        "train.reg_weight": budget["reg"], "train.valid_every": budget["valid_every"], "train.patience": 0,
        "train.seed": seed, "train.keep_checkpoints": 0, "train.num_threads": threads,
        "train.batches_per_epoch": budget.get("batches_per_epoch", 0),
        "metasd.prune_scope": "per-tensor", "metasd.quiz_batch_size": budget["batch"], **overrides})
    return {"dim": budget["dim"], **train_and_test(cfg, data_path)}


def part_fb_quality(args, record, root: Path) -> None:
    """FB15k-237 MRR/H@10 rows at a CPU budget: dense, prune-only, MetaSD (meta step every 4th batch)."""
    from metasd_dgl.data.preprocess import preprocess

    budget = FB_QUICK if args.quick else FB_BUDGET
    record["fb_quality_budget"] = budget
    data_path = preprocess("fb15k-237", Path(args.cache) / "fb15k-237", Path(args.data_dir))
    res = record["results"].setdefault("fb15k-237 quality", {})
    for name, overrides, reported in FB_VARIANTS:
        if args.only and name not in args.only:
            continue
        if args.quick and "negative" in name:
            overrides = {**overrides, "train.batches_per_epoch": 2}
        print(f"[fb15k-237] {name} ...", file=sys.stderr, flush=True)
        res[name] = run_umls_variant(name, overrides, data_path, budget, root / "fb", args.seed, args.threads)
        res[name]["reported"] = list(reported)
        res[name]["batches"] = overrides.get("train.batches_per_epoch", budget["batches_per_epoch"])
        write_json(args.out, record)
        print(f"[fb15k-237] {name}: {res[name]['seconds_per_epoch']:.0f} s, teacher="
              f"{res[name].get('teacher', {}).get('mrr')} student={res[name].get('student', {}).get('mrr')}",
              file=sys.stderr, flush=True)


def part_umls(args, record, budget, root: Path) -> None:
    from metasd_dgl.data.preprocess import preprocess

    data_path = preprocess("umls", Path(args.cache) / "umls", Path(args.data_dir))
    res = record["results"].setdefault("umls", {})
    for name, overrides, reported in UMLS_VARIANTS:
        if args.only and name not in args.only:
            continue
        print(f"[umls] {name} ...", file=sys.stderr, flush=True)
        res[name] = run_umls_variant(name, overrides, data_path, budget, root / "umls", args.seed, args.threads)
        res[name]["reported"] = list(reported)
        write_json(args.out, record)
        print(f"[umls] {name}: {json.dumps({k: res[name].get(k) for k in ('seconds_per_epoch', 'best_epoch')})} "
              f"teacher={res[name].get('teacher', {}).get('mrr')} student={res[name].get('student', {}).get('mrr')}",
              file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- FB15k-237 workers
def worker_ours(a) -> None:
    """N batches of our negative-sampling R-GCN trainer; prints one JSON line."""
    from metasd_dgl.config import load_config
    from metasd_dgl.data.preprocess import load_processed
    from metasd_dgl.train.loop import Trainer, _epoch_generator

    _threads(a.threads)
    t_load = time.perf_counter()
    data = load_processed(a.processed)
    rss_loaded = peak_rss_mb()
    cfg = load_config(overrides={
        "run_dir": a.run_dir, "data.processed_dir": a.processed,
        "model.encoder": "rgcn", "model.decoder": "distmult", "model.dim": a.dim,
        "model.num_layers": 2, "model.num_bases": 16, "model.regularizer": "basis",
        "train.method": "plain", "train.regime": "negative-sampling", "train.num_negatives": 1,
        "train.batch_size": a.batch, "train.sample_edges": a.sample_edges,
        "train.seed": 0, "train.num_threads": a.threads})
    tr = Trainer(cfg, data, Path(a.run_dir), progress=False)
    setup_s = time.perf_counter() - t_load
    gen = _epoch_generator(0, 0)
    perm = torch.randperm(len(tr.examples), generator=gen)
    batches = perm.split(a.batch)
    times, sample_times, losses, sub_nodes, sub_edges = [], [], [], [], []
    for i in range(a.warmup + a.batches):
        t0 = time.perf_counter()
        batch, graph, neg = tr._batch_inputs(batches[i], gen)
        t1 = time.perf_counter()
        out = tr.stepper.step_negative(batch, neg, masks=None, graph=graph)
        t2 = time.perf_counter()
        if i >= a.warmup:
            times.append(t2 - t0)
            sample_times.append(t1 - t0)
            losses.append(out.get("loss"))
            sub_nodes.append(graph.num_nodes())
            sub_edges.append(graph.num_edges())
    n_ex = len(tr.examples)
    spb = sum(times) / len(times)
    print(json.dumps({
        "dim": a.dim, "sample_edges": a.sample_edges, "batch": a.batch, "timed_batches": len(times),
        "warmup_batches": a.warmup, "seconds_per_batch": spb, "batch_seconds": times,
        "sampling_seconds_per_batch": sum(sample_times) / len(sample_times),
        "examples_per_epoch": n_ex, "batches_per_epoch": math.ceil(n_ex / a.batch),
        "seconds_per_epoch_extrapolated": spb * math.ceil(n_ex / a.batch),
        "subgraph_nodes_mean": sum(sub_nodes) / len(sub_nodes), "subgraph_edges_mean": sum(sub_edges) / len(sub_edges),
        "losses": losses, "setup_s": setup_s, "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in tr.model.parameters()),
        "peak_rss_mb_after_load": rss_loaded, "peak_rss_mb": peak_rss_mb()}))


def worker_pykeen(a) -> None:
    """N sLCWA batches of pykeen.models.RGCN (PyKEEN's own batch code); prints one JSON line."""
    import logging

    import numpy as np

    logging.getLogger("pykeen").setLevel(logging.ERROR)
    from pykeen.models import RGCN
    from pykeen.sampling import BasicNegativeSampler
    from pykeen.training.slcwa import SLCWATrainingLoop
    from pykeen.triples import CoreTriplesFactory

    _threads(a.threads)
    path = Path(a.processed)
    train = torch.from_numpy(np.load(path / "train.npy", allow_pickle=False)).long()
    n_ent = sum(1 for ln in (path / "entities.tsv").read_text(encoding="utf-8").split("\n") if ln)
    n_rel = sum(1 for ln in (path / "relations.tsv").read_text(encoding="utf-8").split("\n") if ln)
    t0 = time.perf_counter()
    tf = CoreTriplesFactory.create(mapped_triples=train, num_entities=n_ent, num_relations=n_rel,
                                   create_inverse_triples=False)
    model = RGCN(triples_factory=tf, embedding_dim=a.dim, num_layers=2, interaction="DistMult",
                 decomposition="bases", decomposition_kwargs=dict(num_bases=16), random_seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = BasicNegativeSampler(mapped_triples=tf.mapped_triples, num_entities=n_ent, num_relations=n_rel,
                                   num_negs_per_pos=1)
    setup_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(train.shape[0], generator=gen)
    model.train()
    times, losses = [], []
    for i in range(a.batches):
        t0 = time.perf_counter()
        pos = tf.mapped_triples[perm[i * a.batch:(i + 1) * a.batch]]
        neg, mask = sampler.sample(pos)
        batch = {"positives": pos, "negatives": neg}
        if mask is not None:
            batch["masks"] = mask
        opt.zero_grad()
        loss = SLCWATrainingLoop._process_batch_static(model, model.loss, None, batch, None, None)
        loss.backward()
        opt.step()
        model.post_parameter_update()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
        print(f"pykeen batch {i}: {times[-1]:.2f}s", file=sys.stderr, flush=True)
    spb = sum(times) / len(times)
    n_batches = math.ceil(tf.num_triples / a.batch)
    print(json.dumps({
        "dim": a.dim, "batch": a.batch, "timed_batches": len(times), "seconds_per_batch": spb,
        "batch_seconds": times, "losses": losses, "create_inverse_triples": tf.create_inverse_triples,
        "num_triples": tf.num_triples, "batches_per_epoch": n_batches,
        "seconds_per_epoch_extrapolated": spb * n_batches, "setup_s": setup_s,
        "loss": type(model.loss).__name__, "params": sum(p.numel() for p in model.parameters()),
        "decomposition": type(getattr(model.entity_representations[0].layers[0], "weight", None)).__name__,
        "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}))


def part_fb(args, record, root: Path, quick: bool) -> None:
    from metasd_dgl.data.preprocess import preprocess

    t0 = time.perf_counter()
    data_path = preprocess("fb15k-237", Path(args.cache) / "fb15k-237", Path(args.data_dir))
    print(f"[fb15k-237] processed in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    res = record["results"].setdefault("fb15k-237", {})
    common = ["--processed", str(data_path), "--threads", str(args.threads), "--batch", "1000"]
    if "fb-speed" in args.parts:
        runs = [(30000, 3 if quick else args.fb_batches)]
        if not quick and args.fb_full_batches:
            runs.append((0, args.fb_full_batches))
        for sample_edges, n in runs:
            key = f"ours dim100 sample_edges={sample_edges}"
            print(f"[fb15k-237] {key}, {n} batches ...", file=sys.stderr, flush=True)
            res[key] = _python_worker(["--worker", "ours", "--dim", "100", "--sample-edges", str(sample_edges),
                                       "--batches", str(n), "--run-dir", str(root / f"fb_{sample_edges}")] + common,
                                      timeout=900)
            write_json(args.out, record)
            print(f"[fb15k-237] {key}: {res[key].get('seconds_per_batch')} s/batch {res[key].get('error', '')}",
                  file=sys.stderr, flush=True)
        if not quick and not args.no_pykeen:
            print(f"[fb15k-237] PyKEEN RGCN, {args.pykeen_batches} batches ...", file=sys.stderr, flush=True)
            res["pykeen dim100"] = _python_worker(["--worker", "pykeen", "--dim", "100",
                                                   "--batches", str(args.pykeen_batches)] + common, timeout=900)
            write_json(args.out, record)
            print(f"[fb15k-237] pykeen: {res['pykeen dim100'].get('seconds_per_batch')} s/batch "
                  f"{res['pykeen dim100'].get('error', '')} {res['pykeen dim100'].get('stderr_tail', '')[-500:]}",
                  file=sys.stderr, flush=True)
    if "fb-memory" in args.parts:
        n = 1 if quick else args.mem_batches
        for sample_edges in (30000,):
            key = f"ours dim500 sample_edges={sample_edges}"
            print(f"[fb15k-237] {key}, {n} batches ...", file=sys.stderr, flush=True)
            res[key] = _python_worker(["--worker", "ours", "--dim", "500", "--sample-edges", str(sample_edges),
                                       "--batches", str(n), "--warmup", "0" if quick else "1",
                                       "--run-dir", str(root / f"fb500_{sample_edges}")] + common,
                                      timeout=900)
            write_json(args.out, record)
            print(f"[fb15k-237] {key}: {res[key].get('seconds_per_batch')} s/batch, "
                  f"peak {res[key].get('peak_rss_mb')} MB {res[key].get('error', '')}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- tables
def tables(record) -> str:
    out = []
    umls = record["results"].get("umls")
    if umls:
        rows = []
        for name, _, reported in UMLS_VARIANTS:
            if name not in umls:
                continue
            r = umls[name]
            for row in reported:
                m = r[row]
                rows.append([f"{name} {row}", r["dim"], f"{m['mrr']:.4f}", f"{m['hits@10']:.4f}",
                             f"{r['seconds_per_epoch']:.2f}", f"{m['nonzero']:,}", f"{m['bytes']:,}",
                             f"{m['rarest_mrr']:.4f}", f"{r['best_epoch']}/{r['epochs']}"])
        out.append("UMLS, R-GCN + DistMult, 1-n regime (test, filtered, both sides)\n" + format_table(
            ["model", "dim", "MRR", "H@10", "s/epoch", "non-zeros", "bytes", "rarest-rel MRR", "best/epochs"], rows))
    fbq = record["results"].get("fb15k-237 quality")
    if fbq:
        b = record.get("fb_quality_budget", FB_BUDGET)
        rows = []
        for name, overrides, reported in FB_VARIANTS:
            if name not in fbq:
                continue
            r = fbq[name]
            n_batches = r.get("batches", overrides.get("train.batches_per_epoch", b["batches_per_epoch"]))
            size = overrides.get("train.batch_size", b["batch"])
            full = math.ceil(2 * FB_TRIPLES / size)
            for row in reported:
                m = r[row]
                rows.append([f"{name} {row}", f"{m['mrr']:.4f}", f"{m['hits@10']:.4f}", f"{n_batches} x {size}",
                             f"{r['seconds_per_epoch']:.0f}", f"{r['seconds_per_epoch'] * full / n_batches:,.0f}",
                             f"{m['nonzero']:,}", f"{m['bytes']:,}", f"{m['rarest_mrr']:.4f}"])
        out.append(f"FB15k-237, R-GCN ({b['layers']} layers, {b['bases']} bases, dim {b['dim']}) + DistMult, "
                   f"{b['epochs']} epoch cut to the batches shown (test, filtered, both sides)\n" + format_table(
                       ["model", "MRR", "H@10", "batches", "train s", "s/full epoch (extrap.)", "non-zeros",
                        "bytes", "rarest-rel MRR"], rows))
    fb = record["results"].get("fb15k-237")
    if fb:
        rows = []
        pk = fb.get("pykeen dim100", {})
        pk_epoch = pk.get("seconds_per_epoch_extrapolated")
        pk_triple = pk_epoch / FB_TRIPLES if pk_epoch else None
        for key, r in fb.items():
            if "error" in r:
                rows.append([key, "error", "", "", "", "", ""])
                continue
            spb = r["seconds_per_batch"]
            epoch = r["seconds_per_epoch_extrapolated"]
            ours = key.startswith("ours")
            per_triple = epoch / FB_TRIPLES  # per training triple of the dataset (ours: both directions)
            ratio = f"{pk_epoch / epoch:.1f}x" if (pk_epoch and ours) else ""
            rows.append([key, f"{spb:.3f}", f"{r['timed_batches']}", f"{r['batches_per_epoch']}",
                         f"{epoch:,.0f}", ratio, f"{r['peak_rss_mb']:,.0f}"])
        out.append("FB15k-237, R-GCN (2 layers, 16 bases) + DistMult, 1 negative, batch 1000 (timed batches, "
                   "extrapolated epochs)\n" + format_table(
                       ["run", "s/batch", "timed", "batches/epoch", "s/epoch (extrap.)", "PyKEEN/ours epoch",
                        "peak RSS MB"], rows))
        if pk_triple:
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
    # worker mode
    ap.add_argument("--worker", choices=("ours", "pykeen"))
    ap.add_argument("--processed")
    ap.add_argument("--run-dir")
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sample-edges", type=int, default=30000)
    args = ap.parse_args()
    if args.worker == "ours":
        return worker_ours(args)
    if args.worker == "pykeen":
        return worker_pykeen(args)

    _threads(args.threads)
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
                               "with train.sample_edges message edges per batch (0 = whole graph), edge_dropout 0.5",
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
            part_umls(args, record, budget, root)
        if "fb-quality" in args.parts:
            part_fb_quality(args, record, root)
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
