"""Exact resume: a run killed with SIGKILL at chosen points and resumed ends
bitwise equal to an uninterrupted run; SIGTERM writes a checkpoint and exits
with a message saying how to resume."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metasd_dgl.store.checkpoint import load_checkpoint

ARGS = ["--dataset", "nations", "--method", "metasd", "--dim", "8", "--epochs", "4",
        "--batch-size", "128", "--seed", "3",
        "--set", "valid.every=2", "--set", "checkpoint.every=1",
        "--set", "metasd.quiz_batch_size=64", "--set", "valid.patience=0"]

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)


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


#: Run as ``python -c KILLER SIGNAL WHERE N <cli args>``: the CLI, except that the process
#: sends itself SIGNAL (KILL, TERM) on the N-th call of WHERE: ``batch`` (mid-epoch, inside a step: the work since
#: the last checkpoint is lost), ``checkpoint`` (just before a checkpoint is written) or
#: ``validate`` (between an epoch's end and its validation).  Deterministic points, no timing.
KILLER = """
import os, signal, sys
from metasd_dgl.cli import main
from metasd_dgl.train import examples, loop
signum, where, n = getattr(signal, "SIG" + sys.argv[1]), sys.argv[2], int(sys.argv[3])
owner, name = {"batch": (examples.BatchInputs, "__call__"), "checkpoint": (loop, "save_checkpoint"),
               "validate": (loop.Trainer, "validate")}[where]
original, calls = getattr(owner, name), [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signum)
    return original(*args, **kwargs)
setattr(owner, name, wrapped)
sys.exit(main(sys.argv[4:]))
"""
KILL_POINTS = [("batch", 4), ("checkpoint", 6), ("validate", 1), ("batch", 30)]


def test_sigkill_at_chosen_points_then_resume_is_bitwise_equal(reference, kg_dir):
    root, processed, (ref_model, ref_state) = reference
    run = root / "killed"
    env = _env(kg_dir, processed)
    ckpt = run / "checkpoints" / "last.pt"
    steps_at_kill = []
    for i, (where, n) in enumerate(KILL_POINTS):
        args = ["train", "--quiet", *ARGS, "--run-dir", str(run), "--set", f"data.processed_dir={processed}"] \
            if i == 0 else ["train", "--quiet", "--resume", str(run)]
        proc = subprocess.run([sys.executable, "-c", KILLER, "KILL", where, str(n), *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
        assert proc.returncode == -signal.SIGKILL, (where, n, proc.stderr.decode()[-1000:])
        steps_at_kill.append(load_checkpoint(ckpt)["state"]["step"])
    done = subprocess.run(_cmd("--resume", str(run)), env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    model, state = _final(run)
    assert steps_at_kill == sorted(set(steps_at_kill)), steps_at_kill  # each run got further
    assert state["step"] == ref_state["step"] and state["epoch"] == ref_state["epoch"]
    for name, tensor in ref_model.items():
        assert torch.equal(model[name], tensor), f"{name} differs after resume (killed at {steps_at_kill})"
    assert state["best_mrr"] == ref_state["best_mrr"]
    for name in ("best.pt", "best-teacher.pt"):  # each model's own best, exact
        got, want = (load_checkpoint(r / "checkpoints" / name) for r in (run, root / "uninterrupted"))
        assert got["state"]["epoch"] == want["state"]["epoch"], name
        assert all(torch.equal(got["model"][k], t) for k, t in want["model"].items()), name
    lines = (run / "metrics.jsonl").read_text().splitlines()
    ref_lines = (root / "uninterrupted" / "metrics.jsonl").read_text().splitlines()
    strip = lambda ls: [__import__("json").loads(x) for x in ls]  # noqa: E731
    ref_records = [{k: v for k, v in r.items() if k != "seconds"} for r in strip(ref_lines)]
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in strip(lines)]
    assert records == ref_records


def test_sigterm_checkpoints_and_says_how_to_resume(reference, kg_dir):
    root, processed, _ = reference
    run = root / "terminated"
    args = ["train", "--quiet", *ARGS, "--run-dir", str(run), "--set", f"data.processed_dir={processed}"]
    proc = subprocess.run([sys.executable, "-c", KILLER, "TERM", "batch", "3", *args],  # SIGTERM in step 3
                          env=_env(kg_dir, processed), capture_output=True, timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"metasd-dgl train --resume {run}" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["step"] == 3  # the step it was in finished
