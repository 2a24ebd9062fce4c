"""Every bad input: exit code 2, one error line naming the cause, no traceback,
nothing half-written (the case list and its message table: tests/bad_inputs.py)."""
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bad_inputs import CASES, message, run_case  # noqa: E402


#: Cases that write or read gigabytes (sparse files): left out of the quick loop (-m "not slow").
SLOW = {"a 2 GB single line"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.name in SLOW else c for c in CASES],
                         ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path):
    code, out, err = run_case(case, tmp_path)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    msg = message(err)
    assert re.search(case.expect, msg), msg
    lines = err.strip().splitlines()
    assert len([ln for ln in lines if ln.startswith("error: ")]) == 1, err  # one line, click's usage errors too
    assert not [ln for ln in lines if ln.lower().startswith(("usage", "try ", "error:")) and not ln.startswith("error: ")]
    if case.leaves:
        assert not (tmp_path / case.leaves).exists(), f"{case.leaves} was left behind"
    if case.keeps:
        assert (tmp_path / case.keeps).exists(), f"{case.keeps} was removed"
    assert not [p for p in tmp_path.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name], "staging folders left"
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"
    assert not (tmp_path / "PWNED").exists()


def test_at_least_25_cases():
    assert len(CASES) >= 25


def test_at_least_70_cases():
    """The fault-injection issue added 30+ cases to the original 37."""
    assert len(CASES) >= 70


def test_at_least_110_cases():
    """Hostile files and folders (links, special files, alias bombs, foreign datasets, usage errors) added 30+."""
    assert len(CASES) >= 110


def test_export_quantize_int8_after_fp16_keeps_the_fp16_files(tmp_path):
    """A later export writes its schemes and keeps the variants written earlier; the manifest lists them all."""
    import hashlib
    import json

    from bad_inputs import _quiet_main, _train

    old = Path.cwd()
    try:
        import os

        os.chdir(tmp_path)
        _quiet_main(_train(tmp_path, "--dim", "4", "--method", "prune"))
        _quiet_main(["export", str(tmp_path / "run"), "--quantize", "fp16"])
        export = tmp_path / "run" / "export"
        fp16 = {n: (export / n).read_bytes() for n in ("teacher.fp16.safetensors", "student.fp16.safetensors")}
        _quiet_main(["export", str(tmp_path / "run"), "--quantize", "int8"])
    finally:
        os.chdir(old)
    manifest = json.loads((export / "manifest.json").read_text())
    names = {f"{r}.{s}safetensors" for r in ("teacher", "student") for s in ("", "fp16.", "int8.")}
    assert set(manifest["files"]) == names == {p.name for p in export.iterdir()} - {"manifest.json"}
    assert all((export / n).read_bytes() == data for n, data in fp16.items())
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((export / name).read_bytes()).hexdigest(), name
