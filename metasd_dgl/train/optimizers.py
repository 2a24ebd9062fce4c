"""Optimiser names -> torch optimisers (``train.optimizer``, ``metasd.meta_optimizer``, the own student's)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import torch
from torch import Tensor

from metasd_dgl.runtime.distributed import average_gradients

if TYPE_CHECKING:
    from metasd_dgl.config import MetaSDConfig, TrainConfig

OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def make_optimizers(params: Sequence[Tensor], train: "TrainConfig",
                    metasd: "MetaSDConfig") -> Tuple[torch.optim.Optimizer, Optional[torch.optim.Optimizer]]:
    """The main optimiser (``train.optimizer`` at ``train.lr``) over ``params`` and, for method metasd,
    the meta optimiser (``metasd.meta_optimizer`` at ``metasd.meta_lr``) over the same weights."""
    params = list(params)
    main = OPTIMIZERS[train.optimizer](params, lr=train.lr)
    meta = OPTIMIZERS[metasd.meta_optimizer](params, lr=metasd.meta_lr) if train.method == "metasd" else None
    return main, meta


def apply_gradients(opt: torch.optim.Optimizer, params: Sequence[Tensor], grads: Sequence[Optional[Tensor]],
                    rows: int, clip: float = 0.0) -> float:
    """The one update path: set ``grads`` on ``params`` (in order; ``None`` = no gradient), average
    them over ranks (``rows``: this process's batch rows, their weight under torchrun), clip their
    joint norm to ``clip`` (0 = off), step ``opt``; returns the norm before clipping."""
    leaves = []
    for p, g in zip(params, grads):
        p.grad = g
        if g is not None:
            leaves.append(p)
    average_gradients(leaves, rows)  # no-op unless running under torchrun
    norms = [torch.linalg.vector_norm(p.grad) for p in leaves]
    norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
    if clip > 0 and norm > clip:
        for p in leaves:
            p.grad.mul_(clip / (norm + 1e-6))
    opt.step()
    for p in leaves:
        p.grad = None
    return norm
