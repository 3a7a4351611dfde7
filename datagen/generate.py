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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from datagen.agents import (
    AgentArtifacts,
    load_behaviour_policy,
    load_replay,
    single_thread_torch,
    train_agent,
)
from datagen.agents import algo_for as _algo_for
from datagen.agents import zoo_hyperparams as _zoo
from datagen.envs import check_env, env_namespace
from datagen.replay import replay_to_dataset
from datagen.rollout import policy_returns, rollout
from offline_dt.data.atomic import remove_stale_temporaries
from offline_dt.data.d4rl import (
    LEVELS,
    check_hdf5_target,
    d4rl_filename,
    normalized_score,
    read_hdf5,
    write_hdf5,
)
from offline_dt.data.dataset import DatasetError, OfflineDataset, concatenate
from offline_dt.data.lock import exclusive_lock
from offline_dt.data.minari_io import (
    check_minari_target,
    minari_dataset_id,
    minari_root,
    write_minari,
)

__all__ = ["LEVELS", "LEVEL_BUILDERS", "ExpertChoice", "GenerateConfig", "GenerateResult",
           "LevelContext", "behaviour_check", "config_dict", "generate", "package_versions",
           "reference_scores", "select_expert", "select_medium_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    """Settings of ``offline-dt generate`` (defaults: Pendulum-v1, D4RL-sized levels)."""

    env_id: str = field(default="Pendulum-v1", metadata={
        "help": "Gymnasium env id (flat Box observations; Box or Discrete actions)"})
    seed: int = field(default=0, metadata={"help": "seed of training, rollouts and evals"})
    levels: list[str] = field(default_factory=lambda: list(LEVELS), metadata={
        "help": "dataset levels to write", "choices": list(LEVELS)})
    random_steps: int = field(default=1_000_000, metadata={
        "help": "transitions in the random dataset"})
    expert_steps: int = field(default=200_000, metadata={
        "help": "transitions in the expert dataset"})
    medium_steps: int = field(default=200_000, metadata={
        "help": "transitions in the medium dataset"})
    agent_steps: int | None = field(default=None, metadata={
        "help": "behaviour-agent training env steps (None: rl-zoo budget, SAC Pendulum 20000)"})
    checkpoint_every: int = field(default=250, metadata={
        "help": "env steps between agent checkpoints / learning-curve evaluations"})
    medium_target_score: float = field(default=50.0, metadata={
        "help": "D4RL normalized score (0..100) the medium checkpoint must first reach"})
    ref_episodes: int = field(default=100, metadata={
        "help": "episodes for the reference scores (random and trained agent)"})
    eval_episodes: int = field(default=10, metadata={
        "help": "deterministic eval episodes per learning-curve checkpoint"})
    num_envs: int = field(default=50, metadata={
        "help": "sub-environments of the synchronous vector env used for rollouts"})
    processes: int = field(default=0, metadata={
        "help": "processes for the random rollout, which splits its sub-envs among them "
                "(same data for any value; 0: one per CPU core)"})
    out_dir: Path = field(default=Path("data/d4rl"), metadata={
        "help": "directory of the D4RL-style HDF5 files"})
    minari_root: Path | None = field(default=None, metadata={
        "help": "Minari datasets root (default data/minari or $MINARI_DATASETS_PATH)"})
    agents_dir: Path = field(default=Path("data/agents"), metadata={
        "help": "behaviour-agent artifacts (weights, learning curve, replay buffer)"})
    overwrite: bool | list[str] = field(default=False, metadata={
        "help": "true: regenerate and replace every requested dataset (and a complete agent "
                "trained with another config) instead of reusing matching ones / refusing "
                "mismatching ones; or LEVEL ...: regenerate only those levels, reusing the "
                "behaviour agent (never retrained; e.g. --overwrite random)",
        "choices": list(LEVELS)})
    device: str = field(default="auto", metadata={
        "help": "torch device of the behaviour agent (auto, cpu, cuda)"})


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


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the data (stored in every dataset's metadata)."""
    import gymnasium
    import minari
    import stable_baselines3

    try:
        from importlib.metadata import version

        odt = version("offline-dt")
    except Exception:  # not installed: the source tree's version
        odt = "0.1.0"
    return {"python": platform.python_version(), "numpy": np.__version__,
            "gymnasium": str(gymnasium.__version__),
            "stable-baselines3": str(stable_baselines3.__version__),
            "torch": str(torch.__version__), "minari": str(minari.__version__),
            "offline-dt": odt}


def _validate(cfg: GenerateConfig) -> None:
    unknown = [lv for lv in cfg.levels if lv not in LEVELS]
    if unknown:
        raise ValueError(f"levels: unknown level(s) {unknown}; choose from {list(LEVELS)}")
    if not cfg.levels:
        raise ValueError(f"levels: at least one level is needed, choose from {list(LEVELS)}")
    if not isinstance(cfg.overwrite, bool):
        stray = [lv for lv in cfg.overwrite if lv not in cfg.levels]
        if stray:
            raise ValueError(f"overwrite: {stray} are not among the levels generated "
                             f"({list(cfg.levels)}); name levels of --levels, or pass "
                             "--overwrite true for all of them")
    if not isinstance(cfg.processes, int | np.integer) or cfg.processes < 0:
        raise ValueError(f"processes: must be 0 (one per core) or positive, "
                         f"found {cfg.processes!r}")
    for name in ("random_steps", "expert_steps", "medium_steps", "checkpoint_every",
                 "ref_episodes", "eval_episodes", "num_envs"):
        v = getattr(cfg, name)
        if not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"{name}: must be a positive integer, found {v!r}")
    if cfg.agent_steps is not None and (not isinstance(cfg.agent_steps, int | np.integer)
                                        or cfg.agent_steps <= 0):
        raise ValueError(f"agent_steps: must be a positive integer or None, "
                         f"found {cfg.agent_steps!r}")
    if not 0 < cfg.medium_target_score <= 100:
        raise ValueError(f"medium_target_score: must be in (0, 100], found "
                         f"{cfg.medium_target_score}")


