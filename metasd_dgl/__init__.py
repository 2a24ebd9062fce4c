"""metasd-dgl: link prediction on DGL with MetaSD self-distillation and pruning."""
import os as _os

# DGL picks its tensor backend from this variable; this package is PyTorch only.
_os.environ.setdefault("DGLBACKEND", "pytorch")
# OpenMP workers that spin while waiting make small tensor ops 10-30x slower on
# a busy 2-core machine; passive waiting costs little elsewhere.  Set before
# torch loads its OpenMP runtime; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: Python API (``metasd_dgl/api.py``), imported on first use so that ``import metasd_dgl`` stays cheap.
_API = ("pipeline", "load_run", "PipelineResult", "LoadedRun")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'metasd_dgl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
