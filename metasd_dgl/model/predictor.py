"""LinkPredictor = encoder (lookup tables or R-GCN) + decoder (score function).

The model is written so that every forward pass can run *functionally* on a
dictionary of parameters (``torch.func.functional_call``): the MetaSD student
is the same module evaluated on ``{name: weight * mask}``, and the virtual
student on weights that are a differentiable function of the teacher's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metasd_dgl.model.decoders import DECODERS, Decoder
from metasd_dgl.model.lookup import LookupEncoder
from metasd_dgl.typing import HEAD, REL, TAIL, ParamDict

if TYPE_CHECKING:
    from metasd_dgl.config import Config


class LinkPredictor(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, graph=None, weights: Optional[ParamDict] = None) -> tuple[Tensor, Tensor]:
        """-> entity rows (N, w_e), reciprocal relation rows (2R, w_r).

        weights: ``{"encoder.<name>": tensor}`` overriding the encoder's own
        (the student, a virtual student); ``None`` uses the module's weights.
        """
        if weights is None:
            return self.encoder(graph)
        encoder_weights = {n[len("encoder."):]: w for n, w in weights.items() if n.startswith("encoder.")}
        return functional_call(self.encoder, encoder_weights, (graph,), strict=False)

    def forward(self, queries: Tensor, graph=None) -> Tensor:
        """(b, 2) or (b, 3) (head, relation[, tail]) -> (b, N) scores of every tail."""
        ent, rel = self.encode(graph)
        return self.decoder.score_all(ent[queries[:, HEAD]], rel[queries[:, REL]], ent)

    def score_triples(self, triples: Tensor, graph=None) -> Tensor:
        """(n, 3) -> (n,) scores."""
        ent, rel = self.encode(graph)
        return self.decoder.score(ent[triples[:, HEAD]], rel[triples[:, REL]], ent[triples[:, TAIL]])

    def prunable_names(self) -> list[str]:
        """Names of the parameters that pruning masks (``encoder.<prunable>``)."""
        prunable = getattr(self.encoder, "prunable", ())
        names = [n for n, _ in self.named_parameters()]
        return [n for n in names if any(n == f"encoder.{p}" or n.startswith(f"encoder.{p}.") for p in prunable)]


def call(model: nn.Module, params: ParamDict, *args, **kwargs):
    """``model(*args, **kwargs)`` evaluated on ``params`` (missing names keep the module's)."""
    return functional_call(model, params, args, kwargs, strict=False)


def build_model(
    encoder: str,
    decoder: str,
    num_entities: int,
    num_relations: int,
    dim: int,
    init_scale: float = 1e-3,
    generator: Optional[torch.Generator] = None,
    rgcn_options: Optional[dict] = None,
) -> LinkPredictor:
    """Build a model on CPU (move it with ``.to(device)``).

    ``num_relations`` is the dataset's R; the relation table holds 2R rows.
    """
    dec = DECODERS[decoder]()
    if encoder == "kge":
        enc = LookupEncoder(
            num_entities, num_relations, dec.entity_width(dim), dec.relation_width(dim),
            init_scale, generator,
        )
    elif encoder == "rgcn":
        from metasd_dgl.model.rgcn import RGCNEncoder

        enc = RGCNEncoder(
            num_entities, num_relations, dec.entity_width(dim), dec.relation_width(dim),
            generator=generator, **(rgcn_options or {}),
        )
    else:
        raise ValueError(f"unknown encoder {encoder!r}")
    return LinkPredictor(enc, dec)


def make_model(cfg: "Config", num_entities: int, num_relations: int,
                generator: Optional[torch.Generator] = None) -> LinkPredictor:
    """The model a config's ``model`` (and, for R-GCN, ``rgcn``) section describes (on CPU)."""
    m, r = cfg.model, cfg.rgcn
    rgcn = dict(num_layers=r.num_layers, num_bases=r.num_bases, decomposition=r.decomposition, dropout=r.dropout)
    return build_model(m.encoder, m.decoder, num_entities, num_relations, m.dim, m.init_scale,
                       generator, rgcn_options=rgcn)
