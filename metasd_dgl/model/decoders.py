"""Score functions ("interactions"): ComplEx, DistMult, RotatE, TransE.

Every decoder is stateless and offers two paths:

* ``score(h, r, t)``: broadcasting, ``(..., w)`` rows in, ``(...)`` scores out.
* ``score_all(h, r, entities)``: ``(b, w)`` query rows against every candidate
  row ``(N, w)`` -> ``(b, N)`` scores, as one matrix product (bilinear models)
  or one expanded squared-distance product (distance models), never a loop over entities.

Embedding widths: ``entity_width(dim)`` and ``relation_width(dim)`` give the
number of real columns a table needs for a model of dimension ``dim``; for
the complex models ``dim`` counts complex numbers (as in PyKEEN and kbc's
``rank``), stored as ``[real | imaginary]`` halves.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


class Decoder(nn.Module):
    """Base class; subclasses implement ``score`` and ``score_all``."""

    name = "base"
    #: "bilinear" models regularise with N3/DURA; "distance" models do not.
    kind = "bilinear"

    def entity_width(self, dim: int) -> int:
        return dim

    def relation_width(self, dim: int) -> int:
        return dim

    def score(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def score_all(self, h: Tensor, r: Tensor, entities: Tensor) -> Tensor:
        raise NotImplementedError


class DistMult(Decoder):
    """<h, r, t> = sum_i h_i r_i t_i (Yang et al. 2015)."""

    name = "distmult"

    def score(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return (h * r * t).sum(-1)

    def score_all(self, h: Tensor, r: Tensor, entities: Tensor) -> Tensor:
        return (h * r) @ entities.t()

    def score_relations(self, h: Tensor, t: Tensor, relations: Tensor) -> Tensor:
        """``(b, w)`` heads and tails against every relation row ``(2R, w)`` -> ``(b, 2R)``."""
        return (h * t) @ relations.t()


class ComplEx(Decoder):
    """Re(<h, r, conj(t)>) (Trouillon et al. 2016); width 2 * dim."""

    name = "complex"

    def entity_width(self, dim: int) -> int:
        return 2 * dim

    def relation_width(self, dim: int) -> int:
        return 2 * dim

    @staticmethod
    def query(h: Tensor, r: Tensor) -> Tensor:
        """h * r as complex numbers, so that score = <query, t> over reals."""
        hr, hi = _halves(h)
        rr, ri = _halves(r)
        return torch.cat([hr * rr - hi * ri, hr * ri + hi * rr], dim=-1)

    def score(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return (self.query(h, r) * t).sum(-1)

    def score_all(self, h: Tensor, r: Tensor, entities: Tensor) -> Tensor:
        return self.query(h, r) @ entities.t()

    def score_relations(self, h: Tensor, t: Tensor, relations: Tensor) -> Tensor:
        """Every relation's score for ``(h, ?, t)``: ``Re(h r conj(t)) = <[h_re t_re + h_im t_im,
        h_re t_im - h_im t_re], r>`` -> ``(b, 2R)``."""
        hr, hi = _halves(h)
        tr, ti = _halves(t)
        return torch.cat([hr * tr + hi * ti, hr * ti - hi * tr], dim=-1) @ relations.t()


def _neg_distance_all(q: Tensor, entities: Tensor) -> Tensor:
    """-||q_i - e_j||_2 for all pairs via one matrix product.

    Written out (rather than ``torch.cdist``) so that it has a second
    derivative, which the MetaSD virtual step needs.
    """
    sq = (q * q).sum(-1, keepdim=True) + (entities * entities).sum(-1) - 2.0 * q @ entities.t()
    return -sq.clamp_min(1e-12).sqrt()


class TransE(Decoder):
    """-||h + r - t||_2 (Bordes et al. 2013)."""

    name = "transe"
    kind = "distance"

    def score(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return -torch.linalg.vector_norm(h + r - t, dim=-1)

    def score_all(self, h: Tensor, r: Tensor, entities: Tensor) -> Tensor:
        return _neg_distance_all(h + r, entities)


class RotatE(Decoder):
    """-||h o r - t||_2 with r a unit-modulus rotation (Sun et al. 2019).

    Entities are complex (width 2 * dim); relations are ``dim`` phases.
    """

    name = "rotate"
    kind = "distance"

    def entity_width(self, dim: int) -> int:
        return 2 * dim

    def relation_width(self, dim: int) -> int:
        return dim

    @staticmethod
    def query(h: Tensor, phase: Tensor) -> Tensor:
        hr, hi = _halves(h)
        c, s = torch.cos(phase * math.pi), torch.sin(phase * math.pi)
        return torch.cat([hr * c - hi * s, hr * s + hi * c], dim=-1)

    def score(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return -torch.linalg.vector_norm(self.query(h, r) - t, dim=-1)

    def score_all(self, h: Tensor, r: Tensor, entities: Tensor) -> Tensor:
        return _neg_distance_all(self.query(h, r), entities)


DECODERS: dict[str, type[Decoder]] = {
    cls.name: cls for cls in (ComplEx, DistMult, RotatE, TransE)
}
