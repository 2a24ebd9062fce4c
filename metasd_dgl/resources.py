"""Files shipped with metasd-dgl: the experiment configs and the toy dataset.

They live in the repository's top-level folders, ``pipelines/configs/*.yaml``
and ``datasets/`` (``README.md``, ``toy/*.txt``).  A built wheel or sdist
install carries copies inside the package, ``metasd_dgl/_shipped/configs`` and
``metasd_dgl/_shipped/datasets`` (``setup.py``'s ``build_py`` writes them);
a checkout or an editable install reads the repository folders.  The packaged
copy wins when both exist.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_PACKAGE = "metasd_dgl"
_SHIPPED = "_shipped"
#: (name inside ``_shipped``, folder in a checkout relative to the repository root)
_LAYOUT = {"configs": Path("pipelines") / "configs", "datasets": Path("datasets")}
_DEFAULT_CONFIG = "umls_metasd.yaml"


def _checkout_root() -> Path | None:
    """The repository root when this package is imported from a checkout, else None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "setup.py").is_file() and (root / _LAYOUT["configs"]).is_dir() else None


def shipped_dir(name: str) -> Path:
    """Folder of shipped files ``name`` (``configs`` | ``datasets``); FileNotFoundError if absent."""
    if name not in _LAYOUT:
        raise KeyError(f"unknown shipped folder {name!r}; known: {', '.join(_LAYOUT)}")
    packaged = Path(str(resources.files(_PACKAGE) / _SHIPPED / name))
    if packaged.is_dir():
        return packaged
    root = _checkout_root()
    if root is not None:
        return root / _LAYOUT[name]
    raise FileNotFoundError(f"{packaged}: shipped files missing; reinstall metasd-dgl")


def config_dir() -> Path:
    """The experiment configs (``*.yaml``, short overrides of ``metasd_dgl.config``'s defaults)."""
    return shipped_dir("configs")


def default_config_path() -> Path:
    """The embedded default: ComplEx + MetaSD on UMLS, CPU-sized."""
    return config_dir() / _DEFAULT_CONFIG


def toy_dataset_dir() -> Path:
    """The hand-written toy dataset (``train/valid/test.txt``, see ``datasets/README.md``)."""
    return shipped_dir("datasets") / "toy"
