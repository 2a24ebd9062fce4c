"""Device selection: ``--device cpu | cuda | cuda:N`` checked against torch, and against DGL
when a graph goes on the device.

The lookup (KGE) encoder trained 1-N never builds a graph, so ``resolve_device``
checks torch only and works without DGL.  The published Linux wheel of DGL
2.1.0 on PyPI is CPU-only; moving a graph to CUDA then fails deep inside a
training step.  ``resolve_device(..., needs_graph=True)`` and ``to_device``
fail early with the command that installs DGL's CUDA build instead (DGL's
wheel index is per torch minor version and CUDA version, e.g. for torch 2.2
and CUDA 12.1:
``pip install dgl==2.1.0+cu121 -f https://data.dgl.ai/wheels/torch-2.2/cu121/repo.html``).
"""
from __future__ import annotations

import re
from typing import Union

import torch

from metasd_dgl.errors import DeviceError, short
from metasd_dgl.graph.dgl_import import DGL_WHEEL_VERSION, DGLUnavailableError, dgl, require_dgl


def dgl_cuda_wheel_hint() -> str:
    """The pip command for DGL's CUDA wheel matching the installed torch (cu121 if unknown)."""
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    torch_minor = f"{match.group(1)}.{match.group(2)}" if match else "2.2"
    cuda = torch.version.cuda or "12.1"
    tag = "cu" + cuda.replace(".", "")
    try:
        version = require_dgl().__version__.split("+")[0]
    except DGLUnavailableError:
        version = DGL_WHEEL_VERSION
    return f"pip install dgl=={version}+{tag} -f https://data.dgl.ai/wheels/torch-{torch_minor}/{tag}/repo.html"


def _dgl_cuda_error(device: torch.device) -> str:
    """'' if DGL can hold a graph on ``device``, else DGL's complaint (CPU-only builds raise here)."""
    try:
        dgl.graph(([0], [0]), num_nodes=1).to(device)
    except (dgl.DGLError, RuntimeError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ""


def check_dgl_device(device: torch.device, name: str = "") -> None:
    """DeviceError (naming DGL's CUDA wheel) if DGL cannot hold a graph on ``device``."""
    if device.type == "cpu":
        return
    complaint = _dgl_cuda_error(device)
    if complaint:
        raise DeviceError(
            f"--device {name or device}: the installed DGL {dgl.__version__} cannot use CUDA ({complaint}); "
            f"it is probably the CPU-only build: install DGL's CUDA wheel: {dgl_cuda_wheel_hint()}"
        )


def resolve_device(name: str, needs_graph: bool = False) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device; DeviceError if torch cannot use it, or, with
    ``needs_graph`` (R-GCN, negative sampling), if DGL cannot (DGLUnavailableError without DGL)."""
    text = str(name).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise DeviceError(f"--device {short(name)}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        why = (
            "this torch build has no CUDA support" if torch.version.cuda is None
            else f"torch (CUDA {torch.version.cuda}) sees no usable GPU or driver"
        )
        raise DeviceError(
            f"--device {name}: {why}; use --device cpu, or on a GPU machine install a CUDA "
            f"build of torch and DGL's CUDA wheel: {dgl_cuda_wheel_hint()}"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    device = torch.device("cuda", index)
    if needs_graph:
        check_dgl_device(device, name)
    return device


def to_device(graph: dgl.DGLGraph, device: Union[str, torch.device]) -> dgl.DGLGraph:
    """Move a DGL graph (structure and features) to ``device``; a no-op if it is there;
    DeviceError naming DGL's CUDA wheel if DGL cannot use ``device``."""
    device = torch.device(device)
    if graph.device == device:
        return graph
    check_dgl_device(device)
    try:
        return graph.to(device)
    except dgl.DGLError as exc:
        raise DeviceError(f"cannot move the graph to {device}: {exc}; {dgl_cuda_wheel_hint()}") from None
