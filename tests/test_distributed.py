"""Two CPU processes under torchrun (gloo on loopback) train like one process:
the loss falls and the final weights match single-process training."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from metasd_dgl.checkpoint import load_checkpoint

ARGS = ["train", "--quiet", "--dataset", "nations", "--dim", "8", "--epochs", "3", "--batch-size", "200",
        "--seed", "5", "--set", "train.valid_every=3", "--set", "train.num_threads=1"]
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
                            "--master_addr", "127.0.0.1", "--master_port", "29531",
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
