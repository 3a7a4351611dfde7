"""Exclusive, non-blocking inter-process locks for paths that one process at a time may write.

The lock is an ``fcntl.flock`` on a sibling lock file ``.<name>.lock`` next to the locked path
(never inside it, so the path itself may be created, moved or replaced while locked). The
kernel drops a ``flock`` when its holder dies, so a killed writer never blocks the next one;
the lock file is removed on a clean release and reused (then removed) after a crash.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockedError(RuntimeError):
    """Another live process holds the lock of the path being written."""


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file that guards ``path``: the hidden sibling ``.<name>.lock``."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` for the duration of the ``with`` block.

    Non-blocking: if another process holds it, fail at once instead of waiting. The parent
    directory of ``path`` is created if missing. Yields the lock file's path.

    Args:
        path: the file or directory to be written (it need not exist).
        what: a word for the error message, e.g. ``"run directory"`` or ``"dataset"``.

    Raises:
        LockedError: another live process holds the lock; the message names ``path``, the lock
            file and, when known, the holder's process id.
    """
    path = Path(path)
    lock = lock_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, lock, what)
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # e.g. a full disk: the pid only names the holder in messages
            pass
        yield lock
    finally:
        try:
            lock.unlink()  # while still holding it, so no other process can hold this inode
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the flock


def _acquire(path: Path, lock: Path, what: str) -> int:
    """Open and flock ``lock``; retry if a releasing holder unlinked it meanwhile.

    Returns the open file descriptor holding the lock.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(_held_message(path, lock, what)) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its previous holder has just unlinked: start over


def _held_message(path: Path, lock: Path, what: str) -> str:
    try:
        holder = lock.read_text().strip()
    except OSError:
        holder = ""
    by = f"process {holder}" if holder.isdigit() else "another process"
    return (
        f"{what} {path} is being written by {by} (lock {lock} is held); wait for it to "
        "finish or write somewhere else"
    )
