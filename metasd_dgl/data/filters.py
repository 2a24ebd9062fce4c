"""Known-true index for filtered ranking, in reciprocal form, stored as CSR.

For every triple ``(h, r, t)`` of train+valid+test the index holds two facts:
the tail query key ``(h, r)`` knows ``t``, and the reciprocal key
``(t, r + R)`` knows ``h`` (the head query ``(?, r, t)`` is asked as
``(t, r + R, ?)``, see ``metasd_dgl.data.triples.reciprocal_queries``).  Storage, with ``K`` distinct
keys and ``nnz`` distinct (key, entity) facts:

* ``keys``    (K,)     int64, sorted, unique; key = ``head * 2R + relation``
* ``offsets`` (K + 1,) int64; the entities of ``keys[i]`` are
  ``values[offsets[i]:offsets[i + 1]]``
* ``values``  (nnz,)   int64, sorted within each key, unique within each key

Look-ups are vectorised (``searchsorted`` + ``repeat_interleave``); there is
no Python loop over triples or entities anywhere in this module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from metasd_dgl.data.triples import reciprocal_queries, triple_keys
from metasd_dgl.typing import HEAD, REL, TAIL

FORMAT_VERSION = 1
#: Graphs with N * 2R * N below this pack (key, entity) into one int64 code to sort.
PACK_LIMIT = 2 ** 62


class FilterIndex:
    """CSR map ``(head, relation in [0, 2R)) -> sorted known tails``."""

    def __init__(self, keys: Tensor, offsets: Tensor, values: Tensor,
                 num_entities: int, num_relations: int) -> None:
        """Wrap prebuilt CSR arrays (see the module docstring); prefer ``from_triples``."""
        if keys.dim() != 1 or offsets.shape != (keys.shape[0] + 1,) or values.dim() != 1:
            raise ValueError("FilterIndex: expected keys (K,), offsets (K+1,), values (nnz,)")
        self.keys = keys.to(torch.int64)
        self.offsets = offsets.to(torch.int64)
        self.values = values.to(torch.int64)
        self.num_entities = int(num_entities)
        self.num_relations = int(num_relations)  # R, without reciprocals

    # ------------------------------------------------------------------ build
    @classmethod
    def from_triples(cls, triples: Union[Tensor, Sequence[Tensor]], num_entities: int,
                     num_relations: int) -> "FilterIndex":
        """Build from (n, 3) ``[h, r, t]`` triples (or a sequence of such tensors).

        ``num_relations`` is the dataset's R (relations ``r`` in ``[0, R)``);
        duplicate triples are allowed and stored once.
        """
        if not isinstance(triples, Tensor):
            triples = torch.cat([torch.as_tensor(t).reshape(-1, 3) for t in triples]) if len(triples) else \
                torch.empty(0, 3, dtype=torch.int64)
        triples = triples.detach().to("cpu", torch.int64).reshape(-1, 3)
        n_ent, n_rel = int(num_entities), int(num_relations)
        if n_ent < 1 or n_rel < 1:
            raise ValueError("FilterIndex: num_entities and num_relations must be >= 1")
        if triples.numel():
            h, r, t = triples.unbind(1)
            if int(torch.minimum(h, t).min()) < 0 or int(torch.maximum(h, t).max()) >= n_ent:
                raise ValueError(f"FilterIndex: entity id outside [0, {n_ent})")
            if int(r.min()) < 0 or int(r.max()) >= n_rel:
                raise ValueError(f"FilterIndex: relation id outside [0, {n_rel})")
        two_r = 2 * n_rel
        # (2n, 3) reciprocal facts: key (h, r) -> t and key (t, r + R) -> h.
        facts = reciprocal_queries(triples, n_rel)
        if n_ent * two_r * n_ent < PACK_LIMIT:
            # One int64 code per fact: unique() sorts by key, then by entity.
            code = torch.unique(triple_keys(facts, n_ent, two_r), sorted=True)
            keys, vals = code // n_ent, code % n_ent
        else:  # huge graphs: lexicographic sort without the packed code
            keys, vals = facts[:, HEAD] * two_r + facts[:, REL], facts[:, TAIL]
            order = torch.from_numpy(np.lexsort((vals.numpy(), keys.numpy())))
            keys, vals = keys[order], vals[order]
            keep = torch.ones(keys.shape[0], dtype=torch.bool)
            keep[1:] = (keys[1:] != keys[:-1]) | (vals[1:] != vals[:-1])
            keys, vals = keys[keep], vals[keep]
        uniq, counts = torch.unique_consecutive(keys, return_counts=True)
        offsets = torch.zeros(uniq.shape[0] + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=offsets[1:])
        return cls(uniq, offsets, vals, n_ent, n_rel)

    # ----------------------------------------------------------------- lookup
    def _spans(self, heads: Tensor, rels: Tensor) -> tuple[Tensor, Tensor]:
        """(b,) queries -> (b,) CSR start and (b,) number of known tails (0 for unknown keys)."""
        device = self.keys.device
        query = heads.to(device, torch.int64).reshape(-1) * (2 * self.num_relations) \
            + rels.to(device, torch.int64).reshape(-1)
        if self.keys.shape[0] == 0:
            return torch.zeros_like(query), torch.zeros_like(query)
        pos = torch.searchsorted(self.keys, query).clamp_(max=self.keys.shape[0] - 1)
        start = self.offsets[pos]
        span = self.offsets[pos + 1] - start
        return start, torch.where(self.keys[pos] == query, span, torch.zeros_like(span))

    def known(self, heads: Tensor, rels: Tensor) -> tuple[Tensor, Tensor]:
        """All known tails of a batch of queries, as a COO list.

        ``heads`` (b,), ``rels`` (b,) with ``rels`` in ``[0, 2R)`` ->
        ``rows`` (k,) query positions in ``[0, b)`` (non-decreasing) and
        ``entities`` (k,) the known tails of query ``rows[i]`` (sorted per row).
        Results live on this index's device.
        """
        start, count = self._spans(heads, rels)
        b, device = count.shape[0], count.device
        total = int(count.sum())
        rows = torch.repeat_interleave(torch.arange(b, device=device), count, output_size=total)
        # position of each output within its row's run, shifted to that row's CSR start
        shift = start - (torch.cumsum(count, 0) - count)  # (b,)
        return rows, self.values[torch.arange(total, device=device) + shift[rows]]

    def known_flat(self, heads: Tensor, rels: Tensor, row_stride: int) -> tuple[Tensor, Tensor]:
        """Known cells as flat indices into a row-major (b, row_stride) score matrix.

        -> ``flat`` (k,) ``row * row_stride + entity``, strictly increasing, and
        ``count`` (b,) cells per row.  Same facts as ``known``, in fewer passes
        over k (the ranking's hot path).
        """
        start, count = self._spans(heads, rels)
        b, device = count.shape[0], count.device
        total = int(count.sum())
        shift = start - (torch.cumsum(count, 0) - count)  # (b,)
        idx = torch.arange(total, device=device) + torch.repeat_interleave(shift, count, output_size=total)
        base = torch.arange(b, device=device) * int(row_stride)
        return self.values[idx] + torch.repeat_interleave(base, count, output_size=total), count

    def count(self, heads: Tensor, rels: Tensor) -> Tensor:
        """(b,) number of known tails per query (same inputs as ``known``)."""
        return self._spans(heads, rels)[1]

    # ------------------------------------------------------------ persistence
    def save(self, path: Union[str, Path]) -> None:
        """Write an ``.npz`` (plain int64 arrays, no pickle) to exactly ``path``."""
        with open(path, "wb") as fh:
            np.savez(
                fh,
                keys=self.keys.cpu().numpy(),
                offsets=self.offsets.cpu().numpy(),
                values=self.values.cpu().numpy(),
                meta=np.array([FORMAT_VERSION, self.num_entities, self.num_relations], dtype=np.int64),
            )

    @classmethod
    def load(cls, path: Union[str, Path]) -> "FilterIndex":
        """Read a file written by ``save`` (``allow_pickle=False``); ValueError if malformed."""
        with np.load(path, allow_pickle=False) as z:
            try:
                meta, keys, offsets, values = z["meta"], z["keys"], z["offsets"], z["values"]
            except KeyError as exc:
                raise ValueError(f"{path}: not a FilterIndex file (missing {exc})") from None
        if meta.shape != (3,) or int(meta[0]) != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported FilterIndex format")
        if offsets.shape != (keys.shape[0] + 1,) or (offsets.shape[0] and int(offsets[-1]) != values.shape[0]):
            raise ValueError(f"{path}: inconsistent FilterIndex arrays")
        return cls(torch.from_numpy(keys), torch.from_numpy(offsets), torch.from_numpy(values),
                   int(meta[1]), int(meta[2]))

    def to(self, device: Union[str, torch.device]) -> "FilterIndex":
        """A copy with its arrays on ``device`` (self when already there)."""
        if self.keys.device == torch.device(device):
            return self
        return FilterIndex(self.keys.to(device), self.offsets.to(device), self.values.to(device),
                           self.num_entities, self.num_relations)

    # ------------------------------------------------------------------ misc
    @property
    def device(self) -> torch.device:
        return self.keys.device

    def __len__(self) -> int:
        """Number of stored (key, entity) facts (``nnz``)."""
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        return (f"FilterIndex(num_entities={self.num_entities}, num_relations={self.num_relations}, "
                f"keys={self.keys.shape[0]}, facts={len(self)}, device={self.device})")
