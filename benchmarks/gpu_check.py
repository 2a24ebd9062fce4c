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
    median of ``--steps`` timed steps after one warm-up, as ms, ratio to plain at
    the same batch and peak GPU memory (``torch.cuda.max_memory_allocated``; none on
    CPU).  Next to each, its bound measured in the same process (``bound``): the
    score products that method's step needs (``score_products``: every forward,
    backward, create-graph and double-backward product, counted one by one), each
    timed as a bare matmul of that shape and layout at ``--precision``, plus the
    optimisers' bytes (parameters, gradients, state) at the copy bandwidth measured
    here; the step's ratio to it is the ``x bound`` column (target: at most
    ``TARGET_RATIO`` = 1.5, plain at the largest batch and MetaSD with either mask).
(b) Training: the paper's FB15k-237 MetaSD config
    (``pipelines/configs/fb15k237_metasd.yaml``: ComplEx rank 2000, prune rate
    0.9, DURA, batch 1000) with relation prediction weight 4, through the library's
    ``train`` for whatever is left of ``--budget`` after (a) and ``--reserve``
    seconds kept for evaluation; the loop is stopped by SIGTERM at the deadline
    (it finishes the step, saves ``last.pt``).  Then the teacher and the true
    student (masked weights) are ranked on the test split (filtered, both sides),
    each from its own best validation epoch (the library's ``stages.load_run``,
    if a validation ran) and from ``last.pt``.

Writes ``--out`` (JSON) and prints both tables next to the paper's figures
(MetaSD student 0.391 MRR at 10 % of the weights, ComplEx-RP teacher 0.388).
``--precision fp32|tf32|bf16`` (default fp32) is passed to both parts as
``train.precision``; the bound's matmuls run at the same precision (bf16: inputs
in bfloat16; tf32: ``torch.backends.cuda.matmul.allow_tf32`` on while they run).
``--tiny`` is the CPU rehearsal (rank 8, batches 64/128, a budget of seconds,
the bound on CPU too; ``tests/benchmarks/test_gpu_check.py``).
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
from typing import List, NamedTuple, Optional

REPO = Path(__file__).resolve().parents[1]
PAPER = {"student_mrr": 0.391, "complex_rp_mrr": 0.388}
#: the paper's FB15k-237 MetaSD run: pipelines/configs/fb15k237_metasd.yaml plus relation prediction
PAPER_CONFIG = {
    "data": {"dataset": "fb15k-237"},
    "model": {"decoder": "complex", "dim": 2000},
    "train": {"method": "metasd", "epochs": 100, "batch_size": 1000, "lr": 0.1, "regularizer": "dura",
              "reg_weight": 0.05, "rp_weight": 4.0},
    "valid": {"every": 5, "patience": 5},
    "prune": {"rate": 0.9},
    "metasd": {"quiz_batch_size": 1000, "student": "shared", "one_way_kd": False, "kd_t2_scale": False},
}
METHODS = ("plain", "kd", "metasd")
PRECISIONS = ("fp32", "tf32", "bf16")
#: the issue's target: a step at most this many times its in-run bound
TARGET_RATIO = 1.5
#: metasd.quiz_batch_size of part (a) (the paper config's too)
QUIZ = 1000
#: table passes of one optimiser step over fp32 weights, the least any implementation moves:
#: read the parameter and the gradient, read and write every state tensor, write the parameter
OPTIMIZER_PASSES = {
    "sgd": 3,  # p, g read; p written (no momentum: torch's default)
    "adagrad": 5,  # p, g, sum of squares read; sum, p written
    "adam": 7,  # p, g, exp_avg, exp_avg_sq read; exp_avg, exp_avg_sq, p written
}


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


def paper_config(args, run_dir: Path, processed: Path):
    """The paper's Config for this run (``--tiny``: small rank and batches, validation every epoch)."""
    from harness import Config, apply_overrides

    over = json.loads(json.dumps(PAPER_CONFIG))
    over["model"]["dim"] = args.dim
    over["data"]["processed_dir"] = str(processed)
    over["train"]["precision"] = args.precision
    over.update(runtime={"device": str(args.device), "num_threads": args.threads}, checkpoint={"keep": 0})
    if args.tiny:
        over["train"].update({"batch_size": 128, "epochs": 1000})
        over["valid"] = {"every": 1, "patience": 0}
        over["metasd"]["quiz_batch_size"] = 64
    cfg = apply_overrides(Config(), over)
    cfg.run_dir = str(run_dir)
    return cfg