def overwritten_levels(cfg: GenerateConfig) -> set[str]:
    """The levels ``cfg.overwrite`` regenerates: every requested one (True), none (False), or
    those it names."""
    if isinstance(cfg.overwrite, bool):
        return set(cfg.levels) if cfg.overwrite else set()
    return set(cfg.overwrite)


def _level_steps(cfg: GenerateConfig, level: str) -> int | None:
    return {"random": cfg.random_steps, "expert": cfg.expert_steps,
            "medium": cfg.medium_steps,
            "medium-expert": cfg.medium_steps + cfg.expert_steps}.get(level)


def _fingerprint(cfg: GenerateConfig, level: str, agent_steps: int) -> str:
    """Hash of every setting that shapes the level's data and metadata."""
    key = {"env_id": cfg.env_id, "level": level, "seed": cfg.seed,
           "steps": _level_steps(cfg, level), "agent_steps": agent_steps,
           "checkpoint_every": cfg.checkpoint_every, "eval_episodes": cfg.eval_episodes,
           "ref_episodes": cfg.ref_episodes, "medium_target_score": cfg.medium_target_score,
           "num_envs": cfg.num_envs}
    if level == "random":
        key["random_actions"] = "default_rng([seed, env_index]) per sub-env"
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _existing_state(hdf5: Path, mdir: Path, fp: str) -> tuple[str, str]:
    """(hdf5 state, minari state), each "missing", "match" or a mismatch description."""
    if not hdf5.exists():
        h = "missing"
    else:
        try:
            ds = read_hdf5(hdf5)
            found = ds.metadata.get("fingerprint")
            h = "match" if found == fp else f"config fingerprint {found!r} != {fp!r}"
        except (DatasetError, OSError) as e:
            h = f"unreadable ({e})"
    meta = mdir / "data" / "metadata.json"
    if not mdir.exists():
        m = "missing"
    elif not meta.is_file():
        m = "incomplete (no data/metadata.json)"
    else:
        try:
            desc = json.loads(meta.read_text()).get("description", "")
        except (OSError, ValueError) as e:
            desc = f"unreadable ({e})"
        m = "match" if f"fingerprint={fp}" in desc else "written with another config"
    return h, m


