"""metasd-dgl subset: top-k entities by training degree (ties by name) and the triples kept, by hand."""
from __future__ import annotations

import json

from metasd_dgl.cli import main
from metasd_dgl.data.subset import top_entities_subset, training_degree
from metasd_dgl.data.triples import RawKG

# degrees in distinct train triples: a 4, b 3, c 3, d 2, e 1, z 1 (the duplicate a-r1-b counts once)
TRAIN = [("a", "r1", "b"), ("a", "r1", "c"), ("a", "r2", "d"), ("b", "r1", "c"), ("a", "r1", "b"),
         ("c", "r3", "e"), ("b", "r2", "z"), ("d", "r1", "a")]
VALID = [("a", "r1", "d"),    # kept
         ("a", "r3", "b"),    # dropped: r3 is not in the subset's train (only c-r3-e had it)
         ("b", "r1", "e"),    # dropped: e is not kept
         ("c", "r2", "b")]    # kept
TEST = [("d", "r2", "c"), ("z", "r1", "a"), ("b", "r9", "a")]  # kept, dropped (z), dropped (r9)


def _raw() -> RawKG:
    return RawKG(train=list(TRAIN), valid=list(VALID), test=list(TEST), source="hand")


def test_degrees_and_top_k_with_ties_by_name():
    assert dict(training_degree(TRAIN)) == {"a": 4, "b": 3, "c": 3, "d": 2, "e": 1, "z": 1}
    assert top_entities_subset(_raw(), 2).entities == ["a", "b"]  # b and c tie at 3: b first by name
    assert top_entities_subset(_raw(), 3).entities == ["a", "b", "c"]
    assert top_entities_subset(_raw(), 5).entities == ["a", "b", "c", "d", "e"]  # e and z tie: e


def test_triples_kept():
    sub = top_entities_subset(_raw(), 4)
    assert sub.splits["train"] == [("a", "r1", "b"), ("a", "r1", "c"), ("a", "r2", "d"), ("b", "r1", "c"),
                                   ("a", "r1", "b"), ("d", "r1", "a")]
    assert sub.splits["valid"] == [("a", "r1", "d"), ("c", "r2", "b")]
    assert sub.splits["test"] == [("d", "r2", "c")]
    # with k=5, e is kept but its only train triple (c-r3-e) holds r3 ... and c: it stays
    assert top_entities_subset(_raw(), 5).counts()["entities"] == 5
    lonely = RawKG(train=TRAIN + [("q", "r1", "y"), ("q", "r2", "x")], valid=[], test=[], source="hand")
    assert top_entities_subset(lonely, 5).entities == ["a", "b", "c", "d", "q"]
    assert top_entities_subset(lonely, 5).counts()["entities"] == 4  # q's neighbours x, y are not kept
    assert sub.counts() == {"top": 4, "entities": 4, "relations": 2, "train": 6, "valid": 2, "test": 1}


def test_order_of_the_source_does_not_change_the_entities():
    shuffled = RawKG(train=list(reversed(TRAIN)), valid=VALID, test=TEST, source="hand")
    for k in (2, 5):  # reversed, z is met before e: ties still go by name
        assert top_entities_subset(shuffled, k).entities == top_entities_subset(_raw(), k).entities


def test_command_writes_a_dataset_that_preprocess_reads(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name, rows in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (src / f"{name}.txt").write_text("".join("\t".join(r) + "\n" for r in rows))
    out = tmp_path / "sub"
    assert main(["subset", str(src), "--top-entities", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top 4 entities by degree, 4 with a train triple inside, 2 relations, train/valid/test 6/2/1 (of 8/4/3)" in printed
    assert (out / "valid.txt").read_text() == "a\tr1\td\nc\tr2\tb\n"
    assert json.loads((out / "subset.json").read_text())["counts"]["train"] == 6
    assert main(["preprocess", str(out), "--out", str(tmp_path / "p")]) == 0
    assert "4 entities, 2 relations, train/valid/test 5/2/1" in capsys.readouterr().out  # duplicate dropped


def test_smallest_full_subset_by_hand_and_by_brute_force():
    from metasd_dgl.data.subset import smallest_full_subset

    # k=2 (a, b) and k=3 (a, b, c) keep no valid or test triple; k=4 adds d: a-r1-d, c-r2-b, d-r2-c
    for k in (1, 2, 3):
        found, sub = smallest_full_subset(_raw(), k)
        assert found == 4 and [len(sub.splits[s]) for s in ("train", "valid", "test")] == [6, 2, 1]
    for k in range(1, 6):
        brute = next((j for j in range(k + 1, 7) if all(top_entities_subset(_raw(), j).splits.values())), None)
        got = smallest_full_subset(_raw(), k)
        assert (got[0] if got else None) == brute
    raw = RawKG(train=list(TRAIN), valid=list(VALID), test=[("q", "r1", "a")], source="hand")
    assert smallest_full_subset(raw, 1) is None  # test names an entity no train triple has


def test_subset_with_an_empty_split_is_refused_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name, rows in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (src / f"{name}.txt").write_text("".join("\t".join(x) + "\n" for x in rows))
    assert main(["subset", str(src), "--top-entities", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'out'}: --top-entities 2 leaves valid and test empty (train/valid/test "
                   "2/0/0); nothing was written; --top-entities 4 is the smallest that gives every split a "
                   "triple (6/2/1)")
    assert not (tmp_path / "out").exists()
