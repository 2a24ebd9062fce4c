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
    keeps: str = ""  # path (relative to scratch) that must still exist, unchanged, afterwards


#: Callables run after each case (file-size limits lifted, lock holders released): run_case drains it.
_UNDO: list = []


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
    from metasd_dgl.store.checkpoint import load_checkpoint, save_checkpoint

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


def _file_limit(nbytes: int) -> None:
    """A real file-size limit on this process (RLIMIT_FSIZE, SIGXFSZ ignored): a larger write fails with
    EFBIG, as under ``ulimit -f``; lifted by run_case."""
    import resource
    import signal

    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))

    def undo() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_sig)

    _UNDO.append(undo)


def _quiet_main(argv: list) -> None:
    from metasd_dgl.cli import main

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        code = main(argv)
    assert code == 0, (argv, err.getvalue())


def _disk_full(tmp: Path) -> list:
    """EFBIG on the first checkpoint write: a real 8 KiB file-size limit (the toy's data files are
    smaller; a checkpoint is ~16 KiB).  torch's writer hides the errno; the message names it."""
    _file_limit(8192)
    return _train(tmp, "--dim", "2")


def _disk_full_resume(tmp: Path) -> list:
    """A finished epoch, then a resumed run whose checkpoint write hits the limit: last.pt is kept."""
    _quiet_main(_train(tmp, "--dim", "2"))
    _file_limit(8192)
    return ["train", "--quiet", "--resume", str(tmp / "run"), "--set", "train.epochs=2"]


