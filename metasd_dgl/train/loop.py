"""The training loop, top to bottom: data -> model -> epochs of steps -> validation -> checkpoints.

``train(cfg, data, run_dir)`` runs one experiment into ``run_dir``:

    config.yaml          resolved configuration
    metrics.jsonl        one JSON line per epoch (losses) and per validation
    train.log            the readable console lines (header, epochs, validations, summary)
    checkpoints/last.pt  everything needed to resume exactly
    checkpoints/best.pt  best validation MRR (student MRR for prune/kd/metasd: early stopping watches it)
    checkpoints/best-teacher.pt  runs with a student: the teacher at its own best validation MRR
    checkpoints/epoch-K.pt  the newest ``keep_checkpoints`` epoch checkpoints

Graphs (R-GCN): evaluation -- validation here and ``evaluate`` on valid/test
-- always passes messages over the whole training graph (``data.graph``).  The
MetaSD quiz triples are hidden only inside training steps (with the batch's
own triples and ``rgcn.edge_dropout``), so model selection and the test score
see the same graph.

Randomness comes from ``torch.Generator``s derived from ``train.seed`` (one
for initialisation and the quiz split, one per epoch for shuffling, quiz
batches, edge dropout, negatives and embedding dropout), so a resumed run
replays the same batches.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from metasd_dgl.store.atomic import atomic_write_text, write_error
from metasd_dgl.store.checkpoint import load_checkpoint, save_checkpoint
from metasd_dgl.config import Config, ConfigError, resume_differences, save_config, to_dict
from metasd_dgl.console import Console, epoch_line, overlap_line, row_names, valid_line
from metasd_dgl.data.fingerprint import dataset_fingerprint
from metasd_dgl.runtime.device import resolve_device, to_device
from metasd_dgl.runtime.distributed import init_from_env, rank_device
from metasd_dgl.errors import CheckpointError, UserError
from metasd_dgl.evaluate.ranking import metrics, rank_split
from metasd_dgl.model.predictor import make_model
from metasd_dgl.runtime.precision import check_precision, exact, training
from metasd_dgl.model.pruning import make_masks, scheduled_rate, sparsity_report, triple_overlap
from metasd_dgl.runtime.process import configure_threads, cpu_budget_spent, tune_malloc
from metasd_dgl.model.student import checkpoint_student
from metasd_dgl.evaluate.unseen import apply_unseen
from metasd_dgl.train.examples import BatchInputs, Examples
from metasd_dgl.train.methods import make_method
from metasd_dgl.train.tracker import make_tracker


#: The teacher's own best checkpoint of a run with a student (``checkpoints/``).
TEACHER_BEST = "best-teacher.pt"


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM: a checkpoint was written; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class NumericalError(UserError):
    """A NaN/Inf loss or weight; the last good checkpoint is kept."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken in total
    batch_in_epoch: int = 0  # batches done in the current (unfinished) epoch
    best_mrr: float = -1.0
    best_epoch: int = -1
    teacher_best_mrr: float = -1.0  # runs with a student: the teacher's own best (best-teacher.pt)
    teacher_best_epoch: int = -1
    bad_validations: int = 0
    validated_epoch: int = 0  # last epoch whose validation is done
    epoch_sums: dict = field(default_factory=dict)  # running loss sums of the current epoch
    cpu_seconds: float = 0.0  # process CPU time spent in training steps (budget.cpu_minutes)
    history: list = field(default_factory=list)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)


