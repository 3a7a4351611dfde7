"""The results tables and plots, read from run directories (no rollouts are recomputed).

Layout read::

    <runs_root>/<env>/<dataset>/<method>/seed<k>/
        config.json    resolved config of the run (TrainConfig, or the baseline's settings)
        metrics.csv    training log with the eval hook's columns (dt and bc only)
        eval.json      offline_dt.evaluation.evaluate's schema: headline return statistics and the
                       per-episode returns of every evaluated target

The unit of uncertainty is the training run. A *run* is one ``<method>/seed<k>`` directory and
its *score* is the mean return of its headline evaluation. Over the runs of one (env, dataset,
method) the statistics follow rliable's definitions (Agarwal et al. 2021, "Deep Reinforcement
Learning at the Edge of the Statistical Precipice", NeurIPS), computed with ``scipy.stats``
(``trim_mean``, ``bootstrap``) because rliable 1.2.0 does not work with today's stack (it pins
``arch<8``, and arch 7.2 fails to import under pandas 3.1); switch to it when a release does.

``results.csv`` (long and tidy: one row per env × dataset × method, columns :data:`COLUMNS`):

* ``seeds`` and ``runs``: the number of runs (0 for ``data``); ``episodes``: test episodes of
  all runs together (``data``: episodes in the file).
* ``mean_return``, ``std_return`` (population std), ``max_return``: over all those episodes;
  ``mean_return`` is also the mean of the run scores when every run has the same number of
  episodes (as in ``reproduce``). ``ci95 = 1.96 std / √episodes`` is the *episode-level*
  interval: it measures evaluation noise only, not the spread between training runs.
* ``normalized_score``: the D4RL score of ``mean_return`` with the reference scores recorded
  in ``eval.json`` (``data``: those of the runs on that dataset, else the file's metadata).
* ``iqm_return``: interquartile mean of the run scores (``trim_mean(x, 0.25)``);
  ``run_ci95_low``/``run_ci95_high``: the *run-level* 95% percentile-bootstrap interval of the
  mean over runs (:data:`BOOTSTRAP_RESAMPLES` resamples of the runs, seeded, so the table is
  deterministic); NaN with fewer than two runs (one run gives no interval).
  ``iqm_normalized_score``, ``run_ci95_low_normalized``, ``run_ci95_high_normalized``: the
  same over the runs' normalized scores.

Methods: ``data`` is the episode returns stored in the dataset file itself (read with
``offline_dt.data.load_dataset`` from the file named in the runs' ``config.json``; no
rollouts, no runs). ``behaviour`` exists only where one behaviour policy wrote the data; the
replay levels (:data:`REPLAY_LEVELS`) were written by the sequence of policies of a SAC
training run, so a behaviour run found there is skipped. ``random``, the d3rlpy reference rows
(``mlp-bc``, ``pct-bc``, ``iql``), ``bc``, ``dt``, ``qt`` and any other method directory are
tabulated as found (:data:`METHODS` gives the column order, others follow by name). Every
cell reports test episodes only; how each run chose its target return and inference settings
(on validation episodes since issue 18) is read from its ``eval.json`` and said under the
table (:func:`selection_note`).

``run_scores.csv`` holds one row per run (:data:`RUN_COLUMNS`). ``aggregates.csv`` (columns
:data:`AGGREGATE_COLUMNS`), per env and method over the env's datasets: the IQM of the
normalized scores of all runs with its stratified bootstrap interval (runs resampled within
each dataset), and the probability of improvement over ``dt``, P(method > dt): per dataset the
fraction of (method run, dt run) pairs in which the method's run scores higher (ties count
1/2), averaged over the datasets both have, with a stratified bootstrap interval.

``results.md`` (also printed): per env, the wide table (rows datasets, columns ``data`` and
the methods in :data:`TABLE_METHODS` order; each cell ``mean [low, high] (normalized
score)``, bold where :func:`best_method` finds a method whose run-level interval lies
entirely above every other method's), notes on what each row is and how targets were chosen,
and the aggregates. Plots: ``learning_curves_<env>.png`` (methods whose ``metrics.csv`` has
the eval hook's columns), ``dataset_returns_<env>.png`` and
``performance_profile_<env>.png`` (fraction of runs whose normalized score exceeds τ).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, trim_mean

from offline_dt.data.atomic import atomic_path

# LEVELS is re-exported: pipeline and cli import it from here.
from offline_dt.data.d4rl import LEVELS, normalized_score
from offline_dt.training.checkpoint import KEPT_DIR

log = logging.getLogger(__name__)

#: Run-level statistics of a results row (NaN for ``data`` and below two runs).
RUN_STAT_COLUMNS = ["iqm_return", "run_ci95_low", "run_ci95_high", "iqm_normalized_score",
                    "run_ci95_low_normalized", "run_ci95_high_normalized"]
COLUMNS = ["env", "dataset", "method", "seeds", "episodes", "mean_return", "std_return", "ci95",
           "normalized_score", "max_return", "runs", *RUN_STAT_COLUMNS]
RUN_COLUMNS = ["env", "dataset", "method", "seed", "episodes", "mean_return",
               "normalized_score"]
AGGREGATE_COLUMNS = ["env", "method", "datasets", "runs", "iqm_normalized_score",
                     "iqm_ci95_low", "iqm_ci95_high", "prob_improvement_over_dt",
                     "prob_improvement_ci95_low", "prob_improvement_ci95_high"]
#: The methods in table order: baselines, the field's reference rows (d3rlpy), the
#: transformers; other methods follow in name order.
METHODS = ("random", "behaviour", "mlp-bc", "pct-bc", "iql", "bc", "dt", "qt")
#: Column order of the wide table: the dataset's own returns, then the methods.
TABLE_METHODS = ("data", *METHODS)
#: What each row is, for the notes under the wide table (methods present only).
METHOD_NOTES = {
    "random": "uniform random actions",
    "behaviour": "the policy that wrote the data, acting as it did when collecting",
    "mlp-bc": "behaviour cloning by an MLP on single states (d3rlpy BC defaults)",
    "pct-bc": "%BC: the same MLP BC on the top 10% of episodes by return (Chen et al. 2021, "
              "Table 3)",
    "iql": "Implicit Q-Learning (Kostrikov et al. 2021; d3rlpy IQL defaults)",
    "bc": "the Decision Transformer network with returns-to-go zeroed",
    "dt": "Decision Transformer (Chen et al. 2021)",
    "qt": "Q-value regularized Decision Transformer (Hu et al. 2024)",
}
#: Levels written by a sequence of policies (a SAC run's replay buffer): no behaviour agent.
REPLAY_LEVELS = ("medium-replay", "full-replay")
#: The method every other one is compared with (probability of improvement).
REFERENCE_METHOD = "dt"
#: rliable's default number of bootstrap resamples; the seed makes every interval repeatable.
BOOTSTRAP_RESAMPLES = 50_000
BOOTSTRAP_SEED = 0
#: metrics.csv columns holding the periodic evaluation's mean return, first match wins.
CURVE_COLUMNS = ("eval_return_mean", "eval/return_mean", "eval_return")
_NAN = float("nan")


def dataset_level(name: str) -> str | None:
    """The level a dataset name refers to (``pendulum-medium-replay-v0`` → ``medium-replay``)."""
    for level in sorted(LEVELS, key=len, reverse=True):
        if re.search(rf"(^|[-_/]){re.escape(level)}($|[-_/])", name):
            return level
    return None


def _method_key(method: str) -> tuple[int, str]:
    mi = TABLE_METHODS.index(method) if method in TABLE_METHODS else len(TABLE_METHODS)
    return (mi, method)


def _sort_key(env: str, dataset: str, method: str) -> tuple:
    level = dataset_level(dataset)
    li = LEVELS.index(level) if level in LEVELS else len(LEVELS)
    return (env, li, dataset, *_method_key(method))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from e


def find_runs(runs_root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run directory ``<env>/<dataset>/<method>/seed<k>`` under ``runs_root`` that holds
    an ``eval.json``, with its parsed eval and config. Behaviour runs on a replay level are
    skipped (no single policy wrote that data)."""
    root = Path(runs_root)
    runs = []
    for eval_path in sorted(root.glob("*/*/*/seed*/eval.json")):
        run_dir = eval_path.parent
        env, dataset, method, seed_dir = run_dir.relative_to(root).parts
        m = re.fullmatch(r"seed(\d+)", seed_dir)
        if m is None:
            continue
        if method == "behaviour" and dataset_level(dataset) in REPLAY_LEVELS:
            log.info("%s: skipped (a replay dataset has no behaviour agent)", run_dir)
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
    return {"mean": ev["mean_return"], "std": ev["std_return"], "episodes": ev["episodes"],
            "max": ev.get("max_return", _NAN)}


