"""Process-wide settings, applied only by an entry point (the CLI, ``train``), never at import.

* ``configure_environment`` -- environment variables that must be set before
  torch or DGL load: ``DGLBACKEND=pytorch`` (DGL picks its tensor backend from
  it) and ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP workers that spin while waiting
  make small tensor ops 10-30x slower on a busy 2-core machine).  An explicit
  user setting wins.  The CLI calls it first thing.
* ``configure_threads`` -- ``torch.set_num_threads`` (0 = torch's default).
* ``tune_malloc`` -- keep large freed blocks in glibc's heap (see below).
"""
from __future__ import annotations

import ctypes
import os

_MALLOC_TUNED = False


def configure_environment() -> None:
    """Set ``DGLBACKEND`` and ``OMP_WAIT_POLICY`` unless the user has."""
    os.environ.setdefault("DGLBACKEND", "pytorch")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads(num_threads: int) -> None:
    """``torch.set_num_threads(num_threads)``; 0 leaves torch's default."""
    if num_threads:
        import torch

        torch.set_num_threads(num_threads)


def tune_malloc(threshold_bytes: int = 1 << 30) -> bool:
    """Keep large freed blocks in glibc's heap instead of unmapping them.

    Each ``(b, N)`` temporary is ~58 MB at FB15k-237 sizes; by default glibc
    serves such blocks with ``mmap`` and returns them on free, so every new
    temporary pays ~14k page faults (measured: a 58 MB ``exp`` 130 ms ->
    40 ms).  Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` lets the
    blocks be reused.  Process-wide, idempotent; returns False where glibc is
    not available (then nothing changes).  Applied by every training run (``train.loop.train``).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, int(min(threshold_bytes, 1 << 30))) == 1
        ok = ok and libc.mallopt(m_trim_threshold, int(min(2 * threshold_bytes, (1 << 31) - 1))) == 1
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = ok
    return ok


def cpu_budget_spent(cpu_minutes: float, cpu_seconds: float) -> bool:
    """Whether training steps that used ``cpu_seconds`` have spent ``budget.cpu_minutes`` (0 = no budget)."""
    return bool(cpu_minutes) and cpu_seconds >= 60 * cpu_minutes
