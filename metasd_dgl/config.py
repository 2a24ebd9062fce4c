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
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UserError


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
    encoder: str = "kge"  # kge | rgcn
    decoder: str = "complex"  # complex | distmult | rotate | transe
    dim: int = 100  # embedding dimension (complex numbers for complex/rotate)
    init_scale: float = 1e-3  # std of the normal initialisation (kge)
    # R-GCN encoder
    num_layers: int = 2
    num_bases: int = 4
    regularizer: str = "basis"  # basis | bdd
    dropout: float = 0.2
    self_loop: bool = True


@dataclass
class TrainConfig:
    method: str = "plain"  # plain | prune | kd | metasd
    regime: str = "1-n"  # 1-n (all entities, softmax CE) | negative-sampling
    epochs: int = 50
    batch_size: int = 1000
    optimizer: str = "adagrad"  # adagrad | adam
    lr: float = 0.1
    lr_scheduler: str = "none"  # none | plateau (ReduceLROnPlateau on the selection MRR, mode max)
    lr_factor: float = 0.5  # plateau: multiply lr by this after lr_patience validations without gain
    lr_patience: int = 2  # plateau: validations without improvement before the lr drops
    regularizer: str = "dura"  # dura | n3 | none
    reg_weight: float = 0.05
    label_smoothing: float = 0.0
    rp_weight: float = 0.0  # relation prediction: weight of CE over all relations given (h, t) (0 = off; complex, distmult)
    entity_dropout: float = 0.0  # dropout on the entity rows in training steps (never in evaluation)
    relation_dropout: float = 0.0  # dropout on the relation rows in training steps
    num_negatives: int = 32  # negative-sampling regime: corruptions per positive
    margin: float = 9.0  # negative-sampling regime: gamma of distance models
    edge_dropout: float = 0.5  # rgcn: share of training edges hidden from message passing
    batches_per_epoch: int = 0  # cap on batches per epoch, a random part of it (0 = the whole epoch)
    cpu_minutes: float = 0.0  # stop once training steps used this much process CPU time, all threads (0 = off)
    sample_edges: int = 0  # rgcn + negative-sampling: message edges sampled per batch (0 = all)
    grad_clip: float = 0.0  # 0 = off
    loss_backend: str = "fused"  # fused (closed-form score gradients) | autograd (the reference losses)
    tune_malloc: bool = True  # keep large temporaries mapped (glibc mallopt), faster 1-N steps
    seed: int = 0
    init_from: str = ""  # a checkpoint whose model weights start this run (e.g. post-hoc prune + fine-tune)
    device: str = "cpu"
    num_threads: int = 0  # CPU threads for torch (0 = torch's default)
    valid_every: int = 5  # epochs between validations
    patience: int = 5  # validations without improvement before stopping (0 = off)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = epoch ends only)
    keep_checkpoints: int = 2  # newest epoch checkpoints kept besides last and best
    tracker: str = "none"  # none | tensorboard (scalars in <run_dir>/tensorboard)


@dataclass
class MetaSDConfig:
    prune_rate: float = 0.9  # share of prunable weights zeroed in the student
    prune_scope: str = "global"  # global | per-tensor
    prune_structure: str = "element"  # element | dimension (whole coordinates, aligned across tables; kge)
    temperature: float = 3.0
    kd_weight: float = 1.0  # weight of distillation next to cross-entropy
    kd_forward_weight: float = 3.0  # KL(teacher || student)
    kd_reverse_weight: float = 1.0  # KL(student || teacher)
    meta_lr: float = 1e-4
    meta_optimizer: str = "adam"  # adam | adagrad | sgd
    virtual_lr: float = 0.1  # SGD step of the virtual student
    quiz_fraction: float = 0.02  # held-out slice of train for the meta step
    quiz_batch_size: int = 1000
    meta_every: int = 1  # run the meta step every k batches
    extra_teacher_step: bool = False  # reference code: plain teacher step first
    meta_grad_path: str = "kd"  # kd: through the teacher's predictions only (reference, MetaDistil) | full: also W*M
    share_forward: bool = False  # approximate: real step reuses the pre-meta forward (faster)
    kd_t2_scale: bool = False  # scale KD by T^2 (the reference code does not; off = reference)
    student_owns_kept: bool = False  # real step: the teacher's loss skips the weights the student keeps
    student: str = "shared"  # shared: the teacher's weights under the mask (the paper) | own: its own weights
    student_lr: float = 0.0  # student=own: lr of the student's optimiser (0 = train.lr)
    one_way_kd: bool = False  # real step: the teacher does not learn from the student (no KD(S -> T))
    real_kd_weighting: str = "source"  # source: fw KL(source||learner) + rw KL(learner||source) | self: swapped
    warmup_epochs: int = 0  # plain teacher epochs before the student's losses and the meta step start
    gradual_epochs: int = 0  # prune rate raised from 0 to prune_rate over these epochs (cubic; 0 = at once)
    straight_through: bool = False  # prune: pruned weights keep the student's gradient, so the mask can change
    mask_epochs: int = 0  # the mask is recomputed in the first k student epochs, then kept (0 = every epoch)
    mask_source: str = "teacher"  # student=own: the mask from the teacher's magnitudes | student: its own (owns all)


