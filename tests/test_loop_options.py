"""Training-loop options end to end on the toy graph: the batch cap and whole-coordinate masks."""
import json

import torch

from metasd_dgl.checkpoint import load_checkpoint
from metasd_dgl.cli import main

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
TOY = str(REPO / "datasets" / "toy")


def _epochs(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "seconds" in r]


def test_batches_per_epoch_caps_each_epoch(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "2", "--dim", "4",
                 "--batch-size", "2", "--set", "train.batches_per_epoch=3"]) == 0
    assert [r["step"] for r in _epochs(run)] == [3, 6]


def test_dimension_masks_train_and_evaluate(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "2", "--dim", "10",
                 "--method", "metasd", "--batch-size", "4", "--set", "metasd.prune_structure=dimension",
                 "--set", "metasd.quiz_fraction=0.2", "--set", "metasd.prune_rate=0.8"]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    masks = state["masks"]
    kept = None
    for name, m in masks.items():
        cols = m.all(0)
        assert torch.equal(m, cols.expand_as(m))  # whole columns
        coords = set((torch.nonzero(cols).flatten() % 10).tolist())
        assert len(coords) == 2  # round(0.2 * 10) coordinates, real and imaginary parts together
        kept = coords if kept is None else kept
        assert coords == kept  # the same coordinates in every table
    assert main(["evaluate", str(run), "--no-plots"]) == 0  # teacher and true student
