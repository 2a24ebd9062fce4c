"""Exact resume: a run killed with SIGKILL at random points and resumed ends
bitwise equal to an uninterrupted run; SIGTERM writes a checkpoint and exits
with a message saying how to resume."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metasd_dgl.checkpoint import load_checkpoint

ARGS = ["--dataset", "nations", "--method", "metasd", "--dim", "8", "--epochs", "4",
        "--batch-size", "128", "--seed", "3",
        "--set", "train.valid_every=2", "--set", "train.checkpoint_every=1",
        "--set", "metasd.quiz_batch_size=64", "--set", "train.patience=0"]


def _cmd(*extra):
    return [sys.executable, "-m", "metasd_dgl.cli", "train", "--quiet", *extra]


def _env(kg_dir, processed):
    env = dict(os.environ, METASD_DATA_DIR=str(kg_dir), DGLBACKEND="pytorch", OMP_NUM_THREADS="1")
    return env


def _final(run_dir: Path):
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return state["model"], state["state"]


@pytest.fixture(scope="module")
def reference(kg_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    processed = root / "data"
    run = root / "uninterrupted"
    subprocess.run(_cmd(*ARGS, "--run-dir", str(run), "--set", f"data.processed_dir={processed}"),
                   env=_env(kg_dir, processed), check=True, capture_output=True, timeout=600)
    return root, processed, _final(run)


def test_sigkill_at_random_points_then_resume_is_bitwise_equal(reference, kg_dir):
    root, processed, (ref_model, ref_state) = reference
    run = root / "killed"
    rng = random.Random(20261128)
    env = _env(kg_dir, processed)
    kills, steps_at_kill = 0, []
    first = True
    while kills < 3:
        cmd = _cmd(*ARGS, "--run-dir", str(run), "--set", f"data.processed_dir={processed}") if first \
            else _cmd("--resume", str(run))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ckpt = run / "checkpoints" / "last.pt"
        start_step = load_checkpoint(ckpt)["state"]["step"] if ckpt.exists() else 0
        # wait until this process has made progress, then kill it at a random moment
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists():
                try:
                    if load_checkpoint(ckpt)["state"]["step"] > start_step:
                        break
                except Exception:  # noqa: BLE001 - being replaced right now
                    pass
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps_at_kill.append(load_checkpoint(ckpt)["state"]["step"])
        kills += 1
        first = False
    done = subprocess.run(_cmd("--resume", str(run)), env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    model, state = _final(run)
    assert len(set(steps_at_kill)) >= 2, steps_at_kill  # killed at different points
    assert state["step"] == ref_state["step"] and state["epoch"] == ref_state["epoch"]
    for name, tensor in ref_model.items():
        assert torch.equal(model[name], tensor), f"{name} differs after resume (killed at {steps_at_kill})"
    assert state["best_mrr"] == ref_state["best_mrr"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    ref_lines = (root / "uninterrupted" / "metrics.jsonl").read_text().splitlines()
    strip = lambda ls: [__import__("json").loads(x) for x in ls]  # noqa: E731
    ref_records = [{k: v for k, v in r.items() if k != "seconds"} for r in strip(ref_lines)]
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in strip(lines)]
    assert records == ref_records


def test_sigterm_checkpoints_and_says_how_to_resume(reference, kg_dir):
    root, processed, _ = reference
    run = root / "terminated"
    proc = subprocess.Popen(_cmd(*ARGS, "--run-dir", str(run), "--set", f"data.processed_dir={processed}"),
                            env=_env(kg_dir, processed), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert f"metasd-dgl train --resume {run}" in err.decode()
    assert load_checkpoint(ckpt)["state"]["step"] >= 1