def load_data(source: str, work: Path):
    """Preprocess ``source`` (a .tar.gz or folder of train/valid/test TSVs) into ``work/data``."""
    from harness import load_processed, preprocess

    t0 = time.perf_counter()
    data = load_processed(preprocess(source, work / "data"))
    _say(f"data: {source}: {data.num_entities} entities, {data.num_relations} relations, train/valid/test "
         f"{len(data.train)}/{len(data.valid)}/{len(data.test)} ({time.perf_counter() - t0:.1f} s)")
    return data


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# The in-run bound: the score products a step needs, timed as bare matmuls, plus optimiser bytes
# ----------------------------------------------------------------------------------------------

class Product(NamedTuple):
    """One score product ``(m, k) @ (k, n)`` in the operand layout the step's autograd uses.

    layout ``"nt"``: ``A (m, k) @ B.t()``, ``B (n, k)`` -- the scores ``query @ table.t()``
    and the double backward's products; ``"nn"``: ``A (m, k) @ B (k, n)`` -- the gradient
    to the query rows, ``G @ table``; ``"tn"``: ``A.t() @ B``, ``A (k, m)``, ``B (k, n)`` --
    the gradient to the table, ``G.t() @ query`` (what torch's mm backward runs for a
    transposed right operand).
    """

    label: str
    m: int
    k: int
    n: int
    layout: str

    @property
    def flop(self) -> int:
        return 2 * self.m * self.k * self.n


def student_width(structure: str, dim: int, prune_rate: float = 0.9) -> int:
    """Columns of the student's tables: the kept coordinates' real and imaginary columns with
    whole-coordinate masks (``ColumnStudent``: ``2 * round((1 - rate) * dim)``, w/10 at rate
    0.9), the full width ``2 * dim`` with element masks (``W * M``)."""
    from harness import keep_count

    return 2 * max(1, keep_count(dim, prune_rate)) if structure == "dimension" else 2 * dim


