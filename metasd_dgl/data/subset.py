"""A deterministic dense-core subset of a dataset: its K entities of highest training degree.

Rule (``top_entities_subset``):

1. the *degree* of an entity is its number of ends in the distinct training
   triples (head or tail; a self-loop counts twice), as ``stats.entity_degree``;
2. the ``K`` entities of highest degree are kept, ties broken by entity name
   (ascending, by code point), so the subset does not depend on file order;
3. train keeps the triples whose head and tail are both kept;
4. valid and test keep the triples whose head and tail are both kept **and**
   occur in the subset's train, and whose relation occurs in the subset's
   train (a query about an entity or relation never trained on is dropped,
   as the standard splits guarantee for the full datasets);
5. triples keep their original names and their order in the source files.

``write_subset`` writes ``train.txt``, ``valid.txt``, ``test.txt`` (TSV,
``head<TAB>relation<TAB>tail``) and ``subset.json`` (rule, source, counts);
``--dataset DIR`` (``metasd-dgl train``, ``pipeline``, ``tune``) reads the folder like any TSV dataset.
A subset with an empty split is refused before anything is written, naming
the smallest ``K`` that gives every split a triple.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from metasd_dgl.data.triples import RawKG, StrTriple, read_source
from metasd_dgl.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass
class Subset:
    """The kept entities (highest degree first) and the kept triples of every split."""

    entities: List[str]
    splits: Dict[str, List[StrTriple]]

    def counts(self) -> Dict[str, int]:
        """top (entities kept), entities and relations occurring in train, triples per split.

        A kept entity whose every train neighbour fell outside has no triple
        left: ``entities`` (what ``preprocess`` indexes) can be below ``top``.
        """
        rels = {r for _, r, _ in self.splits["train"]}
        ents = {e for h, _, t in self.splits["train"] for e in (h, t)}
        return {"top": len(self.entities), "entities": len(ents), "relations": len(rels),
                **{s: len(self.splits[s]) for s in SPLITS}}


def training_degree(train: List[StrTriple]) -> Counter:
    """Entity name -> number of ends in the distinct triples of ``train``."""
    degree: Counter = Counter()
    for h, _, t in dict.fromkeys(train):
        degree[h] += 1
        degree[t] += 1
    return degree


def top_entities_subset(raw: RawKG, k: int) -> Subset:
    """The subset of ``raw`` on its ``k`` entities of highest training degree (module rule)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    degree = training_degree(raw.train)
    ranked = sorted(degree, key=lambda e: (-degree[e], e))
    kept = ranked[:k]
    keep = set(kept)
    train = [x for x in raw.train if x[0] in keep and x[2] in keep]
    seen_ent = {e for h, _, t in train for e in (h, t)}
    seen_rel = {r for _, r, _ in train}
    splits = {"train": train}
    for split in ("valid", "test"):
        splits[split] = [x for x in getattr(raw, split)
                         if x[0] in seen_ent and x[2] in seen_ent and x[1] in seen_rel]
    return Subset(kept, splits)


def _full(sub: Subset) -> bool:
    return all(sub.splits[s] for s in SPLITS)


def smallest_full_subset(raw: RawKG, k: int) -> Optional[tuple]:
    """``(k', subset)``: the smallest ``k' > k`` whose subset has a triple in every split (found by
    doubling, then bisection), or None if even every entity leaves a split empty."""
    n = len(training_degree(raw.train))
    low, high = k, min(max(2 * k, k + 1), n)
    while high <= n:
        sub = top_entities_subset(raw, high)
        if _full(sub):
            break
        if high == n:
            return None
        low, high = high, min(2 * high, n)
    while high - low > 1:
        mid = (low + high) // 2
        if _full(top_entities_subset(raw, mid)):
            high = mid
        else:
            low = mid
    for candidate in range(low + 1, high + 1):  # a non-monotone stretch: the smallest that works
        sub = top_entities_subset(raw, candidate)
        if _full(sub):
            return candidate, sub
    return None  # pragma: no cover - high was full


def write_subset(source: Union[str, Path], k: int, out: Union[str, Path],
                 data_dir: Optional[Path] = None) -> Dict[str, object]:
    """Read ``source`` (built-in name, folder or archive), write its top-``k`` subset into ``out``.

    Returns the ``subset.json`` record (``counts``: entities, relations, train, valid, test).
    """
    raw = read_source(source, data_dir)
    sub = top_entities_subset(raw, k)
    empty = [s for s in SPLITS if not sub.splits[s]]
    if empty:  # nothing could train or be evaluated on it: refused before anything is written
        counts = "/".join(str(len(sub.splits[s])) for s in SPLITS)
        good = smallest_full_subset(raw, k)
        todo = (f"--top-entities {good[0]} is the smallest that gives every split a triple "
                f"({'/'.join(str(len(good[1].splits[s])) for s in SPLITS)})" if good else
                "no --top-entities gives every split a triple on this dataset")
        raise DataError(f"{out}: --top-entities {k} leaves {' and '.join(empty)} empty (train/valid/test {counts}); "
                        f"nothing was written; {todo}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (out / f"{split}.txt").write_text("".join("\t".join(x) + "\n" for x in sub.splits[split]),
                                          encoding="utf-8")
    record = {"source": raw.source, "top_entities": k,
              "rule": "top-k entities by distinct-train degree, ties by name; train triples inside; "
                      "valid/test triples inside whose entities and relation occur in the subset's train",
              "counts": sub.counts(),
              "source_counts": {s: len(getattr(raw, s)) for s in SPLITS}}
    (out / "subset.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
