"""Configuration: one dataclass per concern, every option stated once with its default.

``Config`` is the whole run.  YAML files hold short overrides of these
defaults (see ``pipelines/configs``, found by ``metasd_dgl.resources``);
``load_config`` merges them in order and checks names and types, so a typo is
an error, not a silent default.  Library functions take the typed pieces; only
the CLI and ``metasd_dgl.stages`` read files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from metasd_dgl.errors import UserError, short


class ConfigError(UserError):
    """A config file or override that names an unknown option or a bad value (``key``: the option)."""

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class DataConfig:
    dataset: str = "umls"  # built-in name, folder, .tar.gz, or DGL-KE layout
    data_dir: Optional[str] = None  # folder holding <name>.tar.gz (env METASD_DATA_DIR)
    format: str = "auto"  # auto | tsv | raw_udd_hrt | udd_hrt
    processed_dir: Optional[str] = None  # default: <run_dir>/data


@dataclass
class ModelConfig:
    encoder: str = "kge"  # kge | rgcn (options: the rgcn section)
    decoder: str = "complex"  # complex | distmult | rotate | transe
    dim: int = 100  # embedding dimension (complex numbers for complex/rotate)
    init_scale: float = 1e-3  # std of the normal initialisation (kge)


@dataclass
class TrainConfig:
    method: str = "plain"  # plain | prune | kd | metasd
    regime: str = "1-n"  # 1-n (all entities, softmax CE) | negative-sampling (negatives section; no rp, no smoothing)
    epochs: int = 50  # passes over the training queries (each triple in both directions)
    batch_size: int = 1000  # training queries per step
    optimizer: str = "adagrad"  # adagrad | adam
    lr: float = 0.1  # learning rate of the teacher's (or the dense model's) optimiser
    lr_scheduler: str = "none"  # none | plateau (ReduceLROnPlateau on the selection MRR; options: plateau)
    regularizer: str = "dura"  # dura | n3 | none
    reg_weight: float = 0.05  # weight of the regulariser next to cross-entropy
    label_smoothing: float = 0.0  # share of each target's probability spread over all entities
    rp_weight: float = 0.0  # relation prediction: weight of CE over all relations given (h, t) (0 = off; complex, distmult)
    entity_dropout: float = 0.0  # dropout on the entity rows in training steps (never in evaluation)
    relation_dropout: float = 0.0  # dropout on the relation rows in training steps
    grad_clip: float = 0.0  # 0 = off
    precision: str = "fp32"  # fp32 | tf32 (CUDA) | bf16: the score products of training steps
    seed: int = 0  # initialisation, quiz split, batch order, dropout: a run is a function of it


@dataclass
class PlateauConfig:
    """``train.lr_scheduler = plateau``: the main optimiser's lr drops when the selection MRR stalls."""

    factor: float = 0.5  # multiply the lr by this after `patience` validations without gain
    patience: int = 2  # validations without improvement before the lr drops


@dataclass
class NegativesConfig:
    """``train.regime = negative-sampling``."""

    num: int = 32  # corruptions per positive
    margin: float = 9.0  # gamma of distance models


@dataclass
class RGCNConfig:
    """``model.encoder = rgcn``."""

    num_layers: int = 2  # message-passing layers
    num_bases: int = 4  # bases (basis) or blocks (bdd) of the per-relation weights
    decomposition: str = "basis"  # basis | bdd: how the per-relation weight matrices are shared
    dropout: float = 0.2  # dropout on each layer's output in training
    edge_dropout: float = 0.5  # share of training edges hidden from message passing
    sample_edges: int = 0  # with negative sampling: message edges sampled per batch (0 = all)


@dataclass
class BudgetConfig:
    """Limits on a run's training time (0 = none)."""

    batches_per_epoch: int = 0  # cap on batches per epoch, a random part of it (0 = the whole epoch)
    cpu_minutes: float = 0.0  # stop once training steps used this much process CPU time, all threads


