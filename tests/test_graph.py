"""The training graph: hand-computed edges, edge types and norms on the toy set."""
from __future__ import annotations

import torch

from metasd_dgl.graph.build import build_graph, load_graph, save_graph

# datasets/toy/train.txt as ids (see tests/test_stats.py)
TRAIN = torch.tensor([[0, 0, 1], [1, 0, 2], [2, 0, 0], [0, 1, 3], [3, 1, 4], [4, 1, 5], [0, 2, 6],
                      [1, 2, 6], [2, 2, 6], [3, 2, 7], [4, 2, 7], [5, 2, 8], [9, 1, 0]])
N, R = 11, 3
# (src, dst, etype, norm = 1 / degree(dst)); degrees 5,3,3,3,3,2,3,2,1,1,0
EXPECTED = [
    (0, 1, 0, 1 / 3), (1, 2, 0, 1 / 3), (2, 0, 0, 1 / 5), (0, 3, 1, 1 / 3), (3, 4, 1, 1 / 3),
    (4, 5, 1, 1 / 2), (0, 6, 2, 1 / 3), (1, 6, 2, 1 / 3), (2, 6, 2, 1 / 3), (3, 7, 2, 1 / 2),
    (4, 7, 2, 1 / 2), (5, 8, 2, 1.0), (9, 0, 1, 1 / 5),
    # inverses: t -> h with etype r + 3
    (1, 0, 3, 1 / 5), (2, 1, 3, 1 / 3), (0, 2, 3, 1 / 3), (3, 0, 4, 1 / 5), (4, 3, 4, 1 / 3),
    (5, 4, 4, 1 / 3), (6, 0, 5, 1 / 5), (6, 1, 5, 1 / 3), (6, 2, 5, 1 / 3), (7, 3, 5, 1 / 3),
    (7, 4, 5, 1 / 3), (8, 5, 5, 1 / 2), (0, 9, 4, 1.0),
]


def edges(g) -> list:
    src, dst = g.edges(order="eid")
    norm = g.edata["norm"].squeeze(1).tolist()
    return [(s, d, e, n) for s, d, e, n in zip(src.tolist(), dst.tolist(), g.edata["etype"].tolist(), norm)]


def assert_expected(g) -> None:
    got = edges(g)
    assert [x[:3] for x in got] == [x[:3] for x in EXPECTED]
    assert torch.allclose(torch.tensor([x[3] for x in got]), torch.tensor([x[3] for x in EXPECTED]))


def test_toy_graph_by_hand():
    g = build_graph(TRAIN, N, R)
    assert g.num_nodes() == N and g.num_edges() == 26  # hank (10) is isolated but present
    assert g.edata["etype"].dtype == torch.int64
    assert g.edata["norm"].dtype == torch.float32 and g.edata["norm"].shape == (26, 1)
    assert g.in_degrees().tolist() == [5, 3, 3, 3, 3, 2, 3, 2, 1, 1, 0]
    assert_expected(g)


def test_save_load_round_trip(tmp_path):
    save_graph(build_graph(TRAIN, N, R), tmp_path / "graph.bin")
    g = load_graph(tmp_path / "graph.bin")
    assert g.num_nodes() == N
    assert_expected(g)


def test_isolated_tail_entities_and_empty_train():
    g = build_graph(torch.tensor([[0, 0, 1]]), 5, 1)
    assert g.num_nodes() == 5 and g.num_edges() == 2
    assert g.edata["etype"].tolist() == [0, 1] and g.edata["norm"].squeeze(1).tolist() == [1.0, 1.0]
    empty = build_graph(torch.zeros(0, 3, dtype=torch.long), 3, 2)
    assert empty.num_nodes() == 3 and empty.num_edges() == 0
