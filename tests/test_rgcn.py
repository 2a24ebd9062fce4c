"""R-GCN encoder: brute-force oracle, gradients, masks under functional_call, double backward."""
from __future__ import annotations

import copy

import dgl
import pytest
import torch
from torch.func import functional_call

from metasd_dgl.model.rgcn import EdgePlan, RelGraphLayer, RGCNEncoder
from metasd_dgl.graph.sampling import dst_norm, edge_sampled_subgraph
from metasd_dgl.model.predictor import build_model

N, R, NT = 12, 3, 20  # nodes, relations (x2 with inverses), triples (40 edges)


def toy_graph(seed: int = 0, num_nodes: int = N, num_relations: int = R, num_triples: int = NT):
    """(graph, triples): edges h->t (etype r) then t->h (etype r+R), norm = 1/in-degree."""
    gen = torch.Generator().manual_seed(seed)
    triples = torch.stack([
        torch.randint(0, num_nodes, (num_triples,), generator=gen),
        torch.randint(0, num_relations, (num_triples,), generator=gen),
        torch.randint(0, num_nodes, (num_triples,), generator=gen),
    ], dim=1)
    h, r, t = triples.unbind(1)
    g = dgl.graph((torch.cat([h, t]), torch.cat([t, h])), num_nodes=num_nodes)
    g.edata["etype"] = torch.cat([r, r + num_relations])
    g.edata["norm"] = dst_norm(g)
    return g, triples


def dense_weight(layer: RelGraphLayer, r: int) -> torch.Tensor:
    """W_r rebuilt explicitly from the decomposition, element by element."""
    if layer.decomposition == "basis":
        w = torch.zeros(layer.in_width, layer.out_width, dtype=layer.bases.dtype)
        for b in range(layer.num_bases):
            w = w + layer.coefficients[r, b] * layer.bases[b]
        return w
    k = layer.num_bases
    s_in, s_out = layer.in_width // k, layer.out_width // k
    w = torch.zeros(layer.in_width, layer.out_width, dtype=layer.blocks.dtype)
    for j in range(k):
        w[j * s_in:(j + 1) * s_in, j * s_out:(j + 1) * s_out] = layer.blocks[r, j]
    return w


def brute_force(layer: RelGraphLayer, g: dgl.DGLGraph, h: torch.Tensor) -> torch.Tensor:
    src, dst = g.edges()
    etype, norm = g.edata["etype"], g.edata["norm"].to(h.dtype)
    out = torch.zeros(g.num_nodes(), layer.out_width, dtype=h.dtype)
    for i in range(g.num_nodes()):
        acc = h[i] @ layer.self_weight + layer.bias
        for e in range(g.num_edges()):
            if int(dst[e]) == i:
                acc = acc + norm[e, 0] * (h[src[e]] @ dense_weight(layer, int(etype[e])))
        out[i] = acc
    return out


