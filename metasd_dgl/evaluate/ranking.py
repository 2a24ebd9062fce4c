"""Exact filtered ranking against all entities, and the metrics built on it.

Every query is a tail query ``(head, relation, target)`` with relations in
``[0, 2R)``; the head query ``(?, r, t)`` of a triple is asked as
``(t, r + R, ?)`` (``metasd_dgl.data.triples.reciprocal_queries``).  Ranks
are *realistic*: the mean of the optimistic rank ``1 + #{e: s_e > s_target}``
and the pessimistic rank ``#{e: s_e >= s_target}`` (target included), i.e. the
expected rank under a random order of ties, as in PyKEEN.  Filtering drops every entity known to be
true for the query (train+valid+test, ``FilterIndex``) except the target.

A model is ranked by ``rank_split``: its tables are encoded once under
``no_grad`` (one full-graph forward for R-GCN) -- the dense teacher, or the
*true* student (``student.checkpoint_student``: both the query side and the
candidate entity table masked).  ``rank_split_reference`` scores as the
reference code did (query side masked, candidate table dense, prune rate 0.8
recomputed from the teacher by ``pruning.make_masks``), to show how its
published figures arise.

Queries are processed in chunks; per chunk one ``(chunk, N)`` score matrix
exists (whatever the score function allocates aside), counted in place, and
the only Python loops are over chunks (and, in ``summarize``, over bucket
kinds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from metasd_dgl.data.filters import FilterIndex
from metasd_dgl.data.triples import reciprocal_queries
from metasd_dgl.model.student import checkpoint_student
from metasd_dgl.typing import HEAD, REL, TAIL, MaskDict

if TYPE_CHECKING:
    from metasd_dgl.model.predictor import LinkPredictor

#: (b, 2) int64 ``[head, relation]`` query rows -> (b, N) scores of every candidate tail.
ScoreFn = Callable[[Tensor], Tensor]

HITS_AT = (1, 3, 10)
#: Default queries per chunk: a (512, N) float32 chunk stays cache-friendly on CPU.
DEFAULT_BATCH_SIZE = 512
#: Bytes per (query, entity) cell counted by ``chunk_size``: the float32
#: score and up to two float32 temporaries of the score function (distance
#: decoders); the ranking itself works in place on the scores.
BYTES_PER_CELL = 4 + 2 * 4


def chunk_size(num_entities: int, max_memory_mb: float, bytes_per_cell: int = BYTES_PER_CELL) -> int:
    """Queries per chunk so that a chunk's ``(chunk, N)`` buffers fit ``max_memory_mb``.

    >= 1 whatever the cap (one query row must always fit).
    """
    cap = float(max_memory_mb) * 2 ** 20
    return max(1, int(cap // (max(1, int(num_entities)) * bytes_per_cell)))


@torch.no_grad()
def rank_queries(
    score_fn: ScoreFn,
    queries: Tensor,
    filter: Optional[FilterIndex] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """Realistic (filtered) rank of each query's target.

    ``queries`` (m, 3) int64 ``[head, relation, target]``; ``score_fn`` gets
    ``queries[i:j, :2]`` (b, 2) and must return a *fresh* (b, N) float tensor
    (it is overwritten in place).  ``filter``: known-true index; None ranks
    unfiltered.  Returns (m,) float64 ranks on the CPU, in ``[1, N]``.

    Raises ValueError if a score is NaN (filtered cells included).  Filtered
    cells drop out of both counts, also when the target's own score is -inf.
    """
    if queries.dim() != 2 or queries.shape[1] != 3:
        raise ValueError(f"queries must be (m, 3), got {tuple(queries.shape)}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    m = queries.shape[0]
    out = torch.empty(m, dtype=torch.float64)
    for start in range(0, m, batch_size):
        q = queries[start:start + batch_size]
        c = q.shape[0]
        scores = score_fn(q[:, :2])
        if scores.dim() != 2 or scores.shape[0] != c:
            raise ValueError(f"score_fn returned {tuple(scores.shape)}, expected ({c}, N)")
        if scores.dtype not in (torch.float32, torch.float64):
            scores = scores.float()
        elif scores._base is not None or not scores.is_contiguous():
            scores = scores.clone(memory_format=torch.contiguous_format)  # never write into a caller's view
        out[start:start + c] = _rank_chunk(scores, q.to(scores.device), filter, start)
        del scores
    return out


def _rank_chunk(scores: Tensor, q: Tensor, filter: Optional[FilterIndex], offset: int) -> Tensor:
    """(c, N) fresh scores (overwritten), (c, 3) queries -> (c,) float64 realistic ranks.

    With ``d_e = sign(s_e - s_target)`` in {-1, 0, 1} summed over the ``V``
    candidates left after filtering (target included),
    ``optimistic + pessimistic = (1 + #{d > 0}) + (#{d > 0} + #{d = 0})
    = 1 + V + sum_e d_e``.  So a chunk costs four vectorised passes (a
    read-only NaN check, then in place: subtract, sign, row sum) and no
    comparison buffer; the known cells' signs are gathered (k values) and
    taken out of the sums.  The sign of ``s - t`` is exact for finite ``t``
    (IEEE subtraction keeps the sign, overflow gives +-inf; flushing
    denormals to zero would break ties below 1e-38).  Rows whose target score
    is +-inf take the comparison path.  ``sign(NaN)`` is 0 in torch, hence
    the NaN check first.
    """
    c, n_ent = scores.shape
    device = scores.device
    target = q[:, TAIL]
    rows = torch.arange(c, device=device)
    true_score = scores[rows, target]  # (c,)
    _check_nan(scores, offset)
    acc = torch.float64 if (scores.dtype == torch.float32 and n_ent >= 2 ** 24) else scores.dtype
    available = torch.full((c,), n_ent, dtype=torch.float64, device=device)  # V
    if filter is not None:
        if filter.num_entities != n_ent:
            raise ValueError(f"filter has {filter.num_entities} entities, scores have {n_ent}")
        flat, count = filter.known_flat(q[:, HEAD], q[:, REL], n_ent)  # (k,), (c,)
        flat, count = flat.to(device), count.to(device)
        target_flat = rows * n_ent + target
        pos = torch.searchsorted(flat, target_flat).clamp_(max=max(flat.shape[0] - 1, 0))
        target_known = (flat[pos] == target_flat) if flat.numel() else torch.zeros_like(target, dtype=torch.bool)
        available -= count - target_known.to(count.dtype)
    odd = (~torch.isfinite(true_score)).nonzero().squeeze(1)
    odd_ranks = _compare_ranks(scores, target, odd, flat if filter is not None else None) if odd.numel() else None
    scores.sub_(true_score.unsqueeze(1)).sign_()
    total = scores.sum(1, dtype=acc).to(torch.float64)  # (c,)
    if filter is not None and flat.numel():
        # take the known cells out (the target's own sign is 0): segment sums via one cumsum
        csum = torch.cat([flat.new_zeros(1, dtype=torch.float64),
                          torch.cumsum(scores.view(-1)[flat], 0, dtype=torch.float64)])
        ends = torch.cumsum(count, 0)
        total -= csum[ends] - csum[ends - count]
    ranks = (available + 1 + total) * 0.5
    if odd_ranks is not None:
        ranks[odd] = odd_ranks
    return ranks.cpu()


def _check_nan(scores: Tensor, offset: int) -> None:
    """ValueError naming the first query whose row holds a NaN (filtered cells included).

    A row sum is NaN whenever the row holds a NaN: one read-only vectorised
    pass; only flagged rows (NaN, or +inf and -inf together) get the exact test.
    """
    suspect = torch.isnan(scores.sum(1)).nonzero().squeeze(1)
    if suspect.numel():
        bad = torch.isnan(scores[suspect]).any(1)
        if bool(bad.any()):
            raise ValueError(f"score function returned NaN for query {offset + int(suspect[bad][0])}")


def _compare_ranks(scores: Tensor, target: Tensor, rows: Tensor, flat: Optional[Tensor]) -> Tensor:
    """Realistic ranks by comparison for the (o,) ``rows`` of a chunk (targets scored +-inf).

    ``target`` (c,) target ids; ``flat``: known cells (``known_flat``), set to
    NaN in a copy of the rows (NaN compares false both ways), target restored.
    """
    n_ent = scores.shape[1]
    sub = scores[rows]  # (o, N) copy
    local = torch.arange(rows.shape[0], device=scores.device)
    column = sub[local, target[rows]].unsqueeze(1)  # (o, 1)
    if flat is not None and flat.numel():
        where = torch.full((scores.shape[0],), -1, dtype=torch.int64, device=scores.device)
        where[rows] = local
        pos = where[flat // n_ent]
        sel = pos >= 0
        sub[pos[sel], flat[sel] % n_ent] = math.nan
        sub[local, target[rows]] = column.squeeze(1)
    better = (sub > column).sum(1)
    not_worse = (sub >= column).sum(1)  # target included
    return (better + not_worse + 1).to(torch.float64) * 0.5


@dataclass
class Ranks:
    """Realistic ranks of n triples: ``tail`` (n,) of ``(h, r, ?)``, ``head`` (n,) of ``(?, r, t)``."""

    tail: Tensor
    head: Tensor

    def both(self) -> Tensor:
        """(2n,) tail ranks then head ranks."""
        return torch.cat([self.tail, self.head])


def evaluate_ranking(
    score_fn: ScoreFn,
    triples: Tensor,
    num_relations: int,
    filter: Optional[FilterIndex] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Ranks:
    """Filtered realistic ranks of (n, 3) ``triples`` on both sides (R = ``num_relations``)."""
    queries = reciprocal_queries(triples.to(torch.int64), num_relations)  # (2n, 3)
    ranks = rank_queries(score_fn, queries, filter, batch_size)
    n = triples.shape[0]
    return Ranks(tail=ranks[:n], head=ranks[n:])


def model_score_fn(entity: Tensor, relation: Tensor, decoder, candidates: Optional[Tensor] = None) -> ScoreFn:
    """ScoreFn over already-encoded tables: ``entity`` (N, w_e), ``relation`` (2R, w_r).

    For a pruned student pass the masked tables: candidates and queries are
    then both the student's, and the teacher and student share this path.
    ``candidates`` (N, w_e): another entity table to score the query rows
    against (default ``entity``); the reference protocol passes the teacher's.
    """
    cand = entity if candidates is None else candidates

    def score(hr: Tensor) -> Tensor:
        hr = hr.to(entity.device)
        return decoder.score_all(entity[hr[:, 0]], relation[hr[:, 1]], cand)

    return score


# --------------------------------------------------------------------- metrics
# ------------------------------------------------------------- a model's tables, ranked
@torch.no_grad()
def encode_tables(model: "LinkPredictor", graph=None,
                  weights: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Tensor]:
    """-> (entity (N, w_e), relation (2R, w_r)) of the teacher, or of the model on ``weights``
    (the true student: ``student.checkpoint_student``)."""
    was_training = model.training
    model.eval()
    try:
        ent, rel = model.encode(graph, weights)
    finally:
        model.train(was_training)
    return ent.detach(), rel.detach()


@torch.no_grad()
def rank_split(
    model: "LinkPredictor",
    triples: Tensor,
    num_relations: int,
    filter_index,
    graph=None,
    weights: Optional[dict[str, Tensor]] = None,
    max_memory_mb: int = 512,
    tables: Optional[tuple[Tensor, Tensor]] = None,
    candidates: Optional[Tensor] = None,
) -> Ranks:
    """Filtered realistic ranks of ``triples`` (n, 3), both sides, of the model on ``weights``
    (``None``: its own, the teacher).

    ``candidates`` (N, w_e): score the query rows (from ``tables`` / the encoding) against this
    entity table instead of their own (``reference_protocol``).
    """
    ent, rel = tables if tables is not None else encode_tables(model, graph, weights)
    bs = chunk_size(ent.shape[0], max_memory_mb)
    if ent.device.type == "cpu":
        bs = min(bs, DEFAULT_BATCH_SIZE)  # on CPU, chunks of 256-512 queries measured fastest
    fn = model_score_fn(ent, rel, model.decoder, candidates)
    return evaluate_ranking(fn, triples.to(ent.device), num_relations, filter_index, bs)


#: The prune rate at which the reference code reported its student.
REFERENCE_PRUNE_RATE = 0.8


@torch.no_grad()
def rank_split_reference(
    model: "LinkPredictor",
    triples: Tensor,
    num_relations: int,
    filter_index,
    masks: MaskDict,
    graph=None,
    max_memory_mb: int = 512,
) -> Ranks:
    """The reference code's "student" score: the query side masked, the candidates dense.

    The query rows ``h``, ``r`` come from the masked (student) tables, the
    candidate entity table from the unmasked teacher:
    ``decoder.score_all(h_student, r_student, E_teacher)``.  This is not a
    compressed model (it needs every teacher weight); ``rank_split`` with the
    same masks scores the true student.
    """
    teacher_entity, _ = encode_tables(model, graph)
    student = checkpoint_student(dict(model.named_parameters()), masks)
    return rank_split(model, triples, num_relations, filter_index, tables=encode_tables(model, graph, student),
                      max_memory_mb=max_memory_mb, candidates=teacher_entity)


def metrics(ranks: Tensor) -> dict[str, Optional[float]]:
    """(n,) ranks -> mrr, mr, hits@1/3/10 (share of ranks <= k) and count (None values when n = 0)."""
    r = ranks.to(torch.float64).reshape(-1)
    if r.numel() == 0:
        return {"mrr": None, "mr": None, **{f"hits@{k}": None for k in HITS_AT}, "count": 0}
    out = {"mrr": float(r.reciprocal().mean()), "mr": float(r.mean())}
    out.update({f"hits@{k}": float((r <= k).to(torch.float64).mean()) for k in HITS_AT})
    out["count"] = int(r.numel())
    return out


def _grouped_metrics(ranks: Tensor, ids: Tensor, labels: Sequence[str]) -> dict[str, dict]:
    """Metrics per label of (M,) ``ids`` over (M,) ``ranks``, via bincount (no loop over ranks)."""
    size = max(len(labels), int(ids.max()) + 1 if ids.numel() else 0)
    r = ranks.to(torch.float64)
    count = torch.bincount(ids, minlength=size).to(torch.float64)
    sums = {"mrr": torch.bincount(ids, r.reciprocal(), minlength=size),
            "mr": torch.bincount(ids, r, minlength=size)}
    for k in HITS_AT:
        sums[f"hits@{k}"] = torch.bincount(ids, (r <= k).to(torch.float64), minlength=size)
    names = list(labels) + [str(i) for i in range(len(labels), size)]
    table = {name: (sums[name] / count.clamp_min(1)).tolist() for name in sums}
    out: dict[str, dict] = {}
    for j, label in enumerate(names):  # loop over bucket labels only
        n = int(count[j])
        out[label] = {name: (table[name][j] if n else None) for name in sums}
        out[label]["count"] = n
    return out


BucketSpec = Union[Tensor, tuple]


def summarize(ranks: Ranks, buckets: Optional[Mapping[str, BucketSpec]] = None) -> dict:
    """JSON-ready summary: ``both``, ``head``, ``tail`` metrics and per-bucket metrics.

    ``buckets`` maps a bucket kind to ``(ids, labels)`` (or bare ``ids``,
    labelled by number): ``ids`` is (n,) one label index per triple, used for
    both sides, or (2n,) one per (triple, side) ordered tail-then-head as
    ``Ranks.both()``.  Bucket metrics are over both sides.
    """
    both = ranks.both()
    n = ranks.tail.shape[0]
    out: dict = {"both": metrics(both), "head": metrics(ranks.head), "tail": metrics(ranks.tail)}
    if buckets:
        out["buckets"] = {}
        for kind, spec in buckets.items():
            ids, labels = (spec, None) if isinstance(spec, Tensor) else (spec[0], spec[1])
            ids = torch.as_tensor(ids, dtype=torch.int64).cpu().reshape(-1)
            if ids.shape[0] == n:
                ids = torch.cat([ids, ids])
            elif ids.shape[0] != 2 * n:
                raise ValueError(f"bucket {kind!r}: expected {n} or {2 * n} ids, got {ids.shape[0]}")
            if ids.numel() and int(ids.min()) < 0:
                raise ValueError(f"bucket {kind!r}: negative label index")
            out["buckets"][kind] = _grouped_metrics(both, ids, list(labels) if labels is not None else [])
    return out


def _fmt(value, places: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{places}f}" if isinstance(value, float) else str(value)


def _rows_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_table(summaries: Mapping[str, dict]) -> str:
    """Readable text: one row per model and side (MRR, MR, H@1/3/10, count), then buckets.

    ``summaries`` maps a model name to a ``summarize`` result (a single
    ``summarize`` result is also accepted).  Bucket sections list MRR and
    H@10 per label, one column pair per model.
    """
    if "both" in summaries and isinstance(summaries.get("both"), dict) and "mrr" in summaries["both"]:
        summaries = {"model": summaries}
    header = ["model", "side", "MRR", "MR", "H@1", "H@3", "H@10", "count"]
    rows = []
    for name, s in summaries.items():
        for side in ("both", "head", "tail"):
            if side in s:
                m = s[side]
                rows.append([name, side, _fmt(m["mrr"]), _fmt(m["mr"], 1), _fmt(m["hits@1"]),
                             _fmt(m["hits@3"]), _fmt(m["hits@10"]), str(m["count"])])
    parts = [_rows_table(header, rows)]
    kinds = [k for s in summaries.values() for k in s.get("buckets", {})]
    for kind in dict.fromkeys(kinds):
        labels = list(dict.fromkeys(lab for s in summaries.values() for lab in s.get("buckets", {}).get(kind, {})))
        head = [f"bucket: {kind}"]
        for name in summaries:
            head += [f"{name} MRR", f"{name} H@10", f"{name} n"]
        brows = []
        for lab in labels:
            row = [lab]
            for s in summaries.values():
                m = s.get("buckets", {}).get(kind, {}).get(lab, {})
                row += [_fmt(m.get("mrr")), _fmt(m.get("hits@10")), str(m.get("count", 0))]
            brows.append(row)
        parts.append(_rows_table(head, brows))
    return "\n\n".join(parts)
