"""Triple classification: true valid/test triples against negatives, sampled or given.

Given negatives (``classify_given``; a dataset that ships hard negatives, e.g.
CoDEx-S, or ``classify --negatives-valid/--negatives-test``): the valid
triples against the valid negatives choose the thresholds, the test triples
against the test negatives are scored; nothing is sampled.

Sampled negatives (``triple_classification``): each positive ``(h, r, t)`` gets ``num_negatives`` corruptions; each
corrupts the tail or the head (a fair coin per negative, from the generator)
with an entity drawn uniformly by DGL's ``negative_sampler.Uniform``
(``graph.sampling.negative_tails``) over a graph on all ``N`` entities whose
edge ``i`` is positive ``i`` and edge ``i + n`` its inverse (the training
graph's convention), so corrupting the tail of edge ``i + n`` corrupts the head.
A negative that is a known fact (train, valid or test; keyed as
``data.triples.triple_keys``) is redrawn, all collisions at once, up to
``max_rounds`` times; any left are dropped and counted.

Thresholds: per relation, the one maximising validation accuracy (predict
"true" iff ``score >= threshold``; candidates are midpoints between
consecutive distinct scores, and ``min - 1`` / ``max + 1``; the lowest best is
kept).  Relations without validation triples use the threshold chosen over all
validation triples together.  Metrics that are undefined (one class only) are None.  ROC-AUC and average precision
(``sklearn.metrics``) are reported per relation and overall (raw scores, all
relations pooled); accuracy and F1 (of the "true" class) on test use the
per-relation thresholds (validation accuracy is reported too, but is fitted,
hence optimistic).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor

from metasd_dgl.graph.dgl_import import dgl
from metasd_dgl.data.triples import triple_keys
from metasd_dgl.model.decoders import Decoder
from metasd_dgl.graph.sampling import negative_tails
from metasd_dgl.typing import HEAD, REL, TAIL


def _is_known(keys: Tensor, known_sorted: Tensor) -> Tensor:
    """(m,) keys, sorted (K,) known keys -> (m,) bool membership."""
    if known_sorted.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(known_sorted, keys).clamp(max=known_sorted.numel() - 1)
    return known_sorted[pos] == keys


def corrupt(triples: Tensor, known: Tensor, num_entities: int, num_relations: int,
            generator: torch.Generator, num_negatives: int = 1, max_rounds: int = 20,
            ) -> tuple[Tensor, Tensor, dict[str, int]]:
    """Draw filtered negatives for positives ``triples`` (n, 3).

    ``known`` (K, 3) are all known facts.  Returns ``(negatives (m, 3),
    source (m,) index of the positive each corrupts, counts)`` with
    ``m <= n * num_negatives`` (collisions left after ``max_rounds`` dropped)
    and ``counts = {"drawn", "redrawn", "dropped"}``.
    """
    n = triples.shape[0]
    graph = dgl.graph((torch.cat([triples[:, HEAD], triples[:, TAIL]]), torch.cat([triples[:, TAIL], triples[:, HEAD]])),
                      num_nodes=num_entities, idtype=torch.int64)
    source = torch.arange(n).repeat_interleave(num_negatives)  # (m,)
    flip = torch.rand(source.numel(), generator=generator) < 0.5  # True: corrupt the head
    eids = source + n * flip.long()
    known_sorted = triple_keys(known, num_entities, num_relations).unique()  # sorted
    negatives = triples[source].clone()
    side = torch.where(flip, torch.tensor(HEAD), torch.tensor(TAIL))
    todo = torch.arange(source.numel())
    redrawn = 0
    for round_ in range(max_rounds + 1):
        if todo.numel() == 0:
            break
        if round_:
            redrawn += todo.numel()
        draw = negative_tails(graph, eids[todo], 1, generator)[:, 0]
        negatives[todo, side[todo]] = draw
        bad = _is_known(triple_keys(negatives[todo], num_entities, num_relations), known_sorted)
        todo = todo[bad]
    keep = torch.ones(source.numel(), dtype=torch.bool)
    keep[todo] = False
    counts = {"drawn": int(source.numel()), "redrawn": redrawn, "dropped": int(todo.numel())}
    return negatives[keep], source[keep], counts


@torch.no_grad()
def score_triples(entity: Tensor, relation: Tensor, decoder: Decoder, triples: Tensor,
                  chunk: int = 65536) -> Tensor:
    """(n, 3) -> (n,) scores with tables ``entity`` (N, w_e), ``relation`` (2R, w_r); chunked rows."""
    out = [decoder.score(entity[c[:, HEAD]], relation[c[:, REL]], entity[c[:, TAIL]]).float().cpu()
           for c in triples.to(entity.device).split(chunk)]
    return torch.cat(out) if out else torch.zeros(0)


def best_thresholds(scores: Tensor, labels: Tensor, groups: Tensor, num_groups: int,
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Accuracy-maximising threshold per group (rule in the module docstring).

    ``scores`` (n,) float, ``labels`` (n,) bool, ``groups`` (n,) ids in [0, G).
    Returns ``(threshold (G,), accuracy (G,), present (G,) bool)``; absent
    groups get NaN.
    """
    s = scores.double()
    order = torch.sort(s, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]  # by group, then score
    s, y, g = s[order], labels[order].long(), groups[order]
    n = s.numel()
    size = torch.bincount(g, minlength=num_groups)
    start = torch.cumsum(size, 0) - size  # (G,)
    pos_total = torch.zeros(num_groups, dtype=torch.long).index_add_(0, g, y)
    cum_pos = torch.cumsum(y, 0) - y  # positives before i overall
    cum_neg = torch.cumsum(1 - y, 0) - (1 - y)
    neg_before = cum_neg - (torch.cumsum(size - pos_total, 0) - (size - pos_total))[g]
    pos_before = cum_pos - (torch.cumsum(pos_total, 0) - pos_total)[g]
    correct = neg_before + pos_total[g] - pos_before  # threshold just below s[i]
    idx = torch.arange(n)
    first = (idx == start[g]) | torch.cat([torch.ones(1, dtype=torch.bool), s[1:] != s[:-1]])
    correct = torch.where(first, correct, torch.full_like(correct, -1))
    all_neg = size - pos_total  # threshold above every score
    best = torch.full((num_groups,), -1, dtype=torch.long).scatter_reduce(0, g, correct, reduce="amax")
    best = torch.maximum(best, all_neg)
    big = n + 1
    at = torch.where(correct == best[g], idx, torch.full_like(idx, big))
    pick = torch.full((num_groups,), big, dtype=torch.long).scatter_reduce(0, g, at, reduce="amin")
    present = size > 0
    threshold = torch.full((num_groups,), math.nan, dtype=torch.float64)
    below = pick < big  # a boundary inside the group wins (lowest threshold first)
    pi = pick.clamp(max=max(n - 1, 0))
    if n:
        prev = torch.where(pi > start, s[(pi - 1).clamp(min=0)], s[pi] - 2.0)
        threshold = torch.where(present & below, (prev + s[pi]) / 2, threshold)
        last = s[(start + size - 1).clamp(min=0, max=n - 1)]
        threshold = torch.where(present & ~below, last + 1.0, threshold)
    accuracy = torch.where(present, best.double() / size.clamp(min=1), torch.full_like(threshold, math.nan))
    return threshold, accuracy, present


