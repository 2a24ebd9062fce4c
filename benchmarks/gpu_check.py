"""Torch-only GPU check of the paper's scale: step cost and a budgeted FB15k-237 MetaSD run.

Needs torch, numpy and the project's pure-Python dependencies PyYAML and tqdm
(imported by ``metasd_dgl.config`` / ``train.loop``); no DGL, no pandas, no
safetensors, no click.  Where PyYAML or tqdm is missing (a bare GPU machine
without network) this script puts minimal stand-ins in their place (JSON for
the run's ``config.yaml``, a silent progress bar) and says so.  Run from the
repository root (``PYTHONPATH=.``):

    PYTHONPATH=. python benchmarks/gpu_check.py --data PATH/FB15k-237.tar.gz --budget 480

(a) Step timing: one step of plain, kd and MetaSD at the dataset's size (FB15k-237:
    14,541 entities, 474 relations with reciprocals), rank ``--dim`` (2000, the
    paper's), batches ``--batches`` (1000 and the reference's 5000), student masks
    on whole coordinates (``dimension``) and element-wise, real train queries;
    median of ``--steps`` timed steps after one warm-up, as ms and ratio to plain
    at the same batch.
(b) Training: the paper's FB15k-237 MetaSD config
    (``pipelines/configs/fb15k237_metasd.yaml``: ComplEx rank 2000, prune rate
    0.9, DURA, batch 1000) with relation prediction weight 4, through the library's
    ``train`` for whatever is left of ``--budget`` after (a) and ``--reserve``
    seconds kept for evaluation; the loop is stopped by SIGTERM at the deadline
    (it finishes the step, saves ``last.pt``).  Then the teacher and the true
    student (masked weights) are ranked on the test split (filtered, both sides)
    from the validation-selected checkpoint (``best.pt``, if a validation ran)
    and from ``last.pt``.

Writes ``--out`` (JSON) and prints both tables next to the paper's figures
(MetaSD student 0.391 MRR at 10 % of the weights, ComplEx-RP teacher 0.388).
``--tiny`` is the CPU rehearsal (rank 8, batches 64/128, a budget of seconds;
``tests/benchmarks/test_gpu_check.py``).
"""
from __future__ import annotations

import argparse
import gc
import importlib.machinery
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER = {"student_mrr": 0.391, "complex_rp_mrr": 0.388}
#: the paper's FB15k-237 MetaSD run: pipelines/configs/fb15k237_metasd.yaml plus relation prediction
PAPER_CONFIG = {
    "data": {"dataset": "fb15k-237"},
    "model": {"decoder": "complex", "dim": 2000},
    "train": {"method": "metasd", "epochs": 100, "batch_size": 1000, "lr": 0.1, "regularizer": "dura",
              "reg_weight": 0.05, "valid_every": 5, "patience": 5, "rp_weight": 4.0},
    "prune": {"rate": 0.9}, "metasd": {"quiz_batch_size": 1000},
}
METHODS = ("plain", "kd", "metasd")


def _say(text: str) -> None:
    print(text, flush=True)


def _module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch probes find_spec on some names
    return mod


def stand_in_missing_packages() -> list[str]:
    """Put minimal ``yaml`` / ``tqdm`` modules in ``sys.modules`` where the real ones are missing."""
    missing = []
    try:
        import yaml  # noqa: F401
    except ImportError:
        mod = _module("yaml")
        mod.YAMLError = ValueError
        mod.safe_dump = lambda data, **kw: json.dumps(data, indent=2) + "\n"  # JSON is YAML
        mod.safe_load = lambda text: json.loads(text) if str(text).strip() else None
        sys.modules["yaml"] = mod
        missing.append("yaml")
    try:
        import tqdm.auto  # noqa: F401
    except ImportError:
        class _Bar:
            def __init__(self, *args, **kwargs):
                pass

            def __getattr__(self, name):
                return lambda *args, **kwargs: None

            @staticmethod
            def write(line, file=None, **kwargs):
                print(line, file=file or sys.stdout, flush=True)

        pkg, auto = _module("tqdm"), _module("tqdm.auto")
        pkg.tqdm = auto.tqdm = _Bar
        pkg.auto = auto
        sys.modules.update({"tqdm": pkg, "tqdm.auto": auto})
        missing.append("tqdm")
    return missing


