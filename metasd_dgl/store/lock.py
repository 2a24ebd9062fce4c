"""One writer per folder: an advisory lock file held for as long as the writing lasts.

``folder_lock(folder)`` takes an exclusive ``flock`` on a lock file and writes
the holder's pid into it.  A second writer of the same folder -- another
process -- gets a ``FolderLockedError`` at once (exit 2, one line naming the
folder and the holder's pid); it never waits.  The kernel drops the lock when
its holder dies, however it dies (kill -9 included), so a lock file left by a
dead process is stale: the next writer takes it over and says whose it was.
A holder that ends normally removes the lock file (and the folder, if taking
the lock created it and nothing else was written there).

Where the lock file lives: a run folder holds its own (``RUN/.metasd.lock``);
a folder that is replaced as a whole by a rename (a processed dataset, an
export) is locked by a sibling file ``PARENT/.NAME.lock``, which survives the
rename.  Readers (evaluate, predict, plot) take no lock: every file they
read is written atomically (``metasd_dgl.store.atomic``).

Within one process the lock is re-entrant (a pipeline locks its run folder
in each stage).  Under ``torchrun`` only rank 0 writes, so only rank 0 locks.

The lock is taken on the resolved folder (``run`` and ``./x/../run`` share one
lock), and its file is opened without following links: a lock path that is a
symbolic link, a hard link to another file or not a regular file is refused
with one line, and nothing is written into what it points to.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

from metasd_dgl.store.atomic import write_error
from metasd_dgl.errors import UserError

try:  # POSIX; elsewhere the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".metasd.lock"

# resolved lock path -> (fd, depth) of the locks this process holds
_HELD: Dict[str, Tuple[int, int]] = {}


class FolderLockedError(UserError):
    """Another live process is writing the folder."""


def lock_path(folder: str | Path, inside: bool = True) -> Path:
    """The lock file of ``folder``: ``folder/.metasd.lock`` or, for a folder replaced by rename,
    the sibling ``parent/.name.lock``."""
    folder = Path(folder).resolve()
    return folder / LOCK_NAME if inside else folder.parent / f".{folder.name}.lock"


def _read_pid(fd: int) -> Optional[int]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def _is_main_rank() -> bool:
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


@contextlib.contextmanager
def folder_lock(folder: str | Path, inside: bool = True, what: str = "folder",
                on_stale: Optional[Callable[[str], None]] = None) -> Iterator[Optional[Path]]:
    """Hold the write lock of ``folder`` for the ``with`` block; FolderLockedError if another process holds it.

    ``what`` names the folder in the message ("run folder", "processed dataset folder").
    ``on_stale(message)`` hears about a lock file taken over from a dead process (default: a
    ``note:`` line on stderr).
    Yields the lock file's path (None where locks are not supported or on a non-zero rank).
    """
    if fcntl is None or not _is_main_rank():
        yield None
        return
    path = lock_path(folder, inside)
    key = str(path)
    if key in _HELD:  # re-entrant within this process
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield path
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    fd, created = _acquire(Path(folder), path, what, on_stale)
    _HELD[key] = (fd, 1)
    try:
        yield path
    finally:
        _HELD.pop(key, None)
        _release(path, fd, created)


def _acquire(folder: Path, path: Path, what: str, on_stale: Optional[Callable[[str], None]]) -> Tuple[int, bool]:
    """-> (fd holding the lock, whether the lock's folder was created here)."""

    created = not path.parent.exists()
    for _ in range(5):  # retried only when the file was unlinked between open and flock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FolderLockedError(_not_a_lock(path, "a symbolic link")) from None
            if exc.errno == errno.EISDIR:
                raise FolderLockedError(_not_a_lock(path, "a folder")) from None
            raise write_error(path, exc, "could not create the lock file") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            os.close(fd)
            raise FolderLockedError(_not_a_lock(
                path, "a hard link to another file" if stat.S_ISREG(info.st_mode) else _kind(info.st_mode)))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder else "another process"
                raise FolderLockedError(
                    f"{folder}: {what} in use by another metasd-dgl process ({who}, lock file {path}); "
                    "wait for it to finish or choose another folder") from None
            raise write_error(path, exc, "could not lock") from None
        try:
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released and removed it meanwhile: lock the new file
    else:
        raise FolderLockedError(f"{folder}: {what} is being locked and released by other processes; "
                                "try again or choose another folder")
    previous = _read_pid(fd)
    if previous and previous != os.getpid():
        note = f"{folder}: took over the lock of pid {previous}, which is no longer running"
        if on_stale is not None:
            on_stale(note)
        else:
            print(f"note: {note}", file=sys.stderr)
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    except OSError:  # a full disk: the lock holds all the same, only the pid is not written
        pass
    return fd, created


def _not_a_lock(path: Path, what: str) -> str:
    return (f"{path}: the lock file is {what}; metasd-dgl writes its pid only into a lock file of its own "
            "and left it untouched: remove it (or move it away) and run again")


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _release(path: Path, fd: int, created: bool) -> None:
    """Remove the lock file if it is still the one locked (never what another file or link put at
    ``path`` meanwhile), unlock, and remove the lock's folder if this lock created it and it stayed empty."""
    try:
        if os.lstat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    except OSError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if created:
        try:
            os.rmdir(path.parent)
        except OSError:
            pass


def held_locks() -> list[str]:
    """Lock files this process holds (for tests)."""
    return sorted(_HELD)
