"""The training loop's step on one model, for the tests: the run's method (``make_method``); tiny
models, batches and students to step; and the autograd references the steps are checked against."""
from __future__ import annotations

import dgl
import pytest
import torch
from torch.func import functional_call

from metasd_dgl.config import Config, apply_overrides
from metasd_dgl.graph.sampling import dst_norm
from metasd_dgl.model.predictor import build_model, call
from metasd_dgl.model.student import MaskedStudent
from metasd_dgl.train.closed_form import CLOSED_FORM
from metasd_dgl.train.losses import cross_entropy_1n, kd_loss, log_probs, regularizer
from metasd_dgl.train.methods import make_method

#: Entities and relations of the tiny models.
N, R = 6, 2


class Stepper:
    """``cfg.train.method``'s step on ``model``: SGD at ``sgd_lr`` / ``meta_lr`` (0: the configured
    optimisers), losses from ``backend`` (``losses.AUTOGRAD`` is the reference)."""

    def __init__(self, model, cfg: Config, sgd_lr: float = 0.0, meta_lr: float = 1e-2, backend=CLOSED_FORM) -> None:
        self.method = make_method(cfg, model, backend)
        if sgd_lr:  # plain SGD steps, easy to write out in a reference (the own student's too)
            self.method.optimizer_name, self.method.lr = "sgd", sgd_lr
            self.method.optimizer = torch.optim.SGD(self.method.leaves, lr=sgd_lr)
            if hasattr(self.method, "meta_optimizer"):
                self.method.meta_optimizer = torch.optim.SGD(self.method.leaves, lr=meta_lr)
        self.spec, self.reg_kind, self.losses = self.method.spec, self.method.reg_kind, self.method.losses

    def step(self, batch, student=None, quiz=None, graph=None, do_meta: bool = True, negatives=None) -> dict:
        """One step of the method on ``batch`` with ``student`` (kept while it is the same object)."""
        if student is not None and student is not self.method.student:
            self.method.set_student(student)
        return self.method.step(batch, graph, quiz if do_meta else None, negatives)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP synchronisation costs more than it saves (and more under load).

    Autouse in the test modules that import it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------- models, batches, students
def queries(n: int, gen: torch.Generator, num_entities: int = N, num_relations: int = R) -> torch.Tensor:
    return torch.stack([torch.randint(0, num_entities, (n,), generator=gen),
                        torch.randint(0, 2 * num_relations, (n,), generator=gen),
                        torch.randint(0, num_entities, (n,), generator=gen)], 1)


