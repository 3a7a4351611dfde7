"""``generate``: D4RL-style dataset levels for a Gymnasium env, in HDF5 and Minari formats.

Levels follow D4RL (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven Reinforcement
Learning", section 5):

- ``random``: uniform random actions.
- ``expert``: the fully trained behaviour agent (SAC for Box actions, DQN for Discrete), or
  its best evaluated checkpoint when the final agent is clearly worse (``select_expert``).
- ``medium``: the first training checkpoint whose deterministic eval return reaches
  ``medium_target_score`` on the normalized scale ``100 * (R - ref_min) / (ref_max - ref_min)``.
- ``medium-replay``: the agent's replay buffer up to the medium checkpoint.
- ``full-replay``: the whole replay buffer of the training run.
- ``medium-expert``: medium and expert concatenated.

Data-collection policy: like D4RL, ``expert`` and ``medium`` rollouts use the *stochastic*
behaviour policy (SAC: sample from the tanh-Gaussian; DQN: epsilon-greedy with the zoo's
``exploration_final_eps``), seeded so runs repeat. Reference scores and learning-curve
evaluations use the *deterministic* policy.

Sanity of the behaviour agent (``behaviour_check``): when the expert is not clearly better
than the random agent, or falls short of the env's ``reward_threshold``, a warning is logged
and recorded in every dataset's metadata (``behaviour_learned``, ``behaviour_warnings``).

Concurrency: ``generate`` holds an exclusive lock (``offline_dt.data.lock``) on every output it
may write (each level's HDF5 file and Minari directory, the agent directory), so a second
``generate`` on the same outputs fails at once and the first one's work is untouched.

Where each part lives: the settings ``datagen.config``, the level builders ``datagen.levels``,
reuse and overwrite decisions ``datagen.reuse``, the expert, medium checkpoint, reference
scores and behaviour check ``datagen.selection``, the behaviour agent ``datagen.agents``
(training) and ``datagen.behaviour`` (reloading); this module runs the stages in order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from datagen.agents import (
    AgentArtifacts,
    algo_for,
    single_thread_torch,
    train_agent,
    zoo_hyperparams,
)
from datagen.config import GenerateConfig, package_versions, resolve_levels, validate_config
from datagen.envs import check_env, check_recipe_env, env_namespace
from datagen.levels import LEVEL_BUILDERS, LevelContext, build_levels
from datagen.recipes import Recipe, env_name
from datagen.reuse import preflight
from datagen.scripted import recipe_for, recipe_levels
from datagen.selection import (
    ExpertChoice,
    behaviour_check,
    reference_returns,
    select_expert,
    select_medium_checkpoint,
)
from offline_dt.data.atomic import remove_stale_temporaries
from offline_dt.data.d4rl import LEVELS, d4rl_filename, read_hdf5, write_hdf5
from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.lock import exclusive_lock
from offline_dt.data.minari_io import minari_dataset_id, minari_root, write_minari

__all__ = ["GenerateResult", "generate"]

log = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    """What ``generate`` wrote.

    Attributes:
        paths: level → {"hdf5": file, "minari": dataset directory}.
        summaries: level → ``OfflineDataset.summary()`` plus ``reused``.
        stage_seconds: stage → wall seconds (``train_agent``, ``reference_scores``,
            ``<level>`` collection, ``<level>_write``, ``total``).
        ref_min_score / ref_max_score: D4RL reference returns (random / trained agent).
        medium_checkpoint: {"step", "eval_return", "normalized", "path"} or None.
        expert: the expert policy chosen (``select_expert``), or None when every level was
            reused.
        behaviour: ``behaviour_check``'s verdict (also in every dataset's metadata), or {}.
        agent_dir: behaviour-agent directory, or None when every level was reused.
    """

    env_id: str
    paths: dict[str, dict[str, Path]] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    medium_checkpoint: dict[str, Any] | None = None
    expert: ExpertChoice | None = None
    behaviour: dict[str, Any] = field(default_factory=dict)
    agent_dir: Path | None = None

    def __str__(self) -> str:
        lines = [f"generate {self.env_id}: ref_min={self.ref_min_score} "
                 f"ref_max={self.ref_max_score}"]
        lines += [f"  WARNING: {w}" for w in json.loads(
            self.behaviour.get("behaviour_warnings", "[]"))]
        for level, s in self.summaries.items():
            lines.append(
                f"  {level:14s} {s['steps']:>9d} steps {s['episodes']:>6d} episodes "
                f"return {s['return_mean']:.1f} ± {s['return_std']:.1f}"
                f"{'  (reused)' if s.get('reused') else ''}  {self.paths[level]['hdf5']}"
            )
        lines.append("  stages: " + ", ".join(f"{k} {v:.1f}s"
                                              for k, v in self.stage_seconds.items()))
        return "\n".join(lines)


def _reuse_all(cfg: GenerateConfig, levels: list[str], result: GenerateResult) -> None:
    """Every requested dataset exists with this config: summarise them (and repeat the
    behaviour check their metadata recorded)."""
    log.info("generate: every requested dataset of %s exists with this config; reusing",
             cfg.env_id)
    for level in levels:
        ds = read_hdf5(result.paths[level]["hdf5"])
        result.summaries[level] = {**ds.summary(), "reused": True}
        result.behaviour = {k: v for k, v in ds.metadata.items()
                            if k.startswith(("behaviour_", "expert_"))}
        result.ref_min_score = ds.metadata.get("ref_min_score")
        result.ref_max_score = ds.metadata.get("ref_max_score")


def _agent_stages(cfg: GenerateConfig, agent_dir: Path, agent_steps: int,
                  result: GenerateResult
                  ) -> tuple[AgentArtifacts, ExpertChoice, float, float, dict[str, Any]]:
    """Train (or reuse) the behaviour agent, choose the expert, score the reference policies,
    check that the agent learned and pick the medium checkpoint; return (agent, expert,
    ref_min, ref_max, medium checkpoint)."""
    stages = result.stage_seconds
    t0 = time.perf_counter()
    agent = train_agent(cfg.env_id, agent_dir, seed=cfg.seed, total_steps=agent_steps,
                        checkpoint_every=cfg.checkpoint_every, eval_episodes=cfg.eval_episodes,
                        num_envs=cfg.num_envs, device=cfg.device,
                        overwrite=cfg.overwrite is True)  # named levels never retrain it
    stages["train_agent"] = time.perf_counter() - t0
    result.agent_dir = agent_dir
    log.info("stage train_agent: %.1f s (%s)", stages["train_agent"],
             "reused" if agent.reused else "trained")
    # D4RL reference scores: random agent and the expert (deterministic).
    t0 = time.perf_counter()
    random_returns = reference_returns(cfg, None)
    expert = select_expert(agent, float(random_returns.mean()), cfg.eval_episodes)
    expert_returns = reference_returns(cfg, expert.path)
    ref_min, ref_max = float(random_returns.mean()), float(expert_returns.mean())
    stages["reference_scores"] = time.perf_counter() - t0
    result.ref_min_score, result.ref_max_score = ref_min, ref_max
    log.info("stage reference_scores: %.1f s (ref_min %.2f, ref_max %.2f over %d episodes)",
             stages["reference_scores"], ref_min, ref_max, cfg.ref_episodes)
    med = select_medium_checkpoint(agent, ref_min, ref_max, cfg.medium_target_score)
    result.medium_checkpoint, result.expert = med, expert
    result.behaviour = behaviour_check(cfg.env_id, random_returns, expert_returns, expert, med)
    return agent, expert, ref_min, ref_max, med



def _write_levels(cfg: GenerateConfig, ns: str, dataset: Callable[[str], OfflineDataset],
                  todo: dict[str, tuple[bool, bool]], result: GenerateResult) -> None:
    """Write each level's ``dataset(level)`` in the formats ``todo`` asks for; fill
    ``result.summaries``."""
    stages = result.stage_seconds
    mroot = minari_root(cfg.minari_root)
    for level, (write_h, write_m) in todo.items():
        ds = dataset(level)
        t0 = time.perf_counter()
        if write_h:
            write_hdf5(ds, result.paths[level]["hdf5"], overwrite=True)
        if write_m:
            fp = ds.metadata["fingerprint"]
            write_minari(ds, minari_dataset_id(ns, level), mroot, overwrite=True,
                         description=f"{cfg.env_id} {level} dataset generated by offline-dt "
                                     f"datagen (agent {ds.metadata['agent']}, seed {cfg.seed}); "
                                     f"fingerprint={fp}")
        if write_h or write_m:
            stages[f"{level}_write"] = time.perf_counter() - t0
            log.info("stage %s_write: %.1f s", level, stages[f"{level}_write"])
        result.summaries[level] = {**ds.summary(), "reused": not (write_h or write_m)}


def _agent_levels(cfg: GenerateConfig, ns: str, agent_steps: int, spaces: tuple,
                  needed: set[str], todo: dict[str, tuple[bool, bool]],
                  result: GenerateResult) -> None:
    """The SB3 behaviour agent's stages, then its levels built and written."""
    agent_dir = Path(cfg.agents_dir) / ns / f"seed{cfg.seed}"
    with exclusive_lock(agent_dir, "behaviour-agent directory"):
        agent, expert, ref_min, ref_max, med = _agent_stages(cfg, agent_dir, agent_steps,
                                                             result)
        ctx = LevelContext(cfg, ns, agent_steps, agent, expert, med, ref_min, ref_max,
                           *spaces, package_versions(),
                           {lv: p["hdf5"] for lv, p in result.paths.items()},
                           behaviour=result.behaviour)
        build_levels(ctx, needed, result.stage_seconds)
        _write_levels(cfg, ns, ctx.dataset, todo, result)


