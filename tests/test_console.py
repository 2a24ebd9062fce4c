"""What training shows: readable lines (header, epoch, validation, summary), the same
lines in RUN_DIR/train.log, JSON lines only with --json, and the summary alone with
--quiet; the default run folder per dataset; the lines' formatting; the rows' one name
everywhere (console, eval JSON, plots)."""
import json
import re
from pathlib import Path

import pytest

from metasd_dgl.cli import main
from metasd_dgl.config import CHOICES, dataset_label, default_run_dir, load_config
from metasd_dgl.console import ROW_NAMES, epoch_line, row_names, sig, valid_line
from run_helpers import TINY

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "datasets" / "toy")
ARGS = ["--dataset", TOY, "--epochs", "2", "--dim", "4", "--batch-size", "8", "--set", "valid.every=1"]


def test_readable_lines_and_train_log(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--run-dir", str(run), "--method", "prune"]) == 0
    out = capsys.readouterr().out
    log = (run / "train.log").read_text()
    assert "{" not in out  # no JSON on the console
    for text in ("dataset " + TOY + ": 11 entities, 3 relations, train/valid/test 13/3/3",
                 "model kge+complex dim 4, method prune, prune rate 0.9", f"run folder {run}",
                 "epoch 1/2  loss ", "valid epoch 1: dense (unmasked) MRR ", "new best -> checkpoints/best.pt",
                 "done: 2 epochs, 8 steps; reached train.epochs=2", "best epoch "):
        assert text in out, text
        assert text in log, text
    # the numbers shown are those of metrics.jsonl, to 4 significant digits
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first = records[0]
    assert f"loss {first['loss']:.4g}" in out
    valid = records[1]["valid"]
    assert f"student MRR {valid['student']['mrr']:.4f}" in out


def test_json_and_quiet_modes(tmp_path, capsys):
    assert main(["train", *ARGS, "--run-dir", str(tmp_path / "j"), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    parsed = [json.loads(x) for x in lines]  # every line is JSON
    assert parsed[:-1] == [json.loads(x) for x in (tmp_path / "j" / "metrics.jsonl").read_text().splitlines()]
    assert parsed[-1]["summary"]["epochs"] == 2 and parsed[-1]["summary"]["stop_reason"] == "reached train.epochs=2"

    assert main(["train", *ARGS, "--run-dir", str(tmp_path / "q"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("done: 2 epochs") and "epoch 1/2" not in out
    assert "epoch 1/2  loss" in (tmp_path / "q" / "train.log").read_text()  # the log has everything


def test_resume_says_what_it_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--run-dir", str(run), "--quiet"]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {run / 'checkpoints' / 'last.pt'}: 2 epochs done, step 8" in out
    assert "epoch 3/3" in out and "epoch 1/3" not in out


def test_default_run_folder_names_dataset_and_method(tmp_path, monkeypatch, capsys, kg_dir):
    assert dataset_label("umls") == "umls"
    assert dataset_label("/data/kg/FB15k-237.tar.gz") == "FB15k-237"
    assert dataset_label("my data/toy/") == "toy"
    cfg = load_config(overrides={"data.dataset": "kinship", "train.method": "metasd"})
    assert cfg.run_dir == default_run_dir(cfg) == "runs/kinship-complex-metasd"
    assert load_config(overrides={"model.encoder": "rgcn", "model.decoder": "distmult"}).run_dir == \
        "runs/umls-rgcn-distmult-plain"
    assert load_config(overrides={"run_dir": "x"}).run_dir == "x"

    # two datasets in one working folder never collide
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METASD_DATA_DIR", str(kg_dir))
    small = ["--epochs", "1", "--dim", "2", "--quiet", "--batch-size", "512"]
    assert main(["train", "--dataset", TOY, *small]) == 0
    assert main(["train", "--dataset", "nations", *small]) == 0
    assert (tmp_path / "runs" / "toy-complex-plain" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "runs" / "nations-complex-plain" / "checkpoints" / "best.pt").is_file()
    capsys.readouterr()


def test_line_formats():
    assert sig(0.000123456) == "0.0001235" and sig(12345.678) == "1.235e+04" and sig(3) == "3"
    line = epoch_line({"epoch": 2, "step": 10, "seconds": 1.234, "reg": 0.5, "ce_student": 2.0, "loss": 3.25,
                       "meta_grad_norm": 9.0, "kd_student": 1e-3, "density": 0.1}, 5)
    assert line == "epoch 2/5  loss 3.25  ce_student 2  kd_student 0.001  reg 0.5  kept 0.1  1.23 s/epoch"
    assert valid_line(4, {"teacher": {"mrr": 0.5}, "student": {"mrr": 0.25}}, 0.25, 4, True) == \
        "valid epoch 4: teacher MRR 0.5000  student MRR 0.2500  best 0.2500 (epoch 4)  new best -> checkpoints/best.pt"


# ------------------------------------------------------------------ rows

def test_row_names():
    assert row_names(["teacher"], "plain") == {"teacher": "dense"}
    assert row_names(["teacher", "student"], "metasd") == {"teacher": "teacher", "student": "student"}
    assert row_names(["teacher", "student"], "kd") == {"teacher": "teacher", "student": "student"}
    assert row_names(["teacher", "student"], "prune") == {"teacher": "dense (unmasked)", "student": "student"}
    assert row_names(["teacher"]) == {"teacher": "dense"}  # a lone dense row: a plain run
    assert row_names(["teacher", "student", "reference student"], "metasd")["reference student"] == \
        "reference student"
    assert set(ROW_NAMES) == set(CHOICES["train.method"])  # every method's rows are named
    # the validation line names its rows by the run's method
    result = {"teacher": {"mrr": 0.1}, "student": {"mrr": 0.2}}
    assert valid_line(1, result, 0.2, 1, True, "prune").startswith(
        "valid epoch 1: dense (unmasked) MRR 0.1000  student MRR 0.2000")
    assert valid_line(1, {"teacher": {"mrr": 0.3}}, 0.3, 1, True, "plain").startswith("valid epoch 1: dense MRR 0.3000")


@pytest.mark.slow  # runs metasd-dgl end to end
@pytest.mark.parametrize("method,rows", [("plain", ["dense"]), ("prune", ["dense (unmasked)", "student"]),
                                         ("metasd", ["teacher", "student"])])
def test_rows_have_one_name_everywhere(tmp_path, monkeypatch, capsys, method, rows):
    from metasd_dgl.tools import plots
    labels = []
    real = plots.bucket_comparison
    monkeypatch.setattr(plots, "bucket_comparison",
                        lambda runs, *a, **k: labels.append(list(runs)) or real(runs, *a, **k))
    run = tmp_path / "run"
    assert main(["pipeline", "--dataset", TOY, "--run-dir", str(run), *TINY, "--set", f"train.method={method}"]) == 0
    out = capsys.readouterr().out
    valid = next(line for line in out.splitlines() if line.startswith("valid epoch 1: "))
    assert re.findall(r"(?:^valid epoch 1: |  )([a-z() ]+?) MRR [0-9.]+", valid) == rows  # the validation line
    assert re.findall(r"^(\S.*?)\s+both\s+[0-9.]+", out, flags=re.M) == rows  # the evaluation table
    assert f"(valid {rows[-1]} MRR " in out  # the summary names the selection row
    record = json.loads((run / "eval" / "test.json").read_text())
    assert list(record["names"].values()) == rows and list(record["results"]) == list(record["names"])
    shown = [label.split(" ", 1)[1] for label in labels[0]]  # "<run> <row>" in the bucket plots
    assert shown == [r for r in rows if r != "dense (unmasked)"]
