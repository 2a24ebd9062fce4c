"""A NaN/Inf loss stops the run with a clear message and keeps the last good checkpoint."""
import pytest
import torch

from metasd_dgl.train.steps import plain_step

from metasd_dgl.checkpoint import load_checkpoint
from metasd_dgl.cli import main

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_exploding_run_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--quiet", "--dataset", str(REPO / "datasets" / "toy"), "--run-dir", str(run),
                 "--epochs", "5", "--lr", "1e30", "--dim", "4", "--set", "model.init_scale=10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "non-finite" in err and "last good checkpoint" in err and "Traceback" not in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def _one_sgd_step(tmp_path, grad_clip: float, lr: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights before, after) one Trainer step whose optimiser step is plain SGD ``w -= lr * grad``
    (on the gradient as the Stepper left it: clipped when ``train.grad_clip`` > 0)."""
    from metasd_dgl.config import Config
    from metasd_dgl.data.preprocess import load_processed, preprocess
    from metasd_dgl.train.loop import Trainer

    data = load_processed(preprocess(REPO / "datasets" / "toy", tmp_path / f"data{grad_clip}"))
    cfg = Config()
    cfg.model.dim, cfg.model.init_scale, cfg.train.grad_clip, cfg.train.seed = 4, 1.0, grad_clip, 7
    trainer = Trainer(cfg, data, tmp_path / f"run{grad_clip}", progress=False)
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]

    def sgd_step(closure=None):  # noqa: ARG001
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= lr * p.grad

    trainer.optimizer.step = sgd_step
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in params])  # noqa: E731
    before = flat().clone()
    plain_step(trainer.steps, trainer.examples.queries[:8].to(trainer.device))
    return before, flat()


def test_grad_clip_bounds_the_update(tmp_path):
    """One SGD step with clip c moves the weights by exactly lr * c * g / |g| when |g| > c
    (so by lr * c in norm), and by lr * g when |g| <= c."""
    lr = 0.5
    before, free = _one_sgd_step(tmp_path, 0.0, lr)
    g = (before - free) / lr  # the unclipped gradient
    norm = float(torch.linalg.vector_norm(g))
    assert norm > 0.1
    c = norm / 4
    before_c, clipped = _one_sgd_step(tmp_path, c, lr)
    assert torch.equal(before_c, before)  # same initialisation
    step = before - clipped
    assert float(torch.linalg.vector_norm(step)) == pytest.approx(lr * c, rel=1e-5)
    torch.testing.assert_close(step, lr * c * g / norm, rtol=1e-4, atol=1e-7)
    _, loose = _one_sgd_step(tmp_path, 4 * norm, lr)  # clip above |g|: no effect
    torch.testing.assert_close(loose, free, rtol=1e-6, atol=1e-7)
