"""The study layer: presets and the reproduce pipeline, reference rows and the report.

Modules, each the owner of one thing:

* ``presets``: :class:`Preset`, :data:`PRESETS` (the named budgets) and their overrides;
* ``pipeline``: :func:`reproduce` and its stages (generate → runs → report);
* ``jobs``: which (level, seed, method) runs a study makes, and running one;
* ``reuse``: training and evaluating one run, or reusing what a previous call finished;
* ``behaviour``: the behaviour baseline's policy per level;
* ``reference``: the d3rlpy reference rows (iql, mlp-bc, pct-bc); ``d3rlpy_io``: d3rlpy's
  import, our dataset as its replay buffer, its networks' weights;
* ``runs``: run directories read into records and frames, and their order;
* ``statistics``: IQM, bootstrap intervals, probability of improvement, aggregates;
* ``tables``, ``notes``: ``results.csv`` and the Markdown tables, the notes under them;
* ``plots``: learning curves, dataset returns, performance profile;
* ``report``: ``report.report()``, which writes all of the above from run directories.

The names of :data:`__all__` are imported from here on first use (PEP 562), so importing one
module of the layer (e.g. ``offline_dt.study.report``) does not import the others. The report
entry point is ``from offline_dt.study.report import report``: it is not re-exported here,
where its name is the module's (a package attribute cannot be both).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name → the module of this package that owns it.
_OWNERS = {
    "reproduce": "pipeline",
    "Preset": "presets",
    "PRESETS": "presets",
    "get_preset": "presets",
    "all_methods": "jobs",
    "train_and_evaluate": "reuse",
    "ReferenceConfig": "reference",
    "run_reference": "reference",
    "MissingDependencyError": "d3rlpy_io",
    "find_runs": "runs",
    "run_scores": "runs",
    "results_table": "tables",
    "env_markdown": "tables",
    "to_markdown": "tables",
    "aggregate_table": "statistics",
}
__all__ = [
    "MissingDependencyError", "PRESETS", "Preset", "ReferenceConfig", "aggregate_table",
    "all_methods", "env_markdown", "find_runs", "get_preset", "reproduce", "results_table",
    "run_reference", "run_scores", "to_markdown", "train_and_evaluate",
]

if TYPE_CHECKING:
    from offline_dt.study.d3rlpy_io import MissingDependencyError
    from offline_dt.study.jobs import all_methods
    from offline_dt.study.pipeline import reproduce
    from offline_dt.study.presets import PRESETS, Preset, get_preset
    from offline_dt.study.reference import ReferenceConfig, run_reference
    from offline_dt.study.reuse import train_and_evaluate
    from offline_dt.study.runs import find_runs, run_scores
    from offline_dt.study.statistics import aggregate_table
    from offline_dt.study.tables import env_markdown, results_table, to_markdown


def __getattr__(name: str) -> Any:
    if name not in _OWNERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_OWNERS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
