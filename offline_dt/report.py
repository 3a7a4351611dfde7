"""The results table and plots, read from run directories (no rollouts are recomputed).

Layout read::

    <runs_root>/<env>/<dataset>/<method>/seed<k>/
        config.json    resolved config of the run (TrainConfig, or the baseline's settings)
        metrics.csv    training log with the eval hook's columns (dt and bc only)
        eval.json      offline_dt.evaluate's schema: headline return statistics and the
                       per-episode returns of every evaluated target

One row per (env, dataset, method); methods ``random``, ``behaviour``, ``bc``, ``dt``. A row
pools the headline evaluation's episodes of all seeds: ``mean_return``, ``std_return``
(population std) and ``ci95`` (``1.96 std / √n``) are over all those episodes, and
``normalized_score`` is the D4RL score of ``mean_return`` with the reference scores recorded
in ``eval.json``. Written: ``results.csv``, ``results.md`` (also printed),
``learning_curves_<env>.png`` (eval return vs training step per dataset, dt and bc, mean over
seeds) and ``dataset_returns_<env>.png`` (episode-return histogram of each dataset, with the
evaluated mean returns marked).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from offline_dt.data.atomic import atomic_path

# LEVELS is re-exported: pipeline and cli import it from here.
from offline_dt.data.d4rl import LEVELS, normalized_score

log = logging.getLogger(__name__)

COLUMNS = ["env", "dataset", "method", "seeds", "episodes", "mean_return", "std_return", "ci95",
           "normalized_score"]
METHODS = ("random", "behaviour", "bc", "dt")
#: metrics.csv columns holding the periodic evaluation's mean return, first match wins.
CURVE_COLUMNS = ("eval_return_mean", "eval/return_mean", "eval_return")


def dataset_level(name: str) -> str | None:
    """The level a dataset name refers to (``pendulum-medium-replay-v0`` → ``medium-replay``)."""
    for level in sorted(LEVELS, key=len, reverse=True):
        if re.search(rf"(^|[-_/]){re.escape(level)}($|[-_/])", name):
            return level
    return None


def _sort_key(env: str, dataset: str, method: str) -> tuple:
    level = dataset_level(dataset)
    li = LEVELS.index(level) if level in LEVELS else len(LEVELS)
    mi = METHODS.index(method) if method in METHODS else len(METHODS)
    return (env, li, dataset, mi, method)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from e


def find_runs(runs_root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run directory ``<env>/<dataset>/<method>/seed<k>`` under ``runs_root`` that holds
    an ``eval.json``, with its parsed eval and config."""
    root = Path(runs_root)
    runs = []
    for eval_path in sorted(root.glob("*/*/*/seed*/eval.json")):
        run_dir = eval_path.parent
        env, dataset, method, seed_dir = run_dir.relative_to(root).parts
        m = re.fullmatch(r"seed(\d+)", seed_dir)
        if m is None:
            continue
        cfg_path = run_dir / "config.json"
        runs.append({
            "env": env, "dataset": dataset, "method": method, "seed": int(m.group(1)),
            "run_dir": run_dir,
            "eval": _read_json(eval_path),
            "config": _read_json(cfg_path) if cfg_path.is_file() else {},
        })
    return runs


def _headline(ev: dict[str, Any]) -> dict[str, Any]:
    targets = ev.get("targets") or []
    if targets:
        return targets[int(ev.get("headline_index", 0))]
    return {"mean": ev["mean_return"], "std": ev["std_return"], "episodes": ev["episodes"]}


def pool(evals: list[dict[str, Any]]) -> dict[str, float]:
    """Pool the headline episodes of several evaluations: mean, population std, ci95, n.

    Uses the per-episode returns when ``eval.json`` has them, else the exact pooled moments
    from each evaluation's mean, std and episode count.
    """
    heads = [_headline(ev) for ev in evals]
    if all("returns" in h for h in heads):
        r = np.concatenate([np.asarray(h["returns"], np.float64) for h in heads])
        n, mean, std = r.size, float(r.mean()), float(r.std())
    else:
        ns = np.array([h["episodes"] for h in heads], np.float64)
        ms = np.array([h["mean"] for h in heads], np.float64)
        ss = np.array([h["std"] for h in heads], np.float64)
        n = int(ns.sum())
        mean = float((ns * ms).sum() / n)
        std = float(math.sqrt(max((ns * (ss**2 + ms**2)).sum() / n - mean**2, 0.0)))
    return {"episodes": int(n), "mean_return": mean, "std_return": std,
            "ci95": 1.96 * std / math.sqrt(n) if n else float("nan")}


