"""Statistics over training runs: IQM, bootstrap intervals, probability of improvement.

The unit of uncertainty is the training run (:mod:`offline_dt.study.runs`). Over the runs of
one (env, dataset, method) the statistics follow rliable's definitions (Agarwal et al. 2021,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice", NeurIPS), computed
with ``scipy.stats`` (``trim_mean``, ``bootstrap``) because rliable 1.2.0 does not work with
today's stack (it pins ``arch<8``, and arch 7.2 fails to import under pandas 3.1); switch to
it when a release does.

* :func:`pool`: the episode-level statistics of several evaluations pooled (``ci95 = 1.96 std
  / √episodes`` measures evaluation noise only, not the spread between training runs).
* :func:`run_statistics`: the IQM of the run scores (``trim_mean(x, 0.25)``) and the run-level
  95% percentile-bootstrap interval of the mean over runs (:data:`BOOTSTRAP_RESAMPLES`
  resamples of the runs, seeded, so every table is deterministic); NaN below two runs.
* :func:`aggregate_table` (columns :data:`AGGREGATE_COLUMNS`), per env and method over the
  env's datasets: the IQM of the normalized scores of all runs with its stratified bootstrap
  interval (runs resampled within each dataset), and the probability of improvement over
  :data:`REFERENCE_METHOD`, P(method > dt): per dataset the fraction of (method run, dt run)
  pairs in which the method's run scores higher (ties count 1/2), averaged over the datasets
  both have, with a stratified bootstrap interval.
* :func:`performance_profile`: rliable's score distribution (fraction of runs above τ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import bootstrap, trim_mean

from offline_dt.study.runs import NAN, headline, method_key

#: Run-level statistics of a results row (NaN for ``data`` and below two runs).
RUN_STAT_COLUMNS = ["iqm_return", "run_ci95_low", "run_ci95_high", "iqm_normalized_score",
                    "run_ci95_low_normalized", "run_ci95_high_normalized"]
AGGREGATE_COLUMNS = ["env", "method", "datasets", "runs", "iqm_normalized_score",
                     "iqm_ci95_low", "iqm_ci95_high", "prob_improvement_over_dt",
                     "prob_improvement_ci95_low", "prob_improvement_ci95_high"]
#: The method every other one is compared with (probability of improvement).
REFERENCE_METHOD = "dt"
#: rliable's default number of bootstrap resamples; the seed makes every interval repeatable.
BOOTSTRAP_RESAMPLES = 50_000
BOOTSTRAP_SEED = 0


def pool(evals: list[dict[str, Any]]) -> dict[str, float]:
    """Pool the headline episodes of several evaluations: mean, population std, episode-level
    ci95, max and n.

    Uses the per-episode returns when ``eval.json`` has them, else the exact pooled moments
    from each evaluation's mean, std and episode count (and the largest recorded max).
    """
    heads = [headline(ev) for ev in evals]
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
        best = float(np.max([NAN if h.get("max") is None else h["max"] for h in heads]))
    return {"episodes": int(n), "mean_return": mean, "std_return": std,
            "ci95": 1.96 * std / math.sqrt(n) if n else NAN, "max_return": best}


def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean (rliable): the mean of the middle 50%, ``trim_mean(x, 0.25)``
    (``int(0.25 n)`` values cut from each end)."""
    x = np.asarray(scores, np.float64)
    return float(trim_mean(x, 0.25)) if x.size else NAN


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
    count ½, i.e. the Mann-Whitney U over n·m), averaged over the datasets.

    Raises:
        ValueError: ``xs`` and ``ys`` of different lengths, or empty.
    """
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
        return NAN, NAN
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


def by_dataset(scores: pd.DataFrame, method: str, column: str) -> dict[str, np.ndarray]:
    """``column`` of ``method``'s runs in a :func:`~offline_dt.study.runs.run_scores` frame,
    per dataset (in the frame's order), ``float64``."""
    s = scores[scores["method"] == method]
    return {ds: g[column].to_numpy(np.float64) for ds, g in s.groupby("dataset", sort=False)}


def _aggregate_row(env: str, scores: pd.DataFrame, method: str) -> dict[str, Any]:
    """IQM of the normalized scores over every dataset of ``env`` (stratified interval) and
    P(method > dt) on the returns, over the datasets both methods have."""
    mine = by_dataset(scores, method, "normalized_score")
    pooled = np.concatenate(list(mine.values()))
    lo, hi = bootstrap_ci(list(mine.values()), _iqm_statistic)
    row = {"env": env, "method": method, "datasets": len(mine), "runs": int(pooled.size),
           "iqm_normalized_score": iqm(pooled), "iqm_ci95_low": lo, "iqm_ci95_high": hi,
           "prob_improvement_over_dt": NAN, "prob_improvement_ci95_low": NAN,
           "prob_improvement_ci95_high": NAN}
    x = by_dataset(scores, method, "mean_return")
    y = by_dataset(scores, REFERENCE_METHOD, "mean_return")
    common = [ds for ds in x if ds in y]
    if method != REFERENCE_METHOD and common:
        xs, ys = [x[d] for d in common], [y[d] for d in common]
        lo, hi = bootstrap_ci(_interleave(xs, ys), _improvement_statistic)
        row.update(prob_improvement_over_dt=probability_of_improvement(xs, ys),
                   prob_improvement_ci95_low=lo, prob_improvement_ci95_high=hi)
    return row


def aggregate_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per env and method (:data:`AGGREGATE_COLUMNS`) from
    :func:`~offline_dt.study.runs.run_scores`: IQM of the normalized score with its stratified
    bootstrap interval, and the probability of improvement over ``dt`` (per dataset on
    returns, which orders runs as the normalized score does whenever the normalization is
    increasing) with its stratified interval."""
    rows = []
    for env, s in scores.groupby("env", sort=True):
        for method in sorted(s["method"].unique(), key=method_key):
            rows.append(_aggregate_row(str(env), s, method))
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


def performance_profile(scores_by_dataset: Sequence[np.ndarray], taus: np.ndarray
                        ) -> np.ndarray:
    """rliable's score distribution: for each τ the fraction of runs scoring above τ, per
    dataset, averaged over the datasets (the fraction of all runs when each dataset has as
    many)."""
    fractions = [(np.asarray(s, np.float64)[:, None] > taus[None, :]).mean(axis=0)
                 for s in scores_by_dataset]
    return np.mean(fractions, axis=0)
