"""The training loop (train/loop.py) end to end on the toy graph: the batch cap, the CPU budget (a mid-epoch
stop that validates, a resume that continues the budget or closes the cut epoch), the plateau LR scheduler and
its exact resume, the student strategy fixed on resume, and a NaN/Inf loss stopping the run with a clear
message and the last good checkpoint kept."""
import json

import torch

from metasd_dgl.store.checkpoint import load_checkpoint
from metasd_dgl.cli import main
from run_helpers import REPO, TOY, train_toy as _train


def _epochs(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "seconds" in r]


def test_batches_per_epoch_caps_each_epoch(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "2", "--dim", "4",
                 "--batch-size", "2", "--set", "budget.batches_per_epoch=3"]) == 0
    assert [r["step"] for r in _epochs(run)] == [3, 6]


# ------------------------------------------------------------------ the CPU budget

class _FakeCPU:
    """``time.process_time`` of the loop module: every training step costs ``per_step`` CPU seconds."""

    def __init__(self, per_step: float) -> None:
        self.now, self.per_step, self.calls = 0.0, per_step, 0

    def process_time(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the second reading of a step
            self.now += self.per_step
        return self.now

    def __getattr__(self, name):  # perf_counter and the rest: the real module
        import time
        return getattr(time, name)


def test_cpu_budget_stops_mid_epoch_validates_and_resumes(tmp_path, monkeypatch):
    from metasd_dgl.train import loop

    fake = _FakeCPU(per_step=30.0)
    monkeypatch.setattr(loop, "time", fake)
    run = tmp_path / "run"
    # toy: 16 training triples -> 32 queries, batch 4 -> 8 batches an epoch; 30 CPU s a step, budget 5 min = 10 steps
    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "50", "--dim", "4",
            "--batch-size", "4", "--set", "valid.every=20", "--set", "budget.cpu_minutes=5"]
    assert main(args) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "seconds" in r]
    steps_per_epoch = epochs[0]["step"]
    assert [r["step"] for r in epochs] == [steps_per_epoch, 10]  # the second epoch cut at the 10th step
    assert [r["epoch"] for r in rows if "valid" in r] == [2]  # validated although valid_every is 20
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert state["cpu_seconds"] == 300.0 and state["best_epoch"] == 2
    assert "CPU budget spent" in (run / "train.log").read_text()
    # a larger budget continues from the stored CPU time: 2 more minutes = 4 more steps
    assert main(["train", "--quiet", "--resume", str(run), "--set", "budget.cpu_minutes=7"]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert state["step"] == 14 and state["cpu_seconds"] == 420.0


def test_a_run_resumed_after_its_budget_ran_out_mid_epoch_closes_that_epoch(tmp_path, monkeypatch):
    """Killed after the mid-epoch checkpoint of the step that spent the budget: the resume logs, validates
    and checkpoints the cut epoch (it does not stop with the epoch open)."""
    from metasd_dgl.train import loop

    monkeypatch.setattr(loop, "time", _FakeCPU(per_step=30.0))
    real_checkpoint = loop.Trainer.checkpoint

    def dies_after_step_10(self, *names):
        path = real_checkpoint(self, *names)
        if self.state.step == 10 and self.state.batch_in_epoch:
            raise KeyboardInterrupt("killed")  # stands in for SIGKILL right after the save
        return path

    run = tmp_path / "run"
    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "50", "--dim", "4",
            "--batch-size", "4", "--set", "valid.every=20", "--set", "budget.cpu_minutes=5",
            "--set", "checkpoint.every=10"]
    monkeypatch.setattr(loop.Trainer, "checkpoint", dies_after_step_10)
    try:
        main(args)
    except KeyboardInterrupt:
        pass
    killed = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert killed["step"] == 10 and killed["batch_in_epoch"] > 0 and killed["epoch"] == 1  # inside epoch 2
    monkeypatch.setattr(loop.Trainer, "checkpoint", real_checkpoint)
    assert main(["train", "--quiet", "--resume", str(run)]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert (state["epoch"], state["batch_in_epoch"], state["step"], state["best_epoch"]) == (2, 0, 10, 2)
    from metasd_dgl.stages import run_status
    from metasd_dgl.config import from_dict
    cfg = from_dict(load_checkpoint(run / "checkpoints" / "last.pt")["config"])
    assert run_status(run, cfg)["finished"]  # a spent budget is a finished run


# ------------------------------------------------------------------ the plateau LR scheduler

def test_plateau_scheduler_drops_lr_and_resumes_exactly(tmp_path):
    plateau = ["--lr", "0.5", "--set", "train.lr_scheduler=plateau", "--set", "plateau.patience=0",
               "--set", "plateau.factor=0.5"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    _train(whole, "--epochs", "6", *plateau)
    _train(part, "--epochs", "3", *plateau)
    _train(part, "--epochs", "6", *plateau, "--resume", str(part))
    a, b = load_checkpoint(whole / "checkpoints" / "last.pt"), load_checkpoint(part / "checkpoints" / "last.pt")
    for n, w in a["model"].items():
        assert torch.equal(w, b["model"][n]), n
    assert a["scheduler"] == b["scheduler"]
    # Patience 0: every validation without a (relative 1e-4) gain halves the lr; replay the rule.
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    lr, best = 0.5, -1.0
    for mrr in [r["valid"]["teacher"]["mrr"] for r in rows if "valid" in r]:
        if mrr > best * (1 + 1e-4):
            best = mrr
        else:
            lr *= 0.5
    assert lr < 0.5, "the run should have hit a plateau"
    assert a["scheduler"]["_last_lr"] == [lr] and a["optimizer"]["param_groups"][0]["lr"] == lr
    logged = [r["lr"] for r in rows if "lr" in r]
    assert logged[0] == 0.5 and logged == sorted(logged, reverse=True)


# ------------------------------------------------------------------ resume

def test_resume_may_not_change_the_student_strategy(tmp_path):
    from metasd_dgl.errors import CheckpointError  # noqa: F401  (the CLI reports it as one error line)
    own = ["--method", "metasd", "--set", "metasd.quiz_fraction=0.2", "--set", "prune.rate=0.5"]
    _train(tmp_path / "run", "--epochs", "1", *own, "--set", "metasd.student=own")
    args = ["train", "--quiet", "--dataset", TOY, "--run-dir", str(tmp_path / "run"), "--dim", "4",
            "--batch-size", "4", "--epochs", "2", *own, "--set", "metasd.student=shared", "--resume",
            str(tmp_path / "run")]
    assert main(args) == 2  # metasd.student: 'own' (checkpoint) vs 'shared' (now)


# ------------------------------------------------------------------ numerics

def test_exploding_run_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--quiet", "--dataset", str(REPO / "datasets" / "toy"), "--run-dir", str(run),
                 "--epochs", "5", "--lr", "1e30", "--dim", "4", "--set", "model.init_scale=10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite" in err and "last good checkpoint" in err and "Traceback" not in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def _two_best_run(tmp_path):
    run = tmp_path / "run"
    records = _train(run, "--method", "metasd", "--epochs", "5", "--seed", "1")
    return run, [r for r in records if "valid" in r]


def test_each_model_keeps_its_own_best_checkpoint_and_evaluate_uses_it(tmp_path, capsys):
    from metasd_dgl.model.student import checkpoint_student
    from metasd_dgl.stages import load_run, stage_evaluate

    run, valid = _two_best_run(tmp_path)
    ck = run / "checkpoints"
    teacher = [r["valid"]["teacher"]["mrr"] for r in valid]
    student = [r["valid"]["student"]["mrr"] for r in valid]
    t_epoch = valid[teacher.index(max(teacher))]["epoch"]  # first of the maxima: only a strictly better one replaces
    s_epoch = valid[student.index(max(student))]["epoch"]
    best_t, best_s = load_checkpoint(ck / "best-teacher.pt"), load_checkpoint(ck / "best.pt")
    assert best_t["state"]["epoch"] == t_epoch and best_s["state"]["epoch"] == s_epoch
    assert t_epoch != s_epoch  # the run tells the two apart (toy, seed 1: epochs 5 and 4)
    last = load_checkpoint(ck / "last.pt")["state"]
    assert (last["teacher_best_epoch"], last["teacher_best_mrr"]) == (t_epoch, max(teacher))
    assert (last["best_epoch"], last["best_mrr"]) == (s_epoch, max(student))
    # every validation of the masked run logs the overlap diagnostic; the summary shows it once
    assert all(set(r["overlap"]) == {"mean_shared", "none_share", "dim"} for r in valid)
    log = (run / "train.log").read_text()
    assert log.count("overlap: a training triple's") == 1
    assert f"teacher's own best epoch {t_epoch}" in log

    cfg, data, model, weights, ckpt = load_run(run)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), best_t["model"][name])
    params = {n: p.clone() for n, p in best_s["model"].items()}
    want = checkpoint_student(params, best_s["masks"], best_s.get("student_weights"))
    assert all(torch.equal(weights[n], want[n]) for n in want)
    record = stage_evaluate(run, "valid", echo=print)
    assert record["epochs"] == {"teacher": t_epoch, "student": s_epoch}
    assert record["checkpoint_files"] == {"teacher": str(ck / "best-teacher.pt"), "student": str(ck / "best.pt")}
    # the teacher's validation MRR from its own best epoch is the one it had there (same protocol)
    assert abs(record["results"]["teacher"]["both"]["mrr"] - max(teacher)) < 1e-6
    assert abs(record["results"]["student"]["both"]["mrr"] - max(student)) < 1e-6
    assert f"(epoch {t_epoch})" in capsys.readouterr().out
    # --checkpoint picks one file for both
    _, _, model_last, _, ckpt_last = load_run(run, "last")
    assert ckpt_last["teacher_path"] == ckpt_last["path"] == str(ck / "last.pt")