def score_products(method: str, structure: str, batch: int, dim: int, num_entities: int, num_relations: int,
                   *, quiz: int = QUIZ, rp: bool = True, prune_rate: float = 0.9,
                   extra_teacher_step: bool = False) -> List[Product]:
    """Every score product one step of ``method`` needs (ComplEx, 1-N, lookup tables).

    A score family is a ``(rows, width) @ (width, candidates)`` product: tails (every entity,
    ``N``) and, with relation prediction (``rp``), relations (every reciprocal relation, ``2R``).
    Each model forward is one product per family, its backward two more of the same size
    (to the query rows and to the table).  Teacher width ``w = 2 * dim``; the student's is
    ``student_width`` (w/10 with dimension masks, w with element masks).  Products the library
    computes that feed no loss (MetaSD: the teacher's relation scores in the virtual step, the
    quiz's relation scores) are not needed, so not counted; neither is the elementwise work
    (softmaxes, closed-form gradients, row dots), the gathers nor the scatters.
    """
    b, q, N, R2 = batch, quiz, num_entities, 2 * num_relations
    w = 2 * dim  # ComplEx: [real | imaginary] columns; the relation table has the same width
    k = student_width(structure, dim, prune_rate)
    families = [("tail", N)] + ([("relation", R2)] if rp else [])
    out: List[Product] = []

    def train_model(tag: str, width: int) -> None:
        """One model's forward and backward on the batch: 3 products per family."""
        for fam, n in families:
            out.append(Product(f"{tag} scores ({fam})", b, width, n, "nt"))  # query (b, width) @ table.t()
            out.append(Product(f"{tag} d rows ({fam})", b, n, width, "nn"))  # G (b, n) @ table -> query rows
            out.append(Product(f"{tag} d table ({fam})", n, b, width, "tn"))  # G.t() @ query -> table (n, width)

    if method in ("kd", "metasd") and extra_teacher_step:
        train_model("extra: teacher", w)  # metasd.extra_teacher_step: a plain teacher step first
    if method == "plain":
        train_model("teacher", w)  # plain: CE(T) + reg + rp: 3 per family
    elif method == "prune":
        train_model("student", k)
    elif method == "kd":
        train_model("real: student", k)  # real step: student CE + KD(T -> S) ...
        train_model("real: teacher", w)  # ... teacher CE + KD(S -> T): 3 + 3 per family
    elif method == "metasd":
        # (1) virtual step: S' = S - lr * grad_S[CE + reg + KD(T -> S) + rp], create_graph
        for fam, n in families:
            out.append(Product(f"virtual: student scores ({fam})", b, k, n, "nt"))  # fs on the batch
            if fam == "tail":
                out.append(Product("virtual: teacher scores (tail)", b, w, n, "nt"))  # ft: z, W's way into S'
            # (the teacher's relation scores: computed by Method.forward, used by no virtual loss)
            out.append(Product(f"virtual: student d rows ({fam})", b, n, k, "nn"))  # create_graph backward, rows
            out.append(Product(f"virtual: student d table ({fam})", n, b, k, "tn"))  # create_graph backward, table
        # (2) meta step: CE(S' on the quiz) back to W
        out.append(Product("quiz: virtual student scores (tail)", q, k, N, "nt"))  # S'(quiz); relation scores unused
        out.append(Product("quiz: d rows (tail)", q, N, k, "nn"))  # dCE/d S' query rows
        out.append(Product("quiz: d table (tail)", N, q, k, "tn"))  # dCE/d S' table
        # double backward: the cotangents of the virtual gradients (-lr * dCE/dS') back to G = dL/dfs,
        # which depends on W through z; only the tail family's G does (rp's part of grad_S has no W in it)
        out.append(Product("double backward: via d table (tail)", b, k, N, "nt"))  # query_s @ V_table.t()
        out.append(Product("double backward: via d rows (tail)", b, k, N, "nt"))  # V_rows @ table_s.t()
        # dG/dz . v (elementwise, closed form), then back through z = query_t @ table_t.t() to W
        out.append(Product("meta: teacher d rows (tail)", b, N, w, "nn"))
        out.append(Product("meta: teacher d table (tail)", N, b, w, "tn"))
        # (3) real step, as kd's
        train_model("real: student", k)
        train_model("real: teacher", w)
    else:
        raise ValueError(f"unknown method {method!r}")
    return out


def matmul_precision(precision: str):
    """The library's matmul mode for ``precision``: tf32, CUDA's TF32 flag on (``precision.training``; CPU
    matmuls ignore it); fp32 / bf16, off (``precision.exact``); restored after."""
    from harness import precision_modes

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision_modes.training(precision) if precision == "tf32" else precision_modes.exact()


def _median_ms(fn, device, repeats: int, min_seconds: float = 1e-3) -> float:
    """Median ms of ``fn()``, synchronised: two warm-up calls, then ``repeats`` timings of a run
    of back-to-back calls long enough (``min_seconds``) that the clock and launch overhead vanish."""
    fn(), fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(100, math.ceil(min_seconds / one)))
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(times)


