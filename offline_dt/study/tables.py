"""The results tables: ``results.csv`` (long) and the Markdown of ``results.md`` (wide).

``results.csv`` (long and tidy: one row per env × dataset × method, columns :data:`COLUMNS`,
:func:`results_table`):

* ``seeds`` and ``runs``: the number of runs (0 for ``data``); ``episodes``: test episodes of
  all runs together (``data``: episodes in the file).
* ``mean_return``, ``std_return`` (population std), ``max_return``: over all those episodes;
  ``mean_return`` is also the mean of the run scores when every run has the same number of
  episodes (as in ``reproduce``). ``ci95 = 1.96 std / √episodes`` is the *episode-level*
  interval: it measures evaluation noise only, not the spread between training runs.
* ``normalized_score``: the D4RL score of ``mean_return`` with the reference scores recorded
  in ``eval.json`` (``data``: those of the runs on that dataset, else the file's metadata).
* ``iqm_return``, ``run_ci95_low``/``run_ci95_high`` and their normalized twins
  (:data:`~offline_dt.study.statistics.RUN_STAT_COLUMNS`): the run-level statistics of
  :func:`offline_dt.study.statistics.run_statistics`; NaN with fewer than two runs.
* ``updates``, ``transitions_per_update``, ``transitions``
  (:data:`~offline_dt.study.budget.BUDGET_COLUMNS`): each run's training budget from its
  ``config.json`` (:func:`offline_dt.study.budget.run_budget`: a DT update sees batch × K
  transitions, a d3rlpy update its batch), the mean over the row's runs (they share a
  config); NaN for the baselines and ``data``.

Methods: ``data`` is the episode returns stored in the dataset file itself
(:func:`offline_dt.study.runs.dataset_returns`); ``random``, ``behaviour``, the d3rlpy
reference rows (``mlp-bc``, ``pct-bc``, ``iql``), ``bc``, ``dt``, ``qt`` and any other method
directory are tabulated as found (:data:`~offline_dt.study.runs.METHODS` gives the column
order, others follow by name).

``results.md`` (:func:`markdown_report`): per env, the wide table (rows datasets, columns
``data`` and the methods; each cell ``mean [low, high] (normalized score)``, bold where
:func:`best_method` finds a method whose run-level interval lies entirely above every other
method's), the notes of :mod:`offline_dt.study.notes`, the training budget of every cell (the
same layout, ``updates / transitions``, :func:`budget_table`), and the aggregates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from offline_dt.study.budget import BUDGET_COLUMNS, format_budget, run_budget
from offline_dt.study.notes import (
    AGGREGATE_NOTES,
    BUDGET_NOTE,
    REPLAY_NOTE,
    TABLE_NOTES,
    methods_note,
    selection_note,
)
from offline_dt.study.runs import (
    NAN,
    REPLAY_LEVELS,
    dataset_level,
    method_key,
    run_scores,
    score,
    sort_key,
)
from offline_dt.study.statistics import REFERENCE_METHOD, RUN_STAT_COLUMNS, pool, run_statistics

COLUMNS = ["env", "dataset", "method", "seeds", "episodes", "mean_return", "std_return", "ci95",
           "normalized_score", "max_return", "runs", *RUN_STAT_COLUMNS, *BUDGET_COLUMNS]


def _method_row(key: tuple[str, str, str], group: list[dict[str, Any]],
                scores: pd.DataFrame) -> dict[str, Any]:
    env, dataset, method = key
    stats = pool([r["eval"] for r in group])
    ev = group[0]["eval"]
    budgets = pd.DataFrame([run_budget(r["config"]) for r in group], columns=BUDGET_COLUMNS)
    return {"env": env, "dataset": dataset, "method": method, "seeds": len(group), **stats,
            "normalized_score": score(stats["mean_return"], ev.get("ref_min_score"),
                                       ev.get("ref_max_score")),
            **run_statistics(scores["mean_return"].to_numpy(np.float64),
                             scores["normalized_score"].to_numpy(np.float64)),
            **budgets.mean().to_dict()}


def data_row(env: str, dataset: str, returns: Sequence[float] | np.ndarray,
             ref_min: float | None = None, ref_max: float | None = None) -> dict[str, Any]:
    """The ``data`` row: the episode returns stored in the dataset (mean, population std, max,
    normalized score); no runs, so ``seeds``/``runs`` 0 and the intervals NaN."""
    r = np.asarray(returns, np.float64)
    mean = float(r.mean()) if r.size else NAN
    return {"env": env, "dataset": dataset, "method": "data", "seeds": 0,
            "episodes": int(r.size), "mean_return": mean,
            "std_return": float(r.std()) if r.size else NAN, "ci95": NAN,
            "normalized_score": score(mean, ref_min, ref_max),
            "max_return": float(r.max()) if r.size else NAN, "runs": 0,
            **dict.fromkeys(RUN_STAT_COLUMNS, NAN), **dict.fromkeys(BUDGET_COLUMNS, NAN)}


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
    rows.sort(key=lambda row: sort_key(row["env"], row["dataset"], row["method"]))
    table = pd.DataFrame(rows, columns=COLUMNS)
    floats = [c for c in COLUMNS[5:] if c != "runs"]
    table[floats] = table[floats].astype(float)
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
    return sorted(table["method"].unique(), key=method_key)


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


def budget_table(table: pd.DataFrame, env: str) -> pd.DataFrame:
    """The wide table's layout (rows = datasets of ``env``, columns = ``dataset`` and
    :func:`table_methods` less ``data``), each cell a run's training budget ``updates /
    transitions`` (:func:`offline_dt.study.budget.format_budget`), ``n/a`` where a method has
    no row or trains nothing on the data."""
    t = table[table["env"] == env]
    methods = [m for m in table_methods(t) if m != "data"]
    rows = []
    for ds in dict.fromkeys(t["dataset"]):
        sub = t[t["dataset"] == ds]
        cells = {r.method: format_budget(r.updates, r.transitions)
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
    parts += [to_markdown(budget_table(table, env)), BUDGET_NOTE]
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