def pool(evals: list[dict[str, Any]]) -> dict[str, float]:
    """Pool the headline episodes of several evaluations: mean, population std, episode-level
    ci95, max and n.

    Uses the per-episode returns when ``eval.json`` has them, else the exact pooled moments
    from each evaluation's mean, std and episode count (and the largest recorded max).
    """
    heads = [_headline(ev) for ev in evals]
    if all("returns" in h for h in heads):
        r = np.concatenate([np.asarray(h["returns"], np.float64) for h in heads])
        n, mean, std = r.size, float(r.mean()), float(r.std())
        best = float(r.max())
    else:
        ns = np.array([h["episodes"] for h in heads], np.float64)
        ms = np.array([h["mean"] for h in heads], np.float64)
        ss = np.array([h["std"] for h in heads], np.float64)
        n = int(ns.sum())
        mean = float((ns * ms).sum() / n)
        std = float(math.sqrt(max((ns * (ss**2 + ms**2)).sum() / n - mean**2, 0.0)))
        best = float(np.max([_NAN if h.get("max") is None else h["max"] for h in heads]))
    return {"episodes": int(n), "mean_return": mean, "std_return": std,
            "ci95": 1.96 * std / math.sqrt(n) if n else _NAN, "max_return": best}


# ----------------------------------------------------------------------------- statistics
def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean (rliable): the mean of the middle 50%, ``trim_mean(x, 0.25)``
    (``int(0.25 n)`` values cut from each end)."""
    x = np.asarray(scores, np.float64)
    return float(trim_mean(x, 0.25)) if x.size else _NAN


def _mean_statistic(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _iqm_statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """IQM of all runs of all datasets (rliable's IQM of a runs × tasks score matrix)."""
    return trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def _pairwise_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) over all pairs of the last axes of ``x`` (…, n) and ``y`` (…, m), ties ½."""
    d = x[..., :, None] - y[..., None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=(-2, -1))


def _improvement_statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Samples alternate x and y per dataset; the mean over datasets of P(X > Y)."""
    del axis  # scipy always passes -1 with vectorized=True and axis=-1
    pairs = zip(samples[0::2], samples[1::2], strict=True)
    return np.mean([_pairwise_improvement(x, y) for x, y in pairs], axis=0)


