"""Training: this project vs PyKEEN, the same ComplEx model, on UMLS, Kinship and FB15k-237.

One run trains, per dataset, three models from the *same initial weights*
(each in its own spawned process, so that peak RSS is per run):

``metasd-dgl``
    ``metasd_dgl.train.loop.Trainer``, ``train.method=plain``, regime ``1-n``:
    every training triple gives two queries, ``(h, r, ?)`` and ``(t, r+R, ?)``
    (reciprocal relations), each scored against all entities, softmax
    cross-entropy with the one true answer, batch mean.  An epoch = all
    ``2 |train|`` queries.
``PyKEEN 1-N``
    PyKEEN fed exactly those ``2 |train|`` queries: its per-triple 1-N loop
    (``SymmetricLCWATrainingLoop``: a ``TensorDataset`` of triples, one-hot
    targets built per batch) given the triples *with* their inverses and
    scoring tails only (a small subclass; the stock loop scores heads with
    ``score_h`` on raw relation ids, without inverse relations).  Model, loss
    (``CrossEntropyLoss.process_lcwa_scores``), optimiser, batching and the
    loop are PyKEEN's.  Same objective, same rows per epoch: the like-for-like
    comparison.
``PyKEEN LCWA``
    stock PyKEEN: ``LCWATrainingLoop`` on a ``TriplesFactory(...,
    create_inverse_triples=True)``: instances are the *unique* ``(h, r)``
    pairs (inverse relations included) with multi-hot targets, and
    ``CrossEntropyLoss`` spreads the target mass over all true tails.  An
    epoch has fewer rows than ours (UMLS 1,560 vs 10,432; FB15k-237 149,689 vs
    544,230), so s/epoch is not like for like; ``ms/1k rows`` is.

Same on every side: ComplEx, ``dim`` complex components (PyKEEN's
``embedding_dim``), epochs, batch size (rows per step), Adagrad with the same
lr (``torch.optim.Adagrad`` defaults otherwise), initial weights (PyKEEN's
tables are overwritten with this project's seeded N(0, init_scale^2) init,
re-laid out: PyKEEN stores complex numbers interleaved and the inverse of
relation ``r`` at row ``2r + 1``; the scores of both models are checked equal
after training), no label smoothing, no dropout, torch threads (``--threads``).

Regulariser: ``none`` on both sides (default) -- the comparison that is truly
equal.  ``--regularizer n3`` gives this project's N3 (``weight * sum_{f in h, r, t}
sum |f|^3 / b`` over the batch rows, ``|.|`` the complex modulus) and PyKEEN's
closest built-in, ``PowerSumRegularizer(p=3, normalize=False)`` on both
representations (``sum |x|^3`` per row, ``mean`` over rows: the same per-row
formula -- PyKEEN's ``LpRegularizer(p=3)`` would be the L3 *norm*, not its cube).
It is not identical: under LCWA PyKEEN's entity regulariser sees the batch heads
and then the *whole* entity table (``score_t`` looks up all tails), so its tail
term is the mean over all N entities instead of over the batch's true tails.

Evaluation, on both models: the test split, both sides, filtered with
train+valid+test, realistic ranks: this project's ``rank_split``; for PyKEEN
models also PyKEEN's ``RankBasedEvaluator(filtered=True)`` with
``additional_filter_triples=[train, valid]`` (``both.realistic`` MRR / Hits@10)
*and* our ``rank_split`` on PyKEEN's trained tables, to show the two evaluators
agree.  The PyKEEN ``TriplesFactory`` is built from this project's processed
id-mapped triples (its ``entity_to_id`` / ``relation_to_id`` from
``entities.tsv`` / ``relations.tsv``), so both sides see the same data.

Timing: seconds per epoch = mean over epochs of the time inside the epoch loop
(ours: the ``seconds`` of ``metrics.jsonl``; PyKEEN: a ``TrainingCallback``,
from the first batch to ``post_epoch``).  Checkpoint writing and the final
validation of ours, and PyKEEN's instance building, are outside it (their
totals are in the JSON as ``train_wall_s``).  The machine is shared and the
runs are sequential, so ratios carry the noise of load changes between runs;
``--threads 1`` (default) because two OpenMP threads on two busy cores stall
(measured: a UMLS step at 11 ms with 1 thread, 129 ms with 2, under load).

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
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

os.environ.setdefault("DGLBACKEND", "pytorch")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import RESULTS, default_data_dir, format_table, machine_info, peak_rss_mb, timed, write_json  # noqa: E402

DATASETS = ("umls", "kinship", "fb15k-237")
RUNS = ("ours", "pykeen-1n", "pykeen-lcwa")
LABELS = {"ours": "metasd-dgl", "pykeen-1n": "PyKEEN 1-N", "pykeen-lcwa": "PyKEEN LCWA"}

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


# ----------------------------------------------------------------- layout glue
def complex_to_pykeen(x: torch.Tensor) -> torch.Tensor:
    """Our complex rows ``[re | im]`` (n, 2d) -> PyKEEN's interleaved storage (n, 2d) = (n, d, 2)."""
    d = x.shape[1] // 2
    return torch.stack([x[:, :d], x[:, d:]], dim=-1).reshape(x.shape[0], 2 * d)


