"""benchmarks/paper_scale.py on CPU with --tiny (UMLS, rank 16, 2 epochs): one JSON per (row, dataset, seed),
finished ones skipped without training, partial and killed runs resumed from their checkpoints, the table's
mean ± sd and paired difference against dense 200 as computed by hand from the JSONs, --table-only reading only,
a quantised row from a stored run, and the row configs equal to the shipped presets.

Every process of the CLI (the parent and its spawned workers) runs with DGL, pandas, safetensors, click,
PyYAML, tqdm and matplotlib unimportable, as on the bare GPU machine the real study runs on."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from run_helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import paper_scale  # noqa: E402

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)

BLOCKED = ("dgl", "pandas", "safetensors", "click", "yaml", "tqdm", "matplotlib")
ROWS = "dense 200,metasd dimension"


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    """A folder first on PYTHONPATH whose modules of these names raise ImportError (inherited by spawned workers)."""
    folder = tmp_path_factory.mktemp("blocked")
    for name in BLOCKED:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} is blocked for this test')\n")
    return folder


def cli(blocker: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(REPO)]))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "paper_scale.py"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def tiny(root: Path, *args: str) -> list[str]:
    return ["--tiny", "--datasets", "umls", "--threads", "1", "--results", str(root / "results"),
            "--runs", str(root / "runs"), *args]


@pytest.fixture(scope="module")
def study(tmp_path_factory, blocker, kg_dir):
    """2 rows x UMLS x 2 seeds, two runs at a time."""
    root = tmp_path_factory.mktemp("study")
    proc = cli(blocker, *tiny(root, "--rows", ROWS, "--seeds", "0,1", "--jobs", "2", "--data", str(kg_dir)))
    return root, proc


def jsons(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((root / "results" / "umls").glob("*.json"))}


def test_tiny_study_writes_one_json_per_row_and_seed(study):
    root, proc = study
    assert "stand-ins for missing yaml, tqdm" in proc.stdout
    files = jsons(root)
    assert set(files) >= {"dense_200-seed0.json", "dense_200-seed1.json", "metasd_dimension-seed0.json",
                          "metasd_dimension-seed1.json"}
    for name in ("dense_200-seed0.json", "dense_200-seed1.json", "metasd_dimension-seed0.json",
                 "metasd_dimension-seed1.json"):
        rec = json.loads(files[name].read_text())
        assert rec["format"] == paper_scale.FORMAT and rec["kind"] == "train" and rec["tiny"] is True
        assert rec["status"] == "finished" and rec["epochs"] == rec["schedule_epochs"] == 2
        assert rec["stop_reason"] == "reached train.epochs=2"
        assert rec["overrides"]["train.seed"] == rec["seed"] and rec["dataset"] == "umls"
        assert rec["machine"]["device"] == "cpu" and rec["wall_s"] > 0 and len(rec["sessions"]) == 1
        assert rec["selected"]["checkpoint"] in ("best.pt", "last.pt")
        for split in ("valid", "test"):
            for who in rec["reported"]:
                m = rec[split][who]
                assert 0 < m["mrr"] <= 1 and m["hits@1"] <= m["hits@3"] <= m["hits@10"] <= 1
        assert rec["test"][rec["reported"][0]]["count"] == 2 * 661  # UMLS test, both sides
    dense = json.loads(files["dense_200-seed0.json"].read_text())
    metasd = json.loads(files["metasd_dimension-seed0.json"].read_text())
    assert dense["reported"] == ["teacher"] and dense["dim"] == 2 and dense["overrides"]["train.method"] == "plain"
    assert metasd["reported"] == ["student", "teacher"] and metasd["dim"] == 16
    assert metasd["overrides"]["prune.structure"] == "dimension" and metasd["overrides"]["metasd.extra_teacher_step"]
    assert metasd["selected"]["by"] == "valid student MRR"
    # the student has the non-zeros of dense 200 (rank 2 of 16 kept)
    assert metasd["nonzero"]["student"] == dense["nonzero"]["teacher"]


def test_second_call_skips_finished_runs(study, blocker, kg_dir):
    root, _ = study
    files = [p for p in (root / "results" / "umls").glob("*.json")] + list((root / "runs").rglob("*.pt"))
    before = {p: p.stat().st_mtime_ns for p in files}
    proc = cli(blocker, *tiny(root, "--rows", ROWS, "--seeds", "0,1", "--data", str(kg_dir)))
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert "0 to run: nothing" in proc.stdout
    assert proc.stdout.count(": finished\n") == 4
    assert "training on" not in proc.stdout


def _cells(stdout: str, row: str, model: str) -> str:
    lines = [x for x in stdout.splitlines() if x.startswith("umls ") and f" {row} " in x and f" {model} " in x]
    assert len(lines) == 1, stdout
    return lines[0]


def test_table_is_mean_sd_and_paired_difference_by_hand(study):
    root, proc = study
    recs = {p.name: json.loads(p.read_text()) for p in jsons(root).values()}
    dense = [recs[f"dense_200-seed{s}.json"]["test"]["teacher"]["mrr"] for s in (0, 1)]
    for who in ("student", "teacher"):
        vals = [recs[f"metasd_dimension-seed{s}.json"]["test"][who]["mrr"] for s in (0, 1)]
        mean = (vals[0] + vals[1]) / 2
        sd = math.sqrt(((vals[0] - mean) ** 2 + (vals[1] - mean) ** 2) / 1)
        diffs = [vals[0] - dense[0], vals[1] - dense[1]]
        dmean = sum(diffs) / 2
        dsd = math.sqrt(sum((d - dmean) ** 2 for d in diffs))
        line = _cells(proc.stdout, "metasd dimension", who)
        assert f"{mean:.4f} ± {sd:.4f}" in line, line
        assert f"{dmean:+.4f} ± {dsd:.4f} (2)" in line, line
        assert " 2 (2) " in line and " 2/2 " in line  # two seeds, both finished; 2 of 2 epochs
    line = _cells(proc.stdout, "dense 200", "teacher")
    mean = sum(dense) / 2
    assert f"{mean:.4f} ± {abs(dense[0] - dense[1]) / math.sqrt(2):.4f}" in line


def test_table_only_reads_only(study, blocker, tmp_path):
    root, first = study
    runs = tmp_path / "no-runs"
    proc = cli(blocker, "--table-only", "--results", str(root / "results"), "--runs", str(runs))
    assert not runs.exists()
    assert "training on" not in proc.stdout and "data umls" not in proc.stdout
    for row, who in (("dense 200", "teacher"), ("metasd dimension", "student"), ("metasd dimension", "teacher")):
        assert _cells(proc.stdout, row, who) == _cells(first.stdout, row, who)


def test_quantised_row_from_the_stored_run(study, blocker, kg_dir, tmp_path):
    root, _ = study
    blocker = Path(shutil.copytree(blocker, tmp_path / "blocked"))  # model files are safetensors: allowed here
    (blocker / "safetensors.py").unlink()
    src = root / "results" / "umls" / "metasd_dimension-seed0.json"
    src_mtime = src.stat().st_mtime_ns
    proc = cli(blocker, *tiny(root, "--rows", "metasd dimension int8", "--seeds", "0", "--data", str(kg_dir)))
    assert "training on" not in proc.stdout
    assert src.stat().st_mtime_ns == src_mtime
    rec = json.loads((root / "results" / "umls" / "metasd_dimension_int8-seed0.json").read_text())
    source = json.loads(src.read_text())
    assert rec["kind"] == "quantised" and rec["role"] == "student" and rec["scheme"] == "int8"
    assert rec["source"]["steps"] == source["steps"] and rec["source"]["selected"] == source["selected"]
    assert 0 < rec["bytes"]["int8"] < rec["bytes"]["fp32"]
    for s, path in rec["files"].items():
        assert Path(path).stat().st_size == rec["bytes"][s]
    assert abs(rec["test"]["student"]["mrr"] - source["test"]["student"]["mrr"]) < 0.05  # int8 is close to fp32
    assert _cells(proc.stdout, "metasd dimension int8", "student").split()[-3] == f"{rec['bytes']['int8']:,}"
    again = cli(blocker, *tiny(root, "--rows", "metasd dimension int8", "--seeds", "0", "--data", str(kg_dir)))
    assert "metasd dimension int8 seed 0: done" in again.stdout


def test_partial_and_killed_runs_resume(tmp_path, blocker, kg_dir):
    """A run stopped by its budget is partial and resumes from last.pt; so does a run killed before its JSON."""
    args = tiny(tmp_path, "--rows", "dense 200", "--seeds", "0", "--epochs", "1000", "--per-run-budget", "3",
                "--data", str(kg_dir))
    out = tmp_path / "results" / "umls" / "dense_200-seed0.json"
    cli(blocker, *args)
    first = json.loads(out.read_text())
    assert first["status"] == "partial" and first["stop_reason"] == "wall-clock budget spent"
    assert first["schedule_epochs"] == 1000 and first["sessions"][0]["resumed"] is False
    proc = cli(blocker, *args)
    assert "(resume)" in proc.stdout
    second = json.loads(out.read_text())
    assert second["status"] == "partial" and len(second["sessions"]) == 2
    assert second["sessions"][1]["resumed"] is True
    assert second["sessions"][1]["from_epoch"] == first["epochs"] and second["steps"] > first["steps"]
    assert second["train_wall_s"] > first["train_wall_s"]
    out.unlink()  # killed after its checkpoint, before its JSON
    cli(blocker, *args)
    third = json.loads(out.read_text())
    assert third["sessions"][0]["resumed"] is True and third["sessions"][0]["from_epoch"] == second["epochs"]
    assert third["steps"] > second["steps"]
    history = [json.loads(x) for x in (tmp_path / "runs" / "umls" / "dense_200-seed0" / "metrics.jsonl")
               .read_text().splitlines()]
    epochs = [r["epoch"] for r in history if "seconds" in r]
    assert epochs == list(range(1, third["epochs"] + 1))  # one history, no epoch trained twice


def test_a_partial_result_without_its_run_folder_is_kept(tmp_path, blocker, kg_dir):
    args = tiny(tmp_path, "--rows", "dense 200", "--seeds", "0", "--epochs", "1000", "--per-run-budget", "2",
                "--data", str(kg_dir))
    cli(blocker, *args)
    out = tmp_path / "results" / "umls" / "dense_200-seed0.json"
    mtime = out.stat().st_mtime_ns
    import shutil

    shutil.rmtree(tmp_path / "runs" / "umls")  # another machine's session: the checkpoints did not travel
    proc = cli(blocker, *args)
    assert out.stat().st_mtime_ns == mtime and "its run folder is not here: kept" in proc.stdout
    proc = cli(blocker, *args, "--redo-partial")
    rec = json.loads(out.read_text())
    assert rec["sessions"][0]["resumed"] is False and len(rec["sessions"]) == 1 and "training on" in proc.stdout


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_row_configs_are_the_shipped_presets():
    configs = REPO / "pipelines" / "configs"
    for name, ours in (("fb15k237_metasd.yaml", paper_scale.FB15K237), ("wn18rr_metasd.yaml", paper_scale.WN18RR)):
        shipped = _flat(yaml.safe_load((configs / name).read_text()))
        shipped.pop("train.method"), shipped.pop("runtime.device")
        assert {k: v for k, v in ours.items() if k != "train.rp_weight"} == shipped, name
    assert paper_scale.FB15K237["train.rp_weight"] == 4.0 and paper_scale.WN18RR["train.rp_weight"] == 0.05
    assert paper_scale.REFERENCE == _flat(yaml.safe_load((configs / "reference.yaml").read_text()))
    assert paper_scale.OWN_STUDENT == _flat(yaml.safe_load((configs / "own_student.yaml").read_text()))
    # the rows on FB15k-237: the teacher's recipe everywhere, MetaSD with the dataset's RP weight
    rows = {r.name: paper_scale.row_overrides(r, "wn18rr", tiny=False) for r in paper_scale.ROWS if not r.source}
    assert rows["dense 2000"]["model.dim"] == 2000 and rows["dense 200"]["model.dim"] == 200
    assert rows["metasd element"]["train.rp_weight"] == 0.05 and rows["metasd element"]["prune.structure"] == "element"
    assert rows["metasd dimension"]["prune.structure"] == "dimension"
    assert all(o["train.regularizer"] == "dura" and o["train.epochs"] == 100 and o["train.batch_size"] == 100
               for o in rows.values())
    from metasd_dgl.config import Config, apply_overrides, validate

    for o in rows.values():
        validate(apply_overrides(Config(), o))


def _record(row, seed, mrr, model="teacher", dataset="fb15k-237", status="finished"):
    return {"format": paper_scale.FORMAT, "row": row, "dataset": dataset, "seed": seed, "status": status,
            "epochs": 100, "schedule_epochs": 100, "dim": 2000, "reported": [model],
            "overrides": {"train.seed": seed}, "nonzero": {model: 1},
            "test": {model: {"mrr": mrr, "hits@1": mrr / 2, "hits@10": min(1.0, mrr * 1.5)}}}


def test_table_rows_paired_and_paper_figures():
    recs = [_record("dense 200", 0, 0.30), _record("dense 200", 1, 0.32), _record("dense 200", 2, 0.31),
            _record("metasd element", 0, 0.33, "student"), _record("metasd element", 2, 0.30, "student"),
            _record("dense 2000", 0, 0.36, status="partial")]
    entries = {(e["row"], e["model"]): e for e in paper_scale.table_rows(recs)}
    p = entries[("metasd element", "student")]["paired"]
    assert p["seeds"] == [0, 2] and p["diffs"] == pytest.approx([0.03, -0.01])
    assert p["mean"] == pytest.approx(0.01) and p["sd"] == pytest.approx(math.sqrt(0.0008))
    assert entries[("dense 200", "teacher")]["paired"] is None
    text = paper_scale.render(list(entries.values()))
    assert "MetaSD 0.391" in text and "ComplEx-RP r1000 0.388" in text and "N3 r100 0.35, N3 r500 0.36" in text
    assert "0.3100 ± 0.0100" in text and "+0.0100 ± 0.0283 (2)" in text
    assert " 1 (0) " in text  # dense 2000: one seed, not finished
