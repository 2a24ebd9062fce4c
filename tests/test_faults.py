"""Fault injection with real conditions, no sleeps: a full disk (a real file-size limit, RLIMIT_FSIZE,
in a subprocess), two writers of one folder (a lock held by a live subprocess), kill -9 at each
writing stage (a subprocess that SIGKILLs itself at a chosen call) then a re-run, and foreign files.

Every failure is one ``error:`` line, exit 2; nothing is half-written; the previous good files stay;
temporaries are removed (or, after a kill, by the next run).
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)
REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "datasets" / "toy"

#: Python prelude of every subprocess: ``PATCH`` (code run before the command), then the CLI.
_RUN = """
import os, sys, signal
{patch}
from metasd_dgl.cli import main
sys.exit(main(sys.argv[1:]))
"""
#: A patch that SIGKILLs the process when ``target`` (module attribute) is called.
_KILL_AT = """
import importlib
_mod = importlib.import_module({module!r})
def _die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
setattr(_mod, {name!r}, _die)
"""


def _limit(nbytes: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))
    return pre


def cli(tmp: Path, *args: str, limit: int | None = None, patch: str = "") -> subprocess.CompletedProcess:
    """Run ``metasd-dgl ARGS`` in a subprocess (cwd ``tmp``, TMPDIR ``tmp/scratch``)."""
    scratch = tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(scratch), DGLBACKEND="pytorch")
    return subprocess.run([sys.executable, "-c", _RUN.format(patch=patch), *map(str, args)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=_limit(limit) if limit else None)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def one_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The process exited 2 with exactly one ``error:`` line, no traceback, holding every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def litter(tmp: Path) -> list[str]:
    """Temporaries anywhere under tmp: *.tmp files, staging folders, scratch folders, lock files."""
    out = []
    for p in tmp.rglob("*"):
        name = p.name
        if name.endswith(".tmp") or ".tmp-" in name or ".old-" in name or name.startswith("metasd-read-") \
                or name.endswith(".lock"):
            out.append(str(p.relative_to(tmp)))
    return sorted(out)


def train_args(run: Path, *extra: str, dataset: Path | str = TOY) -> list:
    return ["train", "--quiet", "--dataset", str(dataset), "--run-dir", str(run), "--epochs", "1", "--dim", "2",
            *extra]


def big_dataset(folder: Path, lines: int = 2000) -> Path:
    folder.mkdir()
    for split, n in (("train", lines), ("valid", 20), ("test", 20)):
        rows = [f"e{i % 97}\tr{i % 5}\te{(i * 7 + 3) % 97}" for i in range(n)]
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return folder


class Holder:
    """A live process holding a folder's write lock until ``release`` (it prints 'locked' once it holds it)."""

    CODE = ("import sys\nfrom metasd_dgl.store.lock import folder_lock\n"
            "with folder_lock(sys.argv[1], inside=sys.argv[2] == '1'):\n"
            "    print('locked', flush=True)\n    sys.stdin.read()\n")

    def __init__(self, folder: Path, inside: bool = True) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, str(folder), "1" if inside else "0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        self.pid = self.proc.pid

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0
        self.proc.stdout.close()


# ------------------------------------------------------------------------------------------ disk full
def test_disk_full_checkpoint_keeps_previous_and_recovers(tmp_path):
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run)))
    before = hashes(run / "checkpoints")
    resume = ["train", "--quiet", "--resume", str(run), "--set", "train.epochs=2"]
    line = one_error(cli(tmp_path, *resume, limit=8192), "checkpoints/last.pt: could not write checkpoint",
                     "file too large", "EFBIG", "the previous file is kept")
    assert "internal error" not in line and "inline_container" not in line
    assert hashes(run / "checkpoints") == before  # the previous good checkpoints, byte for byte
    from metasd_dgl.store.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 1
    assert litter(tmp_path) == []
    ok(cli(tmp_path, *resume))  # room again: the run continues from the kept checkpoint
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 2
    epochs = [json.loads(ln).get("epoch") for ln in (run / "metrics.jsonl").read_text().splitlines()
              if "valid" not in json.loads(ln)]
    assert epochs == [1, 2]


