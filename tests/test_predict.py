"""Named top-k predictions on a hand-built model whose scores are known; the predict command."""
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from metasd_dgl.data.filters import FilterIndex
from metasd_dgl.model.decoders import DistMult
from metasd_dgl.errors import DataError, UserError
from metasd_dgl.tools.predict import (
    QueryError, UnknownNameError, known_answers, predict, predict_ids, read_queries,
)

NAMES = ["a", "b", "c", "d", "e"]
RELS = ["likes", "knows"]


class FakeData:
    """What predict reads from KGData: names and ``filter``, the index of the known triples."""

    entity_names, relation_names, num_relations = NAMES, RELS, 2
    all_triples = torch.tensor([[0, 0, 4], [0, 0, 2], [1, 1, 0], [3, 0, 0]])

    @property
    def filter(self):
        return FilterIndex.from_triples(self.all_triples, len(NAMES), 2)


def tables():
    """DistMult with width 1: score(h, r, t) = x_h * w_r * x_t, x = 1..5.

    likes: w = 1, knows: w = 2; inverse rows: likes^-1 = -1 (reverses the order), knows^-1 = 0.5.
    """
    ent = torch.arange(1.0, 6.0).unsqueeze(1)  # (5, 1)
    rel = torch.tensor([[1.0], [2.0], [-1.0], [0.5]])  # (2R, 1)
    return ent, rel


def test_tail_query_ranking_and_filtering():
    (unf,) = predict(tables(), DistMult(), FakeData(), [("a", "likes", None)], k=3, filtered=False)
    assert unf.names == ["e", "d", "c"] and unf.scores == [5.0, 4.0, 3.0] and unf.removed == 0
    (fil,) = predict(tables(), DistMult(), FakeData(), [("a", "likes", "?")], k=3, filtered=True)
    # known answers of (a, likes, ?) are e and c
    assert fil.names == ["d", "b", "a"] and fil.scores == [4.0, 2.0, 1.0] and fil.removed == 2
    assert fil.target == "tail" and fil.entity_ids == [3, 1, 0]


def test_head_query_uses_the_inverse_row_and_inverse_filter():
    # (?, likes, a) is (a, likes^-1, ?): score = 1 * -1 * x_e, best is the smallest x
    (unf,) = predict(tables(), DistMult(), FakeData(), [(None, "likes", "a")], k=5, filtered=False)
    assert unf.names == ["a", "b", "c", "d", "e"] and unf.scores == [-1.0, -2.0, -3.0, -4.0, -5.0]
    (fil,) = predict(tables(), DistMult(), FakeData(), [("?", "likes", "a")], k=5, filtered=True)
    assert fil.names == ["a", "b", "c", "e"] and fil.removed == 1  # (d, likes, a) is known
    assert fil.target == "head"


def test_query_chunks_give_the_same_answers(monkeypatch):
    import metasd_dgl.tools.predict as mod

    asked = [("a", "likes", None), (None, "likes", "a"), ("c", "knows", None), (None, "knows", "b")]
    whole = predict(tables(), DistMult(), FakeData(), asked, k=4)
    monkeypatch.setattr(mod, "_MAX_CELLS", 5)  # one query per chunk
    chunked = predict(tables(), DistMult(), FakeData(), asked, k=4)
    assert [(p.names, p.scores, p.removed) for p in chunked] == [(p.names, p.scores, p.removed) for p in whole]


def test_fewer_candidates_than_k_after_filtering():
    data = FakeData()
    data.all_triples = torch.tensor([[0, 0, e] for e in range(4)])
    (p,) = predict(tables(), DistMult(), data, [("a", "likes", None)], k=3, filtered=True)
    assert p.names == ["e"] and p.removed == 4


def test_known_answers_uses_a_filter_index_when_present():
    class Index:
        def known(self, heads, rels):
            return torch.tensor([0, 0]), torch.tensor([4, 3])

    rows, ents = known_answers(Index(), torch.tensor([0]), torch.tensor([0]))
    ids, scores, removed = predict_ids(*tables(), DistMult(), torch.tensor([0]), torch.tensor([0]), 2, (rows, ents))
    assert ids.tolist() == [[2, 1]] and removed.tolist() == [2]


def test_known_answers_of_a_filter_index_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    triples = torch.stack([torch.randint(0, 6, (40,), generator=gen), torch.randint(0, 3, (40,), generator=gen),
                           torch.randint(0, 6, (40,), generator=gen)], 1)
    anchors, rels = torch.cartesian_prod(torch.arange(6), torch.arange(6)).unbind(1)
    rows, ents = known_answers(FilterIndex.from_triples(triples, 6, 3), anchors, rels)
    got = {(int(r), int(e)) for r, e in zip(rows, ents)}
    want = set()
    for h, r, t in triples.tolist():
        for i, (a, q) in enumerate(zip(anchors.tolist(), rels.tolist())):
            if (a, q) == (h, r):
                want.add((i, t))
            if (a, q) == (t, r + 3):
                want.add((i, h))
    assert got == want


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownNameError, match=r"unknown relation 'likse'; did you mean 'likes'"):
        predict(tables(), DistMult(), FakeData(), [("a", "likse", None)])
    with pytest.raises(UnknownNameError, match=r"unknown entity 'A'; did you mean 'a'"):
        predict(tables(), DistMult(), FakeData(), [("A", "likes", None)])
    with pytest.raises(QueryError, match="exactly one"):
        predict(tables(), DistMult(), FakeData(), [("a", "likes", "b")])