def probability_of_improvement(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> float:
    """rliable's probability of improvement P(X > Y): for each dataset ``k`` the fraction of
    pairs (run of X, run of Y) on ``xs[k]``, ``ys[k]`` in which X's score is higher (ties
    count ½, i.e. the Mann-Whitney U over n·m), averaged over the datasets."""
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"need the same datasets on both sides, found {len(xs)} and {len(ys)}")
    return float(_improvement_statistic(*_interleave(xs, ys)))


def _interleave(xs: Sequence[Any], ys: Sequence[Any]) -> list[np.ndarray]:
    """``[x0, y0, x1, y1, ...]`` as float arrays: one bootstrap sample per side and dataset."""
    return [np.asarray(a, np.float64) for pair in zip(xs, ys, strict=True) for a in pair]


def bootstrap_ci(samples: Sequence[Sequence[float] | np.ndarray], statistic: Callable,
                 *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
                 ) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``statistic(*samples, axis=-1)``.

    Each sample is resampled with replacement independently of the others, so with one sample
    per dataset this is rliable's stratified bootstrap. Seeded: the same input gives the same
    interval. ``(nan, nan)`` when a sample has fewer than two values (no spread to resample)
    or a non-finite value.
    """
    arrays = [np.asarray(s, np.float64) for s in samples]
    if not arrays or any(a.size < 2 or not np.isfinite(a).all() for a in arrays):
        return _NAN, _NAN
    res = bootstrap(arrays, statistic, n_resamples=resamples, vectorized=True, paired=False,
                    axis=-1, confidence_level=0.95, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def run_interval(scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Run-level 95% bootstrap interval of the mean over runs (NaN below two runs)."""
    return bootstrap_ci([scores], _mean_statistic)


