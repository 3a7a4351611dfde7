"""Catalog of generated datasets in both formats (``offline-dt datasets``), with the dataset
characteristics TQ and SACo (:mod:`offline_dt.data.characteristics`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from offline_dt.data.characteristics import (
    CharacteristicsError,
    state_action_limits,
    trajectory_quality,
    unique_state_actions,
)
from offline_dt.data.d4rl import read_hdf5
from offline_dt.data.dataset import DatasetError, OfflineDataset
from offline_dt.data.minari_io import minari_root as _minari_root
from offline_dt.data.minari_io import read_minari

log = logging.getLogger(__name__)

COLUMNS = ["id", "format", "env", "steps", "episodes", "return_mean", "return_std",
           "return_min", "return_max", "tq", "unique_sa", "saco"]
#: The level whose dataset is SACo's reference (the online agent's whole replay buffer).
REPLAY_LEVEL = "full-replay"


def _found(out_dir: str | os.PathLike | None, minari_root: str | os.PathLike | None
           ) -> Iterator[tuple[str, str, str, Callable[[], OfflineDataset]]]:
    """(id, format, what a warning calls it, reader) of every dataset under ``out_dir``
    (D4RL-style files) and the Minari root (:func:`list_datasets`)."""
    if out_dir is not None and Path(out_dir).is_dir():
        for path in sorted(Path(out_dir).iterdir()):
            if path.suffix in (".hdf5", ".h5") and not path.name.startswith("."):
                yield path.stem, "hdf5", str(path), lambda p=path: read_hdf5(p)
    root = _minari_root(minari_root)
    if root.is_dir():
        for meta in sorted(root.glob("*/*/data/metadata.json")):
            ds_dir = meta.parent.parent
            if not (ds_dir.name.startswith(".") or ds_dir.parent.name.startswith(".")):
                ds_id = f"{ds_dir.parent.name}/{ds_dir.name}"
                yield ds_id, "minari", f"Minari dataset {ds_id}", lambda d=ds_dir: read_minari(d)


def list_datasets(
    out_dir: str | os.PathLike | None = "data/d4rl",
    minari_root: str | os.PathLike | None = None,
    coverage: bool = True,
) -> pd.DataFrame:
    """One row per dataset found: D4RL-style ``*.hdf5``/``*.h5`` files directly in ``out_dir``
    and Minari datasets ``<namespace>/<name>-v<k>`` under ``minari_root`` (default
    data/minari or ``$MINARI_DATASETS_PATH``).

    Returns:
        DataFrame with columns ``id`` (file stem, e.g. ``pendulum-medium-v0``, or Minari id
        ``pendulum/medium-v0``), ``format`` ("hdf5" | "minari"), ``env`` (env id from the
        metadata), ``steps``, ``episodes``, the undiscounted episode-return statistics
        ``return_mean``, ``return_std``, ``return_min``, ``return_max``, and the dataset
        characteristics (:mod:`offline_dt.data.characteristics`): ``tq`` (NaN without
        reference scores), ``unique_sa`` (unique state-action bins on the grid of every
        listed dataset of the same env and format) and ``saco`` (``unique_sa`` over that of
        the env's ``full-replay`` dataset of the same format; NaN when there is none).
        Without ``coverage`` (each dataset is read a second time for it) the last two are
        NaN. Sorted by format and id; empty (same columns) when nothing exists. Unreadable
        datasets are skipped with a warning.
    """
    rows = []
    for ds_id, fmt, label, read in _found(out_dir, minari_root):
        try:
            ds = read()
        except (DatasetError, OSError, ValueError) as e:
            log.warning("skipping %s: %s", label, e)
            continue
        rows.append({"id": ds_id, "format": fmt, **_stats(ds), "_read": read,
                     "_level": ds.metadata.get("level"), "_limits": _limits(ds)})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    if coverage:
        _add_coverage(rows)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return table.sort_values(["format", "id"], ignore_index=True)


def _limits(ds: OfflineDataset) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return state_action_limits([ds])
    except CharacteristicsError:
        return None


def _add_coverage(rows: list[dict[str, Any]]) -> None:
    """Set ``unique_sa`` and ``saco`` of every binnable row, per (env, format) group on the
    group's one grid (the min and max over its datasets); reads each dataset again."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["_limits"] is not None:
            groups.setdefault((row["env"], row["format"]), []).append(row)
    for members in groups.values():
        if len({r["_limits"][0].shape for r in members}) > 1:
            continue  # one env id, different widths: no common grid
        lo = np.min([r["_limits"][0] for r in members], axis=0)
        hi = np.max([r["_limits"][1] for r in members], axis=0)
        for r in members:
            r["unique_sa"] = unique_state_actions(r["_read"](), lo, hi)
        ref = next((r for r in members if r["_level"] == REPLAY_LEVEL), None)
        for r in members:
            if ref is not None and ref["unique_sa"]:
                r["saco"] = r["unique_sa"] / ref["unique_sa"]


def _stats(ds: OfflineDataset) -> dict[str, Any]:
    s = ds.summary()
    tq = trajectory_quality(ds)
    return {"env": s["env_id"], "steps": s["steps"], "episodes": s["episodes"],
            "return_mean": s["return_mean"], "return_std": s["return_std"],
            "return_min": s["return_min"], "return_max": s["return_max"],
            "tq": float("nan") if tq is None else tq}
