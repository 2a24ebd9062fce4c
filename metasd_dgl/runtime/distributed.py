"""Data-parallel training across processes (``torchrun``), gloo on CPU, nccl on GPU.

Every process holds the whole model, takes its share of each batch
(``batch[rank::world]``), and averages gradients with one all-reduce before
every optimiser step (main and meta), weighted by the queries of each share, so the weights stay identical on every
rank: the same arithmetic as ``DistributedDataParallel``, done explicitly
because the MetaSD steps run the model functionally (``functional_call``),
which DDP's module wrapper cannot see.  Rank 0 alone writes files.

    torchrun --nproc_per_node 2 -m metasd_dgl.cli train --dataset umls ...
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 \\
        --nproc_per_node 1 -m metasd_dgl.cli train ...      # on each node, node_rank 0/1

Devices: under torchrun every process gets the same command line, so
``--device cuda`` means "this rank's GPU", ``cuda:LOCAL_RANK`` (``rank_device``);
an explicit ``cuda:N`` with WORLD_SIZE > 1 would put every rank of the node on
GPU N (nccl refuses duplicate GPUs) and is an error; pin GPUs with
``CUDA_VISIBLE_DEVICES`` instead.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
import torch.distributed as dist

from metasd_dgl.errors import DeviceError


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


def rank_device(requested: str, env: Mapping[str, str]) -> str:
    """The device this process should use: ``requested`` ('cpu', 'cuda', 'cuda:N'), given torchrun's env.

    Single process (WORLD_SIZE unset or 1): ``requested`` unchanged.  Under
    torchrun: 'cuda' -> ``f"cuda:{LOCAL_RANK}"``; 'cuda:N' -> DeviceError (every
    rank would share GPU N); 'cpu' unchanged.  Pure: no torch or CUDA calls
    (``device.resolve_device`` checks the result against the visible GPUs).
    """
    world = int(env.get("WORLD_SIZE", "1") or 1)
    text = str(requested).strip().lower()
    if world <= 1 or not text.startswith("cuda"):
        return requested
    if re.fullmatch(r"cuda:\d+", text):
        raise DeviceError(f"--device {requested} under torchrun (WORLD_SIZE={world}) would put every rank on "
                          f"the same GPU; use --device cuda (rank r takes cuda:LOCAL_RANK) and select GPUs "
                          f"with CUDA_VISIBLE_DEVICES")
    return f"cuda:{int(env.get('LOCAL_RANK', '0') or 0)}" if text == "cuda" else requested


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)  # cuda:LOCAL_RANK, from rank_device
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def average_gradients(params: Iterable[torch.Tensor], count: int = 1) -> None:
    """Mean of ``p.grad`` over ranks, weighted by each rank's ``count`` of batch queries, in place, one all-reduce.

    Each rank's gradients are batch means over its own queries, so the mean over
    the whole batch is ``sum_r count_r * g_r / sum_r count_r``; a rank whose
    share of a short last batch is empty (``count = 0``, zero gradients)
    contributes nothing.  Parameters whose grad is None are skipped (that is
    structural, the same on every rank).
    """
    info = current()
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) * count for g in grads] + [grads[0].new_full((1,), float(count))])
    dist.all_reduce(flat)
    total = float(flat[-1])
    flat /= max(total, 1.0)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
