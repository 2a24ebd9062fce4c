"""What the training loop feeds the steps: the training queries, the MetaSD quiz, each batch's inputs.

Every training triple ``i`` gives two reciprocal queries, ``(h, r, ?)`` and ``(t, r + R, ?)``; they are
graph edges ``i`` and ``i + n`` of the training graph (the triple and its inverse), so a query's own edge
can be hidden from R-GCN message passing.  For MetaSD a seeded random slice of train is the quiz: it is
removed from the training queries and hidden from training message passing (evaluation sees every edge).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from metasd_dgl.data.triples import reciprocal_queries
from metasd_dgl.graph.sampling import edge_sampled_subgraph, full_graph_dropout, negative_tails, quiz_split, to_local


@dataclass(frozen=True)
class Examples:
    queries: Tensor  # (2n', 3) reciprocal queries of the training triples the steps learn from
    pair: Tensor  # (2n',) the triple id (forward edge) of each query
    edge: Tensor  # (2n',) the graph edge of each query: the triple, or its inverse at id + n
    hidden: Tensor  # triple ids training message passing never sees (the quiz)
    quiz: Optional[Tensor]  # (2q, 3) the quiz queries, or None without a quiz

    @classmethod
    def split(cls, train: Tensor, num_relations: int, quiz_fraction: Optional[float],
              generator: torch.Generator) -> "Examples":
        """``train`` (n, 3) -> the examples; ``quiz_fraction`` (MetaSD) holds out a seeded slice as the quiz."""
        n = len(train)
        kept, quiz, hidden = torch.arange(n), None, torch.zeros(0, dtype=torch.int64)
        if quiz_fraction is not None:
            kept, hidden = quiz_split(n, quiz_fraction, generator)
            quiz = reciprocal_queries(train[hidden], num_relations)
        return cls(reciprocal_queries(train[kept], num_relations), torch.cat([kept, kept]),
                   torch.cat([kept, kept + n]), hidden, quiz)

    def __len__(self) -> int:
        return len(self.queries)

    def quiz_batch(self, size: int, generator: torch.Generator) -> Optional[Tensor]:
        """``size`` quiz queries drawn with replacement (None without a quiz)."""
        if self.quiz is None:
            return None
        return self.quiz[torch.randint(len(self.quiz), (min(size, len(self.quiz)),), generator=generator)]


@dataclass(frozen=True)
class BatchInputs:
    """One batch's inputs: ``(queries (b, 3), message graph or None, negatives (b, k) or None)``.

    1-N: R-GCN runs on the message graph with ``edge_dropout`` of its triples hidden, the batch's own
    triples always among them (a triple is never predicted from itself).  Negative sampling: DGL's
    uniform sampler corrupts the tail of each example's graph edge; R-GCN then runs on an edge-sampled
    subgraph and ids become the subgraph's node ids.
    """

    examples: Examples
    graph: Any  # the training graph (DGL), None when neither R-GCN nor negative sampling needs it
    train: Tensor  # (n, 3) all training triples (the subgraph sampler's edge list)
    device: torch.device
    rgcn: bool
    negative_sampling: bool
    edge_dropout: float
    num_negatives: int
    sample_edges: int  # 0 = every message edge

    def __call__(self, idx: Tensor, gen: torch.Generator) -> Tuple[Tensor, Any, Optional[Tensor]]:
        ex = self.examples
        batch = ex.queries[idx]
        if not self.negative_sampling:
            graph = None
            if self.rgcn:
                graph = full_graph_dropout(self.graph, self.edge_dropout, gen,
                                           exclude_edge_ids=torch.cat([ex.hidden, ex.pair[idx]]))
            return batch.to(self.device), graph, None
        negatives = negative_tails(self.graph, ex.edge[idx].to(self.device), self.num_negatives, gen)
        if not self.rgcn:
            return batch.to(self.device), None, negatives.to(self.device)
        sub, _ = edge_sampled_subgraph(self.graph, self.train, ex.pair[idx], gen, self.edge_dropout,
                                       sample_size=self.sample_edges or None,
                                       extra_nodes=torch.cat([batch[:, 0], batch[:, 2], negatives.reshape(-1).cpu()]))
        local = batch.clone()
        local[:, 0] = to_local(sub, batch[:, 0])
        local[:, 2] = to_local(sub, batch[:, 2])
        neg_local = to_local(sub, negatives.reshape(-1)).view_as(negatives)
        return local.to(self.device), sub, neg_local.to(self.device)