@dataclass
class EvalConfig:
    batch_size: int = 0  # queries per chunk; 0 = derive from max_memory_mb
    max_memory_mb: int = 512  # cap on the (chunk x entities) score matrix
    num_buckets: int = 3  # long-tail buckets by relation frequency / entity degree
    splits: tuple = ("valid", "test")


@dataclass
class Config:
    run_dir: str = ""  # "" = runs/<dataset>-<decoder>-<method> (default_run_dir), so datasets never collide
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metasd: MetaSDConfig = field(default_factory=MetaSDConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.encoder": ("kge", "rgcn"),
    "model.decoder": ("complex", "distmult", "rotate", "transe"),
    "model.regularizer": ("basis", "bdd"),
    "train.method": ("plain", "prune", "kd", "metasd"),
    "train.regime": ("1-n", "negative-sampling"),
    "train.optimizer": ("adagrad", "adam"),
    "train.lr_scheduler": ("none", "plateau"),
    "train.regularizer": ("dura", "n3", "none"),
    "train.loss_backend": ("fused", "autograd"),
    "train.tracker": ("none", "tensorboard"),
    "metasd.prune_scope": ("global", "per-tensor"),
    "metasd.prune_structure": ("element", "dimension"),
    "metasd.meta_optimizer": ("adam", "adagrad", "sgd"),
    "metasd.meta_grad_path": ("full", "kd"),
    "metasd.student": ("shared", "own"),
    "metasd.mask_source": ("teacher", "student"),
    "metasd.real_kd_weighting": ("source", "self"),
    "data.format": ("auto", "tsv", "raw_udd_hrt", "udd_hrt"),
}


