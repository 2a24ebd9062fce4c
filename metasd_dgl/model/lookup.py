"""Shallow embeddings: the KGE "encoder" is a pair of lookup tables."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class LookupEncoder(nn.Module):
    """Entity table ``entity`` (N, w_e) and reciprocal relation table ``relation`` (2R, w_r).

    ``forward`` ignores the graph and returns both tables, so that the KGE and
    R-GCN encoders share one interface: ``encoder(graph) -> (entities, relations)``.
    """

    prunable = ("entity", "relation")

    def __init__(self, num_entities: int, num_relations: int, entity_width: int, relation_width: int,
                 init_scale: float, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.entity = nn.Parameter(torch.randn(num_entities, entity_width, generator=generator) * init_scale)
        self.relation = nn.Parameter(torch.randn(2 * num_relations, relation_width, generator=generator) * init_scale)

    def forward(self, graph=None) -> tuple[Tensor, Tensor]:
        return self.entity, self.relation
