"""Under torchrun, shards of unequal size (one empty) average to the whole batch's gradient.

Two ranks are simulated by two threads in this process: ``distributed.current`` tells each thread
its rank, and ``all_reduce`` sums the threads' tensors behind a barrier (no process group, no
port, no timing).
"""
from __future__ import annotations

import copy
import threading

import pytest
import torch

from metasd_dgl import distributed
from metasd_dgl.config import Config, apply_overrides
from metasd_dgl.model import build_model
from metasd_dgl.pruning import compute_masks, prunable_params
from metasd_dgl.student import MaskedStudent
from step_helpers import Stepper

N, R = 7, 2


class TwoRanks:
    """A fake two-rank group: each thread is a rank; all_reduce sums over threads."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.barrier = threading.Barrier(2, timeout=60)
        self.buffers: dict[int, torch.Tensor] = {}
        self.calls = 0

    def current(self) -> distributed.DistInfo:
        return distributed.DistInfo(self.local.rank, 2)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.buffers[self.local.rank] = tensor.clone()
        self.barrier.wait()
        total = self.buffers[0] + self.buffers[1]  # both ranks see the same sizes, or this fails
        self.barrier.wait()
        tensor.copy_(total)
        self.calls += 1


def _setup(method: str):
    gen = torch.Generator().manual_seed(0)
    model = build_model("kge", "complex", N, R, 3, init_scale=0.5, generator=gen).to(torch.float64)
    batch = torch.stack([torch.randint(0, N, (5,), generator=gen), torch.randint(0, 2 * R, (5,), generator=gen),
                         torch.randint(0, N, (5,), generator=gen)], 1)
    cfg = apply_overrides(Config(), {"train": {"method": method}})
    return model, batch, batch[:2].clone(), cfg


def _step(model, cfg, batch, quiz):
    st = Stepper(model, cfg, sgd_lr=0.5, meta_lr=0.1)
    student = MaskedStudent(compute_masks(prunable_params(model), 0.5), dict(model.named_parameters()))
    return st.step(batch, student, quiz)


@pytest.mark.parametrize("method", ["kd", "metasd"])
def test_an_empty_shard_leaves_the_average_of_the_whole_batch(monkeypatch, method):
    group = TwoRanks()
    monkeypatch.setattr(distributed, "current", group.current)
    monkeypatch.setattr(distributed.dist, "all_reduce", group.all_reduce)
    model, batch, quiz, cfg = _setup(method)
    single = copy.deepcopy(model)
    with monkeypatch.context() as m:  # the single-process reference: one rank of one
        m.setattr(distributed, "current", lambda: distributed.DistInfo(0, 1))
        _step(single, cfg, batch, quiz)
    models = [copy.deepcopy(model), copy.deepcopy(model)]
    errors: list = []

    def rank(r: int) -> None:
        group.local.rank = r
        try:
            _step(models[r], cfg, batch if r == 0 else batch[:0], quiz)  # rank 1's share is empty
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert group.calls >= 2  # one all-reduce per optimiser step, on both ranks
    for r in range(2):
        for (n, p), q in zip(single.named_parameters(), models[r].parameters()):
            torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
