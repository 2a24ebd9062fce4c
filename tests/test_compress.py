"""End to end through the CLI on a tiny trained run (the toy dataset, MetaSD with whole-coordinate masks,
dim 16, 2 epochs): export --quantize, evaluate --from-file, predict --from-file, and the compress report
(sizes equal to the files', lossless fp32 variants scoring exactly like the checkpoint, the
recommendation chosen on validation, the Pareto front), and its bad inputs (one error line, exit 2)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from metasd_dgl.cli import main
from metasd_dgl.tools.compress import pareto_front, recommend

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "train.epochs=2", "--set", "model.dim=16", "--set", "train.batch_size=8",
        "--set", "metasd.quiz_batch_size=8", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(this run: metasd with a student, a run of another dataset)."""
    root = tmp_path_factory.mktemp("compress")
    run = root / "run"
    assert main(["pipeline", "--dataset", str(REPO / "datasets" / "toy"), "--run-dir", str(run),
                 "--set", "train.method=metasd", "--set", "prune.structure=dimension", *TINY]) == 0
    other_data = root / "toy2"
    shutil.copytree(REPO / "datasets" / "toy", other_data)
    with open(other_data / "train.txt", "a", encoding="utf-8") as fh:
        fh.write("zed\tlikes\talice\n")  # one more entity: another dataset
    other = root / "other"
    assert main(["pipeline", "--dataset", str(other_data), "--run-dir", str(other),
                 "--set", "train.method=plain", *TINY]) == 0
    return run, other


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_export_quantize_and_evaluate_from_file(runs, capsys):
    run, _ = runs
    assert main(["export", str(run), "--quantize", "fp32", "--quantize", "int8"]) == 0
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    for role in ("teacher", "student"):
        for scheme in ("fp32", "int8"):
            name = f"{role}.safetensors" if scheme == "fp32" else f"{role}.{scheme}.safetensors"
            entry = manifest["files"][name]
            assert entry["bytes"] == (run / "export" / name).stat().st_size
            assert entry["sha256"] == hashlib.sha256((run / "export" / name).read_bytes()).hexdigest()
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    plain = json.loads((run / "eval" / "test.json").read_text())
    # the fp32 student file stores the kept columns exactly: the same ranking as the masked checkpoint
    assert main(["evaluate", str(run), "--no-plots", "--from-file", str(run / "export" / "student.safetensors")]) == 0
    rec = json.loads((run / "eval" / "test.json").read_text())
    assert rec["student_source"].endswith("student.safetensors")
    assert rec["results"]["student"] == plain["results"]["student"]
    assert rec["results"]["teacher"] == plain["results"]["teacher"]
    assert main(["evaluate", str(run), "--no-plots", "--from-file", str(run / "export" / "teacher.safetensors")]) == 0
    assert json.loads((run / "eval" / "test.json").read_text())["results"]["teacher"] == plain["results"]["teacher"]
    capsys.readouterr()
    assert main(["predict", str(run), "--from-file", str(run / "export" / "student.int8.safetensors"),
                 "--head", "alice", "--relation", "likes", "--k", "2"]) == 0
    assert "[student int8 from" in capsys.readouterr().out
    # a later export --quantize int4 keeps the int8 files; the manifest lists them all
    assert main(["export", str(run), "--quantize", "int4"]) == 0
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert set(manifest["files"]) == {f"{r}.{s}safetensors" for r in ("teacher", "student") for s in ("", "int8.", "int4.")}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((run / "export" / name).read_bytes()).hexdigest()


