import re

import pytest

from metasd_dgl.config import Config, ConfigError, load_config, save_config, to_dict


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
    old.write_text("train:\n  epochs: 3\nmetasd:\n  temperature: 2.0\n  prune_rate: 0.8\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(old))}: line 5: metasd.prune_rate is now prune.rate$"):
        load_config(old)
    gone = tmp_path / "gone.yaml"
    gone.write_text("metasd:\n  share_forward: true\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(gone))}: line 2: metasd.share_forward was retired: "):
        load_config(gone)
    with pytest.raises(ConfigError, match=r"^override: train.init_from was retired: "):
        load_config(overrides={"train.init_from": "x.pt"})
    for key in [*MOVED, *RETIRED]:  # every one of them is named, none is a plain "unknown option"
        with pytest.raises(ConfigError, match=re.escape(key) + " (is now|was retired)"):
            load_config(overrides={key: 1})
    assert main(["train", "--config", str(old), "--dataset", "umls"]) == 2


def test_a_section_or_option_set_twice_is_an_error(tmp_path):
    """YAML keeps the last of two equal keys: a section written twice would drop the first silently."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 5\nmodel:\n  dim: 8\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(twice))}: line 5: 'train' is set twice"):
        load_config(twice)
    inner = tmp_path / "inner.yaml"
    inner.write_text("train:\n  epochs: 5\n  lr: 0.1\n  epochs: 50\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(inner))}: line 4: 'epochs' is set twice"):
        load_config(inner)


def test_choices_come_from_the_registries_that_implement_them():
    from metasd_dgl.config import CHOICES
    from metasd_dgl.decoders import DECODERS
    from metasd_dgl.optimizers import OPTIMIZERS
    from metasd_dgl.pruning import SCOPES, STRUCTURES
    from metasd_dgl.train.tracker import TRACKERS

    assert CHOICES["model.decoder"] == tuple(DECODERS) and CHOICES["metasd.meta_optimizer"] == tuple(OPTIMIZERS)
    assert CHOICES["prune.scope"] == SCOPES and CHOICES["prune.structure"] == STRUCTURES
    assert CHOICES["train.tracker"] == TRACKERS


def test_option_counts():
    """The knobs a user meets: at most 66 options, the pruning and MetaSD sections together at most 20."""
    import dataclasses

    d = to_dict(Config())
    count = sum(len(v) if isinstance(v, dict) else 1 for v in d.values())
    assert count <= 66, count
    assert len(dataclasses.fields(type(Config().prune))) + len(dataclasses.fields(type(Config().metasd))) <= 20


def test_shipped_configs_load():
    from pathlib import Path

    from metasd_dgl.search_space import load_space

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