def run_statistics(returns: np.ndarray, normalized: np.ndarray) -> dict[str, Any]:
    """``runs`` and :data:`RUN_STAT_COLUMNS` from the run scores (returns, normalized)."""
    lo, hi = run_interval(returns)
    nlo, nhi = run_interval(normalized)
    return {"runs": int(len(returns)), "iqm_return": iqm(returns), "run_ci95_low": lo,
            "run_ci95_high": hi, "iqm_normalized_score": iqm(normalized),
            "run_ci95_low_normalized": nlo, "run_ci95_high_normalized": nhi}


# ---------------------------------------------------------------------------------- tables
def _score(value: float, ref_min: Any, ref_max: Any) -> float:
    s = normalized_score(value, ref_min, ref_max)
    return _NAN if s is None else float(s)


def run_scores(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run (:data:`RUN_COLUMNS`): its headline mean return and normalized score."""
    rows = []
    for r in runs:
        ev, h = r["eval"], _headline(r["eval"])
        rows.append({"env": r["env"], "dataset": r["dataset"], "method": r["method"],
                     "seed": r["seed"], "episodes": int(h["episodes"]),
                     "mean_return": float(h["mean"]),
                     "normalized_score": _score(h["mean"], ev.get("ref_min_score"),
                                                ev.get("ref_max_score"))})
    rows.sort(key=lambda row: (*_sort_key(row["env"], row["dataset"], row["method"]),
                               row["seed"]))
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _method_row(key: tuple[str, str, str], group: list[dict[str, Any]],
                scores: pd.DataFrame) -> dict[str, Any]:
    env, dataset, method = key
    stats = pool([r["eval"] for r in group])
    ev = group[0]["eval"]
    return {"env": env, "dataset": dataset, "method": method, "seeds": len(group), **stats,
            "normalized_score": _score(stats["mean_return"], ev.get("ref_min_score"),
                                       ev.get("ref_max_score")),
            **run_statistics(scores["mean_return"].to_numpy(np.float64),
                             scores["normalized_score"].to_numpy(np.float64))}


def data_row(env: str, dataset: str, returns: Sequence[float] | np.ndarray,
             ref_min: float | None = None, ref_max: float | None = None) -> dict[str, Any]:
    """The ``data`` row: the episode returns stored in the dataset (mean, population std, max,
    normalized score); no runs, so ``seeds``/``runs`` 0 and the intervals NaN."""
    r = np.asarray(returns, np.float64)
    mean = float(r.mean()) if r.size else _NAN
    return {"env": env, "dataset": dataset, "method": "data", "seeds": 0,
            "episodes": int(r.size), "mean_return": mean,
            "std_return": float(r.std()) if r.size else _NAN, "ci95": _NAN,
            "normalized_score": _score(mean, ref_min, ref_max),
            "max_return": float(r.max()) if r.size else _NAN, "runs": 0,
            **dict.fromkeys(RUN_STAT_COLUMNS, _NAN)}


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


def dataset_returns(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(env, dataset) → ``{"returns": episode returns, "ref_min_score", "ref_max_score"}``,
    read from the dataset file named in the runs' config.json (the first readable one). The
    reference scores are those of the runs' eval.json (what the method rows use), else the
    file's metadata. Datasets that cannot be read are left out, with a warning."""
    from offline_dt.data import load_dataset

    out: dict[tuple[str, str], dict[str, Any]] = {}
    failed: set[tuple[str, str | None]] = set()
    for r in runs:
        key = (r["env"], r["dataset"])
        source = _dataset_source(r["config"])
        if key in out or source[0] is None or source in failed:
            continue
        try:
            ds = load_dataset(*source)
        except (FileNotFoundError, ValueError, OSError) as e:
            log.warning("dataset %s of %s not readable: %s", source[0], r["run_dir"], e)
            failed.add(source)
            continue
        refs = [r2["eval"] for r2 in runs if (r2["env"], r2["dataset"]) == key]
        ref = next((e for e in refs if e.get("ref_min_score") is not None
                    and e.get("ref_max_score") is not None), ds.metadata)
        out[key] = {"returns": ds.episode_returns, "ref_min_score": ref.get("ref_min_score"),
                    "ref_max_score": ref.get("ref_max_score")}
    return out


def results_table(runs: list[dict[str, Any]],
                  datasets: dict[tuple[str, str], dict[str, Any]] | None = None
                  ) -> pd.DataFrame:
    """One row per (env, dataset, method) with exactly :data:`COLUMNS`, plus a ``data`` row
    per entry of ``datasets`` (:func:`dataset_returns`)."""
    scores = run_scores(runs)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["env"], run["dataset"], run["method"]), []).append(run)
    rows = []
    for key, group in groups.items():
        mine = scores[(scores["env"] == key[0]) & (scores["dataset"] == key[1])
                      & (scores["method"] == key[2])]
        rows.append(_method_row(key, sorted(group, key=lambda r: r["seed"]), mine))
    for (env, ds), d in (datasets or {}).items():
        rows.append(data_row(env, ds, d["returns"], d.get("ref_min_score"),
                             d.get("ref_max_score")))
    rows.sort(key=lambda row: _sort_key(row["env"], row["dataset"], row["method"]))
    table = pd.DataFrame(rows, columns=COLUMNS)
    floats = [c for c in COLUMNS[5:] if c != "runs"]
    table[floats] = table[floats].astype(float)
    return table


