"""Layout: only ``metasd_dgl`` is installed (no top-level ``datasets``/``pipelines``
shadowing HuggingFace ``datasets``), and the shipped configs and toy dataset are
found both in a checkout and in a built package."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metasd_dgl import resources

REPO = Path(__file__).resolve().parents[1]
_SPECS = (
    "import importlib.util, json\n"
    "out = {}\n"
    "for name in ('datasets', 'pipelines'):\n"
    "    s = importlib.util.find_spec(name)\n"
    "    out[name] = None if s is None else s.origin\n"
    "print(json.dumps(out))\n"
)


def _run(code: str, cwd: Path, pythonpath: str = "", isolated: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable] + (["-S"] if isolated else []) + ["-c", code]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _in_this_project(path: str) -> bool:
    """True if ``path`` lies in a folder whose setup.py is metasd-dgl's (any checkout)."""
    for parent in Path(path).resolve().parents:
        setup = parent / "setup.py"
        if setup.is_file() and 'name="metasd-dgl"' in setup.read_text(encoding="utf-8"):
            return True
    return False


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    """``setup.py build_py``: what a wheel (``pip install .``) puts in site-packages."""
    lib = tmp_path_factory.mktemp("build") / "lib"
    subprocess.run([sys.executable, str(REPO / "setup.py"), "-q", "build_py", "--build-lib", str(lib)],
                   cwd=REPO, capture_output=True, text=True, check=True)  # setuptools: paths from cwd
    return lib


def test_venv_import_datasets_is_not_this_project(tmp_path):
    """In the environment, outside the repository, ``datasets``/``pipelines`` are not our packages.

    Only a regular package (a file origin, ``datasets/__init__.py``) can shadow
    HuggingFace ``datasets``; a legacy ``setup.py develop`` puts the checkout on
    sys.path, where the code-less folders are at most empty namespace packages,
    which any installed regular package wins over.  (Fails while the venv's
    editable install still maps an old checkout's ``datasets/__init__.py``.)
    """
    found = json.loads(_run(_SPECS, cwd=tmp_path))
    for name, origin in found.items():
        ours = origin is not None and Path(origin).is_file() and _in_this_project(origin)
        assert not ours, f"import {name} resolves into metasd-dgl: {origin}"


@pytest.mark.slow  # builds the package
def test_built_package_holds_only_metasd_dgl_and_its_shipped_files(lib, tmp_path):
    assert sorted(p.name for p in lib.iterdir()) == ["metasd_dgl"]
    configs = sorted(p.name for p in (lib / "metasd_dgl" / "_shipped" / "configs").iterdir())
    assert configs == sorted(p.name for p in (REPO / "pipelines" / "configs").glob("*.yaml"))
    assert "umls_metasd.yaml" in configs
    found = json.loads(_run(_SPECS, cwd=tmp_path, pythonpath=str(lib), isolated=True))
    assert found == {"datasets": None, "pipelines": None}  # nothing of ours, not even a namespace


@pytest.mark.slow  # builds the package
def test_built_package_reads_its_own_copies(lib, tmp_path):
    code = ("import json\nfrom metasd_dgl import resources as r\n"
            "print(json.dumps([str(r.default_config_path()), str(r.toy_dataset_dir())]))\n")
    config, toy = map(Path, json.loads(_run(code, cwd=tmp_path, pythonpath=str(lib), isolated=True)))
    assert config == lib / "metasd_dgl" / "_shipped" / "configs" / "umls_metasd.yaml"
    assert config.read_bytes() == (REPO / "pipelines" / "configs" / "umls_metasd.yaml").read_bytes()
    assert toy == lib / "metasd_dgl" / "_shipped" / "datasets" / "toy"
    for split in ("train", "valid", "test"):
        assert (toy / f"{split}.txt").read_bytes() == (REPO / "datasets" / "toy" / f"{split}.txt").read_bytes()