def test_disk_full_preprocess_keeps_old_folder(tmp_path):
    out = tmp_path / "out"
    ok(cli(tmp_path, "preprocess", TOY, "--out", out))
    before = hashes(out)
    src = big_dataset(tmp_path / "big")  # its graph.bin is over the limit
    one_error(cli(tmp_path, "preprocess", src, "--out", out, "--force", limit=16384),
              f"{out}/graph.bin: could not write", "EFBIG", f"the previous {out} is kept")
    assert hashes(out) == before
    assert litter(tmp_path) == []
    ok(cli(tmp_path, "preprocess", src, "--out", out, "--force"))
    assert json.loads((out / "manifest.json").read_text())["source"]["spec"] == str(src)


def test_disk_full_graph_bin_is_detected(tmp_path):
    """DGL's save_graphs truncates the file silently under a file-size limit: the read-back catches it."""
    out = tmp_path / "out"
    one_error(cli(tmp_path, "preprocess", TOY, "--out", out, limit=4096),
              f"{out}/graph.bin: could not write", "EFBIG", f"nothing was written to {out}")
    assert not out.exists() and litter(tmp_path) == []


def test_disk_full_during_extraction_blames_the_disk_not_the_archive(tmp_path, kg_dir):
    proc = cli(tmp_path, "preprocess", "umls", "--out", tmp_path / "out", "--data-dir", kg_dir, limit=50000)
    line = one_error(proc, "could not extract the archive into the scratch folder", "EFBIG")
    assert "not a readable tar archive" not in line
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "scratch").iterdir()) == []  # the scratch folder is removed too
    assert litter(tmp_path) == []


def test_disk_full_export_keeps_the_old_set(tmp_path):
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run, "--method", "prune", "--dim", "64")))
    ok(cli(tmp_path, "export", run))
    before = hashes(run / "export")
    one_error(cli(tmp_path, "export", run, limit=2048), "export/teacher.safetensors: could not write", "EFBIG",
              "previous files in")
    assert hashes(run / "export") == before
    assert litter(tmp_path) == []


# ------------------------------------------------------------------------------------ two writers
def test_second_trainer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    holder = Holder(run)
    try:
        for args in (train_args(run), ["pipeline", "--quiet", "--set", f"run_dir={run}", "--set",
                                       f"data.dataset={TOY}", "--set", "train.epochs=1", "--set", "model.dim=2"]):
            one_error(cli(tmp_path, *args), f"{run}: run folder in use by another metasd-dgl process "
                                            f"(pid {holder.pid}", "wait for it to finish or choose another folder")
        assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    finally:
        holder.release()
    ok(cli(tmp_path, *train_args(run)))
    assert not (run / ".metasd.lock").exists()


def test_second_preprocess_is_refused(tmp_path):
    out = tmp_path / "out"
    holder = Holder(out, inside=False)
    try:
        one_error(cli(tmp_path, "preprocess", TOY, "--out", out),
                  f"{out}: processed dataset folder in use by another metasd-dgl process (pid {holder.pid}")
        assert not out.exists()
    finally:
        holder.release()
    ok(cli(tmp_path, "preprocess", TOY, "--out", out))


def test_readers_never_block_on_a_training_run(tmp_path):
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run)))
    holder = Holder(run)  # as if a trainer held the folder
    try:
        ok(cli(tmp_path, "evaluate", run, "--no-plots"))
        ok(cli(tmp_path, "predict", run, "--head", "alice", "--relation", "likes"))
        ok(cli(tmp_path, "plot", run))
    finally:
        holder.release()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    code = ("import os, signal, sys\nfrom metasd_dgl.store.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    dead = subprocess.Popen([sys.executable, "-c", code, str(run)])
    assert dead.wait(timeout=120) == -signal.SIGKILL
    lock = run / ".metasd.lock"
    assert lock.read_text().strip() == str(dead.pid)  # left behind by kill -9, naming the dead holder
    proc = ok(cli(tmp_path, "train", "--dataset", TOY, "--run-dir", run, "--epochs", "1", "--dim", "2"))
    assert "took over the lock of pid" in proc.stdout + proc.stderr
    assert not lock.exists()


# ------------------------------------------------------------------------------ kill -9, then re-run
def test_kill_during_extraction_then_rerun(tmp_path, kg_dir):
    out = tmp_path / "out"
    patch = _KILL_AT.format(module="metasd_dgl.data.triples", name="_extract_member")
    proc = cli(tmp_path, "preprocess", "umls", "--out", out, "--data-dir", kg_dir, patch=patch)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in (tmp_path / "scratch").iterdir()][0].startswith("metasd-read-")
    ok(cli(tmp_path, "preprocess", "umls", "--out", out, "--data-dir", kg_dir))
    assert list((tmp_path / "scratch").iterdir()) == []  # the killed run's scratch folder is gone
    assert litter(tmp_path) == []


