"""A processed dataset's identity, stored in every checkpoint: the hashes of its id maps."""
from __future__ import annotations


def dataset_fingerprint(data) -> str:
    """``"<sha of entities.tsv>:<sha of relations.tsv>"`` from a processed dataset's manifest."""
    return _fingerprint(data.manifest)


def _fingerprint(manifest: dict) -> str:
    files = manifest.get("files", {})
    return f"{files.get('entities.tsv', '?')}:{files.get('relations.tsv', '?')}"


def check_run_dataset(run_dir, dataset=None, fmt: str = "auto", processed=None) -> None:
    """A run's dataset is fixed when the run is created: refuse (a UserError, before anything is written)
    a run folder whose checkpoints were trained on another dataset than ``dataset``/``fmt`` (what
    ``config.yaml``, ``--config`` or ``--dataset`` now ask for), or whose processed folder ``processed``
    no longer holds the data its checkpoints were trained on (the id-map hashes differ), or whose
    ``best.pt`` cannot be read.  ``dataset`` None: only the processed folder is compared (default:
    the one the checkpoint's config names).  A folder without checkpoints passes (a new run); an unreadable
    ``last.pt`` is left to the caller, which names it."""
    import json
    from pathlib import Path

    from metasd_dgl.errors import CheckpointError, UserError, short
    from metasd_dgl.store.checkpoint import load_checkpoint

    folder = Path(run_dir) / "checkpoints"
    last, best = folder / "last.pt", folder / "best.pt"
    if not last.is_file() and not best.is_file():
        return
    try:
        ckpt = load_checkpoint(last if last.is_file() else best)
    except CheckpointError:
        return
    if last.is_file() and best.is_file():
        try:
            load_checkpoint(best)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; it is this run's best checkpoint: move it away and run again, "
                                  f"or use --checkpoint last") from None
    stored = ckpt.get("config", {}).get("data", {})
    old, old_fmt = stored.get("dataset"), stored.get("format", "auto")
    if dataset is not None and old is not None and (not _same_source(str(old), str(dataset)) or old_fmt != fmt):
        import os

        from metasd_dgl.data import registry
        from metasd_dgl.data.triples import read_source

        if not os.path.exists(os.path.expanduser(str(dataset))) and registry.lookup(str(dataset)) is None:
            read_source(str(dataset), None, fmt)  # a misspelt name or path: says so (nothing is read)
        was, now = (short(old, 120), short(dataset, 120)) if old_fmt == fmt else (
            f"{short(old, 120)} (format {old_fmt})", f"{short(dataset, 120)} (format {fmt})")
        raise UserError(f"{run_dir}: this run was trained on dataset {was} and its dataset is fixed; "
                        f"{now} was asked (config.yaml, --config or --dataset): train it into another --run-dir")
    processed = processed or stored.get("processed_dir") or Path(run_dir) / "data"
    manifest = Path(processed) / "manifest.json"
    try:
        here = _fingerprint(json.loads(manifest.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError):
        return  # no processed folder yet: the caller preprocesses it, then the trainer compares
    if ckpt.get("dataset") is not None and ckpt.get("dataset") != here:
        raise CheckpointError(f"{run_dir}: its checkpoints were trained on another dataset (id-map hashes "
                              f"{_brief(ckpt.get('dataset'))} vs {_brief(here)} of {processed}); a run's dataset is fixed: "
                              f"preprocess {short(old)} into {processed} again, or train into another --run-dir")


def _same_source(a: str, b: str) -> bool:
    """One dataset however spelt: the same name, or two spellings of one existing file or folder."""
    import os

    if a == b or os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _brief(fingerprint) -> str:
    """``"<sha>:<sha>"`` with each hash cut to 12 hex digits."""
    return ":".join(part[:12] for part in str(fingerprint).split(":"))
