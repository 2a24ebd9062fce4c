"""Runs on the toy dataset through the CLI, for the tests: the repository's paths, tiny sizes, a training
run, and an interruption after the first epoch."""
from __future__ import annotations

import json
import signal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "datasets" / "toy")
#: ``--set`` options for a run of one epoch at tiny sizes.
TINY = ["--set", "train.epochs=1", "--set", "model.dim=4", "--set", "train.batch_size=8",
        "--set", "valid.every=1"]


def train_toy(run, *extra):
    """``metasd-dgl train`` on the toy dataset (dim 4, batch 4, validating every epoch, no early stop) with
    the ``extra`` arguments; the rows of its metrics.jsonl."""
    from metasd_dgl.cli import main

    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--dim", "4", "--batch-size", "4",
            "--set", "valid.every=1", "--set", "valid.patience=0", *extra]
    assert main(args) == 0
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def interrupt_after_first_epoch(monkeypatch):
    """The Trainer stops after its first epoch as on SIGTERM (patched through ``monkeypatch``)."""
    from metasd_dgl.train import loop

    real = loop.Trainer._run_epoch

    def run_epoch(self):
        real(self)
        if self.state.epoch == 1:
            self._stop_signal = signal.SIGTERM  # what the SIGTERM handler sets

    monkeypatch.setattr(loop.Trainer, "_run_epoch", run_epoch)