@pytest.mark.parametrize("decomposition,strategy,bases", [
    ("basis", "bases", 2), ("basis", "pairs", 2), ("basis", "auto", 4), ("bdd", "auto", 2), ("bdd", "pairs", 4),
])
def test_layer_matches_brute_force(decomposition, strategy, bases):
    g, _ = toy_graph()
    gen = torch.Generator().manual_seed(1)
    layer = RelGraphLayer(8, 8, 2 * R, decomposition, bases, True, strategy, gen).double()
    with torch.no_grad():
        layer.bias.normal_(generator=gen)
    h = torch.randn(N, 8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(layer(g, h), brute_force(layer, g, h), rtol=1e-10, atol=1e-10)


def test_norm_missing_is_recomputed_and_strategies_agree():
    g, _ = toy_graph(3)
    layer = RelGraphLayer(6, 6, 2 * R, "basis", 3, strategy="bases", generator=torch.Generator().manual_seed(0))
    h = torch.randn(N, 6, generator=torch.Generator().manual_seed(2))
    ref = layer(g, h)
    g2 = copy.deepcopy(g)
    del g2.edata["norm"]
    layer.strategy = "pairs"
    torch.testing.assert_close(layer(g2, h), ref, rtol=1e-5, atol=1e-6)


def make_encoder(decomposition="basis", bases=2, dropout=0.0, seed=0, layers=2, width=8):
    return RGCNEncoder(N, R, width, width, num_layers=layers, num_bases=bases, decomposition=decomposition,
                       dropout=dropout, self_loop=True, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("decomposition", ["basis", "bdd"])
def test_encoder_shapes_prunable_and_gradients(decomposition):
    g, _ = toy_graph()
    enc = make_encoder(decomposition)
    ent, rel = enc(g)
    assert ent.shape == (N, 8) and rel.shape == (2 * R, 8)
    names = dict(enc.named_parameters())
    assert set(enc.prunable) <= set(names)
    expected = {"bases", "coefficients", "self_weight"} if decomposition == "basis" else {"blocks", "self_weight"}
    for i in range(2):
        assert {p.split(".")[-1] for p in enc.prunable if p.startswith(f"layers.{i}.")} == expected
    assert not any(p.endswith("bias") for p in enc.prunable)
    (ent.pow(2).sum() + rel.sum()).backward()
    for name in enc.prunable:
        assert names[name].grad is not None and names[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("options", [
    dict(num_layers=3, num_bases=2, decomposition="basis", dropout=0.3),
    dict(num_layers=1, num_bases=4, decomposition="bdd", dropout=0.0),
])
def test_build_model_wires_rgcn_options(options):
    """Every rgcn.* option set in the config reaches the encoder (through model.make_model)."""
    from metasd_dgl.config import Config
    from metasd_dgl.model.predictor import make_model

    cfg = Config()
    cfg.model.encoder, cfg.model.decoder, cfg.model.dim = "rgcn", "distmult", 8
    for key, value in options.items():
        setattr(cfg.rgcn, key, value)
    model = make_model(cfg, N, R, torch.Generator().manual_seed(0))
    enc = model.encoder
    assert isinstance(enc, RGCNEncoder) and len(enc.layers) == options["num_layers"]
    assert enc.dropout == options["dropout"]
    for layer in enc.layers:
        assert layer.decomposition == options["decomposition"] and layer.num_bases == options["num_bases"]
        assert layer.self_weight is not None  # every layer has its self-loop
        if options["decomposition"] == "basis":
            assert layer.bases.shape == (options["num_bases"], 8, 8) and layer.coefficients.shape == (2 * R, 2)
            assert not hasattr(layer, "blocks")
        else:
            assert layer.blocks.shape == (2 * R, options["num_bases"], 2, 2) and not hasattr(layer, "bases")
    shared = ["bases", "coefficients"] if options["decomposition"] == "basis" else ["blocks"]
    shared += ["self_weight"]
    expected = ["encoder.entity", "encoder.relation"] + [
        f"encoder.layers.{i}.{w}" for i in range(options["num_layers"]) for w in shared]
    assert sorted(model.prunable_names()) == sorted(expected)  # biases stay dense
    g, triples = toy_graph()
    assert model(triples[:5, :2], graph=g).shape == (5, N)
    # dropout is applied in training mode only, and only when the rate is > 0
    model.train()
    assert torch.equal(model(triples[:5, :2], graph=g), model(triples[:5, :2], graph=g)) == (options["dropout"] == 0)


def test_subgraph_mode_uses_entity_rows_by_nid():
    g, triples = toy_graph(4)
    enc = make_encoder().eval()
    sub, local = edge_sampled_subgraph(g, triples, torch.tensor([0, 1]), torch.Generator().manual_seed(0), 0.3)
    nid = sub.ndata[dgl.NID]
    out_sub, _ = enc(sub)
    # The same edges on the full node set: rows of the sampled nodes must agree.
    src, dst = sub.edges()
    full = dgl.graph((nid[src], nid[dst]), num_nodes=N)
    full.edata["etype"] = sub.edata["etype"]
    full.edata["norm"] = dst_norm(full)
    out_full, _ = enc(full)
    torch.testing.assert_close(out_sub, out_full[nid], rtol=1e-5, atol=1e-6)
    assert out_sub.shape == (sub.num_nodes(), 8) and local.shape == (2, 2)


def random_masks(enc, keep=0.5, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) < keep for n, p in enc.named_parameters() if n in enc.prunable}


@pytest.mark.parametrize("decomposition", ["basis", "bdd"])
def test_masked_functional_call_equals_zeroed_module(decomposition):
    g, _ = toy_graph(5)
    enc = make_encoder(decomposition).eval()
    masks = random_masks(enc)
    params = dict(enc.named_parameters())
    student = {n: params[n] * m for n, m in masks.items()}
    seen = {}

    def grab(module, args):  # the weights the layer actually reads during the student's forward
        seen[module] = {n: getattr(module, n).detach().clone() for n in module.weight_names()}

    hooks = [layer.register_forward_pre_hook(grab) for layer in enc.layers]
    out_masked, rel_masked = functional_call(enc, student, (g,), strict=False)
    for hk in hooks:
        hk.remove()
    for i, layer in enumerate(enc.layers):
        for n, w in seen[layer].items():
            assert torch.all(w[~masks[f"layers.{i}.{n}"]] == 0), n
    zeroed = copy.deepcopy(enc)
    with torch.no_grad():
        for n, p in zeroed.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    out_zero, rel_zero = zeroed(g)
    torch.testing.assert_close(out_masked, out_zero, rtol=0, atol=0)
    torch.testing.assert_close(rel_masked, rel_zero, rtol=0, atol=0)
    # Pruned weights may drift in the teacher: the student's forward must not see it.
    gen = torch.Generator().manual_seed(3)
    drifted = {n: (params[n] + 5 * (~m) * torch.randn(m.shape, generator=gen)) * m for n, m in masks.items()}
    out_drift, _ = functional_call(enc, drifted, (g,), strict=False)
    torch.testing.assert_close(out_drift, out_masked, rtol=0, atol=0)


def count_nodes(root: torch.Tensor, kind: str) -> int:
    seen, stack, count = set(), [root.grad_fn], 0
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        count += type(fn).__name__ == kind
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return count


@pytest.mark.parametrize("decomposition,strategy", [("basis", "bases"), ("basis", "pairs"), ("bdd", "auto")])
def test_double_backward_meta_step(decomposition, strategy):
    """Virtual SGD step with create_graph, then the quiz loss's gradient w.r.t. the weights
    must match a finite difference of the whole two-step function (float64)."""
    g, triples = toy_graph(6)
    enc = make_encoder(decomposition, seed=2, layers=2, width=4).double().eval()
    for layer in enc.layers:
        layer.strategy = strategy
    names = list(enc.prunable)
    masks = {n: m for n, m in random_masks(enc, keep=0.7).items()}
    train, quiz = triples[:10], triples[10:]

    def loss_on(params, batch):
        ent, rel = functional_call(enc, params, (g,), strict=False)
        return torch.tanh((ent[batch[:, 0]] * rel[batch[:, 1]] * ent[batch[:, 2]]).sum(-1)).sum()

    def meta_objective(params):
        student = {n: params[n] * masks[n] for n in names}
        grads = torch.autograd.grad(loss_on(student, train), [student[n] for n in names], create_graph=True)
        virtual = {n: student[n] - 0.1 * gr for n, gr in zip(names, grads)}
        return loss_on(virtual, quiz)

    base = {n: p.detach().clone().requires_grad_() for n, p in enc.named_parameters() if n in names}
    objective = meta_objective(base)
    # Second-order cost stays linear in the edge types: no per-type slice nodes (each would
    # materialise a full-size zero gradient in the meta backward).
    assert count_nodes(objective, "SliceBackward0") == 0
    meta_grads = torch.autograd.grad(objective, [base[n] for n in names])
    assert all(torch.isfinite(gr).all() for gr in meta_grads)
    gen = torch.Generator().manual_seed(11)
    direction = {n: torch.randn(base[n].shape, generator=gen, dtype=torch.float64) for n in names}
    eps = 1e-5
    with torch.enable_grad():
        plus = meta_objective({n: (base[n] + eps * direction[n]).detach().requires_grad_() for n in names})
        minus = meta_objective({n: (base[n] - eps * direction[n]).detach().requires_grad_() for n in names})
    numeric = (plus - minus).item() / (2 * eps)
    analytic = sum((gr * direction[n]).sum() for n, gr in zip(names, meta_grads)).item()
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7)
    for n, gr in zip(names, meta_grads):
        assert gr.abs().sum() > 0, f"no meta gradient reaches {n}"


def test_dropout_is_seeded_and_leaves_global_rng_alone():
    g, _ = toy_graph()
    a, b = make_encoder(dropout=0.5, seed=9).train(), make_encoder(dropout=0.5, seed=9).train()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    out_a1, out_b1 = a(g)[0], b(g)[0]
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.testing.assert_close(out_a1, out_b1, rtol=0, atol=0)
    out_a2 = a(g)[0]
    assert not torch.equal(out_a1, out_a2)  # a fresh mask per call
    assert int(a.dropout_rng[1]) == 1 and "dropout_rng" in a.state_dict()  # one graph = one step
    a(toy_graph(1)[0])
    assert int(a.dropout_rng[1]) == 2
    ev = a.eval()
    torch.testing.assert_close(ev(g)[0], ev(g)[0], rtol=0, atol=0)


def test_bad_options_are_user_errors():
    from metasd_dgl.errors import UserError

    with pytest.raises(UserError, match="num_bases"):
        RGCNEncoder(N, R, 10, 10, num_bases=3, decomposition="bdd")
    with pytest.raises(UserError, match="decomposition"):
        RGCNEncoder(N, R, 8, 8, decomposition="full")
    enc = RGCNEncoder(N, R, 8, 8, num_bases=100)
    assert enc.layers[0].num_bases == 2 * R  # clamped to the number of edge types
    g, _ = toy_graph()
    with pytest.raises(ValueError, match="NID"):
        enc(dgl.graph(([0], [1]), num_nodes=3))
    plan = EdgePlan.build(g, 2 * R)
    assert plan.pairs().count <= g.num_edges()


def test_validation_and_evaluate_rank_on_the_same_graph(tmp_path):
    """R-GCN MetaSD: the validation MRR logged in training equals ``evaluate --split valid`` on
    the best checkpoint (both pass messages over the whole training graph; quiz triples are
    hidden only in training steps)."""
    import json
    from pathlib import Path

    from metasd_dgl.cli import main

    toy = Path(__file__).resolve().parents[1] / "datasets" / "toy"
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--dataset", str(toy), "--run-dir", str(run), "--epochs", "1",
                 "--dim", "8", "--encoder", "rgcn", "--method", "metasd", "--batch-size", "4",
                 "--set", "valid.every=1", "--set", "metasd.quiz_fraction=0.3",
                 "--set", "prune.rate=0.5", "--set", "rgcn.num_layers=1"]) == 0
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"valid"' in x][-1]["valid"]
    assert main(["evaluate", str(run), "--split", "valid", "--checkpoint", "best", "--no-plots"]) == 0
    evaluated = json.loads((run / "eval" / "valid.json").read_text())["results"]
    assert set(logged) == set(evaluated) == {"teacher", "student"}
    for name in logged:
        assert evaluated[name]["both"]["mrr"] == pytest.approx(logged[name]["mrr"], abs=1e-6), name


