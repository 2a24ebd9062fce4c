"""Command line: ``metasd-dgl preprocess | train | evaluate | export | pipeline | tune``.

Only this module (and ``metasd_dgl.stages``) reads configuration; the library
takes typed arguments.  User errors print one line and exit 2; internal errors
exit 1 (tracebacks only with ``--debug``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from metasd_dgl.errors import UserError
from metasd_dgl.runtime.process import configure_environment

if TYPE_CHECKING:
    from metasd_dgl.config import Config


def _overrides(options: dict[str, Any], sets: tuple[str, ...]) -> dict[str, Any]:
    out = {k.replace("__", "."): v for k, v in options.items() if v is not None}
    for item in sets:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


class _OptionChoice(click.Choice):
    """``click.Choice`` of a config option's ``config.CHOICES``, read when first needed: the config
    module loads torch (its choices come from the registries), which must wait for ``main``'s
    ``runtime.configure_environment``."""

    def __init__(self, key: str) -> None:  # noqa: D107 (no super().__init__: ``choices`` is a property)
        self.key, self.case_sensitive = key, False

    @property
    def choices(self):  # type: ignore[override]
        from metasd_dgl.config import CHOICES

        return CHOICES[self.key]


def _choice(key: str) -> click.Choice:
    return _OptionChoice(key)


#: How every command that trains (train, pipeline, tune) chooses its dataset: the same options, mapped
#: to the ``data.*`` overrides (``data_options``); a hint may name them for any of these commands.
DATA_OPTIONS = [
    click.option("--dataset", "data__dataset", help="Built-in name, folder or .tar.gz (data.dataset)."),
    click.option("--data-dir", "data__data_dir", type=click.Path(file_okay=False),
                 help="Folder with the published archives (data.data_dir; env METASD_DATA_DIR)."),
    click.option("--format", "data__format", type=_choice("data.format"),
                 help="How to read a folder (data.format; default auto)."),
]


def data_options(fn):
    for opt in reversed(DATA_OPTIONS):
        fn = opt(fn)
    return fn


TRAIN_OPTIONS = [
    click.option("--config", "configs", multiple=True, type=click.Path(dir_okay=False),
                 help="YAML override file(s), applied in order."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override any option, e.g. --set train.lr=0.05."),
    click.option("--run-dir", "run_dir", type=click.Path(file_okay=False), help="Output folder."),
    click.option("--encoder", "model__encoder", type=_choice("model.encoder")),
    click.option("--decoder", "model__decoder", type=_choice("model.decoder")),
    click.option("--dim", "model__dim", type=int),
    click.option("--method", "train__method", type=_choice("train.method")),
    click.option("--regime", "train__regime", type=_choice("train.regime")),
    click.option("--epochs", "train__epochs", type=int),
    click.option("--batch-size", "train__batch_size", type=int),
    click.option("--lr", "train__lr", type=float),
    click.option("--prune-rate", "prune__rate", type=float),
    click.option("--num-bases", "rgcn__num_bases", type=int),
    click.option("--decomposition", "--regularizer", "rgcn__decomposition", type=_choice("rgcn.decomposition"),
                 help="R-GCN weight sharing (--regularizer: its earlier name)."),
    click.option("--seed", "train__seed", type=int),
    click.option("--device", "runtime__device", help="cpu, cuda or cuda:N."),
    click.option("--tracker", "runtime__tracker", type=_choice("runtime.tracker"),
                 help="Also log scalars to an experiment tracker (tensorboard: RUN_DIR/tensorboard)."),
]

OUTPUT_OPTIONS = [
    click.option("--quiet", is_flag=True, help="Print only errors and the final summary."),
    click.option("--json", "as_json", is_flag=True,
                 help="Print the metrics records as JSON lines (for scripts) instead of readable lines."),
    click.option("--force", is_flag=True, help="Rebuild RUN_DIR/data even if it holds another processed dataset."),
]


def output_options(fn):
    for opt in reversed(OUTPUT_OPTIONS):
        fn = opt(fn)
    return fn


def make_console(run_dir: str, quiet: bool, as_json: bool):
    """The console of a training command: readable, quiet or JSON; logged to RUN_DIR/train.log."""
    from metasd_dgl.console import Console

    if quiet and as_json:
        raise click.UsageError("--quiet and --json exclude each other")
    return Console("json" if as_json else "quiet" if quiet else "normal", Path(run_dir) / "train.log")


def train_options(fn):
    for opt in reversed(TRAIN_OPTIONS):
        fn = opt(fn)
    return data_options(fn)


def resolve(configs: tuple[str, ...], sets: tuple[str, ...], **options: Any) -> "Config":
    from metasd_dgl.config import load_config

    return load_config(*configs, overrides=_overrides(options, sets))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="metasd-dgl")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Knowledge-graph completion on DGL, compressed with MetaSD."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Processed folder to write.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with published archives.")
@click.option("--format", "fmt", type=_choice("data.format"), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if the folder is current.")
def preprocess(source: str, out: str, data_dir: Optional[str], fmt: str, force: bool) -> None:
    """Raw triples (built-in name, folder, .tar.gz, DGL-KE layout) -> processed folder."""
    from metasd_dgl.data.preprocess import load_processed
    from metasd_dgl.data.preprocess import preprocess as run

    path = run(source, Path(out), Path(data_dir) if data_dir else None, fmt, force=force)
    kg = load_processed(path)
    m = kg.manifest
    click.echo(f"{path}: {kg.num_entities} entities, {kg.num_relations} relations, "
               f"train/valid/test {len(kg.train)}/{len(kg.valid)}/{len(kg.test)}")
    if m.get("duplicates"):
        click.echo(f"duplicates: {m['duplicates']}")
    from metasd_dgl.evaluate.unseen import manifest_line

    click.echo(manifest_line(m))


@cli.command()
@train_options
@click.option("--resume", type=click.Path(file_okay=False, exists=True), help="Continue the run in this folder.")
@output_options
def train(configs, sets, resume: Optional[str], quiet: bool, as_json: bool, force: bool, **options) -> None:
    """Train a model (dense or MetaSD) into a run folder (default runs/<dataset>-<decoder>-<method>)."""
    from metasd_dgl.data.fingerprint import check_run_dataset
    from metasd_dgl.stages import processed_dir, stage_preprocess, stage_train

    from metasd_dgl.config import load_config
    from metasd_dgl.runtime.device import resolve_device
    from metasd_dgl.runtime.distributed import barrier, init_from_env

    if resume:
        cfg = load_config(Path(resume) / "config.yaml", *configs, overrides=_overrides(options, sets))
        cfg.run_dir = resume
    else:
        cfg = resolve(configs, sets, **options)
    check_run_dataset(cfg.run_dir, cfg.data.dataset, cfg.data.format, processed_dir(cfg))  # before any write
    console = make_console(cfg.run_dir, quiet, as_json)
    if not resume:
        # Under torchrun, rank 0 preprocesses while the others wait.
        info = init_from_env(resolve_device(cfg.runtime.device))
        if info.is_main:
            stage_preprocess(cfg, force=force)
        barrier()
    stage_train(cfg, resume=bool(resume), console=console, echo=console.result)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--checkpoint", default="best", show_default=True, help="best, last, or a checkpoint path.")
@click.option("--compact", type=click.Path(),
              help="Score the student from a student file of export (export/student.safetensors, ...).")
@click.option("--triple-classification", is_flag=True,
              help="Also score valid/test triples against filtered DGL-sampled negatives (ROC-AUC, AP, accuracy).")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write PNGs into RUN_DIR/plots.")
@click.option("--protocol", type=click.Choice(["true", "reference"]), default="true", show_default=True,
              help="reference: also score the student as the reference code did (query side masked at rate 0.8, "
                   "candidate entity table dense), next to the true student and the teacher.")
@click.option("--from-file", "from_file", type=click.Path(),
              help="Score the teacher or student row from a model file of export (export/teacher.int8.safetensors, "
                   "...), dequantised, instead of the checkpoint.")
@click.option("--teacher-fallback", is_flag=True,
              help="If the teacher's own best checkpoint (best-teacher.pt) is missing or damaged, score the "
                   "teacher from the student's best.pt instead of stopping.")
def evaluate(run_dir: str, split: str, checkpoint: str, compact: Optional[str],
             triple_classification: bool, plots: bool, protocol: str, from_file: Optional[str],
             teacher_fallback: bool = False) -> None:
    """Exact filtered ranking of teacher and true student (each from its own best epoch), overall and per bucket."""
    from metasd_dgl.stages import stage_evaluate

    stage_evaluate(Path(run_dir), split, checkpoint, Path(compact) if compact else None, echo=click.echo,
                   protocol=protocol, from_file=Path(from_file) if from_file else None,
                   teacher_fallback=teacher_fallback)
    click.echo(f"metrics: {Path(run_dir) / 'eval' / (split + '.json')}")
    if triple_classification:
        from metasd_dgl.tools.commands import classification_lines, classify_run

        for line in classification_lines(classify_run(Path(run_dir), checkpoint, 1, 0)):
            click.echo(line)
    if plots:
        from metasd_dgl.tools.plots import make_plots

        for png in make_plots(Path(run_dir), split=split):
            click.echo(f"plot: {png}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--checkpoint", default="best", show_default=True)
@click.option("--quantize", multiple=True, type=click.Choice(["fp32", "fp16", "int8", "int4"]),
              help="Also write export/teacher.<Q>.safetensors and export/student.<Q>.safetensors (per-row int8/int4, "
                   "or fp16/fp32; the student as kept columns or kept values); repeatable.")
def export(run_dir: str, checkpoint: str, quantize: tuple[str, ...]) -> None:
    """Write the dense teacher and the compact pruned student (and quantised files); print their sizes."""
    from metasd_dgl.stages import stage_export

    for line in export_lines(stage_export(Path(run_dir), checkpoint, quantize), Path(run_dir)):
        click.echo(line)


def export_lines(info: dict, run_dir: Path) -> list[str]:
    """``stage_export``'s summary as lines: one per figure, then one per written file."""
    return ([f"{k}: {v}" for k, v in info.items() if k != "files"]
            + [f"file: {run_dir / 'export' / name} ({entry['bytes']:,} bytes, sha256 {entry['sha256']})"
               for name, entry in info["files"].items()])


