"""Under torchrun, shards of unequal size (one empty) average to the whole batch's gradient."""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metasd_dgl.config import Config, apply_overrides
from metasd_dgl.model import build_model
from metasd_dgl.pruning import compute_masks, prunable_params
from metasd_dgl.student import MaskedStudent
from metasd_dgl.train.spec import StepSpec
from metasd_dgl.train.steps import Stepper

N, R = 7, 2


def _setup(method: str):
    gen = torch.Generator().manual_seed(0)
    model = build_model("kge", "complex", N, R, 3, init_scale=0.5, generator=gen).to(torch.float64)
    batch = torch.stack([torch.randint(0, N, (5,), generator=gen), torch.randint(0, 2 * R, (5,), generator=gen),
                         torch.randint(0, N, (5,), generator=gen)], 1)
    quiz = batch[:2].clone()
    cfg = apply_overrides(Config(), {"train": {"method": method}})
    return model, batch, quiz, cfg


def _step(model, cfg, batch, quiz):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    meta = torch.optim.SGD(model.parameters(), lr=0.1) if cfg.train.method == "metasd" else None
    st = Stepper(model, opt, meta, StepSpec.from_config(cfg))
    student = MaskedStudent(compute_masks(prunable_params(model), 0.5), dict(model.named_parameters()))
    return st.step(batch, student, quiz)


def _worker(rank: int, store: str, method: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model, batch, quiz, cfg = _setup(method)
        shard = batch if rank == 0 else batch[:0]  # rank 1's share is empty
        _step(model, cfg, shard, quiz)
        if rank == 0:
            torch.save({n: p.detach() for n, p in model.named_parameters()}, out)
    finally:
        dist.destroy_process_group()


def _run(tmp_path, method: str) -> None:
    model, batch, quiz, cfg = _setup(method)
    single = copy.deepcopy(model)
    _step(single, cfg, batch, quiz)
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(str(tmp_path / "store"), method, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    for n, p in single.named_parameters():
        torch.testing.assert_close(got[n], p.detach(), rtol=1e-12, atol=1e-14)


def test_an_empty_shard_leaves_the_average_of_the_whole_batch(tmp_path):
    _run(tmp_path, "kd")


def test_an_empty_shard_in_a_metasd_step(tmp_path):
    _run(tmp_path, "metasd")
