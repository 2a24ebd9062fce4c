"""metasd-dgl tune: the search-space parser (by hand, every bad input), a 3-trial study on the toy set,
best.yaml accepted by pipeline, a study killed mid-trial (SIGKILL, deterministic) and resumed."""
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from metasd_dgl.cli import main
from metasd_dgl.config import Config, ConfigError, load_config
from metasd_dgl.tools.search_space import Param, as_override, default_space_path, parse_space
from metasd_dgl.tools.tune import KILL_ENV, STUDY_NAME, tune

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)
REPO = Path(__file__).resolve().parents[1]
SPACE = """\
train.lr: {low: 1e-3, high: 0.3, log: true}
model.dim: {choices: [4, 8]}
train.entity_dropout: {low: 0.0, high: 0.5}
train.batch_size: {low: 4, high: 16, step: 4}
train.optimizer: {choices: [adagrad, adam]}
"""


def write_config(tmp_path: Path, epochs: int = 2, space: str = SPACE) -> Path:
    config = tmp_path / "toy.yaml"
    config.write_text(f"run_dir: {tmp_path / 'runs' / 'toy'}\ndata:\n  dataset: {REPO / 'datasets' / 'toy'}\n"
                      f"model:\n  dim: 8\ntrain:\n  epochs: {epochs}\n  batch_size: 8\nvalid:\n  every: 1\n"
                      "runtime:\n  num_threads: 1\n")
    (tmp_path / "toy.tune.yaml").write_text(space)
    return config


def test_parse_space_by_hand():
    params = parse_space(SPACE, Config(), "s.yaml")
    assert params == [
        Param("train.lr", "float", 1e-3, 0.3, log=True),  # "1e-3" (a YAML string) read as a number
        Param("model.dim", "choice", choices=(4, 8)),
        Param("train.entity_dropout", "float", 0.0, 0.5),
        Param("train.batch_size", "int", 4.0, 16.0, step=4.0),
        Param("train.optimizer", "choice", choices=("adagrad", "adam")),
    ]
    # the option's type decides: an int option's choices given as strings become ints
    assert parse_space("model.dim: {choices: ['16', 32]}", Config())[0].choices == (16, 32)
    assert default_space_path("a/b/umls_dense.yaml") == Path("a/b/umls_dense.tune.yaml")
    assert as_override({"train.lr": 0.1, "model.dim": 8, "train.seed": 2}) == \
        {"train": {"lr": 0.1, "seed": 2}, "model": {"dim": 8}}
    # suggestions stay inside the ranges and on the step
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = {p.name: p.suggest(trial) for p in params}
        assert 1e-3 <= values["train.lr"] <= 0.3 and values["model.dim"] in (4, 8)
        assert values["train.batch_size"] in (4, 8, 12, 16) and 0 <= values["train.entity_dropout"] <= 0.5
        study.tell(trial, 0.0)


