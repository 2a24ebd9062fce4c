"""metasd-dgl: link prediction on DGL with MetaSD self-distillation and pruning.

Importing the package has no side effects; the CLI's entry point sets the
process-wide environment (``runtime.configure_environment``).
"""

__version__ = "0.1.0"
