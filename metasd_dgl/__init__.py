"""metasd-dgl: link prediction on DGL with MetaSD self-distillation and pruning."""
import os as _os

# DGL picks its tensor backend from this variable; this package is PyTorch only.
_os.environ.setdefault("DGLBACKEND", "pytorch")
# OpenMP workers that spin while waiting make small tensor ops 10-30x slower on
# a busy 2-core machine; passive waiting costs little elsewhere.  Set before
# torch loads its OpenMP runtime; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
