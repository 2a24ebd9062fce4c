"""One checkpoint format, written atomically and loaded without unpickling code.

A checkpoint is a ``torch.save`` of plain containers (dicts, lists, numbers,
strings, tensors): model and optimiser states, masks, counters, RNG states,
the resolved config and the dataset's fingerprint.  It is written to a
temporary file in the same folder, fsynced, then renamed over the target, so
a crash never leaves a half-written checkpoint under the real name
(``metasd_dgl.store.atomic.write_with``; a full disk is one line naming the file).  Loading
uses ``torch.load(weights_only=True)``, which refuses arbitrary pickled
objects (a malicious file raises instead of running code).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from metasd_dgl.store.atomic import write_with
from metasd_dgl.errors import CheckpointError

FORMAT = "metasd-dgl-checkpoint/1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``state`` (plain containers and tensors) to ``path``.

    A failed write (full disk, file-size limit, read-only folder) raises a
    ``WriteError`` naming ``path`` and the cause; the previous checkpoint is
    kept and the temporary file removed (``metasd_dgl.store.atomic``).
    """
    path = Path(path)
    return write_with(path, lambda fh: torch.save({"format": FORMAT, **state}, fh),
                      "could not write checkpoint")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; raise CheckpointError for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            "(unsafe pickle); nothing in it was run") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse means a damaged file
        raise CheckpointError(
            f"{path}: corrupted or truncated checkpoint, or not a checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a metasd-dgl checkpoint")
    return state