def time_product(p: Product, precision: str, device, repeats: int = 5) -> float:
    """Median ms of one matmul of ``p``'s shape and layout at ``precision`` on ``device``."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator(device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    if p.layout == "nt":
        a, b = rand(p.m, p.k), rand(p.n, p.k)
        fn = lambda: a @ b.t()  # noqa: E731
    elif p.layout == "nn":
        a, b = rand(p.m, p.k), rand(p.k, p.n)
        fn = lambda: a @ b  # noqa: E731
    elif p.layout == "tn":
        a, b = rand(p.k, p.m), rand(p.k, p.n)
        fn = lambda: a.t() @ b  # noqa: E731
    else:
        raise ValueError(f"unknown layout {p.layout!r}")
    with matmul_precision(precision):
        return _median_ms(fn, device, repeats)


def copy_bandwidth(device, repeats: int = 5) -> float:
    """Bytes per second (read + written) of a large tensor copy on ``device``: 512 MiB on CUDA, 32 MiB on CPU."""
    import torch

    n = (512 if device.type == "cuda" else 32) * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device, repeats)
    return 2 * n * 4 / (ms * 1e-3)


def optimizer_bytes(method: str, dim: int, num_entities: int, num_relations: int, optimizer: str = "adagrad",
                    meta_optimizer: str = "adam", extra_teacher_step: bool = False) -> int:
    """Bytes the step's optimiser steps move over the teacher's fp32 tables (entity ``N x w``,
    relation ``2R x w``): ``OPTIMIZER_PASSES`` of each optimiser step (the teacher's, once
    more with ``extra_teacher_step``, MetaSD's meta optimiser too)."""
    table = (num_entities + 2 * num_relations) * 2 * dim * 4  # fp32 weights, also under bf16
    passes = OPTIMIZER_PASSES[optimizer]
    if method in ("kd", "metasd") and extra_teacher_step:
        passes += OPTIMIZER_PASSES[optimizer]
    if method == "metasd":
        passes += OPTIMIZER_PASSES[meta_optimizer]
    return passes * table


def bound(method: str, structure: str, batch: int, dim: int, num_entities: int, num_relations: int, *,
          precision: str = "fp32", device="cpu", quiz: int = QUIZ, rp: bool = True, prune_rate: float = 0.9,
          optimizer: str = "adagrad", meta_optimizer: str = "adam", extra_teacher_step: bool = False,
          repeats: int = 5, cache: Optional[dict] = None) -> dict:
    """The step's in-run bound, ms: every product of ``score_products`` timed alone (median of
    ``repeats``) at ``precision`` on ``device``, plus ``optimizer_bytes`` at ``copy_bandwidth``.

    ``cache`` (a dict kept across calls) holds the times of shapes already measured and the
    bandwidth, so each is measured once per run.  Returns ``ms``, its parts, the products with
    their times and per-label counts.
    """
    import torch

    device = torch.device(device)
    cache = {} if cache is None else cache
    products = score_products(method, structure, batch, dim, num_entities, num_relations, quiz=quiz, rp=rp,
                              prune_rate=prune_rate, extra_teacher_step=extra_teacher_step)
    rows, total = [], 0.0
    for p in products:
        key = ("product", p.m, p.k, p.n, p.layout, precision, str(device))
        if key not in cache:
            cache[key] = time_product(p, precision, device, repeats)
        rows.append({"label": p.label, "m": p.m, "k": p.k, "n": p.n, "layout": p.layout, "ms": cache[key]})
        total += cache[key]
    bw_key = ("copy", str(device))
    if bw_key not in cache:
        cache[bw_key] = copy_bandwidth(device, repeats)
    nbytes = optimizer_bytes(method, dim, num_entities, num_relations, optimizer, meta_optimizer, extra_teacher_step)
    opt_ms = nbytes / cache[bw_key] * 1e3
    return {"ms": total + opt_ms, "products_ms": total, "optimizer_ms": opt_ms, "optimizer_bytes": nbytes,
            "copy_gb_s": cache[bw_key] / 1e9, "precision": precision, "n_products": len(products),
            "gflop": sum(p.flop for p in products) / 1e9, "products": rows}


#: operators per step kind kept by ``--profile``
PROFILE_TOP = 15


def profile_table(prof, device, top: int = PROFILE_TOP, steps: int = 1) -> dict:
    """The ``top`` operators of a ``torch.profiler`` run by self time, per step (ms / ``steps``).

    Sorted by self CUDA time on a GPU, by self CPU time otherwise; each row: ``name``, ``calls`` (per
    step), ``self_cpu_ms``, ``self_cuda_ms`` (``None`` on CPU) and ``share`` (of the sort key's total)."""
    cuda = device.type == "cuda"
    rows = []
    for e in prof.key_averages():
        dev_us = getattr(e, "self_device_time_total", None)
        if dev_us is None:
            dev_us = getattr(e, "self_cuda_time_total", 0.0)
        # (the profiler's clock can give a nested operator a slightly negative self time: read as 0)
        rows.append({"name": e.key, "calls": e.count / steps,
                     "self_cpu_ms": max(0.0, e.self_cpu_time_total) / 1e3 / steps,
                     "self_cuda_ms": max(0.0, dev_us) / 1e3 / steps if cuda else None})
    key = "self_cuda_ms" if cuda else "self_cpu_ms"
    rows = [r for r in rows if not r["name"].startswith("ProfilerStep")]
    total = sum(r[key] for r in rows) or 1.0
    rows.sort(key=lambda r: -r[key])
    for r in rows:
        r["share"] = r[key] / total
    return {"sorted_by": key, "total_ms": total, "steps": steps, "operators": rows[:top]}


def time_step(data, device, method: str, batch: int, structure: str, dim: int, steps: int, seed: int,
              precision: str = "fp32", profile: bool = False, top: int = PROFILE_TOP) -> dict:
    """Median ms of one training step (after one warm-up) of ``method`` on real train queries, and
    the peak GPU memory of those steps (MB; ``None`` on CPU).  ``profile``: ``steps`` more steps of the
    same kind under ``torch.profiler`` after the timed ones (so the profiler's overhead stays out of
    the times); their top operators by self time (``profile_table``) under ``"profile"``."""
    import torch

    from harness import Config, apply_overrides, build_model, make_masks, make_method, reciprocal_queries

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator().manual_seed(seed)
    model = build_model("kge", "complex", data.num_entities, data.num_relations, dim, init_scale=1e-1,
                        generator=gen).to(device)
    cfg = apply_overrides(Config(), {
        "train": {"method": method, "batch_size": batch, "regularizer": "dura", "rp_weight": 4.0,
                  "precision": precision},
        "metasd": {**PAPER_CONFIG["metasd"], "quiz_batch_size": QUIZ}, "prune": {"structure": structure}})
    ctx = make_method(cfg, model)
    if method != "plain":
        ctx.remask(make_masks(model, 0.9, "global", structure, dim), structure)
    queries = reciprocal_queries(data.train, data.num_relations)
    times = []
    for k in range(steps + 1):
        b = queries[torch.randint(len(queries), (batch,), generator=gen)].to(device)
        q = queries[torch.randint(len(queries), (QUIZ,), generator=gen)].to(device) if method == "metasd" else None
        _sync(device)
        t0 = time.perf_counter()
        out = ctx.step(b, quiz=q)
        _sync(device)
        if k:  # the first step warms up (allocator, kernels)
            times.append((time.perf_counter() - t0) * 1e3)
    prof = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=acts) as run:
            for _ in range(steps):
                b = queries[torch.randint(len(queries), (batch,), generator=gen)].to(device)
                q = queries[torch.randint(len(queries), (QUIZ,), generator=gen)].to(device) \
                    if method == "metasd" else None
                ctx.step(b, quiz=q)
            _sync(device)
        prof = profile_table(run, device, top=top, steps=steps)
    loss = float(out["loss"])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del model, ctx
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return {"ms": statistics.median(times), "times_ms": times, "loss": loss, "peak_mb": peak,
            **({"profile": prof} if prof else {}),
            "bound_args": {"optimizer": cfg.train.optimizer, "meta_optimizer": cfg.metasd.meta_optimizer,
                           "extra_teacher_step": cfg.metasd.extra_teacher_step, "prune_rate": 0.9,
                           "quiz": QUIZ, "rp": bool(cfg.train.rp_weight)}}


