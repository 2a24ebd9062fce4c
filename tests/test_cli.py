"""The command line (cli.py, cli_tools.py): every hint the project prints works as printed, and what the
commands tell the user.

* Texts: every ``--option`` that a message, docstring, README, docs page or shipped config names exists:
  on the command the text names (``metasd-dgl CMD ... --opt``), else (a bare ``--opt`` in a message)
  on some command.  A hint pointing at an option that does not exist fails here.
* Hints: each is provoked, the command line it prints is run as printed (tiny sizes appended) and does
  what it says: subset -> pipeline on the folder; tune -> pipeline best.yaml; train/pipeline/tune
  resume; errors' "pass --X" / "drop --X" / "use --X" / "rerun with --debug".
* train, pipeline and tune share the data options.
* What evaluate and import-dglke tell the user: the triple-classification table, which checkpoint /
  compact file was scored, the no-run message, the prune-only dense row, and import-dglke's choice of
  scoring for our own exports.
"""
import json
import re
import shlex
import signal
from pathlib import Path

import click
import pytest
import torch
import yaml

from metasd_dgl.cli import _overrides, cli, main
from metasd_dgl.config import load_config, to_dict
from run_helpers import REPO, TINY, TOY, interrupt_after_first_epoch as _interrupt_after_first_epoch

#: Options of other programs that the project's messages mention.
FOREIGN = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port", "--logdir",
           "--rdzv_backend", "--rdzv_endpoint", "--rdzv_id", "--standalone", "--index-url", "--find-links"}


# ------------------------------------------------------------------ helpers

def options_of(command: click.Command) -> set[str]:
    out = {"--help", "-h", "--debug"}  # --debug: the group's, accepted anywhere on the line (cli.main)
    for p in command.params:
        if isinstance(p, click.Option):
            out.update(p.opts)
            out.update(p.secondary_opts)
    return out


COMMANDS = {name: options_of(c) for name, c in cli.commands.items()}
ALL_OPTIONS = set().union(*COMMANDS.values()) | options_of(cli)
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*")
COMMAND_LINE = re.compile(r"(?:metasd-dgl|metasd_dgl\.cli)(?:\s+--debug)?\s+([a-z][a-z-]*)([^;,)`'\"\n&]*)")  # "&&" chains


def printed_commands(text: str) -> list[list[str]]:
    """The command lines a message prints: ``metasd-dgl ...`` up to ';', ',' or the end of the line."""
    return [shlex.split(m) for m in re.findall(r"metasd-dgl ([^;,\n]+)", text)]


def parse(argv: list[str]) -> dict:
    """The params of ``metasd-dgl ARGV`` as click parses them (NoSuchOption for an unknown option)."""
    name, *rest = [a for a in argv if a != "--debug"]
    command = cli.commands[name]
    with command.make_context(name, list(rest)) as ctx:
        return ctx.params


def texts():
    """(where, text) of every message source, the README, docs and shipped configs."""
    for path in sorted((REPO / "metasd_dgl").rglob("*.py")):
        yield path, path.read_text(encoding="utf-8")
    for pattern in ("README.md", "docs/**/*.md", "pipelines/**/*.yaml", "benchmarks/*.py"):
        for path in sorted(REPO.glob(pattern)):
            yield path, path.read_text(encoding="utf-8")


# ------------------------------------------------------------------ texts

def test_every_option_a_text_names_exists():
    bad = []
    for path, text in texts():
        rel = path.relative_to(REPO)
        for number, line in enumerate(text.splitlines(), start=1):
            for match in COMMAND_LINE.finditer(line):
                command, tail = match.group(1), match.group(2)
                if command not in COMMANDS:
                    continue  # "metasd-dgl COMMAND --help", "metasd-dgl models ..."
                bad += [f"{rel}:{number}: metasd-dgl {command} has no {opt}"
                        for opt in OPTION.findall(tail) if opt not in COMMANDS[command]]
            if path.suffix == ".py" and rel.parts[0] == "metasd_dgl":
                bad += [f"{rel}:{number}: no command has {opt}" for opt in OPTION.findall(line)
                        if opt not in ALL_OPTIONS | FOREIGN]
    assert not bad, "\n".join(bad)


def test_the_checker_catches_a_missing_option():
    line = "holds a study; metasd-dgl pipeline --dataset x --no-such-option"
    match = COMMAND_LINE.search(line)
    assert match.group(1) == "pipeline"
    assert [o for o in OPTION.findall(match.group(2)) if o not in COMMANDS["pipeline"]] == ["--no-such-option"]
    with pytest.raises(click.NoSuchOption):
        parse(["pipeline", "--no-such-option"])
    # commands chained with && are checked one by one, each against its own options
    chain = "metasd-dgl preprocess umls --out d && metasd-dgl train --dataset d --no-such-option && metasd-dgl evaluate r"
    found = [(m.group(1), [o for o in OPTION.findall(m.group(2)) if o not in COMMANDS[m.group(1)]])
             for m in COMMAND_LINE.finditer(chain)]
    assert found == [("preprocess", []), ("train", ["--no-such-option"]), ("evaluate", [])]


