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
    ({"metasd.prune_rate": 1.0}, "metasd.prune_rate=1.0 must be in [0, 1)"),
    ({"metasd.prune_rate": -0.1}, "must be in [0, 1)"),
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
    assert to_dict(Config())["metasd"]["prune_rate"] == 0.9


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
    first.write_text("train:\n  epochs: 3\n  lr: -1\nmetasd:\n  mask_source: sideways\n")
    second.write_text("# a comment\nmetasd:\n  student: own\n  mask_source: sideways\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(first))}: line 3: train.lr=-1.0 must be > 0$"):
        load_config(first, overrides={"metasd.mask_source": "teacher"})
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(second))}: line 4: metasd.mask_source='sideways' is not"):
        load_config(first, second, overrides={"train.lr": 0.1})  # the file that set it last is named
    fixed = load_config(first, overrides={"train.lr": 0.1, "metasd": {"mask_source": "teacher"}})
    assert fixed.train.lr == 0.1  # a command-line override replaces the file's value, and its error
    with pytest.raises(ConfigError, match=r"^train.lr=-2.0 must be > 0$"):
        load_config(first, overrides={"train.lr": -2, "metasd.mask_source": "teacher"})
    bad_type = tmp_path / "c.yaml"
    bad_type.write_text("model:\n\n  dim: wide\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad_type))}: line 3: model.dim: expected an integer"):
        load_config(bad_type)
