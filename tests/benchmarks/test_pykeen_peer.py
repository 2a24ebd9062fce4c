"""The CPU budget of the PyKEEN peer (benchmarks/pykeen_peer.py): training stops after the batch that
spends it, counted on a fake clock (each batch costs 10 CPU seconds), so the test is exact."""
import importlib.util
import sys
import time as real_time

import pytest
import torch

from run_helpers import REPO

pytest.importorskip("pykeen")


def _peer():
    spec = importlib.util.spec_from_file_location("pykeen_peer_under_test", REPO / "benchmarks" / "pykeen_peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Clock:
    """``time`` with a ``process_time`` that moves 10 s at each reading (one reading per batch start)."""

    def __init__(self) -> None:
        self.now = 0.0

    def process_time(self) -> float:
        self.now += 10.0
        return self.now

    def __getattr__(self, name):
        return getattr(real_time, name)


def test_pykeen_training_stops_at_the_cpu_budget(monkeypatch):
    peer = _peer()
    monkeypatch.setattr(peer, "time", _Clock())
    gen = torch.Generator().manual_seed(0)
    n_ent, n_rel, d = 12, 2, 4
    train = torch.stack([torch.randint(n_ent, (200,), generator=gen), torch.randint(n_rel, (200,), generator=gen),
                         torch.randint(n_ent, (200,), generator=gen)], 1)
    init = {"entity": 0.1 * torch.randn(n_ent, 2 * d, generator=gen),
            "relation": 0.1 * torch.randn(2 * n_rel, 2 * d, generator=gen)}
    job = dict(run="pykeen-1n", dim=d, epochs=100, batch=40, lr=0.1, regularizer="none", reg_weight=0.0, seed=0,
               cpu_minutes=1.0)  # 400 queries / 40 = 10 batches an epoch; 60 s = 6 batches of 10 s
    model, out = peer.train_complex(job, train, [f"e{i}" for i in range(n_ent)], [f"r{i}" for i in range(n_rel)], init)
    assert out["steps"] == 6 and out["cpu_seconds"] == 60.0
    assert out["epoch_seconds"] == []  # stopped inside the first epoch
    without = dict(job, cpu_minutes=0.0, epochs=1)
    _, out = peer.train_complex(without, train, [f"e{i}" for i in range(n_ent)], [f"r{i}" for i in range(n_rel)], init)
    assert len(out["epoch_seconds"]) == 1 and out["steps"] == 9  # no budget: the whole epoch (last batch unread)
