"""``train.precision``: the arithmetic of a training step's score products.

* ``fp32`` -- float32 throughout (the default, and the only exact one on a GPU with TF32 off);
* ``tf32`` -- float32 tensors, matrix products on CUDA's TF32 tensor cores (10 mantissa bits in the
  products, float32 accumulation), for the whole training run's steps, forward and backward
  (``training``); validation inside the run is exact (``exact``); a CUDA mode only;
* ``bf16`` -- the score products (``decoder.score_all``, relation prediction) and their backward in
  bfloat16 under ``torch.autocast``, their outputs returned as float32.

Everything else stays float32 whatever the precision: the weights and the optimisers' state, the
losses and their closed-form gradients (on float32 score matrices), the regulariser, and evaluation
(``evaluation.rank_split`` never enters this context: ranks are exact in float32).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from metasd_dgl.errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """UserError (one line saying what to change) for a precision ``device`` cannot do."""
    if precision == "tf32" and device.type != "cuda":
        raise UserError(f"train.precision=tf32 is a CUDA matmul mode; on {device.type} use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"train.precision=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
                        "arithmetic; use fp32 (or tf32 where the GPU has it)")


@contextlib.contextmanager
def score_products(precision: str, device: torch.device) -> Iterator[None]:
    """The context a step's score products run in: bf16's autocast (its backward follows it); none
    for fp32 and tf32 (tf32 is set for the whole run, backward included: ``training``)."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def training(precision: str):
    """The context of a whole training run: TF32 matrix products for ``tf32``, nothing otherwise."""
    return _tf32(True) if precision == "tf32" else contextlib.nullcontext()


def exact():
    """Float32 matrix products inside a run (validation ranks exactly whatever the precision)."""
    return _tf32(False)