def complex_from_pykeen(w: torch.Tensor) -> torch.Tensor:
    """PyKEEN's interleaved (n, 2d) -> our ``[re | im]`` (n, 2d)."""
    v = w.reshape(w.shape[0], -1, 2)
    return torch.cat([v[..., 0], v[..., 1]], dim=1)


def relations_to_pykeen(rel: torch.Tensor, num_relations: int) -> torch.Tensor:
    """Our rows ``r`` / ``r + R`` (inverse) -> PyKEEN's rows ``2r`` / ``2r + 1`` (DefaultRelationInverter)."""
    out = torch.empty_like(rel)
    out[0::2], out[1::2] = rel[:num_relations], rel[num_relations:]
    return out


def relations_from_pykeen(rel: torch.Tensor, num_relations: int) -> torch.Tensor:
    return torch.cat([rel[0::2], rel[1::2]])


# --------------------------------------------------------------- worker side
def _threads(job: dict) -> None:
    if job["threads"]:
        torch.set_num_threads(job["threads"])


def _config(job: dict):
    from metasd_dgl.config import load_config

    return load_config(overrides={
        "run_dir": job["run_dir"],
        "model.encoder": "kge", "model.decoder": "complex", "model.dim": job["dim"],
        "model.init_scale": job["init_scale"],
        "train.method": "plain", "train.regime": "1-n", "train.optimizer": "adagrad",
        "train.epochs": job["epochs"], "train.batch_size": job["batch"], "train.lr": job["lr"],
        "train.regularizer": job["regularizer"], "train.reg_weight": job["reg_weight"],
        "train.label_smoothing": 0.0, "train.seed": job["seed"], "train.device": "cpu",
        "train.valid_every": job["epochs"], "train.patience": 0, "train.keep_checkpoints": 0,
        # the Trainer validates once, after the last epoch; a small score chunk keeps that validation
        # from setting the run's peak RSS (default cap 512 MB), which should measure training
        "eval.max_memory_mb": 128,
    })


def initial_tables(job: dict, data) -> Dict[str, torch.Tensor]:
    """The Trainer's initial weights: ``make_model`` with a generator seeded by ``train.seed``, as in ``Trainer``."""
    from metasd_dgl.train.loop import make_model

    model = make_model(_config(job), data, torch.Generator().manual_seed(job["seed"]))
    return {"entity": model.encoder.entity.detach().clone(), "relation": model.encoder.relation.detach().clone()}


def read_processed(path: str | Path) -> dict:
    """numpy-only reader of a processed folder (layout in ``metasd_dgl.data.preprocess``), so that the PyKEEN
    process trains without dgl or this project imported (PyKEEN's per-epoch ``gc.collect`` scales with them)."""
    import numpy as np

    path = Path(path)

    def names(file: str) -> List[str]:
        return [ln.split("\t", 1)[1] for ln in (path / file).read_text(encoding="utf-8").split("\n") if ln]

    out = {"entities": names("entities.tsv"), "relations": names("relations.tsv")}
    for split in ("train", "valid", "test"):
        out[split] = torch.from_numpy(np.load(path / f"{split}.npy", allow_pickle=False))
    return out


