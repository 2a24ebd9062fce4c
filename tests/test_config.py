"""Options (config.py): defaults, files and overrides, bad values named by file and line, options of
earlier versions, option combinations that do not exist, and the shipped configs."""
import re
from pathlib import Path

import pytest
import yaml

from metasd_dgl.store.checkpoint import load_checkpoint
from metasd_dgl.cli import main
from metasd_dgl.config import Config, ConfigError, apply_overrides, load_config, save_config, to_dict, validate
from run_helpers import REPO, TOY


def test_defaults_roundtrip(tmp_path):
    cfg = load_config(overrides={"model.dim": 8, "train": {"lr": "0.5"}, "run_dir": "x"})
    assert (cfg.model.dim, cfg.train.lr, cfg.run_dir) == (8, 0.5, "x")
    save_config(cfg, tmp_path / "c.yaml")
    assert to_dict(load_config(tmp_path / "c.yaml")) == to_dict(cfg)


def test_files_then_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("model:\n  dim: 16\ntrain:\n  epochs: 3\n")
    b = tmp_path / "b.yaml"
    b.write_text("train:\n  epochs: 4\n")
    cfg = load_config(a, b, overrides={"model.dim": 32})
    assert (cfg.model.dim, cfg.train.epochs) == (32, 4)


@pytest.mark.parametrize("overrides, message", [
    ({"train.lrr": 1}, "unknown option 'train.lrr'"),
    ({"train": 3}, "unknown option 'train'"),
    ({"model.dim": "x"}, "model.dim: expected an integer"),
    ({"model.dim": -4}, "model.dim=-4 must be >= 1"),
    ({"train.batch_size": 0}, "train.batch_size=0 must be >= 1"),
    ({"prune.rate": 1.0}, "prune.rate=1.0 must be in [0, 1)"),
    ({"prune.rate": -0.1}, "must be in [0, 1)"),
    ({"model.decoder": "foo"}, "model.decoder='foo' is not one of"),
    ({"metasd.extra_teacher_step": "maybe"}, "expected true/false"),
])
def test_bad_values(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=overrides)


def test_bool_strings_are_parsed_not_truthy():
    """The reference code's type=bool fault: the string 'False' must be False."""
    assert load_config(overrides={"metasd.extra_teacher_step": "False"}).metasd.extra_teacher_step is False
    assert load_config(overrides={"metasd.extra_teacher_step": "true"}).metasd.extra_teacher_step is True


def test_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not a UTF-8"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_option_has_a_default():
    assert to_dict(Config())["prune"]["rate"] == 0.9


def test_an_option_of_an_earlier_version_says_what_replaced_it(tmp_path):
    """A YAML file or --set naming a moved or retired option: one error naming the option, the file and
    line, and what to use instead (the CLI prints it as one error line, exit 2)."""
    from metasd_dgl.cli import main
    from metasd_dgl.config import MOVED, RETIRED

    old = tmp_path / "old.yaml"
    _refused(old, "train:\n  epochs: 3\nmetasd:\n  temperature: 2.0\n  prune_rate: 0.8\n",
             r"line 5: metasd.prune_rate is now prune.rate$")
    _refused(tmp_path / "gone.yaml", "metasd:\n  share_forward: true\n", r"line 2: metasd.share_forward was retired: ")
    with pytest.raises(ConfigError, match=r"^override: train.init_from was retired: "):
        load_config(overrides={"train.init_from": "x.pt"})
    for key in [*MOVED, *RETIRED]:  # every one of them is named, none is a plain "unknown option"
        with pytest.raises(ConfigError, match=re.escape(key) + " (is now|was retired)"):
            load_config(overrides={key: 1})
    assert main(["train", "--config", str(old), "--dataset", "umls"]) == 2


def test_a_section_or_option_set_twice_is_an_error(tmp_path):
    """YAML keeps the last of two equal keys: a section written twice would drop the first silently."""
    _refused(tmp_path / "twice.yaml", "train:\n  epochs: 5\nmodel:\n  dim: 8\ntrain:\n  lr: 0.1\n",
             r"line 5: 'train' is set twice")
    _refused(tmp_path / "inner.yaml", "train:\n  epochs: 5\n  lr: 0.1\n  epochs: 50\n", r"line 4: 'epochs' is set twice")


