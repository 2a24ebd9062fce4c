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
* ``'pairs'``: ``P[(i, r)] = sum_e norm_e h_j`` (one gspmm, E*d), then ``P_r @ W_r``
  batched: the present types, longest first, form groups whose pair counts lie
  within ``GROUP_RATIO`` (1.25) of the group's longest ``m``; each group is one
  ``torch.bmm`` of its zero-padded ``(types, m, d)`` rows by the contiguous
  slice of ``W`` (``T'`` of them, built from the bases in one matmul).  Work:
  ``U*d^2`` plus under 25% padding (``/k`` for bdd), plus ``T'*B*d^2`` to build
  ``W``; then a gspmm scatter to nodes (U*d).  The Python loop runs over the
  groups, at most ``log(max/min count) / log 1.25`` of them, not over the edge
  types: FB15k-237's train graph gives 31 groups for its 474 types, with
  165761 rows for U=149689 pairs (11% padding); every op is a plain torch op, so second
  derivatives stay exact, with one split/cat node per layer (``_CatSplit``).

FB15k-237 train graph (n=14541, E=544230, T=474, U=149689 = 0.275*E), d=500:
B=100 gives 'pairs' ~99 GFLOP per layer forward against 727 for 'bases'; B=4
gives 'bases' 29 GFLOP against 76.  Backward costs about twice the forward; a
second backward (meta step) a few times more, kept linear in the groups.

Plans: the structure of a graph (edge types, norms, the (destination, type)
pairs and their padded layout) is built once per graph object and cached weakly
(``EdgePlan.of``), so the several forwards of one training step (MetaSD: five)
on the same graph share it.  A cached graph must not change its edges after
its first forward (replacing ``etype`` or ``norm`` is detected and rebuilds).

Gradients: use ``torch.autograd.grad`` (with ``functional_call``); DGL's sparse
ops are classic ``autograd.Function``s, so ``torch.func.grad``/``vmap`` do not
apply to any DGL model.
"""
from __future__ import annotations

import hashlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn

from metasd_dgl.graph.dgl_import import dgl
from metasd_dgl.errors import UserError
from metasd_dgl.graph.build import dst_norm

STRATEGIES = ("auto", "bases", "pairs")


@dataclass
class _Pairs:
    """Edges grouped by (destination, edge type), the pairs laid out in padded rows for a
    few batched matmuls (module docstring): each type's pairs (by destination) then zeros.

    gather: bipartite node -> row, one edge per graph edge (same order)
    scatter: bipartite row -> node, U edges (padding rows have none)
    """

    gather: dgl.DGLGraph
    scatter: dgl.DGLGraph
    rel: Tensor  # (T',) int64 edge types present, longest first (the layout's order)
    count: int  # U
    groups: list[tuple[int, int]]  # (types, rows per type) of each group, in layout order

    @property
    def rows(self) -> int:
        return sum(n * m for n, m in self.groups)


#: Types whose pair counts lie within this factor share one padded group (waste < 1 - 1/GROUP_RATIO).
GROUP_RATIO = 1.25


def _group_layout(lengths: Tensor, ratio: float = GROUP_RATIO) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
    """Pairs per present type (T', ascending type order) -> (order (T',), slot (U,), groups).

    Types sorted longest first are cut into groups whose lengths lie within
    ``ratio`` of the group's longest, ``m``; each type of a group takes ``m``
    rows (its pairs, then zero padding), so a group is one ``(types, m, d)``
    batch.  ``order`` lists the types (indices into ``lengths``) in layout
    order; ``slot[u]`` is the row of pair ``u`` (pairs in ascending type order).
    """
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_len = lengths[order].tolist()
    groups: list[tuple[int, int]] = []
    pad = []
    for length in sorted_len:  # once per graph, T' iterations of plain ints
        if not groups or length * ratio < groups[-1][1]:
            groups.append((0, length))
        groups[-1] = (groups[-1][0] + 1, groups[-1][1])
        pad.append(groups[-1][1])
    padded = torch.tensor(pad, dtype=torch.int64, device=lengths.device)
    type_row = torch.empty_like(padded)
    type_row[order] = torch.cumsum(padded, 0) - padded  # first row of each type (ascending type order)
    pair_type = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    type_start = torch.cumsum(lengths, 0) - lengths
    rank = torch.arange(pair_type.numel(), device=lengths.device) - type_start[pair_type]
    return order, type_row[pair_type] + rank, groups


def _edata_sources(graph: dgl.DGLGraph) -> tuple:
    return tuple(graph.edata[k] for k in ("etype", "norm") if k in graph.edata)


#: graph -> {num_etypes: EdgePlan}; weak, so a graph's plans go when the graph does.
_PLANS: "weakref.WeakKeyDictionary[dgl.DGLGraph, dict[int, EdgePlan]]" = weakref.WeakKeyDictionary()


@dataclass
class EdgePlan:
    """Structure of one message graph, shared by every layer of every forward on it."""

    _graph: Union[dgl.DGLGraph, "weakref.ReferenceType[dgl.DGLGraph]"]
    etype: Tensor  # (E,) int64
    norm: Tensor  # (E, 1) float
    num_etypes: int
    _pairs: Optional[_Pairs] = field(default=None, repr=False)
    _sources: tuple = field(default=(), repr=False)  # the edata tensors it was built from

    @classmethod
    def build(cls, graph: dgl.DGLGraph, num_etypes: int) -> "EdgePlan":
        """A new plan (holding ``graph``); ``of`` caches one per graph."""
        if "etype" not in graph.edata:
            raise KeyError("R-GCN graph needs g.edata['etype'] (E,) int64 edge types")
        etype = graph.edata["etype"].long()
        if etype.numel() and (int(etype.min()) < 0 or int(etype.max()) >= num_etypes):
            raise ValueError(f"edge types must lie in [0, {num_etypes}), got {int(etype.min())}..{int(etype.max())}")
        if "norm" in graph.edata:
            norm = graph.edata["norm"].reshape(-1, 1)
        else:
            norm = dst_norm(graph)
        return cls(graph, etype, norm, num_etypes, _sources=_edata_sources(graph))

    @classmethod
    def of(cls, graph: dgl.DGLGraph, num_etypes: int) -> "EdgePlan":
        """The cached plan of ``graph``: built on first use, rebuilt if etype/norm were replaced."""
        plans = _PLANS.setdefault(graph, {})
        plan = plans.get(num_etypes)
        sources = _edata_sources(graph)
        if plan is None or len(plan._sources) != len(sources) or any(
                a is not b for a, b in zip(plan._sources, sources)):
            plan = cls.build(graph, num_etypes)
            plan._graph = weakref.ref(graph)  # the cache must not keep its own key alive
            plans[num_etypes] = plan
        return plan

    @property
    def graph(self) -> dgl.DGLGraph:
        graph = self._graph if isinstance(self._graph, dgl.DGLGraph) else self._graph()
        if graph is None:
            raise RuntimeError("the graph of this cached EdgePlan is gone")
        return graph

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
            order, slot, groups = _group_layout(counts[present])
            rows = sum(t * m for t, m in groups)
            # "pair" nodes are the rows of the padded layout: padding rows get no edges (zeros).
            gather = dgl.heterograph(
                {("node", "to", "pair"): (src.long(), slot[inverse])},
                num_nodes_dict={"node": n, "pair": rows}, device=g.device,
            )
            scatter = dgl.heterograph(
                {("pair", "to", "node"): (slot, pair_dst)},
                num_nodes_dict={"pair": rows, "node": n}, device=g.device,
            )
            self._pairs = _Pairs(gather, scatter, present[order], int(uniq.numel()), groups)
        return self._pairs


class _CatSplit(torch.autograd.Function):
    """``torch.cat`` whose backward is one ``split`` (differentiable), not one slice per input.

    torch's own cat backward records a ``SliceBackward`` per input under
    ``create_graph``; a second backward then materialises a full-size zero
    tensor for each of them.  A split is one node whose own backward is one
    cat, so second-order cost stays linear in the number of inputs.
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
        decomposition: str = "basis",
        num_bases: int = 4,
        self_loop: bool = True,
        strategy: str = "auto",
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__()
        if decomposition not in ("basis", "bdd"):
            raise UserError(f"rgcn.decomposition={decomposition!r} is not one of basis, bdd")
        if num_bases < 1:
            raise UserError(f"rgcn.num_bases={num_bases} must be >= 1")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
        self.in_width, self.out_width, self.num_etypes = in_width, out_width, num_etypes
        self.decomposition, self.strategy = decomposition, strategy
        gain = math.sqrt(2.0)  # ReLU gain, as DGL's RelGraphConv
        if decomposition == "basis":
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
                    f"rgcn.num_bases={num_bases} must divide the layer widths "
                    f"({in_width} -> {out_width}) for the bdd decomposition"
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
        shared = ("bases", "coefficients") if self.decomposition == "basis" else ("blocks",)
        return shared + (("self_weight",) if self.self_weight is not None else ())

    def relation_weight(self, etype: int) -> Tensor:
        """Dense ``W_r`` (d_in, d_out) for one edge type (reference/export helper)."""
        if self.decomposition == "basis":
            return torch.einsum("b,bio->io", self.coefficients[etype], self.bases)
        return torch.block_diag(*self.blocks[etype].unbind(0))

    def choose(self, plan: EdgePlan) -> str:
        if self.decomposition == "bdd":
            return "pairs"
        if self.strategy != "auto":
            return self.strategy
        pairs = plan.pairs()
        cost_bases = plan.num_nodes * self.num_bases
        cost_pairs = pairs.count + pairs.rel.numel() * self.num_bases
        return "bases" if cost_bases <= cost_pairs else "pairs"

    def forward(self, plan: EdgePlan | dgl.DGLGraph, h: Tensor) -> Tensor:
        """(n, d_in) node rows of ``plan.graph`` -> (n, d_out)."""
        if not isinstance(plan, EdgePlan):
            plan = EdgePlan.of(plan, self.num_etypes)
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
        """``P_r @ W_r`` for all present types: one batched matmul per group of similar-sized types."""
        pairs = plan.pairs()
        padded = dgl.ops.u_mul_e_sum(pairs.gather, h, norm)  # (rows, d_in), padding rows zero
        # split (one node, backward one cat), not slices: second-order cost stays linear in groups
        chunks = padded.split([n * m for n, m in pairs.groups])
        types = [n for n, _ in pairs.groups]
        outs: list[Tensor] = []
        if self.decomposition == "basis":
            weights = (self.coefficients[pairs.rel] @ self.bases.reshape(self.num_bases, -1)).reshape(
                -1, self.in_width, self.out_width
            )  # (T', d_in, d_out), in layout order
            for (n, m), x, w in zip(pairs.groups, chunks, weights.split(types)):
                # one type: a plain matmul (CPU mm beats a batch of one)
                outs.append(x @ w[0] if n == 1 else torch.bmm(x.view(n, m, self.in_width), w).reshape(n * m, -1))
        else:
            nb = self.num_bases
            for (n, m), x, q in zip(pairs.groups, chunks, self.blocks[pairs.rel].split(types)):
                y = torch.einsum("tmki,tkio->tmko", x.view(n, m, nb, -1), q)  # q: (n, k, s_in, s_out)
                outs.append(y.reshape(n * m, self.out_width))
        out = _CatSplit.apply([x.shape[0] for x in outs], *outs)  # (rows, d_out)
        return dgl.ops.copy_u_sum(pairs.scatter, out)  # (n, d_out)