def paper_config(args, run_dir: Path):
    """The paper's Config for this run (``--tiny``: small rank and batches, validation every epoch)."""
    from metasd_dgl.config import Config, apply_overrides

    over = json.loads(json.dumps(PAPER_CONFIG))
    over["model"]["dim"] = args.dim
    over["train"].update({"device": str(args.device), "keep_checkpoints": 0, "num_threads": args.threads})
    if args.tiny:
        over["train"].update({"batch_size": 128, "valid_every": 1, "epochs": 1000, "patience": 0})
        over["metasd"]["quiz_batch_size"] = 64
    cfg = apply_overrides(Config(), over)
    cfg.run_dir = str(run_dir)
    return cfg


def load_data(source: str, work: Path):
    """Preprocess ``source`` (a .tar.gz or folder of train/valid/test TSVs) into ``work/data``."""
    from metasd_dgl.data.preprocess import load_processed, preprocess

    t0 = time.perf_counter()
    data = load_processed(preprocess(source, work / "data"))
    _say(f"data: {source}: {data.num_entities} entities, {data.num_relations} relations, train/valid/test "
         f"{len(data.train)}/{len(data.valid)}/{len(data.test)} ({time.perf_counter() - t0:.1f} s)")
    return data


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(data, device, method: str, batch: int, structure: str, dim: int, steps: int, seed: int) -> dict:
    """Median ms of one training step (after one warm-up) of ``method`` on real train queries."""
    import torch

    from metasd_dgl.config import Config, apply_overrides
    from metasd_dgl.data.triples import reciprocal_queries
    from metasd_dgl.model import build_model
    from metasd_dgl.optimizers import OPTIMIZERS
    from metasd_dgl.pruning import make_masks
    from metasd_dgl.student import make_student
    from metasd_dgl.train.loop import run_step
    from metasd_dgl.train.spec import StepSpec
    from metasd_dgl.train.steps import Steps

    gen = torch.Generator().manual_seed(seed)
    model = build_model("kge", "complex", data.num_entities, data.num_relations, dim, init_scale=1e-1,
                        generator=gen).to(device)
    cfg = apply_overrides(Config(), {
        "train": {"method": method, "batch_size": batch, "regularizer": "dura", "rp_weight": 4.0},
        "metasd": {"quiz_batch_size": 1000}, "prune": {"structure": structure}})
    weights = list(model.parameters())
    opt = OPTIMIZERS[cfg.train.optimizer](weights, lr=cfg.train.lr)
    meta = OPTIMIZERS[cfg.metasd.meta_optimizer](weights, lr=cfg.metasd.meta_lr)
    ctx = Steps(model, opt, StepSpec.from_config(cfg))
    student = None if method == "plain" else make_student(make_masks(model, 0.9, "global", structure, dim),
                                                          ctx.params, structure, regrow=method == "prune")
    queries = reciprocal_queries(data.train, data.num_relations)
    times = []
    for k in range(steps + 1):
        b = queries[torch.randint(len(queries), (batch,), generator=gen)].to(device)
        q = queries[torch.randint(len(queries), (1000,), generator=gen)].to(device) if method == "metasd" else None
        _sync(device)
        t0 = time.perf_counter()
        out = run_step(method, ctx, b, student, quiz=q, meta_optimizer=meta)
        _sync(device)
        if k:  # the first step warms up (allocator, kernels)
            times.append((time.perf_counter() - t0) * 1e3)
    loss = float(out["loss"])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del model, opt, meta, ctx, student
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return {"ms": statistics.median(times), "times_ms": times, "loss": loss, "peak_mb": peak}