@cli.command()
@click.argument("config_files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any option.")
@data_options
@click.option("--run-dir", "run_dir", type=click.Path(file_okay=False),
              help="Output folder (default runs/<dataset>-<decoder>-<method>).")
@click.option("--device", "runtime__device")
@click.option("--tracker", "runtime__tracker", type=_choice("runtime.tracker"),
              help="Also log scalars to an experiment tracker (tensorboard: RUN_DIR/tensorboard).")
@click.option("--resume", is_flag=True,
              help="Continue the run in RUN_DIR even though this config differs from its own "
                   "(e.g. more epochs); an interrupted run with the same config resumes without it.")
@click.option("--reevaluate", is_flag=True, help="On a finished run, export and evaluate again.")
@output_options
def pipeline(config_files, sets, quiet: bool, as_json: bool, force: bool, resume: bool, reevaluate: bool,
             **options) -> None:
    """Preprocess, train, export and evaluate in one run folder.

    With no CONFIG the embedded default runs: ComplEx + MetaSD on UMLS (offline, about a minute
    on 2 CPU cores).  Re-running it continues an interrupted run; a finished one is not retrained.
    """
    from metasd_dgl.resources import default_config_path
    from metasd_dgl.stages import run_status, stage_evaluate, stage_export, stage_preprocess, stage_train

    files = config_files or (str(default_config_path()),)
    cfg = resolve(files, sets, **options)
    from metasd_dgl.data.fingerprint import check_run_dataset
    from metasd_dgl.stages import processed_dir

    check_run_dataset(cfg.run_dir, cfg.data.dataset, cfg.data.format, processed_dir(cfg))  # before any write
    console = make_console(cfg.run_dir, quiet, as_json)
    run_dir = Path(cfg.run_dir)
    console.line(f"[1/4] preprocess {cfg.data.dataset}")
    stage_preprocess(cfg, force=force)
    console.line(f"[2/4] train {cfg.model.encoder}+{cfg.model.decoder} ({cfg.train.method}) -> {run_dir}")
    status = None if resume else run_status(run_dir, cfg)
    stage_train(cfg, resume=resume and (run_dir / "checkpoints" / "last.pt").exists(), console=console,
                command="pipeline", echo=console.result)
    stored = run_dir / "eval" / "test.json"
    if status is not None and status["finished"] and not reevaluate and stored.is_file():
        import json

        from metasd_dgl.console import named_rows
        from metasd_dgl.evaluate.ranking import format_table

        record = json.loads(stored.read_text(encoding="utf-8"))
        console.result(format_table(named_rows(record["results"], cfg.train.method, record.get("names") or record.get("rows"))))
        console.result(f"metrics: {stored} (stored; pass --reevaluate to export and evaluate again)")
        return
    console.line("[3/4] export")
    for line in export_lines(stage_export(run_dir), run_dir):
        console.line(f"  {line}")
    console.line("[4/4] evaluate (test)")
    stage_evaluate(run_dir, "test", echo=console.result)
    console.result(f"metrics: {stored}")
    from metasd_dgl.tools.plots import make_plots

    for png in make_plots(run_dir, split="test"):
        console.line(f"plot: {png}")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, exists=True))
