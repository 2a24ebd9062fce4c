"""metasd-dgl: link prediction on DGL with MetaSD self-distillation and pruning.

Importing the package has no side effects; the CLI's entry point sets the
process-wide environment (``runtime.configure_environment``).
"""

__version__ = "0.1.0"

#: Python API (``metasd_dgl/api.py``), imported on first use so that ``import metasd_dgl`` stays cheap.
_API = ("pipeline", "load_run", "PipelineResult", "LoadedRun")


def __getattr__(name: str):
    if name in _API:
        from metasd_dgl import api

        return getattr(api, name)
    raise AttributeError(f"module 'metasd_dgl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