@dataclass
class ValidConfig:
    every: int = 5  # epochs between validations
    patience: int = 5  # validations without improvement before stopping (0 = off)


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between mid-epoch checkpoints (0 = epoch ends only)
    keep: int = 2  # newest epoch checkpoints kept besides last and best


@dataclass
class RuntimeConfig:
    device: str = "cpu"  # cpu | cuda | cuda:N
    num_threads: int = 0  # CPU threads for torch (0 = torch's default)
    tracker: str = "none"  # none | tensorboard (scalars in <run_dir>/tensorboard)


@dataclass
class PruneConfig:
    """The student's mask (methods prune, kd, metasd): magnitude pruning, recomputed every epoch."""

    rate: float = 0.9  # share of prunable weights zeroed in the student
    scope: str = "global"  # global | per-tensor: one magnitude threshold over all tables, or one per table
    structure: str = "element"  # element | dimension (whole coordinates, aligned across tables; kge)
    gradual_epochs: int = 0  # the rate rises from 0 to prune.rate over these epochs (cubic; 0 = at once)


@dataclass
class MetaSDConfig:
    """Distillation (kd, metasd) and MetaSD's meta step (metasd).

    The defaults are the recommended student: weights of its own, one-way T^2-scaled distillation
    (choose temperature, kd_weight and student_lr on your validation set: ``metasd-dgl tune``).  The
    paper's student (the teacher's weights under the mask, mutual distillation) is
    ``pipelines/configs/paper_student.yaml``; the reference code as it runs, ``reference.yaml``.
    """

    temperature: float = 3.0  # softmax temperature of both models' predictions in distillation
    kd_weight: float = 1.0  # weight of distillation next to cross-entropy
    kd_forward_weight: float = 3.0  # KL(teacher || student)
    kd_reverse_weight: float = 1.0  # KL(student || teacher)
    kd_t2_scale: bool = True  # scale KD by T^2 (the reference code does not)
    real_kd_weighting: str = "source"  # real step: source: fw KL(source||learner) + rw KL(learner||source) | self: swapped
    one_way_kd: bool = True  # real step: the teacher does not learn from the student (no KD(S -> T))
    meta_optimizer: str = "adam"  # adam | adagrad | sgd
    meta_lr: float = 1e-4  # learning rate of the meta optimiser (over the teacher's weights)
    virtual_lr: float = 0.1  # SGD step of the virtual student
    quiz_fraction: float = 0.02  # held-out slice of train for the meta step
    quiz_batch_size: int = 1000  # quiz queries per meta step
    meta_every: int = 1  # run the meta step every k batches
    extra_teacher_step: bool = False  # reference code: a plain teacher step first, every batch
    student: str = "own"  # own: weights of its own | shared: the teacher's weights under the mask (the paper)
    student_lr: float = 0.0  # student=own: lr of the student's optimiser (0 = train.lr)


@dataclass
class EvalConfig:
    max_memory_mb: int = 512  # cap on the (chunk x entities) score matrix, which sets the chunk of queries
    num_buckets: int = 3  # long-tail buckets by relation frequency / entity degree
    unseen: str = "rank"  # valid/test triples with an entity or relation absent from train: rank | drop


