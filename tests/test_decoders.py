"""Per-decoder tests inherited from one case: hand-computed scores, and the
all-entities path agreeing with the broadcasting ``score``; relation scores by brute force."""
import math

import pytest
import torch

from metasd_dgl.model.decoders import ComplEx, DistMult, RotatE, TransE
from metasd_dgl.model.predictor import build_model
from step_helpers import R, small_model as _model


class DecoderCase:
    cls = None
    dim = 3

    def tables(self, n=7, b=5, seed=0):
        dec = self.cls()
        g = torch.Generator().manual_seed(seed)
        ent = torch.randn(n, dec.entity_width(self.dim), generator=g, dtype=torch.float64)
        rel = torch.randn(b, dec.relation_width(self.dim), generator=g, dtype=torch.float64)
        return dec, ent, rel

    def test_score_all_matches_score(self):
        dec, ent, rel = self.tables()
        h = ent[[0, 3, 6, 1, 2]]
        scores = dec.score_all(h, rel, ent)
        assert scores.shape == (5, 7)
        brute = dec.score(h[:, None, :], rel[:, None, :], ent[None, :, :])
        torch.testing.assert_close(scores, brute, rtol=1e-9, atol=1e-6)

    def test_broadcasting(self):
        dec, ent, rel = self.tables()
        s = dec.score(ent[:2, None, None, :], rel[None, :3, None, :], ent[None, None, :4, :])
        assert s.shape == (2, 3, 4)
        assert math.isclose(float(s[1, 2, 3]), float(dec.score(ent[1], rel[2], ent[3])), rel_tol=1e-12)

    def test_hand_value(self):
        dec = self.cls()
        h, r, t, expected = self.hand_case()
        assert float(dec.score(h, r, t)) == pytest.approx(expected, abs=1e-6)

    def test_double_backward(self):
        """The MetaSD virtual step differentiates through the gradient."""
        dec, ent, rel = self.tables()
        ent.requires_grad_(True)
        s = dec.score_all(ent[:3], rel[:3], ent).logsumexp(-1).sum()
        (g,) = torch.autograd.grad(s, ent, create_graph=True)
        (g2,) = torch.autograd.grad(g.pow(2).sum(), ent)
        assert torch.isfinite(g2).all() and g2.abs().sum() > 0


class TestDistMult(DecoderCase):
    cls = DistMult

    def hand_case(self):
        h, r, t = torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 0, -1]), torch.tensor([1.0, 5, 2])
        return h, r, t, 1 * 2 * 1 + 0 + 3 * -1 * 2  # = -4


class TestComplEx(DecoderCase):
    cls = ComplEx

    def hand_case(self):
        # one complex component: h = 1+2i, r = 3-1i, t = 2+1i
        # Re(h r conj(t)) = Re((1+2i)(3-i)(2-i)) = Re((5+5i)(2-i)) = Re(15+5i) = 15
        return torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([2.0, 1.0]), 15.0


class TestTransE(DecoderCase):
    cls = TransE

    def hand_case(self):
        # h + r - t = (3, 4) -> -5
        return torch.tensor([1.0, 1.0]), torch.tensor([2.0, 5.0]), torch.tensor([0.0, 2.0]), -5.0


class TestRotatE(DecoderCase):
    cls = RotatE

    def hand_case(self):
        # phase 0.5 (x pi) rotates 1+0i to 0+1i; distance to t = 0+1i is 0, to 0+0i is 1.
        return torch.tensor([1.0, 0.0]), torch.tensor([0.5]), torch.tensor([0.0, 0.0]), -1.0


@pytest.mark.parametrize("decoder", ["complex", "distmult", "rotate", "transe"])
def test_model_forward_is_score_all(decoder):
    g = torch.Generator().manual_seed(1)
    model = build_model("kge", decoder, 9, 2, 4, init_scale=0.5, generator=g)
    q = torch.tensor([[0, 1, 4], [8, 3, 2]])
    scores = model(q)
    torch.testing.assert_close(scores[torch.arange(2), q[:, 2]], model.score_triples(q), atol=1e-5, rtol=1e-5)
    assert model.encoder.relation.shape[0] == 4  # 2R rows: reciprocal relations


@pytest.mark.parametrize("decoder", ["complex", "distmult"])
def test_relation_scores_by_brute_force(decoder):
    """score_relations(h, t, R)[i, j] = score(h_i, R_j, t_i) for every relation row."""
    model = _model(decoder)
    ent, rel = model.encode(None)
    h, t = ent[[0, 3, 5]], ent[[1, 1, 4]]
    got = model.decoder.score_relations(h, t, rel)
    want = torch.stack([model.decoder.score(h, rel[j].expand_as(h), t) for j in range(2 * R)], 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
