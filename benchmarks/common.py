"""Small helpers shared by the benchmark scripts (no project imports here).

* ``default_data_dir()``   -- ``$METASD_DATA_DIR``, else the repository's ``datasets/kg``
* ``peak_rss_mb()``        -- peak resident set size of this process so far (VmHWM)
* ``timed(fn)``            -- ``(seconds, fn())``
* ``in_child(fn, *args)``  -- ``fn(*args)`` in a fresh spawned process (its own peak RSS): ``{"ok": ..., **result}``
* ``machine_info()``       -- platform, CPU count, torch version and threads (for the JSON)
* ``write_json(path, d)``  -- create the folder, write indented JSON with a final newline (atomically)
* ``publish(record, table, out)`` -- print a table, store it in the record, write the JSON
* ``format_table(...)``    -- a plain fixed-width text table
* ``sample_sd(xs)``, ``paired(a, b)`` -- sample sd; per-seed differences with their mean and sd

Scripts import it as ``from common import ...``: ``python benchmarks/X.py``
puts ``benchmarks/`` first on ``sys.path`` (also in spawned worker processes).
"""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import platform
import resource
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def default_data_dir() -> str:
    """Folder holding the ``<name>.tar.gz`` archives: ``$METASD_DATA_DIR`` or ``<repo>/datasets/kg``."""
    return os.environ.get("METASD_DATA_DIR") or str(REPO / "datasets" / "kg")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (the benchmarks' one memory figure:
    call it inside a child started by ``in_child`` to get that run's peak).

    Linux: ``VmHWM`` of ``/proc/self/status`` (the high-water mark of the current
    address space).  Not ``ru_maxrss``: that one survives ``exec`` and so starts at
    the parent's RSS in a process started by ``fork`` + ``exec`` (multiprocessing's
    spawn), which would floor every worker's peak at its parent's.  Elsewhere
    ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 1024


def timed(fn: Callable[[], Any]) -> Tuple[float, Any]:
    """Run ``fn`` once; return ``(wall seconds, its value)``."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _call(fn: Callable[..., dict], args: tuple) -> dict:
    try:
        return {"ok": True, **fn(*args)}
    except Exception as exc:  # noqa: BLE001 - report it and let the other runs go on
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def in_child(fn: Callable[..., dict], *args: Any) -> dict:
    """``{"ok": True, **fn(*args)}`` computed in a fresh spawned process (own peak RSS, own imports and
    malloc settings), or ``{"ok": False, "error": ...}``.  ``fn`` must be a module-level function."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(_call, fn, args).result()
        except concurrent.futures.process.BrokenProcessPool as exc:  # killed (e.g. out of memory)
            return {"ok": False, "error": f"worker died: {exc}"}


def machine_info(device: Any = None) -> dict:
    """What the numbers were measured on (with ``device``, a ``torch.device``: it and a CUDA device's name)."""
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as indented JSON (folder created) through a temporary file and a rename: a killed
    writer leaves the old file or none.  Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def publish(record: dict, table: str, out: str | Path) -> dict:
    """Print ``table``, keep it as ``record["table"]``, write the record to ``out``; returns the record."""
    record["table"] = table
    print(table)
    print(f"JSON: {write_json(out, record)}")
    return record


def sample_sd(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator); 0.0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return (sum((x - mean) ** 2 for x in values) / (n - 1)) ** 0.5


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """Per-seed differences ``a - b`` (same seeds, same order) -> ``{diffs, mean, sd, seeds}``."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired needs as many values on both sides, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    return {"diffs": diffs, "mean": sum(diffs) / len(diffs), "sd": sample_sd(diffs), "seeds": len(diffs)}


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """Fixed-width table: the first ``left`` columns left-aligned, the rest right-aligned.

    Cells are printed with ``str``; format numbers before passing them in.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