def step_timing(data, args, deadline: float) -> list[dict]:
    """Part (a): per (method, batch, masks): ms, the in-run bound, ratios to it and to plain, peak MB."""
    rows, cache = [], {}
    for batch in args.batches:
        plain = plain_bound = None
        for method in METHODS:
            for structure in (("none",) if method == "plain" else args.structures):
                row = {"method": method, "batch": batch, "structure": structure}
                if time.perf_counter() > deadline:
                    rows.append({**row, "skipped": "timing share of the budget spent"})
                    continue
                masks = "element" if structure == "none" else structure
                try:
                    res = time_step(data, args.device, method, batch, masks, args.dim, args.steps, seed=len(rows),
                                    precision=args.precision, profile=args.profile, top=args.profile_top)
                except RuntimeError as exc:  # e.g. CUDA out of memory: report it, go on
                    rows.append({**row, "error": str(exc).splitlines()[0]})
                    continue
                how = res.pop("bound_args")
                try:
                    bnd = bound(method, masks, batch, args.dim, data.num_entities, data.num_relations,
                                precision=args.precision, device=args.device, cache=cache, **how)
                except RuntimeError as exc:
                    bnd = {"ms": None, "error": str(exc).splitlines()[0]}
                plain = res["ms"] if method == "plain" else plain
                plain_bound = bnd["ms"] if method == "plain" else plain_bound
                ratio = res["ms"] / bnd["ms"] if bnd["ms"] else None
                row.update(res, bound_ms=bnd["ms"], ratio_to_bound=ratio,
                           ratio_to_plain=res["ms"] / plain if plain else None,
                           bound_ratio_to_plain=bnd["ms"] / plain_bound if bnd["ms"] and plain_bound else None,
                           meets_target=None if ratio is None else ratio <= TARGET_RATIO, bound=bnd)
                rows.append(row)
                _say(f"  step {method:<6} batch {batch:<5} {structure:<9} {res['ms']:9.1f} ms"
                     + (f"  bound {bnd['ms']:8.1f} ms  x{ratio:.2f} bound" if ratio else "  (no bound)")
                     + (f"  x{row['ratio_to_plain']:.2f} plain" if row["ratio_to_plain"] else ""))
    return rows


