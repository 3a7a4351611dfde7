"""The dataset levels and how each is built (:data:`LEVEL_BUILDERS`, D4RL's section 5).

Each builder takes the :class:`LevelContext` (the config, the behaviour agent, the expert and
medium choices, the reference scores) and returns the level's dataset with its metadata.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from datagen.agents import AgentArtifacts, algo_for
from datagen.behaviour import load_behaviour_policy, load_replay
from datagen.config import GenerateConfig
from datagen.replay import replay_to_dataset
from datagen.reuse import fingerprint
from datagen.rollout import rollout
from datagen.selection import ExpertChoice
from offline_dt.data.d4rl import read_hdf5
from offline_dt.data.dataset import DatasetError, OfflineDataset, concatenate
from offline_dt.data.minari_io import minari_dataset_id

__all__ = ["LEVEL_BUILDERS", "LevelContext", "build_levels"]

log = logging.getLogger(__name__)


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
              "fingerprint": fingerprint(cfg, level, self.agent_steps)}
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
                             scaled_actions=(algo_for(ctx.action_space) == "SAC"), stop=stop,
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


def build_levels(ctx: LevelContext, needed: set[str], stages: dict[str, float]) -> None:
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