# ------------------------------------------------------------------------------ level builders
@dataclass
class LevelContext:
    """What a level builder needs: the config, the behaviour agent, the medium checkpoint,
    the reference scores and the datasets built so far (``datasets``)."""

    cfg: GenerateConfig
    namespace: str
    agent_steps: int
    agent: AgentArtifacts
    expert: ExpertChoice
    medium: dict[str, Any]
    ref_min: float
    ref_max: float
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box | gym.spaces.Discrete
    versions: dict[str, str]
    hdf5_paths: dict[str, Path]
    behaviour: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, OfflineDataset] = field(default_factory=dict)

    def metadata(self, level: str, agent_name: str, **extra: Any) -> dict[str, Any]:
        """The metadata every dataset of ``level`` carries, plus ``extra``."""
        cfg = self.cfg
        md = {"env_id": cfg.env_id, "level": level, "agent": agent_name, "seed": cfg.seed,
              "steps": 0, "ref_min_score": self.ref_min, "ref_max_score": self.ref_max,
              "dataset_id": minari_dataset_id(self.namespace, level),
              "num_envs": cfg.num_envs, "agent_steps": self.agent_steps,
              "fingerprint": _fingerprint(cfg, level, self.agent_steps)}
        md.update({f"version_{k}": v for k, v in self.versions.items()})
        md.update(self.behaviour)
        md.update(extra)
        return md

    def dataset(self, level: str) -> OfflineDataset:
        """``level``'s dataset: built in this run, else read from its HDF5 file."""
        if level not in self.datasets:
            self.datasets[level] = read_hdf5(self.hdf5_paths[level])
        return self.datasets[level]


def _behaviour_rollout(ctx: LevelContext, level: str, weights: Path, seed: int, steps: int,
                       **metadata: Any) -> OfflineDataset:
    """``steps`` transitions of the stochastic behaviour policy ``weights`` (torch and
    epsilon-greedy generators seeded with ``seed``, reset seeds ``seed + i``)."""
    cfg = ctx.cfg
    torch.manual_seed(seed)
    policy = load_behaviour_policy(weights, cfg.env_id, cfg.device, deterministic=False,
                                   seed=seed)
    return rollout(cfg.env_id, steps, policy, seed=seed, num_envs=cfg.num_envs, desc=level,
                   metadata=ctx.metadata(level, **metadata)).dataset


def build_random(ctx: LevelContext) -> OfflineDataset:
    """``random``: uniform random actions, reset seeds ``seed + i``."""
    cfg = ctx.cfg
    return rollout(cfg.env_id, cfg.random_steps, None, seed=cfg.seed, num_envs=cfg.num_envs,
                   metadata=ctx.metadata("random", "random"), desc="random",
                   processes=cfg.processes or os.cpu_count() or 1).dataset


def build_expert(ctx: LevelContext) -> OfflineDataset:
    """``expert``: the expert's stochastic policy (seed ``seed + 1``): the fully trained agent,
    or its best checkpoint when the final agent is clearly worse (``select_expert``)."""
    ex = ctx.expert
    return _behaviour_rollout(
        ctx, "expert", ex.path, ctx.cfg.seed + 1, ctx.cfg.expert_steps,
        agent_name=ex.name, checkpoint=str(ex.path), checkpoint_step=ex.step,
        policy="stochastic")


def build_medium(ctx: LevelContext) -> OfflineDataset:
    """``medium``: the medium checkpoint's stochastic policy (seed ``seed + 2``)."""
    med = ctx.medium
    return _behaviour_rollout(
        ctx, "medium", med["path"], ctx.cfg.seed + 2, ctx.cfg.medium_steps,
        agent_name=f"{ctx.agent.name}@step{med['step']}", checkpoint=str(med["path"]),
        checkpoint_step=med["step"], checkpoint_eval_return=med["eval_return"],
        checkpoint_normalized_score=med["normalized"], policy="stochastic")


