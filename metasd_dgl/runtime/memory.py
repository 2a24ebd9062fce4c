"""Up-front check of what a run asks for: memory, before anything is allocated (ranges: ``config.RANGES``).

``check_memory(cfg, num_entities, num_relations)`` estimates, from the
config alone, the bytes of the model's parameters, their gradients and
optimiser state, and the largest score matrix of a training step, and
compares the total with the device's free memory (for the CPU the smallest of
``MemAvailable``, what ``ulimit -v`` leaves the process and what the memory
cgroup's limit leaves; ``torch.cuda.mem_get_info`` for a GPU).  A run that cannot fit gets one
line with the estimate and what to change, instead of a failure inside the
allocator after minutes of work.

The estimate is deliberately simple (float32 weights; Adam keeps two
moments, Adagrad one; a student method keeps about three more copies of the
prunable weights: masks, the student and the meta step's virtual student);
it is a lower bound of what the run will hold, so only runs that surely
cannot fit are refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from metasd_dgl.config import ConfigError

FLOAT_BYTES = 4
_OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "adagrad": 1, "sgd": 0}
_STUDENT_METHODS = ("prune", "kd", "metasd")


class ResourceError(ConfigError):
    """The run needs more memory than the device has, estimated from the config."""


def human(nbytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # pragma: no cover


@dataclass
class Estimate:
    parameters: int  # number of weights
    weights: int  # bytes of the weights
    training_state: int  # gradients, optimiser state, student copies
    scores: int  # the largest score matrix of a step (and its gradient)

    @property
    def total(self) -> int:
        return self.weights + self.training_state + self.scores

    def line(self) -> str:
        return (f"about {human(self.total)} ({self.parameters:,} weights: {human(self.weights)}, "
                f"gradients and optimiser state {human(self.training_state)}, "
                f"score matrix {human(self.scores)})")


def estimate(cfg, num_entities: int, num_relations: int) -> Estimate:
    """Bytes a training run of ``cfg`` on N entities and R relations holds at least."""
    from metasd_dgl.model.decoders import DECODERS

    m, t = cfg.model, cfg.train
    dim = int(m.dim)
    decoder = DECODERS[m.decoder]()
    we, wr = decoder.entity_width(dim), decoder.relation_width(dim)
    n, two_r = int(num_entities), 2 * int(num_relations)
    params = n * we + two_r * wr
    if m.encoder == "rgcn":
        layers, bases = int(cfg.rgcn.num_layers), int(cfg.rgcn.num_bases)
        if cfg.rgcn.decomposition == "bdd":  # per relation: bases blocks of (w/B)^2
            params += layers * (two_r * bases * (we // max(bases, 1)) ** 2 + we * we + we)
        else:  # bases (B, w, w), coefficients (2R, B), the self-loop and the bias
            params += layers * (bases * we * we + two_r * bases + we * we + we)
    weights = params * FLOAT_BYTES
    method = t.method
    states = _OPTIMIZER_STATES.get(str(t.optimizer).lower(), 2)
    copies = 1 + states + (3 if method in _STUDENT_METHODS else 0)  # gradients, moments, student copies
    batch = int(t.batch_size)
    if t.regime == "negative-sampling":
        columns = int(cfg.negatives.num) + 1
    else:
        columns = n
    # scores and their gradient, for the teacher and, with a student, the student
    matrices = 2 * (2 if method in _STUDENT_METHODS else 1)
    scores = batch * columns * FLOAT_BYTES * matrices
    return Estimate(params, weights, weights * copies, scores)


def available_bytes(device: str) -> Optional[tuple[int, str]]:
    """(free bytes, description) of ``device`` ('cpu', 'cuda', 'cuda:N'), or None when unknown.  On the CPU
    the smallest of the machine's available memory, what ``ulimit -v`` (RLIMIT_AS) leaves this process, and
    what its memory cgroup's limit leaves."""
    text = str(device).strip().lower()
    if text.startswith("cuda"):
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            index = int(text.split(":", 1)[1]) if ":" in text else torch.cuda.current_device()
            free, _total = torch.cuda.mem_get_info(index)
            return int(free), f"cuda:{index} has {human(free)} free"
        except Exception:  # noqa: BLE001 - no usable GPU: the device check says so elsewhere
            return None
    limits = [x for x in (_machine_available(), _address_space_left(), _cgroup_left()) if x is not None]
    return min(limits) if limits else None


#: (limit file, usage file) of the cgroup this process runs in: v2, then v1.
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _machine_available() -> Optional[tuple[int, str]]:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    return free, f"this machine has {human(free)} of memory available"
    except (OSError, ValueError, IndexError):
        pass
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(free), f"this machine has {human(free)} of memory available"
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_left() -> Optional[tuple[int, str]]:
    """What ``ulimit -v`` (RLIMIT_AS) leaves this process: the limit less its address space now."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):
        return None
    if limit == resource.RLIM_INFINITY or limit <= 0:
        return None
    used = 0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            used = next((int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmSize:")), 0)
    except (OSError, ValueError, IndexError):
        pass
    left = max(limit - used, 0)
    return left, f"the address-space limit (ulimit -v, {human(limit)}) leaves this process {human(left)}"


def _cgroup_left() -> Optional[tuple[int, str]]:
    """What the memory cgroup's limit (a container's) leaves: memory.max less memory.current."""
    for limit_file, usage_file in CGROUP_FILES:
        try:
            with open(limit_file, encoding="ascii") as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if not text or text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            return None
        if limit >= 1 << 60:  # cgroup v1's "no limit"
            return None
        try:
            with open(usage_file, encoding="ascii") as fh:
                used = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            used = 0
        left = max(limit - used, 0)
        return left, f"the memory cgroup's limit ({human(limit)}) leaves {human(left)}"
    return None


def check_memory(cfg, num_entities: int, num_relations: int, echo: Optional[Callable[[str], None]] = None,
                 free: Optional[tuple[int, str]] = None) -> Estimate:
    """ResourceError when the estimate exceeds the device's free memory; ``echo`` hears a note
    when it takes more than half of it.  ``free`` overrides the measured (bytes, description)."""
    est = estimate(cfg, num_entities, num_relations)
    device = cfg.runtime.device
    free = free if free is not None else available_bytes(device)
    if free is None:
        return est
    have, where = free
    if est.total > have:
        dim, batch = cfg.model.dim, cfg.train.batch_size
        if est.scores > est.weights + est.training_state:
            todo = f"lower train.batch_size (now {batch}; the score matrix is batch x {num_entities} entities)"
        else:
            todo = f"lower model.dim (now {dim})"
        raise ResourceError(f"model.dim={dim}, train.batch_size={batch} on {num_entities} entities: training needs "
                            f"{est.line()}, but {where}; {todo}, or use a device with more memory", "model.dim")
    if echo is not None and est.total > have // 2:
        echo(f"note: this run needs {est.line()}; {where}")
    return est
