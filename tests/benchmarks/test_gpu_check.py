"""The CPU rehearsal of benchmarks/gpu_check.py: a tiny rank on UMLS for a budget of seconds.

With only torch and numpy importable it must finish inside its budget (the training loop stopped at the deadline, not by
its epoch count), time every (method, batch, masks) cell, and report finite test MRRs
of the teacher and the true student; its paper config is the shipped one plus RP."""
import json
import math
import os
import subprocess
import sys

from metasd_dgl.config import apply_overrides, Config, load_config, to_dict

from run_helpers import REPO
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402


def test_paper_config_is_the_shipped_one_with_relation_prediction():
    shipped = to_dict(load_config(REPO / "pipelines" / "configs" / "fb15k237_metasd.yaml"))
    ours = to_dict(apply_overrides(Config(), gpu_check.PAPER_CONFIG))
    shipped["train"]["rp_weight"] = 4.0
    for section in ("data", "model", "metasd"):
        assert ours[section] == shipped[section], section
    assert {k: v for k, v in ours["train"].items() if k != "device"} == \
        {k: v for k, v in shipped["train"].items() if k != "device"}


#: everything but torch and numpy made unimportable, as on a bare GPU machine without network
BLOCKED = "import sys; sys.modules.update(dict.fromkeys(['dgl', 'pandas', 'safetensors', 'click', 'yaml', 'tqdm'])); "


def test_cpu_rehearsal(tmp_path, kg_dir):
    out = tmp_path / "gpu_check.json"
    # Generous for the work (rank 8 on UMLS: the timing cells take about a second, an epoch well under one):
    # the checks below hold on a loaded machine too; only "stopped by the deadline" needs the clock.
    budget = 30.0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED + "sys.path.insert(0, 'benchmarks'); import gpu_check; "
         "sys.exit(gpu_check.main(sys.argv[1:]))",
         "--data", str(kg_dir / "umls.tar.gz"), "--tiny", "--budget", str(budget), "--threads", "1",
         "--timing-share", "0.8", "--device", "cpu", "--out", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads(out.read_text())
    assert {"device", "torch", "dataset", "dim", "budget_s", "timing", "training", "paper", "elapsed_s"} <= set(rec)
    assert rec["stand_ins"] == ["yaml", "tqdm"]
    assert rec["device"] == "cpu" and rec["dim"] == 8 and rec["paper"] == {"student_mrr": 0.391, "complex_rp_mrr": 0.388}

    cells = {(r["method"], r["batch"], r["structure"]) for r in rec["timing"]}
    assert cells == {("plain", b, "none") for b in (64, 128)} | {
        (m, b, s) for m in ("kd", "metasd") for b in (64, 128) for s in ("dimension", "element")}
    # On a heavily loaded machine the timing share of the budget can run out: later cells are then
    # reported as skipped (by design); the first cell is always timed.
    assert "ms" in rec["timing"][0]
    for r in rec["timing"]:
        if "ms" not in r:
            assert r["skipped"] == "timing share of the budget spent", r
            continue
        assert r["ms"] > 0 and math.isfinite(r["loss"]), r
        assert r["ratio_to_plain"] == r["ms"] / next(
            p["ms"] for p in rec["timing"] if p["method"] == "plain" and p["batch"] == r["batch"])

    tr = rec["training"]
    if tr.get("skipped") or not tr.get("epochs_done"):  # a loaded machine left no time for an epoch
        assert tr.get("skipped") == "no training time left in the budget" or tr["stop"] == "wall-clock budget spent"
        return
    assert tr["stop"] == "wall-clock budget spent"  # 1000 epochs cannot finish: the deadline stopped it
    assert tr["valid"]
    names = [e["checkpoint"] for e in tr["evaluations"]]
    assert names == ["best.pt", "last.pt"]
    for ev in tr["evaluations"]:
        for who in ("teacher", "student"):
            m = ev[who]
            assert m["count"] == 2 * rec["dataset"]["test"]
            assert 0 < m["mrr"] <= 1 and m["hits@1"] <= m["hits@3"] <= m["hits@10"] <= 1
        assert abs(ev["student_density"] - 0.1) < 0.01
    assert "paper: MetaSD student" in proc.stdout
    assert ("x plain" in proc.stdout) == any("ms" in r and r["method"] != "plain" for r in rec["timing"])