def our_evaluation(model, test: torch.Tensor, num_relations: int, processed: str | Path) -> dict:
    """Our filtered evaluation (train+valid+test filter from the processed folder), both sides."""
    from metasd_dgl.data.filters import FilterIndex
    from metasd_dgl.evaluation import metrics
    from metasd_dgl.inference import rank_split

    filter_path = Path(processed) / "filter.npz"
    if filter_path.is_file():
        index = FilterIndex.load(filter_path)
    else:
        d = read_processed(processed)
        n_ent = len(d["entities"])
        index = FilterIndex.from_triples(torch.cat([d["train"], d["valid"], d["test"]]), n_ent, num_relations)
    seconds, ranks = timed(lambda: rank_split(model, test, num_relations, index))
    return {**metrics(torch.cat([ranks.tail, ranks.head])), "seconds": seconds}


def run_ours(job: dict) -> dict:
    """metasd-dgl: Trainer(plain, 1-n) then our filtered evaluation."""
    from metasd_dgl.data.preprocess import load_processed
    from metasd_dgl.train.loop import Trainer

    _threads(job)
    data = load_processed(job["processed"])
    if job.get("train_limit"):
        data = dataclasses.replace(data, train=data.train[: job["train_limit"]])
    test = data.test[: job["test_limit"]] if job.get("test_limit") else data.test
    rss_loaded = peak_rss_mb()
    trainer = Trainer(_config(job), data, Path(job["run_dir"]), progress=False)
    init = torch.load(job["init_file"])
    with torch.no_grad():
        init_diff = float(max((trainer.model.encoder.entity - init["entity"]).abs().max(),
                              (trainer.model.encoder.relation - init["relation"]).abs().max()))
    wall, _ = timed(trainer.run)
    rss_train = peak_rss_mb()
    epochs = [h for h in trainer.state.history if "seconds" in h]
    return {
        "epoch_seconds": [h["seconds"] for h in epochs],
        "epoch_loss": [h.get("loss") for h in epochs],
        "train_wall_s": wall,
        "steps_per_epoch": math.ceil(len(trainer.examples) / job["batch"]),
        "rows_per_epoch": len(trainer.examples),
        "init_max_abs_diff": init_diff,
        "metrics": our_evaluation(trainer.model, test, data.num_relations, job["processed"]),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": {"after_load": rss_loaded, "train": rss_train, "end": peak_rss_mb()},
    }


