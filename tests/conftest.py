"""Shared fixtures: the benchmark data folder and tiny hand-written graphs."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("DGLBACKEND", "pytorch")

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Folder with the published archives (FB15k-237.tar.gz, umls.tar.gz, ...).

    METASD_DATA_DIR wins; otherwise the repository's own copy, datasets/kg.
    """
    env = os.environ.get("METASD_DATA_DIR")
    return Path(env) if env else REPO / "datasets" / "kg"


@pytest.fixture(scope="session")
def kg_dir() -> Path:
    path = data_dir()
    if not (path / "umls.tar.gz").exists():
        pytest.fail(f"benchmark data not found in {path} (METASD_DATA_DIR, else datasets/kg)")
    return path


@pytest.fixture
def no_vendored(monkeypatch):
    """Built-in names resolve past the repository's datasets/kg (to pykeen, the cache, a download)."""
    from metasd_dgl.data import registry

    monkeypatch.delenv("METASD_DATA_DIR", raising=False)
    monkeypatch.setattr(registry, "vendored_dirs", lambda: [])


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors: one thread avoids OpenMP spin-waits on a busy 2-core machine."""
    import torch

    torch.set_num_threads(1)
