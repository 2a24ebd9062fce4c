"""Built-in benchmark knowledge graphs: where they come from and how they are found.

Each entry pins the published archive (file name, sha256, public URL), the
expected counts, the licence, and, where PyKEEN's wheel ships a copy, the
sha256 of each packaged split file (they are byte-identical to the archive's
members, checked when these pins were written).

``resolve(name)`` finds a built-in dataset, in this order:

1. ``data_dir`` argument: ``data_dir/<archive>`` (sha256 verified);
2. env var ``METASD_DATA_DIR``: same.  A data folder given by either that
   lacks the archive is an error naming the folder (no silent fallback);
3. the vendored copies (``metasd_dgl.resources.archive_dirs``): all six
   archives in a checkout's ``datasets/kg``, the four small ones inside an
   installed package (sha256 verified: they are the files ``SHA256SUMS``
   lists);
4. the offline packaged copy inside the installed ``pykeen`` (Nations,
   Kinships, UMLS only; every file's sha256 verified);
5. the download cache (``METASD_CACHE_DIR`` or ``~/.cache/metasd-dgl``),
   then a download from the public URL into it (sha256 verified before the
   file is renamed into the cache).  A source that serves its files one by
   one (CoDEx-S: ``files`` and ``files_url`` set) is fetched file by file into
   the folder ``<cache>/<name>/``, each file verified by its own sha256, the
   folder renamed into place only when all are.

A checksum mismatch anywhere is a ``DataError``; so is an unknown name (the
message lists the known ones) and a failed download (the message says how to
supply the archive by hand).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional

from metasd_dgl.errors import DataError

SPLITS = ("train", "valid", "test")
_CONVE = "https://github.com/TimDettmers/ConvE/raw/master/"
_CONVE_NOTE = (
    "ConvE repository (Dettmers et al. 2018), file at the repository root; "
    "URL written from the repository layout, not fetched from this machine"
)
_CODEX = "https://raw.githubusercontent.com/tsafavi/codex/master/data/triples/codex-s/"
_SMALL_LICENCE = (
    "Kok & Domingos 2007 relational benchmarks (Alchemy); redistributed in the "
    "ConvE repository (MIT) and in PyKEEN (MIT); no separate data licence stated"
)


@dataclass(frozen=True)
class BuiltinDataset:
    """One published benchmark: archive pin, expected counts, provenance."""

    name: str  # canonical lower-case name
    archive: str  # file name of the published .tar.gz
    sha256: str  # of the archive
    url: str  # public download URL of the archive
    url_note: str
    train: int
    valid: int
    test: int
    entities: int  # over train + valid + test
    relations: int
    licence: str
    citation: str
    pykeen_dir: Optional[str] = None  # pykeen/datasets/<dir> holding the splits
    pykeen_sha256: Dict[str, str] = field(default_factory=dict)  # split -> sha256
    files: Dict[str, str] = field(default_factory=dict)  # file name -> sha256, if served one by one
    files_url: str = ""  # base URL of ``files`` (name appended)
    negatives: Dict[str, int] = field(default_factory=dict)  # split -> hard negatives shipped (``valid_negatives.txt``)

    def counts(self) -> Dict[str, int]:
        """Expected counts as ``{"train", "valid", "test", "entities", "relations"}``."""
        return {"train": self.train, "valid": self.valid, "test": self.test,
                "entities": self.entities, "relations": self.relations}


BUILTINS: Dict[str, BuiltinDataset] = {
    "nations": BuiltinDataset(
        "nations", "nations.tar.gz",
        "feb3e3e027103089934ea7dfb67d2048d8a43e65d6757a86f2e037acb66f640b",
        _CONVE + "nations.tar.gz", _CONVE_NOTE, 1592, 199, 201, 14, 55,
        _SMALL_LICENCE, "Kok & Domingos, ICML 2007; splits of Dettmers et al. 2018",
        "nations", {
            "train": "0830fa9da8e5bba2ccdaa45b7bdc9130451ba66b09ff2708f35fccaf82473e57",
            "valid": "2b337a62e51a2f45c283eac98a70d21b7e0e102136be1539b2a52c652a7b0530",
            "test": "3971085165b47b6aeaec68058c6d8d98b3005e929db81268410b95ae4db770ab",
        }),
    "kinship": BuiltinDataset(
        "kinship", "kinship.tar.gz",
        "a3cb9ca67213eb38133aebc12901195e283d844ebd59f1a6cbf2d4fa12ced4e6",
        _CONVE + "kinship.tar.gz", _CONVE_NOTE, 8544, 1068, 1074, 104, 25,
        _SMALL_LICENCE, "Denham 1973 / Kok & Domingos 2007; splits of Dettmers et al. 2018",
        "kinships", {
            "train": "738612111a6acf0e39662bde24c7e72a4d1edf20931beea077da367dda689731",
            "valid": "c56f8630a583178b1e569f11a64aa535ae1ce0b0912d8b1e24716be2b37f04da",
            "test": "05e5733265761d55be9c05bfaff5a8d0808df46f9c1e9d66cc3f2fe114e43d88",
        }),
    "umls": BuiltinDataset(
        "umls", "umls.tar.gz",
        "26223aa91f0ec8db2324e0f489b9a4425e04d1d0df72ce5cfd62af4b91aee6fd",
        _CONVE + "umls.tar.gz", _CONVE_NOTE, 5216, 652, 661, 135, 46,
        _SMALL_LICENCE + "; derived from the UMLS semantic network (NLM)",
        "McCray 2003 / Kok & Domingos 2007; splits of Dettmers et al. 2018",
        "umls", {
            "train": "873ef4925516b83e7f6f8cc02b4be51d848828710a7f65a956f0ac4a9e452f35",
            "valid": "025c98f8a4891e2a6582ec5b40ee0d904031edad9c52554522f4b7904820c98e",
            "test": "a7eb529a3d2810fcc96341ccc97c625a5e202f8389673aa6bd317eeebbb79014",
        }),
    "fb15k-237": BuiltinDataset(
        "fb15k-237", "FB15k-237.tar.gz",
        "311df7930f842a02979eaa7a802484a6afe62303c07f915f1e6edbc30cbe05e8",
        _CONVE + "FB15k-237.tar.gz", _CONVE_NOTE, 272115, 17535, 20466, 14541, 237,
        "derived from Freebase (data dumps CC BY); released by Microsoft Research "
        "(Toutanova & Chen 2015) - check that release's terms; ConvE packaging MIT",
        "Toutanova & Chen, CVSC 2015"),
    "wn18rr": BuiltinDataset(
        "wn18rr", "WN18RR.tar.gz",
        "1eb9152f804c140d163462c0d49f65e5a0b30ab5fbb375c5e3353c11a6249060",
        _CONVE + "WN18RR.tar.gz", "ConvE repository; the same URL is used by PyKEEN's WN18RR",
        86835, 3034, 3134, 40943, 11,
        "WordNet 3.0 licence (Princeton); ConvE packaging MIT",
        "Dettmers et al., AAAI 2018"),
    "codex-s": BuiltinDataset(
        "codex-s", "codex-s.tar.gz",
        "9616bd0de40dca0affab868a54122551fffd53cccafa89039d66266d7803caa5",
        _CODEX, "tsafavi/codex repository, data/triples/codex-s/; served as five files "
        "(see files_url), not as an archive; URLs written from the repository layout, "
        "not fetched from this machine",
        32888, 1827, 1828, 2034, 42,
        "MIT (tsafavi/codex repository); entity and relation ids from Wikidata (CC0)",
        "Safavi & Koutra, EMNLP 2020", files={
            "train.txt": "64f93b7f314f3936a6f65739721429db3f6a7c8f5a1e1104ec3bb544f7434f59",
            "valid.txt": "3831c0e57daef03c3a18cdd1a72e370b496f696c5218883d35c7d2ab8a6a772c",
            "test.txt": "27127fcb34688c4778e88a39ef3c9b540807da846021e9d9685660ac1838aca1",
            "valid_negatives.txt": "c1d84860d6ee786419f1f118d0e9479c6614283b3e267afc158734389036901f",
            "test_negatives.txt": "d3fb32c41f3be26d09484ace571965806f1ade0ca712551b0de684c283cdbb22",
        }, files_url=_CODEX, negatives={"valid": 1827, "test": 1828}),
}

_ALIASES = {"fb15k237": "fb15k-237", "kinships": "kinship", "codex_s": "codex-s", "codexs": "codex-s"}


@dataclass(frozen=True)
class Resolved:
    """Where a built-in dataset was found.

    ``kind == "archive"``: ``path`` is a verified ``.tar.gz``;
    ``kind == "folder"``: ``path`` holds verified ``train/valid/test.txt``.
    """

    entry: BuiltinDataset
    kind: Literal["archive", "folder"]
    path: Path
    origin: str  # "data_dir" | "METASD_DATA_DIR" | "vendored" | "pykeen" | "cache" | "download"
    input_sha256: Dict[str, str]  # file name -> sha256 of what was read

    def describe(self) -> str:
        """One line for manifests and logs."""
        return f"built-in {self.entry.name} from {self.origin}: {self.path}"


def known_names() -> list[str]:
    """Canonical built-in names, sorted."""
    return sorted(BUILTINS)


def lookup(name: str) -> Optional[BuiltinDataset]:
    """Entry for ``name`` (case-insensitive, aliases accepted) or None."""
    key = name.strip().lower()
    return BUILTINS.get(_ALIASES.get(key, key))


def get(name: str) -> BuiltinDataset:
    """Entry for ``name``; unknown names raise DataError listing the known ones."""
    entry = lookup(name)
    if entry is None:
        raise DataError(f"{name}: unknown built-in dataset; known: {', '.join(known_names())}")
    return entry


def processed_folder(source: str) -> Optional[Path]:
    """``source`` as a processed dataset folder (one holding ``manifest.json``, written by
    ``metasd-dgl preprocess``), resolved absolute; None otherwise.  A built-in name wins over a
    folder of that name in the working directory unless written as a path (``./umls``)."""
    text = str(source)
    if lookup(text) is not None and not any(c in text for c in "/\\") and not text.startswith((".", "~")):
        return None
    path = Path(text).expanduser()
    return path.resolve() if (path / "manifest.json").is_file() else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Download cache: ``METASD_CACHE_DIR`` or ``~/.cache/metasd-dgl``."""
    env = os.environ.get("METASD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "metasd-dgl"


def _verified_archive(entry: BuiltinDataset, path: Path, origin: str) -> Resolved:
    got = sha256_file(path)
    if got != entry.sha256:
        listed = f"the sha256 {path.parent / 'SHA256SUMS'} lists" if origin == "vendored" else "the pinned sha256"
        raise DataError(f"{path}: sha256 mismatch (got {got}, expected {entry.sha256}, {listed}); "
                        f"the file is corrupt or not the published {entry.archive}; nothing was extracted")
    return Resolved(entry, "archive", path, origin, {entry.archive: got})


def vendored_dirs() -> list[Path]:
    """Folders holding the vendored archives, searched after the data folders (module docstring)."""
    from metasd_dgl.resources import archive_dirs

    return archive_dirs()


def _missing_in(entry: BuiltinDataset, folder: Path, origin: str) -> DataError:
    """The error for a data folder (``--data-dir`` / ``METASD_DATA_DIR``) without ``entry``'s archive."""
    given = "--data-dir" if origin == "data_dir" else "METASD_DATA_DIR"
    if not folder.is_dir():
        return DataError(f"{folder}: data folder ({given}) not found; it should hold {entry.archive} "
                         f"(built-in {entry.name})")
    held = sorted(e.archive for e in BUILTINS.values() if (folder / e.archive).is_file())
    holds = f"it holds {', '.join(held)}" if held else "it holds none of the built-in archives"
    return DataError(f"{folder}: data folder ({given}) has no {entry.archive} (built-in {entry.name}); "
                     f"{holds}; put {entry.archive} there, or drop {given} to use the vendored copy or the cache")


def _packaged(entry: BuiltinDataset) -> Optional[Resolved]:
    """PyKEEN's bundled copy, without importing pykeen (its import is slow)."""
    if entry.pykeen_dir is None:
        return None
    try:
        spec = importlib.util.find_spec("pykeen")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / entry.pykeen_dir
    if not all((folder / f"{s}.txt").is_file() for s in SPLITS):
        return None
    shas: Dict[str, str] = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        got = sha256_file(path)
        if got != entry.pykeen_sha256[split]:
            raise DataError(f"{path}: sha256 mismatch (got {got}, expected "
                            f"{entry.pykeen_sha256[split]}); reinstall pykeen or set METASD_DATA_DIR")
        shas[f"{split}.txt"] = got
    return Resolved(entry, "folder", folder, "pykeen", shas)


def _fetch(url: str, target_dir: Path, name: str, sha256: str, timeout: float) -> Path:
    """``url`` -> ``target_dir/name``, verified (sha256) before the final rename; DataError if not."""
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
        got = sha256_file(tmp)
        if got != sha256:
            raise DataError(f"{url}: downloaded file has sha256 {got}, expected {sha256}; "
                            f"not the published {name}")
        final = target_dir / name
        os.replace(tmp, final)
        return final
    finally:
        if tmp.exists():
            tmp.unlink()


def _download_failed(entry: BuiltinDataset, url: str, exc: BaseException) -> DataError:
    reason = getattr(exc, "reason", exc)
    return DataError(
        f"{entry.name}: not found offline and the download from {url} failed "
        f"({reason}); download {entry.archive} by hand and pass its folder as the "
        f"data folder (--data-dir DIR) or set METASD_DATA_DIR=DIR")


def download(entry: BuiltinDataset, target_dir: Path, timeout: float = 60.0) -> Path:
    """Fetch ``entry.url`` into ``target_dir/<archive>``, verified before the final rename."""
    try:
        return _fetch(entry.url, target_dir, entry.archive, entry.sha256, timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _download_failed(entry, entry.url, exc) from None


def _cached_files(entry: BuiltinDataset, folder: Path) -> Optional[Resolved]:
    """``folder`` holding every one of ``entry.files`` (each sha256 verified), or None if any is missing."""
    if not all((folder / n).is_file() for n in entry.files):
        return None
    shas: Dict[str, str] = {}
    for name, want in entry.files.items():
        got = sha256_file(folder / name)
        if got != want:
            raise DataError(f"{folder / name}: sha256 mismatch (got {got}, expected {want}); "
                            f"delete {folder} to download it again")
        shas[name] = got
    return Resolved(entry, "folder", folder, "cache", shas)


def download_files(entry: BuiltinDataset, cache: Path, timeout: float = 60.0) -> Path:
    """Fetch each of ``entry.files`` from ``entry.files_url`` into ``cache/<name>/``.

    Every file is verified by its own sha256 in a scratch folder, which is
    renamed to ``cache/<name>`` only when all are; a failure leaves nothing.
    """
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".part", dir=cache))
    url = entry.files_url
    try:
        for name, sha in entry.files.items():
            url = entry.files_url + name
            _fetch(url, scratch, name, sha, timeout)
        final = cache / entry.name
        os.replace(scratch, final)
        return final
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _download_failed(entry, url, exc) from None
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def resolve(name: str, data_dir: Optional[Path] = None, cache: Optional[Path] = None,
            use_packaged: bool = True, allow_download: bool = True) -> Resolved:
    """Find built-in dataset ``name`` (order in the module docstring); verify it."""
    entry = get(name)
    places = [(Path(data_dir), "data_dir")] if data_dir is not None else []
    env = os.environ.get("METASD_DATA_DIR")
    if env:
        places.append((Path(env), "METASD_DATA_DIR"))
    for folder, origin in places:
        candidate = folder / entry.archive
        if candidate.is_file():
            return _verified_archive(entry, candidate, origin)
        raise _missing_in(entry, folder, origin)  # the first folder given decides: no silent fallback
    for folder in vendored_dirs():
        candidate = folder / entry.archive
        if candidate.is_file():
            return _verified_archive(entry, candidate, "vendored")
    if use_packaged:
        found = _packaged(entry)
        if found is not None:
            return found
    cache = Path(cache) if cache is not None else cache_dir()
    cached = cache / entry.archive
    if cached.is_file():
        return _verified_archive(entry, cached, "cache")
    if entry.files:
        found = _cached_files(entry, cache / entry.name)
        if found is not None:
            return found
    if not allow_download:
        looked = ", ".join(map(str, vendored_dirs())) or "no vendored copy"
        raise DataError(f"{entry.name}: {entry.archive} not found ({looked}; cache {cache}); "
                        f"pass --data-dir DIR or set METASD_DATA_DIR=DIR")
    if entry.files:
        return Resolved(entry, "folder", download_files(entry, cache), "download", dict(entry.files))
    path = download(entry, cache)
    return Resolved(entry, "archive", path, "download", {entry.archive: entry.sha256})