def test_kill_while_writing_the_graph_then_rerun(tmp_path):
    out = tmp_path / "out"
    patch = _KILL_AT.format(module="metasd_dgl.data.preprocess", name="save_graph")
    proc = cli(tmp_path, "preprocess", TOY, "--out", out, patch=patch)
    assert proc.returncode == -signal.SIGKILL
    assert any(".out.tmp-" in p for p in litter(tmp_path)) and not out.exists()
    ok(cli(tmp_path, "preprocess", TOY, "--out", out))
    assert litter(tmp_path) == []
    from metasd_dgl.data.preprocess import load_processed

    assert load_processed(out).num_entities > 0


def test_kill_while_checkpointing_then_rerun(tmp_path):
    run = tmp_path / "run"
    patch = ("import torch\n_real = torch.save\n"
             "def _half(obj, f, *a, **k):\n    f.write(b'PK\\x03\\x04 half a checkpoint')\n    f.flush()\n"
             "    os.kill(os.getpid(), signal.SIGKILL)\ntorch.save = _half\n")
    proc = cli(tmp_path, *train_args(run), patch=patch)
    assert proc.returncode == -signal.SIGKILL
    left = litter(tmp_path)
    assert any(p.endswith(".tmp") for p in left) and "run/.metasd.lock" in left
    assert not (run / "checkpoints" / "last.pt").exists()
    proc = ok(cli(tmp_path, *train_args(run)))
    assert "took over the lock of pid" in proc.stdout + proc.stderr
    assert litter(tmp_path) == []
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "valid" not in r] == [1]  # the killed run's record is not repeated


def test_kill_during_export_keeps_the_old_set(tmp_path):
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run, "--method", "prune")))
    ok(cli(tmp_path, "export", run))
    before = hashes(run / "export")
    # killed after the new teacher is written, before the student: the old set is untouched
    patch = ("import metasd_dgl.store.export as _e\n_write = _e.write_model\n"
             "def _second(*a, **k):\n    if 'student' in str(a[1]):\n        os.kill(os.getpid(), signal.SIGKILL)\n"
             "    return _write(*a, **k)\n_e.write_model = _second\n")
    proc = cli(tmp_path, "export", run, patch=patch)
    assert proc.returncode == -signal.SIGKILL
    assert hashes(run / "export") == before
    assert any(".export.tmp-" in p for p in litter(tmp_path))
    ok(cli(tmp_path, "export", run))
    assert litter(tmp_path) == []
    assert set(hashes(run / "export")) == set(before)


def test_kill_between_the_renames_of_an_export(tmp_path):
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run, "--method", "prune")))
    ok(cli(tmp_path, "export", run))
    before = hashes(run / "export")
    patch = ("_replace = os.replace\n"
             "def _once(src, dst, *a, **k):\n    _replace(src, dst, *a, **k)\n"
             "    if os.path.basename(str(src)) == 'export':\n        os.kill(os.getpid(), signal.SIGKILL)\n"
             "os.replace = _once\n")
    proc = cli(tmp_path, "export", run, patch=patch)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "export").exists()  # moved aside, the new one not yet in place
    ok(cli(tmp_path, "export", run))  # the old one is put back, then replaced whole
    assert litter(tmp_path) == [] and set(hashes(run / "export")) == set(before)


# --------------------------------------------------------------------------------- foreign files
def test_compact_student_of_another_dataset(tmp_path):
    ok(cli(tmp_path, *train_args(tmp_path / "a", "--method", "prune")))
    ok(cli(tmp_path, "export", tmp_path / "a"))
    other = big_dataset(tmp_path / "big", 100)
    ok(cli(tmp_path, *train_args(tmp_path / "b", "--method", "prune", dataset=other)))
    one_error(cli(tmp_path, "evaluate", tmp_path / "b", "--no-plots", "--compact",
                  tmp_path / "a" / "export" / "student.safetensors"),
              "student.safetensors: holds a model of", "it is another dataset's model")


