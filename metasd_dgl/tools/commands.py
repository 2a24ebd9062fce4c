"""Click commands for plots, predictions, DGL-KE interop and triple classification.

Register them on the main group (``metasd_dgl/cli.py``)::

    from metasd_dgl.tools.commands import COMMANDS
    for command in COMMANDS:
        cli.add_command(command)

``predict``, ``plot``, ``export-dglke``, ``classify`` read a run folder
(``metasd_dgl.stages.load_run``); ``import-dglke`` reads a DGL-KE save folder and
a processed dataset, evaluates the imported model directly (exact filtered
ranking, both directions) and prints the metrics; ``--out FILE`` also writes
them as JSON.  It writes no run folder: DGL-KE's RotatE and TransE_l1 scores
have no config-buildable decoder.  User errors raise ``UserError``
subclasses (one line, exit 2 under ``metasd_dgl.cli.main``).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any, Optional

import click

from metasd_dgl.errors import UserError

#: DGL-KE model names ``import-dglke`` accepts (= ``interop.NATIVE``; kept literal so that
#: registering the commands imports neither torch nor DGL).
DGLKE_MODELS = ("ComplEx", "DistMult", "TransE", "TransE_l2", "TransE_l1", "RotatE")


def _tables(run_dir: Path, checkpoint: str, student: bool):
    """-> (cfg, data, model, the true student's weights or None, ckpt, tables of the teacher or of
    that student)."""
    from metasd_dgl.stages import load_run

    from metasd_dgl.evaluate.ranking import encode_tables

    cfg, data, model, weights, ckpt = load_run(run_dir, checkpoint)
    if student and not weights:
        raise UserError(f"{run_dir}: this run has no student (train.method={cfg.train.method}); "
                        "drop --student")
    graph = data.graph if cfg.model.encoder == "rgcn" else None
    return cfg, data, model, weights, ckpt, encode_tables(model, graph, weights if student else None)


@click.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--head", help="Head entity name: predicts tails of (HEAD, RELATION, ?).")
@click.option("--relation", help="Relation name.")
@click.option("--tail", help="Tail entity name: predicts heads of (?, RELATION, TAIL).")
@click.option("--queries", type=click.Path(dir_okay=False, exists=True),
              help="TSV file of queries: head<TAB>relation<TAB>? or ?<TAB>relation<TAB>tail.")
@click.option("--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Answers per query.")
@click.option("--unfiltered", is_flag=True, help="Keep answers already known in train/valid/test.")
@click.option("--student", is_flag=True, help="Use the pruned student (masked weights) instead of the teacher.")
@click.option("--checkpoint", default="best", show_default=True, help="best, last, or a checkpoint path.")
@click.option("--from-file", "from_file", type=click.Path(),
              help="Answer from a model file of export (export/student.int8.safetensors, ...) of this run's "
                   "dataset instead of the checkpoint.")
def predict_command(run_dir: str, head: Optional[str], relation: Optional[str], tail: Optional[str],
                    queries: Optional[str], k: int, unfiltered: bool, student: bool, checkpoint: str,
                    from_file: Optional[str] = None) -> None:
    """Top-k entities by name for (HEAD, RELATION, ?) or (?, RELATION, TAIL)."""
    from metasd_dgl.tools.predict import QueryError, parse_query, predict, read_queries

    if queries:
        if head or tail or relation:
            raise QueryError("give either --queries or --head/--tail with --relation, not both")
        asked = read_queries(queries)
    else:
        if not relation:
            raise QueryError("--relation is required (or give --queries FILE)")
        asked = [parse_query(head, relation, tail)]
    if from_file:
        from metasd_dgl.store.export import file_tables
        from metasd_dgl.stages import load_run

        if student:
            raise UserError("--student and --from-file exclude each other (the file says what it holds)")
        cfg, data, model = load_run(Path(run_dir), checkpoint)[:3]
        model, tables, meta = file_tables(from_file, cfg, data, model)
        tag = f"{meta.get('role')} {meta.get('scheme')} from {from_file}"
    else:
        _, data, model, _, _, tables = _tables(Path(run_dir), checkpoint, student)
        tag = "student" if student else "teacher"
    results = predict(tables, model.decoder, data, asked, k=k, filtered=not unfiltered)
    for i, p in enumerate(results):
        lines = p.lines()
        lines[0] = f"[{tag}] " + lines[0]
        if i:
            click.echo("")
        click.echo("\n".join(lines))


def _compare_item(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise click.BadParameter(f"expected LABEL=RUN_DIR[@teacher|@student], got {text!r}", param_hint="--compare")
    label, ref = text.split("=", 1)
    variant = None
    match = re.fullmatch(r"(.*)@(teacher|student)", ref)
    if match:
        ref, variant = match.group(1), match.group(2)
    if not Path(ref).exists():
        raise click.BadParameter(f"{ref}: no such run folder or eval file", param_hint="--compare")
    return label.strip(), (Path(ref), variant) if variant else Path(ref)


@click.command("plot")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--compare", multiple=True, metavar="LABEL=RUN_DIR[@teacher|@student]",
              help="Another run (or eval JSON) to show in the bucket plots; repeatable.")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True,
              help="Which eval/<split>.json to plot buckets from.")
def plot_command(run_dir: str, compare: tuple[str, ...], split: str) -> None:
    """PNG plots into RUN_DIR/plots: training curves, MRR per bucket, relation frequencies."""
    from metasd_dgl.tools.plots import make_plots

    others = dict(_compare_item(c) for c in compare)
    names = None
    try:
        from metasd_dgl.data.preprocess import load_processed
        from metasd_dgl.tools.plots import stats_path

        stats = stats_path(run_dir)
        names = load_processed(stats.parent).relation_names if stats else None
    except UserError:
        names = None
    made = make_plots(Path(run_dir), others, split=split, relation_names=names)
    if not made:
        raise UserError(f"{run_dir}: nothing to plot (no metrics.jsonl, eval/*.json or dataset stats)")
    for path in made:
        click.echo(str(path))


def _dataset_name(data) -> str:
    src = (data.manifest.get("source") or {}).get("builtin") or Path(data.path).name
    return re.sub(r"[^A-Za-z0-9._\-]+", "-", str(src)).strip("-._") or "dataset"


@click.command("export-dglke")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--student", is_flag=True, help="Export the pruned student's (masked) embeddings.")
@click.option("--checkpoint", default="best", show_default=True)
@click.option("--dataset-name", help="File prefix <dataset>_<Model>_*.npy (default: the dataset's name).")
@click.option("--gamma", type=float, default=0.0, show_default=True,
              help="gamma written to config.json (RotatE phases are scaled by (gamma + 2) / dim).")
def export_dglke_command(run_dir: str, out: str, student: bool, checkpoint: str,
                         dataset_name: Optional[str], gamma: float) -> None:
    """Write embeddings in DGL-KE's layout (entity/relation .npy, id maps, config.json)."""
    from metasd_dgl.tools.dglke import export_dglke

    cfg, data, _, _, _, (ent, rel) = _tables(Path(run_dir), checkpoint, student)
    paths = export_dglke(ent, rel, cfg.model.decoder, data.num_relations, out, dataset_name or _dataset_name(data),
                         data.entity_names, data.relation_names, gamma=gamma)
    for key, path in paths.items():
        click.echo(f"{key}: {path}")
    if cfg.model.decoder == "rotate":
        click.echo("note: DGL-KE scores RotatE with the sum of complex moduli, metasd-dgl with the L2 norm; "
                   "rankings under DGL-KE's score may differ")


