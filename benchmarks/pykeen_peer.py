"""The PyKEEN peer of every comparison: builds, trains and evaluates PyKEEN models (PyKEEN 1.11).

No project imports (the PyKEEN training process must not load dgl or this project before it
trains: PyKEEN's per-epoch ``gc.collect`` scales with the loaded modules).  Triples come in as
id-mapped (n, 3) int64 tensors from this project's processed folder (``metasd_dgl.data``).

* layout glue: our ComplEx rows ``[re | im]`` and relations ``r`` / ``r + R`` <-> PyKEEN's interleaved
  complex storage and relation rows ``2r`` / ``2r + 1`` (``DefaultRelationInverter``)
* ``evaluate``        -- ``RankBasedEvaluator(filtered=True)``, both sides, realistic ranks -> our metric names
* ``train_complex``   -- ComplEx from given initial weights, stock LCWA or our 1-N rows on its per-triple loop
* ``distmult``        -- a ``DistMult`` holding given tables
* ``rgcn_batches``    -- N timed sLCWA batches of ``pykeen.models.RGCN``
"""
from __future__ import annotations

import gc
import logging
import math
import sys
import time
import warnings
from typing import Any, List, Optional, Sequence

import torch

METRICS = {"mrr": "inverse_harmonic_mean_rank", "mr": "arithmetic_mean_rank", "hits@1": "hits_at_1",
           "hits@3": "hits_at_3", "hits@10": "hits_at_10"}


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pykeen", "torch_max_mem"):
        logging.getLogger(name).setLevel(logging.ERROR)


def version() -> Optional[str]:
    try:
        import pykeen
    except ImportError:
        return None
    return pykeen.get_version()


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
    """Our rows ``r`` / ``r + R`` (inverse) -> PyKEEN's rows ``2r`` / ``2r + 1``."""
    out = torch.empty_like(rel)
    out[0::2], out[1::2] = rel[:num_relations], rel[num_relations:]
    return out


def relations_from_pykeen(rel: torch.Tensor) -> torch.Tensor:
    return torch.cat([rel[0::2], rel[1::2]])


