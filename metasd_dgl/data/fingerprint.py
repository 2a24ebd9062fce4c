"""A processed dataset's identity, stored in every checkpoint: the hashes of its id maps."""
from __future__ import annotations


def dataset_fingerprint(data) -> str:
    """``"<sha of entities.tsv>:<sha of relations.tsv>"`` from a processed dataset's manifest."""
    files = data.manifest.get("files", {})
    return f"{files.get('entities.tsv', '?')}:{files.get('relations.tsv', '?')}"
