"""DGL-KE interop: scores against dglke's own score functions, export/import round trip."""
import json

import numpy as np
import pytest
import torch

from metasd_dgl.tools.dglke import (
    InteropError, export_dglke, import_dglke, inverse_relations, read_dglke, widths,
)
from metasd_dgl.model.predictor import build_model

dglke_models = pytest.importorskip("dglke.models.general_models")

N, R, HIDDEN = 7, 3, 4
ENTS = [f"e{i}" for i in range(N)]
RELS = [f"r{i}" for i in range(R)]


def _dglke(folder, model, gamma):
    """dglke's InferModel on a save folder (CPU)."""
    m = dglke_models.InferModel("cpu", model, HIDDEN, model in ("ComplEx", "RotatE"), model == "ComplEx", gamma=gamma)
    m.load_emb(str(folder), "toy")
    return m


def _write_dglke(folder, model, gamma, gen, shuffle=False):
    """A DGL-KE save folder with random embeddings; maps optionally in another id order."""
    we, wr = widths(model, HIDDEN)
    ent = torch.randn(N, we, generator=gen).numpy()
    rel = torch.randn(R, wr, generator=gen).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"toy_{model}_entity.npy", ent)
    np.save(folder / f"toy_{model}_relation.npy", rel)
    eorder = torch.randperm(N, generator=gen).tolist() if shuffle else list(range(N))
    (folder / "entities.tsv").write_text("".join(f"{i}\t{ENTS[j]}\n" for i, j in enumerate(eorder)))
    (folder / "relations.tsv").write_text("".join(f"{i}\t{r}\n" for i, r in enumerate(RELS)))
    (folder / "config.json").write_text(json.dumps({"dataset": "toy", "model": model, "emb_size": HIDDEN,
                                                    "gamma": gamma, "double_ent": model in ("ComplEx", "RotatE"),
                                                    "double_rel": model == "ComplEx"}))
    return eorder


def _all_triples():
    h, r, t = torch.meshgrid(torch.arange(N), torch.arange(R), torch.arange(N), indexing="ij")
    return torch.stack([h.reshape(-1), r.reshape(-1), t.reshape(-1)], 1)


