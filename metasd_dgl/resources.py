"""Files shipped with metasd-dgl: the experiment configs, the toy dataset, the benchmark archives.

They live in the repository's top-level folders, ``pipelines/configs/*.yaml``
and ``datasets/`` (``README.md``, ``toy/*.txt``, ``kg/``: the published
benchmark archives).  A built wheel or sdist
install carries copies inside the package, ``metasd_dgl/_shipped/configs`` and
``metasd_dgl/_shipped/datasets`` (``setup.py``'s ``build_py`` writes them);
a checkout or an editable install reads the repository folders.  The packaged
copy wins when both exist.  A package carries only the small benchmark archives
(``SHIPPED_ARCHIVES``); a checkout holds all six in ``datasets/kg``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_PACKAGE = "metasd_dgl"
_SHIPPED = "_shipped"
#: (name inside ``_shipped``, folder in a checkout relative to the repository root)
_LAYOUT = {"configs": Path("pipelines") / "configs", "datasets": Path("datasets")}
_DEFAULT_CONFIG = "umls_metasd.yaml"
#: The benchmark archives a built package carries (``datasets/kg/``); FB15k-237 and WN18RR
#: (4.5 MB together) stay in the repository so that ``pip install`` stays small.
SHIPPED_ARCHIVES = ("nations.tar.gz", "kinship.tar.gz", "umls.tar.gz", "codex-s.tar.gz")


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


def archive_dirs() -> list[Path]:
    """Folders holding vendored benchmark archives (``<name>.tar.gz`` and ``SHA256SUMS``), packaged
    copy first: ``_shipped/datasets/kg`` in an installed package, ``datasets/kg`` in a checkout."""
    found = [Path(str(resources.files(_PACKAGE) / _SHIPPED / "datasets" / "kg"))]
    root = _checkout_root()
    if root is not None:
        found.append(root / _LAYOUT["datasets"] / "kg")
    return [folder for folder in found if folder.is_dir()]
