"""The one place DGL is imported: lazily, when a graph is first needed.

Only the R-GCN encoder, negative sampling (DGL's uniform sampler), the
triple-classification negatives and ``graph.bin`` need DGL.  The lookup
(KGE) encoder trained 1-N -- the paper's setting -- preprocesses, trains,
evaluates, exports and predicts without it, so ``import metasd_dgl`` and
that path work on a machine whose torch is newer than DGL's last Linux wheel
(DGL 2.1.0 pins ``torch<=2.2.1``).

* ``require_dgl(purpose)`` -- the ``dgl`` module, or ``DGLUnavailableError``
  (a ``UserError``: the CLI prints one ``error:`` line and exits 2) saying
  what needed it and what to install.  ``DGLBACKEND=pytorch`` is set
  (``setdefault``) just before the import, as DGL reads it then.
* ``dgl`` -- a stand-in for the module for files that use DGL throughout
  (``graph/build.py``, ``graph/sampling.py``, ``encoders/rgcn.py``): any
  attribute access calls ``require_dgl()``, so importing such a file costs
  nothing and a missing DGL surfaces at the first use.
"""
from __future__ import annotations

import importlib
import os
import re
from types import ModuleType
from typing import Any

from metasd_dgl.errors import UserError

#: DGL's last PyPI Linux wheel and the newest torch it supports.
DGL_WHEEL_VERSION = "2.1.0"
DGL_WHEEL_MAX_TORCH = "2.2.1"


class DGLUnavailableError(UserError):
    """DGL is needed (graph work) but is not installed or does not load with this torch."""


def install_hint() -> str:
    """What to install for DGL, given the installed torch version."""
    import torch

    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    minor = f"{match.group(1)}.{match.group(2)}" if match else "2.2"
    return (f"install DGL: pip install dgl=={DGL_WHEEL_VERSION} (needs torch<={DGL_WHEEL_MAX_TORCH}; "
            f"this torch is {torch.__version__}), or for another torch DGL's wheel index: "
            f"pip install dgl -f https://data.dgl.ai/wheels/torch-{minor}/repo.html")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def require_dgl(purpose: str = "graph work (R-GCN encoder, negative sampling, graph.bin)") -> ModuleType:
    """Import and return ``dgl``; DGLUnavailableError naming ``purpose`` if it is missing or broken."""
    os.environ.setdefault("DGLBACKEND", "pytorch")
    try:
        return importlib.import_module("dgl")
    except Exception as exc:  # ImportError if absent; OSError/FileNotFoundError etc. if built for another torch
        raise DGLUnavailableError(
            f"{purpose} needs DGL, which cannot be imported here ({_first_line(exc)}); {install_hint()}"
        ) from None


def dgl_available() -> bool:
    """True if ``require_dgl`` would succeed."""
    try:
        require_dgl()
    except DGLUnavailableError:
        return False
    return True


class _LazyDGL:
    """Module stand-in: ``dgl.X`` imports DGL (``require_dgl``) and returns ``dgl.X``."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__version__":  # copy/pickle/inspect probes: no import
            raise AttributeError(name)
        return getattr(require_dgl(), name)

    def __repr__(self) -> str:
        return "<lazy module 'dgl'>"


dgl: Any = _LazyDGL()