BAD = [
    ("train.lr: {low: 0.1, high: 0.3}\ntrain.lrr: {low: 1, high: 2}\n", r"s.yaml:2: unknown option 'train.lrr'"),
    ("train.lr: {low: 0.3, high: 0.1}\n", r"s.yaml:1: train.lr: low 0.3 > high 0.1"),
    ("\n\nmodel.dim: {choices: []}\n", r"s.yaml:3: model.dim: empty choice list"),
    ("model.dim: {choices: [4, 4]}\n", r"s.yaml:1: model.dim: choices must be distinct"),
    ("train.lr: {low: 0.0, high: 0.3, log: true}\n", r"s.yaml:1: train.lr: log scale needs low > 0"),
    ("train.lr: {low: 0.0, high: 0.3}\n", r"s.yaml:1: train.lr: 0.0 is not accepted .*must be > 0"),
    ("train.optimizer: {choices: [adam, sgd]}\n", r"s.yaml:1: train.optimizer: 'sgd' is not accepted"),
    ("train.optimizer: {low: 1, high: 2}\n", r"s.yaml:1: train.optimizer is not a number option"),
    ("model.dim: {low: 4, high: 8.5}\n", r"s.yaml:1: model.dim: high must be an integer"),
    ("model.dim: {low: 4, high: 8, step: 0}\n", r"s.yaml:1: model.dim: step must be > 0"),
    ("train.lr: {low: 0.1, hi: 0.3}\n", r"s.yaml:1: train.lr: unknown key\(s\) hi"),
    ("train.lr: {low: 0.1}\n", r"s.yaml:1: train.lr: a range needs low and high"),
    ("train.lr: 0.1\n", r"s.yaml:1: train.lr: expected \{low, high"),
    ("lr: {low: 0.1, high: 0.2}\n", r"s.yaml:1: unknown option 'lr'"),
    ("[1, 2]\n", r"s.yaml: expected a mapping"),
    ("train.lr: {low: 0.1\n", r"s.yaml: line \d+: invalid YAML"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_parse_space_rejects(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(text, Config(), "s.yaml")


def test_bad_space_on_the_command_line_writes_nothing(tmp_path, capsys):
    config = write_config(tmp_path, space="train.lr: {low: 0.3, high: 0.1}\n")
    study = tmp_path / "study"
    assert main(["tune", str(config), "--trials", "2", "--study-dir", str(study)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'toy.tune.yaml'}:1: train.lr: low 0.3 > high 0.1"]
    assert not study.exists()


def trials_of(study_dir: Path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'study.db'}")
    return optuna.load_study(study_name=STUDY_NAME, storage=storage).trials


def test_tune_three_trials_best_yaml_and_pipeline(tmp_path, capsys):
    config = write_config(tmp_path)
    study = tmp_path / "study"
    lines = []
    result = tune(config, 3, study, echo=lines.append)
    assert sorted(p.name for p in study.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0002"]
    for run in study.glob("trial-*"):  # the files of metasd-dgl train
        assert {"config.yaml", "metrics.jsonl", "train.log"} <= {p.name for p in run.iterdir()}
        assert (run / "checkpoints" / "last.pt").is_file()
    assert (study / "study.db").is_file()
    finished = [line for line in lines if line.startswith("trial ") and "(" in line and "/3)" in line]
    assert len(finished) == 3  # one progress line per finished trial
    trials = trials_of(study)
    assert len(trials) == 3
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    assert result.best_number == best.number and result.best_params == best.params
    # best.yaml: an override whose values are the best trial's params
    override = yaml.safe_load((study / "best.yaml").read_text())
    cfg = load_config(config, study / "best.yaml")
    for name, value in best.params.items():
        section, option = name.split(".")
        assert override[section][option] == value and getattr(getattr(cfg, section), option) == value
    assert set(result.test) == {"teacher"} and result.valid["teacher"]["both"]["mrr"] == pytest.approx(best.value)
    for t in trials:  # test was evaluated for the best trial only
        assert (study / f"trial-{t.number:04d}" / "eval" / "test.json").is_file() == (t.number == best.number)
    # pipeline accepts it
    code = main(["pipeline", str(config), str(study / "best.yaml"), "--run-dir", str(tmp_path / "pipe"),
                 "--quiet", "--set", "train.epochs=1"])
    assert code == 0, capsys.readouterr().err
    # the same folder again: a second study needs --resume; another config's folder is refused
    assert main(["tune", str(config), "--trials", "3", "--study-dir", str(study)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    config.write_text(config.read_text().replace("dim: 8", "dim: 6"))
    assert main(["tune", str(config), "--trials", "3", "--study-dir", str(study), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the study of another config" in err[0]
    assert len(trials_of(study)) == 3


def test_killed_mid_trial_then_resume(tmp_path):
    config = write_config(tmp_path)
    study = tmp_path / "study"
    env = {**os.environ, "PYTHONPATH": str(REPO), KILL_ENV: "1"}
    cmd = [sys.executable, "-m", "metasd_dgl.cli", "tune", str(config), "--trials", "3",
           "--study-dir", str(study), "--pruner", "none"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # SIGKILL at the start of trial 1
    before = trials_of(study)
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    lines = []
    tune(config, 3, study, resume=True, pruner="none", echo=lines.append)
    assert any("trial 1 was interrupted" in line for line in lines)
    after = trials_of(study)
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert after[0].params == before[0].params and after[0].value == before[0].value  # trial 0 kept
    assert after[2].params == before[1].params  # the killed trial's params ran again
    assert sum(t.state.name == "COMPLETE" for t in after) == 3
    # resuming a finished study runs nothing more
    tune(config, 3, study, resume=True, pruner="none", echo=lines.append)
    assert len(trials_of(study)) == 4
