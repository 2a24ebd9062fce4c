"""Re-running `pipeline`: an interrupted run resumes (ending bitwise equal to an
uninterrupted one), a finished one skips training and evaluation unless asked,
a changed config needs --resume (the flag the message names)."""
import signal
from pathlib import Path

import torch

from metasd_dgl.checkpoint import load_checkpoint
from metasd_dgl.cli import main
from metasd_dgl.train import loop

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "datasets" / "toy"


def _config(tmp: Path, name: str, epochs: int = 2) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"run_dir: {tmp / name}\ndata:\n  dataset: {TOY}\nmodel:\n  dim: 4\n"
                    f"train:\n  method: prune\n  epochs: {epochs}\n  batch_size: 8\n  valid_every: 1\n  patience: 0\n")
    return path


def _interrupt_after_first_epoch(monkeypatch):
    real = loop.Trainer._run_epoch

    def run_epoch(self):
        real(self)
        if self.state.epoch == 1:
            self._stop_signal = signal.SIGTERM  # what the SIGTERM handler sets

    monkeypatch.setattr(loop.Trainer, "_run_epoch", run_epoch)


def test_interrupted_pipeline_resumes_on_rerun(tmp_path, monkeypatch, capsys):
    ref_cfg = _config(tmp_path, "ref")
    assert main(["pipeline", str(ref_cfg), "--quiet"]) == 0
    ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")

    cfg = _config(tmp_path, "run")
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        assert main(["pipeline", str(cfg)]) == 128 + signal.SIGTERM
    capsys.readouterr()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"]["epoch"] == 1

    assert main(["pipeline", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'last.pt'}: 1 epochs done" in out
    assert "epoch 2/2" in out and "epoch 1/2" not in out
    got = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert got["state"]["epoch"] == 2 and got["state"]["step"] == ref["state"]["step"]
    for name, w in ref["model"].items():
        assert torch.equal(got["model"][name], w), name
    assert (tmp_path / "run" / "eval" / "test.json").is_file()

    # finished: no training, no evaluation, and it says so
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ev = tmp_path / "run" / "eval" / "test.json"
    before = last.stat().st_mtime_ns, ev.stat().st_mtime_ns
    assert main(["pipeline", str(cfg)]) == 0
    out = capsys.readouterr().out
    best = got["state"]["best_mrr"]
    assert f"already trained (epoch 2, valid MRR {best:.4f}): skipping training" in out
    assert "pass --reevaluate" in out and "dense (untrained)" in out  # the stored table, rows named as evaluate does
    assert (last.stat().st_mtime_ns, ev.stat().st_mtime_ns) == before
    assert main(["pipeline", str(cfg), "--reevaluate", "--quiet"]) == 0
    assert last.stat().st_mtime_ns == before[0] and ev.stat().st_mtime_ns != before[1]

    # another config: the message names pipeline's --resume, which then continues the run
    more = _config(tmp_path, "run", epochs=3)
    assert main(["pipeline", str(more), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: 2 (run) vs 3 (now)" in err and "pass --resume" in err
    assert main(["pipeline", str(more), "--resume", "--quiet"]) == 0
    assert load_checkpoint(last)["state"]["epoch"] == 3