def _replay_level(ctx: LevelContext, level: str, up_to_medium: bool) -> OfflineDataset:
    agent, med = ctx.agent, ctx.medium
    arrays, first = load_replay(agent.replay_path)
    stop = None
    name = f"{agent.name}-replay"
    extra: dict[str, Any] = {"checkpoint": str(agent.replay_path)}
    if up_to_medium:
        stop = med["step"] - first
        if stop <= 0:
            raise DatasetError(f"replay buffer {agent.replay_path} no longer holds the "
                               f"steps before the medium checkpoint {med['step']}")
        name = f"{agent.name}-replay@step{med['step']}"
        extra["checkpoint_step"] = med["step"]
    return replay_to_dataset(arrays, ctx.observation_space, ctx.action_space,
                             scaled_actions=(_algo_for(ctx.action_space) == "SAC"), stop=stop,
                             metadata=ctx.metadata(level, name, **extra))


def build_medium_replay(ctx: LevelContext) -> OfflineDataset:
    """``medium-replay``: the agent's replay buffer up to the medium checkpoint."""
    return _replay_level(ctx, "medium-replay", up_to_medium=True)


def build_full_replay(ctx: LevelContext) -> OfflineDataset:
    """``full-replay``: the agent's whole replay buffer."""
    return _replay_level(ctx, "full-replay", up_to_medium=False)


def build_medium_expert(ctx: LevelContext) -> OfflineDataset:
    """``medium-expert``: ``medium`` then ``expert``, concatenated."""
    name = f"{ctx.agent.name}@step{ctx.medium['step']}+{ctx.expert.name}"
    return concatenate([ctx.dataset("medium"), ctx.dataset("expert")],
                       ctx.metadata("medium-expert", name))


LevelBuilder = Callable[[LevelContext], OfflineDataset]
#: Level name → builder, in build order (``medium-expert`` needs ``medium`` and ``expert``).
LEVEL_BUILDERS: dict[str, LevelBuilder] = {
    "random": build_random,
    "expert": build_expert,
    "medium": build_medium,
    "medium-replay": build_medium_replay,
    "full-replay": build_full_replay,
    "medium-expert": build_medium_expert,
}
#: Levels that must be built (not only read) for a level to be built.
_PREREQUISITES = {"medium-expert": ("medium", "expert")}


# ------------------------------------------------------------------------------ stages
def _preflight(cfg: GenerateConfig, levels: list[str], ns: str, agent_steps: int,
               result: GenerateResult) -> dict[str, tuple[bool, bool]]:
    """level → (write hdf5, write minari); fills ``result.paths``.

    Raises:
        FileExistsError: an output exists with another config and ``overwrite`` does not
            name its level, or an output path to be written holds something offline-dt did
            not write (a directory, a foreign file or Minari dataset).
    """
    mroot = minari_root(cfg.minari_root)
    todo: dict[str, tuple[bool, bool]] = {}
    rewrite = overwritten_levels(cfg)
    for level in levels:
        fp = _fingerprint(cfg, level, agent_steps)
        hdf5 = Path(cfg.out_dir) / d4rl_filename(ns, level)
        mdir = mroot / minari_dataset_id(ns, level)
        result.paths[level] = {"hdf5": hdf5, "minari": mdir}
        if level in rewrite:
            todo[level] = (True, True)
            continue
        h, m = _existing_state(hdf5, mdir, fp)
        for path, state in ((hdf5, h), (mdir, m)):
            if state not in ("missing", "match"):
                raise FileExistsError(
                    f"{path} exists but does not match this configuration ({state}); "
                    f"pass --overwrite {level} (overwrite=[{level!r}]) to regenerate it"
                )
        todo[level] = (h != "match", m != "match")
    for level, (write_h, write_m) in todo.items():  # nothing to be replaced but our own
        if write_h:
            check_hdf5_target(result.paths[level]["hdf5"])
        if write_m:
            check_minari_target(result.paths[level]["minari"])
    return todo


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


