"""``reproduce``: the whole study in one call — generate → train → evaluate → report.

Rows: the methods of the one training loop, the field's reference rows trained by d3rlpy and
the baselines (:mod:`offline_dt.study.jobs`); the budget is a preset
(:mod:`offline_dt.study.presets`: ``smoke``, ``quick``, ``paper``, ...).

Layout under ``root`` (default ``data``)::

    d4rl/, minari/, agents/          datasets and behaviour agent (the preset's data_dir first:
                                     smoke/d4rl, quick/d4rl, ...)
    runs/<preset>/<env>/<dataset>/<method>/seed<k>/   config.json, eval.json (+ training files)
    runs/<preset>/<env>/<dataset>/<method>-tuned/     with --search: search/ (the study) and
                                                      seed<k>/ (the tuned row)
    reports/<env>/<preset>/           results.csv/.md, plots, timings.json, preset.json

Search (``reproduce(search=TRIALS)``, :mod:`offline_dt.study.tuning`): before the runs, a
study of ``TRIALS`` trials per level and searched method (``search_methods``; default the
transformer methods dt and qt and the d3rlpy reference rows, among the rows run) at the
preset's budget on validation episodes, then the preset's seeds of each searched method at
its study's best parameters as rows of their own (``qt (tuned)``), beside the untuned ones,
and the chosen parameters per dataset in the report.

Every run directory holds its resolved config (``config.json``); a run whose ``eval.json``
exists, whose config matches and whose test episodes are today's
(:data:`offline_dt.study.reuse.EPISODE_SEEDS`) is reused on rerun. Every method is evaluated
on the same test episodes: for training seed ``k`` evaluation seed ``k`` (episode ``i``
resets with ``10**12 + k * 100_000 + i``, ``offline_dt.envs.seeds.evaluation_seed``).
Nothing is chosen on them: a checkpoint's target return and inference settings are chosen on
validation episodes (``2 * 10**12 + k * 100_000 + i``,
``offline_dt.evaluation.evaluate.evaluate_checkpoint``), and the learning-curve hook rolls out
on validation episodes of its own (indices from 50000). The behaviour baseline
(:mod:`offline_dt.study.behaviour`) runs only on the levels one policy wrote; the replay
levels are compared with the dataset's own episode returns (its ``data`` row) instead.

Workers: ``reproduce(workers=N)`` trains and evaluates N runs at once, each in its own process
with ``cpu_count // N`` torch threads (1: all in this process). Small DTs use a core poorly, so
on a 2-core CPU two single-threaded workers finish the study sooner than one two-threaded
process. Every run is seeded the same whatever ``workers`` is (the thread count can change
float rounding, nothing else). Stage seconds in ``timings.json`` are then summed over workers
(CPU-side time), while ``total`` stays wall time.

Intervals: the ``±`` of the per-run log line and the ``ci95`` of ``eval.json`` are
episode-level (``1.96 std / √episodes`` over one run's test episodes: evaluation noise only);
the report adds the run-level intervals (over training seeds).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from offline_dt.data.atomic import writable_directory
from offline_dt.data.d4rl import LEVELS
from offline_dt.study.jobs import JobSpec, map_jobs, reproduce_jobs, reproduce_methods
from offline_dt.study.presets import Preset, apply_overrides, get_preset
from offline_dt.study.report import report
from offline_dt.study.runs import TUNED_SUFFIX
from offline_dt.study.tuning import search_stage, searched_methods
from offline_dt.training.configs import save_json
from offline_dt.training.device import resolve_device

log = logging.getLogger(__name__)


class Timer:
    """Wall seconds per stage and per run, written to ``timings.json``."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.runs: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def add(self, stage: str, seconds: float, run: str | None = None, reused: bool = False
            ) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        if run is not None:
            self.runs.append({"stage": stage, "run": run, "seconds": round(seconds, 3),
                              "reused": reused})

    def to_dict(self) -> dict[str, Any]:
        return {"stages": {k: round(v, 3) for k, v in self.stages.items()},
                "total": round(time.perf_counter() - self.t0, 3), "runs": self.runs}


