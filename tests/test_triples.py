"""Readers: TSV parsing, bad input, archives, DGL-KE layouts, built-in resolution."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from metasd_dgl.data import registry
from metasd_dgl.data.triples import read_source, read_tsv
from metasd_dgl.errors import DataError

TOY = Path(__file__).resolve().parents[1] / "datasets" / "toy"
SPLITS = ("train", "valid", "test")


def toy_splits() -> dict:
    return {s: read_tsv(TOY / f"{s}.txt") for s in SPLITS}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- read_tsv
def test_read_tsv_crlf_blank_lines_and_bom(tmp_path):
    p = write(tmp_path / "t.txt", "\ufeffa\tr\tb\r\n\r\n  \nc\tr 2\td é\r\n".encode("utf-8"))
    assert read_tsv(p) == [("a", "r", "b"), ("c", "r 2", "d é")]


def test_toy_values():
    rows = read_tsv(TOY / "train.txt")
    assert len(rows) == 13
    assert rows[0] == ("alice", "likes", "bob") and rows[-1] == ("gina", "knows", "alice")


@pytest.mark.parametrize("data, message", [
    (b"a\tr\tb\nc\td\n", ":2: expected 3 tab-separated fields, got 2"),
    (b"a\tr\tb\tx\n", ":1: expected 3 tab-separated fields, got 4"),
    (b"a\tr\tb\r\n\r\nc r d\r\n", ":3: expected 3 tab-separated fields, got 1"),
    (b"a\t\tb\n", ":1: empty field"),
    (b"a\tr\tb\nc\tr\t \n", ":2: empty field"),
    (b"a\tr\tb\nc\xff\tr\td\n", ":2: not UTF-8 text"),
    (b"", ": no triples"),
    (b"\n\r\n\n", ": no triples"),
])
def test_read_tsv_bad_input(tmp_path, data, message):
    p = write(tmp_path / "bad.txt", data)
    with pytest.raises(DataError) as err:
        read_tsv(p)
    assert str(err.value) == f"{p}{message}"


def test_read_tsv_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_tsv(tmp_path / "nope.txt")
    assert str(pytest.raises(DataError, read_tsv, tmp_path / "x").value) == f"{tmp_path / 'x'}: file not found"


# ------------------------------------------------------------ read_source
def test_folder_source_equals_files():
    raw = read_source(TOY)
    assert raw.splits() == toy_splits() and raw.format == "tsv"
    assert set(raw.input_sha256) == {"train.txt", "valid.txt", "test.txt"}
    assert raw.input_sha256["train.txt"] == hashlib.sha256((TOY / "train.txt").read_bytes()).hexdigest()


def test_folder_missing_and_empty_split(tmp_path):
    folder = tmp_path / "kg"
    shutil.copytree(TOY, folder)
    (folder / "test.txt").unlink()
    with pytest.raises(DataError) as err:
        read_source(folder)
    assert str(err.value) == f"{folder}: missing split 'test' (expected test.txt or test.tsv)"
    write(folder / "test.tsv", b"\n")
    with pytest.raises(DataError) as err:
        read_source(folder)
    assert str(err.value) == f"{folder / 'test.tsv'}: no triples"


def test_missing_path_unknown_name_and_format(tmp_path):
    with pytest.raises(DataError) as err:
        read_source(str(tmp_path / "nope"))
    assert str(err.value) == f"{tmp_path / 'nope'}: file not found"
    with pytest.raises(DataError) as err:
        read_source("fb16k")
    assert str(err.value) == ("fb16k: not a built-in dataset (codex-s, fb15k-237, kinship, nations, umls, wn18rr) "
                              "nor an existing file or folder")
    with pytest.raises(DataError, match="known: codex-s, fb15k-237, kinship, nations, umls, wn18rr"):
        registry.get("yago")
    with pytest.raises(DataError, match="format 'csv' is not one of auto, tsv, raw_udd_hrt, udd_hrt"):
        read_source(TOY, fmt="csv")


def test_builtin_names_case_insensitive():
    assert registry.get("FB15k-237").archive == "FB15k-237.tar.gz"
    assert registry.get("WN18RR").name == "wn18rr" and registry.get("UMLS").name == "umls"


def test_registry_pins_match_shared_sums(kg_dir):
    sums = dict(reversed(line.split()) for line in (kg_dir / "SHA256SUMS").read_text().splitlines())
    assert {e.archive: e.sha256 for e in registry.BUILTINS.values()} == sums


def make_tar(path: Path, members: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_in_subfolder(tmp_path):
    members = {f"kg/toy/{s}.txt": (TOY / f"{s}.txt").read_bytes() for s in SPLITS}
    raw = read_source(make_tar(tmp_path / "toy.tar.gz", members))
    assert raw.splits() == toy_splits()
    assert raw.input_sha256 == {"toy.tar.gz": registry.sha256_file(tmp_path / "toy.tar.gz")}


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_archive_rejects_unsafe_paths(tmp_path, bad):
    members = {f"{s}.txt": (TOY / f"{s}.txt").read_bytes() for s in SPLITS}
    members[bad] = b"x"
    archive = make_tar(tmp_path / "evil.tar.gz", members)
    with pytest.raises(DataError) as err:
        read_source(archive)
    assert str(err.value) == f"{archive}: unsafe member path {bad!r}"
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/abs/evil.txt").exists()


def test_builtin_tampered_archive(tmp_path, kg_dir):
    data = bytearray((kg_dir / "umls.tar.gz").read_bytes())
    data[100] ^= 0xFF
    write(tmp_path / "umls.tar.gz", bytes(data))
    with pytest.raises(DataError, match=r"umls.tar.gz: sha256 mismatch \(got [0-9a-f]{64}, expected 2622"):
        read_source("umls", data_dir=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("pykeen") is None, reason="pykeen (test extra) not installed")
def test_pykeen_copy_equals_archive(kg_dir, monkeypatch, no_vendored):
    packaged = read_source("umls")
    assert packaged.source.startswith("built-in umls from pykeen")
    archive = read_source("UMLS", data_dir=kg_dir)
    assert "from data_dir" in archive.source
    assert packaged.splits() == archive.splits()
    assert [len(packaged.splits()[s]) for s in SPLITS] == [5216, 652, 661]
    for name in ("nations", "kinship"):  # the other packaged copies match the published counts
        entry = registry.get(name)
        raw = read_source(name)
        assert [len(raw.splits()[s]) for s in SPLITS] == [entry.train, entry.valid, entry.test]


def test_download_cache_and_failures(tmp_path, kg_dir, monkeypatch, no_vendored):
    entry = registry.BUILTINS["nations"]
    cache = tmp_path / "cache"
    monkeypatch.setitem(registry.BUILTINS, "nations",
                        dataclasses.replace(entry, url=(kg_dir / "nations.tar.gz").as_uri()))
    got = registry.resolve("nations", cache=cache, use_packaged=False)
    assert got.origin == "download" and got.path == cache / "nations.tar.gz"
    assert registry.resolve("nations", cache=cache, use_packaged=False).origin == "cache"
    # a download that does not match the pinned sha256 is refused and leaves nothing behind
    bad = write(tmp_path / "bad" / "nations.tar.gz", b"not the archive")
    monkeypatch.setitem(registry.BUILTINS, "nations", dataclasses.replace(entry, url=bad.as_uri()))
    with pytest.raises(DataError, match="downloaded file has sha256"):
        registry.resolve("nations", cache=tmp_path / "c2", use_packaged=False)
    assert list((tmp_path / "c2").iterdir()) == []
    # offline: a clear message saying what to do
    monkeypatch.setitem(registry.BUILTINS, "nations",
                        dataclasses.replace(entry, url="http://127.0.0.1:9/nations.tar.gz"))
    with pytest.raises(DataError, match="set METASD_DATA_DIR=DIR"):
        registry.resolve("nations", cache=tmp_path / "c3", use_packaged=False)


# ---------------------------------------------------------- DGL-KE layouts
def test_raw_udd_hrt_matches_tsv_and_leaves_input_alone(tmp_path):
    folder = tmp_path / "raw"
    for s in SPLITS:  # DGL-KE style names, one with CRLF and a blank line
        data = (TOY / f"{s}.txt").read_bytes()
        write(folder / f"{s}.tsv", data.replace(b"\n", b"\r\n") + b"\r\n" if s == "valid" else data)
    before = snapshot(folder)
    raw = read_source(folder, fmt="raw_udd_hrt")
    assert raw.format == "raw_udd_hrt" and raw.splits() == toy_splits()
    assert snapshot(folder) == before  # DGL-KE wrote its entities.tsv into a copy


def udd_folder(tmp_path: Path) -> Path:
    """The toy set as udd_hrt, ids in first-appearance order (alice 0, bob 1, ...)."""
    ents = "alice bob carol dave erin frank paris rome oslo gina hank".split()
    rels = ["likes", "knows", "lives_in"]
    folder = tmp_path / "udd"
    write(folder / "entities.tsv", "".join(f"{i}\t{n}\n" for i, n in enumerate(ents)).encode())
    write(folder / "relations.tsv", "".join(f"{i}\t{n}\n" for i, n in enumerate(rels)).encode())
    for s, rows in toy_splits().items():
        lines = [f"{ents.index(h)}\t{rels.index(r)}\t{ents.index(t)}\n" for h, r, t in rows]
        write(folder / f"{s}.tsv", "".join(lines).encode())
    return folder


def test_udd_hrt_matches_tsv_and_leaves_input_alone(tmp_path):
    folder = udd_folder(tmp_path)
    before = snapshot(folder)
    raw = read_source(folder)  # auto-detected
    assert raw.format == "udd_hrt" and raw.splits() == toy_splits()
    assert raw.entities[:3] == ["alice", "bob", "carol"] and raw.relations == ["likes", "knows", "lives_in"]
    assert snapshot(folder) == before
    assert read_source(folder, fmt="tsv").train[0] == ("0", "0", "1")  # forced TSV reads ids as names


def test_udd_hrt_bad_ids(tmp_path):
    folder = udd_folder(tmp_path)
    write(folder / "test.tsv", b"2\t1\t1\n9\t3\t8\n")
    with pytest.raises(DataError) as err:
        read_source(folder, fmt="udd_hrt")
    assert str(err.value) == f"{folder / 'test.tsv'}:2: id out of range (entities 0..10, relations 0..2)"
    write(folder / "test.tsv", b"2\t1\t1\n9\tx\t8\n")
    with pytest.raises(DataError, match=r"test.tsv:2: expected non-negative integer ids, got 'x'"):
        read_source(folder, fmt="udd_hrt")
    write(folder / "relations.tsv", b"0\tlikes\n0\tknows\n2\tlives_in\n")
    with pytest.raises(DataError, match=r"relations.tsv:2: id 0 given twice"):
        read_source(folder, fmt="udd_hrt")


def test_names_are_stripped_and_near_duplicates_and_headers_are_counted():
    from metasd_dgl.data.triples import RawKG, normalise_names

    raw = RawKG(train=[("head", "relation", "tail"), ("alice", "likes", "bob"), ("alice ", "likes", "carol"),
                       (" alice", " likes", "bob"), ("Alice", "likes", "bob"), ("BOB", "knows", "carol")],
                valid=[(" dave ", "likes", "carol")], test=[("bob", "Likes", "carol")], source="hand")
    warnings = normalise_names(raw)
    assert raw.train[2] == ("alice", "likes", "carol") and raw.train[3] == ("alice", "likes", "bob")
    assert raw.valid == [("dave", "likes", "carol")]
    assert warnings == [
        "train: the first line 'head relation tail' looks like a header; it was read as a triple: "
        "remove it from the file if it is one",
        # ' alice', 'alice ' -> alice (also spelt plainly); ' dave ' -> dave (its only spelling)
        "3 entity names had surrounding whitespace (e.g. ' alice'); it was stripped, which made 2 of them "
        "the same entity as another spelling",
        "1 relation names had surrounding whitespace (e.g. ' likes'); it was stripped, which made 1 of them "
        "the same relation as another spelling",
        "4 entity names differ from another only by case, in 2 groups (e.g. 'Alice', 'BOB'); they are kept "
        "as distinct entities",
        "2 relation names differ from another only by case, in 1 groups (e.g. 'Likes', 'likes'); they are kept "
        "as distinct relations",
    ]
    clean = RawKG(train=[("a", "r", "b")], valid=[("a", "r", "b")], test=[("b", "r", "a")], source="hand")
    assert normalise_names(clean) == []
