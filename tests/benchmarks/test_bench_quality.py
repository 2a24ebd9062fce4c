"""benchmarks/bench_quality.py's quick path: the table's rows equal the run folders' evaluation."""
import json
import subprocess
import sys

import pytest

from run_helpers import REPO

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)


def test_quick_quality_table(tmp_path, kg_dir):
    out = tmp_path / "q.json"
    proc = subprocess.run([sys.executable, "bench_quality.py", "--quick", "--datasets", "nations", "--rp-effect",
                           "nations", "--data-dir", str(kg_dir), "--root", str(tmp_path), "--out", str(out)],
                          cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    from metasd_dgl.config import load_config
    weight = load_config(REPO / "pipelines" / "configs" / "nations_dense.yaml").train.rp_weight or 0.5
    assert [r["label"] for r in record["rows"]] == ["tuned", "rp off", f"rp {weight:g}"]
    for row, folder in zip(record["rows"], ("nations-tuned", "nations-rpoff", f"nations-rp{weight:g}")):
        ev = json.loads((tmp_path / "quick" / folder / "eval" / "test.json").read_text())["results"]["teacher"]["both"]
        assert {k: row[k] for k in ("mrr", "hits@1", "hits@3", "hits@10")} == {
            k: ev[k] for k in ("mrr", "hits@1", "hits@3", "hits@10")}
    assert record["rows"][1]["overrides"]["train.rp_weight"] == 0.0
    assert record["rows"][2]["overrides"]["train.rp_weight"] == weight
    assert "| " not in record["table"] and "nations_dense.yaml (rp off)" in record["table"]
