"""DGL sampling for R-GCN training: edge-sampled subgraphs, edge dropout, negatives, quiz split.

Graph convention (``graph/build.py``): ``n`` training triples give ``2n``
edges; edge ``i < n`` is ``h -> t`` with ``etype = r`` and edge ``i + n`` is
its inverse ``t -> h`` with ``etype = r + R``; ``edata['etype']`` (E,) int64,
``edata['norm']`` (E, 1) float32 = 1 / in-degree of the destination.  A graph
returned here carries ``edata[dgl.EID]`` (ids in the input graph) and, when
its nodes are relabelled, ``ndata[dgl.NID]`` (entity ids), which the R-GCN
encoder uses to pick its input rows.

Randomness comes from the ``torch.Generator`` passed in (CPU generator; index
work is done on the CPU and moved to the graph's device).  DGL's ``Uniform``
negative sampler draws from torch's global RNG; ``seeded_torch_rng`` seeds it
from the generator and restores its state afterwards, so the draws are
deterministic and nothing process-wide is left changed (DGL's own RNG, which
``Uniform`` does not read, is never touched).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor

from metasd_dgl.typing import HEAD, TAIL
from metasd_dgl.graph.build import dst_norm
from metasd_dgl.graph.dgl_import import dgl


def _pair_count(graph: dgl.DGLGraph) -> int:
    if graph.num_edges() % 2:
        raise ValueError(f"expected 2n edges (triples then inverses), got {graph.num_edges()}")
    return graph.num_edges() // 2


def _with_entity_ids(sub: dgl.DGLGraph, parent: dgl.DGLGraph) -> dgl.DGLGraph:
    """Make ``sub.ndata[NID]`` name entities even when ``parent`` was itself relabelled."""
    if dgl.NID in parent.ndata and dgl.NID in sub.ndata:
        sub.ndata[dgl.NID] = parent.ndata[dgl.NID][sub.ndata[dgl.NID].long()]
    return sub


def to_local(graph: dgl.DGLGraph, ids: Tensor) -> Tensor:
    """Entity ids (any shape) -> node ids of ``graph`` (uses ``ndata[NID]`` when present).

    Raises ValueError if an id is not a node of ``graph``.
    """
    if dgl.NID not in graph.ndata:
        return ids
    nid = graph.ndata[dgl.NID].long()
    table = torch.full((int(nid.max()) + 1 if nid.numel() else 1,), -1, dtype=torch.long, device=nid.device)
    table[nid] = torch.arange(nid.numel(), device=nid.device)
    ids = ids.to(nid.device).long()
    local = table[ids.clamp(max=table.numel() - 1)]
    if ids.numel() and (bool((ids >= table.numel()).any()) or bool((local < 0).any())):
        raise ValueError("some ids are not nodes of the subgraph")
    return local


def edge_sampled_subgraph(
    graph: dgl.DGLGraph,
    train_triples: Tensor,
    batch_edge_ids: Tensor,
    generator: torch.Generator,
    edge_dropout: float,
    sample_size: Optional[int] = None,
    extra_nodes: Optional[Tensor] = None,
) -> tuple[dgl.DGLGraph, Tensor]:
    """The message graph for one batch of positives, relabelled to the nodes it needs.

    ``train_triples`` (n, 3): entity-id triples, row i = forward edge i of ``graph``.
    ``batch_edge_ids`` (b,): forward edge ids (= triple indices, < n) being predicted.
    Message-passing edges: ``sample_size`` training triples drawn uniformly among
    those *not* in the batch (all of them if None), of which a share
    ``edge_dropout`` is hidden; each kept triple brings its inverse edge too.
    Nodes: the endpoints of the kept edges, the batch's heads and tails and
    ``extra_nodes`` (e.g. negative candidates, any shape), so that every
    entity the loss needs has a row.  ``norm`` is recomputed on the subgraph.

    Returns ``(subgraph, local)``: ``local`` (b, 2) = node ids of the batch's
    (head, tail) in the subgraph; map other entities with ``to_local``.
    """
    n = _pair_count(graph)
    if train_triples.shape[0] != n:
        raise ValueError(f"graph has {2 * n} edges but {train_triples.shape[0]} training triples")
    if not 0.0 <= edge_dropout < 1.0:
        raise ValueError(f"edge_dropout={edge_dropout} must be in [0, 1)")
    batch = batch_edge_ids.cpu().long()
    if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= n):
        raise ValueError(f"batch edge ids must be forward edges in [0, {n})")
    hidden = torch.zeros(n, dtype=torch.bool)
    hidden[batch] = True
    candidates = torch.nonzero(~hidden).squeeze(1)
    count = candidates.numel() if sample_size is None else min(sample_size, candidates.numel())
    keep = round((1.0 - edge_dropout) * count)
    chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:keep]].sort().values
    eids = torch.cat([chosen, chosen + n]).to(graph.device)
    sub = dgl.edge_subgraph(graph, eids, relabel_nodes=False, store_ids=True)
    triples = train_triples.cpu()[batch]
    needed = [triples[:, HEAD], triples[:, TAIL]]
    if extra_nodes is not None:
        needed.append(extra_nodes.cpu().long().reshape(-1))
    preserve = torch.unique(torch.cat(needed)).to(graph.device)
    if dgl.NID in graph.ndata:  # graph already relabelled: entity ids -> its node ids
        preserve = to_local(graph, preserve)
    compact = dgl.compact_graphs(sub, always_preserve=preserve.to(sub.idtype))
    compact = _with_entity_ids(compact, graph)
    compact.edata["norm"] = dst_norm(compact)
    local = to_local(compact, torch.stack([triples[:, HEAD], triples[:, TAIL]], dim=1))
    return compact, local


def without_edges(graph: dgl.DGLGraph, edge_ids: Tensor) -> dgl.DGLGraph:
    """``graph`` without the training triples ``edge_ids`` (forward ids < n; both directions go).

    Every node is kept (ids unchanged, so the output rows are the entities in
    order: use it for 1-N scoring).  ``edata[dgl.EID]`` maps to ``graph``'s
    edges; ``norm`` is recomputed.
    """
    n = _pair_count(graph)
    keep = torch.ones(n, dtype=torch.bool)
    keep[edge_ids.cpu().long()] = False
    kept = torch.nonzero(keep).squeeze(1)
    eids = torch.cat([kept, kept + n]).to(graph.device)
    sub = dgl.edge_subgraph(graph, eids, relabel_nodes=False, store_ids=True)
    sub.edata["norm"] = dst_norm(sub)
    return sub


def full_graph_dropout(
    graph: dgl.DGLGraph,
    rate: float,
    generator: torch.Generator,
    exclude_edge_ids: Optional[Tensor] = None,
) -> dgl.DGLGraph:
    """Hide a random share ``rate`` of the training triples, and ``exclude_edge_ids``, from message passing.

    ``without_edges`` of the drawn triples plus ``exclude_edge_ids`` (forward
    ids < n, e.g. the batch's positives); the draw is ``round(rate * n)``
    triples from ``generator``.
    """
    n = _pair_count(graph)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate={rate} must be in [0, 1)")
    dropped = torch.randperm(n, generator=generator)[: round(rate * n)]
    if exclude_edge_ids is not None:
        dropped = torch.cat([dropped, exclude_edge_ids.cpu().long()])
    return without_edges(graph, dropped)


@contextmanager
def seeded_torch_rng(generator: torch.Generator, device: Optional[torch.device] = None) -> Iterator[int]:
    """Seed torch's global RNG from ``generator`` for the block (its state restored on exit); yields the seed."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    devices: list = []
    if device is not None and torch.device(device).type == "cuda":
        devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield seed


def negative_tails(graph: dgl.DGLGraph, eids: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(b,) edge ids -> (b, k) corrupted tails drawn uniformly from ``graph``'s nodes.

    DGL's ``negative_sampler.Uniform`` (k candidates per edge, the edge's
    source kept), seeded from ``generator`` (deterministic).  Ids are nodes of
    ``graph``: local ids for a relabelled subgraph (corrupt within the batch's
    subgraph, as DGL's R-GCN example), entity ids for the full graph (then add
    them to the subgraph through ``edge_sampled_subgraph(extra_nodes=...)``).
    Use inverse edge ids (``i + n``) to corrupt heads.
    """
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    eids = eids.to(graph.device).to(graph.idtype)
    with seeded_torch_rng(generator, graph.device):
        _, neg_dst = dgl.dataloading.negative_sampler.Uniform(k)(graph, eids)
    return neg_dst.long().reshape(-1, k)


def quiz_split(num_train: int, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Seeded random split of ``range(num_train)`` -> (train_idx, quiz_idx), each sorted, disjoint, covering.

    The quiz holds ``round(fraction * num_train)`` triples (at least 1, at most
    ``num_train - 1``); build the message graph from ``train_idx`` only.
    """
    if num_train < 2:
        raise ValueError(f"need at least 2 training triples to hold out a quiz, got {num_train}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1)")
    size = min(max(1, round(fraction * num_train)), num_train - 1)
    perm = torch.randperm(num_train, generator=generator)
    return perm[size:].sort().values, perm[:size].sort().values