def run_pykeen(job: dict) -> dict:
    """PyKEEN ComplEx: stock LCWA, or our 1-N queries on its per-triple loop; both evaluators."""
    import gc as _gc
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    logging.getLogger("torch_max_mem").setLevel(logging.ERROR)
    import pykeen.training.training_loop as pk_loop_module
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.losses import CrossEntropyLoss
    from pykeen.models import ComplEx
    from pykeen.nn.init import PretrainedInitializer
    from pykeen.regularizers import PowerSumRegularizer
    from pykeen.training import LCWATrainingLoop, SymmetricLCWATrainingLoop
    from pykeen.training.callbacks import TrainingCallback
    from pykeen.triples import TriplesFactory
    from torch.nn import functional
    from torch.utils.data import DataLoader, TensorDataset

    class PerQueryTrainingLoop(SymmetricLCWATrainingLoop):
        """Our 1-N examples on PyKEEN's own per-triple path.

        ``SymmetricLCWATrainingLoop`` (PyKEEN's per-triple 1-N, [lacroix2018]) batches the
        triples themselves (``TensorDataset``) and builds one-hot targets per batch; it scores
        heads with ``score_h`` on the raw relation ids, which does not use inverse relations.
        This subclass feeds it the triples with their inverses (``(t, r_inv, h)``, PyKEEN's ids)
        and scores tails only, so every query is ``(h, r, ?)`` -- exactly our training rows.
        """

        def _create_training_data_loader(self, triples_factory, sampler, **kwargs):
            assert sampler is None
            hrt = triples_factory._add_inverse_triples_if_necessary(triples_factory.mapped_triples)
            return DataLoader(dataset=TensorDataset(hrt), **kwargs)

        def _process_batch(self, batch, start, stop, label_smoothing=0.0, slice_size=None):
            hrt = batch[0][start:stop].to(device=self.model.device)
            return self.loss.process_lcwa_scores(
                predictions=self.model.score_t(hr_batch=hrt[:, :2], slice_size=slice_size, mode=self.mode),
                labels=functional.one_hot(hrt[:, 2], num_classes=self.model.num_entities).float(),
                label_smoothing=label_smoothing,
                num_entities=self.model.num_entities,
            ) + self.model.collect_regularization_term()

    class CopyInitializer(PretrainedInitializer):
        """``PretrainedInitializer`` returning a copy: PyKEEN's returns the tensor itself, which the
        ``torch.nn.Embedding.reset_parameters`` of the next reset (at ``train()``) overwrites in place."""

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return super().__call__(x).clone()

    class EpochTimer(TrainingCallback):
        """Epoch boundaries (first batch, every ``post_epoch``) and the weights at the first batch."""

        def __init__(self, expected: tuple) -> None:
            super().__init__()
            self.expected = expected
            self.first_batch: Optional[float] = None
            self.init_diff = float("nan")
            self.marks: List[float] = []
            self.losses: List[float] = []

        def pre_batch(self, **kwargs: Any) -> None:
            if self.first_batch is None:  # the weights PyKEEN starts from (after its reset) vs ours
                with torch.no_grad():
                    self.init_diff = max(float((w - w0).abs().max()) for w, w0 in self.expected)
                self.first_batch = time.perf_counter()

        def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: Any) -> None:
            self.marks.append(time.perf_counter())
            self.losses.append(float(epoch_loss))

    class TimedGC:
        """Stands in for ``gc`` inside PyKEEN's training loop module: its ``gc.collect()`` calls, timed."""

        calls: List[tuple] = []  # (start, seconds)

        def collect(self, *args: Any) -> int:
            start = time.perf_counter()
            try:
                return _gc.collect(*args)
            finally:
                TimedGC.calls.append((start, time.perf_counter() - start))

    _threads(job)
    if job.get("pykeen_tuned_malloc"):  # the process-wide glibc setting our Stepper applies (see tune_malloc)
        from metasd_dgl.train.fused import tune_malloc

        tune_malloc()
    data = read_processed(job["processed"])
    train, valid = data["train"], data["valid"]
    if job.get("train_limit"):
        train = train[: job["train_limit"]]
    test = data["test"][: job["test_limit"]] if job.get("test_limit") else data["test"]
    n_ent, R, d = len(data["entities"]), len(data["relations"]), job["dim"]
    rss_loaded = peak_rss_mb()
    tf = TriplesFactory(
        mapped_triples=train,
        entity_to_id={name: i for i, name in enumerate(data["entities"])},
        relation_to_id={name: i for i, name in enumerate(data["relations"])},
        create_inverse_triples=True,
    )
    # Same initial weights as our Trainer, given to PyKEEN as its initializers: its training loop
    # re-initialises the model at the start of train(); the first batch checks what it starts from.
    init = torch.load(job["init_file"])
    ent0 = complex_to_pykeen(init["entity"]).reshape(n_ent, d, 2)
    rel0 = relations_to_pykeen(complex_to_pykeen(init["relation"]), R).reshape(2 * R, d, 2)
    n3 = job["regularizer"] == "n3"
    model = ComplEx(
        triples_factory=tf, embedding_dim=d, loss=CrossEntropyLoss(),
        entity_initializer=CopyInitializer(ent0), relation_initializer=CopyInitializer(rel0),
        regularizer=PowerSumRegularizer if n3 else None,
        regularizer_kwargs=dict(weight=job["reg_weight"], p=3.0, normalize=False, dim=-1) if n3 else None,
        random_seed=job["seed"],
    )
    if not n3:
        assert model.entity_representations[0].regularizer is None
        assert model.relation_representations[0].regularizer is None
    ent_pk = model.entity_representations[0]._embeddings.weight
    rel_pk = model.relation_representations[0]._embeddings.weight
    timer = EpochTimer(((ent_pk, ent0.reshape(ent_pk.shape)), (rel_pk, rel0.reshape(rel_pk.shape))))

    loop_cls = PerQueryTrainingLoop if job["run"] == "pykeen-1n" else LCWATrainingLoop
    loop = loop_cls(model=model, triples_factory=tf, optimizer="adagrad", optimizer_kwargs=dict(lr=job["lr"]))
    assert isinstance(loop.optimizer, torch.optim.Adagrad)
    pk_loop_module.gc = TimedGC()
    start = time.perf_counter()
    loop.train(triples_factory=tf, num_epochs=job["epochs"], batch_size=job["batch"], use_tqdm=False,
               use_tqdm_batch=False, callbacks=[timer], drop_last=False, pin_memory=False)
    wall = time.perf_counter() - start
    pk_loop_module.gc = _gc
    rss_train = peak_rss_mb()
    marks = [timer.first_batch or start] + timer.marks

    # PyKEEN's evaluator.
    evaluator = RankBasedEvaluator(filtered=True)
    pk_seconds, res = timed(lambda: evaluator.evaluate(
        model, test, additional_filter_triples=[data["train"], valid], batch_size=job["eval_batch"],
        use_tqdm=False))
    rss_pk_eval = peak_rss_mb()
    names = {"mrr": "inverse_harmonic_mean_rank", "mr": "arithmetic_mean_rank", "hits@1": "hits_at_1",
             "hits@3": "hits_at_3", "hits@10": "hits_at_10"}
    pk_metrics = {k: float(res.get_metric(f"both.realistic.{m}")) for k, m in names.items()}
    pk_metrics["seconds"] = pk_seconds

    # Our evaluator on PyKEEN's trained tables, in our layout (and a check that both models score alike).
    from metasd_dgl.model import build_model

    ours = build_model("kge", "complex", n_ent, R, d)
    with torch.no_grad():
        ours.encoder.entity.copy_(complex_from_pykeen(ent_pk.detach()))
        ours.encoder.relation.copy_(relations_from_pykeen(complex_from_pykeen(rel_pk.detach()), R))
        model.eval()
        probe = test[:256]
        pk_scores = torch.cat([model.score_t(torch.stack([probe[:, 0], 2 * probe[:, 1]], 1)),
                               model.score_t(torch.stack([probe[:, 2], 2 * probe[:, 1] + 1], 1))])
        our_scores = torch.cat([ours(torch.stack([probe[:, 0], probe[:, 1]], 1)),
                                ours(torch.stack([probe[:, 2], probe[:, 1] + R], 1))])
        score_diff = float((pk_scores - our_scores).abs().max() / our_scores.abs().max().clamp_min(1e-30))
    our_metrics = our_evaluation(ours, test, R, job["processed"])
    return {
        "epoch_seconds": [b - a for a, b in zip(marks[:-1], marks[1:])],
        "epoch_loss": timer.losses,
        "train_wall_s": wall,
        "setup_before_first_batch_s": (timer.first_batch or start) - start,
        # only the calls inside the timed epochs (PyKEEN also collects once before the first batch)
        "gc_collect_seconds": sum(d for t, d in TimedGC.calls if t >= (timer.first_batch or start)),
        "steps_per_epoch": math.ceil(job["rows_per_epoch"] / job["batch"]),
        "rows_per_epoch": job["rows_per_epoch"],
        "init_max_abs_diff": timer.init_diff,
        "metrics": pk_metrics,
        "our_evaluator": our_metrics,
        "evaluator_mrr_abs_diff": abs(pk_metrics["mrr"] - our_metrics["mrr"]),
        "evaluator_hits10_abs_diff": abs(pk_metrics["hits@10"] - our_metrics["hits@10"]),
        "score_rel_diff_after_training": score_diff,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": {"after_load": rss_loaded, "train": rss_train, "after_pykeen_eval": rss_pk_eval,
                        "end": peak_rss_mb()},
    }