class RGCNEncoder(nn.Module):
    """Entity table ``entity`` (N, w_e) -> ``num_layers`` R-GCN layers; relation table ``relation`` (2R, w_r).

    ``forward(graph) -> (entity rows (graph.num_nodes(), w_e), relation (2R, w_r))``.
    A graph with ``ndata[dgl.NID]`` (a sampled subgraph) starts from
    ``entity[graph.ndata[dgl.NID]]``; otherwise it must hold all N entities.

    Dropout (rate ``dropout``, after every layer, as DGL's RelGraphConv) draws
    its masks not from torch's global RNG but from a generator derived afresh
    for every forward from ``(seed, step, call)``: the buffer ``dropout_rng`` =
    [seed, step] (saved in the state_dict) counts the distinct graphs seen in
    training forwards -- one per training step, since every step builds its
    own message graph -- and ``call`` numbers the forwards on the current graph
    (``forward(graph, dropout_key=k)`` names the forward instead).  So an extra
    forward changes no mask of any later step (nor, with keys, of its own
    step); generators live on the features' device.

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
        decomposition: str = "basis",
        dropout: float = 0.2,
        self_loop: bool = True,
        generator: Optional[torch.Generator] = None,
        init_std: float = 1.0,
        strategy: str = "auto",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise UserError(f"rgcn.num_layers={num_layers} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"rgcn.dropout={dropout} must be in [0, 1)")
        self.num_entities, self.num_relations = num_entities, num_relations
        self.dropout = dropout
        self.entity = nn.Parameter(torch.randn(num_entities, entity_width, generator=generator) * init_std)
        bound = math.sqrt(2.0) * math.sqrt(6.0 / (2 * num_relations + relation_width))
        self.relation = nn.Parameter(_uniform((2 * num_relations, relation_width), bound, generator))
        self.layers = nn.ModuleList(
            RelGraphLayer(entity_width, entity_width, 2 * num_relations, decomposition, num_bases,
                          self_loop, strategy, generator)
            for _ in range(num_layers)
        )
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.register_buffer("dropout_rng", torch.tensor([seed, 0], dtype=torch.int64))
        self.prunable: tuple[str, ...] = ("entity", "relation") + tuple(
            f"layers.{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.weight_names()
        )

    def _dropout_generator(self, graph: dgl.DGLGraph, device: torch.device,
                           key: Optional[int]) -> torch.Generator:
        """The generator of this forward's masks, from (seed, step, call or key); see the class docstring."""
        last = getattr(self, "_dropout_graph", None)
        if last is None or last() is not graph:  # a new graph: the next training step
            self.dropout_rng[1] += 1
            self._dropout_graph, self._dropout_calls = weakref.ref(graph), 0
        seed, step = (int(v) for v in self.dropout_rng.tolist())
        if key is None:
            name, self._dropout_calls = f"call{self._dropout_calls}", self._dropout_calls + 1
        else:
            name = f"key{int(key)}"
        digest = hashlib.blake2b(f"{seed}:{step}:{name}".encode(), digest_size=8).digest()
        gen = torch.Generator(device=device)
        gen.manual_seed(int.from_bytes(digest, "little") % 2**63)
        return gen

    def forward(self, graph: dgl.DGLGraph, dropout_key: Optional[int] = None) -> tuple[Tensor, Tensor]:
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
        plan = EdgePlan.of(graph, 2 * self.num_relations)  # built once per graph
        gen = None
        if self.training and self.dropout > 0:
            gen = self._dropout_generator(graph, h.device, dropout_key)
        keep = 1.0 - self.dropout
        for i, layer in enumerate(self.layers):
            h = layer(plan, h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
            if gen is not None:
                mask = torch.rand(h.shape, generator=gen, device=h.device) < keep
                h = h * mask / keep
        return h, self.relation
