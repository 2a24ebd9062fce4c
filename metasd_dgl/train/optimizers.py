"""Optimiser names -> torch optimisers (``train.optimizer``, ``metasd.meta_optimizer``, the own student's).

``make_optimizer`` is the one place an optimiser is created; each is stepped by the training method
that owns it (``Method.apply``, ``train/base.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def make_optimizer(name: str, params: Sequence[Tensor], lr: float) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name]`` over ``params`` at learning rate ``lr``."""
    return OPTIMIZERS[name](list(params), lr=lr)