def _refused(path, text: str, message: str) -> None:
    """A config file holding ``text`` is refused with ``<path>: <message>`` (a regular expression)."""
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_config(path)


def test_choices_written_once_equal_the_registries_that_implement_them():
    """config.py writes its choices as literals (it imports no torch); they name what the code has."""
    import subprocess
    import sys

    from metasd_dgl.config import CHOICES
    from metasd_dgl.evaluate.unseen import POLICIES
    from metasd_dgl.model.decoders import DECODERS
    from metasd_dgl.model.pruning import SCOPES, STRUCTURES
    from metasd_dgl.runtime.precision import PRECISIONS
    from metasd_dgl.train.optimizers import OPTIMIZERS
    from metasd_dgl.train.tracker import TRACKERS

    assert CHOICES["model.decoder"] == tuple(DECODERS) and CHOICES["metasd.meta_optimizer"] == tuple(OPTIMIZERS)
    assert CHOICES["train.optimizer"] == tuple(n for n in OPTIMIZERS if n != "sgd")
    assert CHOICES["prune.scope"] == SCOPES and CHOICES["prune.structure"] == STRUCTURES
    assert CHOICES["runtime.tracker"] == TRACKERS and CHOICES["train.precision"] == PRECISIONS
    assert CHOICES["eval.unseen"] == POLICIES
    code = "import sys, metasd_dgl.config; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('metasd_dgl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['metasd_dgl', 'metasd_dgl.config', 'metasd_dgl.errors']"


def test_train_holds_at_most_16_options_in_sections_by_concern():
    import dataclasses

    from metasd_dgl.config import Config, TrainConfig

    assert len(dataclasses.fields(TrainConfig)) <= 16
    sections = [f.name for f in dataclasses.fields(Config) if f.name != "run_dir"]
    assert sections == ["data", "model", "train", "plateau", "negatives", "rgcn", "prune", "metasd", "budget",
                        "valid", "checkpoint", "runtime", "eval"]


@pytest.mark.parametrize("old,new", [("train.valid_every", "valid.every"), ("model.num_bases", "rgcn.num_bases"),
                                     ("train.num_negatives", "negatives.num"), ("train.num_threads", "runtime.num_threads")])
def test_a_moved_option_says_where_it_went(tmp_path, old, new):
    section, name = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {name}: 3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: line 2: {re.escape(old)} is now {re.escape(new)}$"):
        load_config(path)


def test_option_counts():
    """The knobs a user meets: at most 67 options, the pruning and MetaSD sections together at most 20."""
    import dataclasses

    d = to_dict(Config())
    count = sum(len(v) if isinstance(v, dict) else 1 for v in d.values())
    assert count <= 67, count
    assert len(dataclasses.fields(type(Config().prune))) + len(dataclasses.fields(type(Config().metasd))) <= 20


def test_shipped_configs_load():
    from pathlib import Path

    from metasd_dgl.tools.search_space import load_space

    folder = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
    configs = sorted(p for p in folder.glob("*.yaml") if not p.name.endswith(".tune.yaml"))
    assert len(configs) >= 6
    for path in configs:
        cfg = load_config(path)
        assert cfg.run_dir.startswith("runs/"), path
    spaces = sorted(folder.glob("*.tune.yaml"))  # each search space parses against its config
    assert {p.name for p in spaces} >= {f"{d}_dense.tune.yaml" for d in ("umls", "kinship", "nations", "codex-s")}
    for path in spaces:
        assert load_space(path, load_config(folder / path.name.replace(".tune.yaml", ".yaml")))


def test_a_bad_value_names_the_file_and_line_that_set_it(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("train:\n  epochs: 3\n  lr: -1\nmetasd:\n  student: sideways\n")
    second.write_text("# a comment\nmetasd:\n  kd_weight: 2.0\n  student: sideways\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(first))}: line 3: train.lr=-1.0 must be > 0$"):
        load_config(first, overrides={"metasd.student": "shared"})
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(second))}: line 4: metasd.student='sideways' is not"):
        load_config(first, second, overrides={"train.lr": 0.1})  # the file that set it last is named
    fixed = load_config(first, overrides={"train.lr": 0.1, "metasd": {"student": "shared"}})
    assert fixed.train.lr == 0.1  # a command-line override replaces the file's value, and its error
    with pytest.raises(ConfigError, match=r"^train.lr=-2.0 must be > 0$"):
        load_config(first, overrides={"train.lr": -2, "metasd.student": "shared"})
    bad_type = tmp_path / "c.yaml"
    bad_type.write_text("model:\n\n  dim: wide\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad_type))}: line 3: model.dim: expected an integer"):
        load_config(bad_type)