def _recipe_levels(cfg: GenerateConfig, recipe: Recipe, ns: str, needed: set[str],
                   todo: dict[str, tuple[bool, bool]], result: GenerateResult) -> None:
    """A scripted recipe's reference scores and levels (``datagen.scripted``), written."""
    datasets, result.ref_min_score, result.ref_max_score = recipe_levels(
        cfg, recipe, ns, sorted(needed), package_versions(), result.stage_seconds)

    def dataset(level: str) -> OfflineDataset:
        return datasets[level] if level in datasets else read_hdf5(result.paths[level]["hdf5"])

    _write_levels(cfg, ns, dataset, todo, result)


def generate(cfg: GenerateConfig) -> GenerateResult:
    """Generate the configured dataset levels and write each in both formats.

    Outputs: ``out_dir/<namespace>-<level>-v0.hdf5`` (D4RL layout, ``offline_dt.data.d4rl``)
    and the Minari dataset ``<namespace>/<level>-v0`` under ``minari_root``; the namespace is
    the lower-cased env name without version (``Pendulum-v1`` → ``pendulum``). Every
    dataset's metadata holds env_id, level, agent (``random``, ``sac``, ``sac@step2750``),
    seed, steps, package versions, ref_min_score, ref_max_score (so
    ``minari.get_normalized_score`` works), the behaviour check (``behaviour_learned``,
    ``behaviour_warnings``, ...) and, for behaviour levels, the checkpoint path. Each level
    is made by its builder in ``LEVEL_BUILDERS``.

    An env of a scripted recipe (``datagen.scripted.recipe_for``: PointMaze's waypoint
    planner, MiniGrid FourRooms' BFS expert) is generated by that recipe instead
    (``datagen.scripted``): no behaviour agent is trained, the reference scores are the
    random agent's and the recipe's noise-free expert's, and Dict / image observations are
    kept as the env gives them. ``levels=None`` means every level of the env's recipe.

    An existing output whose stored config fingerprint matches is reused, unless
    ``overwrite`` is True or names its level (:func:`overwritten_levels`; naming levels
    rewrites only those, with the behaviour agent reused, never retrained); all inputs are
    checked before any work. Every output is locked while this runs (``_locked_outputs``),
    and temporaries left by a killed run are removed first.

    Raises:
        ValueError: unknown env id (with close registered ids), unsupported spaces, unknown
            levels, non-positive step/episode counts.
        FileExistsError: an output (or agent directory) exists with a different config and
            ``overwrite`` does not cover it; the message names the path and ``--overwrite``.
        offline_dt.data.lock.LockedError: another live process is writing one of the outputs.
    """
    t_start = time.perf_counter()
    recipe = recipe_for(cfg.env_id)
    if recipe is not None:  # registered now: store the plain id (datasets refuse "module:")
        cfg = replace(cfg, env_id=env_name(cfg.env_id))
    cfg = resolve_levels(cfg, recipe.levels if recipe else LEVELS,
                         recipe.name if recipe else "SB3 behaviour agent")
    validate_config(cfg)
    spaces = check_recipe_env(cfg.env_id) if recipe else check_env(cfg.env_id)
    single_thread_torch()  # small MLPs: one thread is fastest (see datagen.agents)
    ns = env_namespace(cfg.env_id)
    agent_steps = 0 if recipe else (
        cfg.agent_steps or zoo_hyperparams(algo_for(spaces[1]), cfg.env_id)[0])
    levels = [lv for lv in (recipe.levels if recipe else LEVEL_BUILDERS) if lv in cfg.levels]
    result = GenerateResult(env_id=cfg.env_id)
    with _locked_outputs(cfg, levels, ns):
        todo = preflight(cfg, levels, ns, agent_steps, result.paths, recipe)
        needed = {lv for lv, (h, m) in todo.items() if h or m}
        if not needed:
            _reuse_all(cfg, levels, result)
        elif recipe is not None:
            _recipe_levels(cfg, recipe, ns, needed, todo, result)
        else:
            _agent_levels(cfg, ns, agent_steps, spaces, needed, todo, result)
    result.stage_seconds["total"] = time.perf_counter() - t_start
    log.info("generate %s: done in %.1f s", cfg.env_id, result.stage_seconds["total"])
    return result


def _output_paths(cfg: GenerateConfig, level: str, ns: str) -> tuple[Path, Path]:
    """(HDF5 file, Minari dataset directory) of ``level``."""
    return (Path(cfg.out_dir) / d4rl_filename(ns, level),
            minari_root(cfg.minari_root) / minari_dataset_id(ns, level))


@contextmanager
def _locked_outputs(cfg: GenerateConfig, levels: list[str], ns: str) -> Iterator[None]:
    """Hold ``exclusive_lock`` on every output of ``levels``, then remove the temporaries
    killed runs left beside them (``remove_stale_temporaries``).

    Raises:
        offline_dt.data.lock.LockedError: another live process holds one of the locks; nothing
            has been read or written yet.
    """
    with ExitStack() as stack:
        for level in levels:
            hdf5, mdir = _output_paths(cfg, level, ns)
            stack.enter_context(exclusive_lock(hdf5, "dataset"))
            stack.enter_context(exclusive_lock(mdir, "Minari dataset"))
        for level in levels:
            for path in _output_paths(cfg, level, ns):
                for stale in remove_stale_temporaries(path):
                    log.info("removed %s, left by a killed run", stale)
        yield