@click.command("import-dglke")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--dataset", "processed", required=True, type=click.Path(file_okay=False, exists=True),
              help="Processed dataset folder (metasd-dgl preprocess) to evaluate on.")
@click.option("--model", "model_name", type=click.Choice(DGLKE_MODELS),
              help="DGL-KE model (default: config.json or the file name).")
@click.option("--dataset-name", help="DGL-KE file prefix (default: config.json or the file name).")
@click.option("--gamma", type=float, help="Training gamma (default: config.json); RotatE needs it.")
@click.option("--scoring", type=click.Choice(["auto", "dglke", "native"]), default="auto", show_default=True,
              help="dglke: DGL-KE's score functions, head queries scored with inverse relation rows derived "
                   "from the forward ones (right for DGL-KE-trained models, which have no reciprocal relations); "
                   "native: metasd-dgl's decoders with the learned inverse rows of _relation_inverse.npy (right "
                   "for files metasd-dgl exported: a model trained with reciprocal relations ranks heads with "
                   "them, and derived rows score it lower); auto: native for metasd-dgl exports, else dglke.")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Also write the metrics as JSON here.")
def import_dglke_command(folder: str, processed: str, model_name: Optional[str], dataset_name: Optional[str],
                         gamma: Optional[float], scoring: str, split: str, out: Optional[str]) -> None:
    """Evaluate DGL-KE-trained embeddings (filtered ranking, both directions) on a processed dataset.

    metasd-dgl models are trained with reciprocal relations (a learned inverse row per relation); DGL-KE's
    layout has none, so --scoring dglke derives them and scores such a model lower than it is.  Files
    written by export-dglke carry the learned rows, and --scoring auto uses them.
    """
    from metasd_dgl.data.preprocess import load_processed
    from metasd_dgl.evaluate.ranking import encode_tables, metrics, rank_split
    from metasd_dgl.tools.dglke import import_dglke, read_dglke

    data = load_processed(processed)
    emb = read_dglke(folder, dataset_name, model_name, gamma)
    ours = emb.relation_inverse is not None and emb.model_name != "TransE_l1"
    if scoring == "auto":
        scoring = "native" if ours else "dglke"
        why = ("metasd-dgl export: its learned inverse relation rows score head queries" if ours else
               "DGL-KE's own score function; inverse relation rows derived from the forward ones")
        click.echo(f"scoring {scoring} (auto: {why})")
    elif scoring == "dglke" and ours:
        click.echo("note: this is a metasd-dgl export, trained with reciprocal relations; dglke scoring replaces "
                   "its learned inverse rows with derived ones and ranks heads worse (--scoring native keeps them)")
    model = import_dglke(emb, data.entity_names, data.relation_names, scoring)
    triples = data.split(split)
    ranks = rank_split(model, triples, data.num_relations, data.filter, tables=encode_tables(model))
    result = {"both": metrics(ranks.both()), "head": metrics(ranks.head),
              "tail": metrics(ranks.tail)}
    click.echo(f"{emb.dataset}_{emb.model_name} ({scoring} scoring) on {data.path} {split}:")
    for side, m in result.items():
        click.echo(f"  {side:<5} " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in m.items()))
    if out:
        record = {"split": split, "source": str(folder), "model": emb.model_name, "scoring": scoring,
                  "gamma": emb.gamma, "results": {"dglke": result}}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        click.echo(f"metrics: {out}")


