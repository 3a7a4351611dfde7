"""The runs of a reproduce call: which (level, seed, method) runs it makes, and running one.

Rows: the methods of the one training loop (:func:`trained_methods`: the registry's offline
methods, ``dt``, ``bc``, ``qt``), the field's reference rows trained by d3rlpy (``iql``, ``mlp-bc``,
``pct-bc``; :mod:`offline_dt.study.reference`) and the baselines (:data:`BASELINES`:
``random``, ``behaviour``); :func:`reproduce_methods` checks a choice among them before any
work and :func:`reproduce_jobs` lists the runs.

A run (:class:`JobSpec`, picklable for worker processes) lives in
``<root>/runs/<preset>/<env>/<dataset>/<method>/seed<k>/`` (a tuned row's in
``<method>-tuned/seed<k>``, trained at its search's parameters over the preset's config, with
no ``method_candidates``: :mod:`offline_dt.study.tuning`) and is trained and evaluated, or
reused, by :func:`run_job` (the reuse rules of :mod:`offline_dt.study.reuse` and
:func:`offline_dt.study.reference.run_reference`); :func:`map_jobs` runs many, in this process
or in a spawn-context process pool. Every method is evaluated on the same test episodes: for
training seed ``k`` evaluation seed ``k``.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from offline_dt.envs.policies import RandomPolicy
from offline_dt.evaluation.curves import make_eval_hook
from offline_dt.evaluation.evaluate import EvalConfig
from offline_dt.methods.options import option_values
from offline_dt.study.behaviour import BEHAVIOUR_LEVELS, behaviour_policy
from offline_dt.study.presets import Preset, apply_overrides, get_preset
from offline_dt.study.reference import REFERENCE_METHODS
from offline_dt.study.reuse import EPISODE_SEEDS, evaluate_baseline, train_and_evaluate
from offline_dt.study.runs import TUNED_SUFFIX

log = logging.getLogger(__name__)

#: Evaluated only: the uniform random agent and the policy that wrote the data.
BASELINES = ("random", "behaviour")


def trained_methods() -> tuple[str, ...]:
    """The methods trained by the one training loop (``offline_dt.training.loop``) with the
    preset's budget: the registry's offline methods (``offline_dt.methods``: dt, bc, qt), in
    registration order."""
    from offline_dt.methods import method_names

    return tuple(method_names("offline"))


def all_methods() -> tuple[str, ...]:
    """Every method a reproduce run can include, in job order: trained, reference, baselines."""
    return (*trained_methods(), *REFERENCE_METHODS, *BASELINES)


def reproduce_jobs(levels: Sequence[str], seeds: Sequence[int],
                   methods: Sequence[str] | None = None) -> list[tuple[str, int, str]]:
    """(level, seed, method) of every run of :func:`~offline_dt.study.pipeline.reproduce`: the
    trained methods and the reference rows everywhere (longest jobs first), then the
    baselines: random everywhere, behaviour only on :data:`BEHAVIOUR_LEVELS`. ``methods``
    (default :func:`all_methods` less the methods that are not ``in_reproduce``) picks which;
    their order is :func:`all_methods`'."""
    from offline_dt.methods import METHODS

    chosen = set(methods) if methods is not None else {
        m for m in all_methods() if m not in METHODS or METHODS[m].in_reproduce}
    learned = [m for m in all_methods() if m in chosen and m not in BASELINES]
    jobs = [(lv, s, m) for lv in levels for s in seeds for m in learned]
    jobs += [(lv, s, m) for lv in levels for s in seeds for m in BASELINES
             if m in chosen and (m == "random" or lv in BEHAVIOUR_LEVELS)]
    return jobs