def step_timing(data, args, deadline: float) -> list[dict]:
    """Part (a): rows of (method, batch, structure, ms, ratio to plain)."""
    rows = []
    for batch in args.batches:
        plain = None
        for method in METHODS:
            for structure in (("none",) if method == "plain" else args.structures):
                row = {"method": method, "batch": batch, "structure": structure}
                if time.perf_counter() > deadline:
                    rows.append({**row, "skipped": "timing share of the budget spent"})
                    continue
                try:
                    res = time_step(data, args.device, method, batch, "element" if structure == "none" else structure,
                                    args.dim, args.steps, seed=len(rows))
                except RuntimeError as exc:  # e.g. CUDA out of memory: report it, go on
                    rows.append({**row, "error": str(exc).splitlines()[0]})
                    continue
                plain = res["ms"] if method == "plain" else plain
                row.update(res, ratio_to_plain=res["ms"] / plain if plain else None)
                rows.append(row)
                _say(f"  step {method:<6} batch {batch:<5} {structure:<9} {res['ms']:9.1f} ms"
                     + (f"  x{row['ratio_to_plain']:.2f} plain" if row["ratio_to_plain"] else ""))
    return rows


class _Deadline:
    """SIGTERM to this process at ``when`` (then every second until ``stop``): the training loop
    finishes its step, saves ``last.pt`` and raises ``TrainingInterrupted``."""

    def __init__(self, when: float) -> None:
        self.when, self.stop = when, threading.Event()
        self.fired = False
        self._old = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # outside the loop: ignore
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.stop.wait(max(0.0, self.when - time.perf_counter())):
            return
        self.fired = True
        while not self.stop.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            self.stop.wait(1.0)

    def close(self) -> None:
        self.stop.set()
        self._thread.join()
        signal.signal(signal.SIGTERM, self._old)


def evaluate_checkpoint(cfg, data, path: Path, device) -> dict:
    """Test metrics (filtered, both sides) of the teacher and the true student of ``path``."""
    import torch

    from metasd_dgl.checkpoint import load_checkpoint
    from metasd_dgl.evaluation import metrics, rank_split
    from metasd_dgl.model import make_model
    from metasd_dgl.student import checkpoint_student

    ckpt = load_checkpoint(path, device)
    model = make_model(cfg.model, data.num_entities, data.num_relations, torch.Generator().manual_seed(0)).to(device)
    model.load_state_dict(ckpt["model"])
    masks = ckpt.get("masks")
    student = checkpoint_student(dict(model.named_parameters()), masks, ckpt.get("student_weights"))
    out = {"checkpoint": path.name, "epoch": ckpt["state"]["epoch"], "step": ckpt["state"]["step"]}
    for who, w in (("teacher", None), ("student", student)):
        if who == "student" and w is None:
            continue
        ranks = rank_split(model, data.test, data.num_relations, data.filter, weights=w,
                           max_memory_mb=cfg.eval.max_memory_mb)
        out[who] = metrics(ranks.both())
    if masks:
        kept = sum(int(v.sum()) for v in masks.values())
        out["student_density"] = kept / sum(v.numel() for v in masks.values())
    return out


def budgeted_training(data, args, train_seconds: float, work: Path) -> dict:
    """Part (b): the paper's MetaSD config for ``train_seconds``, then test metrics."""
    from metasd_dgl.train.loop import TrainingInterrupted, train

    run = work / "run"
    cfg = paper_config(args, run)
    result = {"config": PAPER_CONFIG, "dim": cfg.model.dim, "train_seconds_given": train_seconds}
    if train_seconds <= 0:
        return {**result, "skipped": "no training time left in the budget"}
    _say(f"training: rank {cfg.model.dim}, batch {cfg.train.batch_size}, {train_seconds:.0f} s on {args.device}")
    t0 = time.perf_counter()
    deadline = _Deadline(t0 + train_seconds)
    try:
        trainer = train(cfg, data, run, progress=not args.tiny)
        result["stop"] = trainer.stop_reason
    except TrainingInterrupted:
        result["stop"] = "wall-clock budget spent"
    finally:
        deadline.close()
    result["train_seconds"] = time.perf_counter() - t0
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").exists() else []
    result["epochs_done"] = max((r.get("epoch", 0) for r in history), default=0)
    result["valid"] = [r["valid"] for r in history if "valid" in r]
    result["evaluations"] = [evaluate_checkpoint(cfg, data, run / "checkpoints" / name, args.device)
                             for name in ("best.pt", "last.pt") if (run / "checkpoints" / name).exists()]
    return result


def _fmt(x, places: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{places}f}"


