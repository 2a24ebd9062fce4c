"""DGL sampling: edge-sampled subgraphs, full-graph edge dropout, negatives, quiz split, devices."""
from __future__ import annotations

import dgl
import pytest
import torch

from metasd_dgl.runtime.device import dgl_cuda_wheel_hint, resolve_device, to_device
from metasd_dgl.errors import DeviceError
from metasd_dgl.graph.sampling import (
    dst_norm, edge_sampled_subgraph, full_graph_dropout, negative_tails, quiz_split, to_local, without_edges,
)

NUM_NODES, NUM_REL, NUM_TRIPLES = 30, 4, 120


def graph_and_triples(seed: int = 0):
    """Distinct random triples and their graph (forward edges, then inverses)."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randperm(NUM_NODES * NUM_REL * NUM_NODES, generator=gen)[:NUM_TRIPLES]
    h, rest = keys // (NUM_REL * NUM_NODES), keys % (NUM_REL * NUM_NODES)
    r, t = rest // NUM_NODES, rest % NUM_NODES
    triples = torch.stack([h, r, t], dim=1)
    g = dgl.graph((torch.cat([h, t]), torch.cat([t, h])), num_nodes=NUM_NODES)
    g.edata["etype"] = torch.cat([r, r + NUM_REL])
    g.edata["norm"] = dst_norm(g)
    return g, triples


def edge_triples(sub: dgl.DGLGraph) -> set[tuple[int, int, int]]:
    """Forward-direction (h, r, t) triples of a subgraph, in entity ids."""
    nid = sub.ndata[dgl.NID] if dgl.NID in sub.ndata else torch.arange(sub.num_nodes())
    src, dst = sub.edges()
    out = set()
    for s, d, e in zip(nid[src].tolist(), nid[dst].tolist(), sub.edata["etype"].tolist()):
        out.add((s, e, d) if e < NUM_REL else (d, e - NUM_REL, s))
    return out


def check_structure(g, sub):
    """Relabelling maps back to g's edges; pairs kept together; norm = 1/in-degree in sub."""
    n = g.num_edges() // 2
    eid = sub.edata[dgl.EID].long()
    nid = sub.ndata[dgl.NID] if dgl.NID in sub.ndata else torch.arange(sub.num_nodes())
    src, dst = sub.edges()
    gsrc, gdst = g.find_edges(eid)
    assert torch.equal(nid[src], gsrc) and torch.equal(nid[dst], gdst)
    assert torch.equal(sub.edata["etype"], g.edata["etype"][eid])
    fwd = set(eid[eid < n].tolist())
    assert {e - n for e in eid[eid >= n].tolist()} == fwd  # every triple with its inverse
    indeg = torch.bincount(dst, minlength=sub.num_nodes()).float()
    torch.testing.assert_close(sub.edata["norm"], (1.0 / indeg[dst]).unsqueeze(1))
    return fwd


def test_edge_sampled_subgraph_excludes_positives_and_relabels():
    g, triples = graph_and_triples()
    batch = torch.tensor([3, 17, 40, 99])
    extra = torch.tensor([[0, 29], [5, 5]])
    sub, local = edge_sampled_subgraph(g, triples, batch, torch.Generator().manual_seed(1), 0.5,
                                       sample_size=60, extra_nodes=extra)
    fwd = check_structure(g, sub)
    assert not fwd & set(batch.tolist())
    assert not edge_triples(sub) & {tuple(t) for t in triples[batch].tolist()}
    assert len(fwd) == 30  # half of the 60 sampled triples
    nid = sub.ndata[dgl.NID]
    assert torch.equal(nid[local[:, 0]], triples[batch, 0]) and torch.equal(nid[local[:, 1]], triples[batch, 2])
    assert torch.equal(nid[to_local(sub, extra)], extra)
    assert len(set(nid.tolist())) == sub.num_nodes()
    again, local2 = edge_sampled_subgraph(g, triples, batch, torch.Generator().manual_seed(1), 0.5,
                                          sample_size=60, extra_nodes=extra)
    assert torch.equal(again.edata[dgl.EID], sub.edata[dgl.EID]) and torch.equal(local, local2)
    other, _ = edge_sampled_subgraph(g, triples, batch, torch.Generator().manual_seed(2), 0.5, sample_size=60)
    assert not torch.equal(other.edata[dgl.EID], sub.edata[dgl.EID])


def test_edge_sampled_subgraph_all_edges_and_nested_graph():
    g, triples = graph_and_triples(1)
    batch = torch.arange(10)
    sub, _ = edge_sampled_subgraph(g, triples, batch, torch.Generator().manual_seed(0), 0.0)
    assert check_structure(g, sub) == set(range(10, NUM_TRIPLES))
    # A relabelled parent: NID must still name entities.
    parent, _ = edge_sampled_subgraph(g, triples, batch, torch.Generator().manual_seed(0), 0.2)
    kept = parent.edata[dgl.EID].long()
    kept = kept[kept < NUM_TRIPLES]
    ptriples = triples[kept]
    child, local = edge_sampled_subgraph(parent, ptriples, torch.tensor([0, 1]), torch.Generator().manual_seed(4), 0.5)
    assert torch.equal(child.ndata[dgl.NID][local[:, 0]], ptriples[:2, 0])
    assert edge_triples(child) <= {tuple(t) for t in ptriples[2:].tolist()}
    with pytest.raises(ValueError):
        edge_sampled_subgraph(g, triples, torch.tensor([NUM_TRIPLES]), torch.Generator(), 0.5)
    with pytest.raises(ValueError):
        to_local(sub, torch.tensor([NUM_NODES + 5]))


