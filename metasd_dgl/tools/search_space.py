"""Search spaces for ``metasd-dgl tune``: a YAML file of ranges and choices over config options.

The file (by default ``<config>.tune.yaml`` next to ``<config>.yaml``) maps
any ``section.option`` of ``metasd_dgl.config`` to one of::

    train.lr: {low: 1.0e-3, high: 0.3, log: true}    # float range (log scale)
    train.entity_dropout: {low: 0.0, high: 0.5}      # float range
    train.batch_size: {low: 128, high: 1024, step: 128}  # int range (the option is an int)
    model.dim: {choices: [128, 256, 512]}            # any option: a list of values
    train.optimizer: {choices: [adagrad, adam]}

A range's type is the option's declared type (int or float; others take
``choices`` only).  Every bad entry is a ``ConfigError`` naming the file, the
line and the option: an unknown option, an unknown key, ``low > high``, an
empty or repeated choice list, ``log`` with ``low <= 0``, a ``step`` that is
not positive, or a value the option rejects (each choice and both range ends
are applied to the base config and validated, so ``train.lr: {low: 0, ...}``
fails here, not in trial 7).
"""
from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from metasd_dgl.errors import short
from metasd_dgl.store.atomic import MAX_TEXT_FILE_BYTES, check_input_file
from metasd_dgl.config import Config, ConfigError, _coerce, _sections, apply_overrides, load_yaml, validate

_RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Param:
    """One searched option: a range (``kind`` int | float) or ``choices``."""

    name: str  # "section.option"
    kind: str  # "int" | "float" | "choice"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """Draw this option's value from an ``optuna.Trial``."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def option_type(name: str) -> Optional[type]:
    """Declared type of ``section.option`` (int, float, str, bool, ...), or None if there is no such option."""
    section, _, option = name.partition(".")
    if section not in _sections() or not option or "." in option:
        return None
    hints = typing.get_type_hints(type(getattr(Config(), section)))
    return hints.get(option)


def _lines(text: str) -> dict[str, int]:
    """Top-level key -> its 1-based line (from the YAML node tree)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


def _check_value(base: Config, name: str, value: Any, where: str) -> None:
    """``value`` applied to a copy of ``base`` must pass the config's own checks."""
    try:
        validate(apply_overrides(copy.deepcopy(base), {name: value}, where))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {name}: {value!r} is not accepted ({exc})") from None


def _number(value: Any) -> Any:
    """YAML reads ``1e-3`` (no dot) as a string: such strings become floats; anything else is kept."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _param(name: str, spec: Any, base: Config, where: str) -> Param:
    hint = option_type(name)
    if hint is None:
        raise ConfigError(f"{where}: unknown option {name!r} (expected section.option of the config)")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {name}: expected {{low, high[, log, step]}} or {{choices: [...]}}, got {short(spec)}")
    if "choices" in spec:
        extra = set(spec) - {"choices"}
        if extra:
            raise ConfigError(f"{where}: {name}: choices take no {', '.join(sorted(extra))}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {name}: empty choice list")
        if any(isinstance(c, (dict, list)) for c in choices) or len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}: {name}: choices must be distinct plain values, got {short(choices)}")
        choices = [_coerce(c, hint, f"{where}: {name}") for c in choices]  # "1e-3" -> 0.001 for a float option
        for value in choices:
            _check_value(base, name, value, where)
        return Param(name, "choice", choices=tuple(choices))
    extra = set(spec) - _RANGE_KEYS
    if extra:
        raise ConfigError(f"{where}: {name}: unknown key(s) {', '.join(sorted(extra))} "
                          "(a range has low, high, log, step; a list has choices)")
    if hint not in (int, float):
        raise ConfigError(f"{where}: {name} is not a number option; give {{choices: [...]}}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {name}: a range needs low and high")
    kind = "int" if hint is int else "float"
    numbers = {k: _number(spec[k]) for k in ("low", "high", "step") if spec.get(k) is not None}
    for key, value in numbers.items():
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ConfigError(f"{where}: {name}: {key} must be {'an integer' if kind == 'int' else 'a number'}, "
                              f"got {value!r}")
    low, high, step, log = numbers["low"], numbers["high"], numbers.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {name}: log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{where}: {name}: low {low} > high {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: {name}: log scale needs low > 0, got {low}")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: {name}: step must be > 0, got {step}")
    if log and step is not None and step != 1:
        raise ConfigError(f"{where}: {name}: log and step exclude each other")
    for value in (low, high):
        _check_value(base, name, value, where)
    return Param(name, kind, float(low), float(high), log, float(step) if step is not None else None)


def parse_space(text: str, base: Config, source: str = "search space") -> list[Param]:
    """Parse a search space (format in the module docstring) against the base config."""
    data = load_yaml(text, source)
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a mapping of section.option to a range or choices")
    lines = _lines(text)
    return [_param(str(name), spec, base, f"{source}:{lines.get(str(name), '?')}") for name, spec in data.items()]


def load_space(path: Union[str, Path], base: Config) -> list[Param]:
    """``parse_space`` of a file (ConfigError if it is missing)."""
    path = Path(path)
    try:
        if path.exists():  # a FIFO or device would block or fill memory
            check_input_file(path, "search space file", MAX_TEXT_FILE_BYTES)
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"{path}: search space file not found") from None
    return parse_space(text, base, str(path))


def default_space_path(config: Union[str, Path]) -> Path:
    """``pipelines/configs/umls_dense.yaml -> pipelines/configs/umls_dense.tune.yaml``."""
    config = Path(config)
    return config.with_name(config.name[: -len(config.suffix)] + ".tune.yaml" if config.suffix else
                            config.name + ".tune.yaml")


def as_override(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"train.lr": 0.1}`` -> ``{"train": {"lr": 0.1}}`` (a YAML override ``load_config`` reads)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        section, _, option = name.partition(".")
        out.setdefault(section, {})[option] = value
    return out
