"""benchmarks/bench_compression.py: the paired comparison on known numbers, and a quick run's table/JSON."""
from __future__ import annotations

import importlib
import json
import math
import sys

import pytest

from run_helpers import REPO


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))  # spawned workers inherit it
    try:
        yield importlib.import_module("bench_compression")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_paired_differences_on_known_numbers(bench):
    p = bench.paired([0.50, 0.52, 0.54], [0.40, 0.43, 0.40])
    assert p["diffs"] == pytest.approx([0.10, 0.09, 0.14])
    assert p["mean"] == pytest.approx(0.11)
    sd = math.sqrt(((0.10 - 0.11) ** 2 + (0.09 - 0.11) ** 2 + (0.14 - 0.11) ** 2) / 2)  # 0.02646
    assert p["sd"] == pytest.approx(sd)
    assert p["ratio"] == pytest.approx(0.11 / sd) and p["marked"]  # 0.11 > 2 * 0.0265
    q = bench.paired([0.50, 0.40, 0.60], [0.45, 0.45, 0.45])  # diffs +0.05 -0.05 +0.15: mean 0.05, sd 0.1
    assert q["mean"] == pytest.approx(0.05) and q["sd"] == pytest.approx(0.1) and not q["marked"]
    one = bench.paired([0.5], [0.4])
    assert one["sd"] == 0.0 and one["ratio"] is None and not one["marked"]
    with pytest.raises(ValueError):
        bench.paired([0.5, 0.6], [0.4])


def test_comparisons_pair_students_with_dense_small_and_prune_only(bench):
    def res(row, mrrs):
        return {row: {"per_seed_mrr": mrrs}}

    results = {"dense small": res("teacher", [0.3, 0.32]), "prune-only": res("student", [0.4, 0.41]),
               "kd": res("student", [0.45, 0.47]), "dense": res("teacher", [0.8, 0.8])}
    c = bench.comparisons(results)
    assert set(c) == {"kd"} and set(c["kd"]) == {"dense small", "prune-only"}
    assert c["kd"]["dense small"]["diffs"] == pytest.approx([0.15, 0.15])
    assert c["kd"]["prune-only"]["diffs"] == pytest.approx([0.05, 0.06])
    # prune-only is itself compared with dense small only through the student table, not here
    assert "prune-only" not in c


def test_preset_overrides_drop_the_budget_options(bench, tmp_path):
    path = tmp_path / "reference.yaml"
    path.write_text("run_dir: x\ndata:\n  dataset: umls\nmodel:\n  dim: 500\n  decoder: complex\n"
                    "train:\n  method: metasd\n  epochs: 9\n  lr: 0.01\nprune:\n  rate: 0.8\n")
    assert bench.preset_overrides(path) == {"model.decoder": "complex", "train.method": "metasd",
                                            "train.lr": 0.01, "prune.rate": 0.8}


def test_unimplemented_options_are_found(bench):
    assert bench.option_used("train.lr") and bench.option_used("prune.structure")
    assert not bench.option_used("metasd.no_such_option_anywhere")


@pytest.mark.slow  # runs metasd-dgl end to end
def test_quick_run_table_and_json(bench, tmp_path, kg_dir, monkeypatch):
    monkeypatch.setenv("METASD_DATA_DIR", str(kg_dir))
    out = tmp_path / "c.json"
    argv = ["--quick", "--methods", "dense,dense small,prune-only,kd", "--jobs", "1",
            "--root", str(tmp_path / "runs"), "--out", str(out), "--data-dir", str(kg_dir)]
    record = bench.main(argv)
    stored = json.loads(out.read_text())
    assert set(stored) >= {"machine", "budgets", "seeds", "results", "paired", "table", "skipped"}
    res = stored["results"]["umls"]
    assert set(res) == {"dense", "dense small", "prune-only", "kd"}
    row = res["kd"]["student"]
    assert set(row) >= {"mrr", "mrr_std", "hits@1", "hits@10", "rarest_mrr", "rarest_entity_mrr", "nonzero",
                        "bytes", "per_seed_mrr"}
    assert res["dense small"]["dim"] == 2 and res["dense"]["dim"] == 16
    assert row["nonzero"] == res["prune-only"]["student"]["nonzero"]
    p = stored["paired"]["umls"]["kd"]["prune-only"]
    assert p["diffs"] == pytest.approx([row["mrr"] - res["prune-only"]["student"]["mrr"]])
    table = stored["table"]
    assert table == record["table"] and "| umls | kd student |" in table and "| kd | prune-only |" in table
    # resumable: a second run trains nothing and gives the same numbers
    files = sorted((tmp_path / "runs").rglob("checkpoints/best.pt"))
    assert len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    again = bench.main(argv)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert again["results"] == record["results"]


def test_a_method_with_another_methods_overrides_takes_its_stored_run(bench, tmp_path, monkeypatch):
    """On Kinship "own student KD per dataset" is "own student KD tuned" (both: Kinship's KD): not trained twice."""
    base, seed = {"model.dim": 8, "data.processed_dir": "x"}, 1
    budget = {"name": "kinship", "own_kd": dict(bench.OWN_KD)}
    tuned, per = bench.BY_NAME["own student KD tuned"], bench.BY_NAME["own student KD per dataset"]
    assert tuned.overrides(budget) == per.overrides(budget)
    over = {**base, "train.seed": seed, **tuned.overrides(budget)}
    folder = bench.seed_run_dir(tmp_path, tuned.name, seed)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"overrides": {**over, "run_dir": str(folder)},
                                                    "result": {"dim": 8, "marker": 42}}))
    assert bench.twin_result(per, budget, base, tmp_path, seed) == {"dim": 8, "marker": 42}

    def must_not_train(*args, **kwargs):
        raise AssertionError("the twin's stored run should have been taken")

    monkeypatch.setattr(bench, "run_variant_seed", must_not_train)  # the study's worker takes it too
    assert bench.one_run("kinship", per.name, seed, base, str(tmp_path), budget) == {"dim": 8, "marker": 42}
    assert bench.twin_result(per, budget, base, tmp_path, seed + 1) is None  # another seed: no stored twin
    umls = {**budget, "name": "umls"}  # UMLS has KD of its own: not the same run
    assert bench.twin_result(per, umls, {**base}, tmp_path, seed) is None
    assert bench.twin_result(per, budget, {**base, "model.dim": 16}, tmp_path, seed) is None


def test_every_distilling_arm_states_its_student(bench):
    """An arm with a student that learns by distillation (kd, metasd) names its student and distillation, so its
    meaning (and the stored runs it reuses, matched by overrides) does not follow a change of the defaults;
    the arms the docs call the paper's student train the shared-weights student with mutual, unscaled KD."""
    from metasd_dgl.config import load_config

    budget = {"name": "umls", "dim": 100, "epochs": 4, "own_kd": dict(bench.OWN_KD),
              "preset": bench.preset_overrides()}  # pipelines/configs/reference.yaml, as the study reads it
    for m in bench.METHODS:
        over = m.overrides(budget)
        if over.get("train.method") not in ("kd", "metasd"):
            continue
        assert {"metasd.student", "metasd.one_way_kd", "metasd.kd_t2_scale"} <= set(over), m.name
    for name in ("kd", "metasd", "metasd element", "gradual element", "rgcn metasd"):
        mc = load_config(overrides=bench.BY_NAME[name].overrides(budget)).metasd
        assert (mc.student, mc.one_way_kd, mc.kd_t2_scale) == ("shared", False, False), name
