"""Shared fixtures: the benchmark data folder and tiny hand-written graphs."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("DGLBACKEND", "pytorch")

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Folder with the published archives (FB15k-237.tar.gz, umls.tar.gz, ...).

    METASD_DATA_DIR wins; otherwise ../shared/data/kg beside the checkout.
    """
    return Path(os.environ.get("METASD_DATA_DIR", REPO.parent / "shared" / "data" / "kg"))


@pytest.fixture(scope="session")
def kg_dir() -> Path:
    path = data_dir()
    if not (path / "umls.tar.gz").exists():
        pytest.fail(f"benchmark data not found in {path}; set METASD_DATA_DIR")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use tiny tensors: one thread avoids OpenMP spin-waits on a busy 2-core machine."""
    import torch

    torch.set_num_threads(1)
