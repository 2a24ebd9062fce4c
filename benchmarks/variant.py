"""Train one benchmark variant and test its best checkpoint (shared by bench_metasd.py and bench_rgcn.py).

``train_and_test(cfg, data_path)`` trains ``cfg`` into ``cfg.run_dir``, takes the
checkpoint chosen on validation (``best``), exports it, and ranks the test split
(filtered, both sides, realistic ties) for the dense teacher and, when the run
has masks, the true student.  Each row holds MRR, Hits@1/10, the rarest
relation-frequency bucket's MRR, all relation buckets, non-zeros and bytes on
disk (teacher: safetensors; student: the compact export).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from metasd_dgl.config import Config
from metasd_dgl.data.preprocess import load_processed
from metasd_dgl.data.stats import evaluation_buckets
from metasd_dgl.evaluation import summarize
from metasd_dgl.inference import rank_split
from metasd_dgl.train.loop import Trainer
from metasd_dgl.stages import load_run, stage_export


def train_and_test(cfg: Config, data_path: Path) -> dict:
    """-> ``{epochs, best_epoch, seconds_per_epoch, train_wall_s, valid_mrr, export, teacher[, student]}``."""
    run_dir = Path(cfg.run_dir)
    t0 = time.perf_counter()
    Trainer(cfg, load_processed(data_path), run_dir, progress=False).run()
    wall = time.perf_counter() - t0
    hist = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in hist if "seconds" in r]
    valid = [{"epoch": r["epoch"], **{k: v["mrr"] for k, v in r["valid"].items()}} for r in hist if "valid" in r]
    _, data, model, masks, ckpt = load_run(run_dir, "best")
    buckets = evaluation_buckets(data.test, data.train, data.num_entities, data.num_relations, 3)
    out = {"epochs": len(secs), "best_epoch": ckpt["state"]["best_epoch"],
           "seconds_per_epoch": sum(secs) / len(secs), "train_wall_s": wall, "valid_mrr": valid}
    export = stage_export(run_dir, "best")
    out["export"] = {k: v for k, v in export.items() if not k.endswith("_file")}
    for row, m in (("teacher", None), ("student", masks)):
        if row == "student" and not masks:
            continue
        s = summarize(rank_split(model, data.test, data.num_relations, data.filter, graph=data.graph, masks=m),
                      buckets)
        rare = s["buckets"]["relation"]
        rarest = next(iter(rare))
        out[row] = {"mrr": s["both"]["mrr"], "hits@1": s["both"]["hits@1"], "hits@10": s["both"]["hits@10"],
                    "rarest_bucket": rarest, "rarest_mrr": rare[rarest]["mrr"], "buckets": rare,
                    "nonzero": export["student_nonzero"] if m else export["teacher_params"],
                    "bytes": export["student_bytes"] if m else export["teacher_bytes"]}
    return out