@click.option("--trials", type=click.IntRange(min=1), required=True, help="Trials to finish (complete or pruned).")
@click.option("--timeout", "timeout_min", type=click.FloatRange(min=0, min_open=True),
              help="Stop starting trials after this many minutes.")
@click.option("--study-dir", type=click.Path(file_okay=False),
              help="Study folder (SQLite study, one run folder per trial); default <run_dir>-tune "
                   "(runs/<dataset>-<decoder>-<method>-tune unless the config sets run_dir).")
@click.option("--space", type=click.Path(dir_okay=False, exists=True),
              help="Search space YAML; default CONFIG with .tune.yaml for .yaml.")
@click.option("--pruner", type=click.Choice(["median", "none"]), default="median", show_default=True,
              help="Stop trials whose validation MRR is below the median of earlier trials at that epoch.")
@click.option("--config", "extra", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="More YAML overrides applied after CONFIG in every trial (e.g. fewer epochs).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any option in every trial (after CONFIG and --config).")
@data_options
@click.option("--device", "runtime__device", help="cpu, cuda or cuda:N.")
@click.option("--resume", is_flag=True, help="Continue the study in --study-dir (killed trials are re-run).")
def tune(config: str, trials: int, timeout_min: Optional[float], study_dir: Optional[str], space: Optional[str],
         pruner: str, extra: tuple[str, ...], sets: tuple[str, ...], resume: bool, **options) -> None:
    """Search hyper-parameters with Optuna (TPE, median pruning) on validation MRR; writes best.yaml,
    the search's whole config with the best trial's values (metasd-dgl pipeline STUDY/best.yaml)."""
    from metasd_dgl.config import load_config
    from metasd_dgl.tools.tune import tune as run_tune

    overrides = _overrides(options, sets)
    base = load_config(config, *extra, overrides=overrides)
    folder = Path(study_dir) if study_dir else Path(base.run_dir + "-tune")
    run_tune(Path(config), trials, folder, Path(space) if space else None, timeout_min, resume, pruner,
             tuple(Path(e) for e in extra), echo=click.echo, overrides=overrides)


def _register_tools() -> None:
    from metasd_dgl.tools.commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_register_tools()


def main(argv: Optional[list[str]] = None) -> int:
    configure_environment()  # before torch or DGL load (they are imported lazily below)
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    if debug:  # "rerun with --debug": anywhere on the line, as the group's option
        args = ["--debug"] + [a for a in args if a != "--debug"]
    try:
        cli.main(args=args, prog_name="metasd-dgl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.ClickException as exc:  # usage errors too: one line, not click's Usage block
        ctx = getattr(exc, "ctx", None)
        see = f" (see {ctx.command_path} --help)" if isinstance(exc, click.UsageError) and ctx else ""
        click.echo("error: " + " ".join(exc.format_message().split()) + see, err=True)
        return 2
    except UserError as exc:
        if debug:
            raise
        click.echo("error: " + " ".join(str(exc).splitlines()), err=True)
        signum = getattr(exc, "signum", None)
        return 128 + signum if signum else 2
    except OSError as exc:  # the environment, not a bug: unwritable folder, full disk, ...
        if debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