def test_full_graph_dropout_keeps_nodes_and_pairs():
    g, _ = graph_and_triples(2)
    exclude = torch.tensor([1, 2, 3])
    sub = full_graph_dropout(g, 0.25, torch.Generator().manual_seed(0), exclude_edge_ids=exclude)
    assert sub.num_nodes() == g.num_nodes() and dgl.NID not in sub.ndata
    fwd = check_structure(g, sub)
    assert not fwd & {1, 2, 3}
    assert NUM_TRIPLES - 30 - 3 <= len(fwd) <= NUM_TRIPLES - 30
    same = full_graph_dropout(g, 0.25, torch.Generator().manual_seed(0), exclude_edge_ids=exclude)
    assert torch.equal(same.edata[dgl.EID], sub.edata[dgl.EID])
    assert full_graph_dropout(g, 0.0, torch.Generator()).num_edges() == g.num_edges()


def test_without_edges_drops_exactly_those_triples_both_ways():
    g, _ = graph_and_triples(2)
    sub = without_edges(g, torch.tensor([0, 5, 5, 7]))
    assert sub.num_nodes() == g.num_nodes() and dgl.NID not in sub.ndata
    assert check_structure(g, sub) == set(range(NUM_TRIPLES)) - {0, 5, 7}
    assert sub.num_edges() == g.num_edges() - 6
    assert without_edges(g, torch.zeros(0, dtype=torch.int64)).num_edges() == g.num_edges()


def test_negative_tails_deterministic_and_in_range():
    g, _ = graph_and_triples()
    eids = torch.tensor([0, 5, 7])
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    a = negative_tails(g, eids, 6, torch.Generator().manual_seed(42))
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = negative_tails(g, eids, 6, torch.Generator().manual_seed(42))
    c = negative_tails(g, eids, 6, torch.Generator().manual_seed(43))
    assert a.shape == (3, 6) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < NUM_NODES
    gen = torch.Generator().manual_seed(1)
    assert not torch.equal(negative_tails(g, eids, 6, gen), negative_tails(g, eids, 6, gen))


def test_negative_tails_leave_dgl_rng_alone():
    """Drawing negatives reseeds nothing process-wide: DGL's own RNG continues as if untouched."""
    g, _ = graph_and_triples()
    draw = lambda: dgl.sampling.sample_neighbors(g, torch.arange(NUM_NODES), 2).edata[dgl.EID]  # noqa: E731

    dgl.seed(7)
    draw()
    expected = draw()
    dgl.seed(7)
    draw()
    negative_tails(g, torch.tensor([0, 5, 7]), 6, torch.Generator().manual_seed(42))
    assert torch.equal(draw(), expected)


def test_quiz_split_is_seeded_partition():
    tr, qz = quiz_split(1000, 0.02, torch.Generator().manual_seed(0))
    assert qz.numel() == 20 and tr.numel() == 980
    assert torch.equal(torch.sort(torch.cat([tr, qz])).values, torch.arange(1000))
    tr2, qz2 = quiz_split(1000, 0.02, torch.Generator().manual_seed(0))
    assert torch.equal(qz, qz2) and torch.equal(tr, tr2)
    assert not torch.equal(qz, quiz_split(1000, 0.02, torch.Generator().manual_seed(1))[1])
    assert not torch.equal(qz, torch.arange(20))  # not the first 2% in file order
    assert quiz_split(10, 0.001, torch.Generator())[1].numel() == 1
    with pytest.raises(ValueError):
        quiz_split(10, 1.0, torch.Generator())


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    g, _ = graph_and_triples()
    assert to_device(g, "cpu").device == torch.device("cpu")
    with pytest.raises(DeviceError, match="expected cpu, cuda"):
        resolve_device("tpu")
    hint = dgl_cuda_wheel_hint()
    assert hint.startswith("pip install dgl==2.1.0+cu") and "https://data.dgl.ai/wheels/torch-" in hint
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError) as info:
            resolve_device("cuda")
        assert hint in str(info.value)
        with pytest.raises(DeviceError):
            resolve_device("cuda:1")


def test_dgl_without_cuda_names_the_wheel(monkeypatch):
    """torch sees a GPU but DGL cannot move a graph there (CPU-only DGL): where a graph is needed the
    error names the wheel; the graph-free KGE path gets its device."""
    import metasd_dgl.runtime.device as dev

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def refuse(self, device, **kwargs):
        raise dgl.DGLError("Device API cuda is not enabled. Please install the cuda version of dgl.")

    g, _ = graph_and_triples()
    monkeypatch.setattr(dgl.DGLGraph, "to", refuse)
    assert dev.resolve_device("cuda:0") == torch.device("cuda", 0)  # KGE 1-N: no graph, DGL not asked
    with pytest.raises(DeviceError, match="CPU-only build") as info:
        dev.resolve_device("cuda:0", needs_graph=True)
    assert "pip install dgl==2.1.0+cu" in str(info.value) and "repo.html" in str(info.value)
    with pytest.raises(DeviceError, match="CPU-only build"):  # the trainer moves its graph: same error
        dev.to_device(g, torch.device("cuda", 0))
