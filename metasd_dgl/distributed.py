"""Data-parallel training across processes (``torchrun``), gloo on CPU, nccl on GPU.

Every process holds the whole model, takes its share of each batch
(``batch[rank::world]``), and averages gradients with one all-reduce before
every optimiser step (main and meta), weighted by the rows of each share, so the weights stay identical on every
rank: the same arithmetic as ``DistributedDataParallel``, done explicitly
because the MetaSD steps run the model functionally (``functional_call``),
which DDP's module wrapper cannot see.  Rank 0 alone writes files.

    torchrun --nproc_per_node 2 -m metasd_dgl.cli train --dataset umls ...
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 \\
        --nproc_per_node 1 -m metasd_dgl.cli train ...      # on each node, node_rank 0/1
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def average_gradients(params: Iterable[torch.Tensor], rows: int = 1) -> None:
    """Mean of ``p.grad`` over ranks, weighted by each rank's batch ``rows``, in place, one all-reduce.

    Each rank's gradients are batch means over its own rows, so the mean over
    the whole batch is ``sum_r rows_r * g_r / sum_r rows_r``; a rank whose
    share of a short last batch is empty (``rows = 0``, zero gradients)
    contributes nothing.  Parameters whose grad is None are skipped (that is
    structural, the same on every rank).
    """
    info = current()
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) * rows for g in grads] + [grads[0].new_full((1,), float(rows))])
    dist.all_reduce(flat)
    total = float(flat[-1])
    flat /= max(total, 1.0)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
