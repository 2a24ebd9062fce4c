"""Relation frequencies, entity degrees and long-tail buckets (pure tensor functions).

Counts come from the *training* triples only.  ``relation_frequency[r]`` is
the number of train triples with relation ``r``; ``entity_degree[e]`` the
number of train triple ends at ``e`` (head or tail; a self-loop counts twice).

Bucket rule (``quantile_buckets``), so each bucket holds roughly an equal
share of the *triples* (for entities: of the triple ends):

1. items with equal count form one tie group (they always share a bucket);
2. groups are sorted by count, rarest first, and laid end to end on the line
   ``[0, T)`` where a group occupies as much length as the triples it holds
   (``count * group size``; ``T`` the total);
3. a group goes to bucket ``floor(B * midpoint / T)`` (clamped to ``B - 1``),
   i.e. to the ``B``-quantile of the triple mass where its midpoint falls;
4. ids are shifted so the rarest group is in bucket 0.

A group larger than ``T / B`` can leave a neighbouring bucket empty; the
labels then say ``(empty)``.  Items with count 0 fall into bucket 0.
Bucket 0 is the long tail, bucket ``B - 1`` the head.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from metasd_dgl.typing import HEAD, REL, TAIL


def relation_frequency(train: torch.Tensor, num_relations: int) -> torch.LongTensor:
    """(n, 3) train triples -> (R,) number of triples per relation."""
    return torch.bincount(train[:, REL], minlength=num_relations)  # type: ignore[return-value]


def entity_degree(train: torch.Tensor, num_entities: int) -> torch.LongTensor:
    """(n, 3) train triples -> (N,) number of triple ends (head or tail) per entity."""
    heads = torch.bincount(train[:, HEAD], minlength=num_entities)
    tails = torch.bincount(train[:, TAIL], minlength=num_entities)
    return heads + tails  # type: ignore[return-value]


def quantile_buckets(counts: torch.Tensor, num_buckets: int) -> torch.LongTensor:
    """(K,) non-negative counts -> (K,) bucket ids in [0, B) by the module's rule."""
    if num_buckets < 1:
        raise ValueError("num_buckets must be >= 1")
    counts = counts.to(torch.int64)
    if counts.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)  # type: ignore[return-value]
    values, inverse = torch.unique(counts, sorted=True, return_inverse=True)  # (G,), (K,)
    multiplicity = torch.bincount(inverse, minlength=values.numel())
    mass = (values * multiplicity).to(torch.float64)  # (G,) triples held by each group
    total = float(mass.sum())
    if total == 0:
        return torch.zeros_like(counts)  # type: ignore[return-value]
    midpoint = torch.cumsum(mass, 0) - mass / 2
    group = torch.clamp(torch.floor(num_buckets * midpoint / total).to(torch.int64), max=num_buckets - 1)
    group = group - group[0]
    return group[inverse]  # type: ignore[return-value]


def bucket_ranges(counts: torch.Tensor, buckets: torch.Tensor,
                  num_buckets: int) -> List[Optional[Tuple[int, int]]]:
    """Inclusive (min count, max count) of each bucket, None for an empty bucket."""
    out: List[Optional[Tuple[int, int]]] = []
    big = torch.iinfo(torch.int64).max
    lo = torch.full((num_buckets,), big, dtype=torch.int64).scatter_reduce(
        0, buckets, counts.to(torch.int64), reduce="amin")
    hi = torch.full((num_buckets,), -1, dtype=torch.int64).scatter_reduce(
        0, buckets, counts.to(torch.int64), reduce="amax")
    for a, b in zip(lo.tolist(), hi.tolist()):
        out.append(None if b < 0 else (a, b))
    return out


def bucket_labels(ranges: List[Optional[Tuple[int, int]]], prefix: str) -> List[str]:
    """``["rel freq 1-12", ...]``; ``prefix`` is e.g. "rel freq" or "ent degree"."""
    return [f"{prefix} (empty)" if r is None else f"{prefix} {r[0]}-{r[1]}" for r in ranges]