class Trainer:
    """Holds the run's objects; ``run()`` is the loop."""

    def __init__(self, cfg: Config, data, run_dir: Path, progress: bool = True,
                 console: Optional[Console] = None, on_validation=None) -> None:
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.on_validation = on_validation  # (epoch, selection MRR) after each validation (e.g. a tuner's pruner)
        self.console = console or Console("normal" if progress else "quiet", self.run_dir / "train.log")
        self.progress = progress and self.console.bars
        tc = cfg.train
        self.device = resolve_device(rank_device(cfg.runtime.device, os.environ))  # cuda -> cuda:LOCAL_RANK
        self.dist = init_from_env(self.device)  # rank 0 of 1 unless launched by torchrun
        if self.cfg.budget.cpu_minutes and self.dist.world > 1:  # each rank would spend its own budget: ranks would part
            raise ConfigError("budget.cpu_minutes is a single-process budget; not supported under torchrun "
                              f"(WORLD_SIZE={self.dist.world})")
        check_precision(tc.precision, self.device)
        init_gen = torch.Generator().manual_seed(tc.seed)
        self.model = make_model(cfg, data.num_entities, data.num_relations, init_gen).to(self.device)
        self.rgcn = cfg.model.encoder == "rgcn"
        needs_graph = self.rgcn or tc.regime == "negative-sampling"
        self.graph = to_device(data.graph, self.device) if needs_graph else None
        self.method = make_method(cfg, self.model)  # owns the optimisers and the student; one step per batch
        # LibKGE's scheduler: the main optimiser's lr drops when the selection MRR stops improving.
        self.scheduler = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.method.optimizer, mode="max", factor=cfg.plateau.factor, patience=cfg.plateau.patience)
            if tc.lr_scheduler == "plateau" else None)
        # The training queries; for MetaSD a seeded random slice of train is the quiz, held out.
        self.examples = Examples.split(data.train, data.num_relations,
                                       cfg.metasd.quiz_fraction if tc.method == "metasd" else None, init_gen)
        self.batch_inputs = BatchInputs(self.examples, self.graph, data.train, self.device, self.rgcn,
                                        tc.regime == "negative-sampling", cfg.rgcn.edge_dropout, cfg.negatives.num,
                                        cfg.rgcn.sample_edges)
        # validation ranks what evaluation ranks (eval.unseen: triples unseen in training kept or dropped)
        self.valid, _ = apply_unseen(data.valid, data.train, data.num_entities, data.num_relations,
                                     cfg.eval.unseen, "valid")
        self.masks: Optional[dict] = None  # this epoch's (the method's student is remasked with them)
        self.state = TrainState()
        self._stop_signal: Optional[int] = None
        self.resumed_from: Optional[Path] = None  # set by ``train(resume=True)``
        self.stop_reason = ""
        self.tracker = None

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "dataset": dataset_fingerprint(self.data),
            "model": self.model.state_dict(),
            **self.method.state_dict(),  # optimisers; an own student's weights (evaluate/export read them)
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "masks": self.masks,
            "state": {k: v for k, v in vars(self.state).items()},
            "rng": {"epoch_generator": self._gen.get_state() if getattr(self, "_gen", None) else None,
                    "torch": torch.get_rng_state()},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        here = dataset_fingerprint(self.data)
        if ckpt.get("dataset") != here:
            raise CheckpointError(f"checkpoint was trained on another dataset (id-map hashes "
                                  f"{ckpt.get('dataset')} vs {here} of {self.data.path})")
        diffs = resume_differences(ckpt.get("config", {}), to_dict(self.cfg))
        if diffs:
            raise CheckpointError("checkpoint has an incompatible config: " + "; ".join(diffs))
        self.model.load_state_dict(ckpt["model"])
        if self.scheduler is not None and ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = TrainState(**ckpt["state"])
        self._set_masks({k: v.to(self.device) for k, v in ckpt["masks"].items()} if ckpt.get("masks") else None)
        self.method.load_state_dict(ckpt)
        self._resume_gen_state = ckpt["rng"]["epoch_generator"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        # The log is rewritten from the checkpoint's history, so lines written
        # after the checkpoint (by the run that was killed) do not repeat.
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.state.history))

    def checkpoint(self, *names: str) -> Path:
        """The training state, built once, saved under each of ``names``; returns the last path."""
        paths = [self.run_dir / "checkpoints" / name for name in names]
        if self.dist.is_main:  # one process writes; the others hold identical weights
            state = self.state_dict()
            for path in paths:
                save_checkpoint(state, path)
        return paths[-1]

    # ------------------------------------------------------------------ loop
    def run(self) -> TrainState:
        tc = self.cfg.train
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
            self.tracker = make_tracker(self.cfg.runtime.tracker, self.run_dir)
            self._say(self._header())
            if self.resumed_from is not None:
                st = self.state
                where = f", batch {st.batch_in_epoch} of epoch {st.epoch + 1}" if st.batch_in_epoch else ""
                self._say(f"resuming from {self.resumed_from}: {st.epoch} epochs done, step {st.step}{where}"
                          + (f", best valid MRR {st.best_mrr:.4f} (epoch {st.best_epoch})" if st.best_epoch > 0 else ""))
        old_handlers = self._install_signal_handlers()
        try:
            while True:
                # Validation first, so a run resumed between an epoch's end and
                # its validation still validates that epoch.
                self._validate_if_due()
                # a budget spent inside an epoch (a run resumed after it) still closes that epoch first
                budget_over = self.budget_spent and not self.state.batch_in_epoch
                if self.early_stopped or budget_over or self.state.epoch >= tc.epochs:
                    break
                self._run_epoch()
                if self._stop_signal is not None:
                    break
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self.tracker is not None:
                self.tracker.close()
        if self._stop_signal is not None:
            self.checkpoint("last.pt")
            self.stop_reason = f"interrupted by signal {self._stop_signal} at step {self.state.step}"
        else:
            self.stop_reason = (
                f"early stop: no better valid MRR in {self.cfg.valid.patience} validations (valid.patience)" if self.early_stopped
                else f"CPU budget spent: {self.state.cpu_seconds / 60:.1f} of budget.cpu_minutes={self.cfg.budget.cpu_minutes:g}"
                if self.budget_spent else f"reached train.epochs={tc.epochs}")
        self._summary()
        if self._stop_signal is not None:
            raise TrainingInterrupted(
                f"interrupted by signal {self._stop_signal} at step {self.state.step}; checkpoint saved. "
                f"Resume with: metasd-dgl train --resume {self.run_dir}", self._stop_signal)
        return self.state

    def _run_epoch(self) -> None:
        tc, pc, st = self.cfg.train, self.cfg.prune, self.state
        if tc.method != "plain" and st.batch_in_epoch == 0:
            # The masks, from the teacher's current magnitudes, every epoch (pruned weights may come back).
            rate = scheduled_rate(pc.rate, st.epoch, pc.gradual_epochs)
            self._set_masks(make_masks(self.model, rate, pc.scope, pc.structure, self.cfg.model.dim))
        gen = _epoch_generator(tc.seed, st.epoch)
        perm = torch.randperm(len(self.examples), generator=gen)
        if st.batch_in_epoch and getattr(self, "_resume_gen_state", None) is not None:
            gen.set_state(self._resume_gen_state)
        self._resume_gen_state = None
        self._gen = gen
        self.method.generator = gen  # embedding dropout draws from the epoch's stream (resumable)
        batches = perm.split(tc.batch_size)
        if self.cfg.budget.batches_per_epoch:  # a CPU budget: a random part of the epoch
            batches = batches[: self.cfg.budget.batches_per_epoch]
        sums = st.epoch_sums
        t0 = time.perf_counter()
        bar = tqdm(total=len(batches), initial=st.batch_in_epoch, desc=f"epoch {st.epoch + 1}/{tc.epochs}",
                   disable=not (self.progress and self.dist.is_main), leave=False, dynamic_ncols=True)
        for i in range(st.batch_in_epoch, len(batches)):
            if self.budget_spent:  # the epoch ends here: it is logged, validated and checkpointed as the last
                break
            cpu0 = time.process_time()
            idx = batches[i][self.dist.rank::self.dist.world]  # this process's share
            batch, graph, negatives = self.batch_inputs(idx, gen)
            quiz = self.examples.quiz_batch(self.cfg.metasd.quiz_batch_size, gen)  # drawn every batch (metasd)
            if quiz is not None and st.step % self.cfg.metasd.meta_every == 0:  # the meta step's batches
                quiz = quiz.to(self.device)
            else:
                quiz = None
            out = self.method.step(batch, graph, quiz, negatives)
            self._check_finite(out)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
            st.step += 1
            st.batch_in_epoch = i + 1
            st.cpu_seconds += time.process_time() - cpu0
            bar.update(1)
            bar.set_postfix(loss=f"{sums.get('loss', math.nan) / st.batch_in_epoch:.4g}")  # running mean
            if self.cfg.checkpoint.every and st.step % self.cfg.checkpoint.every == 0:
                self.checkpoint("last.pt")
            if self._stop_signal is not None:
                bar.close()
                return
        bar.close()
        n = max(1, st.batch_in_epoch)
        record = {"epoch": st.epoch + 1, "step": st.step, "seconds": round(time.perf_counter() - t0, 3),
                  **{k: v / n for k, v in sums.items()}}
        if self.masks:
            record["density"] = sparsity_report(self.masks)["total"]["density"]
        if self.scheduler is not None:
            record["lr"] = self.method.optimizer.param_groups[0]["lr"]
        st.epoch += 1
        st.batch_in_epoch = 0
        st.epoch_sums = {}
        self._log(record, epoch_line(record, tc.epochs))
        self._check_weights()
        self.checkpoint("last.pt", *([f"epoch-{st.epoch}.pt"] if self.cfg.checkpoint.keep else []))
        if self.cfg.checkpoint.keep:
            old = st.epoch - self.cfg.checkpoint.keep
            if self.dist.is_main:
                (self.run_dir / "checkpoints" / f"epoch-{old}.pt").unlink(missing_ok=True)

    def _set_masks(self, masks: Optional[dict]) -> None:
        """This epoch's masks; the method's student follows them (an own student keeps its weights)."""
        self.masks = masks
        if masks:
            self.method.remask(masks, self.cfg.prune.structure)

    @property
    def budget_spent(self) -> bool:
        return cpu_budget_spent(self.cfg.budget.cpu_minutes, self.state.cpu_seconds)

    @property
    def early_stopped(self) -> bool:
        patience = self.cfg.valid.patience
        return bool(patience) and self.state.bad_validations >= patience

    def _validate_if_due(self) -> None:
        """Validate on schedule (once per epoch); keep the best checkpoint."""
        tc, st = self.cfg.train, self.state
        if st.epoch == 0 or st.validated_epoch == st.epoch or st.batch_in_epoch:
            return
        if st.epoch % self.cfg.valid.every != 0 and st.epoch < tc.epochs and not self.budget_spent:
            return
        st.validated_epoch = st.epoch
        result = self.validate()
        key = "student" if "student" in result else "teacher"
        mrr = result[key]["mrr"]
        # While prune.gradual_epochs still raises the prune rate the student is denser than the target:
        # such a validation is no candidate for best.pt, counts for neither patience nor the LR schedule.
        final = st.epoch > self.cfg.prune.gradual_epochs if self.masks is not None else True
        new_best = final and mrr > st.best_mrr
        if self.scheduler is not None and final:
            self.scheduler.step(mrr)
        if new_best:
            st.best_mrr, st.best_epoch, st.bad_validations = mrr, st.epoch, 0
        elif final:
            st.bad_validations += 1
        teacher_best = key == "student" and result["teacher"]["mrr"] > st.teacher_best_mrr
        if teacher_best:  # the teacher kept at its own best epoch, whatever the student's
            st.teacher_best_mrr, st.teacher_best_epoch = result["teacher"]["mrr"], st.epoch
        record = {"epoch": st.epoch, "valid": result}
        overlap = self._overlap() if self.masks is not None else None
        if overlap is not None:  # masked runs: the kept coordinates a training triple shares
            record["overlap"] = overlap
        self._log(record, valid_line(st.epoch, result, st.best_mrr, st.best_epoch, new_best, self.cfg.train.method)
                  + ("  teacher best -> checkpoints/best-teacher.pt" if teacher_best else ""))
        names = [TEACHER_BEST] if teacher_best else []
        self.checkpoint(*names, *(["best.pt"] if new_best else []), "last.pt")
        if self.on_validation is not None:
            self.on_validation(st.epoch, mrr)

    def _overlap(self) -> Optional[dict]:
        """The masks' overlap on the training triples (``pruning.triple_overlap``); None without lookup tables."""
        ent, rel = self.masks.get("encoder.entity"), self.masks.get("encoder.relation")
        if self.rgcn or ent is None or rel is None:
            return None
        out = triple_overlap(ent, rel, self.data.train, self.cfg.model.dim)
        return {"mean_shared": round(out["mean_shared"], 4), "none_share": round(out["none_share"], 4), "dim": out["dim"]}

    @exact()
    def validate(self) -> dict[str, dict[str, float]]:
        variants = {"teacher": None}
        if self.masks:
            variants["student"] = checkpoint_student(self.method.params, self.masks, self.method.student.leaves)
        out = {}
        for name, weights in variants.items():
            ranks = rank_split(self.model, self.valid, self.data.num_relations, self.data.filter,
                               graph=self.graph if self.rgcn else None,  # the whole training graph
                               weights=weights, max_memory_mb=self.cfg.eval.max_memory_mb)
            out[name] = metrics(torch.cat([ranks.tail, ranks.head]))
        return out

    # --------------------------------------------------------------- helpers
    def _log(self, record: dict[str, Any], readable: Optional[str] = None) -> None:
        """A metrics record -> metrics.jsonl, the tracker, and the console (readable or JSON)."""
        self.state.history.append(record)
        if not self.dist.is_main:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk or a file-size limit: named, with the file
            raise write_error(path, exc, note="the checkpoints hold the run; resume it once there is room") from None
        if self.tracker is not None:
            self.tracker.log(record)
        self.console.record(record, readable)

    def _say(self, text: str) -> None:
        if self.dist.is_main:
            self.console.line(text)

    def _header(self) -> str:
        cfg, d = self.cfg, self.data
        method = cfg.train.method
        prune = f", prune rate {cfg.prune.rate} ({cfg.prune.structure})" if method != "plain" else ""
        return (f"dataset {cfg.data.dataset}: {d.num_entities} entities, {d.num_relations} relations, "
                f"train/valid/test {len(d.train)}/{len(d.valid)}/{len(d.test)}\n"
                f"model {cfg.model.encoder}+{cfg.model.decoder} dim {cfg.model.dim}, method {method}{prune}, "
                f"{cfg.train.epochs} epochs"
                + (f" or {cfg.budget.cpu_minutes:g} CPU minutes" if cfg.budget.cpu_minutes else "") + "\n"
                f"device {self.device}, threads {torch.get_num_threads()}"
                + (f", {self.dist.world} processes" if self.dist.world > 1 else "")
                + f"\nrun folder {self.run_dir}")

    def _summary(self) -> None:
        if not self.dist.is_main:
            return
        st, ck = self.state, self.run_dir / "checkpoints"
        key = "student" if self.masks else "teacher"
        unready = (f"no best checkpoint: no validation after the gradual pruning "
                   f"(prune.gradual_epochs = {self.cfg.prune.gradual_epochs} epochs)")
        row = row_names([key], self.cfg.train.method)[key]
        best = (f"best epoch {st.best_epoch} (valid {row} MRR {st.best_mrr:.4f}) -> "
                + (str(ck / 'best.pt') if (ck / 'best.pt').is_file() else "best.pt was moved away; use last.pt")
                if st.best_epoch > 0 else unready if st.validated_epoch and self.masks
                else "no validation yet, no best checkpoint")
        lines = [f"done: {st.epoch} epochs, {st.step} steps; {self.stop_reason}", best]
        if st.teacher_best_epoch > 0:
            name = row_names(["teacher"], self.cfg.train.method)["teacher"]
            lines.append(f"{name}'s own best epoch {st.teacher_best_epoch} (valid {name} MRR "
                         f"{st.teacher_best_mrr:.4f}) -> {ck / TEACHER_BEST}")
        overlap = next((r["overlap"] for r in reversed(st.history) if "overlap" in r), None)
        if overlap is not None:
            lines.append(overlap_line(overlap))
        lines += [f"outputs: {ck / 'last.pt'}, {self.run_dir / 'metrics.jsonl'}, {self.run_dir / 'train.log'}"]
        record = {"epochs": st.epoch, "steps": st.step, "best_epoch": st.best_epoch, "best_mrr": st.best_mrr,
                  "teacher_best_epoch": st.teacher_best_epoch, "teacher_best_mrr": st.teacher_best_mrr,
                  "overlap": overlap, "stop_reason": self.stop_reason, "run_dir": str(self.run_dir)}
        self.console.summary(lines, record)

    def _check_finite(self, out: dict[str, float]) -> None:
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        if bad:
            last = self.run_dir / "checkpoints" / "last.pt"
            kept = f"the last good checkpoint is {last}; " if last.is_file() else "no checkpoint was written; "
            if self.state.step == 0:  # before any update: the starting weights or the scale of the loss
                todo = (f"the first step's loss is already non-finite: lower model.init_scale (now "
                        f"{self.cfg.model.init_scale:g})" if self.cfg.model.encoder == "kge" else
                        "the first step's loss is already non-finite: check the model options (model.*)")
            else:
                todo = f"try a lower train.lr (now {self.cfg.train.lr:g}) or set train.grad_clip"
            raise NumericalError(
                f"non-finite {', '.join(bad)} at step {self.state.step} (epoch {self.state.epoch + 1}); {kept}{todo}")

    def _check_weights(self) -> None:
        for name, p in self.model.named_parameters():
            if not torch.isfinite(p).all():
                raise NumericalError(f"non-finite weights in {name} after epoch {self.state.epoch}; "
                                     "the last good checkpoint is kept")

    def _install_signal_handlers(self) -> dict:
        def handler(signum, frame):  # noqa: ARG001
            self._stop_signal = signum
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
        return old


def train(cfg: Config, data, run_dir: str | Path, resume: bool = False, progress: bool = True,
          console: Optional[Console] = None, on_validation=None) -> Trainer:
    """Train into ``run_dir`` (resuming from its ``checkpoints/last.pt`` when ``resume``).

    ``console``: where the readable lines go (default: stdout and ``RUN_DIR/train.log``,
    quiet when not ``progress``).  The trainer's entry: it applies the run's
    process-wide settings (``runtime.num_threads``; large temporaries kept mapped,
    ``runtime.tune_malloc``) before building anything.
    """
    configure_threads(cfg.runtime.num_threads)
    tune_malloc()
    trainer = Trainer(cfg, data, Path(run_dir), progress, console, on_validation)
    if resume:
        path = Path(run_dir) / "checkpoints" / "last.pt"
        trainer.load_state_dict(load_checkpoint(path, trainer.device))
        trainer.resumed_from = path
    with training(cfg.train.precision):  # tf32: every step's products, forward and backward
        trainer.run()
    return trainer