# ------------------------------------------------------------------ option combinations

def test_relation_prediction_needs_a_bilinear_decoder():
    cfg = apply_overrides(Config(), {"train.rp_weight": 1.0, "model.decoder": "transe"})
    with pytest.raises(ConfigError, match="train.rp_weight"):
        validate(cfg)


def test_option_combinations_that_do_not_exist_are_config_errors():
    """The five rules: each combination that does not exist is one error naming the option."""
    for key, over in (("train.rp_weight", {"train.rp_weight": 1.0, "model.decoder": "transe"}),
                      ("train.regime", {"train.method": "kd", "train.regime": "negative-sampling"}),
                      ("prune.gradual_epochs", {"prune.gradual_epochs": 50, "train.method": "prune",
                                                "train.epochs": 50}),
                      ("prune.structure", {"prune.structure": "dimension", "prune.scope": "per-tensor",
                                           "train.method": "prune"}),
                      ("train.lr_scheduler", {"metasd.student": "own", "train.method": "kd",
                                              "train.lr_scheduler": "plateau"})):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=over)
        assert err.value.key == key
    # a section only one choice reads is ignored otherwise, not an error
    for over in ({"metasd.student": "own", "train.method": "prune"}, {"prune.gradual_epochs": 2},
                 {"metasd.one_way_kd": True, "train.method": "prune"}, {"negatives.num": 3},
                 {"rgcn.num_layers": 3}, {"plateau.factor": 0.1}):
        load_config(overrides=over)
    for retired in ({"metasd.straight_through": True}, {"metasd.share_forward": True},
                    {"metasd.warmup_epochs": 2}, {"metasd.mask_source": "student"}, {"train.init_from": "x.pt"}):
        with pytest.raises(ConfigError, match="retired"):
            load_config(overrides=retired)


# ------------------------------------------------------------------ checkpoints of earlier versions

def test_a_checkpoint_older_than_an_option_counts_it_at_its_default(tmp_path):
    """A run folder written before ``train.cpu_minutes`` existed, in the names of that time (the prune
    options under ``metasd``, options since retired at their old defaults), is still finished for
    ``pipeline`` and resumable; one that used a retired option is refused by name."""
    from metasd_dgl.config import from_dict, resume_differences
    from metasd_dgl.stages import run_status

    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", TOY, "--run-dir", str(run), "--epochs", "1", "--dim", "4"]) == 0
    stored = load_checkpoint(run / "checkpoints" / "last.pt")
    cfg = from_dict(stored["config"])
    old = {sec: dict(v) if isinstance(v, dict) else v for sec, v in stored["config"].items()}
    del old["budget"]
    old["metasd"].update({f"prune_{k}": v for k, v in old.pop("prune").items() if k != "gradual_epochs"},
                         share_forward=False, mask_epochs=0, meta_grad_path="kd")
    old["train"]["loss_backend"] = "fused"
    stored["config"] = old
    from metasd_dgl.store.checkpoint import save_checkpoint
    save_checkpoint(stored, run / "checkpoints" / "last.pt")
    assert run_status(run, cfg) == {**run_status(run, cfg), "finished": True, "differences": []}
    from metasd_dgl.config import to_dict
    assert resume_differences(old, to_dict(cfg)) == []
    assert from_dict(old).prune.rate == cfg.prune.rate  # read through config.upgrade
    new = from_dict(old)
    new.prune.rate = 0.5
    assert resume_differences(old, to_dict(new)) == ["prune.rate: 0.9 (checkpoint) vs 0.5 (now)"]
    retired = {**old, "metasd": {**old["metasd"], "share_forward": True}}
    assert resume_differences(retired, to_dict(cfg))[0].startswith("metasd.share_forward=True (retired: ")
    stored["config"] = retired
    save_checkpoint(stored, run / "checkpoints" / "last.pt")
    assert main(["train", "--quiet", "--resume", str(run), "--epochs", "2"]) == 2  # refused, by name
    assert main(["evaluate", str(run), "--checkpoint", "last", "--no-plots"]) == 0  # but still readable