def validate(cfg: Config) -> Config:
    """Check choices and ranges; raise ConfigError naming the option."""
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}", key)
    checks = [
        ("model.dim", cfg.model.dim >= 1, "must be >= 1"),
        ("model.num_layers", cfg.model.num_layers >= 1, "must be >= 1"),
        ("model.num_bases", cfg.model.num_bases >= 1, "must be >= 1"),
        ("model.dropout", 0 <= cfg.model.dropout < 1, "must be in [0, 1)"),
        ("model.init_scale", cfg.model.init_scale > 0, "must be > 0"),
        ("train.epochs", cfg.train.epochs >= 1, "must be >= 1"),
        ("train.batch_size", cfg.train.batch_size >= 1, "must be >= 1"),
        ("train.lr", cfg.train.lr > 0, "must be > 0"),
        ("train.reg_weight", cfg.train.reg_weight >= 0, "must be >= 0"),
        ("train.num_negatives", cfg.train.num_negatives >= 1, "must be >= 1"),
        ("train.edge_dropout", 0 <= cfg.train.edge_dropout < 1, "must be in [0, 1)"),
        ("train.label_smoothing", 0 <= cfg.train.label_smoothing < 1, "must be in [0, 1)"),
        ("train.rp_weight", cfg.train.rp_weight >= 0, "must be >= 0"),
        ("train.rp_weight", cfg.train.rp_weight == 0 or cfg.model.decoder in ("complex", "distmult"),
         "needs model.decoder complex or distmult (relation prediction scores every relation bilinearly)"),
        ("train.entity_dropout", 0 <= cfg.train.entity_dropout < 1, "must be in [0, 1)"),
        ("train.relation_dropout", 0 <= cfg.train.relation_dropout < 1, "must be in [0, 1)"),
        ("train.lr_factor", 0 < cfg.train.lr_factor < 1, "must be in (0, 1)"),
        ("train.lr_patience", cfg.train.lr_patience >= 0, "must be >= 0"),
        ("train.valid_every", cfg.train.valid_every >= 1, "must be >= 1"),
        ("train.patience", cfg.train.patience >= 0, "must be >= 0"),
        ("train.grad_clip", cfg.train.grad_clip >= 0, "must be >= 0"),
        ("train.num_threads", cfg.train.num_threads >= 0, "must be >= 0"),
        ("metasd.prune_rate", 0 <= cfg.metasd.prune_rate < 1, "must be in [0, 1)"),
        ("metasd.temperature", cfg.metasd.temperature > 0, "must be > 0"),
        ("metasd.quiz_fraction", 0 < cfg.metasd.quiz_fraction < 1, "must be in (0, 1)"),
        ("metasd.quiz_batch_size", cfg.metasd.quiz_batch_size >= 1, "must be >= 1"),
        ("metasd.meta_every", cfg.metasd.meta_every >= 1, "must be >= 1"),
        ("metasd.student_lr", cfg.metasd.student_lr >= 0, "must be >= 0"),
        ("metasd.warmup_epochs", cfg.metasd.warmup_epochs >= 0, "must be >= 0"),
        ("metasd.gradual_epochs", cfg.metasd.gradual_epochs >= 0, "must be >= 0"),
        ("metasd.mask_epochs", cfg.metasd.mask_epochs >= 0, "must be >= 0"),
        ("metasd.mask_epochs", cfg.metasd.mask_epochs == 0 or cfg.metasd.mask_epochs > cfg.metasd.gradual_epochs,
         "must exceed metasd.gradual_epochs (the mask is kept only at the final prune rate)"),
        ("metasd.gradual_epochs", cfg.metasd.warmup_epochs + cfg.metasd.gradual_epochs < cfg.train.epochs,
         "plus metasd.warmup_epochs must be below train.epochs (the student must train at its final rate)"),
        ("train.lr_scheduler", cfg.train.lr_scheduler == "none" or cfg.metasd.student == "shared",
         "plateau schedules the teacher's optimiser only: not combined with metasd.student=own"),
        ("metasd.straight_through", not cfg.metasd.straight_through or cfg.train.method == "prune",
         "is an option of method prune"),
        ("metasd.student", cfg.metasd.student == "shared" or cfg.train.method in ("kd", "metasd"),
         "own needs method kd or metasd"),
        ("metasd.student", cfg.metasd.student == "shared" or not (
            cfg.metasd.share_forward or cfg.metasd.student_owns_kept),
         "own is not combined with metasd.share_forward or metasd.student_owns_kept"),
        ("metasd.real_kd_weighting", cfg.metasd.real_kd_weighting == "source" or not cfg.metasd.share_forward,
         "self is not combined with metasd.share_forward (its real step reuses the virtual step's KD)"),
        ("metasd.warmup_epochs", cfg.metasd.warmup_epochs == 0 or cfg.train.regime == "1-n",
         "needs train.regime=1-n"),
        ("eval.max_memory_mb", cfg.eval.max_memory_mb >= 1, "must be >= 1"),
        ("eval.num_buckets", cfg.eval.num_buckets >= 1, "must be >= 1"),
    ]
    checks.append(("train.regime", cfg.train.regime == "1-n" or cfg.train.method in ("plain", "prune"),
                   f"negative-sampling supports methods plain and prune, not {cfg.train.method!r}"))
    checks.append(("train.sample_edges", cfg.train.sample_edges >= 0, "must be >= 0"))
    checks.append(("train.batches_per_epoch", cfg.train.batches_per_epoch >= 0, "must be >= 0"))
    checks.append(("train.cpu_minutes", cfg.train.cpu_minutes >= 0, "must be >= 0"))
    checks.append(("metasd.prune_structure", cfg.metasd.prune_structure == "element" or (
        cfg.model.encoder == "kge" and cfg.metasd.prune_scope == "global"),
        "needs model.encoder=kge and metasd.prune_scope=global"))
    # Options that would be silently ignored by the chosen method or student.
    student_method = cfg.train.method in ("prune", "kd", "metasd")
    checks += [(f"metasd.{name}", not getattr(cfg.metasd, name) or student_method,
                f"has no effect with train.method={cfg.train.method!r} (needs prune, kd or metasd)")
               for name in ("warmup_epochs", "gradual_epochs", "mask_epochs")]
    checks += [("metasd.one_way_kd", not cfg.metasd.one_way_kd or cfg.train.method in ("kd", "metasd"),
                "has no effect without distillation (train.method kd or metasd)"),
               ("metasd.student_lr", not cfg.metasd.student_lr or cfg.metasd.student == "own",
                "is the own student's lr: it needs metasd.student=own"),
               ("metasd.mask_source", cfg.metasd.mask_source == "teacher" or cfg.metasd.student == "own",
                "chooses between the teacher's and the own student's magnitudes: it needs metasd.student=own")]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key}={get(cfg, key)!r} {why}", key)
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
        raise ConfigError(f"{key}: expected true/false, got {value!r}", key)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}", key)
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}", key) from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected a number, got {value!r}", key)
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}", key) from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}", key)
        return str(value)
    if hint is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key)
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
                raise ConfigError(f"{source}: unknown option {key!r}")
            setattr(cfg, parts[0], _coerce(value, hints_root[parts[0]], key))
            continue
        if len(parts) != 2 or parts[0] not in _sections():
            raise ConfigError(f"{source}: unknown option {key!r}")
        section = getattr(cfg, parts[0])
        hints = typing.get_type_hints(type(section))
        if parts[1] not in hints:
            raise ConfigError(f"{source}: unknown option {key!r}")
        setattr(section, parts[1], _coerce(value, hints[parts[1]], key))
    return cfg