def _build_levels(ctx: LevelContext, needed: set[str], stages: dict[str, float]) -> None:
    """Build every ``needed`` level (and the levels they are made of) into ``ctx.datasets``,
    in ``LEVEL_BUILDERS`` order."""
    for level in list(needed):
        needed |= set(_PREREQUISITES.get(level, ()))
    for level, build in LEVEL_BUILDERS.items():
        if level not in needed:
            continue
        t0 = time.perf_counter()
        ds = build(ctx)
        ds.metadata["steps"] = ds.num_transitions
        ctx.datasets[level] = ds
        stages[level] = time.perf_counter() - t0
        log.info("stage %s: %d steps, %d episodes in %.1f s", level, ds.num_transitions,
                 ds.num_episodes, stages[level])


def _write_levels(ctx: LevelContext, todo: dict[str, tuple[bool, bool]],
                  result: GenerateResult) -> None:
    """Write each level in the formats ``todo`` asks for; fill ``result.summaries``."""
    cfg, stages = ctx.cfg, result.stage_seconds
    mroot = minari_root(cfg.minari_root)
    for level, (write_h, write_m) in todo.items():
        ds = ctx.dataset(level)
        t0 = time.perf_counter()
        if write_h:
            write_hdf5(ds, result.paths[level]["hdf5"], overwrite=True)
        if write_m:
            fp = ds.metadata["fingerprint"]
            write_minari(ds, minari_dataset_id(ctx.namespace, level), mroot, overwrite=True,
                         description=f"{cfg.env_id} {level} dataset generated by offline-dt "
                                     f"datagen (agent {ds.metadata['agent']}, seed {cfg.seed}); "
                                     f"fingerprint={fp}")
        if write_h or write_m:
            stages[f"{level}_write"] = time.perf_counter() - t0
            log.info("stage %s_write: %.1f s", level, stages[f"{level}_write"])
        result.summaries[level] = {**ds.summary(), "reused": not (write_h or write_m)}


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
    _validate(cfg)
    obs_space, act_space = check_env(cfg.env_id)
    single_thread_torch()  # small MLPs: one thread is fastest (see datagen.agents)
    ns = env_namespace(cfg.env_id)
    agent_steps = cfg.agent_steps or _zoo(_algo_for(act_space), cfg.env_id)[0]
    levels = [lv for lv in LEVEL_BUILDERS if lv in cfg.levels]
    result = GenerateResult(env_id=cfg.env_id)
    with _locked_outputs(cfg, levels, ns):
        todo = _preflight(cfg, levels, ns, agent_steps, result)
        needed = {lv for lv, (h, m) in todo.items() if h or m}
        if not needed:
            _reuse_all(cfg, levels, result)
        else:
            agent_dir = Path(cfg.agents_dir) / ns / f"seed{cfg.seed}"
            with exclusive_lock(agent_dir, "behaviour-agent directory"):
                agent, expert, ref_min, ref_max, med = _agent_stages(cfg, agent_dir,
                                                                     agent_steps, result)
                ctx = LevelContext(cfg, ns, agent_steps, agent, expert, med, ref_min, ref_max,
                                   obs_space, act_space, package_versions(),
                                   {lv: p["hdf5"] for lv, p in result.paths.items()},
                                   behaviour=result.behaviour)
                _build_levels(ctx, needed, result.stage_seconds)
                _write_levels(ctx, todo, result)
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


def reference_returns(cfg: GenerateConfig, weights: Path | None) -> np.ndarray:
    """``(ref_episodes,) float64`` undiscounted returns of the random agent (``weights`` None)
    or the deterministic policy ``weights``, on a batched vector env (``policy_returns`` with
    evaluation seed ``seed + 20_000``: episode ``i`` resets with
    ``(seed + 20_000) * 100_000 + i``)."""
    seed = cfg.seed + 20_000
    pol = None
    if weights is not None:
        pol = load_behaviour_policy(weights, cfg.env_id, cfg.device, deterministic=True)
    return policy_returns(cfg.env_id, pol, cfg.ref_episodes, seed=seed, num_envs=cfg.num_envs)