@dataclass(frozen=True)
class Plan:
    """A reproduce call's checked arguments (:func:`plan`)."""

    preset: Preset
    env_id: str
    root: Path
    device: str
    levels: list[str]
    seeds: list[int]
    methods: list[str]
    workers: int
    overwrite: tuple[str, ...]
    search: int = 0
    searched: tuple[str, ...] = ()

    @property
    def report_dir(self) -> Path:
        return self.root / "reports" / self.env_id / self.preset.name


def _checked_levels(levels: Sequence[str] | None, env_id: str) -> list[str]:
    """``levels``, or by default the six of the SB3 behaviour agent or, for an env of a
    scripted recipe (PointMaze, MiniGrid: ``datagen.scripted.recipe_for``), the recipe's."""
    from datagen.scripted import recipe_for

    recipe = recipe_for(env_id)
    known = recipe.levels if recipe is not None else LEVELS
    levels = list(levels or known)
    unknown = [lv for lv in levels if lv not in known]
    if unknown:
        what = f"recipe {recipe.name} of {env_id} builds" if recipe else "choose from"
        raise ValueError(f"levels: unknown {unknown}; {what} {list(known)}")
    return levels


def plan(env_id: str, preset: str, root: str | Path, device: str, levels: Sequence[str] | None,
         seeds: Sequence[int] | None, workers: int, methods: Sequence[str] | None,
         overwrite: Sequence[str], search: int = 0,
         search_methods: Sequence[str] | None = None) -> Plan:
    """Check :func:`reproduce`'s arguments, then that ``root`` can be written, before any slow
    work; resolve the defaults (levels, the preset's seeds, the methods, the device).

    Raises:
        ValueError: unknown preset, level or method, ``workers < 1``, ``search < 0``, a
            searched method that cannot be searched or is not run
            (:func:`offline_dt.study.tuning.searched_methods`), an ``overwrite`` level not in
            ``levels``, or a ``root`` that cannot be written (the path and why).
        offline_dt.study.d3rlpy_io.MissingDependencyError: a reference row named without
            d3rlpy.
    """
    p = get_preset(preset)
    levels = _checked_levels(levels, env_id)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, found {workers}")
    stray = [lv for lv in overwrite if lv not in levels]
    if stray:
        raise ValueError(f"overwrite: {stray} are not among the levels run ({levels})")
    if search < 0:
        raise ValueError(f"search must be >= 0 (trials per study; 0: no search), found "
                         f"{search}")
    chosen = reproduce_methods(methods, env_id, p.methods)
    searched = searched_methods(search_methods, chosen) if search else []
    root = writable_directory(root, "reproduce root")
    return Plan(preset=p, env_id=env_id, root=root,
                device=str(resolve_device(device)) if device == "auto" else device,
                levels=levels, seeds=list(seeds if seeds is not None else p.seeds),
                methods=chosen, workers=workers, overwrite=tuple(overwrite),
                search=search, searched=tuple(searched))


def _generate_stage(plan: Plan, timer: Timer) -> tuple[Any, Any, dict[str, Path], dict[str, dict]]:
    """Generate (or reuse) the levels' datasets, regenerating those of ``plan.overwrite``;
    return (GenerateConfig, GenerateResult, level → HDF5 path, level → dataset metadata)."""
    from datagen.config import GenerateConfig
    from datagen.generate import generate
    from offline_dt.data import read_hdf5

    p = plan.preset
    data_root = plan.root / p.data_dir if p.data_dir else plan.root
    gen_levels = list(plan.levels)
    if "medium-expert" in gen_levels:
        gen_levels += [lv for lv in ("medium", "expert") if lv not in gen_levels]
    gcfg = apply_overrides(GenerateConfig(
        env_id=plan.env_id, levels=[lv for lv in LEVELS if lv in gen_levels],
        out_dir=data_root / "d4rl", minari_root=data_root / "minari",
        agents_dir=data_root / "agents", device=plan.device,
        overwrite=list(plan.overwrite) or False), p.generate, "preset generate")
    log.info("reproduce %s %s: stage generate (%s)", plan.env_id, p.name,
             ", ".join(gcfg.levels))
    t = time.perf_counter()
    gen = generate(gcfg)
    timer.add("generate", time.perf_counter() - t)
    log.info("reproduce: stage generate done in %.1fs", timer.stages["generate"])
    paths = {lv: Path(gen.paths[lv]["hdf5"]) for lv in gcfg.levels}
    metas = {lv: read_hdf5(paths[lv]).metadata for lv in gcfg.levels}
    return gcfg, gen, paths, metas


