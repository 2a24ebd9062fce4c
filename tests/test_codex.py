"""CoDEx-S as a built-in: the offline archive for real, the per-file download with a fake URL opener,
hard negatives read, mapped to ids and kept in the processed folder."""
import io
import tarfile

import numpy as np
import pytest

from metasd_dgl.data import registry
from metasd_dgl.data.preprocess import load_processed, preprocess
from metasd_dgl.data.triples import read_source
from metasd_dgl.errors import DataError

NAMES = ("train.txt", "valid.txt", "test.txt", "valid_negatives.txt", "test_negatives.txt")


def archive_members(kg_dir):
    with tarfile.open(kg_dir / "codex-s.tar.gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_offline_archive_counts_and_negatives(tmp_path, kg_dir):
    raw = read_source("codex-s", data_dir=kg_dir)
    assert raw.builtin == "codex-s" and "from data_dir" in raw.source
    assert [len(raw.train), len(raw.valid), len(raw.test)] == [32888, 1827, 1828]
    assert {s: len(n.triples) for s, n in raw.negatives.items()} == {"valid": 1827, "test": 1828}
    out = preprocess("CoDEx-S", tmp_path / "codex", kg_dir)
    kg = load_processed(out)
    assert (kg.num_entities, kg.num_relations) == (2034, 42)
    assert {s: tuple(t.shape) for s, t in kg.negatives.items()} == {"valid": (1827, 3), "test": (1828, 3)}
    assert kg.manifest["negatives"] == {"valid": 1827, "test": 1828}
    # the ids name the file's triples: line 1 of test_negatives.txt, mapped back
    first = archive_members(kg_dir)["test_negatives.txt"].decode().split("\n")[0].split("\t")
    h, r, t = kg.negatives["test"][0].tolist()
    assert [kg.entity_names[h], kg.relation_names[r], kg.entity_names[t]] == first
    # hard negatives are false: none of them is a known triple
    keys = lambda x: set(map(tuple, x.tolist()))  # noqa: E731
    assert not (keys(kg.negatives["valid"]) | keys(kg.negatives["test"])) & keys(kg.all_triples)


def test_per_file_pins_match_the_archive(kg_dir):
    members = archive_members(kg_dir)
    entry = registry.get("codex-s")
    assert sorted(entry.files) == sorted(NAMES) == sorted(members)
    import hashlib
    assert {n: hashlib.sha256(members[n]).hexdigest() for n in NAMES} == entry.files


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fake_opener(members, served, corrupt=None):
    def urlopen(url, timeout=None):  # noqa: ARG001
        assert url.startswith(registry.get("codex-s").files_url)
        name = url.rsplit("/", 1)[1]
        served.append(name)
        data = members[name]
        return FakeResponse(b"x" + data if name == corrupt else data)
    return urlopen


def test_download_one_by_one_then_cache(tmp_path, kg_dir, monkeypatch, no_vendored):
    served = []
    monkeypatch.setattr(registry.urllib.request, "urlopen", fake_opener(archive_members(kg_dir), served))
    cache = tmp_path / "cache"
    got = registry.resolve("codex-s", cache=cache)
    assert got.origin == "download" and got.kind == "folder" and got.path == cache / "codex-s"
    assert sorted(served) == sorted(NAMES)
    assert sorted(p.name for p in cache.iterdir()) == ["codex-s"]  # no scratch left
    again = registry.resolve("codex-s", cache=cache)
    assert again.origin == "cache" and len(served) == len(NAMES)  # nothing fetched the second time
    monkeypatch.setenv("METASD_CACHE_DIR", str(cache))
    raw = read_source("codex-s")
    offline = read_source("codex-s", data_dir=kg_dir)
    assert raw.splits() == offline.splits()
    assert {s: n.triples for s, n in raw.negatives.items()} == {s: n.triples for s, n in offline.negatives.items()}
    # a cached file changed afterwards is refused
    (cache / "codex-s" / "valid_negatives.txt").write_text("a\tb\tc\n")
    with pytest.raises(DataError, match="valid_negatives.txt: sha256 mismatch"):
        registry.resolve("codex-s", cache=cache)


def test_download_bad_file_leaves_nothing(tmp_path, kg_dir, monkeypatch, no_vendored):
    served = []
    monkeypatch.setattr(registry.urllib.request, "urlopen",
                        fake_opener(archive_members(kg_dir), served, corrupt="test.txt"))
    with pytest.raises(DataError, match=r"codex-s/test.txt: downloaded file has sha256"):
        registry.resolve("codex-s", cache=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []
    assert "test_negatives.txt" not in served  # stopped at the first bad file

    def offline(url, timeout=None):  # noqa: ARG001
        raise registry.urllib.error.URLError("no network")
    monkeypatch.setattr(registry.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"train.txt failed \(no network\).*METASD_DATA_DIR=DIR"):
        registry.resolve("codex-s", cache=tmp_path / "c2")
    assert list((tmp_path / "c2").iterdir()) == []


def test_folder_negatives_errors(tmp_path):
    folder = tmp_path / "kg"
    folder.mkdir()
    for s in ("train", "valid", "test"):
        (folder / f"{s}.txt").write_text("a\tr\tb\nb\tr\tc\n")
    (folder / "valid_negatives.txt").write_text("a\tr\tc\n")
    raw = read_source(folder)
    assert list(raw.negatives) == ["valid"] and raw.negatives["valid"].triples == [("a", "r", "c")]
    kg = load_processed(preprocess(folder, tmp_path / "p"))
    assert kg.negatives["valid"].tolist() == [[0, 0, 2]] and "test" not in kg.negatives
    (folder / "test_negatives.txt").write_text("a\tr\tc\n\nb\tr\n")
    with pytest.raises(DataError, match=r"test_negatives.txt:3: expected 3 tab-separated fields, got 2"):
        preprocess(folder, tmp_path / "p2")
    (folder / "test_negatives.txt").write_text("a\tr\tc\nzz\tr\tb\n")
    with pytest.raises(DataError, match=r"test_negatives.txt:2: unknown entity 'zz'"):
        preprocess(folder, tmp_path / "p3")
    assert not (tmp_path / "p2").exists() and not (tmp_path / "p3").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kg", "p"]
    np.testing.assert_array_equal(kg.negatives["valid"].numpy(), np.array([[0, 0, 2]]))
