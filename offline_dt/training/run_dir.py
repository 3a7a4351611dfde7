"""A run directory's safety around ``train --overwrite`` and killed writers.

An overwritten run is not deleted up front: its files wait in the hidden sibling
``.<run_dir name>.previous`` (:class:`PreviousRun`) until the new run's first checkpoint, and
go back if the new run fails before it. :func:`recover_run_dir`, called under the run
directory's lock before anything else, finishes what a killed writer left.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from offline_dt.data.atomic import remove_path
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