def _by_dataset(scores: pd.DataFrame, method: str, column: str) -> dict[str, np.ndarray]:
    s = scores[scores["method"] == method]
    return {ds: g[column].to_numpy(np.float64) for ds, g in s.groupby("dataset", sort=False)}


def _aggregate_row(env: str, scores: pd.DataFrame, method: str) -> dict[str, Any]:
    """IQM of the normalized scores over every dataset of ``env`` (stratified interval) and
    P(method > dt) on the returns, over the datasets both methods have."""
    mine = _by_dataset(scores, method, "normalized_score")
    pooled = np.concatenate(list(mine.values()))
    lo, hi = bootstrap_ci(list(mine.values()), _iqm_statistic)
    row = {"env": env, "method": method, "datasets": len(mine), "runs": int(pooled.size),
           "iqm_normalized_score": iqm(pooled), "iqm_ci95_low": lo, "iqm_ci95_high": hi,
           "prob_improvement_over_dt": _NAN, "prob_improvement_ci95_low": _NAN,
           "prob_improvement_ci95_high": _NAN}
    x = _by_dataset(scores, method, "mean_return")
    y = _by_dataset(scores, REFERENCE_METHOD, "mean_return")
    common = [ds for ds in x if ds in y]
    if method != REFERENCE_METHOD and common:
        xs, ys = [x[d] for d in common], [y[d] for d in common]
        lo, hi = bootstrap_ci(_interleave(xs, ys), _improvement_statistic)
        row.update(prob_improvement_over_dt=probability_of_improvement(xs, ys),
                   prob_improvement_ci95_low=lo, prob_improvement_ci95_high=hi)
    return row


def aggregate_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per env and method (:data:`AGGREGATE_COLUMNS`) from :func:`run_scores`: IQM of the
    normalized score with its stratified bootstrap interval, and the probability of
    improvement over ``dt`` (per dataset on returns, which orders runs as the normalized score
    does whenever the normalization is increasing) with its stratified interval."""
    rows = []
    for env, s in scores.groupby("env", sort=True):
        for method in sorted(s["method"].unique(), key=_method_key):
            rows.append(_aggregate_row(str(env), s, method))
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


# ------------------------------------------------------------------------------- markdown
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


def _num(x: Any, digits: int) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _interval(mean: float, low: float, high: float, digits: int) -> str:
    """``mean [low, high]``, or ``mean`` alone when the interval is undefined."""
    if np.isfinite(low) and np.isfinite(high):
        return f"{_num(mean, digits)} [{_num(low, digits)}, {_num(high, digits)}]"
    return _num(mean, digits)


def format_cell(row: Any, digits: int = 1, bold: bool = False) -> str:
    """One wide-table cell from a results row: ``mean [run_ci95_low, run_ci95_high]
    (normalized_score)``; without the interval below two runs; the ``data`` row as
    ``mean ± std (normalized_score), max max_return`` over the file's episodes."""
    norm = _num(row.normalized_score, digits)
    if row.method == "data":
        text = (f"{_num(row.mean_return, digits)} ± {_num(row.std_return, digits)} ({norm}), "
                f"max {_num(row.max_return, digits)}")
    else:
        text = (f"{_interval(row.mean_return, row.run_ci95_low, row.run_ci95_high, digits)} "
                f"({norm})")
    return f"**{text}**" if bold else text