@pytest.mark.parametrize("model", ["DistMult", "ComplEx", "TransE_l2", "TransE_l1", "RotatE"])
def test_imported_scores_equal_dglke_score_functions_both_directions(tmp_path, model):
    gamma = 6.0
    gen = torch.Generator().manual_seed(1)
    eorder = _write_dglke(tmp_path, model, gamma, gen, shuffle=True)
    ours = import_dglke(read_dglke(tmp_path), ENTS, RELS, scoring="dglke")
    theirs = _dglke(tmp_path, model, gamma)
    trip = _all_triples()  # our ids
    to_theirs = torch.empty(N, dtype=torch.long)
    to_theirs[torch.tensor(eorder)] = torch.arange(N)  # our id -> DGL-KE id
    ref = theirs.score(to_theirs[trip[:, 0]], trip[:, 1], to_theirs[trip[:, 2]], triplet_wise=True)
    # tail direction: (h, r, t) as is; head direction: asked as (t, r + R, h)
    fwd = ours.score_triples(trip).detach()
    inv = ours.score_triples(torch.stack([trip[:, 2], trip[:, 1] + R, trip[:, 0]], 1)).detach()
    torch.testing.assert_close(fwd, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inv, ref, rtol=1e-5, atol=1e-5)
    # 1-N path: all tails of (h, r, ?) and all heads of (?, r, t)
    queries = trip[:: N, :2]  # every (h, r) once
    all_tails = ours(queries).detach()
    ref_tails = ref.view(N, R, N)[queries[:, 0], queries[:, 1]]
    torch.testing.assert_close(all_tails, ref_tails, rtol=1e-5, atol=1e-5)
    heads = ours(torch.stack([queries[:, 0], queries[:, 1] + R], 1)).detach()  # anchors act as tails
    ref_heads = ref.view(N, R, N)[:, queries[:, 1], queries[:, 0]].t()
    torch.testing.assert_close(heads, ref_heads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("decoder", ["distmult", "complex", "transe", "rotate"])
def test_export_then_import_round_trip(tmp_path, decoder):
    gen = torch.Generator().manual_seed(2)
    model = build_model("kge", decoder, N, R, HIDDEN, init_scale=0.5, generator=gen)
    ent, rel = model.encode()
    paths = export_dglke(ent, rel, decoder, R, tmp_path, "toy", ENTS, RELS)
    dglke_name = {"distmult": "DistMult", "complex": "ComplEx", "transe": "TransE_l2", "rotate": "RotatE"}[decoder]
    assert paths["entity"].name == f"toy_{dglke_name}_entity.npy"
    assert paths["entities"].read_text().splitlines()[2] == "2\te2"
    assert np.load(paths["relation"]).shape[0] == R  # forward rows only; inverses alongside
    back = import_dglke(read_dglke(tmp_path), ENTS, RELS, scoring="native")
    b_ent, b_rel = back.encode()
    torch.testing.assert_close(b_ent, ent, rtol=0, atol=0)
    torch.testing.assert_close(b_rel, rel, rtol=1e-6, atol=1e-7)
    queries = torch.cartesian_prod(torch.arange(N), torch.arange(2 * R))
    torch.testing.assert_close(back(queries), model(queries), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decoder", ["distmult", "complex", "transe", "rotate"])
def test_export_is_read_by_dglke(tmp_path, decoder):
    gen = torch.Generator().manual_seed(3)
    model = build_model("kge", decoder, N, R, HIDDEN, init_scale=0.5, generator=gen)
    ent, rel = model.encode()
    export_dglke(ent, rel, decoder, R, tmp_path, "toy", ENTS, RELS)
    cfg = json.loads((tmp_path / "config.json").read_text())
    theirs = dglke_models.InferModel("cpu", cfg["model"], cfg["emb_size"], cfg["double_ent"], cfg["double_rel"],
                                     gamma=cfg["gamma"])
    theirs.load_emb(str(tmp_path), cfg["dataset"])
    trip = _all_triples()
    ref = theirs.score(trip[:, 0], trip[:, 1], trip[:, 2], triplet_wise=True)
    if decoder == "rotate":  # DGL-KE's RotatE sums complex moduli: compare with the DGL-KE-scored import
        with torch.no_grad():
            d = ent.shape[1] // 2
            q = torch.cat([ent[trip[:, 0], :d] * torch.cos(torch.pi * rel[trip[:, 1]])
                           - ent[trip[:, 0], d:] * torch.sin(torch.pi * rel[trip[:, 1]]),
                           ent[trip[:, 0], :d] * torch.sin(torch.pi * rel[trip[:, 1]])
                           + ent[trip[:, 0], d:] * torch.cos(torch.pi * rel[trip[:, 1]])], 1) - ent[trip[:, 2]]
            mine = -(q[:, :d] ** 2 + q[:, d:] ** 2).sqrt().sum(1)
        via_import = import_dglke(read_dglke(tmp_path), ENTS, RELS, scoring="dglke").score_triples(trip)
        torch.testing.assert_close(via_import.detach(), ref, rtol=1e-5, atol=1e-5)
    else:
        mine = model.score_triples(trip).detach()
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_inverse_relations_rules():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(inverse_relations(r, "DistMult"), r)
    assert torch.equal(inverse_relations(r, "ComplEx"), torch.tensor([[1.0, 2.0, -3.0, -4.0]]))
    assert torch.equal(inverse_relations(r, "TransE_l2"), -r)
    assert torch.equal(inverse_relations(r, "RotatE"), -r)


def test_command_model_choices_match_interop():
    from metasd_dgl.tools.commands import DGLKE_MODELS
    from metasd_dgl.tools.dglke import NATIVE

    assert set(DGLKE_MODELS) == set(NATIVE)


def test_import_errors(tmp_path):
    gen = torch.Generator().manual_seed(4)
    _write_dglke(tmp_path / "a", "DistMult", 0.0, gen)
    emb = read_dglke(tmp_path / "a")
    with pytest.raises(InteropError, match="not in the DGL-KE map.*'nobody'"):
        import_dglke(emb, ENTS[:-1] + ["nobody"], RELS)
    with pytest.raises(InteropError, match="no native decoder"):
        _write_dglke(tmp_path / "b", "TransE_l1", 0.0, gen)
        import_dglke(read_dglke(tmp_path / "b"), ENTS, RELS, scoring="native")
    with pytest.raises(InteropError, match="expected one"):
        read_dglke(tmp_path)
    with pytest.raises(InteropError, match="dataset name"):
        export_dglke(torch.zeros(N, 4), torch.zeros(2 * R, 4), "distmult", R, tmp_path / "c", "a/b", ENTS, RELS)
    (tmp_path / "a" / "config.json").unlink()  # no config: model and dataset from the file name
    assert read_dglke(tmp_path / "a").model_name == "DistMult"


def test_export_and_import_commands(tmp_path):
    from click.testing import CliRunner
    from test_predict import make_run

    from metasd_dgl.tools.commands import export_dglke_command, import_dglke_command
    from metasd_dgl.errors import UserError
    from metasd_dgl.evaluate.ranking import metrics
    from metasd_dgl.evaluate.ranking import rank_split
    from metasd_dgl.stages import load_run

    run = make_run(tmp_path, decoder="complex")
    runner = CliRunner()
    res = runner.invoke(export_dglke_command, [str(run), "--out", str(tmp_path / "kge")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "kge" / "data_ComplEx_entity.npy").is_file()  # dataset name = processed folder's name
    res = runner.invoke(export_dglke_command, [str(run), "--out", str(tmp_path / "kge_s"), "--student",
                                               "--dataset-name", "toy"])
    assert res.exit_code == 0, res.output
    assert (np.load(tmp_path / "kge_s" / "toy_ComplEx_entity.npy") == 0).any()  # pruned weights
    out = tmp_path / "imported.json"
    res = runner.invoke(import_dglke_command, [str(tmp_path / "kge"), "--dataset", str(tmp_path / "data"),
                                               "--scoring", "native", "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())["results"]["dglke"]
    _, data, model, _, _ = load_run(run)
    ranks = rank_split(model, data.test, data.num_relations, data.filter)
    assert got["both"]["mrr"] == pytest.approx(metrics(ranks.both())["mrr"], abs=1e-6)
    res = runner.invoke(import_dglke_command, [str(tmp_path / "kge"), "--dataset", str(tmp_path / "data"),
                                               "--scoring", "dglke"])
    assert res.exit_code == 0 and "ComplEx (dglke scoring)" in res.output  # derived inverse rows
    (tmp_path / "kge" / "entities.tsv").write_text("0\tsomeone\n")  # map no longer fits
    res = runner.invoke(import_dglke_command, [str(tmp_path / "kge"), "--dataset", str(tmp_path / "data")])
    assert isinstance(res.exception, UserError)