def reproduce_methods(methods: Sequence[str] | None, env_id: str,
                      default: Sequence[str] | None = None) -> list[str]:
    """The methods a reproduce run includes, checked before any work.

    ``methods`` None: ``default`` (a preset's ``methods``), or when that is None too
    :func:`all_methods` less the methods that are not ``in_reproduce`` (``tt``, ``mgdt``); from
    either the reference rows are left out when d3rlpy is not installed and ``iql`` when
    ``env_id`` has no Box action space (each with a warning). Named methods are all run, or
    refused here.

    Raises:
        ValueError: an unknown method (named or in ``default``), or ``iql`` named for an env
            without Box actions.
        offline_dt.study.d3rlpy_io.MissingDependencyError: a reference row named without d3rlpy;
            the message gives the install command.
    """
    from offline_dt.methods import METHODS
    from offline_dt.study.d3rlpy_io import MissingDependencyError, import_d3rlpy

    known = all_methods()
    for what, names in (("methods", methods), ("preset methods", default)):
        unknown = [m for m in names or () if m not in known]
        if unknown:
            raise ValueError(f"{what}: unknown {unknown}; choose from {list(known)}")
    if methods is not None:
        chosen = list(dict.fromkeys(methods))
    elif default is not None:
        chosen = list(dict.fromkeys(default))
    else:
        chosen = [m for m in known if m not in METHODS or METHODS[m].in_reproduce]
    if any(m in REFERENCE_METHODS for m in chosen):
        try:
            import_d3rlpy()
        except MissingDependencyError as e:
            if methods is not None:
                raise
            log.warning("reproduce: reference rows %s left out: %s", list(REFERENCE_METHODS), e)
            chosen = [m for m in chosen if m not in REFERENCE_METHODS]
    if "iql" in chosen and not isinstance(gym.make(env_id).action_space, gym.spaces.Box):
        if methods is not None:
            raise ValueError(f"methods: 'iql' needs a Box action space; {env_id} has "
                             f"{gym.make(env_id).action_space}")
        log.warning("reproduce: iql left out: %s has no Box action space", env_id)
        chosen.remove("iql")
    return chosen


@dataclass(frozen=True)
class JobSpec:
    """One (level, seed, method) run of :func:`~offline_dt.study.pipeline.reproduce`,
    picklable for worker processes."""

    env_id: str
    preset: str
    root: str
    device: str
    level: str
    seed: int
    method: str
    dataset: str
    metas: dict[str, dict[str, Any]]
    label: str
    #: the level's dataset was regenerated (``reproduce(overwrite=...)``): train afresh
    fresh: bool = False
    #: a tuned row (``method`` is ``<base>-tuned``): the search space's values its study
    #: chose (``offline_dt.study.tuning``), set over the preset's config of ``base_method``
    params: dict[str, Any] | None = None

    @property
    def base_method(self) -> str:
        """The method trained: ``method`` less a tuned row's suffix."""
        return self.method.removesuffix(TUNED_SUFFIX) if self.params is not None \
            else self.method


def preset_train_config(p: Preset, dataset: str, env_id: str, method: str, seed: int,
                        device: str, run_dir: Path) -> Any:
    """The preset's ``TrainConfig`` of ``method`` (``p.train`` then ``p.method_train``) for
    one run; the learning-curve hook rolls out ``p.hook_episodes`` episodes."""
    from offline_dt.training import TrainConfig

    return apply_overrides(TrainConfig(
        dataset=dataset, env_id=env_id, method=method, seed=seed, device=device,
        run_dir=run_dir, progress=False, eval_episodes=p.hook_episodes),
        {**p.train, **p.method_train.get(method, {})}, "preset train")


def preset_reference_config(p: Preset, dataset: str, env_id: str, method: str, seed: int,
                            device: str, run_dir: Path, **params: Any) -> Any:
    """The preset's ``ReferenceConfig`` of reference row ``method`` (``p.reference_steps``
    updates, the preset's test episodes), with ``params`` (its hyperparameters) set.

    Raises:
        ValueError: the preset has no budget for ``method``.
    """
    from offline_dt.study.reference import ReferenceConfig

    if method not in p.reference_steps:
        raise ValueError(f"preset {p.name}: reference_steps has no budget for "
                         f"{method!r} (has {sorted(p.reference_steps)})")
    return ReferenceConfig(
        dataset=dataset, method=method, env_id=env_id, seed=seed,
        steps=p.reference_steps[method], device=device, run_dir=run_dir,
        episodes=int(p.evaluate.get("episodes", EvalConfig.episodes)), overwrite=True,
        **params)


def _train_job(spec: JobSpec, p: Preset, run_dir: Path) -> dict[str, float]:
    """Train (or reuse) a method of the one training loop and evaluate it: seconds per stage.
    A tuned row trains at its parameters, without the preset's candidates (its search chose
    what they would)."""
    from offline_dt.study.search import with_params

    tcfg = preset_train_config(p, spec.dataset, spec.env_id, spec.base_method, spec.seed,
                               spec.device, run_dir)
    candidates = candidate_configs(tcfg, p)
    if spec.params is not None:
        tcfg, candidates = with_params(tcfg, spec.params), []
    ecfg = apply_overrides(EvalConfig(checkpoint=run_dir, env_id=spec.env_id, seed=spec.seed,
                               device=spec.device), p.evaluate, "preset evaluate")
    # The hook's episodes are validation episodes of its own: never a test episode.
    hook = make_eval_hook() if tcfg.eval_every > 0 else None
    ev, secs = train_and_evaluate(tcfg, ecfg, hook, candidates)
    return {"eval": ev, **secs}


