"""The benchmark harness (benchmarks/harness.py) end to end on UMLS: rows, JSON keys, metrics."""
import importlib.util
import json
import math
import sys

import pytest
import torch

from run_helpers import REPO
ROW_KEYS = {"mrr", "hits@1", "hits@10", "rarest_bucket", "rarest_mrr", "rarest_entity_mrr", "buckets", "nonzero",
            "bytes"}
RESULT_KEYS = {"dim", "epochs", "best_epoch", "seconds_per_epoch", "train_wall_s", "valid_mrr", "export", "seeds",
               "reported"}


def _harness():
    """benchmarks/harness.py as the module ``bench_harness`` (benchmarks/ is not a package)."""
    if "bench_harness" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_harness", REPO / "benchmarks" / "harness.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_harness"] = module  # dataclasses look the module up
        spec.loader.exec_module(module)
    return sys.modules["bench_harness"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, kg_dir):
    """Two variants on UMLS, the second seeded (two seeds), through the harness's public path."""
    h = _harness()
    root = tmp_path_factory.mktemp("bench")
    data_path = h.preprocess("umls", root / "data", kg_dir)
    base = {"data.processed_dir": str(data_path), "model.decoder": "complex", "model.dim": 8,
            "train.epochs": 2, "train.batch_size": 1000, "valid.every": 1, "valid.patience": 0,
            "checkpoint.keep": 0, "prune.structure": "dimension"}
    variants = [h.Variant("dense", {"train.method": "plain"}),
                h.Variant("prune", {"train.method": "prune"}, ("student",), seeded=True)]
    seen = []
    results = h.run_variants(variants, base, root, [0, 1], lambda name, r: seen.append(name))
    return h, root, variants, results, seen


def test_rows_have_the_published_keys(quick_run):
    h, root, variants, results, seen = quick_run
    assert seen == ["dense", "prune"]
    assert RESULT_KEYS <= set(results["dense"]) and "teacher" in results["dense"]
    assert set(results["dense"]["teacher"]) == ROW_KEYS and "student" not in results["dense"]
    assert set(results["prune"]["student"]) >= ROW_KEYS | {"mrr_std"}
    assert results["prune"]["seeds"] == 2 and len(results["prune"]["per_seed"]) == 2
    json.dumps(results)  # the JSON record holds them as they are
    rows = h.variant_rows(variants, results, lambda label, r, m: [label, m["mrr"]])
    assert [r[0] for r in rows] == ["dense teacher", "prune student"]
    assert all(r[1] > 0 for r in rows)


def test_metrics_equal_the_library_evaluation_of_the_run_folder(quick_run):
    """Every reported number is the library's own: rank the best checkpoint again with rank_split."""
    from metasd_dgl.evaluate.ranking import metrics
    from metasd_dgl.evaluate.ranking import rank_split
    from metasd_dgl.stages import load_run

    h, root, _, results, _ = quick_run
    for name, seed, row in (("dense", 0, "teacher"), ("prune", 0, "student"), ("prune", 1, "student")):
        res = results[name] if name == "dense" else results[name]["per_seed"][seed]
        run_dir = root / f"{name}-seed{seed}"
        _, data, model, student, ckpt = load_run(run_dir, "best")
        ranks = rank_split(model, data.test, data.num_relations, data.filter,
                           weights=student if row == "student" else None)
        ref = metrics(ranks.both())
        for key in ("mrr", "hits@1", "hits@10"):
            assert res[row][key] == pytest.approx(ref[key], abs=1e-12), (name, seed, key)
        assert res[row]["mrr"] > 0
        assert res["best_epoch"] == ckpt["state"]["best_epoch"]
        assert res[row]["rarest_mrr"] == res[row]["buckets"][res[row]["rarest_bucket"]]["mrr"]
        secs = [json.loads(x)["seconds"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                if "seconds" in json.loads(x)]
        assert res["epochs"] == 2 and res["seconds_per_epoch"] == pytest.approx(sum(secs) / len(secs))
        export = run_dir / "export"
        if row == "student":
            assert res[row]["bytes"] == (export / "student.safetensors").stat().st_size
            assert res[row]["nonzero"] < sum(p.numel() for p in model.parameters())
        else:
            assert res[row]["nonzero"] == sum(p.numel() for p in model.parameters())
            assert res[row]["bytes"] == (export / "teacher.safetensors").stat().st_size
    # seeds differ, and the seeded row is their mean with the sample standard deviation
    a, b = (results["prune"]["per_seed"][i]["student"]["mrr"] for i in (0, 1))
    assert a != b
    assert results["prune"]["student"]["mrr"] == pytest.approx((a + b) / 2)
    assert results["prune"]["student"]["mrr_std"] == pytest.approx(abs(a - b) / math.sqrt(2))


def test_mean_rows_by_hand():
    h = _harness()
    runs = [{"seconds_per_epoch": s, "teacher": {"mrr": m, "hits@1": 0.1 * i, "hits@10": 1.0, "rarest_mrr": m,
                                                 "nonzero": 7}}
            for i, (s, m) in enumerate(((1.0, 0.2), (3.0, 0.4), (2.0, 0.9)))]
    out = h.mean_rows(runs)
    assert out["seeds"] == 3 and out["seconds_per_epoch"] == pytest.approx(2.0)
    assert out["teacher"]["mrr"] == pytest.approx(0.5)
    assert out["teacher"]["hits@1"] == pytest.approx(0.1)
    assert out["teacher"]["mrr_std"] == pytest.approx(torch.tensor([0.2, 0.4, 0.9]).std().item())
    assert out["teacher"]["nonzero"] == 7
    assert h.mean_rows(runs[:1]) == {**runs[0], "seeds": 1}
