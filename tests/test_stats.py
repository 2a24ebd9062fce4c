"""Frequencies, degrees and long-tail buckets, checked by hand on the toy set."""
from __future__ import annotations

import torch

from metasd_dgl.data import stats

# datasets/toy/train.txt as ids (alice 0, bob 1, carol 2, dave 3, erin 4, frank 5,
# paris 6, rome 7, oslo 8, gina 9, hank 10; likes 0, knows 1, lives_in 2)
TRAIN = torch.tensor([[0, 0, 1], [1, 0, 2], [2, 0, 0], [0, 1, 3], [3, 1, 4], [4, 1, 5], [0, 2, 6],
                      [1, 2, 6], [2, 2, 6], [3, 2, 7], [4, 2, 7], [5, 2, 8], [9, 1, 0]])
N, R = 11, 3
DEGREE = [5, 3, 3, 3, 3, 2, 3, 2, 1, 1, 0]


def test_frequency_and_degree():
    assert stats.relation_frequency(TRAIN, R).tolist() == [3, 4, 6]
    assert stats.entity_degree(TRAIN, N).tolist() == DEGREE
    loop = torch.tensor([[1, 0, 1]])  # a self-loop counts twice
    assert stats.entity_degree(loop, 3).tolist() == [0, 2, 0]


def test_relation_buckets_by_hand():
    # T = 13 triples; groups 3, 4, 6 occupy [0,3), [3,7), [7,13); midpoints 1.5, 5, 10.
    # B = 3: floor(3 * mid / 13) = 0, 1, 2.   B = 2: floor(2 * mid / 13) = 0, 0, 1.
    assert stats.relation_buckets(TRAIN, R, 3).tolist() == [0, 1, 2]
    assert stats.relation_buckets(TRAIN, R, 2).tolist() == [0, 0, 1]
    assert stats.relation_buckets(TRAIN, R, 1).tolist() == [0, 0, 0]
    freq = stats.relation_frequency(TRAIN, R)
    ranges = stats.bucket_ranges(freq, stats.relation_buckets(TRAIN, R, 2), 2)
    assert stats.bucket_labels(ranges, "rel freq") == ["rel freq 3-4", "rel freq 6-6"]


def test_entity_buckets_by_hand():
    # T = 26 ends; degree groups 0 (mass 0), 1 (2), 2 (4), 3 (15), 5 (5);
    # midpoints 0, 1, 4, 13.5, 23.5 -> floor(3 * mid / 26) = 0, 0, 0, 1, 2.
    got = stats.entity_buckets(TRAIN, N, 3)
    assert got.tolist() == [2, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0]
    degree = stats.entity_degree(TRAIN, N)
    ranges = stats.bucket_ranges(degree, got, 3)
    assert ranges == [(0, 2), (3, 3), (5, 5)]
    assert stats.bucket_labels(ranges, "ent degree") == ["ent degree 0-2", "ent degree 3-3", "ent degree 5-5"]


def test_degenerate_counts():
    # one tie group: everything in bucket 0, the others empty
    same = torch.tensor([2, 2, 2])
    b = stats.quantile_buckets(same, 3)
    assert b.tolist() == [0, 0, 0]
    assert stats.bucket_labels(stats.bucket_ranges(same, b, 3), "x") == ["x 2-2", "x (empty)", "x (empty)"]
    assert stats.quantile_buckets(torch.zeros(4, dtype=torch.long), 3).tolist() == [0, 0, 0, 0]
    # rarest group holds 6 of 8: midpoint 3 -> floor(9/8) = 1, shifted to 0; the 2 -> floor(21/8) = 2 -> 1
    assert stats.quantile_buckets(torch.tensor([1, 1, 1, 1, 1, 1, 2]), 3).tolist() == [0] * 6 + [1]


def test_triple_buckets():
    test = torch.tensor([[2, 1, 1], [9, 2, 8], [10, 0, 0]])  # carol knows bob, gina lives_in oslo, hank likes alice
    got = stats.triple_buckets(test, stats.relation_buckets(TRAIN, R, 3), stats.entity_buckets(TRAIN, N, 3))
    assert got["relation"].tolist() == [1, 2, 0]
    assert got["head"].tolist() == [1, 0, 0]
    assert got["tail"].tolist() == [1, 0, 2]


def test_summarize():
    s = stats.summarize(TRAIN, N, R, 3)
    assert s["relation_frequency"] == [3, 4, 6] and s["entity_degree"] == DEGREE
    assert s["relation_buckets"]["labels"] == ["rel freq 3-3", "rel freq 4-4", "rel freq 6-6"]
    assert s["relation_buckets"]["mass"] == [3, 4, 6] and s["relation_buckets"]["items"] == [1, 1, 1]
    assert s["entity_buckets"]["mass"] == [6, 15, 5] and s["entity_buckets"]["items"] == [5, 5, 1]
    assert s["entity_buckets"]["ranges"] == [[0, 2], [3, 3], [5, 5]]
