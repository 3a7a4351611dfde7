"""The report's plots, one PNG per env, written atomically (Agg backend).

* ``learning_curves_<env>.png``: per dataset, the eval hook's return against training step of
  every method whose ``metrics.csv`` has one of :data:`CURVE_COLUMNS` (mean over seeds, shaded
  ± one std across seeds).
* ``dataset_returns_<env>.png``: a histogram of each dataset's episode returns, with every
  method's evaluated mean return drawn as a vertical line.
* ``performance_profile_<env>.png``: the fraction of runs whose normalized score exceeds τ
  (:func:`offline_dt.study.statistics.performance_profile`), per method.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from offline_dt.data.atomic import atomic_path
from offline_dt.study.runs import method_key, sort_key
from offline_dt.study.statistics import by_dataset, performance_profile

#: metrics.csv columns holding the periodic evaluation's mean return, first match wins.
CURVE_COLUMNS = ("eval_return_mean", "eval/return_mean", "eval_return")


def _curve(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    col = next((c for c in CURVE_COLUMNS if c in df.columns), None)
    if col is None or "step" not in df.columns:
        return None
    df = df[["step", col]].dropna()
    return df.rename(columns={col: "eval_return"}) if len(df) else None


def _panel_grid(n: int) -> tuple[Any, np.ndarray]:
    """A figure with ``n`` panels, at most three per row (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    return plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.3 * nrow), squeeze=False)


def _save_panels(fig: Any, axes: np.ndarray, used: int, title: str, path: Path) -> Path:
    """Hide the unused panels, title the figure and write it as PNG atomically."""
    import matplotlib.pyplot as plt

    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_learning_curves(runs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``learning_curves_<env>.png``: per dataset, the eval return vs training step of every
    method whose runs logged one (the training loop's hook: dt, bc, qt; mean over seeds,
    shaded ± one std across seeds)."""
    written = []
    for env in sorted({r["env"] for r in runs}):
        datasets = sorted({r["dataset"] for r in runs if r["env"] == env},
                          key=lambda d: sort_key(env, d, ""))
        curves: dict[str, dict[str, pd.DataFrame]] = {}
        methods = sorted({r["method"] for r in runs if r["env"] == env}, key=method_key)
        for ds in datasets:
            for method in methods:
                frames = [c.assign(seed=r["seed"]) for r in runs
                          if (r["env"], r["dataset"], r["method"]) == (env, ds, method)
                          and (c := _curve(r["run_dir"])) is not None]
                if frames:
                    curves.setdefault(ds, {})[method] = pd.concat(frames)
        if not curves:
            continue
        names = [d for d in datasets if d in curves]
        fig, axes = _panel_grid(len(names))
        for ax, ds in zip(axes.flat, names, strict=False):
            for method, frame in curves[ds].items():
                g = frame.groupby("step")["eval_return"]
                mean, std = g.mean(), g.std(ddof=0).fillna(0.0)
                (line,) = ax.plot(mean.index, mean.values, marker="o", ms=3, label=method)
                ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2,
                                color=line.get_color())
            ax.set_title(ds, fontsize=10)
            ax.set_xlabel("training step")
            ax.set_ylabel("eval return")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(_save_panels(
            fig, axes, len(names), f"{env}: evaluation return during training (mean over seeds)",
            out_dir / f"learning_curves_{env}.png"))
    return written


def plot_dataset_returns(datasets: dict[tuple[str, str], dict[str, Any]], table: pd.DataFrame,
                         out_dir: Path) -> list[Path]:
    """``dataset_returns_<env>.png``: histogram of the episode returns in each dataset
    (:func:`dataset_returns`), with the table's mean returns of every method drawn as
    vertical lines."""
    written = []
    for env in sorted({env for env, _ in datasets}):
        names = sorted((ds for e, ds in datasets if e == env),
                       key=lambda d: sort_key(env, d, ""))
        fig, axes = _panel_grid(len(names))
        for ax, ds in zip(axes.flat, names, strict=False):
            rets = np.asarray(datasets[(env, ds)]["returns"])
            ax.hist(rets, bins=40, color="0.6")
            rows = table[(table["env"] == env) & (table["dataset"] == ds)
                         & (table["method"] != "data")]
            for k, row in enumerate(rows.itertuples(index=False)):
                ax.axvline(row.mean_return, color=f"C{k}", lw=1.5,
                           label=f"{row.method} {row.mean_return:.0f}")
            ax.set_title(f"{ds} ({len(rets)} episodes, mean {rets.mean():.0f})", fontsize=9)
            ax.set_xlabel("episode return")
            ax.set_ylabel("episodes")
            ax.legend(fontsize=7)
        written.append(_save_panels(
            fig, axes, len(names),
            f"{env}: episode returns in each dataset; lines: evaluated mean returns",
            out_dir / f"dataset_returns_{env}.png"))
    return written


def plot_performance_profiles(scores: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``performance_profile_<env>.png``: :func:`performance_profile` of the normalized scores
    of each method's runs over the env's datasets (the ``data`` rows have no runs)."""
    written = []
    for env, s in scores.groupby("env", sort=True):
        s = s[np.isfinite(s["normalized_score"])]
        if s.empty:
            continue
        lo, hi = s["normalized_score"].min(), s["normalized_score"].max()
        pad = 0.05 * (hi - lo) or 1.0
        taus = np.linspace(lo - pad, hi + pad, 301)
        fig, axes = _panel_grid(1)
        ax = axes[0, 0]
        for method in sorted(s["method"].unique(), key=method_key):
            by_ds = by_dataset(s, method, "normalized_score")
            runs = sum(v.size for v in by_ds.values())
            ax.step(taus, performance_profile(list(by_ds.values()), taus), where="post",
                    label=f"{method} ({len(by_ds)} datasets, {runs} runs)")
        ax.set_xlabel("normalized score τ")
        ax.set_ylabel("fraction of runs with score > τ")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save_panels(fig, axes, 1, f"{env}: performance profile over datasets",
                                    out_dir / f"performance_profile_{env}.png"))
    return written
