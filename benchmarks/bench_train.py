"""Training: this project vs PyKEEN, the same ComplEx model, on UMLS, Kinship and FB15k-237.

Per dataset, three trainings from the *same initial weights*, each in its own spawned process (peak RSS per
run): ``ours`` (``Trainer``, ``plain``, regime ``1-n``: ``(h, r, ?)`` and ``(t, r+R, ?)`` per training triple,
softmax cross-entropy over all entities), ``pykeen-1n`` (exactly those rows on PyKEEN's per-triple 1-N loop)
and ``pykeen-lcwa`` (stock ``LCWATrainingLoop``: unique ``(h, r)`` pairs, multi-hot targets); the PyKEEN side
is ``pykeen_peer.py``.  Same ComplEx ``dim``, epochs, batch, Adagrad lr, initial weights, regulariser (none by
default; ``--regularizer n3``: ours vs PyKEEN's ``PowerSumRegularizer(p=3)``) and torch threads.  Test
metrics: filtered with train+valid+test, both sides, realistic ranks, our ``rank_split`` and (PyKEEN runs)
PyKEEN's ``RankBasedEvaluator`` too.  Seconds per epoch: the epoch loop only (ours: ``metrics.jsonl``;
PyKEEN: a ``TrainingCallback``).  Every detail (what "the same" means, timing, malloc): benchmarks/README.md.

Budget (CPU; per dataset, identical for all three runs):

    umls       dim 200, batch 500,  100 epochs, lr 0.1
    kinship    dim 200, batch 500,  100 epochs, lr 0.1
    fb15k-237  dim 64,  batch 1000,   2 epochs, lr 0.1   (a speed check, far from converged)

    python benchmarks/bench_train.py                   # ~40-60 min on 2 shared CPU cores
    python benchmarks/bench_train.py --quick           # smoke test: UMLS, dim 16, 2 epochs, ~1 min
    python benchmarks/bench_train.py --datasets umls kinship --runs ours pykeen-1n

Writes benchmarks/results/train_vs_pykeen.json (``--out``) and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict

os.environ.setdefault("DGLBACKEND", "pytorch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import pykeen_peer  # noqa: E402
from common import (RESULTS, default_data_dir, format_table, in_child, machine_info, peak_rss_mb, timed,  # noqa: E402
                    write_json)

DATASETS = ("umls", "kinship", "fb15k-237")
RUNS = ("ours", "ours-rp", "pykeen-1n", "pykeen-lcwa")
LABELS = {"ours": "metasd-dgl", "ours-rp": "metasd-dgl+RP", "pykeen-1n": "PyKEEN 1-N", "pykeen-lcwa": "PyKEEN LCWA"}
PEERS = ("pykeen-1n", "pykeen-lcwa")  # compared with ours; ours-rp is ours with relation prediction

FULL: Dict[str, Dict[str, Any]] = {
    "umls": dict(dim=200, batch=500, epochs=100, lr=0.1),
    "kinship": dict(dim=200, batch=500, epochs=100, lr=0.1),
    "fb15k-237": dict(dim=64, batch=1000, epochs=2, lr=0.1),
}
QUICK: Dict[str, Dict[str, Any]] = {
    "umls": dict(dim=16, batch=1000, epochs=2, lr=0.1),
    "kinship": dict(dim=16, batch=1000, epochs=2, lr=0.1),
    # FB15k-237 in --quick: the first 20,000 training and 500 test triples (filters stay complete)
    "fb15k-237": dict(dim=16, batch=1000, epochs=1, lr=0.1, train_limit=20000, test_limit=500),
}


# --------------------------------------------------------------- worker side
def _threads(job: dict) -> None:
    if job["threads"]:
        torch.set_num_threads(job["threads"])


def _config(job: dict):
    from harness import load_config

    return load_config(overrides={
        "run_dir": job["run_dir"],
        "model.encoder": "kge", "model.decoder": "complex", "model.dim": job["dim"],
        "model.init_scale": job["init_scale"],
        "train.method": "plain", "train.regime": "1-n", "train.optimizer": "adagrad",
        "train.epochs": job["epochs"], "train.batch_size": job["batch"], "train.lr": job["lr"],
        "train.regularizer": job["regularizer"], "train.reg_weight": job["reg_weight"],
        "train.label_smoothing": 0.0, "train.seed": job["seed"], "runtime.device": "cpu",
        "valid.every": job["epochs"], "valid.patience": 0, "checkpoint.keep": 0,
        "budget.cpu_minutes": job.get("cpu_minutes") or 0.0, "train.rp_weight": job.get("rp_weight") or 0.0,
        # the Trainer validates once, after the last epoch; a small score chunk keeps that validation
        # from setting the run's peak RSS (default cap 512 MB), which should measure training
        "eval.max_memory_mb": 128,
    })


def _limited(job: dict, data: dict) -> tuple:
    """(train, test) of the job: ``train_limit`` / ``test_limit`` first rows (filters stay complete)."""
    return data["train"][: job.get("train_limit") or None], data["test"][: job.get("test_limit") or None]


def our_evaluation(model, test: torch.Tensor, processed: str | Path) -> dict:
    """Our filtered evaluation (train+valid+test filter of the processed folder), both sides."""
    from harness import load_processed, metrics, rank_split

    data = load_processed(processed)
    seconds, ranks = timed(lambda: rank_split(model, test, data.num_relations, data.filter))
    return {**metrics(ranks.both()), "seconds": seconds}


def run_ours(job: dict) -> dict:
    """metasd-dgl: Trainer(plain, 1-n) then our filtered evaluation."""
    from harness import Trainer, load_processed, tune_malloc

    _threads(job)
    tune_malloc()  # what train() applies
    data = load_processed(job["processed"])
    train, test = _limited(job, {"train": data.train, "test": data.test})
    data = dataclasses.replace(data, train=train)
    rss_loaded = peak_rss_mb()
    trainer = Trainer(_config(job), data, Path(job["run_dir"]), progress=False)
    init = torch.load(job["triples_file"])["init"]
    with torch.no_grad():
        init_diff = float(max((trainer.model.encoder.entity - init["entity"]).abs().max(),
                              (trainer.model.encoder.relation - init["relation"]).abs().max()))
    wall, _ = timed(trainer.run)
    rss_train = peak_rss_mb()
    epochs = [h for h in trainer.state.history if "seconds" in h]
    return {
        "cpu_seconds": trainer.state.cpu_seconds, "steps": trainer.state.step,
        "epoch_seconds": [h["seconds"] for h in epochs],
        "epoch_loss": [h.get("loss") for h in epochs],
        "train_wall_s": wall,
        "steps_per_epoch": math.ceil(len(trainer.examples) / job["batch"]),
        "rows_per_epoch": len(trainer.examples),
        "init_max_abs_diff": init_diff,
        "metrics": our_evaluation(trainer.model, test, job["processed"]),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": {"after_load": rss_loaded, "train": rss_train, "end": peak_rss_mb()},
    }


def run_pykeen(job: dict) -> dict:
    """PyKEEN ComplEx (``pykeen_peer.train_complex``): stock LCWA, or our 1-N rows; both evaluators."""
    import pykeen_peer

    _threads(job)
    if job.get("pykeen_tuned_malloc"):  # the process-wide glibc setting our training runs apply (train() applies it)
        from metasd_dgl.runtime.process import tune_malloc

        tune_malloc()
    data = torch.load(job["triples_file"])  # written by the parent from metasd_dgl.data.preprocess.load_processed
    train, test = _limited(job, data)
    rss_loaded = peak_rss_mb()
    model, out = pykeen_peer.train_complex(job, train, data["entities"], data["relations"], data["init"])
    rss_train = peak_rss_mb()
    pk_metrics = (pykeen_peer.evaluate(model, test, [data["train"], data["valid"]], job["eval_batch"])
                  if job["pykeen_evaluator"] else None)
    rss_pk_eval = peak_rss_mb()

    # Our evaluator on PyKEEN's trained tables, in our layout (and a check that both models score alike).
    from harness import build_model

    R = len(data["relations"])
    ours = build_model("kge", "complex", len(data["entities"]), R, job["dim"])
    with torch.no_grad():
        entity, relation = pykeen_peer.tables_from_complex(model, R)
        ours.encoder.entity.copy_(entity)
        ours.encoder.relation.copy_(relation)
        probe = test[:256]
        pk_scores = pykeen_peer.score_both(model, probe)
        our_scores = torch.cat([ours(probe[:, :2]), ours(torch.stack([probe[:, 2], probe[:, 1] + R], 1))])
        score_diff = float((pk_scores - our_scores).abs().max() / our_scores.abs().max().clamp_min(1e-30))
    our_metrics = our_evaluation(ours, test, job["processed"])
    checked = pk_metrics is not None
    if not checked:  # --no-pykeen-evaluator: ours only (they agree to 1e-7, see the epoch-budget runs)
        pk_metrics = {**our_metrics, "seconds": float("nan")}
    return {
        **out,
        "steps_per_epoch": math.ceil(job["rows_per_epoch"] / job["batch"]),
        "rows_per_epoch": job["rows_per_epoch"],
        "metrics": pk_metrics,
        "our_evaluator": our_metrics,
        "pykeen_evaluator": checked,
        "evaluator_mrr_abs_diff": abs(pk_metrics["mrr"] - our_metrics["mrr"]) if checked else None,
        "evaluator_hits10_abs_diff": abs(pk_metrics["hits@10"] - our_metrics["hits@10"]) if checked else None,
        "score_rel_diff_after_training": score_diff,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": {"after_load": rss_loaded, "train": rss_train, "after_pykeen_eval": rss_pk_eval,
                        "end": peak_rss_mb()},
    }


# --------------------------------------------------------------- parent side
def summarize(result: dict) -> None:
    """Derived numbers, in place: mean s/epoch, ms per 1k rows."""
    if not result.get("ok"):
        return
    secs = result["epoch_seconds"]
    if result.get("cpu_minutes"):  # a CPU budget: epochs done (fractional), CPU seconds per epoch
        result["epochs_done"] = result["steps"] / result["steps_per_epoch"]
        result["seconds_per_epoch"] = result["cpu_seconds"] / result["epochs_done"] if result["steps"] else math.nan
    else:
        result["epochs_done"] = len(secs)
        result["seconds_per_epoch"] = sum(secs) / len(secs)
    result["ms_per_1k_rows"] = 1e6 * result["seconds_per_epoch"] / result["rows_per_epoch"]
    if "gc_collect_seconds" in result:
        result["gc_seconds_per_epoch"] = result["gc_collect_seconds"] / (result["epochs_done"] or math.nan)


def compare(ours: dict, other: dict) -> dict:
    """ours / other time (per epoch and per row) and ours - other MRR / Hits@10; targets."""
    if not (ours.get("ok") and other.get("ok")):
        return {}
    out = {
        "time_ratio_per_epoch": ours["seconds_per_epoch"] / other["seconds_per_epoch"],
        "time_ratio_per_row": ours["ms_per_1k_rows"] / other["ms_per_1k_rows"],
        "mrr_diff": ours["metrics"]["mrr"] - other["metrics"]["mrr"],
        "hits10_diff": ours["metrics"]["hits@10"] - other["metrics"]["hits@10"],
        "peak_rss_ratio": ours["peak_rss_mb"]["train"] / other["peak_rss_mb"]["train"],
    }
    if "gc_seconds_per_epoch" in other:
        out["time_ratio_per_epoch_excl_pykeen_gc"] = ours["seconds_per_epoch"] / (
            other["seconds_per_epoch"] - other["gc_seconds_per_epoch"])
    out["targets_met"] = {"not_slower_per_epoch": out["time_ratio_per_epoch"] <= 1.0,
                          "mrr_not_worse": out["mrr_diff"] >= 0.0}
    return out


def budget_text(s: dict) -> str:
    span = f"{s['cpu_minutes']:g} CPU min" if s.get("cpu_minutes") else f"e{s['epochs']}"
    text = f"d{s['dim']} b{s['batch']} {span} lr{s['lr']:g}"
    if s.get("train_limit"):
        text += f" train[:{s['train_limit']}]"
    return text


def print_tables(record: dict) -> None:
    rows, agree = [], []
    for name, ds in record["datasets"].items():
        first = True
        for run, res in ds["runs"].items():
            lead = [name, budget_text(ds["settings"])] if first else ["", ""]
            first = False
            if not res.get("ok"):
                rows.append(lead + [LABELS[run], "failed: " + res.get("error", "?")[:60]] + [""] * 9)
                continue
            cmp = ds["comparisons"].get(run, {})
            rows.append(lead + [
                LABELS[run], f"{res['metrics']['mrr']:.4f}", f"{res['metrics']['hits@10']:.4f}",
                f"{res['epochs_done']:.2f}", f"{res['seconds_per_epoch']:.2f}", f"{res['rows_per_epoch']:,}", f"{res['ms_per_1k_rows']:.1f}",
                f"{res['peak_rss_mb']['train']:.0f}",
                f"{cmp['time_ratio_per_epoch']:.2f}x" if cmp else "-",
                f"{cmp['time_ratio_per_row']:.2f}x" if cmp else "-",
                f"{cmp['mrr_diff']:+.4f}" if cmp else "-",
            ])
            if run in PEERS:
                checked = res.get("pykeen_evaluator", True)
                agree.append([name, LABELS[run], f"{res['metrics']['mrr']:.6f}" if checked else "not run",
                              f"{res['our_evaluator']['mrr']:.6f}",
                              f"{res['evaluator_mrr_abs_diff']:.1e}" if checked else "-",
                              f"{res['evaluator_hits10_abs_diff']:.1e}" if checked else "-",
                              f"{res['score_rel_diff_after_training']:.1e}", f"{res['init_max_abs_diff']:.0e}",
                              f"{res['gc_seconds_per_epoch']:.2f}",
                              f"{cmp['time_ratio_per_epoch_excl_pykeen_gc']:.2f}x" if cmp else "-",
                              f"{res['metrics']['seconds']:.1f}", f"{res['our_evaluator']['seconds']:.1f}",
                              f"{res['peak_rss_mb'].get('after_pykeen_eval', float('nan')):.0f}"])
    s = record["setup"]
    print(f"\nComplEx training, this project vs PyKEEN {s['pykeen_version']} -- regulariser {s['regularizer']}"
          + (f" (weight {s['reg_weight']:g})" if s["regularizer"] != "none" else "")
          + f", Adagrad, init N(0, {s['init_scale']:g}^2), torch threads {s['threads'] or 'default'}"
          + f", seed {s['seed']}; test split, both sides, filtered, realistic ranks")
    print(format_table(
        ["dataset", "budget", "run", "MRR", "H@10", "epochs", "s/epoch", "rows/epoch", "ms/1k rows", "peak RSS MB",
         "ours/this s/ep", "ours/this per row", "ours-this MRR"], rows, left=3))
    if s.get("cpu_minutes"):
        print(f"budget: {s['cpu_minutes']:g} CPU minutes of training batches per run (process time, "
              f"{s['threads'] or 'default'} thread(s)); epochs = batches done / batches per epoch; "
              "s/epoch = CPU seconds per epoch")
    for name, ds in record["datasets"].items():
        if "rp_effect" in ds:
            e = ds["rp_effect"]
            print(f"relation prediction (weight {s['rp_weight']:g}) on {name}: MRR {e['mrr']:+.4f}, "
                  f"H@1 {e['hits@1']:+.4f}, H@10 {e['hits@10']:+.4f} (ours-rp - ours, same budget)")
    print("rows/epoch: training queries per epoch (ours and PyKEEN 1-N: 2 x |train|; PyKEEN LCWA: unique (h, r)"
          " pairs incl. inverses); peak RSS: whole process up to the end of training (imports included)")
    if agree:
        print("\nPyKEEN runs: test MRR of its trained embeddings under both evaluators; score rel diff = max |PyKEEN"
              " score_t - our score_all| / max |score| on 512 test queries after training; init diff = max |PyKEEN's"
              " weights at its first batch - ours|; gc = PyKEEN's gc.collect() after every epoch (inside s/epoch); eval"
              " times and the RSS peak of PyKEEN's evaluator (batch " + str(s["pykeen_eval_batch"]) + ") are"
              " side information, not part of the comparison (bench_eval.py times evaluation)")
        print(format_table(["dataset", "run", "PyKEEN evaluator", "our evaluator", "|dMRR|", "|dH@10|",
                            "score rel diff", "init diff", "gc s/epoch", "ours/this s/ep excl. gc",
                            "PyKEEN eval s", "our eval s", "RSS after PyKEEN eval MB"], agree, left=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="Budgets per dataset are in the module docstring.")
    ap.add_argument("--data-dir", default=default_data_dir(), help="folder holding the <name>.tar.gz archives")
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=None,
                    help="default: all three (--quick: umls)")
    ap.add_argument("--runs", nargs="+", choices=RUNS, default=["ours", *PEERS],
                    help="which trainings (ours is the reference; ours-rp: ours plus relation prediction)")
    ap.add_argument("--cpu-minutes", type=float, default=0.0,
                    help="train every run for this many CPU minutes (process time of its batches; epochs become "
                         "a cap) instead of a number of epochs; the final weights are tested")
    ap.add_argument("--rp-weight", type=float, default=4.0,
                    help="relation-prediction weight of the ours-rp run (4: the MetaSD reference's FB15k-237 value)")
    ap.add_argument("--no-pykeen-evaluator", action="store_true",
                    help="test PyKEEN's trained tables with our evaluator only (PyKEEN's takes ~17 min on "
                         "FB15k-237; the two agree to 1e-7 in every epoch-budget run)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once (each single-process; with --cpu-minutes their budgets stay equal)")
    ap.add_argument("--quick", action="store_true", help="tiny budgets (dim 16, 1-2 epochs): checks the script works")
    ap.add_argument("--epochs", type=int, help="override every dataset's epochs")
    ap.add_argument("--dim", type=int, help="override every dataset's dim")
    ap.add_argument("--batch-size", type=int, help="override every dataset's batch size")
    ap.add_argument("--lr", type=float, help="override every dataset's learning rate")
    ap.add_argument("--regularizer", choices=("none", "n3"), default="none",
                    help="none (default, identical on both sides) or n3 (PyKEEN: PowerSumRegularizer(p=3), see docs)")
    ap.add_argument("--reg-weight", type=float, default=0.01, help="N3 weight (with --regularizer n3)")
    ap.add_argument("--init-scale", type=float, default=1e-3, help="std of the shared normal initialisation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every run (0 = torch's default)")
    ap.add_argument("--eval-batch", type=int, default=256, help="PyKEEN evaluator batch size")
    ap.add_argument("--pykeen-tuned-malloc", action="store_true",
                    help="apply to the PyKEEN runs the glibc malloc setting our trainer applies to itself "
                         "(metasd_dgl.runtime.process.tune_malloc: reuse freed (b, N) blocks instead of mmap/munmap)")
    ap.add_argument("--work-dir", help="processed data and run folders (default: a temporary folder, removed)")
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/train_vs_pykeen.json; "
                    "--quick: train_vs_pykeen_quick.json)")
    args = ap.parse_args()

    from harness import load_processed, make_model, preprocess

    pykeen_version = pykeen_peer.version()
    if pykeen_version is None and any(r in PEERS for r in args.runs):
        raise SystemExit("pykeen is not installed (pip install pykeen==1.11.1); or pass --runs ours")
    if args.threads:  # the parent only preprocesses; this makes machine_info's torch_threads the runs' value
        torch.set_num_threads(args.threads)
    if args.jobs > 1 and not args.cpu_minutes:
        print("warning: --jobs > 1 without --cpu-minutes times wall-clock epochs of runs that share the CPU",
              file=sys.stderr)
    names = args.datasets or (["umls"] if args.quick else list(DATASETS))
    runs = ["ours"] + [r for r in args.runs if r != "ours"]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_train-"))
    started = time.perf_counter()
    record: Dict[str, Any] = {
        "benchmark": "ComplEx training, metasd-dgl vs PyKEEN, same model / budget / initial weights",
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": machine_info(),
        "setup": {"pykeen_version": pykeen_version, "regularizer": args.regularizer,
                  "reg_weight": args.reg_weight if args.regularizer != "none" else 0.0,
                  "init_scale": args.init_scale, "seed": args.seed, "threads": args.threads,
                  "optimizer": "adagrad", "loss": "softmax cross-entropy", "quick": args.quick,
                  "pykeen_eval_batch": args.eval_batch, "pykeen_tuned_malloc": args.pykeen_tuned_malloc,
                  "cpu_minutes": args.cpu_minutes, "rp_weight": args.rp_weight, "jobs": args.jobs},
        "datasets": {},
    }
    try:
        for name in names:
            settings = dict((QUICK if args.quick else FULL)[name])
            for key, value in (("epochs", args.epochs), ("dim", args.dim), ("batch", args.batch_size),
                               ("lr", args.lr)):
                if value is not None:
                    settings[key] = value
            if args.cpu_minutes:  # the budget is CPU time; epochs only a cap
                settings.update(cpu_minutes=args.cpu_minutes, epochs=args.epochs or 10_000)
            t_prep, processed = timed(lambda: preprocess(name, work / "data" / name, Path(args.data_dir)))
            data = load_processed(processed)
            train = data.train[: settings["train_limit"]] if settings.get("train_limit") else data.train
            R = data.num_relations
            queries = torch.cat([train[:, :2], torch.stack([train[:, 2], train[:, 1] + R], 1)])
            info = {"entities": data.num_entities, "relations": R, "train": int(train.shape[0]),
                    "valid": int(data.valid.shape[0]),
                    "test": int(min(data.test.shape[0], settings.get("test_limit") or data.test.shape[0])),
                    "queries_per_epoch": int(queries.shape[0]),
                    "unique_hr_pairs": int(torch.unique(queries, dim=0).shape[0]),
                    "preprocess_seconds": t_prep}
            print(f"{name}: {info['entities']} entities, {R} relations, train {info['train']}, test {info['test']}; "
                  f"{budget_text(settings)}", flush=True)
            ds = {"settings": settings, "data": info, "runs": {}, "comparisons": {}}
            record["datasets"][name] = ds
            common_job = {"dataset": name, "processed": str(processed), **settings,
                          "regularizer": args.regularizer, "reg_weight": args.reg_weight,
                          "init_scale": args.init_scale, "seed": args.seed, "threads": args.threads,
                          "eval_batch": args.eval_batch, "pykeen_tuned_malloc": args.pykeen_tuned_malloc,
                          "pykeen_evaluator": not args.no_pykeen_evaluator,
                          "triples_file": str(work / "triples" / f"{name}.pt")}
            # The PyKEEN process reads the splits and our initial weights (make_model with the Trainer's
            # seeded generator) from this file, so that it trains without dgl or this project imported.
            init = make_model(_config({**common_job, "run_dir": str(work)}), data.num_entities,
                              data.num_relations, torch.Generator().manual_seed(args.seed)).encoder
            Path(common_job["triples_file"]).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"train": data.train, "valid": data.valid, "test": data.test,
                        "entities": data.entity_names, "relations": data.relation_names,
                        "init": {"entity": init.entity.detach().clone(), "relation": init.relation.detach().clone()}},
                       common_job["triples_file"])
            def one(run: str) -> dict:
                rows = info["unique_hr_pairs"] if run == "pykeen-lcwa" else info["queries_per_epoch"]
                job = {**common_job, "run": run, "run_dir": str(work / "runs" / name / run), "rows_per_epoch": rows,
                       "rp_weight": args.rp_weight if run == "ours-rp" else 0.0}
                wall, res = timed(lambda: in_child(run_pykeen if run in PEERS else run_ours, job))
                res.update(process_wall_s=wall, cpu_minutes=job.get("cpu_minutes"))  # settings hold the budget
                summarize(res)
                return res

            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # each run is its own process
                results = dict(zip(runs, pool.map(one, runs)))
            for run in runs:
                res = ds["runs"][run] = results[run]
                wall = res["process_wall_s"]
                if res.get("ok"):
                    print(f"  {LABELS[run]:12s} MRR {res['metrics']['mrr']:.4f}  H@10 {res['metrics']['hits@10']:.4f}"
                          f"  {res['seconds_per_epoch']:.2f} s/epoch  peak RSS {res['peak_rss_mb']['train']:.0f} MB"
                          f"  ({wall:.0f} s)", flush=True)
                else:
                    print(f"  {LABELS[run]:12s} FAILED: {res.get('error')}\n{res.get('traceback', '')}", flush=True)
            for run in runs:
                if run in PEERS:
                    ds["comparisons"][run] = compare(ds["runs"]["ours"], ds["runs"][run])
            if "ours-rp" in runs and ds["runs"]["ours"].get("ok") and ds["runs"]["ours-rp"].get("ok"):
                ds["rp_effect"] = {k: ds["runs"]["ours-rp"]["metrics"][k] - ds["runs"]["ours"]["metrics"][k]
                                   for k in ("mrr", "hits@1", "hits@10")}
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    record["total_seconds"] = time.perf_counter() - started
    met = [c["targets_met"] for ds in record["datasets"].values() for c in ds["comparisons"].values() if c]
    record["all_targets_met"] = bool(met) and all(all(m.values()) for m in met)
    print_tables(record)
    print("\ntargets (issue): s/epoch no slower than PyKEEN, MRR no worse at the same budget")
    for name, ds in record["datasets"].items():
        for run, c in ds["comparisons"].items():
            if c:
                t = c["targets_met"]
                print(f"  {name:10s} vs {LABELS[run]:12s} time {'met' if t['not_slower_per_epoch'] else 'MISSED'}"
                      f" ({c['time_ratio_per_epoch']:.2f}x per epoch, {c['time_ratio_per_row']:.2f}x per row),"
                      f" MRR {'met' if t['mrr_not_worse'] else 'MISSED'} ({c['mrr_diff']:+.4f})")
    out = write_json(args.out or RESULTS / ("train_vs_pykeen_quick.json" if args.quick else "train_vs_pykeen.json"),
                     record)
    print(f"\ntotal {record['total_seconds']:.0f} s; wrote {out}")
    failed = [f"{n}/{r}" for n, ds in record["datasets"].items() for r, v in ds["runs"].items() if not v.get("ok")]
    if failed:
        raise SystemExit(f"failed runs: {', '.join(failed)}")


if __name__ == "__main__":
    main()