def _given_negatives(data, negatives_valid: Optional[Path], negatives_test: Optional[Path]):
    """-> (``{"valid", "test"}`` id tensors, source line) of the files, or of the dataset; (None, "") if neither."""
    import torch

    from metasd_dgl.data.triples import named_ids, read_named

    if (negatives_valid is None) != (negatives_test is None):
        raise click.UsageError("--negatives-valid and --negatives-test go together")
    if negatives_valid is not None:
        files = {"valid": Path(negatives_valid), "test": Path(negatives_test)}
        ids = {s: torch.from_numpy(named_ids(read_named(f), data.entity_names, data.relation_names))
               for s, f in files.items()}
        return ids, f"files {files['valid']}, {files['test']}"
    if set(data.negatives) >= {"valid", "test"}:
        return data.negatives, f"shipped with the dataset ({data.path})"
    return None, ""


def classify_run(run_dir: Path, checkpoint: str = "best", num_negatives: int = 1, seed: int = 0,
                 negatives_valid: Optional[Path] = None, negatives_test: Optional[Path] = None) -> Path:
    """Triple classification of the teacher (and student, if any) -> ``eval/triple_classification.json``.

    Negatives: the given files (name triples), else the hard negatives the
    dataset ships (CoDEx-S), else corruptions drawn with ``seed`` (both
    variants scored on the same ones).  Callable from ``evaluate --triple-classification``.
    """
    import torch

    from metasd_dgl.tools.classification import classify_given, triple_classification
    from metasd_dgl.evaluate.ranking import encode_tables

    cfg, data, model, student, ckpt, teacher = _tables(Path(run_dir), checkpoint, False)
    given, source = _given_negatives(data, negatives_valid, negatives_test)  # errors before anything is written
    graph = data.graph if cfg.model.encoder == "rgcn" else None
    variants = {"teacher": teacher}
    if student:
        variants["student"] = encode_tables(model, graph, student)
    if given is not None:
        results = {name: classify_given(tables, model.decoder, data, given, source)
                   for name, tables in variants.items()}
    else:
        results = {name: triple_classification(tables, model.decoder, data, torch.Generator().manual_seed(seed),
                                               num_negatives) for name, tables in variants.items()}
    record = {"checkpoint": checkpoint, "epoch": (ckpt.get("state") or {}).get("epoch"),
              "seed": None if given is not None else seed,
              "num_negatives": None if given is not None else num_negatives,
              "negatives": source or f"{num_negatives} filtered corruption(s) per triple, seed {seed}",
              "results": results}
    path = Path(run_dir) / "eval" / "triple_classification.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


@click.command("classify")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--checkpoint", default="best", show_default=True)
@click.option("--num-negatives", type=click.IntRange(min=1), default=1, show_default=True,
              help="Corrupted negatives per valid/test triple (when no negatives are given).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the negative draws.")