def _big_dataset(tmp: Path, lines: int = 2000) -> Path:
    dst = tmp / "big"
    dst.mkdir()
    for split, n in (("train", lines), ("valid", 20), ("test", 20)):
        rows = [f"e{i % 97}\tr{i % 5}\te{(i * 7 + 3) % 97}" for i in range(n)]
        (dst / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return dst


def _preprocess_full(tmp: Path) -> list:
    """graph.bin (~6 KiB for the toy) over a 4 KiB limit: DGL's DGLError hides the errno."""
    _file_limit(4096)
    return ["preprocess", str(TOY), "--out", str(tmp / "out")]


def _extract_full(tmp: Path) -> list:
    """An archive whose train.txt (~30 KiB) cannot be extracted under an 8 KiB limit: the archive is fine."""
    import tarfile

    src = _big_dataset(tmp)
    archive = tmp / "big.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="big")
    _file_limit(8192)
    return ["preprocess", str(archive), "--out", str(tmp / "out")]


def _export_full(tmp: Path) -> list:
    """A good export, then a re-export whose teacher file exceeds the limit: the old set is kept."""
    _quiet_main(_train(tmp, "--dim", "64", "--method", "prune"))
    _quiet_main(["export", str(tmp / "run")])
    _file_limit(2048)
    return ["export", str(tmp / "run")]


def _eval_full(tmp: Path) -> list:
    _quiet_main(_train(tmp, "--dim", "2"))
    _file_limit(1024)
    return ["evaluate", str(tmp / "run"), "--no-plots"]


def _plot_full(tmp: Path) -> list:
    import matplotlib.font_manager  # noqa: F401 - its font cache is written before the limit

    _quiet_main(_train(tmp, "--dim", "2"))
    _file_limit(16384)
    return ["plot", str(tmp / "run")]


def _dglke_export_full(tmp: Path) -> list:
    _quiet_main(_train(tmp, "--dim", "16", "--decoder", "distmult"))
    _file_limit(256)
    return ["export-dglke", str(tmp / "run"), "--out", str(tmp / "dglke")]


def _hold_lock(folder: Path, inside: bool = True) -> int:
    """A live process holding ``folder``'s write lock until run_case ends (no timing involved: it says
    'locked' once it holds it, and waits on its stdin)."""
    import subprocess

    code = ("import sys\nfrom metasd_dgl.store.lock import folder_lock\n"
            "with folder_lock(sys.argv[1], inside=sys.argv[2] == '1'):\n"
            "    print('locked', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), "1" if inside else "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"

    def release() -> None:
        proc.stdin.close()
        proc.wait(timeout=60)
        proc.stdout.close()

    _UNDO.append(release)
    return proc.pid


def _locked_run(tmp: Path, command: str = "train") -> list:
    _hold_lock(tmp / "run")
    if command == "pipeline":
        cfg = _write(tmp / "c.yaml", f"run_dir: {tmp / 'run'}\ndata:\n  dataset: {TOY}\nmodel:\n  dim: 2\n"
                                     "train:\n  epochs: 1\n")
        return ["pipeline", str(cfg), "--quiet"]
    return _train(tmp, "--dim", "2")


def _locked_resume(tmp: Path) -> list:
    _quiet_main(_train(tmp, "--dim", "2"))
    _hold_lock(tmp / "run")
    return ["train", "--quiet", "--resume", str(tmp / "run"), "--set", "train.epochs=2"]


def _locked_out(tmp: Path) -> list:
    _hold_lock(tmp / "out", inside=False)
    return ["preprocess", str(TOY), "--out", str(tmp / "out")]


def _locked_export(tmp: Path) -> list:
    _quiet_main(_train(tmp, "--dim", "2"))
    _hold_lock(tmp / "run" / "export", inside=False)
    return ["export", str(tmp / "run")]


def _force_foreign(tmp: Path, manifest: str = "") -> list:
    """A processed folder with a user's NOTES.md; --force must not delete it."""
    _quiet_main(["preprocess", str(TOY), "--out", str(tmp / "out")])
    _write(tmp / "out" / "NOTES.md", "my notes\n")
    if manifest:
        _write(tmp / "out" / "manifest.json", manifest)
    return ["preprocess", str(_big_dataset(tmp, 50)), "--out", str(tmp / "out"), "--force"]


def _compact_other(tmp: Path, dim: str = "2", edit=None) -> list:
    """evaluate --compact with the student file of another dataset (one more entity) or model (dim)."""
    _quiet_main(["train", "--quiet", "--dataset", str(TOY), "--run-dir", str(tmp / "a"), "--epochs", "1",
                 "--dim", dim, "--method", "prune"])
    _quiet_main(["export", str(tmp / "a")])
    source = _toy_copy(tmp, edit) if edit else TOY
    _quiet_main(["train", "--quiet", "--dataset", str(source), "--run-dir", str(tmp / "b"), "--epochs", "1",
                 "--dim", "2", "--method", "prune"])
    return ["evaluate", str(tmp / "b"), "--no-plots", "--compact", str(tmp / "a" / "export" / "student.safetensors")]


def _compact_teacher(tmp: Path) -> list:
    _quiet_main(_train(tmp, "--dim", "2", "--method", "prune"))
    _quiet_main(["export", str(tmp / "run")])
    return ["evaluate", str(tmp / "run"), "--no-plots", "--compact",
            str(tmp / "run" / "export" / "teacher.safetensors")]


def _compact_truncated(tmp: Path) -> list:
    _quiet_main(_train(tmp, "--dim", "2", "--method", "prune"))
    _quiet_main(["export", str(tmp / "run")])
    student = tmp / "run" / "export" / "student.safetensors"
    copy = _write(tmp / "cut.safetensors", student.read_bytes()[:40])
    return ["evaluate", str(tmp / "run"), "--no-plots", "--compact", str(copy)]


def _crafted(tmp: Path, edit_tensors=lambda t: None, edit_meta=lambda m: None, role: str = "student",
             command: str = "evaluate", *train: str) -> list:
    """A tiny prune run's int8 export, its ``role`` file re-saved (valid safetensors) with tensors and
    metadata edited: only this project's checks can refuse it."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _quiet_main(_train(tmp, "--dim", "2", "--method", "prune", *train))
    _quiet_main(["export", str(tmp / "run"), "--quantize", "int8"])
    src = tmp / "run" / "export" / f"{role}.int8.safetensors"
    tensors = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["metasd"])
    edit_tensors(tensors)
    edit_meta(meta)
    save_file(tensors, str(tmp / "crafted.safetensors"), metadata={"metasd": json.dumps(meta)})
    if command == "predict":
        return ["predict", str(tmp / "run"), "--from-file", str(tmp / "crafted.safetensors"), "--head", "alice",
                "--relation", "likes"]
    return ["evaluate", str(tmp / "run"), "--no-plots", "--from-file", str(tmp / "crafted.safetensors")]


def _scale(value: float):
    def edit(t) -> None:
        t["encoder.entity::scale"][0] = value
    return edit


def _index(t) -> None:
    """An element student's int32 index list (prune rate 0.99 at dim 64: fewer bytes than the bitmap)
    with a position beyond the table."""
    import torch

    idx = t["encoder.entity::index"]
    assert idx.dtype == torch.int32, idx.dtype
    idx[-1] = 10 ** 6


def _from_file(tmp: Path, make, command: str = "evaluate") -> list:
    """A trained toy run and ``--from-file make(tmp)`` (a special file, an old file...)."""
    _quiet_main(_train(tmp, "--dim", "2"))
    path = make(tmp)
    if command == "predict":
        return ["predict", str(tmp / "run"), "--from-file", str(path), "--head", "alice", "--relation", "likes"]
    return ["evaluate", str(tmp / "run"), "--no-plots", "--from-file", str(path)]


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


def _user_files(tmp: Path, folder: str, command: list, what: str = "file") -> list:
    """A run whose export/ or compress/ was written, then a user's file or folder put inside."""
    _quiet_main(_train(tmp, "--dim", "2", "--method", "prune"))
    _quiet_main([command[0], str(tmp / "run"), *command[1:]])
    if what == "file":
        _write(tmp / "run" / folder / "NOTES.md", "my notes\n")
    else:
        _write(tmp / "run" / folder / "mine" / "keep.txt", "mine\n")
    return [command[0], str(tmp / "run"), *command[1:]]


def _dglke(tmp: Path, edit=None, model: str = "DistMult") -> list:
    """A processed toy folder and a DGL-KE save folder fitting it (no id maps: ids in order), then ``edit``."""
    import json

    import numpy as np

    _quiet_main(["preprocess", str(TOY), "--out", str(tmp / "data")])
    counts = json.loads((tmp / "data" / "manifest.json").read_text())["counts"]
    folder = tmp / "dglke"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / f"toy_{model}_entity.npy", rng.normal(size=(counts["entities"], 4)).astype(np.float32))
    np.save(folder / f"toy_{model}_relation.npy", rng.normal(size=(counts["relations"], 4)).astype(np.float32))
    _write(folder / "config.json", json.dumps({"dataset": "toy", "model": model, "emb_size": 4, "gamma": 0.0}))
    if edit is not None:
        edit(folder)
    return ["import-dglke", str(folder), "--dataset", str(tmp / "data")]


def _archive_dir(tmp: Path) -> list:
    """--data-dir naming a folder that holds umls.tar.gz but not the kinship archive asked for."""
    folder = tmp / "archives"
    folder.mkdir()
    shutil.copyfile(REPO / "datasets" / "kg" / "umls.tar.gz", folder / "umls.tar.gz")
    return ["preprocess", "kinship", "--out", str(tmp / "out"), "--data-dir", str(folder)]


def _vendored_tampered(tmp: Path) -> list:
    """The vendored folder (datasets/kg) with a umls.tar.gz whose bytes no longer match SHA256SUMS."""
    from metasd_dgl.data import registry

    folder = tmp / "kg"
    folder.mkdir()
    data = bytearray((REPO / "datasets" / "kg" / "umls.tar.gz").read_bytes())
    data[200] ^= 0xFF
    (folder / "umls.tar.gz").write_bytes(bytes(data))
    shutil.copyfile(REPO / "datasets" / "kg" / "SHA256SUMS", folder / "SHA256SUMS")
    env, vendored = os.environ.pop("METASD_DATA_DIR", None), registry.vendored_dirs

    def undo() -> None:
        registry.vendored_dirs = vendored
        if env is not None:
            os.environ["METASD_DATA_DIR"] = env
    _UNDO.append(undo)
    registry.vendored_dirs = lambda: [folder]
    return ["preprocess", "umls", "--out", str(tmp / "out")]


def _npy(path: Path, array) -> None:
    import numpy as np

    np.save(path, array)


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _config(folder: Path, text: str) -> None:
    _write(folder / "config.json", text)


def _huge_line(tmp: Path, size: int = 2 << 30) -> list:
    """train.txt: one line of ``size`` bytes without a newline (a sparse file: no disk used)."""
    raw = _toy_copy(tmp)
    with open(raw / "train.txt", "wb") as fh:
        fh.truncate(size)
    return ["preprocess", str(raw), "--out", str(tmp / "out")]


def _line(path: Path, n: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n")


# ---- hostile files and folders: links, special files, alias bombs, foreign datasets (helpers)
_BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9 if p else ['lol'] * 9)}]\n"
                for p, c in zip(["", "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi"))


