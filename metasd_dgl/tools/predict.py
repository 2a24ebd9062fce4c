"""Top-k link predictions by name: ``(head, relation, ?)`` and ``(?, relation, tail)``.

Every query is a tail query on the reciprocal convention: ``(h, r, ?)`` scores
``(h, r, e)`` for every entity ``e``; ``(?, r, t)`` is asked as ``(t, r + R, ?)``.
The tables come from ``evaluation.encode_tables`` (teacher, or the true student
given masks), so the same function serves both.

*Filtered* predictions drop every entity that is already a known answer of
the query in train, valid or test (``data.filter.known``), so the list shows
only new facts; *unfiltered* ones rank all entities.

A query file holds one query per line, tab-separated: ``head<TAB>relation<TAB>?``
or ``?<TAB>relation<TAB>tail``; blank lines and lines starting with ``#`` are skipped.  A line
ends at a newline only (a Unicode line separator inside a name is part of it).  Names lose
surrounding whitespace, in the file as in ``--head``/``--tail`` and in the dataset files.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from metasd_dgl.data.filters import FilterIndex
from metasd_dgl.model.decoders import Decoder
from metasd_dgl.errors import DataError, UserError
from metasd_dgl.data.triples import strip_name
from metasd_dgl.store.atomic import check_input_file

#: A query by name: (head or None, relation, tail or None), exactly one side None.
NamedQuery = tuple[Optional[str], str, Optional[str]]
#: Cap on the cells of one (queries, N) score matrix (64 MiB of float32).
_MAX_CELLS = 1 << 24


class UnknownNameError(UserError):
    """An entity or relation name that the dataset does not hold."""


class QueryError(UserError):
    """A malformed query (both or neither side given) or query file line."""


@dataclass
class Prediction:
    """Answers to one query, best first."""

    query: NamedQuery
    target: str  # "tail" for (h, r, ?), "head" for (?, r, t)
    entity_ids: list[int]
    names: list[str]
    scores: list[float]
    filtered: bool
    removed: int  # known answers dropped by filtering

    def lines(self) -> list[str]:
        """Printable table: rank, score, name."""
        h, r, t = (x if x is not None else "?" for x in self.query)
        head = f"({h}, {r}, {t})  top {len(self.names)}, {'filtered' if self.filtered else 'unfiltered'}"
        if self.filtered:
            head += f", {self.removed} known answer(s) removed"
        rows = [f"  {i + 1:>3}  {s:>12.4f}  {n}" for i, (n, s) in enumerate(zip(self.names, self.scores))]
        return [head, *rows]


class NameIndex:
    """Name -> id with close-match suggestions for names it does not hold."""

    def __init__(self, names: Sequence[str], what: str) -> None:
        self.names, self.what = list(names), what
        self.ids = {n: i for i, n in enumerate(self.names)}

    def __call__(self, name: str) -> int:
        if name in self.ids:
            return self.ids[name]
        folded = [n for n in self.names if n.casefold() == name.casefold()]
        close = folded + [c for c in difflib.get_close_matches(name, self.names, n=5, cutoff=0.6) if c not in folded]
        hint = f"; did you mean {', '.join(repr(c) for c in close[:5])}?" if close else ""
        raise UnknownNameError(f"unknown {self.what} {name!r}{hint}")


def parse_query(head: Optional[str], relation: str, tail: Optional[str]) -> NamedQuery:
    """Normalise a query: names lose surrounding whitespace (``triples.strip_name``, as in the dataset
    files); "?" or "" means the side to predict; exactly one side must be missing."""
    head, tail = (None if x is None else strip_name(x) for x in (head, tail))
    relation = strip_name(relation) if relation is not None else relation
    h = None if head in (None, "", "?") else head
    t = None if tail in (None, "", "?") else tail
    if (h is None) == (t is None):
        raise QueryError("give exactly one of head and tail: (head, relation, ?) or (?, relation, tail)")
    return h, relation, t


#: A query file larger than this is refused before it is read.
MAX_QUERY_FILE_BYTES = 256 << 20


def read_queries(path: str | Path) -> list[NamedQuery]:
    """Read a query file (format in the module docstring); errors name ``path:line``."""
    path = check_input_file(path, "query file", MAX_QUERY_FILE_BYTES)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    queries: list[NamedQuery] = []
    # lines end at "\n" only (a CR before it is dropped): Unicode line separators are part of a name
    for number, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise QueryError(f"{path}:{number}: expected 'head<TAB>relation<TAB>?' or '?<TAB>relation<TAB>tail'")
        try:
            queries.append(parse_query(parts[0].strip(), parts[1].strip(), parts[2].strip()))
        except QueryError as exc:
            raise QueryError(f"{path}:{number}: {exc}") from None
    if not queries:
        raise QueryError(f"{path}: no queries")
    return queries


def query_ids(queries: Sequence[NamedQuery], entity_names: Sequence[str], relation_names: Sequence[str],
              ) -> tuple[Tensor, Tensor]:
    """Named queries -> (b,) anchor entity ids and (b,) reciprocal relation ids in [0, 2R)."""
    ents, rels = NameIndex(entity_names, "entity"), NameIndex(relation_names, "relation")
    num_relations = len(relation_names)
    anchor, relation = [], []
    for h, r, t in queries:
        rid = rels(r)
        if h is not None:
            anchor.append(ents(h))
            relation.append(rid)
        else:
            anchor.append(ents(t))  # type: ignore[arg-type]
            relation.append(rid + num_relations)
    return torch.tensor(anchor, dtype=torch.int64), torch.tensor(relation, dtype=torch.int64)


def known_answers(filter_index, anchors: Tensor, relations: Tensor) -> tuple[Tensor, Tensor]:
    """(b,) anchors, (b,) reciprocal relations -> (rows (m,), entities (m,)) of known answers, on CPU.

    ``filter_index`` is a ``FilterIndex`` (anything with its ``.known``).
    """
    rows, entities = filter_index.known(anchors, relations)
    return rows.long().cpu(), entities.long().cpu()


@torch.no_grad()
def predict_ids(entity: Tensor, relation: Tensor, decoder: Decoder, anchors: Tensor, relations: Tensor,
                k: int = 10, known: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k tails of tail queries ``(anchor, relation, ?)``.

    ``entity`` (N, w_e), ``relation`` (2R, w_r); ``anchors``/``relations`` (b,).
    ``known`` = (rows, entities) pairs to exclude (filtered), or None.
    Returns ``(ids (b, k'), scores (b, k'), removed (b,))`` with ``k' = min(k, N)``;
    slots left after filtering hold id -1 and score -inf.
    """
    if k < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    device = entity.device
    scores = decoder.score_all(entity[anchors.to(device)], relation[relations.to(device)], entity)  # (b, N)
    removed = torch.zeros(anchors.shape[0], dtype=torch.int64)
    if known is not None and known[0].numel():
        rows, ents = known[0].to(device), known[1].to(device)
        scores = scores.index_put((rows, ents), torch.tensor(float("-inf"), device=device))
        hit = torch.zeros_like(scores, dtype=torch.bool).index_put((rows, ents), torch.tensor(True, device=device))
        removed = hit.sum(1).cpu()
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    ids = torch.where(torch.isinf(top.values) & (top.values < 0), torch.full_like(top.indices, -1), top.indices)
    return ids.cpu(), top.values.cpu(), removed