def reference_scores(cfg: GenerateConfig, agent: AgentArtifacts,
                     expert: Path | None = None) -> tuple[float, float]:
    """D4RL reference returns (``ref_min_score``, ``ref_max_score``): the means of
    ``reference_returns`` of the random agent and of ``expert`` (default: the final agent)."""
    ref_min = reference_returns(cfg, None)
    ref_max = reference_returns(cfg, expert or agent.policy_path)
    return float(ref_min.mean()), float(ref_max.mean())


def _score_or_nan(ret: float, ref_min: float, ref_max: float) -> float:
    """D4RL normalized score (``offline_dt.data.d4rl.normalized_score``); NaN if undefined."""
    score = normalized_score(ret, ref_min, ref_max)
    return float("nan") if score is None else score


def select_medium_checkpoint(agent: AgentArtifacts, ref_min: float, ref_max: float,
                             target: float) -> dict[str, Any]:
    """The FIRST checkpoint whose eval return's normalized score reaches ``target``.

    When none does (too short a training run) the checkpoint with the highest score is used
    and a warning logged.

    Returns:
        {"step", "eval_return", "normalized", "path", "reached_target"}.
    """
    if not agent.checkpoints:
        raise DatasetError(f"agent {agent.dir} has no checkpoints")
    scores = [_score_or_nan(c.eval_return_mean, ref_min, ref_max) for c in agent.checkpoints]
    idx = next((i for i, s in enumerate(scores) if s >= target), None)
    reached = idx is not None
    if idx is None:
        idx = int(np.nanargmax(scores)) if not np.isnan(scores).all() else len(scores) - 1
        log.warning("no checkpoint reached normalized score %.1f; using step %d (score %.1f)",
                    target, agent.checkpoints[idx].step, scores[idx])
    c = agent.checkpoints[idx]
    log.info("medium checkpoint: step %d, eval return %.1f, normalized %.1f", c.step,
             c.eval_return_mean, scores[idx])
    return {"step": c.step, "eval_return": c.eval_return_mean, "normalized": scores[idx],
            "path": c.path, "reached_target": reached}


#: The final agent counts as clearly worse than its best checkpoint when the eval-return gap
#: exceeds this many standard errors of the difference ...
EXPERT_MARGIN_SE = 3.0
#: ... and this fraction of the best checkpoint's lead over the random agent.
EXPERT_MARGIN_FRACTION = 0.1
#: The agent learned when its expert beats the random agent by this many pooled standard
#: deviations of the episode returns (an effect size, Cohen's d).
LEARNED_EFFECT_SIZE = 1.0


@dataclass
class ExpertChoice:
    """The policy behind the ``expert`` level and ``ref_max_score``.

    Attributes:
        path: weights file (``policy.safetensors`` or a checkpoint).
        step: env steps of training behind it.
        name: the dataset's ``agent`` name (``sac``, or ``sac@step2000`` for a checkpoint).
        final: True for the fully trained agent, False for an earlier, better checkpoint.
        reason: why (logged and stored as ``expert_choice``).
        eval_return: its learning-curve mean deterministic eval return (NaN if unknown).
    """

    path: Path
    step: int
    name: str
    final: bool
    reason: str
    eval_return: float = float("nan")


