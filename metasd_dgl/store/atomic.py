"""Checked, atomic writes: a full disk, a file-size limit or a read-only folder is named, never half-written.

Every output file is written to a temporary sibling (``.NAME.PID.XXXX.tmp``),
flushed and fsynced, then renamed over the target: the previous good file
stays until the new one is complete, and a reader never sees half a file.
When the write fails, the temporary file is removed and the failure becomes
one ``WriteError`` line naming the file and the cause::

    run/checkpoints/last.pt: could not write: no space left on device (errno ENOSPC); free space on that
    file system or write elsewhere; the previous file is kept

Writers that report a failed write without its errno -- torch's zip writer
(``RuntimeError: [enforce fail at inline_container.cc]``), DGL's
``save_graphs`` (``DGLError``), safetensors' Rust writer -- are diagnosed by
trying to extend the temporary file from Python, which raises the real
``OSError`` (ENOSPC, EFBIG, ...).

Temporaries of killed processes (their pid is in the name, or their folder
is locked by the caller) are removed by ``remove_stale`` at the next start.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from metasd_dgl.errors import UserError

#: errno -> (cause, what to do)
CAUSES = {
    errno.ENOSPC: ("no space left on device", "free space on that file system or write elsewhere"),
    errno.EFBIG: ("file too large for the file-size limit (ulimit -f) or the file system",
                  "raise the limit (ulimit -f unlimited) or write to another file system"),
    errno.EROFS: ("read-only file system", "write to a writable folder"),
    errno.EACCES: ("permission denied", "check the folder's permissions or choose another folder"),
    errno.EPERM: ("operation not permitted", "check the folder's permissions or choose another folder"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write elsewhere"),
}
#: errnos that mean "the environment refused the write" (not a bug)
WRITE_ERRNOS = frozenset(CAUSES)


class WriteError(UserError):
    """A file could not be written (full disk, file-size limit, read-only or forbidden folder)."""

    def __init__(self, message: str, errno_: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno_


def describe(exc: OSError) -> str:
    """``no space left on device (errno ENOSPC); free space ...`` for an OSError."""
    code = getattr(exc, "errno", None)
    if code in CAUSES:
        cause, todo = CAUSES[code]
        return f"{cause} (errno {errno.errorcode[code]}); {todo}"
    text = (exc.strerror or str(exc) or type(exc).__name__)
    return text[:1].lower() + text[1:]


def write_error(path: str | Path, exc: OSError, doing: str = "could not write", kept: bool = False,
                note: str = "") -> WriteError:
    """The one-line WriteError for ``exc`` while writing ``path`` (``note`` ends it; ``kept`` adds
    that the previous file is kept)."""
    tail = f"; {note}" if note else "; the previous file is kept" if kept else ""
    return WriteError(f"{path}: {doing}: {describe(exc)}{tail}", getattr(exc, "errno", None))


def _os_error_in(exc: BaseException) -> Optional[OSError]:
    """An OSError carrying an errno in ``exc`` or its cause/context chain."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return None


def probe(path: str | Path, size: int = 1 << 20) -> Optional[OSError]:
    """Try to append ``size`` zero bytes to ``path`` (a temporary file about to be removed) and fsync;
    the OSError the file system raises, or None when it has room."""
    try:
        with open(path, "ab") as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc
    return None


