"""A run directory's safety around ``train --overwrite`` and killed writers.

An overwritten run is not deleted up front: its files wait in the hidden sibling
``.<run_dir name>.previous`` (:class:`PreviousRun`) until the new run's first checkpoint, and
go back if the new run fails before it. :func:`recover_run_dir`, called under the run
directory's lock before anything else, finishes what a killed writer left. A write into the run
directory that finds the disk full ends in one :class:`~offline_dt.data.atomic.DiskFullError`
saying which checkpoint is intact (:func:`room_for`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from offline_dt.data.atomic import DiskFullError, free_bytes, is_disk_full, remove_path
from offline_dt.data.validate import format_bytes
from offline_dt.training.checkpoint import CHECKPOINT_NAME, KEPT_DIR

log = logging.getLogger(__name__)

#: What a run writes into its directory (checkpoint first: see :class:`PreviousRun`).
RUN_FILES = (CHECKPOINT_NAME, "metrics.csv", "loss.png", "config.json", "tb", KEPT_DIR)


def recover_run_dir(run_dir: Path) -> None:
    """Undo what a killed writer of ``run_dir`` left (call holding its lock): temporaries of
    atomic writes (``.*.tmp``), and a previous run set aside by an overwrite that never
    reached its first checkpoint (restored) or did (deleted)."""
    if run_dir.is_dir():
        for tmp in [*run_dir.glob(".*.tmp"), *(run_dir / KEPT_DIR).glob(".*.tmp")]:
            log.info("%s: removing %s left by a killed run", run_dir, tmp.name)
            remove_path(tmp)
    previous = PreviousRun(run_dir)
    if previous.path.exists():
        if (run_dir / CHECKPOINT_NAME).exists():
            previous.discard()
        else:
            log.warning("%s: restoring the run that an interrupted overwrite had set aside in "
                        "%s", run_dir, previous.path)
            previous.restore()


class PreviousRun:
    """An existing run being overwritten: its ``RUN_FILES`` wait in the hidden sibling
    ``.<run_dir name>.previous`` until the new run's first checkpoint (then deleted), and go
    back if the new run fails before it.

    Invariant used by :func:`recover_run_dir` after a kill: ``checkpoint.pt`` is moved aside
    first and back last, so ``run_dir/checkpoint.pt`` exists while the sibling does exactly
    when the new run has written its checkpoint (or nothing was moved yet).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir.with_name(f".{run_dir.name}.previous")

    def set_aside(self) -> None:
        """Move the run's files (checkpoint first) into :attr:`path`."""
        self.path.mkdir(exist_ok=True)
        for name in RUN_FILES:
            if (self.run_dir / name).exists():
                os.replace(self.run_dir / name, self.path / name)
        log.info("%s: previous run set aside in %s until the first checkpoint", self.run_dir,
                 self.path)

    def discard(self) -> None:
        """The new run has a checkpoint: delete the previous run's files."""
        if self.path.exists():
            shutil.rmtree(self.path)

    def restore(self) -> None:
        """Delete the new run's files and move the previous run's back (checkpoint last)."""
        for name in RUN_FILES:
            remove_path(self.run_dir / name)
        for name in (*RUN_FILES[1:], RUN_FILES[0]):
            if (self.path / name).exists():
                os.replace(self.path / name, self.run_dir / name)
        shutil.rmtree(self.path)


@contextmanager
def room_for(written: Path, step: int, saved_step: int | None) -> Iterator[None]:
    """Around a write of a run's file ``written`` at update ``step``, the run's checkpoint on
    disk being of update ``saved_step`` (None: none yet): a full disk (``ENOSPC``,
    ``EDQUOT``) raises one :class:`DiskFullError` saying what could not be written, when,
    that the previous checkpoint is intact, and how to go on (its cause chained)."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        free = free_bytes(written)
        what = (f"disk full: no space left on the filesystem holding {written} while writing "
                f"it at update {step} ({'unknown' if free is None else format_bytes(free)} "
                f"free); the half-written temporary was removed")
        if saved_step is None:
            after = "no checkpoint had been written yet: free some space and run it again"
        else:
            after = (f"the previous checkpoint {written.with_name(CHECKPOINT_NAME)} (update "
                     f"{saved_step}) is intact: free some space, then run the same command "
                     f"with --resume true")
        raise DiskFullError(written, f"{what}; {after}") from e
