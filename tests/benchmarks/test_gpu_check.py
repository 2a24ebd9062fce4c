"""The CPU rehearsal of benchmarks/gpu_check.py: a tiny rank on UMLS for a budget of seconds.

With only torch and numpy importable it must finish inside its budget (the training loop stopped at the deadline, not by
its epoch count), time every (method, batch, masks) cell next to its in-run bound, and report finite test MRRs
of the teacher and the true student; its paper config is the shipped one plus RP.  The bound's product list is
checked by hand per method and against the matrix products the library's own step runs."""
import collections
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from metasd_dgl.config import apply_overrides, Config, load_config, to_dict

from run_helpers import REPO
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow  # runs metasd-dgl end to end (the quick loop leaves it out)


def test_paper_config_is_the_shipped_one_with_relation_prediction():
    shipped = to_dict(load_config(REPO / "pipelines" / "configs" / "fb15k237_metasd.yaml"))
    ours = to_dict(apply_overrides(Config(), gpu_check.PAPER_CONFIG))
    shipped["train"]["rp_weight"] = 4.0
    for section in ("data", "model", "metasd", "train", "valid", "rgcn", "prune"):
        assert ours[section] == shipped[section], section


# ---- the bound: its products counted by hand -------------------------------------------------------------

B, Q, N, R, DIM = 13, 7, 97, 11, 20  # batch, quiz, entities, relations (2R = 22 reciprocal rows), rank
W, K, R2 = 2 * DIM, 4, 2 * R  # teacher width (ComplEx), student width with dimension masks (2 * round(0.1 * 20))


def family(rows, width, cands, times=1):
    """One model's forward + backward on one score family: 3 products (scores, d rows, d table)."""
    return collections.Counter({(rows, width, cands, "nt"): times, (rows, cands, width, "nn"): times,
                                (cands, rows, width, "tn"): times})


def counted(method, structure, **kw):
    return collections.Counter((p.m, p.k, p.n, p.layout)
                               for p in gpu_check.score_products(method, structure, B, DIM, N, R, quiz=Q, **kw))


def test_score_products_by_hand():
    assert gpu_check.student_width("dimension", DIM) == K and gpu_check.student_width("element", DIM) == W
    assert gpu_check.student_width("dimension", 2000) == 400  # w/10 at the paper's rank
    # plain: 3 products of b x w x N per score family (tails; relations with rp)
    assert counted("plain", "none") == family(B, W, N) + family(B, W, R2)
    assert counted("plain", "none", rp=False) == family(B, W, N)
    # kd = the real step: student and teacher, 3 + 3 per family; the student at w (element) or w/10 (dimension)
    assert counted("kd", "element") == family(B, W, N, 2) + family(B, W, R2, 2)
    assert counted("kd", "dimension") == family(B, W, N) + family(B, K, N) + family(B, W, R2) + family(B, K, R2)
    # MetaSD, element masks (student width w), tails: virtual step 4 (student scores, teacher scores, the
    # create-graph backward's 2), quiz 3 (scores, 2 backward), double backward 2 (both b x w x N, "nt"),
    # the teacher's backward of the meta gradient 2, real step 6  -> 17
    # relations: virtual 3 (student scores + create-graph backward 2), real 6  -> 9
    tails = collections.Counter({(B, W, N, "nt"): 1 + 1 + 2 + 1 + 1, (B, N, W, "nn"): 1 + 1 + 2,
                                 (N, B, W, "tn"): 1 + 1 + 2}) + family(Q, W, N)
    rels = family(B, W, R2, 3)
    assert counted("metasd", "element") == tails + rels
    assert sum(tails.values()) == 17 and sum(rels.values()) == 9
    # MetaSD, dimension masks: the same 26 with the student's 8 + quiz 3 (tails) and 6 (relations) at w/10
    tails = collections.Counter({(B, K, N, "nt"): 1 + 2 + 1, (B, N, K, "nn"): 2, (N, B, K, "tn"): 2,
                                 (B, W, N, "nt"): 2, (B, N, W, "nn"): 2, (N, B, W, "tn"): 2}) + family(Q, K, N)
    rels = family(B, K, R2, 2) + family(B, W, R2)
    assert counted("metasd", "dimension") == tails + rels
    assert sum(tails.values()) == 17 and sum(rels.values()) == 9
    # the reference code's extra teacher step: one more plain teacher step
    assert counted("metasd", "element", extra_teacher_step=True) == \
        counted("metasd", "element") + family(B, W, N) + family(B, W, R2)
    # optimiser traffic: Adagrad 5 passes over the fp32 tables, MetaSD's Adam 7 more
    table = (N + R2) * W * 4
    assert gpu_check.optimizer_bytes("plain", DIM, N, R) == 5 * table
    assert gpu_check.optimizer_bytes("kd", DIM, N, R) == 5 * table
    assert gpu_check.optimizer_bytes("metasd", DIM, N, R) == (5 + 7) * table


