"""Plots: the plotted series come from the files, and valid PNGs are written."""
import json
import math

import pytest
from click.testing import CliRunner
from PIL import Image

from metasd_dgl.errors import DataError
from metasd_dgl.tools.plots import (
    bucket_comparison, bucket_series, make_plots, relation_frequency_series, training_series,
)

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)

METRICS = [
    {"epoch": 1, "step": 2, "seconds": 0.1, "loss": 3.0, "ce_teacher": 2.0, "ce_student": 2.5, "kd": 0.5, "density": 0.1},
    {"epoch": 2, "step": 4, "seconds": 0.1, "loss": 2.0, "ce_teacher": 1.5, "ce_student": 1.8, "kd": 0.4, "density": 0.1},
    {"epoch": 2, "valid": {"teacher": {"mrr": 0.30, "hits@10": 0.5}, "student": {"mrr": 0.25}}},
    {"epoch": 3, "step": 6, "seconds": 0.1, "loss": 9.0, "ce_teacher": 9.0, "ce_student": 9.0, "kd": 9.0},
    {"epoch": 3, "step": 6, "seconds": 0.1, "loss": 1.5, "ce_teacher": 1.0, "ce_student": 1.2, "kd": 0.3},  # resumed
    {"epoch": 4, "valid": {"teacher": {"mrr": 0.40}, "student": {"mrr": 0.35}}},
]


def _eval(teacher, student=None, kinds=("relation",)):
    def summary(mrrs):
        return {"both": {"mrr": sum(mrrs) / len(mrrs)},
                "buckets": {k: {f"rel freq {i}": {"mrr": m, "count": 2} for i, m in enumerate(mrrs)} for k in kinds}}
    results = {"teacher": summary(teacher)}
    if student:
        results["student"] = summary(student)
    return {"split": "test", "checkpoint": "best", "epoch": 4, "results": results}


def _png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_training_series_reads_the_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in METRICS) + "\n")
    s = training_series(path)
    assert s["epoch"] == [1, 2, 3]
    assert s["losses"]["loss"] == [3.0, 2.0, 1.5]  # the resumed epoch-3 record wins
    assert s["losses"]["kd"] == [0.5, 0.4, 0.3]
    assert "density" not in s["losses"] and "seconds" not in s["losses"]
    assert list(s["losses"])[0] == "loss"
    assert s["valid_epoch"] == [2, 4]
    assert s["valid_mrr"] == {"student": [0.25, 0.35], "teacher": [0.30, 0.40]}
    path.write_text("{bad\n")
    with pytest.raises(DataError, match="metrics.jsonl:1"):
        training_series(path)


def test_bucket_series_and_comparison(tmp_path):
    dense = _write(tmp_path / "dense.json", _eval([0.2, 0.3, 0.5]))
    metasd = _write(tmp_path / "metasd.json", _eval([0.2, 0.3, 0.5], [0.18, 0.29, 0.45]))
    labels, mrrs, variant = bucket_series(metasd)
    assert (labels, mrrs, variant) == (["rel freq 0", "rel freq 1", "rel freq 2"], [0.18, 0.29, 0.45], "student")
    assert bucket_series(metasd, "teacher")[1] == [0.2, 0.3, 0.5]
    assert bucket_series(dense)[2] == "teacher"
    empty = _eval([0.1])
    empty["results"]["teacher"]["buckets"]["relation"]["rel freq 0"]["mrr"] = None  # an empty bucket
    assert math.isnan(bucket_series(_write(tmp_path / "e.json", empty))[1][0])
    with pytest.raises(DataError, match="no 'student'"):
        bucket_series(dense, "student")
    _png(bucket_comparison({"dense": dense, "MetaSD": metasd, "prune": (metasd, "teacher")}, tmp_path / "b.png"))


def test_relation_frequency_series(tmp_path):
    stats = _write(tmp_path / "stats.json", {"relation_frequency": [3, 10, 1, 6],
                                             "relation_buckets": {"bucket": [0, 1, 0, 1], "labels": ["tail", "head"]}})
    s = relation_frequency_series(stats)
    # rarest first, like the bucket plots (bucket 0 = the long tail, on the left)
    assert s["relation"] == [2, 0, 3, 1] and s["frequency"] == [1, 3, 6, 10] and s["bucket"] == [0, 0, 1, 1]


def test_make_plots_writes_all_plots(tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in METRICS))
    _write(run / "eval" / "test.json", _eval([0.2, 0.3, 0.5], [0.18, 0.29, 0.45], kinds=("relation", "head")))
    _write(tmp_path / "data" / "stats.json", {"relation_frequency": [5, 2, 9],
                                              "relation_buckets": {"bucket": [1, 0, 1], "labels": ["a", "b"]}})
    (run / "config.yaml").write_text(f"data:\n  processed_dir: {tmp_path / 'data'}\n")
    other = tmp_path / "prune_run"
    _write(other / "eval" / "test.json", _eval([0.2, 0.3, 0.5], [0.1, 0.2, 0.4], kinds=("relation", "head")))
    made = make_plots(run, {"prune-only": other})
    names = sorted(p.name for p in made)
    assert names == ["buckets_head.png", "buckets_relation.png", "relation_frequency.png",
                     "teacher_vs_student_head.png", "teacher_vs_student_relation.png", "training_curves.png"]
    for p in made:
        assert p.parent == run / "plots"
        _png(p)


def test_plot_command(tmp_path):
    from test_predict import make_run

    from metasd_dgl.tools.commands import plot_command

    run = make_run(tmp_path)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in METRICS))
    other = _write(tmp_path / "other.json", _eval([0.1, 0.2, 0.3]))
    res = CliRunner().invoke(plot_command, [str(run), "--compare", f"dense={other}@teacher"])
    assert res.exit_code == 0, res.output
    assert {p.rsplit("/", 1)[1] for p in res.output.split()} == {"training_curves.png", "buckets_relation.png",
                                                                "relation_frequency.png"}
    res = CliRunner().invoke(plot_command, [str(run), "--compare", "nolabel"])
    assert res.exit_code == 2 and "LABEL=RUN_DIR" in res.output


def test_prune_teacher_left_out_and_no_pyplot(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    record = _eval([0.2, 0.3, 0.5], [0.1, 0.2, 0.4])
    record["teacher_trained"] = False  # prune-only: the dense weights are no teacher
    _write(run / "eval" / "test.json", record)
    made = make_plots(run)
    assert sorted(p.name for p in made) == ["buckets_relation.png"]
    probe = "import sys, metasd_dgl.tools.plots; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the object API: no pyplot, no backend switch


def test_a_half_written_last_line_is_read_next_time(tmp_path):
    """A reader never blocks a running trainer: the line being appended (no newline yet) is skipped;
    a broken line before it is still an error."""
    from metasd_dgl.errors import DataError
    from metasd_dgl.tools.plots import training_series

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "loss": 1.5}\n{"epoch": 3, "lo', encoding="utf-8")
    series = training_series(path)
    assert series["epoch"] == [1, 2] and series["losses"]["loss"] == [2.0, 1.5]
    path.write_text('{"epoch": 1, "lo\n{"epoch": 2, "loss": 1.5}\n', encoding="utf-8")
    with pytest.raises(DataError, match="metrics.jsonl:1: not a JSON line"):
        training_series(path)