def predict(tables: tuple[Tensor, Tensor], decoder: Decoder, data, queries: Sequence[NamedQuery],
            k: int = 10, filtered: bool = True) -> list[Prediction]:
    """Answer named queries with the model tables ``(entity (N, w_e), relation (2R, w_r))``.

    ``data`` is a ``KGData`` (names and ``filter``).  A ``filter.npz`` that
    fails its integrity check raises ``DataError`` (never a silent rebuild).
    """
    queries = [parse_query(*q) for q in queries]
    anchors, relations = query_ids(queries, data.entity_names, data.relation_names)
    index = data.filter if filtered else None
    step = max(1, _MAX_CELLS // max(1, tables[0].shape[0]))  # queries per (chunk, N) score matrix
    parts = []
    for a, r in zip(anchors.split(step), relations.split(step)):  # loop over query chunks
        known = known_answers(index, a, r) if index is not None else None
        parts.append(predict_ids(tables[0], tables[1], decoder, a, r, k, known))
    ids, scores, removed = (torch.cat(x) for x in zip(*parts))
    out = []
    for i, q in enumerate(queries):
        keep = ids[i] >= 0
        ent = ids[i][keep].tolist()
        out.append(Prediction(q, "tail" if q[0] is not None else "head", ent,
                              [data.entity_names[e] for e in ent], scores[i][keep].tolist(),
                              filtered, int(removed[i])))
    return out
