"""metasd-dgl: link prediction on DGL with MetaSD self-distillation and pruning."""
import os as _os

# DGL picks its tensor backend from this variable; this package is PyTorch only.
_os.environ.setdefault("DGLBACKEND", "pytorch")

__version__ = "0.1.0"