@click.option("--negatives-valid", type=click.Path(dir_okay=False, exists=True),
              help="Given negatives of valid (head<TAB>relation<TAB>tail names): they choose the thresholds.")
@click.option("--negatives-test", type=click.Path(dir_okay=False, exists=True),
              help="Given negatives of test: scored against the test triples.")
def classify_command(run_dir: str, checkpoint: str, num_negatives: int, seed: int,
                     negatives_valid: Optional[str], negatives_test: Optional[str]) -> None:
    """Triple classification: ROC-AUC, AP, per-relation thresholds (valid), test accuracy and F1.

    Negatives: --negatives-valid/--negatives-test, else those the dataset ships (CoDEx-S),
    else filtered corruptions.
    """
    path = classify_run(Path(run_dir), checkpoint, num_negatives, seed,
                        Path(negatives_valid) if negatives_valid else None,
                        Path(negatives_test) if negatives_test else None)
    for line in classification_lines(path):
        click.echo(line)


def classification_lines(path: Path) -> list[str]:
    """The table of ``eval/triple_classification.json``: one line per model and split, then the path."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    lines = []
    for name, res in record["results"].items():
        for split in ("valid", "test"):
            m = res["overall"][split]
            lines.append(f"{name:<8} {split:<5} roc_auc {_num(m['roc_auc'])}  ap {_num(m['average_precision'])}  "
                         f"accuracy {m['accuracy']:.4f}  f1 {_num(m.get('f1'))}  "
                         f"(+{m['positives']} / -{m['negatives']})")
    if record.get("negatives"):
        lines.append(f"negatives: {record['negatives']}")
    return lines + [f"triple classification: {path}"]


def _num(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@click.command("subset")
@click.argument("source")
@click.option("--top-entities", "k", type=click.IntRange(min=1), required=True,
              help="Keep this many entities of highest training degree (ties by name).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder to write.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with published archives.")
def subset_command(source: str, k: int, out: str, data_dir: Optional[str]) -> None:
    """A deterministic subset of SOURCE on its top entities by training degree (see metasd_dgl/data/subset.py)."""
    from metasd_dgl.data.subset import write_subset

    record = write_subset(source, k, Path(out), Path(data_dir) if data_dir else None)
    c, src = record["counts"], record["source_counts"]
    click.echo(f"{out}: top {c['top']} entities by degree, {c['entities']} with a train triple inside, "
               f"{c['relations']} relations, train/valid/test "
               f"{c['train']}/{c['valid']}/{c['test']} (of {src['train']}/{src['valid']}/{src['test']})")
    folder = shlex.quote(out)
    click.echo(f"use it with --dataset {folder} (train, pipeline, tune), e.g. metasd-dgl pipeline --dataset {folder}")


@click.command("compress")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--compare", multiple=True, metavar="LABEL=RUN_DIR[@teacher|@student]",
              help="Another run of the same dataset: its student (or teacher) in fp32 and int8; repeatable.")
@click.option("--tolerance", type=float, default=0.01, show_default=True,
              help="Recommend the smallest variant whose validation MRR is within this (absolute) of the "
                   "reference's.")
@click.option("--reference", metavar="LABEL",
              help="The tolerance's reference (default: the best fp32 variant by validation MRR): a variant's "
                   "name ('teacher fp32') or a run's label alone (teacher, student, a --compare LABEL).")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True,
              help="The split of the table's accuracy columns and of the Pareto plot (validation always chooses).")
@click.option("--checkpoint", default="best", show_default=True)
def compress_command(run_dir: str, compare: tuple[str, ...], tolerance: float, split: str, checkpoint: str,
                     reference: Optional[str] = None) -> None:
    """Size and accuracy of every stored variant (teacher fp32/fp16/int8/int4, student fp32/int8/int4),
    each scored from its file; RUN_DIR/compress/report.json, report.png, and a recommendation."""
    from metasd_dgl.tools.compress import compress_report, parse_compare

    compress_report(Path(run_dir), [parse_compare(c) for c in compare], tolerance, split, checkpoint,
                    echo=click.echo, reference=reference)


@click.command("report", hidden=True, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def renamed_report_command() -> None:
    """The earlier name of ``plot`` ("report" is the compression report's word now)."""
    raise UserError("metasd-dgl report is now metasd-dgl plot RUN_DIR (the plots of a run)")


COMMANDS = [predict_command, plot_command, renamed_report_command, export_dglke_command, import_dglke_command, classify_command,
            subset_command, compress_command]