def test_train_pipeline_and_tune_share_the_data_options(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  dim: 4\n")
    given = ["--dataset", TOY, "--data-dir", str(tmp_path), "--format", "tsv"]
    want = {"data__dataset": TOY, "data__data_dir": str(tmp_path), "data__format": "tsv"}
    for argv in (["train"], ["pipeline"], ["tune", str(config), "--trials", "1"]):
        params = parse(argv + given)
        assert {k: params[k] for k in want} == want, argv
    for argv in (["subset", TOY, "--top-entities", "3", "--out", "x"], ["preprocess", TOY, "--out", "x"]):
        assert parse(argv + ["--data-dir", str(tmp_path)])["data_dir"] == str(tmp_path)
    # what they set: data.* as --set would, in every command
    assert _overrides(want, ()) == {"data.dataset": TOY, "data.data_dir": str(tmp_path), "data.format": "tsv"}


# ------------------------------------------------------------------ hints, followed

@pytest.mark.slow  # runs metasd-dgl end to end
def test_subset_hint_runs_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "my subset"  # a space: the printed command quotes it
    assert main(["subset", TOY, "--top-entities", "8", "--out", str(out)]) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"--dataset {shlex.quote(str(out))}" in hint
    assert printed_commands(hint) == [["pipeline", "--dataset", str(out)]]
    for argv in (["train"], ["pipeline"], ["tune", str(REPO / "pipelines/configs/umls_dense.yaml"), "--trials", "1"]):
        assert parse(argv + ["--dataset", str(out)])["data__dataset"] == str(out)  # "(train, pipeline, tune)"
    assert main(printed_commands(hint)[0] + TINY + ["--quiet"]) == 0
    run = tmp_path / "runs" / "my-subset-complex-metasd"  # named after the folder, not UMLS
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["dataset"] == str(out)
    assert f"dataset {out}: " in (run / "train.log").read_text()
    assert (run / "eval" / "test.json").is_file()


def _generic(tmp_path: Path) -> tuple[Path, Path]:
    """A config with no dataset (and its search space) and a base with the dataset and budget."""
    config = tmp_path / "generic.yaml"
    config.write_text("model:\n  dim: 8\ntrain:\n  batch_size: 8\nvalid:\n  every: 1\nruntime:\n  num_threads: 1\n")
    (tmp_path / "generic.tune.yaml").write_text("train.lr: {low: 0.01, high: 0.5, log: true}\n"
                                                "model.dim: {choices: [4, 8]}\n")
    base = tmp_path / "base.yaml"
    base.write_text(f"data:\n  dataset: {TOY}\ntrain:\n  epochs: 1\n")
    return config, base


@pytest.mark.slow  # runs metasd-dgl end to end
def test_tune_best_yaml_runs_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config, base = _generic(tmp_path)
    study = tmp_path / "study"
    args = ["tune", str(config), "--config", str(base), "--trials", "2", "--study-dir", str(study),
            "--set", "train.seed=3", "--set", "train.entity_dropout=0.1"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"best config: {study / 'best.yaml'}")
    assert printed_commands(last) == [["pipeline", str(study / "best.yaml")]]
    best = json.loads((study / "best.json").read_text())
    text = (study / "best.yaml").read_text()
    assert "run_dir" not in yaml.safe_load(text)
    assert f"# run it: metasd-dgl pipeline {study / 'best.yaml'}" in text
    assert main(printed_commands(last)[0] + ["--quiet"]) == 0
    # the run is the best trial's config: the base's dataset and budget, the command line's options,
    # the trial's values; only the folders differ
    method = load_config(study / "best.yaml").train.method
    run = tmp_path / "runs" / f"toy-complex-{method}"
    got = to_dict(load_config(run / "config.yaml"))
    trial = to_dict(load_config(Path(best["run_dir"]) / "config.yaml"))
    for d in (got, trial):
        d.pop("run_dir"), d["data"].pop("processed_dir")
    assert got == trial
    assert got["data"]["dataset"] == TOY and got["train"]["epochs"] == 1 and got["train"]["seed"] == 3
    assert got["train"]["entity_dropout"] == 0.1
    for name, value in best["params"].items():
        section, option = name.split(".")
        assert got[section][option] == value
    # the study's own hints: another command line is another study; --resume / --study-dir as printed
    assert main(args + ["--set", "train.seed=4"]) == 2
    err = capsys.readouterr().err
    assert "holds the study of another config" in err and "choose another --study-dir" in err
    assert main(args) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # finished: nothing more to run
    fresh = [str(tmp_path / "fresh") if a == str(study) else a for a in args]
    assert main(fresh + ["--resume"]) == 2
    assert "drop --resume to start one" in capsys.readouterr().err
    assert parse(fresh)["study_dir"] == str(tmp_path / "fresh")  # "choose another --study-dir"


def test_train_resume_hints_run_as_printed(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train", "--dataset", TOY, "--run-dir", str(run), "--dim", "4", "--batch-size", "8", "--quiet"]
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        assert main(args + ["--epochs", "2"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert printed_commands(err) == [["train", "--resume", str(run)]]
    assert main(printed_commands(err)[0]) == 0
    assert "epoch 2/2" in (run / "train.log").read_text()  # continued to the end
    # training again into the folder: the hint continues it, or another --run-dir
    assert main(args + ["--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "choose another --run-dir" in err
    assert printed_commands(err) == [["train", "--resume", str(run)]]
    assert main(printed_commands(err)[0] + ["--epochs", "3"]) == 0
    assert "epoch 3/3" in (run / "train.log").read_text()
    assert main(args[:4] + [str(tmp_path / "other")] + args[5:] + ["--epochs", "1"]) == 0


@pytest.mark.slow  # runs metasd-dgl end to end
def test_pipeline_hints_run_as_printed(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pipeline", "--dataset", TOY, "--run-dir", str(run), *TINY, "--set", "train.method=plain"]
    assert main(args + ["--quiet"]) == 0
    assert main(args) == 0  # finished: the stored metrics, and how to evaluate again
    out = capsys.readouterr().out
    assert "pass --reevaluate to export and evaluate again" in out and "[4/4]" not in out
    assert main(args + ["--reevaluate"]) == 0
    assert "[4/4] evaluate (test)" in capsys.readouterr().out
    more = [a if a != "train.epochs=1" else "train.epochs=2" for a in args]
    assert main(more) == 2  # another config: continue it with --resume, or another --run-dir
    err = capsys.readouterr().err
    assert "pass --resume to continue it with this config, or choose another --run-dir" in err
    assert main(more + ["--resume", "--quiet"]) == 0
    assert "epoch 2/2" in (run / "train.log").read_text()
    assert parse(more + ["--run-dir", str(tmp_path / "other")])["run_dir"] == str(tmp_path / "other")


def test_error_hints_run_as_printed(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train = ["train", "--dataset", TOY, "--run-dir", str(run), "--epochs", "1", "--dim", "4", "--batch-size", "8",
             "--quiet"]
    # "use --device cpu"
    if not torch.cuda.is_available():
        assert main(train + ["--device", "cuda"]) == 2
        assert "use --device cpu" in capsys.readouterr().err
    assert main(train + ["--device", "cpu"]) == 0
    for argv in (["pipeline"], ["tune", str(REPO / "pipelines/configs/umls_dense.yaml"), "--trials", "1"]):
        assert parse(argv + ["--device", "cpu"])["runtime__device"] == "cpu"
    # "drop --student": a plain run has none
    head, relation, _ = (REPO / "datasets" / "toy" / "train.txt").read_text().splitlines()[0].split("\t")
    predict = ["predict", str(run), "--head", head, "--relation", relation]
    assert main(predict + ["--student"]) == 2
    assert "drop --student" in capsys.readouterr().err
    assert main(predict) == 0
    # "pass --force to replace it"
    data = tmp_path / "data"
    assert main(["preprocess", TOY, "--out", str(data)]) == 0
    other = tmp_path / "sub"
    assert main(["subset", TOY, "--top-entities", "6", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["preprocess", str(other), "--out", str(data)]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert main(["preprocess", str(other), "--out", str(data), "--force"]) == 0
    # "rerun with --debug": appended to the same line, it shows the traceback
    import metasd_dgl.stages as stages

    def boom(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(stages, "stage_train", boom)
    again = train[:4] + [str(tmp_path / "r2")] + train[5:]
    assert main(again) == 1
    assert "(rerun with --debug for a traceback)" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="boom"):
        main(again + ["--debug"])


# ------------------------------------------------------------------ what evaluate and import-dglke say

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
    assert "dense (unmasked)" in out and "no teacher" in out  # the prune-only dense row is labelled
    assert record["names"] == {"teacher": "dense (unmasked)", "student": "student"}
    tc = json.loads((run / "eval" / "triple_classification.json").read_text())["results"]
    assert f"student  test  roc_auc {tc['student']['overall']['test']['roc_auc']:.4f}" in out

    compact = run / "export" / "student.safetensors"
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


@pytest.mark.slow  # runs metasd-dgl end to end
def test_importing_the_cli_loads_no_torch_before_the_environment_is_set():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads: ``main`` sets it first
    (``runtime.configure_environment``), so importing the CLI must not load torch; its choices
    (from the registries, through config) are read when a command runs or prints its help."""
    import subprocess
    import sys

    code = ("import sys, metasd_dgl.cli as c; assert 'torch' not in sys.modules, 'torch loaded'; "
            "assert c.main(['train', '--help']) == 0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[kge|rgcn]" in out.stdout and "[complex|distmult|rotate|transe]" in out.stdout
