"""Write-to-temporary-then-rename, so no half-written file or directory ever looks complete."""

from __future__ import annotations

import os
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
    as it was. A leftover ``*.tmp`` from a killed run is removed before starting.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove(tmp)
    try:
        yield tmp
        if path.exists():
            _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