def tables_from_complex(model, num_relations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained PyKEEN ComplEx's (entity, relation) tables in our layout."""
    ent = model.entity_representations[0]._embeddings.weight.detach()
    rel = model.relation_representations[0]._embeddings.weight.detach()
    return complex_from_pykeen(ent), relations_from_pykeen(complex_from_pykeen(rel))


def score_both(model, triples: torch.Tensor) -> torch.Tensor:
    """PyKEEN scores of ``(h, r, ?)`` then ``(t, r_inv, ?)`` for ``triples``: rows of our ``score_all``."""
    with torch.no_grad():
        model.eval()
        return torch.cat([model.score_t(torch.stack([triples[:, 0], 2 * triples[:, 1]], 1)),
                          model.score_t(torch.stack([triples[:, 2], 2 * triples[:, 1] + 1], 1))])


# ----------------------------------------------------------------- evaluation
def evaluate(model, test: torch.Tensor, filter_triples: Sequence[torch.Tensor], batch_size: int) -> dict:
    """PyKEEN's filtered evaluation (``additional_filter_triples``) -> ``{mrr, mr, hits@k, seconds}``."""
    from pykeen.evaluation import RankBasedEvaluator

    start = time.perf_counter()
    result = RankBasedEvaluator(filtered=True).evaluate(
        model, test, batch_size=batch_size, use_tqdm=False, additional_filter_triples=list(filter_triples))
    seconds = time.perf_counter() - start
    return {**{k: float(result.get_metric(f"both.realistic.{m}")) for k, m in METRICS.items()}, "seconds": seconds}


def distmult(entity: torch.Tensor, relation: torch.Tensor, train: torch.Tensor, num_entities: int,
             num_relations: int):
    """PyKEEN ``DistMult`` whose embeddings are ``entity`` and ``relation[:num_relations]``."""
    from pykeen.models import DistMult
    from pykeen.triples import CoreTriplesFactory

    tf = CoreTriplesFactory.create(train, num_entities=num_entities, num_relations=num_relations)
    model = DistMult(triples_factory=tf, embedding_dim=entity.shape[1], random_seed=0)
    with torch.no_grad():
        model.entity_representations[0]._embeddings.weight.copy_(entity)
        model.relation_representations[0]._embeddings.weight.copy_(relation[:num_relations])
    return model


# ----------------------------------------------------------------- ComplEx training
def train_complex(job: dict, train: torch.Tensor, entities: List[str], relations: List[str],
                  init: dict) -> tuple[Any, dict]:
    """PyKEEN ComplEx from our initial tables ``init`` (``entity``, ``relation``, our layout).

    ``job["run"]``: ``pykeen-lcwa`` (stock ``LCWATrainingLoop``) or ``pykeen-1n`` (our 2 x |train| rows on
    its per-triple ``SymmetricLCWATrainingLoop``).  ``job``: dim, epochs, batch, lr, regularizer,
    reg_weight, seed, and optionally cpu_minutes (stop once the batches used that much CPU time; ``epochs``
    is then only a cap).  -> (model, {epoch_seconds, epoch_loss, train_wall_s, setup_before_first_batch_s,
    gc_collect_seconds, init_max_abs_diff}).
    """
    quiet()
    import pykeen.training.training_loop as loop_module
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
        """Our 1-N rows on PyKEEN's per-triple path: the triples with their inverses, tails scored only
        (the stock loop scores heads with ``score_h`` on raw relation ids, without inverse relations)."""

        def _create_training_data_loader(self, triples_factory, sampler, **kwargs):
            assert sampler is None
            hrt = triples_factory._add_inverse_triples_if_necessary(triples_factory.mapped_triples)
            return DataLoader(dataset=TensorDataset(hrt), **kwargs)

        def _process_batch(self, batch, start, stop, label_smoothing=0.0, slice_size=None):
            hrt = batch[0][start:stop].to(device=self.model.device)
            return self.loss.process_lcwa_scores(
                predictions=self.model.score_t(hr_batch=hrt[:, :2], slice_size=slice_size, mode=self.mode),
                labels=functional.one_hot(hrt[:, 2], num_classes=self.model.num_entities).float(),
                label_smoothing=label_smoothing, num_entities=self.model.num_entities,
            ) + self.model.collect_regularization_term()

    class CopyInitializer(PretrainedInitializer):
        """Returns a copy: PyKEEN's returns the tensor itself, which the ``reset_parameters`` of the next
        reset (at ``train()``) overwrites in place."""

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return super().__call__(x).clone()

    class EpochTimer(TrainingCallback):
        """Epoch boundaries (first batch, every ``post_epoch``) and the weights at the first batch."""

        def __init__(self, expected: tuple) -> None:
            super().__init__()
            self.expected, self.first_batch, self.init_diff = expected, None, float("nan")
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

    class BudgetSpent(Exception):
        """Raised by ``CPUBudget`` to end training (PyKEEN re-raises only MemoryError/RuntimeError handling)."""

    class CPUBudget(TrainingCallback):
        """``job["cpu_minutes"]``: process CPU time from the first batch on, read at every batch start (so the
        previous batch's optimiser step and PyKEEN's per-epoch ``gc.collect`` count); the budget spent, the
        next batch does not start."""

        def __init__(self, minutes: float) -> None:
            super().__init__()
            self.budget, self.used, self.steps, self.last = 60.0 * minutes, 0.0, 0, None

        def pre_batch(self, **kwargs: Any) -> None:
            now = time.process_time()
            if self.last is not None:
                self.used += now - self.last
                self.steps += 1
                if self.budget and self.used >= self.budget:
                    raise BudgetSpent
            self.last = now

    class TimedGC:
        """Stands in for ``gc`` inside PyKEEN's training loop module: its ``gc.collect()`` calls, timed."""

        calls: List[tuple] = []  # (wall start, wall seconds, CPU seconds)

        def collect(self, *args: Any) -> int:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return gc.collect(*args)
            finally:  # (wall start, wall seconds, CPU seconds): a CPU budget compares CPU time
                TimedGC.calls.append((start, time.perf_counter() - start, time.process_time() - cpu))

    R, d = len(relations), job["dim"]
    tf = TriplesFactory(mapped_triples=train, entity_to_id={n: i for i, n in enumerate(entities)},
                        relation_to_id={n: i for i, n in enumerate(relations)}, create_inverse_triples=True)
    # Our initial weights as its initializers: the loop re-initialises the model at train(); the first batch checks.
    ent0 = complex_to_pykeen(init["entity"]).reshape(len(entities), d, 2)
    rel0 = relations_to_pykeen(complex_to_pykeen(init["relation"]), R).reshape(2 * R, d, 2)
    n3 = job["regularizer"] == "n3"
    model = ComplEx(
        triples_factory=tf, embedding_dim=d, loss=CrossEntropyLoss(),
        entity_initializer=CopyInitializer(ent0), relation_initializer=CopyInitializer(rel0),
        regularizer=PowerSumRegularizer if n3 else None,
        regularizer_kwargs=dict(weight=job["reg_weight"], p=3.0, normalize=False, dim=-1) if n3 else None,
        random_seed=job["seed"])
    if not n3:
        assert model.entity_representations[0].regularizer is None
        assert model.relation_representations[0].regularizer is None
    ent_pk = model.entity_representations[0]._embeddings.weight
    rel_pk = model.relation_representations[0]._embeddings.weight
    timer = EpochTimer(((ent_pk, ent0.reshape(ent_pk.shape)), (rel_pk, rel0.reshape(rel_pk.shape))))
    loop_cls = PerQueryTrainingLoop if job["run"] == "pykeen-1n" else LCWATrainingLoop
    loop = loop_cls(model=model, triples_factory=tf, optimizer="adagrad", optimizer_kwargs=dict(lr=job["lr"]))
    assert isinstance(loop.optimizer, torch.optim.Adagrad)
    budget = CPUBudget(job.get("cpu_minutes") or 0.0)
    loop_module.gc = TimedGC()
    start = time.perf_counter()
    try:
        loop.train(triples_factory=tf, num_epochs=job["epochs"], batch_size=job["batch"], use_tqdm=False,
                   use_tqdm_batch=False, callbacks=[timer, budget], drop_last=False, pin_memory=False)
    except BudgetSpent:
        pass
    finally:
        loop_module.gc = gc
    wall = time.perf_counter() - start
    first = timer.first_batch or start
    marks = [first] + timer.marks
    return model, {
        "epoch_seconds": [b - a for a, b in zip(marks[:-1], marks[1:])],
        "epoch_loss": timer.losses,
        "train_wall_s": wall,
        "setup_before_first_batch_s": first - start,
        # only the calls inside the timed epochs (PyKEEN also collects once before the first batch)
        "gc_collect_seconds": sum(c if job.get("cpu_minutes") else s for t, s, c in TimedGC.calls if t >= first),
        "init_max_abs_diff": timer.init_diff,
        # batches done and their CPU time (exact when the budget ended training; else without the last batch)
        "cpu_seconds": budget.used, "steps": budget.steps,
    }


# ----------------------------------------------------------------- R-GCN speed
def rgcn_batches(train: torch.Tensor, num_entities: int, num_relations: int, dim: int, batch: int,
                 batches: int) -> dict:
    """``batches`` sLCWA batches of ``pykeen.models.RGCN`` (2 layers, 16 bases, DistMult, 1 negative, Adam),
    through ``SLCWATrainingLoop._process_batch_static`` (PyKEEN's own per-batch code), on a factory *without*
    inverse triples (``RGCNRepresentation`` refuses ``create_inverse_triples=True``, adds inverse edges itself)."""
    quiet()
    from pykeen.models import RGCN
    from pykeen.sampling import BasicNegativeSampler
    from pykeen.training.slcwa import SLCWATrainingLoop
    from pykeen.triples import CoreTriplesFactory

    t0 = time.perf_counter()
    tf = CoreTriplesFactory.create(mapped_triples=train, num_entities=num_entities, num_relations=num_relations,
                                   create_inverse_triples=False)
    model = RGCN(triples_factory=tf, embedding_dim=dim, num_layers=2, interaction="DistMult",
                 decomposition="bases", decomposition_kwargs=dict(num_bases=16), random_seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = BasicNegativeSampler(mapped_triples=tf.mapped_triples, num_entities=num_entities,
                                   num_relations=num_relations, num_negs_per_pos=1)
    setup_s = time.perf_counter() - t0
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))
    model.train()
    times, losses = [], []
    for i in range(batches):
        t0 = time.perf_counter()
        pos = tf.mapped_triples[perm[i * batch:(i + 1) * batch]]
        neg, mask = sampler.sample(pos)
        data = {"positives": pos, "negatives": neg, **({"masks": mask} if mask is not None else {})}
        opt.zero_grad()
        loss = SLCWATrainingLoop._process_batch_static(model, model.loss, None, data, None, None)
        loss.backward()
        opt.step()
        model.post_parameter_update()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
        print(f"pykeen batch {i}: {times[-1]:.2f}s", file=sys.stderr, flush=True)
    spb = sum(times) / len(times)
    n_batches = math.ceil(tf.num_triples / batch)
    return {"dim": dim, "batch": batch, "timed_batches": len(times), "seconds_per_batch": spb,
            "batch_seconds": times, "losses": losses, "create_inverse_triples": tf.create_inverse_triples,
            "num_triples": tf.num_triples, "batches_per_epoch": n_batches,
            "seconds_per_epoch_extrapolated": spb * n_batches, "setup_s": setup_s,
            "loss": type(model.loss).__name__, "params": sum(p.numel() for p in model.parameters()),
            "decomposition": type(getattr(model.entity_representations[0].layers[0], "weight", None)).__name__,
            "torch_threads": torch.get_num_threads()}
