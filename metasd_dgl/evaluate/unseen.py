"""Valid/test triples whose entity or relation never occurs in training: counted, and a stated policy.

Such a triple has an embedding row that training never updated (its
initial value).  Policies (``eval.unseen``):

* ``rank`` (default, the common protocol): ranked like any other triple;
* ``drop``: left out of the ranking (and of the metrics' denominators).

Whatever the policy, evaluation says on the console how many triples of the
split are unseen (by entity, by relation) and which policy applied, and
``eval/<split>.json`` records it under ``"unseen"``.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch

from metasd_dgl.errors import UserError

POLICIES = ("rank", "drop")


def unseen_mask(triples: torch.Tensor, train: torch.Tensor, num_entities: int,
                num_relations: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(n, 3) triples -> ((n,) bool: an entity absent from train, (n,) bool: a relation absent from train)."""
    seen_ent = torch.zeros(num_entities, dtype=torch.bool)
    seen_rel = torch.zeros(num_relations, dtype=torch.bool)
    if len(train):
        seen_ent[train[:, 0]] = True
        seen_ent[train[:, 2]] = True
        seen_rel[train[:, 1]] = True
    if not len(triples):
        empty = torch.zeros(0, dtype=torch.bool)
        return empty, empty
    ent = ~seen_ent[triples[:, 0]] | ~seen_ent[triples[:, 2]]
    rel = ~seen_rel[triples[:, 1]]
    return ent, rel


def apply_unseen(triples: torch.Tensor, train: torch.Tensor, num_entities: int, num_relations: int,
                 policy: str = "rank", split: str = "test") -> Tuple[torch.Tensor, dict[str, Any]]:
    """-> (the triples to rank under ``policy``, the record of what was found and done)."""
    if policy not in POLICIES:
        raise UserError(f"eval.unseen={policy!r} is not one of {', '.join(POLICIES)}")
    ent, rel = unseen_mask(triples, train, num_entities, num_relations)
    either = ent | rel
    count = int(either.sum())
    kept = triples[~either] if policy == "drop" else triples
    if policy == "drop" and count and not len(kept):
        raise UserError(f"every {split} triple has an entity or relation absent from train; "
                        "nothing is left to rank with eval.unseen=drop (use eval.unseen=rank)")
    info = {"policy": policy, "triples": len(triples), "unseen_triples": count,
            "unseen_entity_triples": int(ent.sum()), "unseen_relation_triples": int(rel.sum()),
            "ranked": len(kept),
            "meaning": "ranked like any other triple" if policy == "rank" else "left out of the ranking"}
    return kept, info


def unseen_line(split: str, info: dict[str, Any]) -> str:
    """The console line: how many, by what, and the policy that applied."""
    n, k = info["triples"], info["unseen_triples"]
    if not k:
        return f"unseen: none of the {n} {split} triples has an entity or relation absent from train"
    other = "drop" if info["policy"] == "rank" else "rank"
    return (f"unseen: {k} of {n} {split} triples have an entity ({info['unseen_entity_triples']}) or relation "
            f"({info['unseen_relation_triples']}) absent from train; policy eval.unseen={info['policy']}: "
            f"{info['meaning']} (eval.unseen={other} to {'leave them out' if other == 'drop' else 'rank them'})")


def manifest_line(manifest: dict[str, Any]) -> str:
    """The console line of ``preprocess``: unseen-entity and unseen-relation triples of valid/test, and
    that evaluation's policy decides (the manifest's counts; older manifests lack the relation counts)."""
    ent = manifest.get("unseen_entities") or {}
    rel = manifest.get("unseen_relations") or {}
    if not ent and not rel:
        return "unseen: not counted in this manifest (re-run preprocess --force to count them)"
    parts = [f"{ent.get(s + '_triples', 0)} {s}" for s in ("valid", "test")]
    rels = (f"; with a relation absent from train: {rel.get('valid_triples', 0)} valid, "
            f"{rel.get('test_triples', 0)} test") if rel else ""
    return (f"unseen: triples with an entity absent from train: {', '.join(parts)}{rels}; kept -- evaluate ranks "
            "them (eval.unseen=rank) or leaves them out (eval.unseen=drop) and says how many")