def test_an_extra_forward_does_not_shift_later_masks():
    """Masks come from (seed, step, call): an extra forward in one step leaves every later
    step's masks as they were; with dropout_key, also the other forwards of its own step."""
    a, b = make_encoder(dropout=0.5, seed=4).train(), make_encoder(dropout=0.5, seed=4).train()
    g1, g2, g3 = (toy_graph(s)[0] for s in (1, 2, 3))
    torch.testing.assert_close(a(g1)[0], b(g1)[0], rtol=0, atol=0)
    a(g1)  # the extra forward, in step 1 only
    torch.testing.assert_close(a(g2)[0], b(g2)[0], rtol=0, atol=0)  # step 2: same masks
    first = a(g3, dropout_key=0)[0]
    torch.testing.assert_close(first, b(g3, dropout_key=0)[0], rtol=0, atol=0)
    a(g3)
    torch.testing.assert_close(a(g3, dropout_key=1)[0], b(g3, dropout_key=1)[0], rtol=0, atol=0)
    assert not torch.equal(first, b(g3, dropout_key=2)[0])  # keys draw different masks


def test_edge_plan_is_built_once_per_graph(monkeypatch):
    """Every forward on one graph object (MetaSD: five per step) reuses one plan; the cache
    does not keep graphs alive and notices replaced edge data."""
    import gc
    import weakref

    builds = []
    original = EdgePlan.build.__func__
    monkeypatch.setattr(EdgePlan, "build", classmethod(lambda cls, g, n: builds.append(g) or original(cls, g, n)))
    enc = make_encoder()
    g, _ = toy_graph(6)
    for _ in range(5):
        enc(g)
    assert len(builds) == 1
    assert EdgePlan.of(g, 2 * R) is EdgePlan.of(g, 2 * R)
    assert EdgePlan.of(g, 2 * R).pairs() is EdgePlan.of(g, 2 * R).pairs()  # the unique() runs once
    g.edata["norm"] = g.edata["norm"] * 2  # new tensor -> new plan
    torch.testing.assert_close(EdgePlan.of(g, 2 * R).norm, g.edata["norm"])
    other, _ = toy_graph(7)
    enc(other)
    assert len(builds) == 3
    ref = weakref.ref(other)
    del other, builds[:]
    gc.collect()
    assert ref() is None


