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


class _FakeCPU:
    """``time.process_time`` of the loop module: every training step costs ``per_step`` CPU seconds."""

    def __init__(self, per_step: float) -> None:
        self.now, self.per_step, self.calls = 0.0, per_step, 0

    def process_time(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the second reading of a step
            self.now += self.per_step
        return self.now

    def __getattr__(self, name):  # perf_counter and the rest: the real module
        import time
        return getattr(time, name)


def test_cpu_budget_stops_mid_epoch_validates_and_resumes(tmp_path, monkeypatch):
    from metasd_dgl.train import loop

    fake = _FakeCPU(per_step=30.0)
    monkeypatch.setattr(loop, "time", fake)
    run = tmp_path / "run"
    # toy: 16 training triples -> 32 queries, batch 4 -> 8 batches an epoch; 30 CPU s a step, budget 5 min = 10 steps
    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "50", "--dim", "4",
            "--batch-size", "4", "--set", "train.valid_every=20", "--set", "train.cpu_minutes=5"]
    assert main(args) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "seconds" in r]
    steps_per_epoch = epochs[0]["step"]
    assert [r["step"] for r in epochs] == [steps_per_epoch, 10]  # the second epoch cut at the 10th step
    assert [r["epoch"] for r in rows if "valid" in r] == [2]  # validated although valid_every is 20
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert state["cpu_seconds"] == 300.0 and state["best_epoch"] == 2
    assert "CPU budget spent" in (run / "train.log").read_text()
    # a larger budget continues from the stored CPU time: 2 more minutes = 4 more steps
    assert main(["train", "--quiet", "--resume", str(run), "--set", "train.cpu_minutes=7"]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert state["step"] == 14 and state["cpu_seconds"] == 420.0


def _masks_by_epoch(run, epochs):
    return [load_checkpoint(run / "checkpoints" / f"epoch-{k}.pt")["masks"] for k in range(1, epochs + 1)]


def test_mask_epochs_keeps_the_mask_after_the_first_student_epochs(tmp_path):
    def masks(name, *extra):
        run = tmp_path / name
        assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "5", "--dim", "6",
                     "--method", "metasd", "--batch-size", "4", "--set", "metasd.quiz_fraction=0.2",
                     "--set", "train.keep_checkpoints=5", "--set", "train.lr=0.5", *extra]) == 0
        return _masks_by_epoch(run, 5)

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    every = masks("every")
    assert not all(same(every[0], m) for m in every[1:])  # recomputed each epoch, the mask moves here
    kept = masks("kept", "--set", "metasd.mask_epochs=2", "--set", "metasd.warmup_epochs=1")
    # warm-up epoch 1, student epochs 2-3 recompute it, epochs 4-5 keep the mask of epoch 3
    assert same(kept[2], kept[3]) and same(kept[3], kept[4])
    assert not same(kept[1], kept[2]) or not same(kept[0], kept[1])  # it was recomputed before


def test_a_run_resumed_after_its_budget_ran_out_mid_epoch_closes_that_epoch(tmp_path, monkeypatch):
    """Killed after the mid-epoch checkpoint of the step that spent the budget: the resume logs, validates
    and checkpoints the cut epoch (it does not stop with the epoch open)."""
    from metasd_dgl.train import loop

    monkeypatch.setattr(loop, "time", _FakeCPU(per_step=30.0))
    real_checkpoint = loop.Trainer.checkpoint

    def dies_after_step_10(self, name):
        path = real_checkpoint(self, name)
        if self.state.step == 10 and self.state.batch_in_epoch:
            raise KeyboardInterrupt("killed")  # stands in for SIGKILL right after the save
        return path

    run = tmp_path / "run"
    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "50", "--dim", "4",
            "--batch-size", "4", "--set", "train.valid_every=20", "--set", "train.cpu_minutes=5",
            "--set", "train.checkpoint_every=10"]
    monkeypatch.setattr(loop.Trainer, "checkpoint", dies_after_step_10)
    try:
        main(args)
    except KeyboardInterrupt:
        pass
    killed = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert killed["step"] == 10 and killed["batch_in_epoch"] > 0 and killed["epoch"] == 1  # inside epoch 2
    monkeypatch.setattr(loop.Trainer, "checkpoint", real_checkpoint)
    assert main(["train", "--quiet", "--resume", str(run)]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert (state["epoch"], state["batch_in_epoch"], state["step"], state["best_epoch"]) == (2, 0, 10, 2)
    from metasd_dgl.stages import run_status
    from metasd_dgl.config import from_dict
    cfg = from_dict(load_checkpoint(run / "checkpoints" / "last.pt")["config"])
    assert run_status(run, cfg)["finished"]  # a spent budget is a finished run


def test_a_checkpoint_older_than_an_option_counts_it_at_its_default(tmp_path):
    """A run folder written before ``train.cpu_minutes`` / ``metasd.mask_epochs`` existed is still finished
    for ``pipeline`` and resumable (the missing options are compared at their defaults)."""
    from metasd_dgl.config import from_dict
    from metasd_dgl.stages import run_status
    from metasd_dgl.train.loop import config_differences

    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "1", "--dim", "4"]) == 0
    stored = load_checkpoint(run / "checkpoints" / "last.pt")
    cfg = from_dict(stored["config"])
    old = {sec: dict(v) if isinstance(v, dict) else v for sec, v in stored["config"].items()}
    del old["train"]["cpu_minutes"], old["metasd"]["mask_epochs"]
    stored["config"] = old
    from metasd_dgl.checkpoint import save_checkpoint
    save_checkpoint(stored, run / "checkpoints" / "last.pt")
    assert run_status(run, cfg) == {**run_status(run, cfg), "finished": True, "differences": []}
    assert config_differences(old, stored["config"] | {"metasd": {**old["metasd"], "mask_epochs": 0}}) == []
    assert config_differences(old, {**old, "metasd": {**old["metasd"], "mask_epochs": 2}}) == [
        "metasd.mask_epochs: 0 (checkpoint) vs 2 (now)"]
