"""A NaN/Inf loss stops the run with a clear message and keeps the last good checkpoint."""
import torch

from metasd_dgl.checkpoint import load_checkpoint
from metasd_dgl.cli import main

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_exploding_run_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--quiet", "--dataset", str(REPO / "datasets" / "toy"), "--run-dir", str(run),
                 "--epochs", "5", "--lr", "1e30", "--dim", "4", "--set", "model.init_scale=10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite" in err and "last good checkpoint" in err and "Traceback" not in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_grad_clip_bounds_the_update(tmp_path):
    """With clipping, the same explosive learning rate moves weights by a bounded step (Adagrad's
    first step is lr * g / |g| per coordinate, so clipping only matters for SGD-like optimisers;
    here we check that the option is applied without error and training stays finite with Adam)."""
    run = tmp_path / "run"
    code = main(["train", "--quiet", "--dataset", str(REPO / "datasets" / "toy"), "--run-dir", str(run),
                 "--epochs", "2", "--dim", "4", "--set", "train.grad_clip=0.5", "--set", "train.optimizer=adam",
                 "--lr", "0.01"])
    assert code == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())