def candidate_configs(tcfg: Any, p: Preset) -> list[Any]:
    """TrainConfigs of ``p.method_candidates[tcfg.method]``: ``tcfg`` with each alternative's
    method options, in ``<run dir>/candidates/<name>`` (deeper than the report reads)."""
    return [dataclasses.replace(tcfg, run_dir=Path(tcfg.run_dir) / "candidates" / name,
                                method_options={**option_values(tcfg.method_options),
                                                **options})
            for name, options in p.method_candidates.get(tcfg.method, {}).items()]


def _reference_job(spec: JobSpec, p: Preset, run_dir: Path) -> dict[str, float]:
    """Train (or reuse) a d3rlpy reference row (a tuned one at its parameters) and evaluate
    it: seconds per stage."""
    from offline_dt.study.reference import run_reference

    cfg = preset_reference_config(p, spec.dataset, spec.env_id, spec.base_method, spec.seed,
                                  spec.device, run_dir, **(spec.params or {}))
    ev, secs = run_reference(cfg)
    return {"eval": ev, **secs}


def _baseline_job(spec: JobSpec, p: Preset, run_dir: Path) -> tuple[dict[str, Any], float,
                                                                      bool]:
    """Evaluate (or reuse) the random or behaviour baseline: (eval.json, seconds, reused)."""
    method, seed, env_id = spec.method, spec.seed, spec.env_id
    meta = spec.metas[spec.level]
    eval_episodes = int(p.evaluate.get("episodes", EvalConfig.episodes))
    if method == "random":
        def make() -> tuple[Any, dict[str, Any]]:
            return RandomPolicy(gym.make(env_id).action_space, seed), {
                "policy": "uniform random"}
    else:
        def make() -> tuple[Any, dict[str, Any]]:
            pol, desc = behaviour_policy(spec.level, spec.metas, env_id, spec.device, seed)
            return pol, {"policy": desc}
    config = {"method": method, "env_id": env_id, "dataset": spec.dataset,
              "level": spec.level, "episodes": eval_episodes, "seed": seed,
              "episode_seeds": EPISODE_SEEDS}
    return evaluate_baseline(run_dir, method, env_id, make, config, eval_episodes, seed,
                             meta.get("ref_min_score"), meta.get("ref_max_score"))


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Train and evaluate one run (a method of the training loop: dt, bc, qt; a d3rlpy
    reference row: iql, mlp-bc, pct-bc) or evaluate a baseline (random, behaviour), reusing
    finished work. Returns ``{"eval", "timings": [(stage, seconds, run, reused)], "took",
    "label"}``; reference rows count as stages ``reference_train`` and ``reference_evaluate``."""
    p = get_preset(spec.preset)
    root = Path(spec.root)
    run_dir = (root / "runs" / p.name / spec.env_id / Path(spec.dataset).stem / spec.method
               / f"seed{spec.seed}")
    run = str(run_dir.relative_to(root))
    if spec.fresh and spec.method not in BASELINES:
        for name in ("config.json", "eval.json"):  # nothing of the old run is reused
            (run_dir / name).unlink(missing_ok=True)
            for cand in p.method_candidates.get(spec.method, {}):
                (run_dir / "candidates" / cand / name).unlink(missing_ok=True)
    if spec.method in BASELINES:
        ev, took, reused = _baseline_job(spec, p, run_dir)
        timings = [("baselines", took, run, reused)]
    else:
        reference = spec.base_method in REFERENCE_METHODS
        out = (_reference_job if reference else _train_job)(spec, p, run_dir)
        ev = out.pop("eval")
        prefix = "reference_" if reference else ""
        timings = [(prefix + stage, s, run, s == 0.0) for stage, s in out.items()]
        took = sum(out.values())
    return {"eval": ev, "timings": timings, "took": took, "label": spec.label}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def map_jobs(specs: Sequence[JobSpec], workers: int) -> Iterator[dict[str, Any]]:
    """``run_job`` over ``specs``: in order in this process (``workers == 1``), else in a
    spawn-context process pool, yielding results as runs finish."""
    if workers == 1:
        yield from map(run_job, specs)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(run_job, spec) for spec in specs]
        for fut in as_completed(futures):
            yield fut.result()
