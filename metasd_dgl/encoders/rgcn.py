"""R-GCN encoder (Schlichtkrull et al. 2018): relational graph convolutions on DGL.

Layer ``l`` computes, for every node ``i`` of the graph (width ``d`` throughout)::

    h_i' = act( sum_{e=(j, r, i)} norm_e * W_r h_j  +  W_self h_i  +  b )   then dropout
    basis: W_r = sum_b a[r, b] V_b          a: (T, B) ``coefficients``, V: (B, d, d) ``bases``
    bdd:   W_r = blockdiag(Q[r, 0..k-1])    Q: (T, k, d/k, d/k) ``blocks``

``T = 2R`` edge types (relation ``r + R`` is the inverse of ``r``), ``norm`` is
``g.edata['norm']`` (1 / in-degree of the destination; recomputed if absent).
``act`` is ReLU between layers and the identity after the last one.

Why not ``dgl.nn.RelGraphConv``: its ``TypedLinear`` calls DGL's
``gather_mm`` / ``segment_mm``; on CUDA their autograd backward runs raw
kernels, so a second backward (``create_graph=True``, the MetaSD virtual step)
silently drops terms; on CPU ``gather_mm`` materialises one ``d x d`` matrix
per edge.  Here the sparse part runs on DGL's ``gspmm`` (whose backward is
itself made of differentiable ``gspmm``/``gsddmm`` calls) and the dense part on
torch matmuls, so first and second derivatives are exact on every device, and
every weight is a plain named ``nn.Parameter`` (pruning masks and
``torch.func.functional_call`` see them all).

Two exact evaluation orders, picked per forward by multiply-add count
(``strategy='auto'``; ``n`` nodes, ``E`` edges, ``U`` distinct (destination,
edge type) pairs, ``T'`` edge types present, ``B`` bases, ``k`` blocks):

* ``'bases'`` (basis only, no Python loop): ``A[i, b] = sum_e norm_e a[r_e, b] h_j``,
  one gspmm into ``(n, B, d)`` (E*B*d), then ``A.view(n, B*d) @ V.view(B*d, d)``:
  ``n*B*d^2`` multiply-adds, ``n*B*d`` floats kept for backward.
* ``'pairs'``: ``P[(i, r)] = sum_e norm_e h_j`` (one gspmm, E*d), then one matmul per
  present edge type, ``P_r @ W_r`` (``U*d^2`` for basis, ``U*d^2/k`` for bdd, plus
  ``T'*B*d^2`` to build ``W_r`` from the bases), then a gspmm scatter to nodes (U*d).

FB15k-237 train graph (n=14541, E=544230, T=474, U=149689 = 0.275*E), d=500:
B=100 gives 'pairs' ~99 GFLOP per layer forward against 727 for 'bases'; B=4
gives 'bases' 29 GFLOP against 76.  Backward costs about twice the forward; a
second backward (meta step) a few times more, kept linear in T' by ``_CatSplit``.

Gradients: use ``torch.autograd.grad`` (with ``functional_call``); DGL's sparse
ops are classic ``autograd.Function``s, so ``torch.func.grad``/``vmap`` do not
apply to any DGL model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import dgl
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..graph.build import dst_norm

STRATEGIES = ("auto", "bases", "pairs")


@dataclass
class _Pairs:
    """Edges grouped by (destination, edge type), sorted by edge type then destination."""

    gather: dgl.DGLGraph  # bipartite node -> pair, one edge per graph edge (same order)
    scatter: dgl.DGLGraph  # bipartite pair -> node, U edges
    rel_ids: list[int]  # edge types present, ascending (T')
    lengths: list[int]  # pairs per present edge type (T'), sum = U
    count: int  # U


@dataclass
class EdgePlan:
    """Structure of one message graph, shared by every layer of one forward."""

    graph: dgl.DGLGraph
    etype: Tensor  # (E,) int64
    norm: Tensor  # (E, 1) float
    num_etypes: int
    _pairs: Optional[_Pairs] = field(default=None, repr=False)

    @classmethod
    def build(cls, graph: dgl.DGLGraph, num_etypes: int) -> "EdgePlan":
        if "etype" not in graph.edata:
            raise KeyError("R-GCN graph needs g.edata['etype'] (E,) int64 edge types")
        etype = graph.edata["etype"].long()
        if etype.numel() and (int(etype.min()) < 0 or int(etype.max()) >= num_etypes):
            raise ValueError(f"edge types must lie in [0, {num_etypes}), got {int(etype.min())}..{int(etype.max())}")
        if "norm" in graph.edata:
            norm = graph.edata["norm"].reshape(-1, 1)
        else:
            norm = dst_norm(graph)
        return cls(graph, etype, norm, num_etypes)

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes()

    def pairs(self) -> _Pairs:
        if self._pairs is None:
            g, n = self.graph, self.graph.num_nodes()
            src, dst = g.edges()
            key = self.etype * n + dst.long()
            uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
            pair_type, pair_dst = uniq // n, uniq % n
            counts = torch.bincount(pair_type, minlength=self.num_etypes)
            present = torch.nonzero(counts).squeeze(1)
            u = int(uniq.numel())
            gather = dgl.heterograph(
                {("node", "to", "pair"): (src.long(), inverse)},
                num_nodes_dict={"node": n, "pair": u}, device=g.device,
            )
            ids = torch.arange(u, device=g.device)
            scatter = dgl.heterograph(
                {("pair", "to", "node"): (ids, pair_dst)},
                num_nodes_dict={"pair": u, "node": n}, device=g.device,
            )
            self._pairs = _Pairs(gather, scatter, present.tolist(), counts[present].tolist(), u)
        return self._pairs


class _CatSplit(torch.autograd.Function):
    """``torch.cat`` whose backward is one ``split`` (differentiable), not one slice per input.

    torch's own cat backward records a ``SliceBackward`` per input under
    ``create_graph``; a second backward then materialises a full-size zero
    tensor for each of them (T' x U x d work for T' edge types).  A split is
    one node whose own backward is one cat, so second-order cost stays linear.
    """

    @staticmethod
    def forward(ctx, lengths: list[int], *chunks: Tensor) -> Tensor:  # type: ignore[override]
        ctx.lengths = lengths
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return (None, *grad.split(ctx.lengths))


def _uniform(shape: tuple[int, ...], bound: float, generator: Optional[torch.Generator]) -> Tensor:
    return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound


class RelGraphLayer(nn.Module):
    """One relational graph convolution ``(n, d_in) -> (n, d_out)`` (no activation, no dropout).

    Parameters: basis ``bases`` (B, d_in, d_out) and ``coefficients`` (T, B);
    bdd ``blocks`` (T, k, d_in/k, d_out/k); ``self_weight`` (d_in, d_out) if
    ``self_loop``; ``bias`` (d_out,).
    """

    def __init__(
        self,
        in_width: int,
        out_width: int,
        num_etypes: int,
        regularizer: str = "basis",
        num_bases: int = 4,
        self_loop: bool = True,
        strategy: str = "auto",
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__()
        if regularizer not in ("basis", "bdd"):
            raise UserError(f"model.regularizer={regularizer!r} is not one of basis, bdd")
        if num_bases < 1:
            raise UserError(f"model.num_bases={num_bases} must be >= 1")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
        self.in_width, self.out_width, self.num_etypes = in_width, out_width, num_etypes
        self.regularizer, self.strategy = regularizer, strategy
        gain = math.sqrt(2.0)  # ReLU gain, as DGL's RelGraphConv
        if regularizer == "basis":
            self.num_bases = min(num_bases, num_etypes)  # more bases than types adds nothing
            bound = gain * math.sqrt(6.0 / (in_width + out_width))
            self.bases = nn.Parameter(_uniform((self.num_bases, in_width, out_width), bound, generator))
            # Var(W_r) = B * Var(a) * Var(V) = Var(V): W_r starts Xavier-scaled.
            self.coefficients = nn.Parameter(
                torch.randn(num_etypes, self.num_bases, generator=generator) / math.sqrt(self.num_bases)
            )
        else:
            if in_width % num_bases or out_width % num_bases:
                raise UserError(
                    f"model.num_bases={num_bases} must divide the layer widths "
                    f"({in_width} -> {out_width}) for the bdd regularizer"
                )
            self.num_bases = num_bases
            s_in, s_out = in_width // num_bases, out_width // num_bases
            bound = gain * math.sqrt(6.0 / (s_in + s_out))
            self.blocks = nn.Parameter(_uniform((num_etypes, num_bases, s_in, s_out), bound, generator))
        if self_loop:
            bound = gain * math.sqrt(6.0 / (in_width + out_width))
            self.self_weight = nn.Parameter(_uniform((in_width, out_width), bound, generator))
        else:
            self.register_parameter("self_weight", None)
        self.bias = nn.Parameter(torch.zeros(out_width))

    def weight_names(self) -> tuple[str, ...]:
        """Names of the prunable weights of this layer (biases are not pruned)."""
        own = ("bases", "coefficients") if self.regularizer == "basis" else ("blocks",)
        return own + (("self_weight",) if self.self_weight is not None else ())

    def relation_weight(self, etype: int) -> Tensor:
        """Dense ``W_r`` (d_in, d_out) for one edge type (reference/export helper)."""
        if self.regularizer == "basis":
            return torch.einsum("b,bio->io", self.coefficients[etype], self.bases)
        return torch.block_diag(*self.blocks[etype].unbind(0))

    def choose(self, plan: EdgePlan) -> str:
        if self.regularizer == "bdd":
            return "pairs"
        if self.strategy != "auto":
            return self.strategy
        pairs = plan.pairs()
        cost_bases = plan.num_nodes * self.num_bases
        cost_pairs = pairs.count + len(pairs.rel_ids) * self.num_bases
        return "bases" if cost_bases <= cost_pairs else "pairs"

    def forward(self, plan: EdgePlan | dgl.DGLGraph, h: Tensor) -> Tensor:
        """(n, d_in) node rows of ``plan.graph`` -> (n, d_out)."""
        if not isinstance(plan, EdgePlan):
            plan = EdgePlan.build(plan, self.num_etypes)
        n = plan.num_nodes
        if h.shape != (n, self.in_width):
            raise ValueError(f"expected node features ({n}, {self.in_width}), got {tuple(h.shape)}")
        norm = plan.norm.to(h.dtype)
        if plan.etype.numel() == 0:
            out = h.new_zeros(n, self.out_width)
        elif self.choose(plan) == "bases":
            coef = self.coefficients[plan.etype] * norm  # (E, B)
            agg = dgl.ops.u_mul_e_sum(plan.graph, h.unsqueeze(1), coef.unsqueeze(-1))  # (n, B, d_in)
            out = agg.reshape(n, -1) @ self.bases.reshape(-1, self.out_width)
        else:
            out = self._pairs_forward(plan, h, norm)
        if self.self_weight is not None:
            out = out + h @ self.self_weight
        return out + self.bias

    def _pairs_forward(self, plan: EdgePlan, h: Tensor, norm: Tensor) -> Tensor:
        pairs = plan.pairs()
        agg = dgl.ops.u_mul_e_sum(pairs.gather, h, norm)  # (U, d_in)
        chunks = agg.split(pairs.lengths)
        rel = torch.tensor(pairs.rel_ids, device=h.device)
        outs = []
        if self.regularizer == "basis":
            weights = (self.coefficients[rel] @ self.bases.reshape(self.num_bases, -1)).reshape(
                -1, self.in_width, self.out_width
            )  # (T', d_in, d_out)
            # unbind (not weights[k]): one backward that stacks T' grads, not T' full-size zeros.
            for chunk, w in zip(chunks, weights.unbind(0)):
                outs.append(chunk @ w)
        else:
            nb = self.num_bases
            for chunk, q in zip(chunks, self.blocks[rel].unbind(0)):  # q: (k, s_in, s_out)
                x = chunk.reshape(chunk.shape[0], nb, -1)
                outs.append(torch.einsum("mki,kio->mko", x, q).reshape(chunk.shape[0], -1))
        return dgl.ops.copy_u_sum(pairs.scatter, _CatSplit.apply(pairs.lengths, *outs))  # (n, d_out)


class RGCNEncoder(nn.Module):
    """Entity table ``entity`` (N, w_e) -> ``num_layers`` R-GCN layers; relation table ``relation`` (2R, w_r).

    ``forward(graph) -> (entity rows (graph.num_nodes(), w_e), relation (2R, w_r))``.
    A graph with ``ndata[dgl.NID]`` (a sampled subgraph) starts from
    ``entity[graph.ndata[dgl.NID]]``; otherwise it must hold all N entities.

    Dropout (rate ``dropout``, after every layer, as DGL's RelGraphConv) draws
    its masks from a generator seeded by the buffer ``dropout_rng`` = [seed,
    calls], not from torch's global RNG: reproducible, saved in the
    state_dict, and on whatever device the features live.

    ``prunable`` (instance attribute): ``entity``, ``relation`` and every layer
    weight (``layers.<i>.bases``/``coefficients`` or ``layers.<i>.blocks``, and
    ``layers.<i>.self_weight``); biases are left dense.
    """

    def __init__(
        self,
        num_entities: int,
        num_relations: int,
        entity_width: int,
        relation_width: int,
        num_layers: int = 2,
        num_bases: int = 4,
        regularizer: str = "basis",
        dropout: float = 0.2,
        self_loop: bool = True,
        generator: Optional[torch.Generator] = None,
        init_std: float = 1.0,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise UserError(f"model.num_layers={num_layers} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"model.dropout={dropout} must be in [0, 1)")
        self.num_entities, self.num_relations = num_entities, num_relations
        self.dropout = dropout
        self.entity = nn.Parameter(torch.randn(num_entities, entity_width, generator=generator) * init_std)
        bound = math.sqrt(2.0) * math.sqrt(6.0 / (2 * num_relations + relation_width))
        self.relation = nn.Parameter(_uniform((2 * num_relations, relation_width), bound, generator))
        self.layers = nn.ModuleList(
            RelGraphLayer(entity_width, entity_width, 2 * num_relations, regularizer, num_bases,
                          self_loop, strategy, generator)
            for _ in range(num_layers)
        )
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.register_buffer("dropout_rng", torch.tensor([seed, 0], dtype=torch.int64))
        self.prunable: tuple[str, ...] = ("entity", "relation") + tuple(
            f"layers.{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.weight_names()
        )

    def _dropout_generator(self, device: torch.device) -> torch.Generator:
        seed, calls = (int(v) for v in self.dropout_rng.tolist())
        self.dropout_rng[1] += 1
        gen = torch.Generator(device=device)
        gen.manual_seed((seed + calls * 0x9E3779B97F4A7C15) % 2**63)
        return gen

    def forward(self, graph: dgl.DGLGraph) -> tuple[Tensor, Tensor]:
        if graph is None:
            raise ValueError("the R-GCN encoder needs a graph (full training graph or a sampled subgraph)")
        if dgl.NID in graph.ndata:
            h = self.entity[graph.ndata[dgl.NID].to(self.entity.device).long()]  # (n, w_e)
        elif graph.num_nodes() == self.num_entities:
            h = self.entity
        else:
            raise ValueError(
                f"graph has {graph.num_nodes()} nodes but no ndata[dgl.NID]; expected all {self.num_entities} entities"
            )
        plan = EdgePlan.build(graph, 2 * self.num_relations)
        gen = self._dropout_generator(h.device) if self.training and self.dropout > 0 else None
        keep = 1.0 - self.dropout
        for i, layer in enumerate(self.layers):
            h = layer(plan, h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
            if gen is not None:
                mask = torch.rand(h.shape, generator=gen, device=h.device) < keep
                h = h * mask / keep
        return h, self.relation