def test_query_file(tmp_path):
    f = tmp_path / "q.tsv"
    f.write_text("# comment\na\tlikes\t?\n\n?\tknows\tb\n")
    assert read_queries(f) == [("a", "likes", None), (None, "knows", "b")]
    f.write_text("a\tlikes\t?\na likes ?\n")
    with pytest.raises(QueryError, match=r"q.tsv:2:"):
        read_queries(f)


# ---------------------------------------------------------------- command line
def make_run(tmp_path: Path, decoder: str = "distmult", method: str = "prune") -> Path:
    """A tiny run folder on datasets/toy: config.yaml + checkpoints/best.pt (Trainer.state_dict layout)."""
    from metasd_dgl.store.checkpoint import save_checkpoint
    from metasd_dgl.config import Config, save_config, to_dict
    from metasd_dgl.data.preprocess import load_processed, preprocess
    from metasd_dgl.model.predictor import build_model
    from metasd_dgl.model.pruning import compute_masks, prunable_params
    from metasd_dgl.data.fingerprint import dataset_fingerprint

    toy = Path(__file__).resolve().parents[1] / "datasets" / "toy"
    processed = preprocess(toy, tmp_path / "data")
    data = load_processed(processed)
    cfg = Config()
    cfg.run_dir, cfg.data.processed_dir = str(tmp_path / "run"), str(processed)
    cfg.model.decoder, cfg.model.dim, cfg.train.method = decoder, 4, method
    model = build_model("kge", decoder, data.num_entities, data.num_relations, 4, 0.5, torch.Generator().manual_seed(0))
    masks = compute_masks(prunable_params(model), 0.5, "global") if method != "plain" else None
    run = Path(cfg.run_dir)
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    save_checkpoint({"config": to_dict(cfg), "dataset": dataset_fingerprint(data), "model": model.state_dict(),
                     "masks": masks, "state": {"epoch": 2, "step": 2}}, run / "checkpoints" / "best.pt")
    return run


def test_predict_command(tmp_path):
    from metasd_dgl.tools.commands import predict_command

    run = make_run(tmp_path)
    runner = CliRunner()
    res = runner.invoke(predict_command, [str(run), "--head", "alice", "--relation", "likes", "--k", "3"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("[teacher] (alice, likes, ?)  top 3, filtered") and len(lines) == 4
    res = runner.invoke(predict_command, [str(run), "--tail", "bob", "--relation", "likes", "--student",
                                          "--unfiltered"])
    assert res.exit_code == 0 and res.output.startswith("[student] (?, likes, bob)  top 10, unfiltered")
    q = tmp_path / "q.tsv"
    q.write_text("alice\tknows\t?\n?\tlikes\tcarol\n")
    res = runner.invoke(predict_command, [str(run), "--queries", str(q), "--k", "2"])
    assert res.exit_code == 0 and res.output.count("top 2") == 2
    res = runner.invoke(predict_command, [str(run), "--head", "alcie", "--relation", "likes"])
    assert isinstance(res.exception, UserError) and "did you mean 'alice'" in str(res.exception)


def test_tampered_filter_stops_with_one_line_error(tmp_path, capsys):
    """A filter.npz whose sha256 differs from the manifest is an error, never a silent rebuild."""
    from metasd_dgl.cli import main
    from metasd_dgl.tools.commands import predict_command
    from metasd_dgl.data.preprocess import load_processed

    run = make_run(tmp_path)
    npz = tmp_path / "data" / "filter.npz"
    npz.write_bytes(npz.read_bytes() + b"\0")
    with pytest.raises(DataError, match=r"filter.npz: sha256 differs from manifest.json"):
        predict(tables(), DistMult(), load_processed(tmp_path / "data"), [("alice", "likes", None)])
    res = CliRunner().invoke(predict_command, [str(run), "--head", "alice", "--relation", "likes"])
    assert res.exit_code != 0 and isinstance(res.exception, DataError)
    capsys.readouterr()
    assert main(["predict", str(run), "--head", "alice", "--relation", "likes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "filter.npz: sha256 differs" in err


def test_query_names_follow_the_dataset_policy(tmp_path):
    """--head/--tail and --queries strip surrounding whitespace alike; a line ends at a newline only."""
    from metasd_dgl.tools.predict import parse_query, read_queries

    assert parse_query(" alice ", "likes ", None) == ("alice", "likes", None)
    assert parse_query(None, "likes", "\u00a0bob") == (None, "likes", "bob")
    path = tmp_path / "q.tsv"
    path.write_text(" alice \tlikes\t?\r\n?\tlikes\tbo\u2028b\n# note\n\n", encoding="utf-8")
    assert read_queries(path) == [("alice", "likes", None), (None, "likes", "bo\u2028b")]
