"""Encode once, then rank: the dense teacher and the *true* pruned student.

The student is the model evaluated on ``weight * mask`` for every prunable
tensor, so both the query side and the candidate entity table are masked
(the reference code masked only the query side).  Evaluation encodes the
tables once under ``no_grad`` (one full-graph forward for R-GCN) and hands
them to the chunked filtered ranking of ``evaluation.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .evaluation import DEFAULT_BATCH_SIZE, Ranks, chunk_size, evaluate_ranking, model_score_fn
from .model import LinkPredictor
from .student import MaskedStudent
from .typing import MaskDict


@torch.no_grad()
def encode_tables(model: LinkPredictor, graph=None, masks: Optional[MaskDict] = None) -> tuple[Tensor, Tensor]:
    """-> (entity (N, w_e), relation (2R, w_r)) of the teacher, or of the student given masks."""
    was_training = model.training
    model.eval()
    try:
        params = dict(model.named_parameters())
        ent, rel = model.encode(graph, MaskedStudent(masks, params).weights(params) if masks else None)
    finally:
        model.train(was_training)
    return ent.detach(), rel.detach()


@torch.no_grad()
def rank_split(
    model: LinkPredictor,
    triples: Tensor,
    num_relations: int,
    filter_index,
    graph=None,
    masks: Optional[MaskDict] = None,
    max_memory_mb: int = 512,
    batch_size: int = 0,
    tables: Optional[tuple[Tensor, Tensor]] = None,
) -> Ranks:
    """Filtered realistic ranks of ``triples`` (n, 3), both sides."""
    ent, rel = tables if tables is not None else encode_tables(model, graph, masks)
    bs = batch_size or chunk_size(ent.shape[0], max_memory_mb)
    if not batch_size and ent.device.type == "cpu":
        bs = min(bs, DEFAULT_BATCH_SIZE)  # on CPU, chunks of 256-512 queries measured fastest
    fn = model_score_fn(ent, rel, model.decoder)
    return evaluate_ranking(fn, triples.to(ent.device), num_relations, filter_index, bs)