def job_specs(plan: Plan, paths: dict[str, Path], metas: dict[str, dict],
              tuned: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[JobSpec]:
    """One :class:`~offline_dt.study.jobs.JobSpec` per run of
    :func:`~offline_dt.study.jobs.reproduce_jobs`, then one per seed of each tuned row
    (``tuned``: (level, method) → its study's best parameters; method ``<method>-tuned``),
    those on an ``overwrite`` level fresh."""
    jobs: list[tuple[str, int, str, dict | None]] = [
        (lv, s, m, None) for lv, s, m in reproduce_jobs(plan.levels, plan.seeds, plan.methods)]
    jobs += [(lv, s, m + TUNED_SUFFIX, params) for (lv, m), params in (tuned or {}).items()
             for s in plan.seeds]
    return [JobSpec(env_id=plan.env_id, preset=plan.preset.name, root=str(plan.root),
                    device=plan.device, level=lv, seed=s, method=m, dataset=str(paths[lv]),
                    metas=metas, label=f"[{n}/{len(jobs)}] {m} {paths[lv].stem} seed{s}",
                    fresh=lv in plan.overwrite, params=params)
            for n, (lv, s, m, params) in enumerate(jobs, 1)]


def _search_stage(plan: Plan, paths: dict[str, Path], timer: Timer
                  ) -> dict[tuple[str, str], dict[str, Any]]:
    """The studies of ``plan.search`` trials (:func:`offline_dt.study.tuning.search_stage`;
    none without a search): (level, method) → best parameters."""
    if not plan.search or not plan.searched:
        return {}
    log.info("reproduce %s %s: stage search (%d trials per study; %s on %s)", plan.env_id,
             plan.preset.name, plan.search, ", ".join(plan.searched), ", ".join(plan.levels))
    t = time.perf_counter()
    best = search_stage(plan.preset, plan.env_id, plan.root, plan.device,
                        {lv: paths[lv] for lv in plan.levels}, plan.searched, plan.search,
                        plan.workers, plan.overwrite)
    timer.add("search", time.perf_counter() - t)
    return best


def _run_jobs(specs: Sequence[JobSpec], workers: int, timer: Timer, progress: bool,
              desc: str) -> None:
    """Run every job (in ``workers`` processes), recording its timings in ``timer``."""
    bar = tqdm(total=len(specs), desc=desc, unit="run",
               disable=not progress or not sys.stderr.isatty())
    for out in map_jobs(specs, workers):
        for stage, secs, run, reused in out["timings"]:
            timer.add(stage, secs, run=run, reused=reused)
        bar.update(1)
        ev = out["eval"]
        log.info("reproduce %s: mean return %.1f ± %.1f (± = episode-level 95%% CI of this "
                 "run, not over training runs; %s, %.1fs)", out["label"], ev["mean_return"],
                 ev["ci95"], "reused" if out["took"] == 0.0 else "done", out["took"])
    bar.close()


def _report_stage(plan: Plan, timer: Timer, progress: bool) -> pd.DataFrame:
    """:func:`offline_dt.study.report.report` of the preset's runs into ``plan.report_dir``."""
    t = time.perf_counter()
    table = report(plan.root / "runs" / plan.preset.name, plan.report_dir, quiet=not progress)
    timer.add("report", time.perf_counter() - t)
    return table


def _write_records(plan: Plan, timer: Timer, gcfg: Any, gen: Any) -> dict[str, Any]:
    """``timings.json`` (wall seconds per stage and per run) and ``preset.json`` (the preset
    and the resolved GenerateConfig) beside the report; returns the timings."""
    timings = {"env_id": plan.env_id, "preset": plan.preset.name, "seeds": plan.seeds,
               "levels": plan.levels, "methods": plan.methods, "device": plan.device,
               "workers": plan.workers, "search": plan.search,
               "searched": list(plan.searched), **timer.to_dict(),
               "generate_stages": {k: round(v, 3) for k, v in gen.stage_seconds.items()}}
    save_json(timings, plan.report_dir / "timings.json")
    save_json({"preset": plan.preset, "generate_config": gcfg}, plan.report_dir / "preset.json")
    return timings


def preset_datasets(env_id: str, preset: str, root: str | Path, device: str = "auto",
                    levels: Sequence[str] | None = None) -> dict[str, Path]:
    """The generate stage of :func:`reproduce` alone: the preset's datasets of ``levels``
    (default all six, or a scripted recipe's) under ``root``, generated as ``reproduce``
    generates them (same ``GenerateConfig``, seeds and paths) or reused when already there.

    Returns:
        level → HDF5 path (the Minari copy beside it, under ``<root>/.../minari``).

    Raises:
        ValueError: see :func:`plan`.
    """
    pl = plan(env_id, preset, root, device, levels, None, 1, ["random"], ())  # no d3rlpy check
    return _generate_stage(pl, Timer())[2]


def reproduce(
    env_id: str = "Pendulum-v1",
    preset: str = "quick",
    root: str | Path = Path("data"),
    device: str = "auto",
    *,
    levels: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    workers: int = 1,
    methods: Sequence[str] | None = None,
    overwrite: Sequence[str] = (),
    search: int = 0,
    search_methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The whole study: generate → train dt, bc (and qt) and the d3rlpy reference rows (iql,
    mlp-bc, pct-bc) per level and seed → evaluate them, random and (on the levels one policy
    wrote) behaviour on the same test episodes → report.

    Args:
        env_id: Gymnasium id (the datagen levels need a trainable behaviour agent).
        preset: a name in :data:`offline_dt.study.presets.PRESETS`.
        root: output root (datasets, runs, reports; see the module docstring), writable.
        device: torch device for training, evaluation and the behaviour agent.
        levels: dataset levels (default: all six; for an env of a scripted recipe, its
            levels: PointMaze random and expert, MiniGrid random, medium and expert).
        seeds: training seeds (default: the preset's).
        progress: a tqdm bar over the runs (TTY only) and INFO log lines per run.
        workers: runs at once, one process each (module docstring; 1: this process).
        methods: which rows to run (default: the preset's ``methods``, else all; see
            :func:`offline_dt.study.jobs.reproduce_methods`). Runs of other methods already
            under ``root`` are reported too.
        overwrite: levels (of ``levels``) whose datasets are regenerated (behaviour agent
            reused) and whose trained, reference and searched runs are redone (baselines,
            which do not read the data, are kept).
        search: trials per study of a search before the runs (0: none; see the module
            docstring): one study per level and searched method, whose best parameters train
            the preset's seeds as a tuned row.
        search_methods: the methods searched (default dt, qt and the reference rows, those
            among ``methods``); each must be a trained method or a reference row that is run.

    Returns:
        The results table (also ``<root>/reports/<env>/<preset>/results.csv``; ``timings.json``
        beside it: wall seconds per stage and per run).

    Raises:
        ValueError, offline_dt.study.d3rlpy_io.MissingDependencyError: see :func:`plan`.
    """
    pl = plan(env_id, preset, root, device, levels, seeds, workers, methods, overwrite, search,
              search_methods)
    gcfg, gen, paths, metas = _generate_stage(pl, timer := Timer())
    tuned = _search_stage(pl, paths, timer)
    _run_jobs(job_specs(pl, paths, metas, tuned), pl.workers, timer, progress,
              f"reproduce {pl.preset.name}")
    table = _report_stage(pl, timer, progress)
    timings = _write_records(pl, timer, gcfg, gen)
    log.info("reproduce %s %s: done in %.1fs; report in %s", env_id, pl.preset.name,
             timings["total"], pl.report_dir)
    return table
