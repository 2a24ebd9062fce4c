"""What evaluate and import-dglke tell the user: the triple-classification table,
which checkpoint / compact file was scored, the no-run message, the prune-only
dense row, and import-dglke's choice of scoring for our own exports."""
import json
from pathlib import Path

from metasd_dgl.cli import main

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "datasets" / "toy")


def _train(run, method="prune"):
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "1", "--dim", "4",
                 "--batch-size", "8", "--method", method]) == 0


def test_evaluate_says_what_it_scored(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run)
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--no-plots", "--triple-classification"]) == 0
    out = capsys.readouterr().out
    record = json.loads((run / "eval" / "test.json").read_text())
    assert record["checkpoint_file"] == str(run / "checkpoints" / "best.pt")
    assert record["student_source"] == "masks" and record["teacher_trained"] is False
    assert "dense (untrained)" in out and "no teacher" in out  # the prune-only dense row is labelled
    assert record["rows"] == {"teacher": "dense (untrained)", "student": "student"}
    tc = json.loads((run / "eval" / "triple_classification.json").read_text())["results"]
    assert f"student  test  roc_auc {tc['student']['overall']['test']['roc_auc']:.4f}" in out

    compact = run / "export" / "student.msd"
    assert main(["evaluate", str(run), "--no-plots", "--compact", str(compact)]) == 0
    assert json.loads((run / "eval" / "test.json").read_text())["student_source"] == str(compact)
    assert f"student from {compact}" in capsys.readouterr().out


def test_no_run_names_the_checkpoints_looked_for(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "empty/checkpoints/best.pt: checkpoint not found (nor last.pt)" in err


def test_import_dglke_picks_native_scoring_for_our_exports(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run, "plain")
    assert main(["export-dglke", str(run), "--out", str(tmp_path / "kge")]) == 0
    capsys.readouterr()
    args = ["import-dglke", str(tmp_path / "kge"), "--dataset", str(run / "data")]
    assert main(args) == 0
    auto = capsys.readouterr().out
    assert "scoring native (auto: metasd-dgl export" in auto
    assert main(args + ["--scoring", "native"]) == 0
    native = capsys.readouterr().out
    assert auto.splitlines()[2:] == native.splitlines()[1:]  # the same numbers
    assert main(args + ["--scoring", "dglke"]) == 0
    assert "note: this is a metasd-dgl export" in capsys.readouterr().out
