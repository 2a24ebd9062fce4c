"""Bad-input cases run through the real CLI entry point (``metasd_dgl.cli.main``).

Each case builds its hostile input in a scratch folder, runs one command and
expects exit code 2, a single ``error:`` line matching ``expect``, no
traceback, and no half-written output.  ``tests/test_bad_inputs.py`` runs
them; ``python tests/bad_inputs.py`` prints the table of messages users see.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "datasets" / "toy"


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list]  # scratch folder -> argv
    expect: str  # regex the error line must match
    leaves: str = ""  # path (relative to scratch) that must NOT exist afterwards


def _toy_copy(tmp: Path, edit: Callable[[Path], None] = lambda p: None) -> Path:
    dst = tmp / "raw"
    shutil.copytree(TOY, dst)
    edit(dst)
    return dst


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _pre(tmp: Path, edit) -> list:
    return ["preprocess", str(_toy_copy(tmp, edit)), "--out", str(tmp / "out")]


def _train(tmp: Path, *extra: str) -> list:
    return ["train", "--quiet", "--dataset", str(TOY), "--run-dir", str(tmp / "run"), "--epochs", "1", *extra]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _run_with_ckpt(tmp: Path, content: bytes | None = None, evil: bool = False) -> list:
    """A real tiny run folder whose best/last checkpoints are then replaced."""
    from metasd_dgl.cli import main

    run = tmp / "run"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(_train(tmp, "--dim", "2")) == 0
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        if evil:
            import torch
            torch.save({"format": "metasd-dgl-checkpoint/1", "x": _Evil()}, path)
        elif content is not None:
            path.write_bytes(content if content != b"TRUNCATE" else path.read_bytes()[:300])
    return ["evaluate", str(run)]


def _other_dataset_resume(tmp: Path) -> list:
    from metasd_dgl.cli import main
    from metasd_dgl.checkpoint import load_checkpoint, save_checkpoint

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(_train(tmp, "--dim", "2")) == 0
    ckpt = tmp / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    state["dataset"] = "0000:1111"
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, ckpt)
    return ["train", "--resume", str(tmp / "run")]


def _resume_with(tmp: Path, *extra: str) -> list:
    from metasd_dgl.cli import main

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(_train(tmp, "--dim", "2")) == 0
    return ["train", "--resume", str(tmp / "run"), *extra]


def _taken_data_folder(tmp: Path) -> list:
    """A run folder whose data/ holds the toy dataset, then a misspelt dataset into it."""
    from metasd_dgl.cli import main

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(_train(tmp, "--dim", "2")) == 0
    return ["train", "--quiet", "--dataset", "nosuch", "--run-dir", str(tmp / "run")]


def _pipeline_changed(tmp: Path) -> list:
    """A finished pipeline run, re-run with more epochs (needs --resume)."""
    from metasd_dgl.cli import main

    cfg = _write(tmp / "c.yaml", f"run_dir: {tmp / 'run'}\ndata:\n  dataset: {TOY}\nmodel:\n  dim: 2\n"
                                 "train:\n  epochs: 1\n")
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(["train", "--quiet", "--config", str(cfg)]) == 0
    return ["pipeline", str(cfg), "--quiet", "--set", "train.epochs=2"]


def _disk_full(tmp: Path) -> list:
    """ENOSPC on every checkpoint write (patched in; undone by run_case)."""
    import torch
    real = torch.save

    def full(obj, f, *a, **k):  # noqa: ARG001
        raise OSError(28, "No space left on device")

    torch.save = full
    _disk_full.undo = lambda: setattr(torch, "save", real)
    return _train(tmp, "--dim", "2")


def _line(path: Path, n: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n")


CASES = [
    Case("missing input path", lambda t: ["preprocess", str(t / "nope"), "--out", str(t / "out")],
         r"nope: (file not found|not a built-in dataset)", "out"),
    Case("unknown built-in name", lambda t: ["preprocess", "fb15k-999", "--out", str(t / "out")],
         r"fb15k-999: not a built-in dataset", "out"),
    Case("wrong column count", lambda t: _pre(t, lambda p: _line(p / "train.txt", 3, "a\tb")),
         r"train.txt:3: expected 3 tab-separated fields, got 2", "out"),
    Case("four columns", lambda t: _pre(t, lambda p: _line(p / "valid.txt", 2, "a\tb\tc\td")),
         r"valid.txt:2: expected 3 tab-separated fields, got 4", "out"),
    Case("empty field", lambda t: _pre(t, lambda p: _line(p / "test.txt", 1, "alice\t\tbob")),
         r"test.txt:1: empty field", "out"),
    Case("not UTF-8", lambda t: _pre(t, lambda p: _write(p / "train.txt", b"alice\tlikes\t\xff\xfe\n")),
         r"train.txt:1: not UTF-8 text", "out"),
    Case("missing split", lambda t: _pre(t, lambda p: (p / "test.txt").unlink()),
         r"missing split 'test'", "out"),
    Case("empty split", lambda t: _pre(t, lambda p: _write(p / "valid.txt", "\n\n")),
         r"valid.txt: no triples", "out"),
    Case("corrupt tar.gz", lambda t: ["preprocess", str(_write(t / "x.tar.gz", b"not a tar")), "--out", str(t / "out")],
         r"x.tar.gz: not a readable tar archive", "out"),
    Case("unknown format", lambda t: ["preprocess", str(TOY), "--out", str(t / "out"), "--format", "csv"],
         r"Invalid value for '--format'", "out"),
    Case("unknown decoder", lambda t: _train(t, "--decoder", "holE"),
         r"Invalid value for '--decoder'", "run"),
    Case("unknown method", lambda t: _train(t, "--method", "distill"),
         r"Invalid value for '--method'", "run"),
    Case("unknown option key", lambda t: _train(t, "--set", "train.lrr=0.1"),
         r"unknown option 'train.lrr'", "run"),
    Case("--set without =", lambda t: _train(t, "--set", "train.lr"),
         r"expected KEY=VALUE", "run"),
    Case("negative dim", lambda t: _train(t, "--dim", "-4"), r"model.dim=-4 must be >= 1", "run"),
    Case("batch size 0", lambda t: _train(t, "--batch-size", "0"), r"train.batch_size=0 must be >= 1", "run"),
    Case("prune rate 1.5", lambda t: _train(t, "--prune-rate", "1.5"),
         r"metasd.prune_rate=1.5 must be in \[0, 1\)", "run"),
    Case("wrong type via --set", lambda t: _train(t, "--set", "train.epochs=many"),
         r"train.epochs: expected an integer, got 'many'", "run"),
    Case("config: unknown key", lambda t: _train(t, "--config", str(_write(t / "c.yaml", "model:\n  dimm: 3\n"))),
         r"c.yaml: unknown option 'model.dimm'", "run"),
    Case("config: wrong type", lambda t: _train(t, "--config", str(_write(t / "c.yaml", "model:\n  dim: [1, 2]\n"))),
         r"model.dim: expected an integer", "run"),
    Case("config: invalid YAML", lambda t: _train(t, "--config", str(_write(t / "c.yaml", "model: [1, 2\n"))),
         r"c.yaml: line \d+ invalid YAML", "run"),
    Case("config: not UTF-8", lambda t: _train(t, "--config", str(_write(t / "c.yaml", b"\xff\xfe"))),
         r"c.yaml: not a UTF-8 text file", "run"),
    Case("config: missing file", lambda t: _train(t, "--config", str(t / "none.yaml")),
         r"none.yaml: config file not found", "run"),
    Case("device cuda without CUDA", lambda t: _train(t, "--device", "cuda"), r"CUDA", "run/checkpoints"),
    Case("unwritable output folder", lambda t: _train(t, "--run-dir", str(_write(t / "file", "x") / "sub")),
         r"file", "file/sub"),
    Case("evaluate: no run", lambda t: ["evaluate", str((t / "empty").mkdir() or t / "empty")],
         r"checkpoint not found"),
    Case("evaluate: truncated checkpoint", lambda t: _run_with_ckpt(t, b"TRUNCATE"),
         r"corrupted or truncated checkpoint"),
    Case("evaluate: not a checkpoint", lambda t: _run_with_ckpt(t, b"hello, world"),
         r"(or not a checkpoint|not a metasd-dgl checkpoint)"),
    Case("evaluate: malicious pickle", lambda t: _run_with_ckpt(t, evil=True), r"refused to load: .*unsafe pickle.*nothing in it was run"),
    Case("resume: other dataset", _other_dataset_resume, r"another dataset \(id-map hashes 0000:1111 vs"),
    Case("resume: incompatible config", lambda t: _resume_with(t, "--dim", "3"),
         r"incompatible config: model.dim: 2 \(checkpoint\) vs 3 \(now\)"),
    Case("unknown tracker", lambda t: _train(t, "--tracker", "wandb"), r"Invalid value for '--tracker'", "run"),
    Case("tracker via --set", lambda t: _train(t, "--set", "train.tracker=mlflow"),
         r"train.tracker='mlflow' is not one of none, tensorboard", "run"),
    Case("--quiet with --json", lambda t: _train(t, "--json"), r"--quiet and --json exclude each other", "run"),
    Case("unknown dataset into a used run folder", _taken_data_folder, r"nosuch: not a built-in dataset"),
    Case("pipeline: changed config", _pipeline_changed,
         r"holds a run with another config \(train.epochs: 1 \(run\) vs 2 \(now\)\); pass --resume"),
    Case("disk full while checkpointing", _disk_full, r"could not write checkpoint \(No space left on device\)"),
]


def run_case(case: Case, tmp: Path) -> tuple[int, str, str]:
    """-> (exit code, stdout, stderr) of the case run in ``tmp`` (cwd = tmp)."""
    from metasd_dgl.cli import main

    old = Path.cwd()
    os.chdir(tmp)
    try:
        argv = case.setup(tmp)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
        return code, out.getvalue(), err.getvalue()
    finally:
        undo = getattr(case.setup, "undo", None)
        if undo:
            undo()
        os.chdir(old)


def message(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


if __name__ == "__main__":
    import tempfile

    print("| # | case | exit | message |\n|---|---|---|---|")
    for i, case in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as tmp:
            code, _, err = run_case(case, Path(tmp))
        msg = re.sub(str(tmp).replace("/", r"/"), "<tmp>", message(err)).replace("|", "\\|")
        print(f"| {i} | {case.name} | {code} | `{msg}` |")
    sys.exit(0)