def targets(timing: list[dict]) -> list[dict]:
    """The issue's checks: plain at the largest batch, and MetaSD (each masks, each batch), at most
    ``TARGET_RATIO`` times their in-run bound; MetaSD's ratio to plain reported beside."""
    timed = [r for r in timing if r.get("ratio_to_bound") is not None]
    top = max((r["batch"] for r in timed if r["method"] == "plain"), default=None)
    return [{"method": r["method"], "batch": r["batch"], "structure": r["structure"],
             "ratio_to_bound": r["ratio_to_bound"], "ratio_to_plain": r["ratio_to_plain"],
             "met": r["meets_target"]}
            for r in timed if (r["method"] == "plain" and r["batch"] == top) or r["method"] == "metasd"]


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


def evaluate_checkpoint(run: Path, checkpoint: str, device) -> dict:
    """Test metrics (filtered, both sides) of the teacher and the true student of ``checkpoint`` ("best":
    each model from its own best validation epoch; "last"), read by the library's loader."""
    from harness import load_on, rank

    cfg, data, model, student, ckpt = load_on(run, checkpoint, device)
    out = {"checkpoint": Path(ckpt["path"]).name, "epoch": ckpt["state"]["epoch"], "step": ckpt["state"]["step"],
           "teacher_checkpoint": Path(ckpt["teacher_path"]).name, "teacher_epoch": ckpt["teacher_epoch"],
           "teacher": rank(cfg, data, model, "test")}
    if student:
        out["student"] = rank(cfg, data, model, "test", student)
        masks = ckpt["masks"]
        out["student_density"] = sum(int(v.sum()) for v in masks.values()) / sum(v.numel() for v in masks.values())
    return out


def budgeted_training(data, args, train_seconds: float, work: Path) -> dict:
    """Part (b): the paper's MetaSD config for ``train_seconds``, then test metrics."""
    from harness import TrainingInterrupted, history, train

    run = work / "run"
    cfg = paper_config(args, run, data.path)
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
    records = history(run)
    result["epochs_done"] = max((r.get("epoch", 0) for r in records), default=0)
    result["valid"] = [r["valid"] for r in records if "valid" in r]
    result["evaluations"] = [evaluate_checkpoint(run, name, args.device)
                             for name in ("best", "last") if (run / "checkpoints" / f"{name}.pt").exists()]
    return result


def _fmt(x, places: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{places}f}"


