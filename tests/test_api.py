"""The Python API: the README's example runs as written; results match the run
folder's files; load_run's student scores like the masked evaluation; bad
arguments raise the CLI's UserErrors; `import metasd_dgl` stays cheap."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metasd_dgl
from metasd_dgl.config import ConfigError
from metasd_dgl.errors import DataError, UserError
from metasd_dgl.evaluate.ranking import rank_split

REPO = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README has no api-example block"
    return match.group(1)


@pytest.mark.slow  # runs metasd-dgl end to end
def test_readme_example_runs(tmp_path, monkeypatch, kg_dir, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METASD_DATA_DIR", str(kg_dir))
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)  # noqa: S102 - our own README
    result, run = scope["result"], scope["run"]
    out = capsys.readouterr().out
    assert result.run_dir == Path("runs/api-umls") and (tmp_path / "runs/api-umls/checkpoints/best.pt").is_file()
    stored = json.loads((result.run_dir / "eval" / "test.json").read_text())["results"]
    assert result.test == stored and result.student == stored["student"]["both"]
    assert f"{stored['teacher']['both']['mrr']} {stored['student']['both']['mrr']}" in out
    assert Path(result.exports["student_file"]).is_file()
    assert scope["scores"].shape == (5,) and scope["tails"].shape == (5, run.data.num_entities)

    # the student of load_run ranks exactly like the masked evaluation
    from metasd_dgl.model.student import checkpoint_student
    weights = checkpoint_student(dict(run.teacher.named_parameters()), run.masks, run.checkpoint.get("student_weights"))
    masked = rank_split(run.teacher, run.data.test, run.data.num_relations, run.data.filter, weights=weights)
    plain = rank_split(run.student, run.data.test, run.data.num_relations, run.data.filter)
    assert torch.equal(masked.tail, plain.tail) and torch.equal(masked.head, plain.head)
    pruned = sum(int((~m.bool()).sum()) for m in run.masks.values())
    zeros = sum(int((p == 0).sum()) for n, p in run.student.named_parameters() if n in run.masks)
    assert zeros >= pruned > 0

    # a second call does not train again and returns the same metrics
    last = tmp_path / "runs/api-umls/checkpoints/last.pt"
    before = last.stat().st_mtime_ns
    config = {"model": {"dim": 16}, "train": {"epochs": 2, "batch_size": 500}, "valid": {"every": 1},
              "metasd": {"quiz_batch_size": 500}}
    again = metasd_dgl.pipeline(dataset="umls", method="metasd", run_dir="runs/api-umls", config=config,
                                plots=False)
    assert last.stat().st_mtime_ns == before and again.test == result.test


def test_bad_arguments_raise_user_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"train.method='distill' is not one of"):
        metasd_dgl.pipeline(dataset="umls", method="distill", run_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match=r"unknown option 'train.lrr'"):
        metasd_dgl.pipeline(config={"train.lrr": 1}, run_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match=r"config: expected a mapping or a YAML file path, got int"):
        metasd_dgl.pipeline(config=3, run_dir=tmp_path / "r")
    with pytest.raises(DataError, match=r"nosuch: not a built-in dataset"):
        metasd_dgl.pipeline(dataset="nosuch", run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing half-written
    with pytest.raises(UserError, match=r"checkpoint not found"):
        metasd_dgl.load_run(tmp_path)


def test_import_is_cheap():
    probe = ("import sys, metasd_dgl; "
             "print(sorted(k for k in ('torch', 'dgl', 'matplotlib', 'metasd_dgl.api') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
    assert metasd_dgl.load_run is metasd_dgl.api.load_run  # resolved on first use
