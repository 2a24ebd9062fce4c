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
                 "--method", "metasd", "--batch-size", "4", "--set", "prune.structure=dimension",
                 "--set", "metasd.quiz_fraction=0.2", "--set", "prune.rate=0.8"]) == 0
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
    """A run folder written before ``train.cpu_minutes`` existed, in the names of that time (the prune
    options under ``metasd``, options since retired at their old defaults), is still finished for
    ``pipeline`` and resumable; one that used a retired option is refused by name."""
    from metasd_dgl.config import from_dict, resume_differences
    from metasd_dgl.stages import run_status

    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "1", "--dim", "4"]) == 0
    stored = load_checkpoint(run / "checkpoints" / "last.pt")
    cfg = from_dict(stored["config"])
    old = {sec: dict(v) if isinstance(v, dict) else v for sec, v in stored["config"].items()}
    del old["train"]["cpu_minutes"]
    old["metasd"].update({f"prune_{k}": v for k, v in old.pop("prune").items() if k != "gradual_epochs"},
                         share_forward=False, mask_epochs=0, meta_grad_path="kd")
    old["train"]["loss_backend"] = "fused"
    stored["config"] = old
    from metasd_dgl.checkpoint import save_checkpoint
    save_checkpoint(stored, run / "checkpoints" / "last.pt")
    assert run_status(run, cfg) == {**run_status(run, cfg), "finished": True, "differences": []}
    from metasd_dgl.config import to_dict
    assert resume_differences(old, to_dict(cfg)) == []
    assert from_dict(old).prune.rate == cfg.prune.rate  # read through config.upgrade
    new = from_dict(old)
    new.prune.rate = 0.5
    assert resume_differences(old, to_dict(new)) == ["prune.rate: 0.9 (checkpoint) vs 0.5 (now)"]
    retired = {**old, "metasd": {**old["metasd"], "share_forward": True}}
    assert resume_differences(retired, to_dict(cfg))[0].startswith("metasd.share_forward=True (retired: ")
    stored["config"] = retired
    save_checkpoint(stored, run / "checkpoints" / "last.pt")
    assert main(["train", "--quiet", "--resume", str(run), "--epochs", "2"]) == 2  # refused, by name
    assert main(["evaluate", str(run), "--checkpoint", "last", "--no-plots"]) == 0  # but still readable
