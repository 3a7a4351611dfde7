"""Write-to-temporary-then-rename, so no half-written file or directory ever looks complete."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_writable(path: Path, overwrite: bool, what: str = "output") -> None:
    """Refuse to clobber an existing ``path`` unless ``overwrite``.

    Raises:
        FileExistsError: naming the path and the flag that allows it.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{what} {path} exists; pass --overwrite (overwrite=True) to replace it"
        )


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``.

    Works for files and directories. On error the temporary is removed and ``path`` is left
    as it was. The temporary is ``.<name>.<pid>.tmp`` (a writer may add siblings starting
    with that name, e.g. ``write_minari``'s ``…tmp-root``). Before starting, temporaries of
    ``path`` left by killed runs (their pid no longer alive, see ``remove_stale_temporaries``)
    and this process's own are removed; a live process's are left alone.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    remove_stale_temporaries(path)
    remove_path(tmp)
    try:
        yield tmp
        if path.exists():
            remove_path(path)
        os.replace(tmp, path)
    finally:
        remove_path(tmp)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries ``.<name>.<pid>.tmp*`` of ``path`` whose process is dead.

    A process killed while writing (SIGKILL, power loss) leaves its temporary behind; the pid
    in the name tells whose it is. ``os.kill(pid, 0)`` probes it without sending a signal: a
    temporary of a live process (another writer, or a pid reused since) is never touched.

    Returns:
        The paths removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.tmp.*", re.DOTALL)
    removed = []
    if not path.parent.is_dir():
        return removed
    for cand in path.parent.iterdir():
        m = pattern.fullmatch(cand.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            remove_path(cand)
            removed.append(cand)
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (``os.kill(pid, 0)``; a process of another user counts
    as alive)."""
    if pid <= 0:
        return True  # never a writer's pid: leave such a name alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(p: Path) -> None:
    """Delete a file, link or directory tree; nothing if it does not exist."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def writable_directory(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Make sure files can be written in directory ``path``, before any slow work: create it
    (and its parents) when missing, then create and remove a probe file in it.

    Args:
        path: the directory.
        what: how the message names it (e.g. ``"reproduce --root"``).

    Returns:
        ``path`` as a ``Path``, now an existing directory.

    Raises:
        ValueError: one message naming ``what``, the path and what is wrong: a file where a
            directory is expected (``path`` or a parent), permission denied, a read-only file
            system, or any other ``OSError`` of the attempt (its description and errno name).
    """
    import errno
    import tempfile

    path = Path(path)
    try:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()),
                       None)
        if blocker is not None:
            raise ValueError(f"{what} {path}: cannot be a directory: {blocker} is a file")
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.ENOTDIR: "a parent is not a "
                  "directory"}.get(e.errno, e.strerror or str(e))
        code = errno.errorcode.get(e.errno, "") if e.errno else ""
        failed = Path(e.filename) if e.filename else path
        at = "" if path in (failed, failed.parent) else f" (at {failed})"
        raise ValueError(f"{what} {path}: not writable: {reason}{at}"
                         + (f" [{code}]" if code else "")) from e
    return path