def test_a_missing_or_damaged_teacher_best_is_named_and_falls_back_only_when_asked(tmp_path, capsys):
    run, valid = _two_best_run(tmp_path)
    ck = run / "checkpoints"
    s_epoch = load_checkpoint(ck / "best.pt")["state"]["epoch"]
    for damage in ("corrupt", "missing"):
        if damage == "corrupt":
            (ck / "best-teacher.pt").write_bytes(b"not a checkpoint")
        else:
            (ck / "best-teacher.pt").unlink()
        capsys.readouterr()
        assert main(["evaluate", str(run), "--split", "valid", "--no-plots"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "best-teacher.pt" in err[0], err
        assert "--teacher-fallback" in err[0] and "Traceback" not in err[0]
        assert main(["evaluate", str(run), "--split", "valid", "--no-plots", "--teacher-fallback"]) == 0
        out = capsys.readouterr().out
        assert "note: teacher from" in out
        record = json.loads((run / "eval" / "valid.json").read_text())
        assert record["epochs"] == {"teacher": s_epoch, "student": s_epoch}


def test_a_run_folder_with_one_best_file_still_evaluates(tmp_path):
    from metasd_dgl.stages import stage_evaluate
    from metasd_dgl.store.checkpoint import save_checkpoint

    run, _ = _two_best_run(tmp_path)
    ck = run / "checkpoints"
    (ck / "best-teacher.pt").unlink()
    for name in ("best.pt", "last.pt"):  # as written before the teacher's own best existed
        state = load_checkpoint(ck / name)
        for key in ("teacher_best_epoch", "teacher_best_mrr"):
            del state["state"][key]
        save_checkpoint({k: v for k, v in state.items() if k != "format"}, ck / name)
    record = stage_evaluate(run, "valid", echo=lambda *_: None)
    epoch = load_checkpoint(ck / "best.pt")["state"]["epoch"]
    assert record["epochs"] == {"teacher": epoch, "student": epoch}