def test_compress_report(runs, capsys):
    run, _ = runs
    capsys.readouterr()
    assert main(["compress", str(run), "--compare", f"again={run}@student", "--tolerance", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "| variant | file | bytes | ratio | valid MRR | test MRR |" in out and "recommended: " in out
    assert "[1/9] teacher fp32" in out  # progress lines
    folder = run / "compress"
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = [v["name"] for v in report["variants"]]
    assert names == ["teacher fp32", "teacher fp16", "teacher int8", "teacher int4", "student fp32",
                     "student int8", "student int4", "again student fp32", "again student int8"]
    base = (folder / "teacher.safetensors").stat().st_size
    for v in report["variants"]:
        assert v["bytes"] == (folder / v["file"]).stat().st_size  # the size on disk, exactly
        assert v["ratio"] == pytest.approx(v["bytes"] / base)
        for split in ("valid", "test"):
            assert 0 < v[split]["mrr"] <= 1 and 0 <= v[split]["hits@10"] <= 1
    assert report["variants"][7]["file"] == "compare/again/student.safetensors"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {v["file"] for v in report["variants"]} | {"report.json", "report.png"}
    # lossless variants score exactly like the checkpoint (evaluate's numbers)
    assert main(["evaluate", str(run), "--no-plots", "--split", "valid"]) == 0
    valid = json.loads((run / "eval" / "valid.json").read_text())["results"]
    by = {v["name"]: v for v in report["variants"]}
    assert by["teacher fp32"]["valid"]["mrr"] == pytest.approx(valid["teacher"]["both"]["mrr"], abs=1e-12)
    assert by["student fp32"]["valid"]["mrr"] == pytest.approx(valid["student"]["both"]["mrr"], abs=1e-12)
    assert by["again student fp32"]["test"] == by["student fp32"]["test"]
    # the rarest third: bucket 0 of 3 relation-frequency buckets
    assert report["rare_bucket"]["num_buckets"] == 3 and report["rare_bucket"]["label"].startswith("rel freq")
    # the recommendation: the smallest within tolerance of the teacher's *validation* MRR
    floor = by["teacher fp32"]["valid"]["mrr"] - 0.01
    ok = [v for v in report["variants"] if v["valid"]["mrr"] >= floor - 1e-12]
    assert report["recommended"] == min(ok, key=lambda v: (v["bytes"], -v["valid"]["mrr"]))["name"]
    split = report["split"]
    assert [v["pareto"] for v in report["variants"]] == pareto_front(
        [(v["bytes"], v[split]["mrr"]) for v in report["variants"]])
    # tolerance 1: anything goes -> the smallest file
    assert main(["compress", str(run), "--tolerance", "1", "--split", "valid"]) == 0
    report = json.loads((folder / "report.json").read_text())
    assert report["split"] == "valid" and len(report["variants"]) == 7
    assert report["recommended"] == min(report["variants"], key=lambda v: v["bytes"])["name"]


def test_recommendation_never_uses_test():
    variants = [{"name": "t", "bytes": 100, "valid": {"mrr": 0.5}, "test": {"mrr": 0.5}},
                {"name": "small, good on test only", "bytes": 10, "valid": {"mrr": 0.3}, "test": {"mrr": 0.9}},
                {"name": "mid", "bytes": 50, "valid": {"mrr": 0.495}, "test": {"mrr": 0.1}}]
    assert recommend(variants, 0.5, 0.01) == 2
    assert recommend(variants, 0.5, 0.0) == 0
    assert pareto_front([(100, 0.5), (10, 0.9), (50, 0.1), (10, 0.9)]) == [False, True, False, True]


def test_bad_inputs(runs, tmp_path, capsys):
    run, other = runs
    capsys.readouterr()
    assert main(["compress", str(run), "--tolerance", "-0.5"]) == 2
    assert "--tolerance -0.5: must be >= 0" in _error_line(capsys)
    assert main(["compress", str(run), "--compare", f"o={other}"]) == 2
    line = _error_line(capsys)
    assert f"--compare o={other}: trained on another dataset" in line and "12 entities" in line

    assert main(["export", str(other), "--quantize", "int8"]) == 0
    foreign = other / "export" / "teacher.int8.safetensors"
    capsys.readouterr()
    assert main(["evaluate", str(run), "--no-plots", "--from-file", str(foreign)]) == 2
    assert f"error: {foreign}: holds a model of 12 entities" in _error_line(capsys)
    good = (run / "export" / "teacher.int8.safetensors").read_bytes()
    cases = {"truncated.safetensors": (good[:-7], "not a readable safetensors file, or truncated"),
             "student.msd": (good, "an .msd/.msq file of an older metasd-dgl"),
             "old.msq": (b"MSDQUANT" + good[8:], "re-export the run with this version: metasd-dgl export RUN_DIR")}
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert main(["evaluate", str(run), "--no-plots", "--from-file", str(path)]) == 2
        line = _error_line(capsys)
        assert line.startswith(f"error: {path}: ") and message in line, line


def test_reference_is_the_best_fp32_variant_by_validation(runs, capsys):
    from metasd_dgl.errors import UserError
    from metasd_dgl.tools.compress import choose_reference

    def v(name, label, role, scheme, valid, size):
        return {"name": name, "label": label, "role": role, "scheme": scheme, "bytes": size,
                "valid": {"mrr": valid}, "test": {"mrr": 0.0}}

    variants = [v("teacher fp32", None, "teacher", "fp32", 0.50, 1000), v("teacher int8", None, "teacher", "int8", 0.499, 260),
                v("student fp32", None, "student", "fp32", 0.45, 100),
                v("dense teacher fp32", "dense", "teacher", "fp32", 0.53, 1000),
                v("dense teacher int8", "dense", "teacher", "int8", 0.525, 250)]
    ref = choose_reference(variants)
    assert variants[ref]["name"] == "dense teacher fp32"  # the compared run beats this run's teacher
    # within 0.01 of the reference (0.53): only the dense run's files; the smallest of them
    assert recommend(variants, variants[ref]["valid"]["mrr"], 0.01) == 4
    # --reference: a variant's name or a run's label alone (its fp32 variant)
    assert choose_reference(variants, "teacher") == 0 and choose_reference(variants, "student fp32") == 2
    assert choose_reference(variants, "dense") == 3
    assert recommend(variants, variants[choose_reference(variants, "teacher")]["valid"]["mrr"], 0.01) == 4
    with pytest.raises(UserError) as exc:
        choose_reference(variants, "nope")
    assert "'teacher fp32'" in str(exc.value) and "'dense'" in str(exc.value)
    # through the CLI: one error line naming the labels, exit 2, before any scoring
    run, _ = runs
    capsys.readouterr()
    assert main(["compress", str(run), "--reference", "nope"]) == 2
    line = _error_line(capsys)
    assert "--reference 'nope': no such variant" in line and "'student fp32'" in line and "'teacher'" in line
    assert main(["compress", str(run), "--reference", "student", "--split", "valid"]) == 0
    report = json.loads((run / "compress" / "report.json").read_text())
    assert report["reference"] == "student fp32" and "student fp32 *(reference)*" in report["table"]
    assert report["reference_chosen"] == "given (--reference)"
    assert main(["compress", str(run), "--split", "valid"]) == 0
    report = json.loads((run / "compress" / "report.json").read_text())
    fp32 = [v for v in report["variants"] if v["scheme"] == "fp32"]
    assert report["reference"] == max(fp32, key=lambda v: v["valid"]["mrr"])["name"]
    assert report["reference_chosen"] == "best fp32 by valid MRR"
