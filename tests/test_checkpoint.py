import os
import pickle

import pytest
import torch

from metasd_dgl.store.checkpoint import load_checkpoint, save_checkpoint
from metasd_dgl.errors import CheckpointError


def test_roundtrip_and_no_temp_left(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "rng": torch.Generator().get_state()}
    p = save_checkpoint(state, tmp_path / "c" / "last.pt")
    back = load_checkpoint(p)
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], state["model"]["w"])
    assert os.listdir(tmp_path / "c") == ["last.pt"]


class Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    torch.save({"format": "metasd-dgl-checkpoint/1", "x": Boom()}, bad)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(bad)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_truncated_and_foreign_files(tmp_path):
    p = save_checkpoint({"a": torch.ones(1000)}, tmp_path / "ok.pt")
    data = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a metasd-dgl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
