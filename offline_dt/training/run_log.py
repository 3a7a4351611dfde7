"""A training run's logs: ``metrics.csv``, TensorBoard scalars, the progress bar, ``loss.png``.

``metrics.csv`` has one row every ``log_every`` steps (and at evaluations and the end):
``step`` (int), ``loss`` (mean over the interval), ``lr``, ``steps_per_second``,
``wall_seconds``, any extra scalars the method's loss returns, and the eval hook's columns.
It is rewritten atomically at every checkpoint, and at a log row when ``SAVE_INTERVAL_S``
have passed since it was last written (so a running job shows its progress between
checkpoints); on resume the rows after the checkpoint's step are dropped, so a resumed run's
log equals an uninterrupted one's. A run that fails (or is interrupted) cuts ``metrics.csv``
back to its last checkpoint's step (:meth:`RunLog.abort`), so the log on disk never runs ahead
of the checkpoint it belongs to.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from offline_dt.data.atomic import atomic_path

log = logging.getLogger(__name__)

#: Seconds of wall time after which a log row also rewrites ``metrics.csv``.
SAVE_INTERVAL_S = 10.0


class RunLog:
    """Accumulates losses between log rows and writes the run's log files.

    Args:
        run_dir: the run directory (``metrics.csv``, ``tb/``, ``loss.png``).
        step: the step training starts from (0, or the resumed checkpoint's).
        total_steps: the step budget (for the progress bar).
        progress: show a tqdm bar (only when stderr is a TTY).
        t_origin: ``perf_counter`` time the run started (rows' ``wall_seconds`` count from it).
    """

    def __init__(self, run_dir: Path, step: int, total_steps: int, progress: bool,
                 t_origin: float) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.run_dir = run_dir
        self.path = run_dir / "metrics.csv"
        self.rows = read_metrics(self.path, step)
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)
        self.bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                        disable=not progress or not sys.stderr.isatty())
        self.t_origin = t_origin
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.interval_start, self.interval_step = time.perf_counter(), step
        self.saved_at = time.perf_counter()

    def add(self, loss: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        """Accumulate one update's loss (and extra scalars) on their device, no sync."""
        for key, value in (("loss", loss), *extras.items()):
            if key not in self.sums:
                self.sums[key] = torch.zeros((), device=value.device)
            self.sums[key] += value
        self.count += 1
        self.bar.update(1)

    def interval_row(self, step: int, lr: float) -> dict[str, float]:
        """The row closing the current interval: step, interval means, lr, speed, time."""
        now = time.perf_counter()
        sps = (step - self.interval_step) / max(now - self.interval_start, 1e-9)
        row: dict[str, float] = {"step": step}
        row.update({k: float(v) / self.count for k, v in self.sums.items()})
        row.update({"lr": lr, "steps_per_second": sps, "wall_seconds": now - self.t_origin})
        for v in self.sums.values():
            v.zero_()
        self.count = 0
        self.bar.set_postfix(loss=f"{row.get('loss', math.nan):.4g}", sps=f"{sps:.1f}")
        return row

    def restart_interval(self, step: int) -> None:
        """Start timing the next interval now (after an evaluation or a log row)."""
        self.interval_start, self.interval_step = time.perf_counter(), step

    def append(self, row: dict[str, float]) -> None:
        """Keep ``row`` for ``metrics.csv`` (rewritten when ``SAVE_INTERVAL_S`` have passed
        since its last write) and send its scalars to TensorBoard."""
        self.rows.append(row)
        if time.perf_counter() - self.saved_at >= SAVE_INTERVAL_S:
            self.save()
        step = int(row["step"])
        for k, v in row.items():
            if k != "step" and math.isfinite(v):
                self.writer.add_scalar(f"eval/{k}" if k.startswith("eval") else f"train/{k}",
                                       v, step)

    @property
    def last_loss(self) -> float:
        return next((r["loss"] for r in reversed(self.rows) if "loss" in r), math.nan)

    def save(self) -> None:
        write_metrics(self.path, self.rows)
        self.saved_at = time.perf_counter()

    def close(self, title: str) -> None:
        """Flush TensorBoard, write ``metrics.csv`` and ``loss.png``."""
        self.bar.close()
        self.writer.flush()
        self.writer.close()
        self.save()
        plot_loss(self.run_dir / "loss.png", self.rows, title)

    def abort(self, saved_step: int | None) -> None:
        """The run failed or was interrupted: close the bar and TensorBoard, and cut
        ``metrics.csv`` back to the rows up to ``saved_step`` (the step of the checkpoint on
        disk; None: no checkpoint, no rows), which is what a resume reads back."""
        try:
            self.bar.close()
            self.writer.close()
        except Exception as e:  # a full disk, say: the run's own error is the one to report
            log.warning("%s: closing the TensorBoard log failed (%s)", self.run_dir, e)
        self.rows = [r for r in self.rows if r.get("step", math.inf) <= (saved_step or 0)]
        cut_metrics(self.path, self.rows)


def metrics_text(rows: list[dict[str, float]]) -> str:
    """``rows`` as CSV text (columns in first-seen order), as :func:`write_metrics` writes
    it."""
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return f.getvalue()


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """``rows`` as CSV (columns in first-seen order), atomically."""
    with atomic_path(path, overwrite=True) as tmp, tmp.open("w", newline="") as f:
        f.write(metrics_text(rows))


def cut_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """Make ``metrics.csv`` hold exactly ``rows`` (a prefix of its rows; none: the file is
    removed). Rewritten atomically; where that fails (a full disk) and the wanted text is a
    prefix of the file's, the file is truncated in place, which needs no free space."""
    if not path.is_file():
        return
    if not rows:
        path.unlink()
        return
    try:
        write_metrics(path, rows)
        return
    except OSError as e:
        error = e
    text = metrics_text(rows).encode()
    if path.read_bytes().startswith(text):
        os.truncate(path, len(text))
        return
    log.warning("%s: could not cut the log back to step %s (%s); a resume drops the rows "
                "after its checkpoint", path, rows[-1].get("step"), error)


def read_metrics(path: Path, up_to_step: int) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` up to ``up_to_step`` (``step`` as int, the rest float)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [{k: (int(float(v)) if k == "step" else float(v)) for k, v in r.items()
                 if v not in ("", None)} for r in csv.DictReader(f)]
    return [r for r in rows if r.get("step", math.inf) <= up_to_step]


def plot_loss(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Training loss against step (log scale when positive), as PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if pts:
        ax.plot(*zip(*pts, strict=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log" if pts and min(p[1] for p in pts) > 0 else "linear")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


class QuietLog:
    """The log of a rank other than 0 under DDP: the same calls as :class:`RunLog`, nothing
    written (rank 0 writes the run's logs)."""

    last_loss = math.nan

    def add(self, loss: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        pass

    def interval_row(self, step: int, lr: float) -> dict[str, float]:
        return {"step": step}

    def append(self, row: dict[str, float]) -> None:
        pass

    def restart_interval(self, step: int) -> None:
        pass

    def save(self) -> None:
        pass

    def close(self, title: str) -> None:
        pass

    def abort(self, saved_step: int | None) -> None:
        pass