def f1_score(predicted: Tensor, labels: Tensor) -> Optional[float]:
    """F1 of the positive class, ``2 TP / (2 TP + FP + FN)``; None when there is no positive at all."""
    tp = int((predicted & labels).sum())
    wrong = int((predicted != labels).sum())
    return None if 2 * tp + wrong == 0 else 2 * tp / (2 * tp + wrong)


def _split_metrics(scores: Tensor, labels: Tensor, correct: Tensor) -> Optional[dict[str, Any]]:
    """ROC-AUC, AP (None when one class is missing), accuracy, F1 and counts; None for no samples."""
    if labels.numel() == 0:
        return None
    y, s = labels.numpy().astype(int), scores.double().numpy()
    both = 0 < y.sum() < y.size
    predicted = correct == labels  # correct iff the prediction equals the label
    return {"roc_auc": float(roc_auc_score(y, s)) if both else None,
            "average_precision": float(average_precision_score(y, s)) if both else None,
            "accuracy": float(correct.double().mean()), "f1": f1_score(predicted, labels),
            "positives": int(y.sum()), "negatives": int(y.size - y.sum())}


def _with_labels(entity: Tensor, relation: Tensor, decoder: Decoder, positives: Tensor, negatives: Tensor,
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """-> (scores, labels, relation ids) of ``positives`` then ``negatives``."""
    triples = torch.cat([positives, negatives])
    labels = torch.cat([torch.ones(len(positives), dtype=torch.bool), torch.zeros(len(negatives), dtype=torch.bool)])
    return score_triples(entity, relation, decoder, triples), labels, triples[:, REL].long()


def choose_thresholds(scores: Tensor, labels: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per-relation thresholds, a relation without examples falling back to the global one.

    Returns ``(threshold (G,), from_relation (G,) bool)``.
    """
    thr, _, present = best_thresholds(scores, labels, groups, num_groups)
    glob_thr, _, _ = best_thresholds(scores, labels, torch.zeros_like(groups), 1)
    return torch.where(present, thr, glob_thr.expand(num_groups)), present


def _classify(valid: tuple[Tensor, Tensor, Tensor], test: tuple[Tensor, Tensor, Tensor], num_relations: int,
              names: list[str]) -> dict[str, Any]:
    """Thresholds from ``valid`` (scores, labels, relations), applied to both; metrics overall and per relation."""
    v_s, v_y, v_g = valid
    t_s, t_y, t_g = test
    thr, present = choose_thresholds(v_s, v_y, v_g, num_relations)
    correct_test = (t_s.double() >= thr[t_g]) == t_y
    correct_valid = (v_s.double() >= thr[v_g]) == v_y
    relations: dict[str, Any] = {}
    for r in torch.unique(torch.cat([v_g, t_g])).tolist():  # loop over relations (metrics only)
        vm, tm = v_g == r, t_g == r
        relations[names[r]] = {
            "threshold": float(thr[r]), "threshold_from": "relation" if bool(present[r]) else "all relations",
            "valid": _split_metrics(v_s[vm], v_y[vm], correct_valid[vm]),
            "test": _split_metrics(t_s[tm], t_y[tm], correct_test[tm]),
        }
    overall = {"valid": _split_metrics(v_s, v_y, correct_valid), "test": _split_metrics(t_s, t_y, correct_test)}
    return {"overall": overall, "relations": relations,
            "rule": "per-relation threshold maximising validation accuracy; see metasd_dgl.tools.classification"}


def triple_classification(tables: tuple[Tensor, Tensor], decoder: Decoder, data, generator: torch.Generator,
                          num_negatives: int = 1, relation_names: Optional[list[str]] = None) -> dict[str, Any]:
    """Classify valid/test triples against filtered corruptions (see the module docstring).

    ``tables`` = (entity (N, w_e), relation (2R, w_r)); ``data`` needs
    ``train``/``valid``/``test`` (n, 3), ``num_entities``, ``num_relations``
    and ``relation_names``.  Returns a JSON-ready dict with ``overall``
    (valid and test: roc_auc, average_precision, accuracy, f1), ``relations``
    (per relation name: threshold, valid accuracy, test metrics and counts),
    ``negatives`` (draw counts per split) and ``num_negatives``.
    """
    N, R = data.num_entities, data.num_relations
    names = relation_names or list(data.relation_names)
    known = torch.cat([data.train, data.valid, data.test]).long()
    ent, rel = tables
    labelled, counts = {}, {}
    for split in ("valid", "test"):
        positives = getattr(data, split).long()
        negatives, _, counts[split] = corrupt(positives, known, N, R, generator, num_negatives)
        labelled[split] = _with_labels(ent, rel, decoder, positives, negatives)
    return {"num_negatives": num_negatives, "negatives": counts,
            **_classify(labelled["valid"], labelled["test"], R, names)}


def classify_given(tables: tuple[Tensor, Tensor], decoder: Decoder, data, negatives: dict[str, Tensor],
                   source: str, relation_names: Optional[list[str]] = None) -> dict[str, Any]:
    """Classify valid/test triples against the given ``negatives`` ``{"valid", "test"}`` (m, 3) ids.

    Same record as ``triple_classification``, with ``negatives`` the counts
    given and ``negatives_source`` saying where they came from.
    """
    names = relation_names or list(data.relation_names)
    ent, rel = tables
    labelled = {split: _with_labels(ent, rel, decoder, getattr(data, split).long(), negatives[split].long())
                for split in ("valid", "test")}
    return {"num_negatives": None, "negatives_source": source,
            "negatives": {s: {"given": int(len(negatives[s]))} for s in ("valid", "test")},
            **_classify(labelled["valid"], labelled["test"], data.num_relations, names)}
