"""Processed folders: ids, manifest, policies, bad input, skip/force, loading, benchmarks."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metasd_dgl.data import registry
from metasd_dgl.data.preprocess import load_processed, preprocess
from metasd_dgl.data.triples import read_tsv
from metasd_dgl.errors import DataError
from metasd_dgl.graph.build import build_graph

TOY = Path(__file__).resolve().parents[1] / "datasets" / "toy"
ENTITIES = "alice bob carol dave erin frank paris rome oslo gina hank".split()
RELATIONS = ["likes", "knows", "lives_in"]
TRAIN = [[0, 0, 1], [1, 0, 2], [2, 0, 0], [0, 1, 3], [3, 1, 4], [4, 1, 5], [0, 2, 6],
         [1, 2, 6], [2, 2, 6], [3, 2, 7], [4, 2, 7], [5, 2, 8], [9, 1, 0]]
VALID = [[1, 1, 2], [5, 0, 4], [3, 0, 0]]
TEST = [[2, 1, 1], [9, 2, 8], [10, 0, 0]]
OUTPUTS = {"entities.tsv", "relations.tsv", "train.npy", "valid.npy", "test.npy", "graph.bin",
           "stats.json", "manifest.json"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return preprocess(TOY, tmp_path_factory.mktemp("p") / "toy")


def test_toy_ids_files_and_manifest(toy):
    assert OUTPUTS <= {p.name for p in toy.iterdir()}
    assert (toy / "entities.tsv").read_text() == "".join(f"{i}\t{n}\n" for i, n in enumerate(ENTITIES))
    assert (toy / "relations.tsv").read_text() == "0\tlikes\n1\tknows\n2\tlives_in\n"
    for name, want in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        arr = np.load(toy / f"{name}.npy")
        assert arr.dtype == np.int64 and arr.tolist() == want
    m = json.loads((toy / "manifest.json").read_text())
    assert m["counts"] == {"entities": 11, "relations": 3, "train": 13, "valid": 3, "test": 3}
    assert m["unseen_entities"]["test_triples"] == 1 and m["unseen_entities"]["valid_triples"] == 0
    assert m["unseen_entities"]["entities_not_in_train"] == 1  # hank
    assert m["duplicates"]["train"] == 0 and m["duplicates"]["policy"].startswith("removed")
    assert m["source"]["format"] == "tsv" and m["source"]["builtin"] is None
    assert m["source"]["input_sha256"]["train.txt"] == registry.sha256_file(TOY / "train.txt")
    assert all(m["files"][p.name] == registry.sha256_file(p) for p in toy.iterdir() if p.name != "manifest.json")
    assert not [p for p in toy.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_load_processed_round_trip(toy):
    d = load_processed(toy)
    assert (d.num_entities, d.num_relations) == (11, 3)
    assert d.entity_names == ENTITIES and d.relation_names == RELATIONS
    assert d.train.dtype == torch.int64 and d.train.tolist() == TRAIN and d.test.tolist() == TEST
    names = [(d.entity_names[h], d.relation_names[r], d.entity_names[t]) for h, r, t in d.valid.tolist()]
    assert names == read_tsv(TOY / "valid.txt")
    assert d.stats["relation_frequency"] == [3, 4, 6]
    want = build_graph(torch.tensor(TRAIN), 11, 3)
    g = d.graph
    assert g.num_nodes() == 11 and torch.equal(torch.stack(g.edges()), torch.stack(want.edges()))
    assert torch.equal(g.edata["etype"], want.edata["etype"]) and torch.equal(g.edata["norm"], want.edata["norm"])


def test_duplicates_counted_and_removed(tmp_path):
    src = tmp_path / "dup"
    shutil.copytree(TOY, src)
    with open(src / "train.txt", "a") as f:
        f.write("bob\tlikes\tcarol\nalice\tlikes\tbob\n")
    with open(src / "test.txt", "a") as f:
        f.write("alice\tlikes\tbob\ncarol\tknows\tbob\n")  # one copy of a train triple, one repeat
    out = preprocess(src, tmp_path / "out")
    m = json.loads((out / "manifest.json").read_text())
    assert m["raw_counts"] == {"train": 15, "valid": 3, "test": 5}
    assert (m["duplicates"]["train"], m["duplicates"]["test"]) == (2, 1)
    assert m["counts"]["train"] == 13 and np.load(out / "train.npy").tolist() == TRAIN
    assert np.load(out / "test.npy").tolist() == TEST + [[0, 0, 1]]
    assert m["overlap"]["test_in_train"] == 1


def bad_sources(tmp_path: Path, kg_dir: Path) -> dict:
    """name -> (source, data_dir, expected message regex) for every bad-input case."""
    cases = {}
    for name, line in (("columns", b"a\tb\n"), ("empty_field", b"a\t\tb\n"), ("utf8", b"\xff\tr\tb\n")):
        folder = tmp_path / name
        shutil.copytree(TOY, folder)
        with open(folder / "valid.txt", "ab") as f:
            f.write(line)
        message = {"columns": "expected 3 tab-separated fields, got 2", "empty_field": "empty field",
                   "utf8": "not UTF-8 text"}[name]
        cases[name] = (folder, None, f"valid.txt:4: {message}$")
    missing = tmp_path / "missing_split"
    shutil.copytree(TOY, missing)
    (missing / "valid.txt").unlink()
    cases["missing_split"] = (missing, None, "missing split 'valid'")
    empty = tmp_path / "empty_split"
    shutil.copytree(TOY, empty)
    (empty / "test.txt").write_text("")
    cases["empty_split"] = (empty, None, "test.txt: no triples$")
    cases["missing_path"] = (str(tmp_path / "nowhere"), None, "nowhere: file not found$")
    cases["unknown_name"] = ("freebase", None, "not a built-in dataset .*umls, wn18rr")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    data = bytearray((kg_dir / "umls.tar.gz").read_bytes())
    data[-5] ^= 1
    (tampered / "umls.tar.gz").write_bytes(bytes(data))
    cases["checksum"] = ("umls", tampered, "sha256 mismatch")
    return cases


CASES = ["columns", "empty_field", "utf8", "missing_split", "empty_split", "missing_path",
         "unknown_name", "checksum"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_leaves_no_output(tmp_path, kg_dir, case):
    source, data_dir, message = bad_sources(tmp_path / "in", kg_dir)[case]
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(DataError, match=message):
        preprocess(source, parent / "kg", data_dir=data_dir)
    assert list(parent.iterdir()) == []


def test_skip_force_and_foreign_folders(tmp_path):
    out = preprocess(TOY, tmp_path / "kg")
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert preprocess(TOY, out) == out and (out / "manifest.json").stat().st_mtime_ns == stamp
    other = tmp_path / "other"
    shutil.copytree(TOY, other)
    (other / "test.txt").write_text("alice\tlikes\tbob\n")
    with pytest.raises(DataError, match="holds another processed dataset"):
        preprocess(other, out)
    preprocess(other, out, force=True)
    assert load_processed(out).test.tolist() == [[0, 0, 1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kg", "other"]  # no temp or old folders left
    foreign = tmp_path / "other"  # a non-empty folder that is not a processed dataset
    with pytest.raises(DataError, match="not a processed dataset folder"):
        preprocess(TOY, foreign, force=True)
    assert (foreign / "train.txt").exists()


def test_load_processed_errors(tmp_path, toy):
    with pytest.raises(DataError, match="no manifest.json"):
        load_processed(tmp_path / "none")
    bad = tmp_path / "bad"
    shutil.copytree(toy, bad)
    arr = np.load(bad / "train.npy")
    arr[0, 0] = 1
    np.save(bad / "train.npy", arr)
    with pytest.raises(DataError, match=r"train.npy: sha256 differs from manifest.json"):
        load_processed(bad)
    shutil.copytree(toy, tmp_path / "g")
    (tmp_path / "g" / "graph.bin").write_bytes(b"junk")
    with pytest.raises(DataError, match="graph.bin: sha256 differs"):
        load_processed(tmp_path / "g").graph


def test_umls_counts(tmp_path, kg_dir):
    start = time.perf_counter()
    d = load_processed(preprocess("umls", tmp_path / "umls", data_dir=kg_dir))
    print(f"umls preprocess+load: {time.perf_counter() - start:.2f}s")
    assert (d.num_entities, d.num_relations) == (135, 46)
    assert [len(d.train), len(d.valid), len(d.test)] == [5216, 652, 661]
    assert d.manifest["source"]["matches_published_counts"] is True
    assert d.graph.num_edges() == 2 * 5216
    head = (kg_dir / "umls.tar.gz")  # first train line of the archive maps back to its names
    assert d.manifest["source"]["input_sha256"] == {"umls.tar.gz": registry.sha256_file(head)}
    h, r, t = d.train[0].tolist()
    assert (d.entity_names[h], d.relation_names[r], d.entity_names[t]) == \
        ("acquired_abnormality", "location_of", "experimental_model_of_disease")


@pytest.mark.slow  # preprocesses FB15k-237 (272k triples)
def test_fb15k237_counts_and_unseen(tmp_path, kg_dir):
    out = preprocess("FB15k-237", tmp_path / "fb", data_dir=kg_dir)  # speed belongs in benchmarks, not here
    d = load_processed(out)
    assert (d.num_entities, d.num_relations) == (14541, 237)
    assert [len(d.train), len(d.valid), len(d.test)] == [272115, 17535, 20466]
    # README's 37 = valid + test triples naming an entity absent from train (kept, not dropped)
    unseen = d.manifest["unseen_entities"]
    assert (unseen["valid_triples"], unseen["test_triples"], unseen["total_triples"]) == (9, 28, 37)
    seen = torch.zeros(d.num_entities, dtype=torch.bool)
    seen[d.train[:, [0, 2]].reshape(-1)] = True
    assert int((~seen[d.test[:, 0]] | ~seen[d.test[:, 2]]).sum()) == 28
    assert all(not n.endswith("\r") for n in d.entity_names[:100])  # CRLF stripped
    assert d.stats["relation_frequency"][d.train[0, 1]] > 0 and sum(d.stats["relation_frequency"]) == 272115


def test_filter_index_contract(tmp_path):
    out = preprocess(TOY, tmp_path / "kg")
    m = json.loads((out / "manifest.json").read_text())
    assert m["filter"] == "filter.npz" and "filter.npz" in m["files"]
    index = load_processed(out).filter  # train + valid + test, both directions
    everything = torch.tensor(TRAIN + VALID + TEST)
    assert bool((index.count(everything[:, 0], everything[:, 1]) > 0).all())
    assert bool((index.count(everything[:, 2], everything[:, 1] + 3) > 0).all())
    rows, ents = index.known(torch.tensor([0]), torch.tensor([0]))
    assert sorted(ents.tolist()) == sorted(t for h, r, t in TRAIN + VALID + TEST if (h, r) == (0, 0))


def test_load_graph_junk(tmp_path):
    from metasd_dgl.graph.build import load_graph

    (tmp_path / "g.bin").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable DGL graph file"):
        load_graph(tmp_path / "g.bin")
    with pytest.raises(DataError, match="file not found"):
        load_graph(tmp_path / "none.bin")


def test_loaded_data_is_built_whole_and_not_reassigned(tmp_path):
    import dataclasses

    data = load_processed(preprocess(TOY, tmp_path / "p"))
    assert (data.num_entities, data.num_relations) == (len(data.entity_names), len(data.relation_names)) == (11, 3)
    assert [len(data.split(s)) for s in ("train", "valid", "test")] == [13, 3, 3]
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.train = data.train[:2]
    fewer = dataclasses.replace(data, train=data.train[:2])
    assert len(fewer.train) == 2 and len(data.train) == 13