# ------------------------------------------------------------------ run folders

def test_shipped_configs_name_no_run_folder():
    for path in sorted(REPO.glob("pipelines/**/*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        assert "run_dir" not in data, path
    # composed with another dataset, the run lands in that dataset's folder
    cfg = load_config(REPO / "pipelines/configs/umls_metasd.yaml", overrides={"data.dataset": "kinship"})
    assert cfg.run_dir == "runs/kinship-complex-metasd"


def test_the_default_run_folder_is_found_again_and_never_another_experiments(tmp_path, monkeypatch):
    """runs/<dataset>-<decoder>-<method>, or the first sibling -2, -3, ... that is free or holds a run of
    this very config: the same command finds its run again, another config gets a folder of its own."""
    from metasd_dgl.config import save_config

    monkeypatch.chdir(tmp_path)
    first = load_config(overrides={"train.method": "metasd"})
    assert first.run_dir == "runs/umls-complex-metasd"
    Path(first.run_dir).mkdir(parents=True)
    save_config(first, Path(first.run_dir) / "config.yaml")
    assert load_config(overrides={"train.method": "metasd"}).run_dir == "runs/umls-complex-metasd"  # found again
    other = load_config(overrides={"train.method": "metasd", "train.epochs": 7})
    assert other.run_dir == "runs/umls-complex-metasd-2"  # another experiment: its own folder
    Path(other.run_dir).mkdir(parents=True)
    save_config(other, Path(other.run_dir) / "config.yaml")
    assert load_config(overrides={"train.method": "metasd", "train.epochs": 7}).run_dir == other.run_dir
    assert load_config(overrides={"train.method": "metasd", "train.epochs": 8}).run_dir == "runs/umls-complex-metasd-3"
    assert load_config(overrides={"run_dir": "mine"}).run_dir == "mine"  # a folder given is a folder taken


def test_docs_config_md_is_what_config_py_generates():
    """docs/config.md is generated; an option added, renamed or re-commented in config.py fails here until
    the page is regenerated:
    python -c "from metasd_dgl.config import options_markdown as m; print(m(), end='')" > docs/config.md"""
    from metasd_dgl.config import options_markdown

    page = options_markdown()
    assert (REPO / "docs" / "config.md").read_text(encoding="utf-8") == page, "docs/config.md is stale"
    # every option is on it, with its default, in the row of its own section
    cfg = to_dict(Config())
    for section, options in cfg.items():
        for name, default in (options.items() if isinstance(options, dict) else [(None, options)]):
            key = f"{section}.{name}" if name else section
            row = next((line for line in page.splitlines() if line.startswith(f"| `{key}` |")), None)
            assert row is not None, key
            shown = {None: "null", True: "true", False: "false", "": '`""`'}.get(default, f"`{default}`") \
                if not isinstance(default, (int, float)) or isinstance(default, bool) else f"`{default}`"
            assert f" {shown} |" in row, (key, row)
    # a trailing comment of config.py is the option's meaning
    assert "| `prune.rate` | float | in [0, 1) | `0.9` | share of prunable weights zeroed in the student |" in page
    assert "| `metasd.prune_rate` | `prune.rate` |" in page  # the options of earlier versions


def test_a_checkpoint_older_than_the_student_options_keeps_the_paper_student():
    """A run stored before ``metasd.student`` and ``metasd.one_way_kd`` existed trained the teacher's weights
    under the mask with mutual distillation (the only behaviour then), whatever today's defaults are: read
    through ``with_defaults`` it stays so, and resuming it with today's own-weights student is refused."""
    from metasd_dgl.config import resume_differences, with_defaults

    cfg = Config()
    cfg.train.method = "metasd"
    old = to_dict(cfg)
    for name in ("student", "student_lr", "one_way_kd", "real_kd_weighting"):  # options of a later version
        del old["metasd"][name]
    read = with_defaults(old)
    assert read["metasd"]["student"] == "shared" and read["metasd"]["one_way_kd"] is False
    assert "metasd.student: 'shared' (checkpoint) vs 'own' (now)" in resume_differences(old, to_dict(cfg))
    assert with_defaults(to_dict(cfg))["metasd"]["student"] == "own"  # a run that stored the option keeps it