def best_method(rows: pd.DataFrame) -> str | None:
    """The method (of one dataset's results rows) whose run-level interval lies entirely above
    every other method's interval (its low end above their high ends), else None. The ``data``
    row is no competitor (it has no runs); with any competitor lacking an interval (one run)
    or fewer than two competitors, nothing is singled out."""
    comp = rows[rows["method"] != "data"]
    ci = comp[["run_ci95_low", "run_ci95_high"]].to_numpy(np.float64)
    if len(comp) < 2 or not np.isfinite(ci).all():
        return None
    i = int(np.argmax(ci[:, 0]))
    others = np.delete(ci[:, 1], i)
    return str(comp["method"].iloc[i]) if ci[i, 0] > others.max() else None


def table_methods(table: pd.DataFrame) -> list[str]:
    """The wide table's method columns: data, random, behaviour, bc, dt (those present), then
    any other method in name order."""
    return sorted(table["method"].unique(), key=_method_key)


def wide_table(table: pd.DataFrame, env: str, digits: int = 1) -> pd.DataFrame:
    """Rows = datasets of ``env``, columns = ``dataset`` and :func:`table_methods`, each cell
    :func:`format_cell` (bold for :func:`best_method`), ``n/a`` where a method has no row."""
    t = table[table["env"] == env]
    methods = table_methods(t)
    rows = []
    for ds in dict.fromkeys(t["dataset"]):
        sub = t[t["dataset"] == ds]
        best = best_method(sub)
        cells = {r.method: format_cell(r, digits, r.method == best)
                 for r in sub.itertuples(index=False)}
        rows.append({"dataset": ds, **{m: cells.get(m, "n/a") for m in methods}})
    return pd.DataFrame(rows, columns=["dataset", *methods])


def aggregates_markdown(aggregates: pd.DataFrame, env: str, digits: int = 1) -> str:
    """The aggregates of ``env`` as a Markdown table (IQM and P(method > dt), each with its
    stratified bootstrap interval)."""
    a = aggregates[aggregates["env"] == env]
    frame = pd.DataFrame({
        "method": a["method"], "datasets": a["datasets"], "runs": a["runs"],
        "IQM normalized score [95% CI]": [
            _interval(r.iqm_normalized_score, r.iqm_ci95_low, r.iqm_ci95_high, digits)
            for r in a.itertuples()],
        f"P(method > {REFERENCE_METHOD}) [95% CI]": [
            _interval(r.prob_improvement_over_dt, r.prob_improvement_ci95_low,
                      r.prob_improvement_ci95_high, 2) for r in a.itertuples()],
    })
    return to_markdown(frame)


TABLE_NOTES = """\
Cells: mean return over training runs [95% bootstrap interval over runs] (D4RL normalized \
score); the interval is run-level (training seeds resampled, percentile bootstrap as in \
rliable, Agarwal et al. 2021) and is left out with a single run, where it is undefined. \
`data`: the episode returns stored in the dataset file, mean ± std over its episodes \
(normalized score) and its best episode; it is a reference, not a competitor. Bold: the \
method whose interval lies entirely above every other method's interval on that dataset \
(none when intervals overlap or are undefined). `results.csv` also keeps the episode-level \
`ci95` (1.96 std / √episodes, evaluation noise only) and the IQM of the runs."""

REPLAY_NOTE = """\
`behaviour` is n/a on {levels}: those datasets were written by the sequence of policies of a \
SAC training run (its replay buffer), not by one behaviour agent; compare with the `data` \
column instead."""

AGGREGATE_NOTES = """\
Aggregates over the datasets of the environment (rliable's definitions, computed with \
scipy.stats): IQM = interquartile mean of the normalized scores of all runs, interval from a \
stratified bootstrap (runs resampled within each dataset); P(method > {ref}) = probability \
that a run of the method scores a higher return than a run of `{ref}` on the same dataset \
(ties ½), averaged over the datasets both have. Methods evaluated on fewer datasets (see \
`datasets`) are aggregated over those only."""


