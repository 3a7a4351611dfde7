"""``reproduce --search TRIALS``: a hyperparameter search per dataset level and searched
method before the final seeds, and the tuned rows trained at what each search chose.

For each level and each searched method (:func:`searched_methods`; default
:data:`DEFAULT_SEARCHED`: the transformer methods ``dt`` and ``qt`` and the d3rlpy reference
rows ``iql``, ``mlp-bc``, ``pct-bc``, those among the rows run), one Optuna study of ``TRIALS``
trials at the preset's budget: the preset's training config of the method (its steps, batch,
the reference rows' updates), the method's whole search space (``Method.search_space``; a
reference row's :data:`offline_dt.study.reference.REFERENCE_SPACES`), TPE sampling, median
pruning on :data:`CURVE_POINTS` learning-curve points of the preset's ``hook_episodes``
validation episodes, and each trial scored on the preset's validation episodes
(``EvalConfig.validation_episodes``) of one evaluation seed. A transformer row's study is
:func:`offline_dt.study.search.search`, a reference row's
:func:`offline_dt.study.reference_search.reference_search`: the same study, objective and
episodes for both.

Every trial trains and validates with :data:`SEARCH_SEED`, a seed no preset reports, so the
tuned rows' seeds are fresh training runs at the chosen parameters: no trial's luck on its
own validation episodes is carried into the table. The tuned row ``<method>-tuned`` then
trains the preset's seeds at the best trial's parameters (over the preset's config; without
the preset's ``method_candidates``, which its search replaces) and is evaluated like every
row, on the test episodes; the tables call it ``<method> (tuned)``.

Layout: the study of a row lives beside its seeds, in the run root, so a killed reproduce
continues its search where it stopped (SQLite storage, Optuna heartbeats: a trial killed
mid-way is retried, in its own directory)::

    runs/<preset>/<env>/<dataset>/<method>-tuned/search/   study.db, trials/, best.json, ...
    runs/<preset>/<env>/<dataset>/<method>-tuned/seed<k>/  the tuned row's runs

A level of ``reproduce(overwrite=...)`` loses its studies (its data changed). A rerun with
the same ``TRIALS`` finds each study complete and trains no trial; a larger ``TRIALS``
continues it, and a tuned row whose best parameters moved is trained again.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offline_dt.evaluation.evaluate import EvalConfig
from offline_dt.study.jobs import (
    BASELINES,
    preset_reference_config,
    preset_train_config,
    trained_methods,
)
from offline_dt.study.presets import Preset
from offline_dt.study.reference import REFERENCE_METHODS
from offline_dt.study.runs import TUNED_SUFFIX
from offline_dt.study.search_report import SearchResult

log = logging.getLogger(__name__)

#: Searched by default (those among the rows run): the transformer methods and the rows they
#: are compared with.
DEFAULT_SEARCHED = ("dt", "qt", *REFERENCE_METHODS)
#: The training and evaluation seed of every trial (no preset reports it).
SEARCH_SEED = 1000
#: Learning-curve points per trial, what the median pruner reads.
CURVE_POINTS = 4
STUDY_DIR = "search"


def searched_methods(search_methods: Sequence[str] | None, methods: Sequence[str]
                     ) -> list[str]:
    """The methods a ``reproduce --search`` searches: ``search_methods`` (checked), or
    :data:`DEFAULT_SEARCHED` among ``methods`` (the rows run).

    Raises:
        ValueError: a named method that is not among ``methods``, is a baseline, or has no
            search space.
    """
    if search_methods is None:
        return [m for m in DEFAULT_SEARCHED if m in methods]
    names = list(dict.fromkeys(search_methods))
    searchable = [*trained_methods(), *REFERENCE_METHODS]
    bad = [m for m in names if m in BASELINES or m not in searchable]
    if bad:
        raise ValueError(f"search_methods: {bad} cannot be searched (baselines train nothing); "
                         f"choose from {searchable}")
    missing = [m for m in names if m not in methods]
    if missing:
        raise ValueError(f"search_methods: {missing} are not among the rows run ({list(methods)}"
                         f"); a tuned row is reported beside its untuned one")
    return names


def study_dir(root: Path, preset: str, env_id: str, dataset: str | Path, method: str) -> Path:
    """``<root>/runs/<preset>/<env>/<dataset stem>/<method>-tuned/search``."""
    return (Path(root) / "runs" / preset / env_id / Path(dataset).stem
            / f"{method}{TUNED_SUFFIX}" / STUDY_DIR)


def _validation_episodes(p: Preset) -> int:
    return int(p.evaluate.get("validation_episodes", EvalConfig.validation_episodes))


def study_config(p: Preset, method: str, dataset: str, env_id: str, device: str,
                 out: Path, trials: int, workers: int) -> Any:
    """The study of ``method`` on ``dataset`` at the preset's budget (module docstring): a
    :class:`~offline_dt.study.search.SearchConfig` for a method of the training loop, a
    :class:`~offline_dt.study.reference_search.ReferenceSearchConfig` for a reference row."""
    common = {"study_dir": out, "trials": trials, "workers": workers,
              "study_name": f"{env_id}/{Path(dataset).stem}/{method}",
              "validation_episodes": _validation_episodes(p)}
    if method in REFERENCE_METHODS:
        from offline_dt.study.reference_search import ReferenceSearchConfig

        ref = preset_reference_config(p, dataset, env_id, method, SEARCH_SEED, device,
                                      out / "base")
        return ReferenceSearchConfig(reference=ref, curve_points=min(CURVE_POINTS, ref.steps),
                                     curve_episodes=p.hook_episodes, **common)
    import dataclasses

    from offline_dt.study.search import SearchConfig

    train = preset_train_config(p, dataset, env_id, method, SEARCH_SEED, device, out / "base")
    # A trial is scored on its last checkpoint; kept intermediate ones would only fill disk.
    train = dataclasses.replace(train, keep_checkpoints=False)
    return SearchConfig(train=train, curve_points=min(CURVE_POINTS, train.steps), **common)


def run_study_of(cfg: Any) -> SearchResult:
    """Run (or continue) one study of :func:`study_config`.

    Raises:
        RuntimeError: the study holds no complete trial (nothing to choose).
    """
    from offline_dt.study.reference_search import ReferenceSearchConfig, reference_search
    from offline_dt.study.search import search

    res = reference_search(cfg) if isinstance(cfg, ReferenceSearchConfig) else search(cfg)
    if res.best_value is None:
        raise RuntimeError(f"search {cfg.resolved_study_name()}: no trial completed "
                           f"({res.pruned} pruned, {res.failed} failed); see "
                           f"{res.study_dir / 'trials.md'}")
    return res


def search_stage(p: Preset, env_id: str, root: Path, device: str, paths: dict[str, Path],
                 methods: Sequence[str], trials: int, workers: int,
                 fresh_levels: Sequence[str] = ()) -> dict[tuple[str, str], dict[str, Any]]:
    """Every study of a ``reproduce --search`` (level × method; those of ``fresh_levels``
    deleted first), in this order: (level, method) → the best trial's parameters."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for level, dataset in paths.items():
        for method in methods:
            out = study_dir(root, p.name, env_id, dataset, method)
            if level in fresh_levels and out.exists():
                shutil.rmtree(out)  # trials of the old data
            t = time.perf_counter()
            res = run_study_of(study_config(p, method, str(dataset), env_id, device, out,
                                            trials, workers))
            log.info("reproduce: search %s on %s: best %.2f (validation) at %s; %d complete, "
                     "%d pruned, %.1fs", method, Path(dataset).stem, res.best_value,
                     res.best_params, res.complete, res.pruned, time.perf_counter() - t)
            best[(level, method)] = dict(res.best_params)
    return best

