"""Two CPU processes under torchrun (gloo on loopback) train like one process:
the loss falls and the final weights match single-process training; each rank gets its own GPU.

Under torchrun, shards of unequal size (one empty) average to the whole batch's gradient. Two ranks are
simulated by two threads in this process: ``distributed.current`` tells each thread its rank, and
``all_reduce`` sums the threads' tensors behind a barrier (no process group, no port, no timing).
"""
import copy
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from metasd_dgl.runtime import distributed
from metasd_dgl.store.checkpoint import load_checkpoint
from metasd_dgl.config import Config, apply_overrides
from metasd_dgl.model.predictor import build_model
from metasd_dgl.model.pruning import compute_masks, prunable_params
from metasd_dgl.model.student import MaskedStudent
from step_helpers import Stepper

ARGS = ["train", "--quiet", "--dataset", "nations", "--dim", "8", "--epochs", "3", "--batch-size", "200",
        "--seed", "5", "--set", "valid.every=3", "--set", "runtime.num_threads=1"]

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)
#: Stated tolerance.  Float sums over a batch split in two and averaged differ from one sum
#: in the last bits, and Adagrad's first step is lr * sign(g) per weight, so a weight whose
#: gradient is ~0 can step the other way: a few weights differ, the tensors as a whole do not.
MAX_RELATIVE_NORM_DIFF = 0.02  # ||W_2proc - W_1proc|| / ||W_1proc|| per tensor
MAX_MRR_DIFF = 0.01  # validation MRR


def test_two_process_gloo_matches_single_process(tmp_path, kg_dir):
    env = dict(os.environ, METASD_DATA_DIR=str(kg_dir), DGLBACKEND="pytorch", OMP_NUM_THREADS="1",
               MASTER_ADDR="127.0.0.1")
    data = ["--set", f"data.processed_dir={tmp_path / 'data'}"]
    single = subprocess.run([sys.executable, "-m", "metasd_dgl.cli", *ARGS, "--run-dir", str(tmp_path / "one"), *data],
                            env=env, capture_output=True, timeout=600)
    assert single.returncode == 0, single.stderr.decode()[-2000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--standalone",  # rendezvous on a free local port: no fixed port to collide on
                            "-m", "metasd_dgl.cli", *ARGS, "--run-dir", str(tmp_path / "two"), *data],
                           env=env, capture_output=True, timeout=600)
    assert multi.returncode == 0, multi.stderr.decode()[-3000:]
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert one["state"]["step"] == two["state"]["step"]
    for name, w in one["model"].items():
        diff = float(torch.linalg.vector_norm(two["model"][name] - w) / torch.linalg.vector_norm(w))
        assert diff < MAX_RELATIVE_NORM_DIFF, (name, diff)
    mrr = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                       if "valid" in x][-1]["valid"]["teacher"]["mrr"]
    assert abs(mrr("one") - mrr("two")) < MAX_MRR_DIFF, (mrr("one"), mrr("two"))
    losses = [json.loads(x)["loss"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert losses[-1] < losses[0]
    assert not list((tmp_path / "two").glob("rank*"))  # one writer


def test_rank_device_gives_each_torchrun_rank_its_own_gpu():
    import pytest

    from metasd_dgl.runtime.distributed import rank_device
    from metasd_dgl.errors import DeviceError

    torchrun = lambda rank: {"WORLD_SIZE": "4", "LOCAL_RANK": str(rank), "RANK": str(rank + 4)}  # noqa: E731
    assert [rank_device("cuda", torchrun(r)) for r in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert rank_device("CUDA", torchrun(2)) == "cuda:2"
    assert rank_device("cpu", torchrun(3)) == "cpu"
    for single in ({}, {"WORLD_SIZE": "1", "LOCAL_RANK": "0"}):
        assert rank_device("cuda", single) == "cuda" and rank_device("cuda:1", single) == "cuda:1"
    with pytest.raises(DeviceError, match="every rank on the same GPU"):
        rank_device("cuda:1", torchrun(0))


def test_trainer_asks_for_the_rank_device(tmp_path, monkeypatch):
    """Trainer resolves rank_device(runtime.device, env), so rank 1 of torchrun gets cuda:1, not cuda:0."""
    import metasd_dgl.train.loop as loop
    from metasd_dgl.config import Config
    from metasd_dgl.data.preprocess import load_processed, preprocess
    from metasd_dgl.runtime.distributed import DistInfo

    data = load_processed(preprocess(Path(__file__).resolve().parents[1] / "datasets" / "toy", tmp_path / "d"))
    asked = []
    monkeypatch.setattr(loop, "resolve_device", lambda name: asked.append(name) or torch.device("cpu"))
    monkeypatch.setattr(loop, "init_from_env", lambda device: DistInfo(1, 2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = Config()
    cfg.model.dim, cfg.runtime.device = 4, "cuda"
    loop.Trainer(cfg, data, tmp_path / "run", progress=False)
    assert asked == ["cuda:1"]


# ------------------------------------------------------------------ sharded steps

N, R = 7, 2


class TwoRanks:
    """A fake two-rank group: each thread is a rank; all_reduce sums over threads."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.barrier = threading.Barrier(2, timeout=60)
        self.buffers: dict[int, torch.Tensor] = {}
        self.calls = 0

    def current(self) -> distributed.DistInfo:
        return distributed.DistInfo(self.local.rank, 2)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.buffers[self.local.rank] = tensor.clone()
        self.barrier.wait()
        total = self.buffers[0] + self.buffers[1]  # both ranks see the same sizes, or this fails
        self.barrier.wait()
        tensor.copy_(total)
        self.calls += 1


def _setup(method: str):
    gen = torch.Generator().manual_seed(0)
    model = build_model("kge", "complex", N, R, 3, init_scale=0.5, generator=gen).to(torch.float64)
    batch = torch.stack([torch.randint(0, N, (5,), generator=gen), torch.randint(0, 2 * R, (5,), generator=gen),
                         torch.randint(0, N, (5,), generator=gen)], 1)
    cfg = apply_overrides(Config(), {"train": {"method": method}})
    return model, batch, batch[:2].clone(), cfg


def _step(model, cfg, batch, quiz):
    st = Stepper(model, cfg, sgd_lr=0.5, meta_lr=0.1)
    student = MaskedStudent(compute_masks(prunable_params(model), 0.5), dict(model.named_parameters()))
    return st.step(batch, student, quiz)


@pytest.mark.parametrize("method", ["kd", "metasd"])
def test_an_empty_shard_leaves_the_average_of_the_whole_batch(monkeypatch, method):
    group = TwoRanks()
    monkeypatch.setattr(distributed, "current", group.current)
    monkeypatch.setattr(distributed.dist, "all_reduce", group.all_reduce)
    model, batch, quiz, cfg = _setup(method)
    single = copy.deepcopy(model)
    with monkeypatch.context() as m:  # the single-process reference: one rank of one
        m.setattr(distributed, "current", lambda: distributed.DistInfo(0, 1))
        _step(single, cfg, batch, quiz)
    models = [copy.deepcopy(model), copy.deepcopy(model)]
    errors: list = []

    def rank(r: int) -> None:
        group.local.rank = r
        try:
            _step(models[r], cfg, batch if r == 0 else batch[:0], quiz)  # rank 1's share is empty
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert group.calls >= 2  # one all-reduce per optimiser step, on both ranks
    for r in range(2):
        for (n, p), q in zip(single.named_parameters(), models[r].parameters()):
            torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
