"""The training loop's step on one model, for the tests: ``Steps``, a meta optimiser, ``run_step``."""
from __future__ import annotations

import torch

from metasd_dgl.config import Config
from metasd_dgl.optimizers import OPTIMIZERS
from metasd_dgl.train.closed_form import CLOSED_FORM
from metasd_dgl.train.loop import run_step
from metasd_dgl.train.spec import StepSpec
from metasd_dgl.train.steps import Steps


class Stepper:
    """``cfg.train.method``'s step on ``model``: SGD at ``sgd_lr`` / ``meta_lr`` (0: the configured
    optimisers), losses from ``backend`` (``losses.AUTOGRAD`` is the reference)."""

    def __init__(self, model, cfg: Config, sgd_lr: float = 0.0, meta_lr: float = 1e-2, backend=CLOSED_FORM) -> None:
        weights = list(model.parameters())
        if sgd_lr:
            opt, self.meta = torch.optim.SGD(weights, lr=sgd_lr), torch.optim.SGD(weights, lr=meta_lr)
        else:
            opt = OPTIMIZERS[cfg.train.optimizer](weights, lr=cfg.train.lr)
            self.meta = OPTIMIZERS[cfg.metasd.meta_optimizer](weights, lr=cfg.metasd.meta_lr)
        self.steps, self.method = Steps(model, opt, StepSpec.from_config(cfg), backend), cfg.train.method
        self.spec, self.reg_kind, self.losses = self.steps.spec, self.steps.reg_kind, self.steps.losses

    def step(self, batch, student=None, quiz=None, graph=None, do_meta: bool = True) -> dict:
        return run_step(self.method, self.steps, batch, student, graph, quiz=quiz, meta_optimizer=self.meta,
                        do_meta=do_meta)