def _bomb_config(tmp: Path, key: str) -> list:
    """A YAML "billion laughs": nine levels of nine aliases under a real option."""
    section, option = key.split(".")
    return _train(tmp, "--config", str(_write(tmp / "c.yaml", f"{_BOMB}{section}:\n  {option}: *i\n")))


def _trained(tmp: Path, *extra: str) -> Path:
    _quiet_main(_train(tmp, "--dim", "2", *extra))
    return tmp / "run"


def _victim(tmp: Path) -> Path:
    return _write(tmp / "victim.txt", "precious\n")


def _lock_link(tmp: Path, name: str, command: list) -> list:
    run = _trained(tmp)
    (run / name).symlink_to(_victim(tmp))
    return command


def _lock_special(tmp: Path, kind: str) -> list:
    (tmp / "run").mkdir()
    lock = tmp / "run" / ".metasd.lock"
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "folder":
        lock.mkdir()
    else:
        os.link(_victim(tmp), lock)
    return _train(tmp, "--dim", "2")


def _alias_locked(tmp: Path) -> list:
    (tmp / "run").mkdir()
    (tmp / "alias").symlink_to("run")
    _hold_lock(tmp / "run")
    return ["train", "--quiet", "--dataset", str(TOY), "--run-dir", str(tmp / "alias"), "--epochs", "1"]


def _other_data(tmp: Path) -> Path:
    return _big_dataset(tmp, 50)


def _edited_config(tmp: Path) -> list:
    run = _trained(tmp)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace(f"dataset: {TOY}", f"dataset: {_other_data(tmp)}"))
    return ["train", "--resume", str(run), "--set", "train.epochs=2"]


def _pipeline_other(tmp: Path, *extra: str) -> list:
    _trained(tmp)
    cfg = _write(tmp / "p.yaml", f"run_dir: {tmp / 'run'}\ndata:\n  dataset: {_other_data(tmp)}\nmodel:\n"
                                 "  dim: 2\ntrain:\n  epochs: 1\n")
    return ["pipeline", str(cfg), "--quiet", *extra]