class _MatMuls(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every 2-D matrix product (shape and operand layout) that runs inside it."""

    def __init__(self):
        super().__init__()
        self.seen = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.mm.default:
            a, b = args[:2]
            (m, k), n = a.shape, b.shape[1]
            a_t, b_t = a.stride() == (1, m), b.stride() == (1, k)  # transposed views
            self.seen[(m, k, n, "tn" if a_t else "nt" if b_t else "nn")] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method,structure", [("plain", "none"), ("kd", "element"), ("kd", "dimension"),
                                              ("metasd", "element"), ("metasd", "dimension")])
def test_score_products_are_the_library_steps(method, structure):
    """Every product the bound counts is one the library's step runs, in the same layout; the step runs
    no other matrix product but MetaSD's two relation-score forwards that feed no loss (the teacher's in
    the virtual step, the quiz's), which the bound leaves out."""
    from metasd_dgl.config import Config, apply_overrides
    from metasd_dgl.model.predictor import build_model
    from metasd_dgl.model.pruning import make_masks
    from metasd_dgl.train.methods import make_method

    masks = "element" if structure == "none" else structure
    gen = torch.Generator().manual_seed(0)
    model = build_model("kge", "complex", N, R, DIM, init_scale=1e-1, generator=gen)
    cfg = apply_overrides(Config(), {"train": {"method": method, "batch_size": B, "regularizer": "dura",
                                               "rp_weight": 4.0}, "prune": {"structure": masks}})
    steps = make_method(cfg, model)
    if method != "plain":
        steps.remask(make_masks(model, 0.9, "global", masks, DIM), masks)

    def queries(n):
        return torch.stack([torch.randint(N, (n,), generator=gen), torch.randint(R2, (n,), generator=gen),
                            torch.randint(N, (n,), generator=gen)], 1)

    with _MatMuls() as mm:
        steps.step(queries(B), quiz=queries(Q))
    needed = counted(method, masks)
    assert not needed - mm.seen, "counted but not run"
    extra = mm.seen - needed
    assert all(n == R2 and layout == "nt" for (m, k, n, layout) in extra), extra  # relation-score forwards only
    assert sum(extra.values()) <= (2 if method == "metasd" else 0), extra


def test_bound_on_cpu():
    cache = {}
    before = torch.backends.cuda.matmul.allow_tf32
    res = gpu_check.bound("metasd", "dimension", B, DIM, N, R, quiz=Q, device="cpu", repeats=2, cache=cache)
    assert res["ms"] > 0 and res["products_ms"] > 0 and res["optimizer_ms"] > 0 and res["copy_gb_s"] > 0
    assert res["ms"] == pytest.approx(res["products_ms"] + res["optimizer_ms"])
    assert res["n_products"] == len(res["products"]) == 26
    assert res["products_ms"] == pytest.approx(sum(p["ms"] for p in res["products"]))
    assert res["optimizer_bytes"] == (5 + 7) * (N + R2) * W * 4
    again = gpu_check.bound("metasd", "dimension", B, DIM, N, R, quiz=Q, device="cpu", repeats=2, cache=cache)
    assert again["ms"] == res["ms"]  # every shape and the bandwidth measured once per run
    plain = gpu_check.bound("plain", "none", B, DIM, N, R, device="cpu", repeats=2, cache=cache)
    assert 0 < plain["ms"] < res["ms"] and plain["n_products"] == 6
    for precision in ("bf16", "tf32"):  # bf16: bfloat16 inputs; tf32: CUDA's flag on while timing, restored
        other = gpu_check.bound("plain", "none", B, DIM, N, R, precision=precision, device="cpu", repeats=2)
        assert other["ms"] > 0 and other["precision"] == precision
        assert torch.backends.cuda.matmul.allow_tf32 == before
    with pytest.raises(ValueError):
        gpu_check.bound("plain", "none", B, DIM, N, R, precision="fp16", device="cpu")


def test_tf32_on_cpu_is_refused_before_any_work(tmp_path):
    assert gpu_check.main(["--data", str(tmp_path / "absent.tar.gz"), "--device", "cpu", "--precision", "tf32",
                           "--out", str(tmp_path / "out.json")]) == 2
    assert not (tmp_path / "out.json").exists()


#: everything but torch and numpy made unimportable, as on a bare GPU machine without network
BLOCKED = "import sys; sys.modules.update(dict.fromkeys(['dgl', 'pandas', 'safetensors', 'click', 'yaml', 'tqdm'])); "


def test_cpu_rehearsal(tmp_path, kg_dir):
    out = tmp_path / "gpu_check.json"
    # Generous for the work (rank 8 on UMLS: the timing cells take about a second, an epoch well under one):
    # the checks below hold on a loaded machine too; only "stopped by the deadline" needs the clock.
    budget = 30.0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED + "sys.path.insert(0, 'benchmarks'); import gpu_check; "
         "sys.exit(gpu_check.main(sys.argv[1:]))",
         "--data", str(kg_dir / "umls.tar.gz"), "--tiny", "--budget", str(budget), "--threads", "1",
         "--timing-share", "0.8", "--device", "cpu", "--precision", "bf16", "--work", str(tmp_path / "work"),
         "--out", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = json.loads(out.read_text())
    assert {"device", "torch", "dataset", "dim", "budget_s", "timing", "training", "paper", "elapsed_s"} <= set(rec)
    assert rec["stand_ins"] == ["yaml", "tqdm"]
    assert rec["device"] == "cpu" and rec["dim"] == 8 and rec["paper"] == {"student_mrr": 0.391, "complex_rp_mrr": 0.388}

    cells = {(r["method"], r["batch"], r["structure"]) for r in rec["timing"]}
    assert cells == {("plain", b, "none") for b in (64, 128)} | {
        (m, b, s) for m in ("kd", "metasd") for b in (64, 128) for s in ("dimension", "element")}
    # On a heavily loaded machine the timing share of the budget can run out: later cells are then
    # reported as skipped (by design); the first cell is always timed.
    assert "ms" in rec["timing"][0]
    for r in rec["timing"]:
        if "ms" not in r:
            assert r["skipped"] == "timing share of the budget spent", r
            continue
        assert r["ms"] > 0 and math.isfinite(r["loss"]), r
        plain = next(p for p in rec["timing"] if p["method"] == "plain" and p["batch"] == r["batch"])
        assert r["ratio_to_plain"] == r["ms"] / plain["ms"]
        # the in-run bound: the step's products at the run's precision, their count as score_products says
        masks = "element" if r["structure"] == "none" else r["structure"]
        assert r["bound_ms"] > 0 and r["bound"]["precision"] == rec["precision"]
        assert r["bound"]["n_products"] == len(gpu_check.score_products(
            r["method"], masks, r["batch"], rec["dim"], rec["dataset"]["entities"], rec["dataset"]["relations"]))
        assert r["ratio_to_bound"] == r["ms"] / r["bound_ms"]
        assert r["bound_ratio_to_plain"] == r["bound_ms"] / plain["bound_ms"]
        assert r["meets_target"] == (r["ratio_to_bound"] <= 1.5)
        assert "peak_mb" in r and r["peak_mb"] is None  # CPU: no CUDA allocator to ask
    timed = [r for r in rec["timing"] if "ms" in r]
    assert [(t["method"], t["batch"], t["structure"]) for t in rec["targets"]] == [
        (r["method"], r["batch"], r["structure"]) for r in timed
        if r["method"] == "metasd" or (r["method"] == "plain" and r["batch"] == max(
            p["batch"] for p in timed if p["method"] == "plain"))]
    assert rec["target_ratio_to_bound"] == 1.5 and rec["copy_gb_s"] > 0
    # --precision reaches the library's config (train.precision) and the bound's matmuls
    assert rec["precision"] == "bf16"
    assert "x bound" in proc.stdout and "peak MB" in proc.stdout

    tr = rec["training"]
    if tr.get("skipped") or not tr.get("epochs_done"):  # a loaded machine left no time for an epoch
        assert tr.get("skipped") == "no training time left in the budget" or tr["stop"] == "wall-clock budget spent"
        return
    assert tr["stop"] == "wall-clock budget spent"  # 1000 epochs cannot finish: the deadline stopped it
    # part (b)'s run got the precision too (its config.yaml: JSON stand-in)
    assert json.loads((tmp_path / "work" / "run" / "config.yaml").read_text())["train"]["precision"] == "bf16"
    assert tr["valid"]
    names = [e["checkpoint"] for e in tr["evaluations"]]
    assert names == ["best.pt", "last.pt"]
    # each model from its own best epoch (the library's loader): the teacher from best-teacher.pt
    assert tr["evaluations"][0]["teacher_checkpoint"] == "best-teacher.pt"
    assert tr["evaluations"][1]["teacher_checkpoint"] == "last.pt"
    for ev in tr["evaluations"]:
        for who in ("teacher", "student"):
            m = ev[who]
            assert m["count"] == 2 * rec["dataset"]["test"]
            assert 0 < m["mrr"] <= 1 and m["hits@1"] <= m["hits@3"] <= m["hits@10"] <= 1
        assert abs(ev["student_density"] - 0.1) < 0.01
    assert "paper: MetaSD student" in proc.stdout
    assert ("x plain" in proc.stdout) == any("ms" in r and r["method"] != "plain" for r in rec["timing"])


def test_profile_json_has_every_step_kind_and_its_operators(tmp_path, kg_dir):
    """``--profile``: per timed step kind, the top operators by self CPU time (CPU run), in the record and
    in the profile JSON; the score products show up as ``aten::mm`` and MetaSD's closed-form second order
    as ``_VirtualGrad``."""
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--data", str(kg_dir / "umls.tar.gz"), "--tiny", "--batches", "32", "--steps", "2",
                         "--budget", "1000", "--reserve", "1000", "--device", "cpu", "--profile", "--profile-top", "1000",
                         "--work", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    prof = json.loads((tmp_path / "gpu_check_profile.json").read_text())
    assert prof["device"] == "cpu" and prof["dim"] == 8
    kinds = [(p["method"], p["batch"], p["structure"]) for p in prof["profiles"]]
    assert kinds == [("plain", 32, "none"), ("kd", 32, "dimension"), ("kd", 32, "element"),
                     ("metasd", 32, "dimension"), ("metasd", 32, "element")]
    rec = json.loads(out.read_text())
    for p, row in zip(prof["profiles"], rec["timing"]):
        assert row["profile"]["operators"] == p["operators"] and p["ms"] == row["ms"]
        assert p["sorted_by"] == "self_cpu_ms" and p["steps"] == 2
        ops = p["operators"]
        assert 0 < len(ops) <= 1000
        assert all(o["self_cuda_ms"] is None and o["self_cpu_ms"] >= 0 and o["calls"] > 0 for o in ops)
        assert [o["self_cpu_ms"] for o in ops] == sorted((o["self_cpu_ms"] for o in ops), reverse=True)
        assert sum(o["share"] for o in ops) == pytest.approx(1.0)  # every operator kept
        assert abs(ops[0]["share"] - ops[0]["self_cpu_ms"] / p["total_ms"]) < 1e-9
    every = {p["method"] + "/" + p["structure"]: {o["name"] for o in p["operators"]} for p in prof["profiles"]}
    assert all("aten::mm" in names for names in every.values()), every
    assert "_VirtualGrad" in every["metasd/element"] and "_VirtualGrad" not in every["kd/element"]
    assert rec["training"].get("skipped") == "no training time left in the budget"

