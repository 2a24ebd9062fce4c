"""Time one R-GCN encoder forward+backward on an FB15k-237-sized graph; print one JSON line.

    python benchmarks/rgcn_encoder_speed.py --graph random --dim 500 --bases 100
    python benchmarks/rgcn_encoder_speed.py --graph fb15k237 --mode sampled --sample-size 30000
    python benchmarks/rgcn_encoder_speed.py --mode metasd-step --threads 1 --repeat 3

``--mode metasd-step``: the whole training step instead of one encoder pass:
``pipelines/configs/umls_rgcn.yaml`` (R-GCN basis + DistMult, MetaSD, 1-N,
edge dropout) on UMLS through ``Trainer``, ``--steps`` steps per round,
``--repeat`` rounds, ``--strategy`` forcing the evaluation order; prints seconds per step (the first round, which also
warms up, is reported but not in ``step_s_best`` / ``step_cpu_s_best``, the
process CPU time, steadier than wall time on a shared machine).  Runs unchanged against
an older checkout (``PYTHONPATH=<checkout>``), to compare versions.

``--graph random``: 14541 nodes, 272115 random triples over 237 relations
(2 x 272115 edges, 474 edge types; almost every (destination, edge type) pair
is distinct, the worst case for the 'pairs' order).  ``--graph fb15k237``:
the real training graph from ``$METASD_DATA_DIR/FB15k-237.tar.gz`` (or
the repository's datasets/kg).  Loss: 1-N DistMult cross-entropy of 1000 training
queries.  Peak RSS is the whole process's (ru_maxrss), so run one config per
process.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tarfile
import time
from pathlib import Path

import dgl
import torch

from metasd_dgl.model.rgcn import EdgePlan, RGCNEncoder
from metasd_dgl.graph.sampling import dst_norm, edge_sampled_subgraph, full_graph_dropout

ROOT = Path(__file__).resolve().parents[1]


def fb15k237_triples() -> tuple[torch.Tensor, int, int]:
    folder = Path(os.environ.get("METASD_DATA_DIR") or ROOT / "datasets" / "kg")
    with tarfile.open(folder / "FB15k-237.tar.gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("train.txt"))
        text = io.TextIOWrapper(tar.extractfile(member), encoding="utf-8").read()
    ents: dict[str, int] = {}
    rels: dict[str, int] = {}
    rows = []
    for line in text.splitlines():
        h, r, t = line.strip().split("\t")
        rows.append((ents.setdefault(h, len(ents)), rels.setdefault(r, len(rels)), ents.setdefault(t, len(ents))))
    return torch.tensor(rows), 14541, len(rels)  # 14541 entities over all splits


def random_triples(gen: torch.Generator) -> tuple[torch.Tensor, int, int]:
    n, num_nodes, num_rel = 272115, 14541, 237
    triples = torch.stack([torch.randint(0, num_nodes, (n,), generator=gen),
                           torch.randint(0, num_rel, (n,), generator=gen),
                           torch.randint(0, num_nodes, (n,), generator=gen)], dim=1)
    return triples, num_nodes, num_rel


def metasd_step(args) -> None:
    import tempfile

    from metasd_dgl.config import load_config
    from metasd_dgl.data.preprocess import load_processed, preprocess
    from metasd_dgl.train.loop import Trainer

    folder = Path(os.environ.get("METASD_DATA_DIR") or ROOT / "datasets" / "kg")
    with tempfile.TemporaryDirectory() as tmp:
        data = load_processed(preprocess(folder / "umls.tar.gz", Path(tmp) / "umls"))
        cfg = load_config(ROOT / "pipelines" / "configs" / "umls_rgcn.yaml")
        cfg.budget.batches_per_epoch, cfg.runtime.num_threads = args.steps, args.threads
        trainer = Trainer(cfg, data, Path(tmp) / "run", progress=False)
        trainer.run_dir.mkdir()
        for layer in trainer.model.encoder.layers:  # --strategy forces an order ('auto': the model's choice)
            layer.strategy = args.strategy
        per_step, cpu_per_step = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            trainer._run_epoch()  # masks, `steps` steps, epoch log and checkpoint (tiny on UMLS)
            per_step.append((time.perf_counter() - t0) / args.steps)
            cpu_per_step.append((time.process_time() - c0) / args.steps)
        losses = [r.get("loss") for r in trainer.state.history]
        layer = trainer.model.encoder.layers[0]
        from metasd_dgl.model.rgcn import EdgePlan

        order = layer.choose(EdgePlan.build(trainer.graph, 2 * data.num_relations))
    print(json.dumps({
        "mode": "metasd-step", "config": "pipelines/configs/umls_rgcn.yaml", "steps": args.steps,
        "order": order, "step_s": [round(x, 4) for x in per_step],
        "step_s_best": round(min(per_step[1:] or per_step), 4),
        "step_cpu_s": [round(x, 4) for x in cpu_per_step],
        "step_cpu_s_best": round(min(cpu_per_step[1:] or cpu_per_step), 4),
        "loss": losses, "threads": torch.get_num_threads(), "load_avg_1m": round(os.getloadavg()[0], 1),
        "torch": torch.__version__, "dgl": dgl.__version__,
    }), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--graph", choices=("random", "fb15k237"), default="random")
    p.add_argument("--mode", choices=("full", "sampled", "metasd-step"), default="full")
    p.add_argument("--steps", type=int, default=5, help="metasd-step: training steps per round")
    p.add_argument("--dim", type=int, default=500)
    p.add_argument("--bases", type=int, default=100)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--regularizer", choices=("basis", "bdd"), default="basis")
    p.add_argument("--strategy", choices=("auto", "bases", "pairs"), default="auto")
    p.add_argument("--sample-size", type=int, default=30000)
    p.add_argument("--edge-dropout", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "metasd-step":
        return metasd_step(args)
    gen = torch.Generator().manual_seed(0)
    triples, num_nodes, num_rel = fb15k237_triples() if args.graph == "fb15k237" else random_triples(gen)
    h, r, t = triples.unbind(1)
    g = dgl.graph((torch.cat([h, t]), torch.cat([t, h])), num_nodes=num_nodes)
    g.edata["etype"] = torch.cat([r, r + num_rel])
    g.edata["norm"] = dst_norm(g)
    enc = RGCNEncoder(num_nodes, num_rel, args.dim, args.dim, num_layers=args.layers, num_bases=args.bases,
                      regularizer=args.regularizer, dropout=0.2, generator=gen, strategy=args.strategy)
    times, cpu_times, sample_times, info = [], [], [], {}
    for _ in range(args.repeat):
        batch = torch.randperm(triples.shape[0], generator=gen)[:1000]
        t0 = time.perf_counter()
        if args.mode == "full":
            graph = full_graph_dropout(g, args.edge_dropout, gen, exclude_edge_ids=batch)
            heads, tails = triples[batch, 0], triples[batch, 2]
        else:
            graph, local = edge_sampled_subgraph(g, triples, batch, gen, args.edge_dropout,
                                                 sample_size=args.sample_size)
            heads, tails = local[:, 0], local[:, 1]
        t1, c1 = time.perf_counter(), time.process_time()
        ent, rel = enc(graph)
        scores = (ent[heads] * rel[triples[batch, 1]]) @ ent.t()  # 1-N DistMult over the graph's nodes
        loss = torch.nn.functional.cross_entropy(scores, tails)
        loss.backward()
        times.append(time.perf_counter() - t1)
        cpu_times.append(time.process_time() - c1)
        sample_times.append(t1 - t0)
        info = {"nodes": graph.num_nodes(), "edges": graph.num_edges()}
    layer = enc.layers[0]
    plan = EdgePlan.build(graph, 2 * num_rel)
    print(json.dumps({
        **vars(args), **info, "pairs_U": plan.pairs().count, "order": layer.choose(plan),
        "params_M": round(sum(p.numel() for p in enc.parameters()) / 1e6, 2),
        "fwd_bwd_s": [round(x, 2) for x in times], "fwd_bwd_cpu_s": [round(x, 2) for x in cpu_times],
        "load_avg_1m": round(os.getloadavg()[0], 1), "sample_s": [round(x, 3) for x in sample_times],
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "dgl": dgl.__version__,
    }), flush=True)


if __name__ == "__main__":
    sys.exit(main())