def test_export_and_compress_keep_a_users_files(tmp_path):
    """A user's file and folder in RUN/export and RUN/compress: refused naming them, nothing changed;
    once moved out, the commands run, and a later export keeps the variants written before."""
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run, "--method", "prune")))
    ok(cli(tmp_path, "export", run, "--quantize", "fp16"))
    ok(cli(tmp_path, "compress", run))
    for folder, command in (("export", ["export", run, "--quantize", "int8"]), ("compress", ["compress", run])):
        (run / folder / "NOTES.md").write_text("mine\n")
        (run / folder / "mine").mkdir()
        (run / folder / "mine" / "data.txt").write_text("mine too\n")
        before = hashes(run / folder)
        one_error(cli(tmp_path, *command), f"{run / folder}: {folder} replaces only the files its manifest.json "
                  "lists, and this folder also holds NOTES.md, mine/; move them elsewhere")
        assert hashes(run / folder) == before and litter(tmp_path) == []
        (run / folder / "NOTES.md").unlink()
        (run / folder / "mine" / "data.txt").unlink()
        (run / folder / "mine").rmdir()
        ok(cli(tmp_path, *command))
    names = {p.name for p in (run / "export").iterdir()}
    assert {"teacher.fp16.safetensors", "student.fp16.safetensors", "teacher.int8.safetensors"} <= names


def test_force_keeps_a_users_file(tmp_path):
    out = tmp_path / "out"
    ok(cli(tmp_path, "preprocess", TOY, "--out", out))
    (out / "NOTES.md").write_text("mine\n")
    before = hashes(out)
    one_error(cli(tmp_path, "preprocess", big_dataset(tmp_path / "big", 50), "--out", out, "--force"),
              "--force replaces only files metasd-dgl wrote", "NOTES.md")
    assert hashes(out) == before
    (out / "NOTES.md").unlink()
    ok(cli(tmp_path, "preprocess", tmp_path / "big", "--out", out, "--force"))


# ------------------------------------------------------------------------- unseen policy, budget
def test_unseen_triples_are_stated(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        (raw / f"{split}.txt").write_text((TOY / f"{split}.txt").read_text())
    with open(raw / "test.txt", "a") as fh:
        fh.write("stranger\tlikes\talice\nalice\tnever_seen\tbob\n")
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run, dataset=raw)))
    proc = ok(cli(tmp_path, "evaluate", run, "--no-plots"))
    # the toy's test split already holds one triple with an entity absent from train
    assert "unseen: 3 of 5 test triples have an entity (2) or relation (1) absent from train; " \
           "policy eval.unseen=rank: ranked like any other triple" in proc.stdout
    record = json.loads((run / "eval" / "test.json").read_text())["unseen"]
    assert record["unseen_triples"] == 3 and record["ranked"] == 5 and record["policy"] == "rank"
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["unseen_relations"]["test_triples"] == 1
    proc = ok(cli(tmp_path, "preprocess", raw, "--out", tmp_path / "out"))
    assert "unseen: triples with an entity absent from train: 0 valid, 2 test; with a relation absent from " \
           "train: 0 valid, 1 test" in proc.stdout


def test_unseen_drop_policy():
    from metasd_dgl.evaluate.unseen import apply_unseen, unseen_line

    train = torch.tensor([[0, 0, 1], [1, 0, 2]])
    test = torch.tensor([[0, 0, 2], [3, 0, 1], [0, 1, 1]])
    kept, info = apply_unseen(test, train, 4, 2, "drop")
    assert kept.tolist() == [[0, 0, 2]] and info["unseen_triples"] == 2 and info["ranked"] == 1
    assert "left out of the ranking" in unseen_line("test", info)
    kept, info = apply_unseen(test, train, 4, 2, "rank")
    assert len(kept) == 3 and info["unseen_entity_triples"] == 1 and info["unseen_relation_triples"] == 1