def results_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (env, dataset, method) with exactly :data:`COLUMNS`."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["env"], run["dataset"], run["method"]), []).append(run)
    rows = []
    for key in sorted(groups, key=lambda k: _sort_key(*k)):
        env, dataset, method = key
        group = sorted(groups[key], key=lambda r: r["seed"])
        stats = pool([r["eval"] for r in group])
        ev = group[0]["eval"]
        rows.append({
            "env": env, "dataset": dataset, "method": method, "seeds": len(group),
            **stats,
            "normalized_score": normalized_score(stats["mean_return"], ev.get("ref_min_score"),
                                                 ev.get("ref_max_score")),
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["normalized_score"] = table["normalized_score"].astype(float)
    return table


def to_markdown(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub Markdown table through ``DataFrame.to_markdown`` (tabulate's "pipe" format):
    floats with ``digits`` decimals, NaN as ``n/a``, numeric columns right-aligned (also when
    all n/a), other columns left-aligned and verbatim, no index column."""
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    # tabulate prints its missing value for None only (a float NaN prints as "nan").
    cells = table.astype(object).where(table.notna(), None)
    # Text that looks like a number ("007", "1e3") stays text: no number parsing there
    # (tabulate takes column indices only when there are rows).
    text_columns = [i for i, num in enumerate(numeric) if not num and len(table)]
    return cells.to_markdown(index=False, floatfmt=f".{digits}f", missingval="n/a",
                             colalign=["right" if num else "left" for num in numeric],
                             disable_numparse=text_columns) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------------------------- plots
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
    """``learning_curves_<env>.png``: per dataset, dt and bc eval return vs training step
    (mean over seeds, shaded ± one std across seeds)."""
    written = []
    for env in sorted({r["env"] for r in runs}):
        datasets = sorted({r["dataset"] for r in runs if r["env"] == env},
                          key=lambda d: _sort_key(env, d, ""))
        curves: dict[str, dict[str, pd.DataFrame]] = {}
        for ds in datasets:
            for method in ("bc", "dt"):
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


def _dataset_source(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """(dataset id or path, Minari root) named by a run's config.json (flat or nested)."""
    # Trainer: {"train_config": {"dataset": ..., "minari_root": ...}, "dataset": {info}};
    # baselines: flat {"dataset": ..., "minari_root": ...}.
    cands = [config.get("train_config") or {}, config]
    cands += [v for v in config.values() if isinstance(v, dict)]
    for c in cands:
        if isinstance(c, dict) and isinstance(c.get("dataset"), str) and c["dataset"]:
            return c["dataset"], c.get("minari_root")
    return None, None


def plot_dataset_returns(runs: list[dict[str, Any]], table: pd.DataFrame, out_dir: Path
                         ) -> list[Path]:
    """``dataset_returns_<env>.png``: histogram of the episode returns in each dataset (read
    from the dataset files named in the runs' config.json), with the table's mean returns of
    every method drawn as vertical lines."""
    from offline_dt.data import load_dataset

    written = []
    for env in sorted({r["env"] for r in runs}):
        hists: dict[str, np.ndarray] = {}
        for ds in sorted({r["dataset"] for r in runs if r["env"] == env},
                         key=lambda d: _sort_key(env, d, "")):
            for r in runs:
                if (r["env"], r["dataset"]) != (env, ds):
                    continue
                source, mroot = _dataset_source(r["config"])
                if source is None:
                    continue
                try:
                    hists[ds] = load_dataset(source, mroot).episode_returns
                    break
                except (FileNotFoundError, ValueError) as e:
                    log.warning("dataset %s of %s not readable: %s", source, r["run_dir"], e)
        if not hists:
            continue
        names = list(hists)
        fig, axes = _panel_grid(len(names))
        for ax, ds in zip(axes.flat, names, strict=False):
            rets = hists[ds]
            ax.hist(rets, bins=40, color="0.6")
            rows = table[(table["env"] == env) & (table["dataset"] == ds)]
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


def report(runs_root: str | os.PathLike, out_dir: str | os.PathLike,
           plots: bool = True, quiet: bool = False) -> pd.DataFrame:
    """Build the results table from ``runs_root`` and write it (and the plots) to ``out_dir``.

    Returns:
        The table, columns exactly :data:`COLUMNS`, one row per (env, dataset, method).

    Raises:
        FileNotFoundError: no ``eval.json`` under ``runs_root``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(runs_root)
    if not runs:
        # reproduce keeps each preset's runs apart: runs/<preset>/<env>/...
        nested = sorted({str(p.parents[4]) for p in Path(runs_root).glob(
            "*/*/*/*/seed*/eval.json")})
        hint = f"; runs found under {', '.join(nested)}: pass one of those" if nested else ""
        raise FileNotFoundError(
            f"no run directories <env>/<dataset>/<method>/seed<k>/eval.json under "
            f"{runs_root}{hint}")
    table = results_table(runs)
    with atomic_path(out / "results.csv", overwrite=True) as tmp:
        table.to_csv(tmp, index=False)
    md = to_markdown(table)
    _write_text(out / "results.md", md)
    if not quiet:
        print(md, end="")
    if plots:
        plot_learning_curves(runs, out)
        plot_dataset_returns(runs, table, out)
    return table