def selection_rule(ev: dict[str, Any]) -> str:
    """How one ``eval.json`` chose what its headline reports, in words: among its candidates
    on validation episodes (``selection``, written since issue 18), nothing (one candidate),
    or, in an older file with several targets, on the test episodes themselves."""
    sel = ev.get("selection")
    if isinstance(sel, dict):
        cands = sel.get("candidates") or []
        what = "target return × inference setting"
        paths = [str(c["checkpoint"]) for c in cands if "checkpoint" in c]
        if paths:
            kept = any(Path(p).parent.name == KEPT_DIR for p in paths)
            other = any("candidates" in Path(p).parts for p in paths)
            whose = "the run's" + (" or a `candidates/` run's, trained with other options"
                                   if other else "")
            when = ", its last or one kept along the way" if kept else ""
            what = f"checkpoint ({whose}{when}) × {what}"
        if sel.get("validation"):
            return (f"the best mean return of {len(cands)} candidates ({what}) on "
                    f"{sel.get('validation_episodes')} validation episodes "
                    f"(reset seeds {sel.get('validation_episode_seeds')}, never a test "
                    "episode), then that candidate alone on the test episodes")
        return "one candidate, nothing chosen"
    n = len(ev.get("targets") or [])
    if n > 1:
        return (f"the best of {n} target returns on the test episodes themselves (an older "
                "eval.json, before targets were chosen on validation episodes: optimistic)")
    return "one candidate, nothing chosen"


def selection_note(runs: list[dict[str, Any]], env: str) -> str:
    """The note under the wide table saying, per method of ``env``, how each run's target
    return and inference settings were chosen (:func:`selection_rule`)."""
    rules: dict[str, dict[str, None]] = {}
    for r in sorted((r for r in runs if r["env"] == env),
                    key=lambda r: _method_key(r["method"])):
        rules.setdefault(r["method"], {})[selection_rule(r["eval"])] = None
    by_rule: dict[str, list[str]] = {}
    for method, found in rules.items():
        by_rule.setdefault("; or ".join(found), []).append(f"`{method}`")
    honest = not any("test episodes themselves" in rule for rule in by_rule)
    head = "How targets were chosen" + (
        " (no choice is made on the test episodes the cells report)" if honest else "")
    return head + ": " + "; ".join(f"{', '.join(ms)}: {rule}"
                                   for rule, ms in by_rule.items()) + "." + \
        checkpoint_choices(runs, env)


def chosen_checkpoint(ev: dict[str, Any]) -> str | None:
    """Which checkpoint an ``eval.json`` chose when its candidates named several: ``own``
    (the run's own last checkpoint) or the name of its ``candidates/<name>`` run, followed by
    ``step N`` for an intermediate checkpoint that run kept (``checkpoints/step-N.pt``); None
    when there was no choice of checkpoint."""
    chosen = (ev.get("selection") or {}).get("chosen") or {}
    if "checkpoint" not in chosen:
        return None
    parts = Path(chosen["checkpoint"]).parts
    step = ""
    if len(parts) > 1 and parts[-2] == KEPT_DIR:  # <run>/checkpoints/step-0000500.pt
        step = f" step {int(Path(parts[-1]).stem.split('-')[-1])}"
        parts = parts[:-2]
    name = parts[-1] if len(parts) > 1 and parts[-2] == "candidates" else "own"
    return name + step


