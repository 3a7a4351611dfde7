"""Catalog of generated datasets in both formats (``offline-dt datasets``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from offline_dt.data.d4rl import read_hdf5
from offline_dt.data.dataset import DatasetError
from offline_dt.data.minari_io import minari_root as _minari_root
from offline_dt.data.minari_io import read_minari

log = logging.getLogger(__name__)

COLUMNS = ["id", "format", "env", "steps", "episodes", "return_mean", "return_std",
           "return_min", "return_max"]


def list_datasets(
    out_dir: str | os.PathLike | None = "data/d4rl",
    minari_root: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """One row per dataset found: D4RL-style ``*.hdf5``/``*.h5`` files directly in ``out_dir``
    and Minari datasets ``<namespace>/<name>-v<k>`` under ``minari_root`` (default
    data/minari or ``$MINARI_DATASETS_PATH``).

    Returns:
        DataFrame with columns ``id`` (file stem, e.g. ``pendulum-medium-v0``, or Minari id
        ``pendulum/medium-v0``), ``format`` ("hdf5" | "minari"), ``env`` (env id from the
        metadata), ``steps``, ``episodes`` and the undiscounted episode-return statistics
        ``return_mean``, ``return_std``, ``return_min``, ``return_max``; sorted by format and
        id; empty (same columns) when nothing exists. Unreadable datasets are skipped with a
        warning.
    """
    rows = []
    if out_dir is not None and Path(out_dir).is_dir():
        for path in sorted(Path(out_dir).iterdir()):
            if path.suffix not in (".hdf5", ".h5") or path.name.startswith("."):
                continue
            try:
                ds = read_hdf5(path)
            except (DatasetError, OSError) as e:
                log.warning("skipping %s: %s", path, e)
                continue
            rows.append({"id": path.stem, "format": "hdf5", **_stats(ds)})
    root = _minari_root(minari_root)
    if root.is_dir():
        for meta in sorted(root.glob("*/*/data/metadata.json")):
            ds_dir = meta.parent.parent
            if ds_dir.name.startswith(".") or ds_dir.parent.name.startswith("."):
                continue
            ds_id = f"{ds_dir.parent.name}/{ds_dir.name}"
            try:
                ds = read_minari(ds_dir)
            except (DatasetError, OSError, ValueError) as e:
                log.warning("skipping Minari dataset %s: %s", ds_id, e)
                continue
            rows.append({"id": ds_id, "format": "minari", **_stats(ds)})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["format", "id"], ignore_index=True)


def _stats(ds) -> dict:
    s = ds.summary()
    return {"env": s["env_id"], "steps": s["steps"], "episodes": s["episodes"],
            "return_mean": s["return_mean"], "return_std": s["return_std"],
            "return_min": s["return_min"], "return_max": s["return_max"]}