def skewed_graph(num_nodes=15, num_relations=5, num_triples=60, seed=1):
    """Edge types of very different frequencies: some groups hold several types, with padding."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.multinomial(torch.tensor([20.0, 5.0, 1.0, 1.0, 0.5])[:num_relations], num_triples, True, generator=gen)
    h = torch.randint(0, num_nodes, (num_triples,), generator=gen)
    t = torch.randint(0, num_nodes, (num_triples,), generator=gen)
    g = dgl.graph((torch.cat([h, t]), torch.cat([t, h])), num_nodes=num_nodes)
    g.edata["etype"] = torch.cat([r, r + num_relations])
    g.edata["norm"] = dst_norm(g)
    return g


@pytest.mark.parametrize("decomposition", ["basis", "bdd"])
def test_pairs_order_is_one_batched_product_exact_to_second_order(decomposition):
    g = skewed_graph()
    pairs = EdgePlan.build(g, 10).pairs()
    assert 1 < len(pairs.groups) < pairs.rel.numel() and pairs.rows > pairs.count  # shared groups, padding
    assert sorted(pairs.rel.tolist()) == sorted(set(g.edata["etype"].tolist()))
    gen = torch.Generator().manual_seed(3)
    layer = RelGraphLayer(4, 4, 10, decomposition, 2, True, "pairs", gen).double()
    h = torch.randn(15, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    out = layer(g, h)
    torch.testing.assert_close(out, brute_force(layer, g, h.detach()), rtol=1e-10, atol=1e-10)
    # no product per edge type: one per group (basis: mm for a group of one type, else bmm)
    singles = sum(n == 1 for n, _ in pairs.groups) if decomposition == "basis" else 0
    assert count_nodes(out.sum(), "BmmBackward0") == len(pairs.groups) - singles
    extra = 2 if decomposition == "basis" else 1  # coefficients @ bases (basis), h @ self_weight
    assert count_nodes(out.sum(), "MmBackward0") == extra + singles
    names, params = zip(*layer.named_parameters())
    fn = lambda x, *w: functional_call(layer, dict(zip(names, w)), (g, x))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, *params))
    assert torch.autograd.gradgradcheck(fn, (h, *params))