def relation_buckets(train: torch.Tensor, num_relations: int, num_buckets: int) -> torch.LongTensor:
    """(n, 3) train -> (R,) bucket id per relation by frequency (0 = rarest)."""
    return quantile_buckets(relation_frequency(train, num_relations), num_buckets)


def entity_buckets(train: torch.Tensor, num_entities: int, num_buckets: int) -> torch.LongTensor:
    """(n, 3) train -> (N,) bucket id per entity by degree (0 = lowest degree)."""
    return quantile_buckets(entity_degree(train, num_entities), num_buckets)


def triple_buckets(triples: torch.Tensor, relation_bucket: torch.Tensor,
                   entity_bucket: torch.Tensor) -> Dict[str, torch.LongTensor]:
    """Buckets of evaluation triples, per prediction side.

    ``triples`` (m, 3); ``relation_bucket`` (R,) and ``entity_bucket`` (N,)
    from the functions above.  Returns (m,) tensors: ``"relation"`` the
    bucket of the triple's relation; ``"head"`` the degree bucket of the head,
    i.e. of the entity predicted by the head query ``(?, r, t)``; ``"tail"``
    that of the tail, the entity predicted by ``(h, r, ?)``.
    """
    return {
        "relation": relation_bucket[triples[:, REL]],
        "head": entity_bucket[triples[:, HEAD]],
        "tail": entity_bucket[triples[:, TAIL]],
    }  # type: ignore[return-value]


def _summary(counts: torch.Tensor, num_buckets: int, prefix: str) -> Dict[str, object]:
    buckets = quantile_buckets(counts, num_buckets)
    ranges = bucket_ranges(counts, buckets, num_buckets)
    held = torch.zeros(num_buckets, dtype=torch.int64).scatter_add(0, buckets, counts.to(torch.int64))
    return {
        "bucket": buckets.tolist(),
        "ranges": [list(r) if r is not None else None for r in ranges],
        "labels": bucket_labels(ranges, prefix),
        "items": torch.bincount(buckets, minlength=num_buckets).tolist(),
        "mass": held.tolist(),
    }


def summarize(train: torch.Tensor, num_entities: int, num_relations: int,
              num_buckets: int = 3) -> Dict[str, object]:
    """JSON-ready statistics (what ``stats.json`` holds).

    Keys: ``num_buckets``, ``rule``, ``relation_frequency`` (R ints),
    ``entity_degree`` (N ints), ``relation_buckets`` and ``entity_buckets``,
    each ``{"bucket": per-item id, "ranges": [[lo, hi] | null] per bucket,
    "labels", "items": items per bucket, "mass": triples (ends) per bucket}``.
    """
    freq = relation_frequency(train, num_relations)
    degree = entity_degree(train, num_entities)
    return {
        "num_buckets": num_buckets,
        "rule": "equal share of train triples per bucket by tie-group midpoint; see metasd_dgl.data.stats",
        "relation_frequency": freq.tolist(),
        "entity_degree": degree.tolist(),
        "relation_buckets": _summary(freq, num_buckets, "rel freq"),
        "entity_buckets": _summary(degree, num_buckets, "ent degree"),
    }


def evaluation_buckets(triples: torch.Tensor, train: torch.Tensor, num_entities: int,
                       num_relations: int, num_buckets: int) -> Dict[str, tuple]:
    """Bucket specs for ``evaluation.summarize``: kind -> (ids, labels).

    ``"relation"``: (m,) relation-frequency bucket per triple (both sides);
    ``"entity"``: (2m,) degree bucket of the *predicted* entity, ordered
    tail queries first, then head queries (as ``Ranks.both()``).
    """
    freq, degree = relation_frequency(train, num_relations), entity_degree(train, num_entities)
    rb, eb = quantile_buckets(freq, num_buckets), quantile_buckets(degree, num_buckets)
    per = triple_buckets(triples, rb, eb)
    rel_labels = bucket_labels(bucket_ranges(freq, rb, num_buckets), "rel freq")
    ent_labels = bucket_labels(bucket_ranges(degree, eb, num_buckets), "ent degree")
    return {
        "relation": (per["relation"], rel_labels),
        "entity": (torch.cat([per["tail"], per["head"]]), ent_labels),
    }