def run_job(job: dict) -> dict:
    """Entry point of the spawned process."""
    fn = run_ours if job["run"] == "ours" else run_pykeen
    try:
        return {"ok": True, **fn(job)}
    except Exception as exc:  # noqa: BLE001 - report and let the other runs go on
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def in_subprocess(job: dict) -> dict:
    """Run ``run_job(job)`` in a fresh spawned process (its own peak RSS, its own malloc settings)."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(run_job, job).result()
        except concurrent.futures.process.BrokenProcessPool as exc:  # killed (e.g. out of memory)
            return {"ok": False, "error": f"worker died: {exc}"}


# --------------------------------------------------------------- parent side
def summarize(result: dict) -> None:
    """Derived numbers, in place: mean s/epoch, ms per 1k rows."""
    if not result.get("ok"):
        return
    secs = result["epoch_seconds"]
    result["seconds_per_epoch"] = sum(secs) / len(secs)
    result["ms_per_1k_rows"] = 1e6 * result["seconds_per_epoch"] / result["rows_per_epoch"]
    if "gc_collect_seconds" in result:
        result["gc_seconds_per_epoch"] = result["gc_collect_seconds"] / len(secs)


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
    text = f"d{s['dim']} b{s['batch']} e{s['epochs']} lr{s['lr']:g}"
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
                rows.append(lead + [LABELS[run], "failed: " + res.get("error", "?")[:60]] + [""] * 8)
                continue
            cmp = ds["comparisons"].get(run, {})
            rows.append(lead + [
                LABELS[run], f"{res['metrics']['mrr']:.4f}", f"{res['metrics']['hits@10']:.4f}",
                f"{res['seconds_per_epoch']:.2f}", f"{res['rows_per_epoch']:,}", f"{res['ms_per_1k_rows']:.1f}",
                f"{res['peak_rss_mb']['train']:.0f}",
                f"{cmp['time_ratio_per_epoch']:.2f}x" if cmp else "-",
                f"{cmp['time_ratio_per_row']:.2f}x" if cmp else "-",
                f"{cmp['mrr_diff']:+.4f}" if cmp else "-",
            ])
            if run != "ours":
                agree.append([name, LABELS[run], f"{res['metrics']['mrr']:.6f}", f"{res['our_evaluator']['mrr']:.6f}",
                              f"{res['evaluator_mrr_abs_diff']:.1e}", f"{res['evaluator_hits10_abs_diff']:.1e}",
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
        ["dataset", "budget", "run", "MRR", "H@10", "s/epoch", "rows/epoch", "ms/1k rows", "peak RSS MB",
         "ours/this s/ep", "ours/this per row", "ours-this MRR"], rows, left=3))
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
    ap.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="which trainings (ours is the reference)")
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
                         "(metasd_dgl.train.fused.tune_malloc: reuse freed (b, N) blocks instead of mmap/munmap)")
    ap.add_argument("--work-dir", help="processed data and run folders (default: a temporary folder, removed)")
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/train_vs_pykeen.json; "
                    "--quick: train_vs_pykeen_quick.json)")
    args = ap.parse_args()

    from metasd_dgl.data.preprocess import load_processed, preprocess

    try:
        import pykeen

        pykeen_version = pykeen.get_version()
    except ImportError:
        pykeen_version = None
        if any(r != "ours" for r in args.runs):
            raise SystemExit("pykeen is not installed (pip install pykeen==1.11.1); or pass --runs ours")
    if args.threads:  # the parent only preprocesses; this makes machine_info's torch_threads the runs' value
        torch.set_num_threads(args.threads)
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
                  "pykeen_eval_batch": args.eval_batch, "pykeen_tuned_malloc": args.pykeen_tuned_malloc},
        "datasets": {},
    }
    try:
        for name in names:
            settings = dict((QUICK if args.quick else FULL)[name])
            for key, value in (("epochs", args.epochs), ("dim", args.dim), ("batch", args.batch_size),
                               ("lr", args.lr)):
                if value is not None:
                    settings[key] = value
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
                          "init_file": str(work / "init" / f"{name}.pt")}
            Path(common_job["init_file"]).parent.mkdir(parents=True, exist_ok=True)
            torch.save(initial_tables({**common_job, "run_dir": str(work)}, data), common_job["init_file"])
            for run in runs:
                rows = info["unique_hr_pairs"] if run == "pykeen-lcwa" else info["queries_per_epoch"]
                job = {**common_job, "run": run, "run_dir": str(work / "runs" / name / run), "rows_per_epoch": rows}
                wall, res = timed(lambda: in_subprocess(job))
                res["process_wall_s"] = wall
                summarize(res)
                ds["runs"][run] = res
                if res.get("ok"):
                    print(f"  {LABELS[run]:12s} MRR {res['metrics']['mrr']:.4f}  H@10 {res['metrics']['hits@10']:.4f}"
                          f"  {res['seconds_per_epoch']:.2f} s/epoch  peak RSS {res['peak_rss_mb']['train']:.0f} MB"
                          f"  ({wall:.0f} s)", flush=True)
                else:
                    print(f"  {LABELS[run]:12s} FAILED: {res.get('error')}\n{res.get('traceback', '')}", flush=True)
            for run in runs[1:]:
                ds["comparisons"][run] = compare(ds["runs"]["ours"], ds["runs"][run])
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
