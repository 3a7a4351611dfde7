"""The report's dataset characteristics: TQ and SACo (Schweighofer et al. 2022,
``offline_dt.data.characteristics``) beside each dataset of the study, with the method that
scored best on it, and their scatter plot ``characteristics_<env>.png`` (TQ against SACo, each
point labelled with the dataset and its best method's normalized score, as the paper's
figures).

The grid of the counts is one per env: every dimension's min and max over the env's datasets
that the runs name; SACo is relative to the env's ``full-replay`` dataset (NaN without one,
``unique_sa`` then stands alone).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from offline_dt.data import load_dataset
from offline_dt.data.atomic import atomic_path
from offline_dt.data.characteristics import unique_state_actions

log = logging.getLogger(__name__)

COLUMNS = ["env", "dataset", "tq", "unique_sa", "saco", "best_method", "best_score"]
#: Rows of the results table that are not methods trained on the dataset.
NOT_METHODS = ("data", "random", "behaviour")
REPLAY_LEVEL = "full-replay"


def characteristics_table(datasets: dict[tuple[str, str], dict[str, Any]],
                          table: pd.DataFrame) -> pd.DataFrame:
    """One row per (env, dataset) of ``datasets`` (:func:`offline_dt.study.runs.
    dataset_returns`, whose entries carry ``tq``, ``limits``, ``level`` and ``source``): TQ,
    unique state-action bins, SACo, and the best method by mean normalized score in
    ``table`` (the results table) with that score; columns :data:`COLUMNS`."""
    rows = []
    for env in sorted({e for e, _ in datasets}):
        keys = [k for k in datasets if k[0] == env]
        counts = _counts(env, {k: datasets[k] for k in keys})
        ref = next((counts[k] for k in counts if datasets[k].get("level") == REPLAY_LEVEL), None)
        for key in keys:
            best, score = _best(table, *key)
            n = counts.get(key)
            rows.append({"env": env, "dataset": key[1], "tq": datasets[key].get("tq"),
                         "unique_sa": n,
                         "saco": n / ref if n is not None and ref else math.nan,
                         "best_method": best, "best_score": score})
    return pd.DataFrame(rows, columns=COLUMNS)


def _counts(env: str, entries: dict[tuple[str, str], dict[str, Any]]
            ) -> dict[tuple[str, str], int]:
    """Unique state-action bins of each binnable dataset on the env's one grid (each dataset
    read again)."""
    limits = {k: e["limits"] for k, e in entries.items() if e.get("limits") is not None}
    if not limits or len({lo.shape for lo, _ in limits.values()}) > 1:
        return {}
    lo = np.min([v[0] for v in limits.values()], axis=0)
    hi = np.max([v[1] for v in limits.values()], axis=0)
    out = {}
    for key in limits:
        try:
            out[key] = unique_state_actions(load_dataset(*entries[key]["source"]), lo, hi)
        except (FileNotFoundError, ValueError, OSError) as e:
            log.warning("%s %s: no state-action count (%s)", env, key[1], e)
    return out


def _best(table: pd.DataFrame, env: str, dataset: str) -> tuple[str | None, float]:
    rows = table[(table["env"] == env) & (table["dataset"] == dataset)
                 & ~table["method"].isin(NOT_METHODS)].dropna(subset=["normalized_score"])
    if rows.empty:
        return None, math.nan
    row = rows.loc[rows["normalized_score"].idxmax()]
    return str(row["method"]), float(row["normalized_score"])


def characteristics_markdown(chars: pd.DataFrame, env: str) -> str:
    """The env's rows as a Markdown section (table and plot link)."""
    rows = chars[chars["env"] == env].drop(columns="env")
    return (f"### Dataset characteristics ({env})\n\nTQ = (mean return - random) / (expert - "
            f"random); `unique_sa`: distinct (state, action) cells, 100 bins per dimension on "
            f"one grid over the env's datasets; SACo = `unique_sa` / full-replay's "
            f"(Schweighofer et al. 2022).\n\n{rows.to_markdown(index=False, floatfmt='.3f')}"
            f"\n\n![TQ against SACo](characteristics_{env}.png)\n")


def plot_characteristics(chars: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``characteristics_<env>.png`` for every env with a SACo: TQ against SACo, each point
    labelled ``<dataset>: <best method> <score>``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for env, rows in chars.dropna(subset=["saco", "tq"]).groupby("env"):
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        ax.scatter(rows["saco"], rows["tq"])
        for _, r in rows.iterrows():
            best = "" if pd.isna(r["best_method"]) else \
                f": {r['best_method']} {r['best_score']:.0f}"
            ax.annotate(f"{r['dataset']}{best}", (r["saco"], r["tq"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
        saco = rows["saco"][rows["saco"] > 0]
        if len(saco) and saco.max() / saco.min() > 20:  # decades apart: a log axis
            ax.set_xscale("log")
        ax.margins(x=0.35, y=0.1)  # room for the labels right of the points
        ax.set_xlabel("SACo")
        ax.set_ylabel("TQ")
        ax.set_title(f"{env}: datasets, best method and its normalized score",
                     fontsize=9)
        fig.tight_layout()
        path = Path(out_dir) / f"characteristics_{env}.png"
        with atomic_path(path, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)
    return written