def print_tables(record: dict) -> None:
    _say(f"\n(a) step timing, {record['dataset']['entities']} entities, rank {record['dim']}, {record['device']}")
    _say(f"{'method':<8}{'batch':>7}  {'masks':<10}{'ms/step':>10}{'x plain':>9}")
    for r in record["timing"]:
        if "ms" not in r:
            _say(f"{r['method']:<8}{r['batch']:>7}  {r['structure']:<10}  {r.get('error') or r.get('skipped')}")
            continue
        _say(f"{r['method']:<8}{r['batch']:>7}  {r['structure']:<10}{r['ms']:>10.1f}{_fmt(r['ratio_to_plain'], 2):>9}")
    tr = record["training"]
    _say(f"\n(b) MetaSD, paper config, {tr.get('train_seconds', 0):.0f} s of training, "
         f"{tr.get('epochs_done', 0)} epochs ({tr.get('stop') or tr.get('skipped')}); test, filtered")
    _say(f"{'model':<26}{'MRR':>8}{'H@1':>8}{'H@3':>8}{'H@10':>8}")
    for ev in tr.get("evaluations", []):
        for who in ("teacher", "student"):
            if who in ev:
                m = ev[who]
                label = f"{who} ({ev['checkpoint']}, ep {ev['epoch']})"
                _say(f"{label:<26}{_fmt(m['mrr']):>8}{_fmt(m['hits@1']):>8}{_fmt(m['hits@3']):>8}"
                     f"{_fmt(m['hits@10']):>8}")
    _say(f"{'paper: MetaSD student':<26}{PAPER['student_mrr']:>8.3f}")
    _say(f"{'paper: ComplEx-RP':<26}{PAPER['complex_rp_mrr']:>8.3f}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="FB15k-237 .tar.gz or folder of train/valid/test TSVs")
    ap.add_argument("--budget", type=float, default=480.0, help="wall-clock seconds for the whole check")
    ap.add_argument("--reserve", type=float, default=None,
                    help="seconds kept after training for evaluation and writing (default 60; --tiny 2)")
    ap.add_argument("--timing-share", type=float, default=0.25,
                    help="share of the budget part (a) may use (after loading the data) before skipping the rest")
    ap.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    ap.add_argument("--dim", type=int, default=None, help="rank (default 2000; --tiny 8)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1000,5000; --tiny 64,128)")
    ap.add_argument("--structures", default="dimension,element")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal: small rank and batches")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    args = ap.parse_args(argv)
    args.dim = args.dim or (8 if args.tiny else 2000)
    args.reserve = args.reserve if args.reserve is not None else (2.0 if args.tiny else 60.0)
    args.batches = [int(b) for b in (args.batches or ("64,128" if args.tiny else "1000,5000")).split(",")]
    args.structures = [s for s in args.structures.split(",") if s]
    return args


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    stand_ins = stand_in_missing_packages()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    from metasd_dgl.device import resolve_device

    args.device = resolve_device(name)  # torch only: no graph, DGL not asked
    _say(f"gpu_check: torch {torch.__version__}, device {args.device}"
         + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.type == "cuda" else "")
         + f", budget {args.budget:.0f} s" + (f"; stand-ins for missing {', '.join(stand_ins)}" if stand_ins else ""))
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(args.work or tmp)
        data = load_data(args.data, work)
        _say(f"(a) step timing, rank {args.dim}, batches {args.batches}")
        timing = step_timing(data, args, time.perf_counter() + args.timing_share * args.budget)
        train_seconds = args.budget - (time.perf_counter() - start) - args.reserve
        training = budgeted_training(data, args, train_seconds, work)
    record = {
        "device": str(args.device),
        "device_name": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "python": platform.python_version(), "stand_ins": stand_ins,
        "dataset": {"source": str(args.data), "entities": data.num_entities, "relations": data.num_relations,
                    "train": len(data.train), "test": len(data.test)},
        "dim": args.dim, "budget_s": args.budget, "tiny": args.tiny,
        "timing": timing, "training": training, "paper": PAPER,
    }
    record["elapsed_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print_tables(record)
    _say(f"\nwrote {out} ({record['elapsed_s']:.1f} s of {args.budget:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