def test_memory_estimate_refuses_before_allocating():
    from metasd_dgl.runtime.memory import ResourceError, check_memory, estimate
    from metasd_dgl.config import load_config

    cfg = load_config(overrides={"model.dim": "1000000000", "data.dataset": "umls"})
    est = estimate(cfg, 135, 46)
    assert est.weights == (135 + 2 * 46) * 2 * 10 ** 9 * 4  # complex: width 2 * dim
    with pytest.raises(ResourceError, match=r"training needs about .* but gpu has 1.0 GiB; lower model.dim"):
        check_memory(cfg, 135, 46, free=(1 << 30, "gpu has 1.0 GiB"))
    small = load_config(overrides={"model.dim": "8", "data.dataset": "umls"})
    assert check_memory(small, 135, 46, free=(1 << 30, "plenty")).total < 1 << 30


def test_memory_estimate_reads_the_rgcn_negatives_and_runtime_sections(monkeypatch):
    """The estimate follows rgcn.*, negatives.num and runtime.device (not defaults of options that moved)."""
    from metasd_dgl.config import load_config
    from metasd_dgl.runtime import memory

    base = {"data.dataset": "umls", "model.dim": "10", "model.decoder": "distmult", "train.batch_size": "7"}
    n, r2, w = 135, 2 * 46, 10  # DistMult: width dim
    plain = memory.estimate(load_config(overrides=base), n, 46)
    rgcn = memory.estimate(load_config(overrides={**base, "model.encoder": "rgcn", "rgcn.num_layers": "5",
                                                  "rgcn.num_bases": "3"}), n, 46)
    assert rgcn.parameters - plain.parameters == 5 * (3 * w * w + r2 * 3 + w * w + w)
    ns = memory.estimate(load_config(overrides={**base, "train.regime": "negative-sampling",
                                                "negatives.num": "999"}), n, 46)
    assert ns.scores == 7 * (999 + 1) * 4 * 2 and plain.scores == 7 * n * 4 * 2
    asked = []
    monkeypatch.setattr(memory, "available_bytes", lambda device: asked.append(device))
    memory.check_memory(load_config(overrides={**base, "runtime.device": "cuda:3"}), n, 46)
    assert asked == ["cuda:3"]


def test_disk_full_in_the_tune_database_is_one_line(tmp_path):
    """Optuna's SQLite storage under a file-size limit: one line naming study.db and what to do."""
    db = tmp_path / "study.db"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from metasd_dgl.errors import UserError\n"
        "from metasd_dgl.tools.tune import database_errors, open_study\n"
        f"db = {str(db)!r}\n"
        "try:\n"
        "    with database_errors(db):\n"
        "        open_study(db, 0)\n"
        "except UserError as exc:\n"
        "    print('error:', exc); sys.exit(2)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"{db}: could not write the study database" in out.stdout and "full" in out.stdout


# ------------------------------------------------------------------------- hostile lock files and runs
@pytest.mark.parametrize("lock", [".metasd.lock", "export"])
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, lock):
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run)))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = run / ".metasd.lock" if lock == ".metasd.lock" else run / ".export.lock"
    link.symlink_to(victim)
    args = (["train", "--quiet", "--resume", run, "--set", "train.epochs=2"] if lock == ".metasd.lock"
            else ["export", run])
    one_error(cli(tmp_path, *args), f"{link}: the lock file is a symbolic link", "remove it")
    assert victim.read_text() == "precious\n"
    assert link.is_symlink()
    if lock == "export":
        assert not (run / "export").exists()


def test_a_lock_file_hard_linked_to_a_users_file_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, run / ".metasd.lock")
    one_error(cli(tmp_path, *train_args(run)), "the lock file is a hard link to another file")
    assert victim.read_text() == "precious\n" and not (run / "checkpoints").exists()


def test_two_spellings_of_one_folder_share_one_lock(tmp_path):
    run = tmp_path / "run"
    (tmp_path / "other").mkdir()
    (tmp_path / "alias").symlink_to(run.name)  # run does not exist yet: the link resolves once it does
    run.mkdir()
    holder = Holder(run)
    try:
        for spelling in (tmp_path / "other" / ".." / "run", tmp_path / "alias"):
            one_error(cli(tmp_path, *train_args(spelling)), f"run folder in use by another metasd-dgl process "
                                                           f"(pid {holder.pid}")
        assert not (run / "checkpoints").exists()
    finally:
        holder.release()