def test_checkout_reads_the_repository_folders():
    assert resources.default_config_path() == REPO / "pipelines" / "configs" / "umls_metasd.yaml"
    assert resources.toy_dataset_dir() == REPO / "datasets" / "toy"
    assert resources.default_config_path().is_file()


# ------------------------------------------------------------ benchmark archives
KG = REPO / "datasets" / "kg"
LARGE = ("FB15k-237.tar.gz", "WN18RR.tar.gz")


def test_vendored_archives_match_sha256sums_and_the_registry():
    from metasd_dgl.data import registry

    listed = dict(line.split()[::-1] for line in (KG / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert listed == {e.archive: e.sha256 for e in registry.BUILTINS.values()}  # one pin per built-in
    assert {p.name for p in KG.glob("*.tar.gz")} == set(listed)
    for name, sha in listed.items():
        assert registry.sha256_file(KG / name) == sha, name
    assert set(resources.SHIPPED_ARCHIVES) | set(LARGE) == set(listed)
    assert resources.archive_dirs() == [KG]  # a checkout reads its own copy


def test_checkout_resolves_builtins_from_datasets_kg(monkeypatch, tmp_path):
    from metasd_dgl.data import registry

    monkeypatch.delenv("METASD_DATA_DIR", raising=False)
    for name in ("umls", "fb15k-237"):
        got = registry.resolve(name, cache=tmp_path / "cache", allow_download=False)
        assert (got.origin, got.path) == ("vendored", KG / registry.get(name).archive)
    monkeypatch.setenv("METASD_DATA_DIR", str(tmp_path / "elsewhere"))  # the variable still overrides
    with pytest.raises(registry.DataError, match=r"elsewhere: data folder \(METASD_DATA_DIR\) not found"):
        registry.resolve("umls", cache=tmp_path / "cache", allow_download=False)


@pytest.mark.slow  # builds the package
def test_built_package_carries_only_the_small_archives(lib, tmp_path):
    kg = lib / "metasd_dgl" / "_shipped" / "datasets" / "kg"
    assert sorted(p.name for p in kg.iterdir()) == sorted(["README.md", "SHA256SUMS", *resources.SHIPPED_ARCHIVES])
    for p in kg.iterdir():
        assert p.read_bytes() == (KG / p.name).read_bytes(), p.name
    assert sum(p.stat().st_size for p in lib.rglob("*.tar.gz")) < 400_000  # FB15k-237 alone is 3.7 MB
    code = ("import json, os\nfrom metasd_dgl.data import registry\nout = {}\n"
            "for name in ('kinship', 'codex-s', 'wn18rr'):\n"
            "    try:\n"
            "        r = registry.resolve(name, use_packaged=False, allow_download=False)\n"
            "        out[name] = [r.origin, str(r.path)]\n"
            "    except registry.DataError as e:\n"
            "        out[name] = ['error', str(e)]\n"
            "print(json.dumps(out))\n")
    env_code = f"import os\nos.environ.pop('METASD_DATA_DIR', None)\nos.environ['METASD_CACHE_DIR'] = {str(tmp_path / 'c')!r}\n"
    got = json.loads(_run(env_code + code, cwd=tmp_path, pythonpath=str(lib), isolated=True))
    assert got["kinship"] == ["vendored", str(kg / "kinship.tar.gz")]
    assert got["codex-s"] == ["vendored", str(kg / "codex-s.tar.gz")]
    assert got["wn18rr"][0] == "error" and "WN18RR.tar.gz not found" in got["wn18rr"][1]


@pytest.mark.slow  # builds the package
def test_sdist_carries_only_the_small_archives(tmp_path):
    import tarfile

    subprocess.run([sys.executable, str(REPO / "setup.py"), "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
                   cwd=REPO, capture_output=True, text=True, check=True)
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/datasets/kg/" in n}
    assert names == {f"datasets/kg/{n}" for n in ("README.md", "SHA256SUMS", *resources.SHIPPED_ARCHIVES)}
