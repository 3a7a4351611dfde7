"""Write-to-temporary-then-rename, so no half-written file or directory ever looks complete,
and nothing is replaced that the writer did not write.

A writer says what it writes (``kind``: a file or a directory, and optionally ``ours``, a test
that an existing path is the kind of thing it writes); anything else at the path (a directory
where a file goes, a file where a directory goes, a directory or file of another kind) is
refused with a message and left untouched. A full disk (``ENOSPC``/``EDQUOT``) is reported as
:class:`DiskFullError` naming the path; the temporary is removed and the previous complete
output stays.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from offline_dt.data.validate import format_bytes

#: ``kind`` of an output: a regular file or a directory tree.
KINDS = ("file", "dir")


class DiskFullError(OSError):
    """The filesystem being written has no space (or quota) left: ``errno`` is ``ENOSPC``,
    ``filename`` the output path, ``str()`` one message naming the path and the free space."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        super().__init__(errno.ENOSPC, message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-space error: an OSError with errno ENOSPC or EDQUOT, or one
    whose message says so (h5py and Minari re-raise the C library's error as text)."""
    if not isinstance(exc, OSError):
        return False
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc)


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem that holds (or would hold) ``path``, or None if unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check_free_space(path: str | os.PathLike, need: int, what: str = "output") -> None:
    """Refuse to start writing ``need`` bytes to ``path`` when its filesystem has less free.

    Raises:
        DiskFullError: naming ``path``, the size needed and the free space.
    """
    free = free_bytes(path)
    if free is not None and free < need:
        raise DiskFullError(path, (
            f"disk full: writing the {what} {path} needs about {format_bytes(need)} but its "
            f"filesystem has {format_bytes(free)} free; nothing was written; free some space "
            "or write somewhere else"))


def is_json_file(path: Path) -> bool:
    """An ``ours`` test for JSON writers: ``path`` parses as JSON (a file over 16 MiB only has
    to start like a JSON object or array)."""
    try:
        if path.stat().st_size > 16 * 2**20:
            with path.open("rb") as f:
                return f.read(4096).lstrip()[:1] in (b"{", b"[")
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def check_writable(path: Path, overwrite: bool, what: str = "output", kind: str = "file",
                   ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse to replace anything at ``path`` but a ``kind`` offline-dt writes, and anything
    at all unless ``overwrite``.

    An existing ``path`` is replaceable when it is an empty file or directory, or when it is
    of ``kind`` (a regular file, or a directory) and ``ours(path)`` holds; a directory is
    never replaceable without ``ours`` (it may hold anything), a file is without one.

    Raises:
        FileExistsError: ``path`` is of another kind (the message names it, what it holds and
            what to pass instead), or it exists and ``overwrite`` is False (naming the flag).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, found {kind!r}")
    if not (path.exists() or path.is_symlink()):
        return
    problem = _not_replaceable(path, what, kind, ours)
    if problem:
        raise FileExistsError(f"{problem}; it was left untouched")
    if not overwrite:
        raise FileExistsError(
            f"{what} {path} exists; pass --overwrite (overwrite=True) to replace it"
        )


def _not_replaceable(path: Path, what: str, kind: str,
                     ours: Callable[[Path], bool] | None) -> str | None:
    """Why the existing ``path`` may not be replaced by a ``kind`` (None: it may)."""
    if path.is_dir():
        n = sum(1 for _ in path.iterdir())
        holding = f"holding {n} {'entry' if n == 1 else 'entries'}"
        if kind == "file":
            return (f"{path} is a directory ({holding}); the {what} to be written is a file "
                    f"and is never written over a directory: pass the path of a file, e.g. "
                    f"{path / ('<name>' + (path.suffix or '.json'))}")
        if n and (ours is None or not ours(path)):
            return (f"{path} is a directory offline-dt did not write as a {what} ({holding}); "
                    "move it away or choose another path")
        return None
    if not path.exists():
        return None  # a dangling symlink: replacing the link touches nothing else
    if not path.is_file():
        return (f"{path} is not a regular file (a device, pipe or socket); the {what} is never "
                "written over one: choose another path")
    if kind == "dir":
        return (f"{path} is a file; the {what} to be written is a directory and is never "
                "written over a file: move the file away or choose another path")
    if path.stat().st_size and ours is not None and not ours(path):
        return (f"{path} is a file that is not a {what} offline-dt wrote; move it away or "
                "choose another path")
    return None


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False, *, kind: str = "file",
                ours: Callable[[Path], bool] | None = None, what: str = "output"
                ) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``.

    ``kind`` says what the caller builds at the temporary: a ``"file"`` or a ``"dir"``
    (directory tree); ``ours`` tests that an existing ``path`` is one of the caller's outputs
    (:func:`check_writable` says what may be replaced). A file replaces the old one in one
    ``os.replace``; a directory moves the old one aside, moves the new one in, then deletes
    the old one (restoring it if the move in fails). On error the temporary is removed and
    ``path`` is left as it was. The temporary is ``.<name>.<pid>.tmp`` (a writer may add
    siblings starting with that name, e.g. ``write_minari``'s ``…tmp-root``). Before starting,
    temporaries of ``path`` left by killed runs (their pid no longer alive, see
    ``remove_stale_temporaries``) and this process's own are removed; a live process's are
    left alone.

    Raises:
        ValueError: ``path`` is a string ending in ``/`` (a directory) and ``kind`` is "file".
        FileExistsError: ``path`` is not replaceable (another kind), or exists and
            ``overwrite`` is False.
        DiskFullError: the filesystem filled up while writing (naming ``path``).
    """
    if kind == "file" and isinstance(path, str) and path.endswith(("/", os.sep)):
        raise ValueError(f"{path} ends with '/', a directory, but the {what} is a file: pass "
                         f"the path of a file, e.g. {path}<name>.json")
    path = Path(path)
    check_writable(path, overwrite, what, kind, ours)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    remove_stale_temporaries(path)
    remove_path(tmp)
    existed = path.exists()
    try:
        yield tmp
        check_writable(path, True, what, kind, ours)  # nothing else appeared there meanwhile
        _move_into_place(tmp, path, kind)
    except OSError as e:
        if not is_disk_full(e) or isinstance(e, DiskFullError):
            raise
        raise DiskFullError(path, _disk_full_message(path, what, existed)) from e
    finally:
        remove_path(tmp)


def _move_into_place(tmp: Path, path: Path, kind: str) -> None:
    """``os.replace(tmp, path)``; a directory at ``path`` is set aside first and deleted after
    (put back if the move fails)."""
    if kind == "file" or not path.exists():
        os.replace(tmp, path)
        return
    old = tmp.with_name(tmp.name + "-old")
    remove_path(old)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    remove_path(old)


def _disk_full_message(path: Path, what: str, existed: bool) -> str:
    free = free_bytes(path)
    left = "the previous one is unchanged" if existed else "nothing was written"
    return (f"disk full: no space left on the filesystem holding {path} while writing the "
            f"{what} ({format_bytes(free) if free is not None else 'unknown'} free); the "
            f"half-written temporary was removed and {left}; free some space and rerun")


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
