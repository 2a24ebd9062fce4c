"""The compression study: which student earns its place, methods x datasets x seeds.

Every method trains through the one harness (``harness.run_variant_seed``) from
a per-dataset base config (``BUDGETS``: dim D, epochs, batch, lr), selects its
checkpoint on validation only and is tested (filtered, both sides, realistic
ranks; the *true* student: both sides masked).  Students keep 10 % of the
prunable weights (``prune.rate=0.9``).  Methods (``METHODS``; the row
each reports in brackets):

    dense                plain, dim D                                       [teacher]
    dense small          plain, dim round(0.1 D): the students' non-zeros   [teacher]
    prune-only           prune, dimension masks                             [student]
    kd                   kd, dimension, the paper's student (PAPER)         [student]
    metasd reference     the overrides of pipelines/configs/reference.yaml  [student]
    metasd               metasd, dimension, the paper's student (PAPER: the teacher's weights under the
                         mask, mutual KD, not T^2-scaled)                   [teacher, student]
    own student          metasd, student=own, one-way KD, T^2-scaled KD, T 2, kd_weight 3 (--own-kd) [student]
    own student KD tuned the same with T 1, kd_weight 8.2, student lr 0.144: chosen by a tune on Kinship
                         validation (OWN_KD_TUNED) and used unchanged on every dataset [student]
    own student KD per dataset   the recipe: the same with the KD chosen on each dataset's own validation
                         (OWN_KD_VALID; the FB15k-237 subset, not tuned, takes Kinship's) [teacher, student]
    own student kd       the recipe's student, distillation values and budget with train.method=kd: no
                         virtual step, no meta step (what the meta step is worth) [teacher, student]
    dense small / prune-only at the recipe's lr   the controls: the baselines at the recipe's student lr
    prune-only element   prune, element masks, global magnitude (the paper's masks); pruned weights keep
                         their gradients, so the mask can change (gradual magnitude pruning)
    metasd element       metasd, element masks, the paper's student (the paper's masks, the project's MetaSD step)
    prune-only element per-tensor   prune, element masks, a 10 % budget per table
    prune-only element gradual   prune-only element with gradual_epochs = epochs // 2 (the rate rises to 0.9)
    prune-only element in 1.5x / 2x coordinates   element masks inside a shared coordinate budget: the
                         1.5 (2) x 10 % most important coordinates (as dimension masks choose them), then
                         the largest weights inside them up to 10 % (``budget_masks``; an experiment, no
                         option, run only when named in --methods)
    gradual element      metasd, element masks, the paper's student, gradual_epochs = epochs // 2 [student]
    rgcn dense / rgcn prune-only / rgcn metasd / rgcn own student   R-GCN + DistMult, element masks on embeddings and
                         GNN weights (pipelines/configs/umls_rgcn.yaml), on the datasets whose budget
                         has an ``rgcn`` entry (UMLS, the FB15k-237 subset)

The table: test MRR, Hits@1, Hits@10 as mean ± sd over seeds, MRR on the rarest
third of relations and of entities (``eval.num_buckets=3``, bucket 0), the
rarest-relation gap (the dense teacher's MRR there minus the row's), non-zeros,
bytes on disk (teacher: safetensors; student: the compact export), seconds per
epoch as a multiple of ``dense``.  Then the paired comparison: per seed, the
student's test MRR minus that of ``dense small`` (the same non-zeros) and of
``prune-only``; mean, sd and mean/sd of the differences, ``*`` where
|mean| > 2 sd.

Datasets: umls, kinship, codex-s (the archive in --data-dir until it is a
built-in) and ``fb15k-237-top2000`` (``metasd-dgl subset FB15k-237
--top-entities 2000``, made under --root when missing).  Results are resumable:
each run folder under --root keeps its ``result.json``; a run whose stored
result was made with the same overrides is not retrained, so a killed study
continues where it stopped (nor is a method whose overrides equal another's
stored run on that dataset: it takes that run's result).  A method whose option is not implemented in this
checkout (or whose preset file is missing) makes the full study fail before it
trains anything; with --quick it is skipped with a message.

    python benchmarks/bench_compression.py --threads 1 --jobs 2         # the full study (~5.5 h, 2 cores)
    python benchmarks/bench_compression.py --quick                      # a smoke run (minutes)
    python benchmarks/bench_compression.py --datasets umls --methods dense,prune-only,metasd --seeds 2
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from common import REPO, RESULTS, default_data_dir, machine_info, sample_sd, write_json
from harness import Variant, history, preprocess, run_variant_seed, seed_run_dir

REFERENCE_PRESET = REPO / "pipelines" / "configs" / "reference.yaml"
RATE = 0.9  # students keep 10 % of the prunable weights
FB_SUBSET = "fb15k-237-top2000"

# Budgets: dim D, epochs, batch, lr, regulariser weight, validation every k epochs; ``rgcn``: the R-GCN
# budget on the datasets that run it.  Set from plain epochs measured on the shared 2-core machine
# (one thread, load ~2): UMLS dim 128 0.12 s, Kinship dim 128 0.28 s, CoDEx-S dim 128 5.1 s (dim 256:
# 12 s), FB15k-237 top-2000 dim 100 7.1 s (dim 200: 17 s), R-GCN dim 64: UMLS 0.29 s, FB subset 28 s.
# MetaSD costs ~3-4x plain with dimension masks, ~8x with element masks (R-GCN on the subset: 177 s,
# 6.4x); kd ~2x.  With every method,
# 3 seeds and 2 jobs the default study is ~40,000 CPU-seconds (R-GCN students on the subset: ~900 s a
# seed each): ~5.5 h on 2 cores.
BUDGETS: dict[str, dict] = {
    "umls": dict(source="umls", dim=128, epochs=60, batch=500, lr=0.1, reg=0.01, valid_every=10,
                 rgcn=dict(dim=64, epochs=40, batch=1000, lr=0.05, valid_every=10)),
    "kinship": dict(source="kinship", dim=128, epochs=60, batch=500, lr=0.1, reg=0.01, valid_every=10),
    "codex-s": dict(source="codex-s", dim=128, epochs=20, batch=1000, lr=0.1, reg=0.01, valid_every=5),
    FB_SUBSET: dict(source=FB_SUBSET, dim=100, epochs=12, batch=1000, lr=0.1, reg=0.01, valid_every=4,
                    rgcn=dict(dim=64, epochs=6, batch=2000, lr=0.05, valid_every=3)),
}
QUICK = {"umls": dict(source="umls", dim=16, epochs=2, batch=1000, lr=0.1, reg=0.01, valid_every=1,
                      rgcn=dict(dim=8, epochs=2, batch=2000, lr=0.05, valid_every=1))}

#: The own-weights student's KD settings (``--own-kd KEY=VALUE,...`` overrides them).
OWN_KD = {"metasd.one_way_kd": True, "metasd.kd_t2_scale": True, "metasd.temperature": 2.0, "metasd.kd_weight": 3.0}
#: The own student's KD chosen on Kinship validation (student MRR 0.8219, trial 7 of 8):
#: metasd-dgl tune pipelines/configs/own_student.yaml --space pipelines/search/kinship_own_student.yaml
#:   --config pipelines/search/kinship_own_student.base.yaml --trials 8 --timeout 40
OWN_KD_TUNED = {"metasd.temperature": 1.0, "metasd.kd_weight": 8.2, "metasd.student_lr": 0.144}
#: The recipe: the own student's KD chosen on each dataset's own validation (student MRR), at that dataset's
#: budget, by ``metasd-dgl tune`` (the commands: pipelines/search/*_own_student.base.yaml); the FB15k-237
#: subset was not tuned (a trial there costs ~16 CPU minutes) and takes Kinship's.
OWN_KD_VALID = {
    "umls": {"metasd.temperature": 2.0, "metasd.kd_weight": 20.6, "metasd.student_lr": 0.371},  # valid 0.9100
    "kinship": dict(OWN_KD_TUNED),  # valid 0.8219
    "codex-s": {"metasd.temperature": 2.0, "metasd.kd_weight": 3.07, "metasd.student_lr": 0.44},  # valid 0.3844
    FB_SUBSET: dict(OWN_KD_TUNED),  # not tuned: Kinship's
}
#: Options of the preset that the study's budget sets instead.
PRESET_DROPPED = ("run_dir", "data.", "model.dim", "train.epochs", "train.seed", "runtime.num_threads",
                  "valid.every", "runtime.device", "valid.patience", "checkpoint.keep")


@dataclass(frozen=True)
class Method:
    """A study row group: ``overrides(budget)`` on the base config; ``needs``: options it relies on."""

    name: str
    overrides: Callable[[dict], dict]
    reported: Sequence[str] = ("student",)
    needs: Sequence[str] = ()
    encoder: str = "kge"
    coordinate_share: float = 0.0  # > 0: element masks inside this many times the kept coordinates (budget_masks)


def budget_masks(model, rate: float, scope: str, structure: str, dim: int, share: float) -> dict:
    """Element masks inside a shared coordinate budget (the experiment of ``coordinate_share``): the
    ``share`` x ``keep_count(dim, rate)`` coordinates that dimension masks would rank first, the same in every
    table, then the largest weights inside them, as many as element masks keep at ``rate`` (``share`` > 1
    leaves room for them; ``scope`` and ``structure`` are the loop's arguments, not read: always global)."""
    from harness import keep_count
    from metasd_dgl.model.pruning import compute_masks, dimension_coordinates, prunable_params

    params = prunable_params(model)
    kept = min(dim, round(share * max(1, keep_count(dim, rate))))
    coords = compute_masks(params, 1.0 - kept / dim, "global", dimension_coordinates(params, dim))
    inside = compute_masks({n: p * coords[n] for n, p in params.items()}, rate, "global")
    masks = {n: inside[n] & coords[n] for n in params}
    want = keep_count(sum(p.numel() for p in params.values()), rate)
    if sum(int(m.sum()) for m in masks.values()) != want:
        raise ValueError(f"budget_masks: the {kept} coordinates hold fewer than {want} non-zero weights")
    return masks


def small_dim(budget: dict) -> int:
    """The dense model with the students' non-zeros: dim round(0.1 D)."""
    return max(1, round((1 - RATE) * budget["dim"]))


def recipe_kd(budget: dict, table: Optional[dict] = None) -> dict:
    """The recipe's KD settings on this budget's dataset (``OWN_KD_VALID``, or ``table``)."""
    table = OWN_KD_VALID if table is None else table
    if budget["name"] not in table:
        raise SystemExit(f"no KD chosen on {budget['name']!r} validation yet: add it to bench_compression's "
                         f"OWN_KD_VALID (a search: pipelines/search/*own_student*.yaml)")
    return table[budget["name"]]


DIM = {"prune.structure": "dimension"}
ELEMENT = {"prune.structure": "element"}
#: The paper's student, stated in full (the library's defaults are the own-weights student): the teacher's
#: weights under the mask, mutual distillation, not T^2-scaled (pipelines/configs/paper_student.yaml).
PAPER = {"metasd.student": "shared", "metasd.one_way_kd": False, "metasd.kd_t2_scale": False,
         "metasd.temperature": 3.0, "metasd.kd_weight": 1.0}


def _const(over: dict) -> Callable[[dict], dict]:
    return lambda budget: dict(over)


METHODS = [
    Method("dense", _const({"train.method": "plain"}), ("teacher",)),
    Method("dense small", lambda b: {"train.method": "plain", "model.dim": small_dim(b)}, ("teacher",)),
    Method("prune-only", _const({"train.method": "prune", **DIM})),
    Method("kd", _const({"train.method": "kd", **DIM, **PAPER})),
    Method("metasd reference", lambda b: dict(b["preset"]), needs=("preset",)),
    Method("metasd", _const({"train.method": "metasd", **DIM, **PAPER}), ("teacher", "student")),
    Method("own student", lambda b: {"train.method": "metasd", "metasd.student": "own", **DIM, **b["own_kd"]},
           needs=("metasd.student", "metasd.one_way_kd")),
    Method("own student KD tuned", lambda b: {"train.method": "metasd", "metasd.student": "own", **DIM, **OWN_KD,
                                              **OWN_KD_TUNED}, needs=("metasd.student", "metasd.student_lr")),
    Method("own student KD per dataset", lambda b: {"train.method": "metasd", "metasd.student": "own", **DIM, **OWN_KD,
                                                    **recipe_kd(b)},
           ("teacher", "student"), needs=("metasd.student", "metasd.student_lr")),
    Method("own student kd", lambda b: {"train.method": "kd", "metasd.student": "own", **DIM, **OWN_KD,
                                                        **recipe_kd(b)},
           ("teacher", "student"), needs=("metasd.student", "metasd.student_lr")),
    Method("dense small at the recipe's lr", lambda b: {"train.method": "plain", "model.dim": small_dim(b),
                                                        "train.lr": recipe_kd(b)["metasd.student_lr"]},
           ("teacher",)),
    Method("prune-only at the recipe's lr", lambda b: {"train.method": "prune", **DIM,
                                                       "train.lr": recipe_kd(b)["metasd.student_lr"]}),
    Method("prune-only element", _const({"train.method": "prune", **ELEMENT})),
    Method("prune-only element gradual", lambda b: {"train.method": "prune", **ELEMENT,
                                                    "prune.gradual_epochs": b["epochs"] // 2},
           needs=("prune.gradual_epochs",)),
    Method("metasd element", _const({"train.method": "metasd", **ELEMENT, **PAPER})),
    Method("prune-only element in 1.5x coordinates", _const({"train.method": "prune", **ELEMENT}),
           coordinate_share=1.5),
    Method("prune-only element in 2x coordinates", _const({"train.method": "prune", **ELEMENT}),
           coordinate_share=2.0),
    Method("prune-only element per-tensor", _const({"train.method": "prune", **ELEMENT,
                                                    "prune.scope": "per-tensor"})),
    Method("gradual element", lambda b: {"train.method": "metasd", **ELEMENT, **PAPER,
                                         "prune.gradual_epochs": b["epochs"] // 2},
           needs=("prune.gradual_epochs",)),
    Method("rgcn dense", _const({"train.method": "plain"}), ("teacher",), encoder="rgcn"),
    Method("rgcn prune-only", _const({"train.method": "prune"}), encoder="rgcn"),
    Method("rgcn metasd", _const({"train.method": "metasd", **PAPER}), ("teacher", "student"), encoder="rgcn"),
    Method("rgcn own student", lambda b: {"train.method": "metasd", "metasd.student": "own", **b["own_kd"]},
           encoder="rgcn", needs=("metasd.student",)),
]
BY_NAME = {m.name: m for m in METHODS}
#: Students compared with these, seed by seed (per encoder).
PAIRED_AGAINST = {"kge": ("dense small", "prune-only", "dense small at the recipe's lr",
                          "prune-only at the recipe's lr"),
                  "rgcn": ("rgcn prune-only",)}


# ------------------------------------------------------------------ the options a method relies on
def flat_overrides(tree: Mapping[str, Any], prefix: str = "") -> dict:
    """A nested YAML mapping -> ``{"section.key": value}``."""
    out: dict = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_overrides(v, key + "."))
        else:
            out[key] = v
    return out


def preset_overrides(path: Path = REFERENCE_PRESET) -> dict:
    """The reference preset's overrides, less the budget's options (``PRESET_DROPPED``)."""
    import yaml

    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {k: v for k, v in flat_overrides(tree).items()
            if not any(k == d or (d.endswith(".") and k.startswith(d)) for d in PRESET_DROPPED)}


def option_used(key: str, library: Path = REPO / "metasd_dgl") -> bool:
    """Whether the library reads option ``section.name`` anywhere but where it is declared (config.py)."""
    name = key.split(".", 1)[1]
    pattern = re.compile(rf"\.{re.escape(name)}\b")
    return any(pattern.search(p.read_text(encoding="utf-8"))
               for p in library.rglob("*.py") if p.name != "config.py")


def missing(method: Method) -> Optional[str]:
    """Why ``method`` cannot run in this checkout, or None."""
    for need in method.needs:
        if need == "preset":
            if not REFERENCE_PRESET.is_file():
                return f"{REFERENCE_PRESET.relative_to(REPO)} does not exist"
        elif not option_used(need):
            return f"option {need} is declared but not implemented in this checkout"
    return None


# ------------------------------------------------------------------ the paired comparison
def paired(student: Sequence[float], reference: Sequence[float]) -> dict:
    """Per-seed differences ``student - reference`` -> ``{diffs, mean, sd, ratio, marked}``.

    ``sd`` is the sample sd of the differences (n - 1), ``ratio`` mean / sd (None when sd is 0),
    ``marked`` |mean| > 2 sd (and sd > 0).
    """
    if len(student) != len(reference):
        raise ValueError(f"{len(student)} student seeds vs {len(reference)} reference seeds")
    diffs = [a - b for a, b in zip(student, reference)]
    mean = sum(diffs) / len(diffs) if diffs else 0.0
    sd = sample_sd(diffs)
    return {"diffs": diffs, "mean": mean, "sd": sd, "ratio": mean / sd if sd > 0 else None,
            "marked": bool(sd > 0 and abs(mean) > 2 * sd)}


def aggregate(runs: Sequence[dict], reported: Sequence[str]) -> dict:
    """Seed results of one method -> ``{row: {metric: mean, metric_std: sd, ...}}`` plus timing."""
    out: dict = {"seeds": len(runs), "dim": runs[0]["dim"],
                 "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in runs) / len(runs)}
    overlaps = [r["overlap"] for r in runs if r.get("overlap")]
    if overlaps:  # masked runs: the kept coordinates a training triple shares, and the share sharing none
        for k in ("mean_shared", "none_share"):
            xs = [o[k] for o in overlaps]
            out[f"overlap_{k}"], out[f"overlap_{k}_std"] = sum(xs) / len(xs), sample_sd(xs)
    for row in reported:
        vals = [r[row] for r in runs]
        m: dict = {"nonzero": vals[0]["nonzero"], "bytes": vals[0]["bytes"],
                   "per_seed_mrr": [v["mrr"] for v in vals]}
        for k in ("mrr", "hits@1", "hits@10", "rarest_mrr", "rarest_entity_mrr"):
            xs = [v[k] for v in vals if v.get(k) is not None]
            m[k] = sum(xs) / len(xs) if xs else None
            m[f"{k}_std"] = sample_sd(xs)
        out[row] = m
    return out


def comparisons(results: Mapping[str, dict]) -> dict:
    """``{student method: {reference: paired(...)}}`` for every student row with a run of each reference."""
    out: dict = {}
    for name, res in results.items():
        refs = PAIRED_AGAINST[BY_NAME[name].encoder]
        if "student" not in res or name in refs:
            continue
        for ref in refs:
            if ref in results and ref != name:
                ref_row = "student" if "student" in results[ref] else "teacher"
                out.setdefault(name, {})[ref] = paired(res["student"]["per_seed_mrr"],
                                                       results[ref][ref_row]["per_seed_mrr"])
    return out


# ------------------------------------------------------------------ running
def base_overrides(data_path: Path, budget: dict, threads: int, encoder: str) -> dict:
    if encoder == "rgcn":
        b = budget["rgcn"]
        return {"data.processed_dir": str(data_path), "model.encoder": "rgcn", "model.decoder": "distmult",
                "model.dim": b["dim"], "rgcn.num_layers": 2, "rgcn.num_bases": 8, "rgcn.decomposition": "basis",
                "train.epochs": b["epochs"], "train.batch_size": b["batch"], "train.lr": b["lr"],
                "train.regularizer": "none", "rgcn.edge_dropout": 0.5, "valid.every": b["valid_every"],
                "valid.patience": 0, "checkpoint.keep": 0, "runtime.num_threads": threads,
                "prune.rate": RATE, "prune.scope": "per-tensor", "prune.structure": "element",
                "metasd.quiz_batch_size": b["batch"], "eval.num_buckets": 3}
    return {"data.processed_dir": str(data_path), "model.decoder": "complex", "model.dim": budget["dim"],
            "train.epochs": budget["epochs"], "train.batch_size": budget["batch"], "train.lr": budget["lr"],
            "train.reg_weight": budget["reg"], "valid.every": budget["valid_every"], "valid.patience": 0,
            "checkpoint.keep": 0, "runtime.num_threads": threads, "prune.rate": RATE,
            "metasd.quiz_batch_size": budget["batch"], "eval.num_buckets": 3}


def one_run(dataset: str, method_name: str, seed: int, base: dict, root: str, budget: dict) -> dict:
    """One (dataset, method, seed) in a worker process -> the harness's result (a twin's, when one exists)."""
    method = BY_NAME[method_name]
    variant = Variant(method.name, method.overrides(budget), tuple(method.reported))
    twin = twin_result(method, budget, base, Path(root), seed)
    if twin is not None:
        return twin
    if method.coordinate_share:  # the experiment's masks in place of the library's, for this run only
        import functools

        import metasd_dgl.train.loop as loop
        library_masks, loop.make_masks = loop.make_masks, functools.partial(budget_masks,
                                                                            share=method.coordinate_share)
        try:
            result = run_variant_seed(variant, base, Path(root), seed, resume=True)
        finally:
            loop.make_masks = library_masks
    else:
        result = run_variant_seed(variant, base, Path(root), seed, resume=True)
    return {**result, "overlap": last_overlap(seed_run_dir(Path(root), method.name, seed))}


def last_overlap(run_dir: Path) -> Optional[dict]:
    """The last validation's mask overlap (``pruning.triple_overlap``) in ``run_dir/metrics.jsonl``, or None."""
    return next((r["overlap"] for r in reversed(history(run_dir)) if "overlap" in r), None)


def twin_result(method: Method, budget: dict, base: dict, root: Path, seed: int) -> Optional[dict]:
    """The stored result of another method whose overrides are the same on this dataset (e.g. the KD chosen
    on Kinship, which is both "KD tuned" and "KD per dataset" there), or None: the same run is not trained twice."""
    want = json.loads(json.dumps({**base, "train.seed": seed, **method.overrides(budget)}))
    for other in METHODS:
        if other is method or other.encoder != method.encoder or other.coordinate_share != method.coordinate_share:
            continue
        stored = seed_run_dir(root, other.name, seed) / "result.json"
        if not stored.is_file():
            continue
        record = json.loads(stored.read_text(encoding="utf-8"))
        if {k: v for k, v in record.get("overrides", {}).items() if k != "run_dir"} == want:
            print(f"[{root.name}] {method.name} seed {seed}: the stored run of {other.name!r} (the same overrides)",
                  file=sys.stderr, flush=True)
            return record["result"]
    return None


def prepare_dataset(name: str, budget: dict, root: Path, data_dir: Path) -> Path:
    """The processed folder of dataset ``name`` under ``root`` (the FB15k-237 subset written first)."""
    source: Any = budget["source"]
    if source == FB_SUBSET:
        folder = Path(budget.get("subset_dir") or root / "fb15k-237-top2000-raw")
        if not (folder / "subset.json").is_file():
            from metasd_dgl.data.subset import write_subset

            write_subset("FB15k-237", 2000, folder, data_dir)
        source = folder
    elif source == "codex-s":
        from metasd_dgl.data.registry import lookup

        if lookup("codex-s") is None:  # not yet a built-in: its archive
            source = data_dir / "codex-s.tar.gz"
    return preprocess(source, root / "data", data_dir)


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--datasets", default=",".join(BUDGETS))
    ap.add_argument("--methods", default=",".join(m.name for m in METHODS if not m.coordinate_share),
                    help="comma-separated method names (see above; default: all but the coordinate-budget experiments)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1 for every method")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--own-kd", default="", metavar="KEY=VALUE,...",
                    help="override the own-weights student's KD options (defaults: %s)" % OWN_KD)
    ap.add_argument("--fb-subset", default="", metavar="DIR",
                    help="the FB15k-237 subset folder (metasd-dgl subset FB15k-237 --top-entities 2000 --out DIR); "
                         "default: written under --root")
    ap.add_argument("--quick", action="store_true", help="smoke run: UMLS, tiny dims, 1 seed, 2 epochs")
    ap.add_argument("--root", default=str(RESULTS / "compression_runs"), help="run folders (kept: resumable)")
    ap.add_argument("--out", default=str(RESULTS / "compression.json"))
    args = ap.parse_args(argv)
    budgets = QUICK if args.quick else {d: dict(BUDGETS[d]) for d in args.datasets.split(",")}
    if args.fb_subset and FB_SUBSET in budgets:
        budgets[FB_SUBSET]["subset_dir"] = args.fb_subset
    seeds = list(range(1 if args.quick else args.seeds))
    unknown = [m for m in args.methods.split(",") if m not in BY_NAME]
    if unknown:
        ap.error(f"unknown methods {unknown}; known: {', '.join(BY_NAME)}")
    methods = [BY_NAME[m] for m in args.methods.split(",")]
    own_kd = dict(OWN_KD)
    for item in filter(None, args.own_kd.split(",")):
        key, value = item.split("=", 1)
        own_kd[key.strip()] = value
    skipped = {}
    for m in methods:
        why = missing(m)
        if why and not args.quick:
            raise SystemExit(f"method {m.name!r} cannot run: {why} (drop it with --methods, or use --quick)")
        if why:
            print(f"skipped {m.name}: {why}", file=sys.stderr)
            skipped[m.name] = why
    methods = [m for m in methods if m.name not in skipped]
    record: dict = {"machine": machine_info(), "budgets": budgets, "seeds": seeds, "prune_rate": RATE,
                    "own_kd": own_kd, "skipped": skipped, "results": {}, "paired": {}}
    root = Path(args.root) / ("quick" if args.quick else "full")
    preset = preset_overrides() if REFERENCE_PRESET.is_file() else {}
    tasks = []  # (dataset, method, seed, base, root, budget)
    for ds, budget in budgets.items():
        ds_root = root / ds
        data_path = prepare_dataset(ds, budget, ds_root, Path(args.data_dir))
        for m in methods:
            if m.encoder == "rgcn" and "rgcn" not in budget:
                continue
            for seed in seeds:
                extra = {"name": ds, "preset": preset, "own_kd": own_kd}
                tasks.append((ds, m.name, seed, base_overrides(data_path, budget, args.threads, m.encoder),
                              str(ds_root), {**budget, **extra}))
    runs: dict = {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        futures = {pool.submit(one_run, *t): t for t in tasks}
        for fut in concurrent.futures.as_completed(futures):
            ds, name, seed = futures[fut][:3]
            runs[(ds, name, seed)] = fut.result()  # a failed run fails the study
    for ds in budgets:
        res = record["results"][ds] = {}
        for m in methods:
            seed_runs = [runs[(ds, m.name, s)] for s in seeds if (ds, m.name, s) in runs]
            if seed_runs:
                res[m.name] = aggregate(seed_runs, m.reported)
        record["paired"][ds] = comparisons(res)
    record["table"] = render(record)
    print(record["table"])
    print(f"JSON: {write_json(args.out, record)}")
    return record


def _pm(m: dict, key: str) -> str:
    if m.get(key) is None:
        return "-"
    return f"{m[key]:.4f} ± {m[f'{key}_std']:.4f}"


def render(record: dict) -> str:
    """The study's tables as markdown: one row per reported row, then the paired comparisons."""
    header = ["dataset", "model", "dim", "seeds", "MRR", "H@1", "H@10", "rarest-rel MRR", "rarest-rel gap",
              "rarest-ent MRR", "non-zeros", "bytes", "s/epoch (x dense)", "overlap (shared coords; none)"]
    rows = []
    for ds, res in record["results"].items():
        plain = {enc: res.get("dense" if enc == "kge" else "rgcn dense", {}).get("seconds_per_epoch")
                 for enc in ("kge", "rgcn")}
        # the rarest third of relations: each row's MRR there below its encoder's dense teacher's
        rare = {enc: res.get("dense" if enc == "kge" else "rgcn dense", {}).get("teacher", {}).get("rarest_mrr")
                for enc in ("kge", "rgcn")}
        for name, r in res.items():
            base = plain[BY_NAME[name].encoder]
            top = rare[BY_NAME[name].encoder]
            speed = f"{r['seconds_per_epoch']:.3f} ({r['seconds_per_epoch'] / base:.2f}x)" if base else \
                f"{r['seconds_per_epoch']:.3f}"
            for row in BY_NAME[name].reported:
                m = r[row]
                gap = f"{top - m['rarest_mrr']:+.4f}" if top is not None and m.get("rarest_mrr") is not None else "-"
                overlap = (f"{_pm(r, 'overlap_mean_shared')}; {r['overlap_none_share']:.1%}"
                           if row == "student" and "overlap_mean_shared" in r else "-")
                rows.append([ds, f"{name} {row}", r["dim"], r["seeds"], _pm(m, "mrr"), _pm(m, "hits@1"),
                             _pm(m, "hits@10"), _pm(m, "rarest_mrr"), gap, _pm(m, "rarest_entity_mrr"),
                             f"{m['nonzero']:,}", f"{m['bytes']:,}", speed, overlap])
    parts = [markdown(header, rows)]
    prow = []
    for ds, per in record["paired"].items():
        for name, refs in per.items():
            for ref, p in refs.items():
                ratio = "-" if p["ratio"] is None else f"{p['ratio']:.2f}"
                prow.append([ds, name, ref, " ".join(f"{d:+.4f}" for d in p["diffs"]), f"{p['mean']:+.4f}",
                             f"{p['sd']:.4f}", ratio, "*" if p["marked"] else ""])
    if prow:
        parts.append(markdown(["dataset", "student", "vs", "per-seed MRR diff", "mean", "sd", "mean/sd",
                               "> 2 sd"], prow))
    if record.get("skipped"):
        parts.append("\n".join(f"skipped {k}: {v}" for k, v in record["skipped"].items()))
    return "\n\n".join(parts)


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (cells printed with ``str``)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


if __name__ == "__main__":
    main()