def checkpoint_choices(runs: list[dict[str, Any]], env: str) -> str:
    """A sentence per method of ``env`` whose runs chose among checkpoints: how many runs per
    dataset level chose each (e.g. qt's terms-off run); empty when none did."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for r in runs:
        name = chosen_checkpoint(r["eval"]) if r["env"] == env else None
        if name is not None:
            level = dataset_level(r["dataset"]) or r["dataset"]
            per = counts.setdefault(r["method"], {}).setdefault(level, {})
            per[name] = per.get(name, 0) + 1
    lines = []
    for method, levels in sorted(counts.items(), key=lambda kv: _method_key(kv[0])):
        parts = [f"{level} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                 for level, c in levels.items()]
        lines.append(f" `{method}`'s chosen checkpoint per level (runs): " + "; ".join(parts)
                     + ".")
    return "".join(lines)


def methods_note(methods: Sequence[str]) -> str:
    """The note naming what each row of the wide table is (:data:`METHOD_NOTES`)."""
    known = [m for m in methods if m in METHOD_NOTES]
    return "Rows: " + "; ".join(f"`{m}`: {METHOD_NOTES[m]}" for m in known) + "." if known \
        else ""


def env_markdown(table: pd.DataFrame, aggregates: pd.DataFrame, env: str,
                 profile: str | None = None, runs: list[dict[str, Any]] | None = None) -> str:
    """The wide table of ``env`` with its notes (what each method is; with ``runs``
    (:func:`find_runs`), how their targets were chosen), then its aggregates (two Markdown
    tables)."""
    t = table[table["env"] == env]
    parts = [to_markdown(wide_table(table, env)), TABLE_NOTES,
             methods_note(table_methods(t))]
    if runs:
        parts.append(selection_note(runs, env))
    replay = [ds for ds in dict.fromkeys(t["dataset"]) if dataset_level(ds) in REPLAY_LEVELS]
    if replay and "behaviour" in set(t["method"]):
        parts.append(REPLAY_NOTE.format(levels=", ".join(f"`{ds}`" for ds in replay)))
    parts += [aggregates_markdown(aggregates, env),
              AGGREGATE_NOTES.format(ref=REFERENCE_METHOD)]
    if profile:
        parts.append(f"Performance profile (fraction of runs whose normalized score exceeds "
                     f"τ, per method): `{profile}`.")
    return "\n\n".join(p.rstrip("\n") for p in parts if p) + "\n"


def markdown_report(table: pd.DataFrame, aggregates: pd.DataFrame,
                    runs: list[dict[str, Any]] | None = None) -> str:
    """``results.md``: one section per env (:func:`env_markdown`)."""
    sections = [f"## {env}\n\n" + env_markdown(
        table, aggregates, str(env), profile=f"performance_profile_{env}.png", runs=runs)
        for env in dict.fromkeys(table["env"])]
    return "# Results\n\n" + "\n".join(sections)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        frame.to_csv(tmp, index=False)


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
    """``learning_curves_<env>.png``: per dataset, the eval return vs training step of every
    method whose runs logged one (the training loop's hook: dt, bc, qt; mean over seeds,
    shaded ± one std across seeds)."""
    written = []
    for env in sorted({r["env"] for r in runs}):
        datasets = sorted({r["dataset"] for r in runs if r["env"] == env},
                          key=lambda d: _sort_key(env, d, ""))
        curves: dict[str, dict[str, pd.DataFrame]] = {}
        methods = sorted({r["method"] for r in runs if r["env"] == env}, key=_method_key)
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
                       key=lambda d: _sort_key(env, d, ""))
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


def performance_profile(scores_by_dataset: Sequence[np.ndarray], taus: np.ndarray
                        ) -> np.ndarray:
    """rliable's score distribution: for each τ the fraction of runs scoring above τ, per
    dataset, averaged over the datasets (the fraction of all runs when each dataset has as
    many)."""
    fractions = [(np.asarray(s, np.float64)[:, None] > taus[None, :]).mean(axis=0)
                 for s in scores_by_dataset]
    return np.mean(fractions, axis=0)


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
        for method in sorted(s["method"].unique(), key=_method_key):
            by_ds = _by_dataset(s, method, "normalized_score")
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


def _no_runs_error(runs_root: str | os.PathLike) -> FileNotFoundError:
    # reproduce keeps each preset's runs apart: runs/<preset>/<env>/...
    nested = sorted({str(p.parents[4]) for p in Path(runs_root).glob(
        "*/*/*/*/seed*/eval.json")})
    hint = f"; runs found under {', '.join(nested)}: pass one of those" if nested else ""
    return FileNotFoundError(
        f"no run directories <env>/<dataset>/<method>/seed<k>/eval.json under "
        f"{runs_root}{hint}")


def report(runs_root: str | os.PathLike, out_dir: str | os.PathLike,
           plots: bool = True, quiet: bool = False) -> pd.DataFrame:
    """Build the results tables from ``runs_root`` and write them (and the plots) to
    ``out_dir``: ``results.csv``, ``run_scores.csv``, ``aggregates.csv``, ``results.md``.

    Returns:
        The long table, columns exactly :data:`COLUMNS`, one row per (env, dataset, method),
        ``data`` rows included.

    Raises:
        FileNotFoundError: no ``eval.json`` under ``runs_root``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(runs_root)
    if not runs:
        raise _no_runs_error(runs_root)
    datasets = dataset_returns(runs)
    scores = run_scores(runs)
    table = results_table(runs, datasets)
    aggregates = aggregate_table(scores)
    _write_csv(table, out / "results.csv")
    _write_csv(scores, out / "run_scores.csv")
    _write_csv(aggregates, out / "aggregates.csv")
    md = markdown_report(table, aggregates, runs)
    _write_text(out / "results.md", md)
    if not quiet:
        print(md, end="")
    if plots:
        plot_learning_curves(runs, out)
        plot_dataset_returns(datasets, table, out)
        plot_performance_profiles(scores, out)
    return table
