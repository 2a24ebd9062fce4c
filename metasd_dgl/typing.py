"""Typed aliases and shape conventions used across metasd-dgl.

Shapes in docstrings use: ``n`` triples, ``b`` queries in a batch, ``N``
entities, ``R`` relations of the dataset, ``2R`` relations with their
reciprocals, ``w`` the real width of an embedding row.

Relations are *reciprocal*: relation ``r`` in ``[0, R)`` is the dataset's
relation and ``r + R`` its inverse.  Every query is a tail query: the head
query ``(?, r, t)`` is asked as ``(t, r + R, ?)``
(``metasd_dgl.data.triples.reciprocal_queries``).
"""
from __future__ import annotations

from typing import Dict, Literal

import torch

#: (n, 3) int64 tensor of (head, relation, tail) ids.
Triples = torch.LongTensor
#: (b,) int64 tensor of ids.
Ids = torch.LongTensor
#: Named parameter tensors, as in ``model.named_parameters()``.
ParamDict = Dict[str, torch.Tensor]
#: Boolean masks keyed by parameter name (True = weight kept).
MaskDict = Dict[str, torch.Tensor]
#: Which side of a triple is predicted.
Target = Literal["head", "tail"]

HEAD, REL, TAIL = 0, 1, 2
