"""``report``: the results tables and plots, read from run directories (no rollouts are
recomputed).

What it writes into ``out_dir``, and which module owns each:

* ``results.csv``: one row per env × dataset × method (:func:`offline_dt.study.tables.
  results_table`, columns :data:`offline_dt.study.tables.COLUMNS`);
* ``run_scores.csv``: one row per run (:func:`offline_dt.study.runs.run_scores`);
* ``characteristics.csv``: per env and dataset, TQ, unique state-action bins and SACo, with
  the best method (:func:`offline_dt.study.characteristics.characteristics_table`), also a
  section of ``results.md`` and the plot ``characteristics_<env>.png``;
* ``aggregates.csv``: per env and method over the env's datasets, IQM and probability of
  improvement over ``dt`` with stratified bootstrap intervals
  (:func:`offline_dt.study.statistics.aggregate_table`);
* ``results.md`` (also printed): per env the wide table, the notes under it
  (:mod:`offline_dt.study.notes`), the training budget of every cell and the aggregates
  (:func:`offline_dt.study.tables.markdown_report`);
* ``parameters.csv`` and a ``results.md`` section, where tuned rows have studies beside them
  (``reproduce --search``): the parameters each search chose per dataset, what it searched
  and its trials (:mod:`offline_dt.study.parameters`);
* the plots of :mod:`offline_dt.study.plots`: ``learning_curves_<env>.png``,
  ``dataset_returns_<env>.png`` and ``performance_profile_<env>.png``.

The runs are read by :mod:`offline_dt.study.runs` (layout ``<runs_root>/<env>/<dataset>/
<method>/seed<k>/eval.json``); the unit of uncertainty is the training run
(:mod:`offline_dt.study.statistics`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from offline_dt.data.atomic import atomic_path
from offline_dt.study.characteristics import (
    characteristics_markdown,
    characteristics_table,
    plot_characteristics,
)
from offline_dt.study.parameters import find_studies, parameters_markdown, parameters_table
from offline_dt.study.plots import (
    plot_dataset_returns,
    plot_learning_curves,
    plot_performance_profiles,
)
from offline_dt.study.runs import dataset_returns, find_runs, no_runs_error, run_scores
from offline_dt.study.statistics import aggregate_table
from offline_dt.study.tables import markdown_report, results_table


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        frame.to_csv(tmp, index=False)


def report(runs_root: str | os.PathLike, out_dir: str | os.PathLike,
           plots: bool = True, quiet: bool = False) -> pd.DataFrame:
    """Build the results tables from ``runs_root`` and write them (and the plots) to
    ``out_dir``: ``results.csv``, ``run_scores.csv``, ``aggregates.csv``, ``results.md``.

    Returns:
        The long table, columns exactly :data:`offline_dt.study.tables.COLUMNS`, one row per
        (env, dataset, method), ``data`` rows included.

    Raises:
        FileNotFoundError: no ``eval.json`` under ``runs_root``.
        ValueError: an unreadable ``eval.json`` or ``config.json`` (named).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(runs_root)
    if not runs:
        raise no_runs_error(runs_root)
    datasets = dataset_returns(runs)
    scores = run_scores(runs)
    table = results_table(runs, datasets)
    aggregates = aggregate_table(scores)
    _write_csv(table, out / "results.csv")
    _write_csv(scores, out / "run_scores.csv")
    _write_csv(aggregates, out / "aggregates.csv")
    chars = characteristics_table(datasets, table)
    _write_csv(chars, out / "characteristics.csv")
    md = markdown_report(table, aggregates, runs)
    studies = find_studies(runs_root)
    if studies:
        params = parameters_table(studies)
        _write_csv(params, out / "parameters.csv")
        md += "".join("\n" + parameters_markdown(params, studies, env)
                      for env in dict.fromkeys(params["env"]))
    md += "".join("\n" + characteristics_markdown(chars, env) for env in dict.fromkeys(
        chars["env"]))
    _write_text(out / "results.md", md)
    if not quiet:
        print(md, end="")
    if plots:
        plot_learning_curves(runs, out)
        plot_dataset_returns(datasets, table, out)
        plot_performance_profiles(scores, out)
        plot_characteristics(chars, out)
    return table
