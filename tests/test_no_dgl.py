"""Without DGL (``sys.modules['dgl'] = None``: ``import dgl`` fails, as on a machine whose torch
is newer than DGL's wheels) the KGE encoder trained 1-N -- preprocess, MetaSD training,
evaluation, export, predict -- gives exactly the normal run's numbers; what needs a graph
stops with one ``error:`` line naming the install (exit 2); and a processed folder made
without DGL gives R-GCN, with DGL, the same graph as ``graph.bin``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metasd_dgl.data.preprocess import load_processed
from metasd_dgl.store.export import read_model as load_student
from metasd_dgl.graph.build import load_graph

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)
REPO = Path(__file__).resolve().parents[1]
NO_DGL = "import sys; sys.modules['dgl'] = None\n"  # any later ``import dgl`` raises ImportError

PIPELINE = """
import json, sys
import torch
torch.set_num_threads(1)
from metasd_dgl.cli import main
cfg, run = sys.argv[1], sys.argv[2]
assert main(["pipeline", cfg, "--quiet"]) == 0
head = open(run + "/data/entities.tsv").readline().split("\\t")[1].strip()
rel = open(run + "/data/relations.tsv").readline().split("\\t")[1].strip()
assert main(["predict", run, "--head", head, "--relation", rel, "--k", "3", "--student"]) == 0
print("DGL-LOADED", any(k == "dgl" and sys.modules[k] is not None or k.startswith("dgl.") for k in sys.modules))
"""

NEEDS_GRAPH = """
import sys
from metasd_dgl.cli import main
out = sys.argv[1]
common = ["--dataset", "nations", "--set", "train.epochs=1", "--quiet"]
print("RC", main(["train", "--run-dir", out + "/rgcn", "--encoder", "rgcn", *common]),
      main(["train", "--run-dir", out + "/ns", "--set", "train.method=plain",
            "--set", "train.regime=negative-sampling", *common]))
"""


def _python(code: str, *args: str, kg_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), METASD_DATA_DIR=str(kg_dir), DGLBACKEND="pytorch")
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _config(tmp_path: Path, name: str) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / name}\n"
        "data:\n  dataset: nations\n"
        "model:\n  dim: 8\n"
        "train:\n  method: metasd\n  epochs: 3\n  batch_size: 256\nvalid:\n  every: 1\n  patience: 0\n"
        "metasd:\n  quiz_batch_size: 64\n")
    return cfg


def _valid_records(run: Path) -> list:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("epoch", "valid") if k in r} for r in records if "valid" in r]


def test_kge_metasd_without_dgl_equals_normal_run(tmp_path, kg_dir):
    runs = {}
    for name, shim in (("nodgl", NO_DGL), ("normal", "")):
        proc = _python(shim + PIPELINE, str(_config(tmp_path, name)), str(tmp_path / name), kg_dir=kg_dir)
        assert proc.returncode == 0, proc.stderr
        runs[name] = (tmp_path / name, proc.stdout)
    (nodgl, out_nodgl), (normal, out_normal) = runs["nodgl"], runs["normal"]
    assert "DGL-LOADED False" in out_nodgl and "DGL-LOADED True" in out_normal  # the shim did bite

    # the same arrays; graph.bin only where DGL was there, and the manifest says why
    m_no = json.loads((nodgl / "data" / "manifest.json").read_text())
    m_yes = json.loads((normal / "data" / "manifest.json").read_text())
    assert "graph.bin" not in m_no["files"] and "not written" in m_no["graph"]
    assert m_yes["graph"] == "graph.bin" and "graph.bin" in m_yes["files"]
    assert {k: v for k, v in m_yes["files"].items() if k != "graph.bin"} == m_no["files"]

    # training, evaluation, export and predict: identical
    assert _valid_records(nodgl) == _valid_records(normal) and len(_valid_records(normal)) == 3
    test_no = json.loads((nodgl / "eval" / "test.json").read_text())["results"]
    test_yes = json.loads((normal / "eval" / "test.json").read_text())["results"]
    assert test_no == test_yes and set(test_yes) == {"teacher", "student"}
    assert 0 < test_yes["student"]["both"]["mrr"] <= 1
    (p_no, k_no, _), (p_yes, k_yes, _) = (load_student(r / "export" / "student.safetensors") for r in (nodgl, normal))
    assert p_no.keys() == p_yes.keys() and all(torch.equal(p_no[n], p_yes[n]) for n in p_yes)
    assert all(torch.equal(k_no[n], k_yes[n]) for n in k_yes)
    predicted = out_nodgl[out_nodgl.index("[student]"):out_nodgl.index("DGL-LOADED")]
    assert predicted == out_normal[out_normal.index("[student]"):out_normal.index("DGL-LOADED")]

    # the folder made without DGL serves R-GCN later (DGL here): the graph graph.bin holds
    built = load_processed(nodgl / "data").graph
    saved = load_graph(normal / "data" / "graph.bin")
    assert built.num_nodes() == saved.num_nodes()
    assert all(torch.equal(a, b) for a, b in zip(built.edges(), saved.edges()))
    assert all(torch.equal(built.edata[k], saved.edata[k]) for k in ("etype", "norm"))


def test_graph_work_without_dgl_is_one_error_line(tmp_path, kg_dir):
    proc = _python(NO_DGL + NEEDS_GRAPH, str(tmp_path), kg_dir=kg_dir)
    assert "RC 2 2" in proc.stdout, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    for line in lines:
        assert line.startswith("error: the training graph (R-GCN encoder, negative sampling) needs DGL")
        assert "pip install dgl==2.1.0 (needs torch<=2.2.1" in line and "data.dgl.ai/wheels/torch-" in line
