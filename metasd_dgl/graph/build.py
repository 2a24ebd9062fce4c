"""The DGL graph of the training triples, with inverse relations and R-GCN norms.

For ``n`` training triples, ``R`` relations and ``N`` entities the graph has
``N`` nodes (isolated entities included) and ``E = 2n`` edges:

* edge ``i`` (``0 <= i < n``): ``h_i -> t_i`` with ``etype = r_i``;
* edge ``i + n``: ``t_i -> h_i`` with ``etype = r_i + R`` (its inverse).

``g.edata["etype"]`` is (E,) int64; ``g.edata["norm"]`` is (E, 1) float32,
``1 / in_degree(dst)`` counted over all ``2n`` edges, as in DGL's R-GCN
example (``dgl.norm_by_dst``); ``dst_norm`` computes it for any graph
(subgraphs recompute it the same way).  Because every triple sends one edge into each
of its ends, ``in_degree(e)`` equals the train degree of ``e``
(``metasd_dgl.data.stats.entity_degree``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from metasd_dgl.graph.dgl_import import dgl
from metasd_dgl.errors import DataError
from metasd_dgl.typing import HEAD, REL, TAIL


def build_graph(train: torch.Tensor, num_entities: int, num_relations: int) -> dgl.DGLGraph:
    """(n, 3) int64 train triples -> DGL graph described in the module docstring."""
    if train.ndim != 2 or train.shape[1] != 3:
        raise ValueError(f"train must be (n, 3), got {tuple(train.shape)}")
    train = train.to(torch.int64)
    if train.numel():
        ents = train[:, [HEAD, TAIL]]
        if int(ents.min()) < 0 or int(ents.max()) >= num_entities:
            raise ValueError("entity id out of range")
        if int(train[:, REL].min()) < 0 or int(train[:, REL].max()) >= num_relations:
            raise ValueError("relation id out of range")
    h, r, t = train[:, HEAD], train[:, REL], train[:, TAIL]
    src = torch.cat([h, t])  # (2n,)
    dst = torch.cat([t, h])  # (2n,)
    g = dgl.graph((src, dst), num_nodes=num_entities, idtype=torch.int64)
    g.edata["etype"] = torch.cat([r, r + num_relations])  # (2n,) int64
    g.edata["norm"] = dst_norm(g)
    return g


def dst_norm(g: dgl.DGLGraph) -> torch.Tensor:
    """(E, 1) float32: 1 / in-degree of each edge's destination (never 0: the edge enters it)."""
    in_deg = g.in_degrees().to(torch.float32)  # (N,)
    return (1.0 / in_deg[g.edges()[1]]).unsqueeze(1)


def save_graph(g: dgl.DGLGraph, path: Union[str, Path]) -> None:
    """Write ``g`` in DGL's binary format (``dgl.save_graphs``)."""
    dgl.save_graphs(str(path), [g])


def load_graph(path: Union[str, Path]) -> dgl.DGLGraph:
    """Read a graph written by ``save_graph``; missing or unreadable file -> DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        graphs, _ = dgl.load_graphs(str(path))
    except Exception as exc:  # DGL raises DGLError / RuntimeError on corrupt files
        raise DataError(f"{path}: not a readable DGL graph file ({type(exc).__name__})") from None
    if len(graphs) != 1:
        raise DataError(f"{path}: expected one graph, found {len(graphs)}")
    return graphs[0]
