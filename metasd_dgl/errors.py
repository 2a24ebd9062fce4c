"""User-facing errors: the CLI prints their message on one line and exits 2.

Anything else that escapes is an internal error (exit 1).  Raise these with a
message that names the file (and line) or the option at fault; a value that
may be long is shown through ``short`` (a prefix and its length).
"""
from typing import Any


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to its first ``limit`` characters: an error line shows a prefix of a long value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"



class UserError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class DataError(UserError):
    """Malformed or missing dataset files ("path:line: what is wrong")."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupted, unsafe or incompatible."""


class DeviceError(UserError):
    """A device that this installation cannot use (e.g. CUDA without DGL's CUDA build)."""