def _swapped_data(tmp: Path, *command: str) -> list:
    run = _trained(tmp)
    _quiet_main(["preprocess", str(_other_data(tmp)), "--out", str(tmp / "proc")])
    shutil.rmtree(run / "data")
    os.rename(tmp / "proc", run / "data")
    return [*command, str(run)]


def _special(tmp: Path, kind: str) -> str:
    if kind == "fifo":
        os.mkfifo(tmp / "fifo")
        return str(tmp / "fifo")
    return "/dev/zero"


def _predict_queries(tmp: Path, kind: str) -> list:
    run = _trained(tmp)
    return ["predict", str(run), "--queries", _special(tmp, kind)]


def _tune_space(tmp: Path, space: str) -> list:
    cfg = _write(tmp / "c.yaml", f"run_dir: {tmp / 'run'}\ndata:\n  dataset: {TOY}\nmodel:\n  dim: 2\n")
    return ["tune", str(cfg), "--trials", "1", "--study-dir", str(tmp / "study"), "--space", space]


def _fifo_split(tmp: Path) -> list:
    raw = _toy_copy(tmp)
    (raw / "valid.txt").unlink()
    os.mkfifo(raw / "valid.txt")
    return ["preprocess", str(raw), "--out", str(tmp / "out")]


def _huge_config(tmp: Path) -> list:
    path = tmp / "c.yaml"
    with open(path, "wb") as fh:
        fh.truncate(64 << 20)  # sparse: no disk used
    return _train(tmp, "--config", str(path))


def _subset(tmp: Path, k: int, edit=None) -> list:
    return ["subset", str(_toy_copy(tmp, edit) if edit else TOY), "--top-entities", str(k), "--out", str(tmp / "sub")]


