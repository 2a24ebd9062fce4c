"""Experiment trackers: the metrics records of a run, as scalars, somewhere else.

``make_tracker("tensorboard", run_dir)`` writes ``RUN_DIR/tensorboard/events.*``
through ``torch.utils.tensorboard`` (package ``tensorboard``, the ``test``
extra): per epoch ``train/<loss>``, ``train/kept_fraction`` and
``train/seconds_per_epoch``; per validation ``valid/<teacher|student>_mrr``.
The x axis is the epoch.  ``"none"`` tracks nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from metasd_dgl.errors import UserError

TRACKERS = ("none", "tensorboard")


class TensorBoardTracker:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("runtime.tracker=tensorboard needs the tensorboard package "
                            "(pip install tensorboard, or the [test] extra)") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        if isinstance(record.get("valid"), dict):
            for name, m in record["valid"].items():
                self.writer.add_scalar(f"valid/{name}_mrr", float(m["mrr"]), epoch)
        else:
            for key, value in record.items():
                if key in ("epoch", "step", "seconds", "density") or not isinstance(value, (int, float)):
                    continue
                self.writer.add_scalar(f"train/{key}", float(value), epoch)
            if "density" in record:
                self.writer.add_scalar("train/kept_fraction", float(record["density"]), epoch)
            if "seconds" in record:
                self.writer.add_scalar("train/seconds_per_epoch", float(record["seconds"]), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_tracker(name: str, run_dir: Path) -> Optional[TensorBoardTracker]:
    """-> a tracker with ``log(record)`` and ``close()``, or None for ``"none"``."""
    if name == "none":
        return None
    if name == "tensorboard":
        return TensorBoardTracker(Path(run_dir) / "tensorboard")
    raise UserError(f"runtime.tracker={name!r} is not one of {', '.join(TRACKERS)}")