def print_tables(record: dict) -> None:
    _say(f"\n(a) step timing, {record['dataset']['entities']} entities, rank {record['dim']}, {record['device']}, "
         f"precision {record['precision']}; bound = the step's score products alone + optimiser bytes at "
         f"{_fmt(record.get('copy_gb_s'), 0)} GB/s, same run")
    _say(f"{'method':<8}{'batch':>7}  {'masks':<10}{'ms/step':>10}{'bound ms':>10}{'x bound':>9}{'x plain':>9}"
         f"{'peak MB':>10}")
    for r in record["timing"]:
        if "ms" not in r:
            _say(f"{r['method']:<8}{r['batch']:>7}  {r['structure']:<10}  {r.get('error') or r.get('skipped')}")
            continue
        _say(f"{r['method']:<8}{r['batch']:>7}  {r['structure']:<10}{r['ms']:>10.1f}{_fmt(r['bound_ms'], 2):>10}"
             f"{_fmt(r['ratio_to_bound'], 2):>9}{_fmt(r['ratio_to_plain'], 2):>9}{_fmt(r['peak_mb'], 0):>10}")
    for t in record.get("targets", []):
        _say(f"target {t['method']} batch {t['batch']} {t['structure']}: x{t['ratio_to_bound']:.2f} bound "
             f"(<= {TARGET_RATIO}: {'met' if t['met'] else 'NOT met'}), x{_fmt(t['ratio_to_plain'], 2)} plain")
    for r in record["timing"]:
        prof = r.get("profile")
        if not prof:
            continue
        _say(f"\nprofile {r['method']} batch {r['batch']} {r['structure']}: top operators by "
             f"{prof['sorted_by'].replace('_', ' ')}, per step (of {prof['total_ms']:.1f} ms)")
        _say(f"{'operator':<44}{'calls':>7}{'self CPU ms':>13}{'self CUDA ms':>14}{'share':>8}")
        for op in prof["operators"]:
            _say(f"{op['name'][:43]:<44}{op['calls']:>7.0f}{op['self_cpu_ms']:>13.2f}{_fmt(op['self_cuda_ms'], 2):>14}"
                 f"{op['share']:>8.1%}")
    tr = record["training"]
    _say(f"\n(b) MetaSD, paper config, {tr.get('train_seconds', 0):.0f} s of training, "
         f"{tr.get('epochs_done', 0)} epochs ({tr.get('stop') or tr.get('skipped')}); test, filtered")
    _say(f"{'model':<26}{'MRR':>8}{'H@1':>8}{'H@3':>8}{'H@10':>8}")
    for ev in tr.get("evaluations", []):
        for who in ("teacher", "student"):
            if who in ev:
                m = ev[who]
                name, epoch = (ev["checkpoint"], ev["epoch"]) if who == "student" else \
                    (ev["teacher_checkpoint"], ev["teacher_epoch"])
                label = f"{who} ({name}, ep {epoch})"
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
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="train.precision of both parts and of the bound's matmuls")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--profile", action="store_true",
                    help="torch.profiler over --steps more steps of each kind: top operators by self time "
                         "(table, and under each timing row's 'profile' and in --profile-out)")
    ap.add_argument("--profile-top", type=int, default=PROFILE_TOP, help="operators kept per step kind")
    ap.add_argument("--profile-out", default=None,
                    help="the profiles' JSON (default: --out with suffix _profile.json)")
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
    from harness import device_of, tune_malloc

    tune_malloc()  # the allocator setting every training run applies (train.loop.train): (b, N) blocks reused
    args.device = device_of(args.device)
    if args.precision == "tf32" and args.device.type != "cuda":  # the library refuses it too (at training)
        _say(f"gpu_check: --precision tf32 is a CUDA matmul mode; on {args.device.type} use fp32 or bf16")
        return 2
    _say(f"gpu_check: torch {torch.__version__}, device {args.device}"
         + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.type == "cuda" else "")
         + f", precision {args.precision}, budget {args.budget:.0f} s"
         + (f"; stand-ins for missing {', '.join(stand_ins)}" if stand_ins else ""))
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
        "precision": args.precision,
        "copy_gb_s": next((r["bound"]["copy_gb_s"] for r in timing if "copy_gb_s" in r.get("bound", {})), None),
        "target_ratio_to_bound": TARGET_RATIO, "targets": targets(timing),
        "timing": timing, "training": training, "paper": PAPER,
    }
    record["elapsed_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.profile:
        pout = Path(args.profile_out or out.with_name(out.stem + "_profile.json"))
        profiles = [{"method": r["method"], "batch": r["batch"], "structure": r["structure"], "ms": r["ms"],
                     **r["profile"]} for r in timing if r.get("profile")]
        pout.write_text(json.dumps({"device": record["device"], "device_name": record["device_name"],
                                    "dim": args.dim, "precision": args.precision, "profiles": profiles},
                                   indent=2) + "\n", encoding="utf-8")
        _say(f"wrote {pout}")
    print_tables(record)
    _say(f"\nwrote {out} ({record['elapsed_s']:.1f} s of {args.budget:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