def select_expert(agent: AgentArtifacts, ref_min: float, eval_episodes: int) -> ExpertChoice:
    """The fully trained agent, unless its learning curve shows it clearly worse than its best
    evaluated checkpoint: then that checkpoint (D4RL's expert is a well-trained policy; an
    agent that collapsed late, e.g. DQN on CartPole, is not).

    "Clearly worse": the best checkpoint's mean deterministic eval return beats the final
    checkpoint's by more than ``EXPERT_MARGIN_SE`` standard errors of the difference
    (``sqrt((sd_best^2 + sd_final^2) / eval_episodes)``) and by more than
    ``EXPERT_MARGIN_FRACTION`` of its own lead over the random agent (``ref_min``). A best
    checkpoint no better than random never replaces the final agent.
    """
    cps = agent.checkpoints
    final_path = agent.policy_path
    if not cps:
        return ExpertChoice(final_path, agent.total_steps, agent.name, True, "final agent")
    last = cps[-1]
    default = ExpertChoice(final_path, agent.total_steps, agent.name, True, "final agent",
                           last.eval_return_mean)
    best = max(cps, key=lambda c: c.eval_return_mean)
    gap = best.eval_return_mean - last.eval_return_mean
    se = float(np.sqrt((best.eval_return_std**2 + last.eval_return_std**2)
                       / max(int(eval_episodes), 1)))
    lead = best.eval_return_mean - ref_min
    if best is last or lead <= 0 or gap <= EXPERT_MARGIN_SE * se \
            or gap <= EXPERT_MARGIN_FRACTION * lead:
        return default
    reason = (f"final agent (eval return {last.eval_return_mean:.1f} ± "
              f"{last.eval_return_std:.1f}) clearly worse than the checkpoint at step "
              f"{best.step} ({best.eval_return_mean:.1f} ± {best.eval_return_std:.1f})")
    log.warning("expert: %s; using that checkpoint as the expert", reason)
    return ExpertChoice(best.path, best.step, f"{agent.name}@step{best.step}", False, reason,
                        best.eval_return_mean)


def behaviour_check(env_id: str, random_returns: np.ndarray, expert_returns: np.ndarray,
                    expert: ExpertChoice, medium: dict[str, Any]) -> dict[str, Any]:
    """Whether the behaviour agent learned, as dataset metadata; every problem is logged as a
    warning and listed in ``behaviour_warnings`` (a JSON list of strings).

    Keys: ``behaviour_learned`` (bool: the expert's mean return beats the random agent's by
    at least ``LEARNED_EFFECT_SIZE`` pooled standard deviations of the episode returns),
    ``behaviour_effect_size`` (that gap in standard deviations), ``expert_choice``,
    ``expert_step``, ``behaviour_warnings``; ``behaviour_reward_threshold`` when the env's
    spec has a ``reward_threshold`` (the expert must reach it to count as solving the task:
    MountainCarContinuous' "never moves" SAC beats random but scores 0, far below 90).
    """
    gap = float(expert_returns.mean() - random_returns.mean())
    spread = float(np.sqrt((random_returns.var() + expert_returns.var()) / 2))
    effect = gap / spread if spread > 0 else (np.inf if gap > 0 else -np.inf)
    warnings_: list[str] = []
    learned = bool(effect >= LEARNED_EFFECT_SIZE)
    if not learned:
        warnings_.append(
            f"behaviour agent did not learn: expert return {expert_returns.mean():.2f} is not "
            f"clearly above the random agent's {random_returns.mean():.2f} (gap {effect:.2f} "
            f"pooled standard deviations, need {LEARNED_EFFECT_SIZE}); normalized scores and "
            "the expert/medium levels are meaningless; train the agent longer (--agent-steps)")
    out: dict[str, Any] = {"behaviour_learned": learned,
                           "behaviour_effect_size": float(np.clip(effect, -1e9, 1e9)),
                           "expert_choice": expert.reason, "expert_step": int(expert.step)}
    threshold = gym.spec(env_id).reward_threshold
    if threshold is not None:
        out["behaviour_reward_threshold"] = float(threshold)
        if expert_returns.mean() < threshold:
            warnings_.append(
                f"expert return {expert_returns.mean():.2f} is below {env_id}'s "
                f"reward_threshold {threshold}: the behaviour agent does not solve the task")
    if learned and medium["eval_return"] > expert.eval_return:
        # select_expert keeps this within evaluation noise; say so when it happens.
        out["expert_choice"] += (f"; the medium checkpoint evaluated {medium['eval_return']:.1f}"
                                 f", within noise of the expert's {expert.eval_return:.1f}")
    for w in warnings_:
        log.warning("generate %s: %s", env_id, w)
    out["behaviour_warnings"] = json.dumps(warnings_)
    return out


def config_dict(cfg: GenerateConfig) -> dict[str, Any]:
    """The config as JSON-able dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