def _corrupt_best(tmp: Path) -> list:
    run = _trained(tmp)
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:300])
    return ["train", "--resume", str(run), "--set", "train.epochs=2"]



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
    Case("--data-dir without the archive", _archive_dir,
         r"archives: data folder \(--data-dir\) has no kinship.tar.gz \(built-in kinship\); it holds umls.tar.gz",
         "out"),
    Case("vendored archive checksum mismatch", _vendored_tampered,
         r"kg/umls.tar.gz: sha256 mismatch .*SHA256SUMS lists\).*nothing was extracted$", "out"),
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
         r"prune.rate=1.5 must be in \[0, 1\)", "run"),
    Case("wrong type via --set", lambda t: _train(t, "--set", "train.epochs=many"),
         r"train.epochs: expected an integer, got 'many'", "run"),
    Case("config: unknown key", lambda t: _train(t, "--config", str(_write(t / "c.yaml", "model:\n  dimm: 3\n"))),
         r"c.yaml: line 2: unknown option 'model.dimm'", "run"),
    Case("config: wrong type", lambda t: _train(t, "--config", str(_write(t / "c.yaml", "model:\n  dim: [1, 2]\n"))),
         r"model.dim: expected an integer", "run"),
    Case("config: invalid YAML", lambda t: _train(t, "--config", str(_write(t / "c.yaml", "model: [1, 2\n"))),
         r"c.yaml: line \d+: invalid YAML", "run"),
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
    Case("tracker via --set", lambda t: _train(t, "--set", "runtime.tracker=mlflow"),
         r"runtime.tracker='mlflow' is not one of none, tensorboard", "run"),
    Case("--quiet with --json", lambda t: _train(t, "--json"), r"--quiet and --json exclude each other", "run"),
    Case("unknown dataset into a used run folder", _taken_data_folder, r"nosuch: not a built-in dataset"),
    Case("pipeline: changed config", _pipeline_changed,
         r"holds a run with another config \(train.epochs: 1 \(run\) vs 2 \(now\)\); pass --resume"),
    Case("disk full while checkpointing", _disk_full,
         r"checkpoints/last.pt: could not write checkpoint: file too large .*errno EFBIG", "run/checkpoints/last.pt"),
    # ---- disk full (a real file-size limit) at each writing stage: the file and the cause named
    Case("file-size limit on a resumed run's checkpoint", _disk_full_resume,
         r"last.pt: could not write checkpoint: file too large .*EFBIG.*the previous file is kept"),
    Case("file-size limit while writing graph.bin", _preprocess_full,
         r"out/graph.bin: could not write: file too large .*EFBIG.*; nothing was written to .*out$", "out"),
    Case("file-size limit while extracting an archive", _extract_full,
         r"train.txt: could not extract the archive into the scratch folder .*file too large .*EFBIG", "out"),
    Case("file-size limit while exporting", _export_full,
         r"export/teacher.safetensors: could not write: file too large .*EFBIG.*; the previous files in .*export are kept",
         keeps="run/export/teacher.safetensors"),
    Case("file-size limit while writing eval json", _eval_full,
         r"eval/test.json: could not write: file too large .*EFBIG", "run/eval/test.json"),
    Case("file-size limit while writing a plot", _plot_full,
         r"plots/training_curves.png: could not write the plot: file too large .*EFBIG",
         "run/plots/training_curves.png"),
    Case("file-size limit while exporting DGL-KE files", _dglke_export_full,
         r"dglke/.*_entity.npy: could not write: file too large .*EFBIG"),
    # ---- two writers of one folder: the second is refused at once, naming the holder
    Case("train into a run folder another process trains", _locked_run,
         r"run: run folder in use by another metasd-dgl process \(pid \d+, lock file .*\.metasd\.lock\); wait",
         "run/checkpoints"),
    Case("pipeline into a run folder another process trains", lambda t: _locked_run(t, "pipeline"),
         r"run: run folder in use by another metasd-dgl process \(pid \d+", "run/checkpoints"),
    Case("resume a run another process is training", _locked_resume,
         r"run: run folder in use by another metasd-dgl process \(pid \d+"),
    Case("preprocess into a folder another process writes", _locked_out,
         r"out: processed dataset folder in use by another metasd-dgl process \(pid \d+", "out"),
    Case("export while another export runs", _locked_export,
         r"export: export folder in use by another metasd-dgl process \(pid \d+", "run/export"),
    # ---- --force replaces only what the project wrote
    Case("--force over a folder with a user's file", _force_foreign,
         r"out: --force replaces only files metasd-dgl wrote, and this folder also holds NOTES.md; move them",
         keeps="out/NOTES.md"),
    Case("--force over a folder with a user's file and a broken manifest",
         lambda t: _force_foreign(t, "{not json"),
         r"--force replaces only files metasd-dgl wrote.*NOTES.md", keeps="out/NOTES.md"),
    Case("preprocess into a non-dataset folder", lambda t: ["preprocess", str(TOY), "--out",
                                                            str(_write(t / "out" / "x.txt", "x").parent)],
         r"out: exists and is not a processed dataset folder; choose another folder", keeps="out/x.txt"),
    Case("preprocess --out is a file", lambda t: ["preprocess", str(TOY), "--out", str(_write(t / "out", "x"))],
         r"Invalid value for '--out': Directory .*out' is a file", keeps="out"),
    # ---- files from elsewhere: one line saying what does not match
    Case("evaluate --compact: another dataset's student", lambda t: _compact_other(
        t, edit=lambda p: _write(p / "train.txt", (p / "train.txt").read_text() + "zed\tknows\talice\n")),
         r"student.safetensors: holds a model of 11 entities, this run's dataset \(.*\) has 12: it is another "
         r"dataset's model"),
    Case("evaluate --compact: another model's student (dim)", lambda t: _compact_other(t, dim="3"),
         r"student.safetensors: holds a model with dim=3, this run's has dim=2: it is another model's file"),
    Case("evaluate --compact: a teacher file", _compact_teacher,
         r"teacher.safetensors: holds a teacher; --compact takes a student file"),
    Case("evaluate --compact: truncated student", _compact_truncated,
         r"cut.safetensors: not a model file of metasd-dgl export \(not a readable safetensors file, or truncated"),
    # ---- stored models: older formats, crafted files, special files
    Case("evaluate --from-file: an older .msd", lambda t: _from_file(t, lambda d: _write(d / "student.msd", b"x" * 64)),
         r"student.msd: an .msd/.msq file of an older metasd-dgl, no longer read; re-export the run with this "
         r"version: metasd-dgl export RUN_DIR"),
    Case("predict --from-file: an older .msq (renamed)", lambda t: _from_file(
        t, lambda d: _write(d / "old.bin", b"MSDQUANT\x01\x00\x00\x00" + b"\x00" * 64), "predict"),
         r"old.bin: an .msd/.msq file of an older metasd-dgl, no longer read; re-export"),
    Case("predict --from-file: a truncated file", lambda t: _from_file(
        t, lambda d: _write(d / "cut.safetensors", (d / "run" / "checkpoints" / "best.pt").read_bytes()[:100]),
        "predict"), r"cut.safetensors: not a model file of metasd-dgl export \(not a readable safetensors file"),
    Case("evaluate --from-file: a FIFO", lambda t: _from_file(t, _fifo),
         r"pipe: is a FIFO \(named pipe\), not a regular file"),
    Case("predict --from-file: /dev/zero", lambda t: _from_file(t, lambda d: Path("/dev/zero"), "predict"),
         r"/dev/zero: is a device, not a regular file"),
    Case("evaluate --from-file: a folder", lambda t: _from_file(t, lambda d: d / "run"),
         r"run: is a folder, not a regular file"),
    Case("evaluate --from-file: a shape claiming a huge model", lambda t: _crafted(
        t, edit_meta=lambda m: m["tensors"]["encoder.entity"].__setitem__("shape", [10 ** 9, 10 ** 9])),
         r"crafted.safetensors: encoder.entity: has shape \(1000000000, 1000000000\), this run's model needs "
         r"\(11, 4\): it is another dataset's or model's file"),
    Case("predict --from-file: a model dim of 10**12", lambda t: _crafted(
        t, edit_meta=lambda m: m["model"].__setitem__("dim", 10 ** 12), command="predict"),
         r"crafted.safetensors: holds a model with dim=1000000000000, this run's has dim=2"),
    Case("evaluate --from-file: a NaN scale", lambda t: _crafted(t, _scale(float("nan"))),
         r"encoder.entity: a quantisation scale is zero, negative or not finite"),
    Case("predict --from-file: a zero scale", lambda t: _crafted(t, _scale(0.0), command="predict"),
         r"encoder.entity: a quantisation scale is zero, negative or not finite"),
    Case("evaluate --from-file: a negative scale", lambda t: _crafted(t, _scale(-1.0), role="teacher"),
         r"encoder.entity: a quantisation scale is zero, negative or not finite"),
    Case("evaluate --from-file: element index out of range", lambda t: _crafted(
        t, _index, lambda m: None, "student", "evaluate", "--dim", "64", "--prune-rate", "0.99"),
         r"encoder.entity::index holds positions out of range \[0, 1408\) or unsorted"),
    Case("evaluate --from-file: a model of another dataset", lambda t: _crafted(
        t, edit_meta=lambda m: m["dataset"].__setitem__("fingerprint", "0:0")),
         r"crafted.safetensors: was written for another dataset than"),
    # ---- export and compress replace only what their manifest lists
    Case("export into a folder with a user's file", lambda t: _user_files(t, "export", ["export"]),
         r"export: export replaces only the files its manifest.json lists, and this folder also holds NOTES.md; "
         r"move them elsewhere", keeps="run/export/NOTES.md"),
    Case("export --quantize into a folder with a user's folder",
         lambda t: _user_files(t, "export", ["export", "--quantize", "int8"], "folder"),
         r"this folder also holds mine/; move them", keeps="run/export/mine/keep.txt"),
    Case("compress into a folder with a user's file", lambda t: _user_files(t, "compress", ["compress"]),
         r"compress: compress replaces only the files its manifest.json lists, and this folder also holds NOTES.md",
         keeps="run/compress/NOTES.md"),
    Case("compress into a folder with a user's folder", lambda t: _user_files(t, "compress", ["compress"], "folder"),
         r"compress: compress replaces only .* also holds mine/", keeps="run/compress/mine/keep.txt"),
    Case("import-dglke: truncated entity .npy",
         lambda t: _dglke(t, lambda f: _truncate(f / "toy_DistMult_entity.npy", 140)),
         r"toy_DistMult_entity.npy: not a readable .npy file, or truncated"),
    Case("import-dglke: truncated header",
         lambda t: _dglke(t, lambda f: _truncate(f / "toy_DistMult_relation.npy", 20)),
         r"toy_DistMult_relation.npy: not a readable .npy file, or truncated"),
    Case("import-dglke: truncated inverse relations",
         lambda t: _dglke(t, lambda f: (_npy(f / "toy_DistMult_relation_inverse.npy",
                                             __import__("numpy").zeros((3, 4), "float32")),
                                        _truncate(f / "toy_DistMult_relation_inverse.npy", 140))),
         r"toy_DistMult_relation_inverse.npy: not a readable .npy file, or truncated"),
    Case("import-dglke: config.json is a list", lambda t: _dglke(t, lambda f: _config(f, "[1, 2]")),
         r"config.json: expected a JSON object \(DGL-KE's config.json\), got a list"),
    Case("import-dglke: emb_size is text",
         lambda t: _dglke(t, lambda f: _config(f, '{"model": "DistMult", "emb_size": "abc"}')),
         r"config.json: emb_size is 'abc'; expected a positive integer"),
    Case("import-dglke: gamma is text",
         lambda t: _dglke(t, lambda f: _config(f, '{"model": "DistMult", "gamma": "high"}')),
         r"config.json: gamma is 'high'; expected a number"),
    Case("import-dglke: model is a list",
         lambda t: _dglke(t, lambda f: _config(f, '{"model": ["DistMult"]}')),
         r"config.json: model is \['DistMult'\]; expected a model name"),
    Case("import-dglke: config.json not JSON", lambda t: _dglke(t, lambda f: _config(f, "{model: DistMult")),
         r"config.json: not JSON"),
    Case("import-dglke: integer embeddings",
         lambda t: _dglke(t, lambda f: _npy(f / "toy_DistMult_entity.npy", __import__("numpy").zeros((9, 4), "int64"))),
         r"toy_DistMult_entity.npy: dtype int64; expected float embeddings"),
    Case("import-dglke: 1-D embeddings",
         lambda t: _dglke(t, lambda f: _npy(f / "toy_DistMult_entity.npy", __import__("numpy").zeros(9, "float32"))),
         r"toy_DistMult_entity.npy: shape \(9,\); expected a 2-D"),
    Case("import-dglke: NaN embeddings",
         lambda t: _dglke(t, lambda f: _npy(f / "toy_DistMult_relation.npy",
                                            __import__("numpy").full((3, 4), float("nan"), "float32"))),
         r"toy_DistMult_relation.npy: holds NaN or infinite values"),
    Case("import-dglke: another dataset's entity table",
         lambda t: _dglke(t, lambda f: _npy(f / "toy_DistMult_entity.npy", __import__("numpy").zeros((500, 4), "float32"))),
         r"the DGL-KE entity table has 500 rows but the dataset has 11 entities .*trained on another dataset"),
    Case("import-dglke: width does not fit emb_size",
         lambda t: _dglke(t, lambda f: _config(f, '{"model": "DistMult", "emb_size": 7}')),
         r"do not fit DistMult with hidden_dim 7"),
    # ---- sizes nobody checked: refused before any work, with the estimate and what to change
    Case("--dim 1000000000", lambda t: _train(t, "--dim", "1000000000"),
         r"model.dim=1000000000.*training needs about .*(GiB|TiB|PiB).* lower model.dim", "run/checkpoints"),
    Case("--batch-size 10**12", lambda t: _train(t, "--batch-size", str(10 ** 12)),
         r"training needs about .*score matrix .* lower train.batch_size", "run/checkpoints"),
    Case("--seed 2**70", lambda t: _train(t, "--seed", str(2 ** 70)),
         r"train.seed=1180591620717411303424 must be between 0 and 4294967295", "run"),
    Case("--seed -1", lambda t: _train(t, "--seed", "-1"), r"train.seed=-1 must be between 0 and", "run"),
    Case("seed 2**64 via --set", lambda t: _train(t, "--set", f"train.seed={2 ** 64}"),
         r"train.seed=18446744073709551616 must be between 0 and", "run"),
    Case("a 2 GB single line", _huge_line, r"train.txt:1: line longer than 1 MiB; not a file of head<TAB>", "out"),
    Case("a 3 MiB line among good ones", lambda t: _pre(t, lambda p: _line(p / "valid.txt", 2, "x" * (3 << 20))),
         r"valid.txt:2: line longer than 1 MiB", "out"),
    # ---- hostile files and folders: lock files that are links or special files
    Case("train --resume: .metasd.lock is a symlink to a user's file",
         lambda t: _lock_link(t, ".metasd.lock", ["train", "--resume", str(t / "run"), "--set", "train.epochs=2"]),
         r"run/\.metasd\.lock: the lock file is a symbolic link; .* untouched: remove it", keeps="victim.txt"),
    Case("export: .export.lock is a symlink to a user's file",
         lambda t: _lock_link(t, ".export.lock", ["export", str(t / "run")]),
         r"run/\.export\.lock: the lock file is a symbolic link", "run/export", keeps="victim.txt"),
    Case("lock file is a FIFO", lambda t: _lock_special(t, "fifo"),
         r"\.metasd\.lock: the lock file is a FIFO \(named pipe\)", "run/checkpoints"),
    Case("lock file is a folder", lambda t: _lock_special(t, "folder"),
         r"\.metasd\.lock: the lock file is a folder", "run/checkpoints"),
    Case("lock file hard-linked to a user's file", lambda t: _lock_special(t, "hardlink"),
         r"\.metasd\.lock: the lock file is a hard link to another file", "run/checkpoints", keeps="victim.txt"),
    Case("a locked run folder through another spelling", _alias_locked,
         r"alias: run folder in use by another metasd-dgl process \(pid \d+", "run/checkpoints"),
    # ---- a run's dataset is fixed at creation
    Case("train --resume --dataset of another dataset",
         lambda t: ["train", "--resume", str(_trained(t)), "--dataset", str(_other_data(t))],
         r"run: this run was trained on dataset '.*toy' and its dataset is fixed; '.*big' was asked"),
    Case("train --resume after config.yaml's dataset was edited", _edited_config,
         r"run: this run was trained on dataset .* its dataset is fixed"),
    Case("pipeline of another dataset into a run folder", _pipeline_other, r"its dataset is fixed"),
    Case("pipeline --force of another dataset into a run folder", lambda t: _pipeline_other(t, "--force"),
         r"its dataset is fixed", keeps="run/data/manifest.json"),
    Case("train --resume with another processed dataset in RUN/data",
         lambda t: _swapped_data(t, "train", "--resume"),
         r"run: its checkpoints were trained on another dataset \(id-map hashes \w+:\w+ vs \w+:\w+ of .*data\)"),
    Case("export with another processed dataset in RUN/data", lambda t: _swapped_data(t, "export"),
         r"its checkpoints were trained on another dataset", "run/export"),
    Case("train --resume with a truncated best.pt", _corrupt_best,
         r"best.pt: corrupted or truncated checkpoint.*it is this run's best checkpoint: move it away"),
    # ---- YAML alias bombs and long values: refused before expansion, a short prefix shown
    Case("alias bomb under model.dim", lambda t: _bomb_config(t, "model.dim"),
         r"c.yaml: line \d+: its aliases expand it beyond 10000 values", "run"),
    Case("alias bomb under runtime.device", lambda t: _bomb_config(t, "runtime.device"),
         r"c.yaml: line \d+: its aliases expand it beyond 10000 values", "run"),
    Case("alias bomb under data.dataset", lambda t: _bomb_config(t, "data.dataset"),
         r"c.yaml: line \d+: its aliases expand it beyond", "run"),
    Case("alias that contains itself",
         lambda t: _train(t, "--config", str(_write(t / "c.yaml", "a: &a [*a]\nmodel:\n  dim: *a\n"))),
         r"c.yaml: line 1: an alias refers to the value that contains it", "run"),
    Case("alias bomb in a search space", lambda t: _tune_space(t, str(_write(t / "s.yaml", _BOMB + "x: *i\n"))),
         r"s.yaml: line \d+: its aliases expand it beyond", "study"),
    Case("a 5000-character value of an integer option",
         lambda t: _train(t, "--config", str(_write(t / "c.yaml", f"train:\n  epochs: {'x' * 5000}\n"))),
         r"train.epochs: expected an integer, got 'x{59}\.\.\. \(5002 characters\)$", "run"),
    Case("a 5000-character --device", lambda t: _train(t, "--device", "y" * 5000),
         r"--device 'y{59}\.\.\. \(5002 characters\): expected cpu, cuda or cuda:N", "run"),
    # ---- files a user names that are no regular files
    Case("--config is a FIFO", lambda t: _train(t, "--config", _special(t, "fifo")),
         r"fifo: is a FIFO \(named pipe\), not a regular file; give the config file itself", "run"),
    Case("--config /dev/zero", lambda t: _train(t, "--config", "/dev/zero"),
         r"/dev/zero: is a device, not a regular file; give the config file itself", "run"),
    Case("--config of 64 MiB", _huge_config, r"c.yaml: 64.0 MiB, more than the 16 MiB a config file may have", "run"),
    Case("predict --queries FIFO", lambda t: _predict_queries(t, "fifo"),
         r"fifo: is a FIFO \(named pipe\), not a regular file; give the query file itself"),
    Case("predict --queries /dev/zero", lambda t: _predict_queries(t, "dev"),
         r"/dev/zero: is a device, not a regular file; give the query file itself"),
    Case("tune --space FIFO", lambda t: _tune_space(t, _special(t, "fifo")),
         r"fifo: is a FIFO \(named pipe\), not a regular file; give the search space file itself", "study"),
    Case("a dataset split that is a FIFO", _fifo_split,
         r"raw/valid.txt: is a FIFO \(named pipe\), not a regular file; give the dataset file itself", "out"),
    Case("preprocess /dev/zero", lambda t: ["preprocess", "/dev/zero", "--out", str(t / "out")],
         r"/dev/zero: is a device, not a regular file; give the dataset archive itself", "out"),
    # ---- subsets nothing can train on
    Case("subset --top-entities 1", lambda t: _subset(t, 1),
         r"sub: --top-entities 1 leaves train and valid and test empty \(train/valid/test 0/0/0\); nothing was "
         r"written; --top-entities \d+ is the smallest that gives every split a triple", "sub"),
    Case("subset --top-entities 2", lambda t: _subset(t, 2),
         r"sub: --top-entities 2 leaves valid and test empty .*--top-entities \d+ is the smallest", "sub"),
    Case("subset of a dataset whose test names no trained entity",
         lambda t: _subset(t, 1, lambda p: _write(p / "test.txt", "zed\tknows\tnobody\n")),
         r"no --top-entities gives every split a triple on this dataset", "sub"),
    # ---- advice that helps
    Case("non-finite loss at the first step", lambda t: _train(t, "--dim", "2", "--set", "model.init_scale=1e30"),
         r"non-finite loss.* at step 0 \(epoch 1\); no checkpoint was written; .*lower model.init_scale "
         r"\(now 1e\+30\)", "run/checkpoints/last.pt"),
    # ---- a command's earlier name
    Case("report, the plots' earlier name", lambda t: ["report", str(t)], r"^error: metasd-dgl report is now "
         r"metasd-dgl plot RUN_DIR"),
    # ---- click's usage errors: one line
    Case("evaluate without RUN_DIR", lambda t: ["evaluate"],
         r"^error: Missing argument 'RUN_DIR'\. \(see metasd-dgl evaluate --help\)$"),
    Case("predict --k 0", lambda t: ["predict", str(_trained(t)), "--relation", "likes", "--head", "alice", "--k", "0"],
         r"^error: Invalid value for '--k': 0 is not in the range x>=1\."),
    Case("compress --tolerance not a number", lambda t: ["compress", str(_trained(t)), "--tolerance", "abc"],
         r"^error: Invalid value for '--tolerance': 'abc' is not a valid float"),
    Case("--dim not a number", lambda t: _train(t, "--dim", "abc"),
         r"^error: Invalid value for '--dim': 'abc' is not a valid integer", "run"),
    Case("unknown command", lambda t: ["trian"], r"^error: No such command 'trian'\. Did you mean 'train'\? \(see metasd-dgl --help\)$"),
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
        while _UNDO:
            _UNDO.pop()()
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