def seeded_queries(n, seed):
    """``n`` random (h, r, t) queries of the tiny graph, from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, N, (n,), generator=gen), torch.randint(0, 2 * R, (n,), generator=gen),
                        torch.randint(0, N, (n,), generator=gen)], 1)


def toy_graph(seed: int = 0) -> dgl.DGLGraph:
    gen = torch.Generator().manual_seed(seed)
    h, r, t = queries(10, gen).unbind(1)
    r = r % R
    g = dgl.graph((torch.cat([h, t]), torch.cat([t, h])), num_nodes=N)
    g.edata["etype"] = torch.cat([r, r + R])
    g.edata["norm"] = dst_norm(g)
    return g


def tiny(encoder: str = "kge", decoder: str = "complex", seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    opts = dict(num_layers=1, num_bases=2, dropout=0.0)
    model = build_model(encoder, decoder, N, R, 2, init_scale=0.5, generator=gen, rgcn_options=opts)
    return model.to(dtype)


def small_model(decoder="complex"):
    """A float64 lookup-table model of the tiny graph, dimension 3."""
    gen = torch.Generator().manual_seed(0)
    return build_model("kge", decoder, N, R, 3, init_scale=0.5, generator=gen).to(torch.float64)


#: The step tests write out the paper's distillation by hand: mutual, unscaled, the shared student.
PAPER_KD = {"student": "shared", "one_way_kd": False, "kd_t2_scale": False}


def config(method: str, train: dict | None = None, **metasd) -> Config:
    return apply_overrides(Config(), {"train": {"method": method, "reg_weight": 0.05, **(train or {})},
                                      "metasd": {**PAPER_KD, **metasd}})


def stepper(model, method: str, sgd_lr: float = 0.0, meta_lr: float = 1e-2, backend=CLOSED_FORM, **mc) -> Stepper:
    return Stepper(model, config(method, **mc), sgd_lr, meta_lr, backend)


def overrides_stepper(model, overrides):
    """The step of ``Config()`` with the paper's distillation, ``overrides`` (dotted names) and reg_weight
    0.05, by SGD at lr 0.3."""
    cfg = apply_overrides(Config(), {"train.reg_weight": 0.05, **{f"metasd.{k}": v for k, v in PAPER_KD.items()},
                                     **overrides})
    return Stepper(model, cfg, sgd_lr=0.3)


def masked(model, masks) -> MaskedStudent:
    return MaskedStudent(masks, dict(model.named_parameters()))


# ------------------------------------------------------------- references
def apply_masks(weights, masks):
    """The reference student weights, written out: ``W * M`` on the masked names."""
    return {n: (w * masks[n] if n in masks else w) for n, w in weights.items()}


def kd_at_t3(learner, source, fw, rw):
    """The KD term at temperature 3, scale 1: weights ``fw``, ``rw`` of KL(source || learner), KL(learner || source)."""
    return kd_loss(log_probs(learner, 3.0), log_probs(source, 3.0), fw, rw, 1.0)


def scores_rows(model, weights, q, graph):
    own = {n[len("encoder."):]: w for n, w in weights.items() if n.startswith("encoder.")}
    ent, rel = functional_call(model.encoder, own, (graph,))
    scores = call(model, weights, q[:, :2], graph=graph)
    return scores, (ent[q[:, 0]], rel[q[:, 1]], ent[q[:, 2]])


def ref_losses(model, st: Stepper, W, masks, batch, graph, detach_other=True):
    """Reference (autograd, losses.py) student and teacher losses of the real step."""
    spec, y = st.spec.kd, batch[:, 2]
    S, rs = scores_rows(model, apply_masks(W, masks), batch, graph)
    T, rt = scores_rows(model, W, batch, graph)
    reg = lambda rows: regularizer(st.reg_kind, *rows, 0.05, model.decoder.name)  # noqa: E731
    kd = lambda a, b: kd_loss(log_probs(a, spec.temperature), log_probs(b, spec.temperature),  # noqa: E731
                              spec.forward_weight, spec.reverse_weight, spec.scale)
    other = (lambda x: x.detach()) if detach_other else (lambda x: x)
    student = cross_entropy_1n(S, y) + reg(rs) + kd(S, other(T))
    teacher = cross_entropy_1n(T, y) + reg(rt) + kd(T, other(S))
    return student, teacher


def ref_quiz_loss(model, st: Stepper, W, W0, masks, batch, quiz, graph, path):
    """CE(S' on quiz) with S' built by autograd (create_graph) from losses.py."""
    names = [n for n in model.prunable_names() if n in masks]
    if path == "full":
        student = apply_masks(W, masks)
    else:
        student = {n: w.detach() for n, w in apply_masks(W0, masks).items()}
        for n in names:
            student[n].requires_grad_(True)
    S, rs = scores_rows(model, student, batch, graph)
    T, _ = scores_rows(model, W, batch, graph)
    spec = st.spec.kd
    loss = cross_entropy_1n(S, batch[:, 2]) + regularizer(st.reg_kind, *rs, 0.05, model.decoder.name) + kd_loss(
        log_probs(S, spec.temperature), log_probs(T, spec.temperature),
        spec.forward_weight, spec.reverse_weight, spec.scale)
    grads = torch.autograd.grad(loss, [student[n] for n in names], create_graph=True)
    virtual = dict(student)
    for n, g in zip(names, grads):
        virtual[n] = student[n] - st.spec.virtual_lr * g * masks[n]
    Q, _ = scores_rows(model, virtual, quiz, graph)
    return cross_entropy_1n(Q, quiz[:, 2])