def _sections() -> tuple[str, ...]:
    """Names of the nested sections of ``Config`` (data, model, train, ...)."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING)


def to_dict(cfg: Config) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["eval"]["splits"] = list(d["eval"]["splits"])
    return d


def with_defaults(d: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict (e.g. a checkpoint's) with every option it predates at its default."""
    defaults = to_dict(Config())
    return {sec: {**defaults[sec], **v} if isinstance(v, dict) and isinstance(defaults.get(sec), dict) else v
            for sec, v in {**defaults, **d}.items()}


def from_dict(d: dict[str, Any], source: str = "config") -> Config:
    return validate(apply_overrides(Config(), d, source))


def load_config(*paths: str | Path, overrides: Optional[dict[str, Any]] = None) -> Config:
    """Defaults, then each YAML file in order, then ``overrides``; validated.  An error about an option
    names the file and line that set it."""
    cfg = Config()
    origins: dict[str, str] = {}  # option -> where it was last set
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where} invalid YAML") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of options")
        lines = option_lines(text)
        origins.update({key: f"{path}: line {line}" for key, line in lines.items()})
        with _located(origins):
            apply_overrides(cfg, data, str(path))
    if overrides:
        for key in _flat_keys(overrides):  # set on the command line: its error names it already
            origins.pop(key, None)
        apply_overrides(cfg, overrides)
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
def _located(origins: dict[str, str]):
    """A ConfigError about an option is told where that option was set ("file: line N: ...")."""
    try:
        yield
    except ConfigError as exc:
        where = origins.get(exc.key or "")
        if where is None:
            raise
        raise ConfigError(f"{where}: {exc}", exc.key) from None


def dataset_label(dataset: str) -> str:
    """``"umls" -> "umls"``, ``"data/FB15k-237.tar.gz" -> "FB15k-237"``, ``"my/kg/" -> "kg"``: a folder-safe name."""
    name = Path(str(dataset).rstrip("/\\")).name or str(dataset)
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "dataset"


def default_run_dir(cfg: Config) -> str:
    """``runs/<dataset>-<decoder>-<method>`` (``-rgcn`` added for the R-GCN encoder)."""
    encoder = "-rgcn" if cfg.model.encoder == "rgcn" else ""
    return f"runs/{dataset_label(cfg.data.dataset)}{encoder}-{cfg.model.decoder}-{cfg.train.method}"


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