def diagnose(path: str | Path, exc: BaseException) -> Optional[OSError]:
    """The OSError behind a failed write of ``path`` (the temporary file), or None if it is no I/O failure."""
    found = _os_error_in(exc)
    if found is not None:
        return found
    if Path(path).exists():
        probed = probe(path)
        if probed is not None:
            return probed
    return None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> str:
    """Prefix of ``path``'s temporaries: ``.NAME.PID.`` (``remove_stale`` reads the pid back)."""
    return f".{path.name}.{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def checked_write(path: str | Path, what: str = "could not write") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    Any failure removes the temporary file; an I/O failure (found in the
    exception, or by ``diagnose`` for writers that hide it) becomes a
    WriteError naming ``path``; anything else is re-raised unchanged.
    """
    path = Path(path)
    kept = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=temp_name(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes it 0600; the file gets the usual mode
    except OSError as exc:
        raise write_error(path, exc, what, kept) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        cause = diagnose(tmp, exc) if not isinstance(exc, (KeyboardInterrupt, SystemExit, UserError)) else None
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if cause is not None:
            raise write_error(path, cause, what, kept) from None
        raise
    _fsync_dir(path.parent)


class RecordingFile:
    """A binary file wrapper that remembers the OSError of a failed write (torch's zip writer swallows it)."""

    def __init__(self, fh) -> None:
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def write_with(path: str | Path, writer: Callable[[Any], None], what: str = "could not write") -> Path:
    """Atomically write ``path`` by calling ``writer(binary file)``; failures as in ``checked_write``."""
    path = Path(path)
    with checked_write(path, what) as tmp:
        with open(tmp, "wb") as raw:
            fh = RecordingFile(raw)
            try:
                writer(fh)
                raw.flush()
            except Exception as exc:
                if fh.error is not None and exc is not fh.error:
                    raise fh.error from exc
                raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return write_with(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, record: Any, indent: Optional[int] = 2) -> Path:
    return atomic_write_text(path, json.dumps(record, indent=indent) + "\n")


# ------------------------------------------------------------------ folders
_PID_IN_NAME = re.compile(r"\.(\d+)\.[^./]*\.tmp$|-(\d+)-[^./]*$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0; a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _pid_of(name: str) -> Optional[int]:
    match = _PID_IN_NAME.search(name)
    if not match:
        return None
    return int(match.group(1) or match.group(2))


def remove_stale(folder: str | Path, pattern: str = ".*.tmp", locked: bool = False) -> list[Path]:
    """Remove temporaries matching ``pattern`` in ``folder`` left by processes that are gone.

    A temporary is stale when the pid in its name is not running, or always
    when ``locked`` (the caller holds the folder's lock, so no live writer
    can own it).  Returns what was removed.
    """

    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(pattern):
        pid = _pid_of(path.name)
        if pid == os.getpid() and not locked:
            continue
        if not locked and (pid is None or pid_alive(pid)):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def staging_folder(final: str | Path) -> Path:
    """A new empty sibling ``.NAME.tmp-PID-XXXX`` of ``final`` to write a whole folder into."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    except OSError as exc:
        raise write_error(final, exc, "could not create a temporary folder") from None
    return tmp


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` into place as ``final``; an older ``final`` is moved aside first and removed after.

    A kill between the two renames leaves ``.NAME.old-PID-XXXX`` and no ``final``;
    ``recover_folder`` puts the old one back at the next start.
    """
    try:
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:
        raise write_error(final, exc, "could not rename the new folder into place") from None
    _fsync_dir(final.parent)


def recover_folder(final: str | Path) -> list[Path]:
    """After a killed replace of ``final`` (call with its lock held): put a moved-aside old folder
    back if ``final`` is missing, and remove the temporaries.  Returns what was removed."""
    final = Path(final)
    olds = sorted(final.parent.glob(f".{final.name}.old-*")) if final.parent.is_dir() else []
    if olds and not final.exists():
        with contextlib.suppress(OSError):
            os.replace(olds[-1], final)
    removed = remove_stale(final.parent, f".{final.name}.tmp-*", locked=True)
    return removed + remove_stale(final.parent, f".{final.name}.old-*", locked=True)


@contextlib.contextmanager
def replaced_folder(final: str | Path) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``final`` whole, on failure it is removed.

    I/O failures inside the block (OSError with an errno in WRITE_ERRNOS) become a WriteError
    naming the file where the errno carries one, else ``final``."""
    final = Path(final)
    tmp = staging_folder(final)
    kept = f"; the previous files in {final} are kept" if final.exists() else ""
    try:
        yield tmp
        publish_folder(tmp, final)
    except WriteError as exc:  # name the file where it is going, not the staging folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(str(exc).replace(str(tmp), str(final)) + kept, exc.errno) from None
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        where = Path(exc.filename) if getattr(exc, "filename", None) else final
        raise write_error(where, exc, kept=final.exists()) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: The largest small text file a user names (a config, a search space).
MAX_TEXT_FILE_BYTES = 16 << 20


def check_input_file(path: str | Path, what: str = "file", max_bytes: Optional[int] = None) -> Path:
    """``path`` if it is a regular file (links followed) of at most ``max_bytes``; else a UserError
    saying what it is: missing, a folder, a FIFO, a device, a socket, or too large.  Called before a
    file a user names is opened, so a FIFO or ``/dev/zero`` neither blocks nor fills memory."""
    import stat

    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what}: {describe(exc)}") from None
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise UserError(f"{path}: is {kind}, not a regular file; give the {what} itself")
    if max_bytes is not None and info.st_size > max_bytes:
        raise UserError(f"{path}: {info.st_size / (1 << 20):.1f} MiB, more than the {max_bytes >> 20} MiB a {what} "
                        "may have; is it the right file?")
    return path
