"""--tracker tensorboard: the event file read back with tensorboard's EventAccumulator
holds the values of metrics.jsonl (losses, valid MRR of teacher and student, kept
fraction, seconds per epoch) at their epochs."""
import json
from pathlib import Path

import pytest

from metasd_dgl.cli import main

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "datasets" / "toy")


def test_tensorboard_scalars_match_metrics(tmp_path, capsys):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "2", "--dim", "4",
                 "--batch-size", "8", "--method", "prune", "--set", "valid.every=1",
                 "--tracker", "tensorboard"]) == 0
    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "valid" not in r]
    valids = [r for r in records if "valid" in r]
    assert len(epochs) == 2 and len(valids) == 2

    def expect(tag, rows, value):
        assert [s for s, _ in got[tag]] == [r["epoch"] for r in rows], tag
        assert [v for _, v in got[tag]] == pytest.approx([value(r) for r in rows], rel=1e-6), tag

    losses = [k for k in epochs[0] if k not in ("epoch", "step", "seconds", "density")]
    assert "loss" in losses and len(losses) >= 2
    for key in losses:
        expect(f"train/{key}", epochs, lambda r, k=key: r[k])
    expect("train/kept_fraction", epochs, lambda r: r["density"])
    expect("train/seconds_per_epoch", epochs, lambda r: r["seconds"])
    expect("valid/teacher_mrr", valids, lambda r: r["valid"]["teacher"]["mrr"])
    expect("valid/student_mrr", valids, lambda r: r["valid"]["student"]["mrr"])
    assert 0.05 < got["train/kept_fraction"][0][1] < 0.2  # prune rate 0.9