def test_a_runs_dataset_is_fixed_whatever_resume_or_pipeline_ask(tmp_path):
    """--dataset on resume, an edited config.yaml, a pipeline config of another dataset (even with --force):
    refused in one line before anything in the run folder is written."""
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run)))
    other = big_dataset(tmp_path / "other", 50)
    before = hashes(run)
    one_error(cli(tmp_path, "train", "--resume", run, "--dataset", other, "--set", "train.epochs=2"),
              f"{run}: this run was trained on dataset '{TOY}' and its dataset is fixed; '{other}' was asked")
    assert hashes(run) == before
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace(f"dataset: {TOY}", f"dataset: {other}"))
    before = hashes(run)
    one_error(cli(tmp_path, "train", "--resume", run, "--set", "train.epochs=2"), "its dataset is fixed")
    assert hashes(run) == before  # config.yaml not rewritten, train.log not appended to
    conf = tmp_path / "p.yaml"
    conf.write_text(f"run_dir: {run}\ndata:\n  dataset: {other}\nmodel:\n  dim: 2\ntrain:\n  epochs: 1\n")
    for extra in ((), ("--force",), ("--resume",)):
        one_error(cli(tmp_path, "pipeline", conf, "--quiet", *extra), "its dataset is fixed")
        assert hashes(run) == before  # no "[1/4] preprocess" line, data/ not rebuilt
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "data", "metrics.jsonl",
                                                    "train.log"]


def test_a_processed_folder_swapped_under_a_run_is_refused_before_writing(tmp_path):
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run)))
    ok(cli(tmp_path, "preprocess", big_dataset(tmp_path / "other", 50), "--out", tmp_path / "proc"))
    os.rename(run / "data", tmp_path / "saved")
    os.rename(tmp_path / "proc", run / "data")
    before = hashes(run)
    for args in (["train", "--resume", run, "--set", "train.epochs=2"], ["export", run],
                 ["evaluate", run, "--no-plots"]):
        one_error(cli(tmp_path, *args), "trained on another dataset")
        assert hashes(run) == before
    assert not (run / "export").exists() and not (run / "eval").exists() and not litter(run)


def test_resume_with_a_corrupt_best_checkpoint_names_it(tmp_path):
    run = tmp_path / "run"
    ok(cli(tmp_path, *train_args(run)))
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:300])
    before = hashes(run)
    one_error(cli(tmp_path, "train", "--resume", run, "--set", "train.epochs=2"),
              f"{best}: corrupted or truncated checkpoint", "it is this run's best checkpoint: move it away")
    assert hashes(run) == before
    os.rename(best, tmp_path / "bad.pt")
    ok(cli(tmp_path, "train", "--resume", run, "--set", "train.epochs=2"))  # moved away: the run continues
    epochs = [json.loads(line).get("epoch") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(e for e in epochs if e is not None) == 2


def test_memory_check_reads_the_address_space_and_cgroup_limits(tmp_path, monkeypatch):
    """Under ulimit -v (a real RLIMIT_AS, in a subprocess) or a cgroup limit (files like the kernel's)
    the up-front check refuses what the machine's free memory alone would let through."""
    from metasd_dgl.runtime import memory

    run = tmp_path / "run"
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), resource.RLIM_INFINITY))\n"
            "from metasd_dgl.cli import main\nsys.exit(main(sys.argv[2:]))\n")
    env = dict(os.environ, DGLBACKEND="pytorch")
    proc = subprocess.run([sys.executable, "-c", code, str(4 << 30), *train_args(run)[:-2], "--dim", "3000000"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    one_error(proc, "the address-space limit (ulimit -v, 4.0 GiB) leaves this process", "lower model.dim")
    assert not (run / "checkpoints").exists()
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text("268435456\n")
    monkeypatch.setattr(memory, "CGROUP_FILES", ((str(tmp_path / "memory.max"), str(tmp_path / "memory.current")),))
    assert memory._cgroup_left() == (805306368, "the memory cgroup's limit (1.0 GiB) leaves 768.0 MiB")
    assert memory.available_bytes("cpu")[0] <= 805306368
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_left() is None