@dataclass
class Config:
    run_dir: str = ""  # "" = runs/<dataset>-<decoder>-<method> (default_run_dir), so datasets never collide
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    rgcn: RGCNConfig = field(default_factory=RGCNConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    metasd: MetaSDConfig = field(default_factory=MetaSDConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    valid: ValidConfig = field(default_factory=ValidConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


#: Every choice, written once (tests/test_config.py holds them equal to the registries that implement them).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("auto", "tsv", "raw_udd_hrt", "udd_hrt"),
    "model.encoder": ("kge", "rgcn"),
    "model.decoder": ("complex", "distmult", "rotate", "transe"),
    "train.method": ("plain", "prune", "kd", "metasd"),
    "train.regime": ("1-n", "negative-sampling"),
    "train.optimizer": ("adam", "adagrad"),
    "train.lr_scheduler": ("none", "plateau"),
    "train.regularizer": ("dura", "n3", "none"),
    "train.precision": ("fp32", "tf32", "bf16"),
    "rgcn.decomposition": ("basis", "bdd"),
    "prune.scope": ("global", "per-tensor"),
    "prune.structure": ("element", "dimension"),
    "metasd.meta_optimizer": ("adam", "adagrad", "sgd"),
    "metasd.student": ("shared", "own"),
    "metasd.real_kd_weighting": ("source", "self"),
    "runtime.tracker": ("none", "tensorboard"),
    "eval.unseen": ("rank", "drop"),
}

#: Options of earlier versions: the old name -> what to use instead.  A YAML file or ``--set`` naming one
#: is an error saying so; a stored config (a checkpoint's) is read through ``upgrade``.
MOVED = {
    "metasd.prune_rate": "prune.rate",
    "metasd.prune_scope": "prune.scope",
    "metasd.prune_structure": "prune.structure",
    "metasd.gradual_epochs": "prune.gradual_epochs",
    "model.regularizer": "rgcn.decomposition",
    "model.decomposition": "rgcn.decomposition",
    "model.num_layers": "rgcn.num_layers",
    "model.num_bases": "rgcn.num_bases",
    "model.dropout": "rgcn.dropout",
    "train.edge_dropout": "rgcn.edge_dropout",
    "train.sample_edges": "rgcn.sample_edges",
    "train.lr_factor": "plateau.factor",
    "train.lr_patience": "plateau.patience",
    "train.num_negatives": "negatives.num",
    "train.margin": "negatives.margin",
    "train.batches_per_epoch": "budget.batches_per_epoch",
    "train.cpu_minutes": "budget.cpu_minutes",
    "train.valid_every": "valid.every",
    "train.patience": "valid.patience",
    "train.checkpoint_every": "checkpoint.every",
    "train.keep_checkpoints": "checkpoint.keep",
    "train.device": "runtime.device",
    "train.num_threads": "runtime.num_threads",
    "train.tracker": "runtime.tracker",
}
#: Retired options: the old name -> (its only value now, why it went).  A run that set one otherwise
#: can be evaluated, not continued (``retired_settings``), unless training never read it (``NO_EFFECT``).
RETIRED: dict[str, tuple[Any, str]] = {
    "metasd.share_forward": (False, "the real step always takes its gradients after the meta step (exact MetaSD)"),
    "metasd.student_owns_kept": (False, "a study arm; use metasd.student=own for a student with weights of its own"),
    "metasd.straight_through": (True, "method prune always lets pruned weights keep their gradients (so the mask "
                                      "can change: gradual magnitude pruning)"),
    "metasd.mask_epochs": (0, "the mask is recomputed every epoch"),
    "metasd.mask_source": ("teacher", "the own student's mask comes from the teacher's magnitudes"),
    "metasd.meta_grad_path": ("kd", "the meta gradient always flows through the teacher's predictions "
                                    "(the reference code's path)"),
    "metasd.warmup_epochs": (0, "the student trains from the first epoch; prune.gradual_epochs eases it in"),
    "train.loss_backend": ("fused", "the closed-form loss gradients are always used (the autograd ones are "
                                    "the tests' reference)"),
    "train.tune_malloc": (True, "it is always applied"),
    "train.init_from": ("", "a study arm (post-hoc pruning); its result is in docs/history.md"),
    "model.self_loop": (True, "R-GCN layers always have a self-loop"),
    "eval.batch_size": (0, "the chunk of queries comes from eval.max_memory_mb"),
    "eval.splits": (("valid", "test"), "evaluate takes --split"),
}
#: Options whose default changed since they were added: a stored config that predates one ran as this value.
EARLIER_DEFAULTS: dict[str, Any] = {"metasd.student": "shared", "metasd.one_way_kd": False}
#: Retired options that training never read (process settings, evaluation chunks): any value resumes.
NO_EFFECT = ("train.tune_malloc", "train.loss_backend", "eval.batch_size", "eval.splits")


def retired_hint(key: str) -> Optional[str]:
    """What to say about an option of an earlier version (``None``: ``key`` is no such option)."""
    if key in MOVED:
        return f"{key} is now {MOVED[key]}"
    if key in RETIRED:
        return f"{key} was retired: {RETIRED[key][1]}"
    return None


def upgrade(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict (a checkpoint's, an old run's ``config.yaml``) in today's names: moved
    options take their new names, retired ones are dropped (``retired_settings`` lists those that were
    not at the value that is now the only behaviour)."""
    out = {sec: dict(v) if isinstance(v, dict) else v for sec, v in stored.items()}
    for old, new in MOVED.items():
        sec, _, name = old.partition(".")
        if isinstance(out.get(sec), dict) and name in out[sec]:
            value = out[sec].pop(name)
            new_sec, _, new_name = new.partition(".")
            out.setdefault(new_sec, {}).setdefault(new_name, value)
    for old in RETIRED:
        sec, _, name = old.partition(".")
        if isinstance(out.get(sec), dict):
            out[sec].pop(name, None)
    for key, value in EARLIER_DEFAULTS.items():  # a config stored before the option: its behaviour then
        sec, _, name = key.partition(".")
        if isinstance(out.get(sec), dict):
            out[sec].setdefault(name, value)
    return out


def retired_settings(stored: dict[str, Any]) -> list[str]:
    """``["metasd.share_forward=True (retired: ...)", ...]``: what a stored config set to a value this
    version no longer has (a run trained so can be evaluated, not continued)."""
    def old(key: str, default: Any) -> Any:
        sec, _, name = key.partition(".")
        return stored.get(sec, {}).get(name, default) if isinstance(stored.get(sec), dict) else default

    out = []
    for key, (value, why) in RETIRED.items():
        if key in NO_EFFECT or key == "metasd.straight_through":
            continue
        got = old(key, value)
        if (list(got) if isinstance(got, (list, tuple)) else got) != (list(value) if isinstance(value, tuple) else value):
            out.append(f"{key}={got!r} (retired: {why})")
    # prune-only with element masks froze its pruned weights until it let them regrow (the options of
    # that time sat under metasd): such a run cannot be continued by today's method prune
    if (old("train.method", "plain") == "prune" and "prune_rate" in (stored.get("metasd") or {})
            and old("metasd.prune_structure", "element") == "element" and not old("metasd.straight_through", False)):
        out.append(f"train.method='prune' with frozen pruned weights (retired: "
                   f"{RETIRED['metasd.straight_through'][1]})")
    return out


#: The range of every numeric option: (what it must be, the test, the options).
RANGES = [
    ("must be >= 1", lambda v: v >= 1, (
        "model.dim", "rgcn.num_layers", "rgcn.num_bases", "train.epochs", "train.batch_size", "negatives.num",
        "valid.every", "metasd.quiz_batch_size", "metasd.meta_every", "eval.max_memory_mb", "eval.num_buckets")),
    ("must be >= 0", lambda v: v >= 0, (
        "train.reg_weight", "train.rp_weight", "plateau.patience", "valid.patience", "train.grad_clip",
        "runtime.num_threads", "rgcn.sample_edges", "budget.batches_per_epoch", "budget.cpu_minutes",
        "negatives.margin", "checkpoint.every", "checkpoint.keep", "prune.gradual_epochs",
        "metasd.kd_weight", "metasd.kd_forward_weight", "metasd.kd_reverse_weight", "metasd.virtual_lr",
        "metasd.student_lr")),
    ("must be > 0", lambda v: v > 0, ("model.init_scale", "train.lr", "metasd.temperature", "metasd.meta_lr")),
    ("must be in [0, 1)", lambda v: 0 <= v < 1, (
        "rgcn.dropout", "rgcn.edge_dropout", "train.label_smoothing", "train.entity_dropout",
        "train.relation_dropout", "prune.rate")),
    ("must be in (0, 1)", lambda v: 0 < v < 1, ("plateau.factor", "metasd.quiz_fraction")),
    # each epoch's generator is seeded with seed * 1_000_003 + epoch + 1; Optuna's sampler takes 32 bits
    ("must be between 0 and 4294967295 (2**32 - 1)", lambda v: 0 <= v < 2 ** 32, ("train.seed",)),
]


def validate(cfg: Config) -> Config:
    """Check choices and ranges; raise ConfigError naming the option.  A section that only one choice
    reads (plateau, negatives, rgcn, prune, metasd) is checked for its ranges and otherwise ignored."""
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}", key)
    finite = [(f"{sec.name}.{f.name}", math.isfinite(getattr(getattr(cfg, sec.name), f.name)), "must be finite")
              for sec in dataclasses.fields(cfg) if sec.name in _sections()
              for f in dataclasses.fields(getattr(cfg, sec.name))
              if isinstance(getattr(getattr(cfg, sec.name), f.name), float)]
    ranges = finite + [(key, test(get(cfg, key)), why) for why, test, keys in RANGES for key in keys]
    m, t, p = cfg.model, cfg.train, cfg.prune
    # The options that combine: each rule says which choice needs which.
    rules = [
        ("train.rp_weight", t.rp_weight == 0 or m.decoder in ("complex", "distmult"),
         "needs model.decoder complex or distmult (relation prediction scores every relation bilinearly)"),
        ("train.regime", t.regime == "1-n" or t.method in ("plain", "prune"),
         f"negative-sampling supports methods plain and prune, not {t.method!r}"),
        ("prune.structure", p.structure == "element" or (m.encoder == "kge" and p.scope == "global"),
         "needs model.encoder=kge and prune.scope=global"),
        ("prune.gradual_epochs", t.method == "plain" or p.gradual_epochs < t.epochs,
         "must be below train.epochs (the student must train at its final rate)"),
        ("train.lr_scheduler", t.lr_scheduler == "none" or cfg.metasd.student == "shared"
         or t.method not in ("kd", "metasd"),
         "plateau schedules the teacher's optimiser only: not combined with metasd.student=own"),
    ]
    for key, ok, why in ranges + rules:
        if not ok:
            raise ConfigError(f"{key}={short(get(cfg, key))} {why}", key)
    return cfg


def get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {short(value)}", key)
    if hint in (int, float):  # an int field takes no float (3.5 steps), a float field any number
        kind, accepted = ("an integer", (int, str)) if hint is int else ("a number", (int, float, str))
        try:
            if isinstance(value, bool) or not isinstance(value, accepted):
                raise ValueError
            return hint(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {kind}, got {short(value)}", key) from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {short(value)}", key)
        return str(value)
    if hint is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {short(value)}", key)
        return tuple(str(v) for v in value)
    return value


def apply_overrides(cfg: Config, overrides: dict[str, Any], source: str = "override") -> Config:
    """Apply ``{"train.lr": 0.1, "model": {"dim": 8}}``-style overrides in place."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and (prefix == "" or prefix.count(".") == 0 and prefix in _sections()):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = node

    walk("", overrides)
    hints_root = typing.get_type_hints(Config)
    for key, value in flat.items():
        parts = key.split(".")
        if len(parts) == 1:
            if parts[0] not in hints_root or parts[0] in _sections():
                raise _unknown(key, source)
            setattr(cfg, parts[0], _coerce(value, hints_root[parts[0]], key))
            continue
        if len(parts) != 2 or parts[0] not in _sections():
            raise _unknown(key, source)
        section = getattr(cfg, parts[0])
        hints = typing.get_type_hints(type(section))
        if parts[1] not in hints:
            raise _unknown(key, source)
        setattr(section, parts[1], _coerce(value, hints[parts[1]], key))
    return cfg


def _unknown(key: str, source: str) -> ConfigError:
    """An option that does not exist: an earlier version's says what replaced it."""
    return ConfigError(f"{source}: {retired_hint(key) or f'unknown option {key!r}'}", key)


def _sections() -> tuple[str, ...]:
    """Names of the nested sections of ``Config`` (data, model, train, ...)."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def with_defaults(d: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict (e.g. a checkpoint's) in today's names, every option it predates at its default."""
    defaults, d = to_dict(Config()), upgrade(d)
    return {sec: {**defaults[sec], **v} if isinstance(v, dict) and isinstance(defaults.get(sec), dict) else v
            for sec, v in {**defaults, **d}.items()}


def from_dict(d: dict[str, Any], source: str = "config") -> Config:
    """A stored config (a checkpoint's) as a validated ``Config``, read through ``upgrade``."""
    return validate(apply_overrides(Config(), upgrade(d), source))


def load_config(*paths: str | Path, overrides: Optional[dict[str, Any]] = None) -> Config:
    """Defaults, then each YAML file in order, then ``overrides``; validated.  An error about an option
    names the file and line that set it."""
    from metasd_dgl.store.atomic import MAX_TEXT_FILE_BYTES, check_input_file

    cfg = Config()
    origins: dict[str, str] = {}  # option -> where it was last set
    for path in paths:
        path = Path(path)
        try:
            if path.exists():  # a FIFO or device would block or fill memory
                check_input_file(path, "config file", MAX_TEXT_FILE_BYTES)
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        data = load_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of options")
        lines = option_lines(text)
        keys = _flat_keys(data)
        twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if twice is not None:  # "metasd.kd_weight: 1" and "metasd: {kd_weight: 2}" in one file
            raise ConfigError(f"{path}: line {lines.get(twice, '?')}: {twice} is set twice "
                              f"(the first would be silently dropped)")
        origins.update({key: f"{path}: line {line}" for key, line in lines.items()})
        with _located(origins, str(path)):
            apply_overrides(cfg, data, str(path))
    if overrides:
        for key in _flat_keys(overrides):  # set on the command line: its error names it already
            origins.pop(key, None)
        apply_overrides(cfg, overrides)
    if not cfg.data.processed_dir:  # a processed folder as the dataset: used in place, found again by its path
        from metasd_dgl.data.registry import processed_folder

        folder = processed_folder(cfg.data.dataset)
        if folder is not None:
            cfg.data.processed_dir = str(folder)
    if not cfg.run_dir:
        cfg.run_dir = default_run_dir(cfg)
    with _located(origins):
        return validate(cfg)


def option_lines(text: str) -> dict[str, int]:
    """``{"section.option": 1-based line}`` of the options a YAML config text sets."""
    out: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            if isinstance(v, yaml.MappingNode) and not prefix:
                walk(v, key + ".")
            else:
                out[key] = k.start_mark.line + 1

    walk(yaml.compose(text), "")
    return out


def _flat_keys(overrides: dict[str, Any]) -> list[str]:
    """``{"train.lr": .., "model": {"dim": ..}}`` -> ``["train.lr", "model.dim"]``."""
    return [f"{k}.{sub}" if isinstance(v, dict) else k for k, v in overrides.items()
            for sub in (v if isinstance(v, dict) else [None])]


@contextlib.contextmanager
def _located(origins: dict[str, str], source: str = ""):
    """A ConfigError about an option is told where that option was set ("file: line N: ...")."""
    try:
        yield
    except ConfigError as exc:
        where = origins.get(exc.key or "")
        if where is None:
            raise
        text = str(exc)
        if source and text.startswith(f"{source}: "):
            text = text[len(source) + 2:]
        raise ConfigError(f"{where}: {text}", exc.key) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` that refuses a key set twice in one mapping (YAML would keep the last):
    a ConfigError naming ``source`` and the line, for that and for YAML that does not parse."""
    try:
        return _safe_load_unique(text)
    except _TooLarge as exc:
        raise ConfigError(f"{source}: line {exc.line}: {exc.what}; write the values out") from None
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: line {exc.line}: {exc.key!r} is set twice "
                          f"(the first would be silently dropped)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where}: invalid YAML") from None


def _safe_load_unique(text: str) -> Any:
    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor": merged keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep)

    loader = UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


#: Limits on a YAML document as its aliases expand it (a config has about a hundred values).
MAX_YAML_NODES, MAX_YAML_CHARS = 10_000, 1 << 20


class _TooLarge(yaml.YAMLError):
    def __init__(self, what: str, line: int) -> None:
        super().__init__(what)
        self.what, self.line = what, line


def _check_expanded_size(root) -> None:
    """Refuse a document whose aliases (``*name``) expand it beyond MAX_YAML_NODES values or
    MAX_YAML_CHARS characters, or refer to themselves; counted on the node graph (each node once),
    so an "alias bomb" is refused before anything is expanded."""
    sizes: dict[int, tuple[int, int]] = {}
    busy: set[int] = set()

    def size(node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise _TooLarge("an alias refers to the value that contains it", node.start_mark.line + 1)
        busy.add(key)
        nodes, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        for child in children:
            n, c = size(child)
            nodes, chars = nodes + n, chars + c
            if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
                raise _TooLarge(f"its aliases expand it beyond {MAX_YAML_NODES} values or {MAX_YAML_CHARS >> 20} MiB",
                                child.start_mark.line + 1)
        busy.discard(key)
        sizes[key] = (nodes, chars)
        return nodes, chars

    size(root)


#: Options a resumed run may not change (they change shapes or the meaning of the state).
FIXED_ON_RESUME = ("model", "rgcn.num_layers", "rgcn.num_bases", "rgcn.decomposition", "train.method",
                   "train.regime", "train.optimizer", "train.seed", "train.batch_size", "train.lr_scheduler",
                   "prune", "metasd.meta_optimizer", "metasd.quiz_fraction", "metasd.student")


def resume_differences(old: dict, new: dict) -> list[str]:
    """``["model.dim: 8 (checkpoint) vs 16 (now)", ...]`` over FIXED_ON_RESUME (an option the
    checkpoint predates counts with its default), and any retired option the checkpoint's run used."""
    out, old = [f"{s} (checkpoint)" for s in retired_settings(old)], with_defaults(old)
    for key in FIXED_ON_RESUME:
        section, _, name = key.partition(".")
        a, b = old.get(section, {}), new.get(section, {})
        pairs = [(name, a.get(name), b.get(name))] if name else [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))]
        out += [f"{section}.{k}: {x!r} (checkpoint) vs {y!r} (now)" for k, x, y in pairs if x != y]
    return out


def dataset_label(dataset: str) -> str:
    """``"umls" -> "umls"``, ``"data/FB15k-237.tar.gz" -> "FB15k-237"``, ``"my/kg/" -> "kg"``: a folder-safe name."""
    name = Path(str(dataset).rstrip("/\\")).name or str(dataset)
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "dataset"


def default_run_dir(cfg: Config) -> str:
    """``runs/<dataset>-<decoder>-<method>`` (``-rgcn`` added for the R-GCN encoder), or the first of
    its siblings ``-2``, ``-3``, ... that is free or holds a run of this very config: re-running a
    command finds its run, and composing other configs never lands in another experiment's folder."""
    encoder = "-rgcn" if cfg.model.encoder == "rgcn" else ""
    base = f"runs/{dataset_label(cfg.data.dataset)}{encoder}-{cfg.model.decoder}-{cfg.train.method}"
    mine = {k: v for k, v in to_dict(cfg).items() if k != "run_dir"}
    for k in range(1, 1000):
        path = base if k == 1 else f"{base}-{k}"
        stored = Path(path) / "config.yaml"
        if not stored.is_file():
            return path
        try:
            theirs = with_defaults(yaml.safe_load(stored.read_text(encoding="utf-8")) or {})
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, TypeError):
            continue  # not a run of this config
        theirs.pop("run_dir", None)
        if theirs == mine:
            return path
    return base


def save_config(cfg: Config, path: str | Path) -> None:
    """``config.yaml``, written atomically (a full disk is named, the previous file kept)."""
    from metasd_dgl.store.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def options_markdown() -> str:
    """``docs/config.md``: every option with its type or choices, its range, its default and the meaning
    given by its trailing ``#`` comment, one table per section (the section's docstring above it), then
    the options of earlier versions.  Read from this module's source; ``tests/test_config.py`` keeps the
    page equal to it."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    def meanings(cls: type) -> tuple[str, dict[str, str]]:
        """(the class's docstring, {field: its trailing comment})."""
        source = textwrap.dedent(inspect.getsource(cls))
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        node = ast.parse(source).body[0]
        fields = {stmt.target.id: comments.get(stmt.end_lineno, "") for stmt in node.body
                  if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}
        return ast.get_docstring(node) or "", fields

    def shown(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return f"`{value}`" if value else '`""`'
        return f"`{value}`"

    def kind(hint: Any) -> str:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args else hint
        name = getattr(base, "__name__", str(base))
        return f"{name} or null" if args else name

    ranges = {key: why.removeprefix("must be ") for why, _, keys in RANGES for key in keys}
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731 - a table cell
    out = ["# Configuration options", "",
           "Generated from `metasd_dgl/config.py` by `metasd_dgl.config.options_markdown()`; "
           "`tests/test_config.py` fails when this page differs from it.", "",
           "Set an option in a YAML file (`section:` then `option: value`, or `section.option: value`) passed to "
           "`metasd-dgl pipeline CONFIG` or `metasd-dgl train --config FILE`, or on the command line with "
           "`--set section.option=value`; files apply in order, then `--set`. An unknown option, a value of the "
           "wrong type or out of range, and a combination that cannot run are one `error:` line naming the "
           "option and the file and line that set it.", ""]
    doc, top = meanings(Config)
    hints = typing.get_type_hints(Config)
    sections = _sections()
    defaults = Config()
    for f in dataclasses.fields(Config):
        if f.name in sections:
            continue
        out += [f"## `{f.name}`", "", "| option | type | default | meaning |", "|---|---|---|---|",
                f"| `{f.name}` | {kind(hints[f.name])} | {shown(getattr(defaults, f.name))} | {cell(top[f.name])} |", ""]
    for name in sections:
        section = getattr(defaults, name)
        doc, fields = meanings(type(section))
        section_hints = typing.get_type_hints(type(section))
        out += [f"## `{name}`", ""]
        if doc:
            out += [" ".join(doc.replace("``", "`").split("\n\n")[0].split()), ""]
            out += [" ".join(p.replace("``", "`").split()) + "\n" for p in doc.split("\n\n")[1:]]
        out += ["| option | type | allowed | default | meaning |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(section):
            key = f"{name}.{f.name}"
            allowed = ", ".join(f"`{c}`" for c in CHOICES[key]) if key in CHOICES else ranges.get(key, "")
            out.append(f"| `{key}` | {kind(section_hints[f.name])} | {cell(allowed)} | "
                       f"{shown(getattr(section, f.name))} | {cell(fields.get(f.name, ''))} |")
        out.append("")
    out += ["## Options of earlier versions", "",
            "A config file or `--set` naming one of these is an error saying what to use instead; a run folder "
            "that stored them is read with today's names.", "",
            "| earlier name | today's option |", "|---|---|"]
    out += [f"| `{old}` | `{new}` |" for old, new in MOVED.items()]
    out += ["", "Options that no longer exist, each with its one behaviour now:", "",
            "| option | now always | why |", "|---|---|---|"]
    out += [f"| `{old}` | {shown(list(value) if isinstance(value, tuple) else value)} | {cell(why)} |"
            for old, (value, why) in RETIRED.items()]
    return "\n".join(out).rstrip("\n") + "\n"
