"""What training shows a person: a header, one readable line per epoch and per
validation, a final summary; the same lines go to ``RUN_DIR/train.log``.

``Console(mode)``: ``"normal"`` (readable lines and a progress bar),
``"json"`` (the metrics records as JSON lines on stdout, for scripts, and the
summary as one JSON object), ``"quiet"`` (only the summary; errors are the
CLI's).  ``train.log`` receives the readable lines in every mode; lines said before
the run folder exists wait in memory (a command that fails on its input
creates no folder).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from tqdm.auto import tqdm

MODES = ("normal", "json", "quiet")
#: What each row is called, per ``train.method``.  ``metrics.jsonl`` and ``eval/*.json`` key the rows by
#: slot -- "teacher": the dense weights, "student": the masked model -- and every line, table and plot
#: shows the slot's name here: a plain run's only model is "dense"; kd and metasd have a "teacher" and
#: a "student" (the true student: both sides masked); prune-only's model is its "student" (the masked
#: weights, trained alone) and the same weights without the mask are "dense (unmasked)", no teacher.
ROW_NAMES = {
    "plain": {"teacher": "dense"},
    "prune": {"teacher": "dense (unmasked)", "student": "student"},
    "kd": {"teacher": "teacher", "student": "student"},
    "metasd": {"teacher": "teacher", "student": "student"},
}


def row_names(slots, method: Optional[str] = None) -> dict[str, str]:
    """``{slot: name}`` of the rows ``slots`` of a run of ``method`` (``ROW_NAMES``).

    Without ``method`` a lone "teacher" slot is a plain run's dense model (other slots keep their key;
    prune-only's dense row needs the method to be named).  Unknown slots (e.g. "reference student")
    keep their key.
    """
    slots = list(slots)
    if method is None:
        method = "plain" if slots == ["teacher"] else "metasd"
    names = ROW_NAMES.get(method, {})
    return {slot: names.get(slot, slot) for slot in slots}


def named_rows(results: dict[str, Any], method: Optional[str] = None,
               names: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """``results`` keyed by row name instead of slot (``names``, else ``row_names``)."""
    names = names or row_names(results, method)
    return {names.get(slot, slot): value for slot, value in results.items()}


#: Keys of an epoch record that are not losses.
_NOT_LOSSES = ("epoch", "step", "seconds", "density", "lr")


def sig(value: Any, digits: int = 4) -> str:
    """``0.012345678 -> '0.01235'``: a number to ``digits`` significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def _loss_order(name: str) -> tuple[int, str]:
    """loss, cross-entropies, distillation terms, the rest (regularizer, meta)."""
    for rank, prefix in enumerate(("loss", "ce_", "kd_", "kl_")):
        if name == prefix or name.startswith(prefix):
            return rank, name
    return 4, name


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """``epoch 3/60  loss 1.234  ce_teacher 0.9876 ...  kept 0.1  2.31 s/epoch``."""
    names = sorted((k for k, v in record.items() if k not in _NOT_LOSSES and "norm" not in k
                    and isinstance(v, (int, float))), key=_loss_order)
    losses = "  ".join(f"{k} {sig(record[k])}" for k in names)
    kept = f"  kept {sig(record['density'], 3)}" if "density" in record else ""
    lr = f"  lr {sig(record['lr'], 3)}" if "lr" in record else ""
    return f"epoch {record['epoch']}/{epochs}  {losses}{kept}{lr}  {record.get('seconds', 0):.2f} s/epoch"


def valid_line(epoch: int, result: dict[str, dict[str, float]], best_mrr: float, best_epoch: int,
               new_best: bool, method: Optional[str] = None) -> str:
    """``valid epoch 10: teacher MRR 0.7123  student MRR 0.6543  best 0.6543 (epoch 10)  new best -> ...``;
    the rows by their names (``row_names``)."""
    parts = "  ".join(f"{name} MRR {m['mrr']:.4f}" for name, m in named_rows(result, method).items())
    tail = "  new best -> checkpoints/best.pt" if new_best else ""
    return f"valid epoch {epoch}: {parts}  best {best_mrr:.4f} (epoch {best_epoch}){tail}"


def overlap_line(overlap: dict[str, Any]) -> str:
    """``overlap: a training triple's head, relation and tail share 1.52 of 100 kept coordinates on average;
    39.0% share none`` (``pruning.triple_overlap``, the last validation's masks)."""
    return (f"overlap: a training triple's head, relation and tail share {overlap['mean_shared']:.2f} of "
            f"{overlap['dim']} kept coordinates on average; {overlap['none_share']:.1%} share none "
            "(a trilinear score is 0 there)")


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class Console:
    """Prints per ``mode`` and appends every readable line to ``log_path`` (when set)."""

    def __init__(self, mode: str = "normal", log_path: Optional[Path] = None,
                 stream: Optional[TextIO] = None) -> None:
        if mode not in MODES:
            raise ValueError(f"console mode {mode!r} is not one of {', '.join(MODES)}")
        self.mode, self.log_path = mode, Path(log_path) if log_path else None
        self._stream = stream
        self._pending: list[str] = []

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def bars(self) -> bool:
        """Progress bars only in normal mode, and only where someone watches: stderr, where tqdm
        draws them, is a terminal (a log file or CI output gets the per-epoch lines, not bar refreshes)."""
        return self.mode == "normal" and _is_terminal(sys.stderr)

    def _log(self, line: str) -> None:
        if self.log_path is None:
            return
        self._pending.append(line)
        if self.log_path.parent.is_dir():
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.writelines(text + "\n" for text in self._pending)
            self._pending = []

    def _show(self, line: str) -> None:
        tqdm.write(line, file=self.stream)

    def line(self, text: str) -> None:
        """A readable line: shown in normal mode, always logged."""
        self._log(text)
        if self.mode == "normal":
            self._show(text)

    def result(self, text: str) -> None:
        """A result a quiet run still shows (an evaluation table); logged; not in json mode."""
        self._log(text)
        if self.mode != "json":
            self._show(text)

    def record(self, record: dict[str, Any], readable: Optional[str]) -> None:
        """A metrics record: its readable form (normal) or the JSON line (json)."""
        if readable is not None:
            self._log(readable)
        if self.mode == "json":
            self._show(json.dumps(record))
        elif self.mode == "normal" and readable is not None:
            self._show(readable)

    def summary(self, lines: list[str], record: dict[str, Any]) -> None:
        """The end of a run: shown in normal and quiet mode, a JSON object in json mode."""
        for text in lines:
            self._log(text)
        if self.mode == "json":
            self._show(json.dumps({"summary": record}))
        else:
            for text in lines:
                self._show(text)
