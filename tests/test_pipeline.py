"""End to end through the CLI: pipeline on a tiny dataset, run-folder contents,
validation-only model selection, and the compact student ranking exactly like
the masked dense model.

Re-running `pipeline`: an interrupted run resumes (ending bitwise equal to an
uninterrupted one), a finished one skips training and evaluation unless asked,
a changed config needs --resume (the flag the message names)."""
import json
import signal
from pathlib import Path

import pytest
import torch

from metasd_dgl.store.checkpoint import load_checkpoint
from metasd_dgl.cli import main
from metasd_dgl.store.export import read_model as load_student
from metasd_dgl.evaluate.ranking import rank_split
from metasd_dgl.stages import load_run
from run_helpers import TOY, interrupt_after_first_epoch as _interrupt_after_first_epoch

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)
REPO = Path(__file__).resolve().parents[1]


def test_pipeline_metasd_end_to_end(tmp_path, kg_dir, capsys, monkeypatch):
    monkeypatch.setenv("METASD_DATA_DIR", str(kg_dir))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "data:\n  dataset: nations\n"
        "model:\n  dim: 8\n"
        "train:\n  method: metasd\n  epochs: 4\n  batch_size: 256\nvalid:\n  every: 1\n  patience: 0\n"
        "metasd:\n  quiz_batch_size: 64\n")
    assert main(["pipeline", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    for rel in ("config.yaml", "metrics.jsonl", "checkpoints/best.pt", "checkpoints/last.pt",
                "export/teacher.safetensors", "export/student.safetensors", "export/manifest.json", "eval/test.json",
                "data/manifest.json", "data/graph.bin", "data/filter.npz"):
        assert (run / rel).exists(), rel
    assert "student" in out and "teacher" in out

    # model selection used validation only: best epoch = argmax of the student's validation MRR
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    valid = {r["epoch"]: r["valid"]["student"]["mrr"] for r in records if "valid" in r}
    cfg_, data, model, student, ckpt = load_run(run, "best")
    masks = ckpt["masks"]
    assert ckpt["state"]["best_epoch"] == max(valid, key=valid.get)
    assert "test" not in json.dumps(records)

    # the compact student: much smaller than the teacher file (the 12% bound at real sizes is
    # tests/test_export.py's; this model is so small that fixed headers weigh), identical ranks
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["ratio_to_teacher_file"] < 0.3
    params, loaded_masks, _ = load_student(run / "export" / "student.safetensors")
    masked = rank_split(model, data.test, data.num_relations, data.filter, weights=student)
    compact_model = load_run(run, "best")[2]
    compact_model.load_state_dict({**compact_model.state_dict(), **params})
    compact = rank_split(compact_model, data.test, data.num_relations, data.filter)
    assert torch.equal(masked.tail, compact.tail) and torch.equal(masked.head, compact.head)
    for name, m in masks.items():
        assert torch.equal(loaded_masks[name], m)
        assert torch.count_nonzero(params[name]) <= int(m.sum())

    # evaluate --compact prints the same student numbers as the masked evaluation
    assert main(["evaluate", str(run), "--compact", str(run / "export" / "student.safetensors"), "--no-plots"]) == 0
    a = json.loads((run / "eval" / "test.json").read_text())["results"]["student"]["both"]
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    b = json.loads((run / "eval" / "test.json").read_text())["results"]["student"]["both"]
    assert a == b

    # rerunning the pipeline on a finished run does not train again
    before = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(["pipeline", str(cfg), "--quiet"]) == 0
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_preprocess_command_prints_counts(tmp_path, kg_dir, capsys):
    assert main(["preprocess", "umls", "--out", str(tmp_path / "p"), "--data-dir", str(kg_dir)]) == 0
    assert "135 entities, 46 relations, train/valid/test 5216/652/661" in capsys.readouterr().out


# ------------------------------------------------------------------ re-running

def _config(tmp: Path, name: str, epochs: int = 2) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"run_dir: {tmp / name}\ndata:\n  dataset: {TOY}\nmodel:\n  dim: 4\n"
                    f"train:\n  method: prune\n  epochs: {epochs}\n  batch_size: 8\nvalid:\n  every: 1\n  patience: 0\n")
    return path


def test_interrupted_pipeline_resumes_on_rerun(tmp_path, monkeypatch, capsys):
    ref_cfg = _config(tmp_path, "ref")
    assert main(["pipeline", str(ref_cfg), "--quiet"]) == 0
    ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")

    cfg = _config(tmp_path, "run")
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        assert main(["pipeline", str(cfg)]) == 128 + signal.SIGTERM
    capsys.readouterr()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"]["epoch"] == 1

    assert main(["pipeline", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'run' / 'checkpoints' / 'last.pt'}: 1 epochs done" in out
    assert "epoch 2/2" in out and "epoch 1/2" not in out
    got = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert got["state"]["epoch"] == 2 and got["state"]["step"] == ref["state"]["step"]
    for name, w in ref["model"].items():
        assert torch.equal(got["model"][name], w), name
    assert (tmp_path / "run" / "eval" / "test.json").is_file()

    # finished: no training, no evaluation, and it says so
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ev = tmp_path / "run" / "eval" / "test.json"
    before = last.stat().st_mtime_ns, ev.stat().st_mtime_ns
    assert main(["pipeline", str(cfg)]) == 0
    out = capsys.readouterr().out
    best = got["state"]["best_mrr"]
    assert f"already trained (epoch 2, valid MRR {best:.4f}): skipping training" in out
    assert "pass --reevaluate" in out and "dense (unmasked)" in out  # the stored table, rows named as evaluate does
    assert (last.stat().st_mtime_ns, ev.stat().st_mtime_ns) == before
    assert main(["pipeline", str(cfg), "--reevaluate", "--quiet"]) == 0
    assert last.stat().st_mtime_ns == before[0] and ev.stat().st_mtime_ns != before[1]

    # another config: the message names pipeline's --resume, which then continues the run
    more = _config(tmp_path, "run", epochs=3)
    assert main(["pipeline", str(more), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: 2 (run) vs 3 (now)" in err and "pass --resume" in err
    assert main(["pipeline", str(more), "--resume", "--quiet"]) == 0
    assert load_checkpoint(last)["state"]["epoch"] == 3


def _cli(cwd: Path, *args: str):
    """``metasd-dgl ARGS`` in a fresh process in ``cwd`` -> (exit code, stdout + stderr)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "METASD_DATA_DIR"}  # the repository's own copy
    env.update(PYTHONPATH=str(REPO), DGLBACKEND="pytorch", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "metasd_dgl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_preprocess_train_evaluate_chain_uses_the_processed_folder_in_place(tmp_path):
    """The commands as a user types them: preprocess into data/umls, train on that folder (R-GCN),
    evaluate, export and resume the run; the run folder holds no copy of the data."""
    import re

    from metasd_dgl.data.fingerprint import dataset_fingerprint
    from metasd_dgl.data.preprocess import load_processed

    code, out = _cli(tmp_path, "preprocess", "umls", "--out", "data/umls")
    assert code == 0, out
    processed = tmp_path / "data" / "umls"
    before = _snapshot(processed)
    code, out = _cli(tmp_path, "train", "--dataset", "data/umls", "--encoder", "rgcn", "--set", "train.epochs=1",
                     "--dim", "8")
    assert code == 0, out
    assert "missing split" not in out
    run = tmp_path / re.search(r"^run folder (\S+)$", out, re.M).group(1)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "train.log"]
    assert f"processed_dir: {processed}\n" in (run / "config.yaml").read_text()
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["config"]["data"]["processed_dir"] == str(processed)
    assert ckpt["dataset"] == dataset_fingerprint(load_processed(processed))

    elsewhere = tmp_path / "elsewhere"  # the run finds its data by the stored absolute path
    elsewhere.mkdir()
    code, out = _cli(elsewhere, "evaluate", str(run), "--no-plots")
    assert code == 0, out
    assert json.loads((run / "eval" / "test.json").read_text())["results"]["teacher"]["both"]["mrr"] > 0
    code, out = _cli(elsewhere, "export", str(run))
    assert code == 0, out
    code, out = _cli(elsewhere, "train", "--resume", str(run), "--set", "train.epochs=2")
    assert code == 0, out
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 2
    assert not (run / "data").exists() and not (elsewhere / "data").exists() and not (elsewhere / "runs").exists()
    assert _snapshot(processed) == before  # read, never written

    processed.rename(tmp_path / "moved")
    code, out = _cli(elsewhere, "evaluate", str(run), "--no-plots")
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, out
    assert lines[0] == (f"error: {run}: needs its processed dataset folder {processed}, which is missing; "
                        f"restore it, or rebuild it with metasd-dgl preprocess SOURCE --out {processed}")


def test_pipeline_and_tune_take_a_processed_folder(tmp_path, monkeypatch, capsys):
    from metasd_dgl.data.preprocess import preprocess

    monkeypatch.chdir(tmp_path)
    processed = preprocess(TOY, tmp_path / "toy")
    before = _snapshot(processed)
    run = tmp_path / "run"
    assert main(["pipeline", "--quiet", "--dataset", "toy", "--run-dir", str(run), "--set", "train.method=plain",
                 "--set", "train.epochs=1", "--set", "model.dim=4", "--set", "train.batch_size=8"]) == 0
    assert (run / "eval" / "test.json").is_file() and not (run / "data").exists()
    config = tmp_path / "t.yaml"
    config.write_text("data:\n  dataset: ./toy\nmodel:\n  dim: 4\ntrain:\n  epochs: 1\n  batch_size: 8\n")
    (tmp_path / "t.tune.yaml").write_text("train.lr: {low: 0.01, high: 0.3, log: true}\n")
    study = tmp_path / "study"
    assert main(["tune", str(config), "--trials", "1", "--study-dir", str(study)]) == 0
    assert not (study / "data").exists()
    trial_configs = list(study.rglob("config.yaml"))
    assert trial_configs and all(f"processed_dir: {processed}\n" in c.read_text() for c in trial_configs)
    assert _snapshot(processed) == before
    # a built-in name still means the built-in: "toy" is no built-in, "umls" is, even with a ./umls folder
    from metasd_dgl.data.registry import processed_folder

    assert processed_folder("toy") == processed and processed_folder(str(processed)) == processed
    preprocess(TOY, tmp_path / "umls")
    assert processed_folder("umls") is None and processed_folder("./umls") == tmp_path / "umls"
    capsys.readouterr()
