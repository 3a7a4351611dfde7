"""The environment layer: making envs (:mod:`~offline_dt.envs.make`), checking them against a
trained network (:mod:`~offline_dt.envs.spaces`), episode seeds (:mod:`~offline_dt.envs.seeds`),
policies (:mod:`~offline_dt.envs.policies`), the one rollout engine
(:mod:`~offline_dt.envs.rollout`) and online episode streams (:mod:`~offline_dt.envs.stream`)
that datagen, the online methods and evaluation step through."""

from __future__ import annotations

from offline_dt.envs.make import (
    EnvDependencyError,
    EnvNotFoundError,
    env_spaces,
    make_env,
    make_vec_env,
)
from offline_dt.envs.policies import ActionReplayPolicy, CallablePolicy, Policy, RandomPolicy
from offline_dt.envs.rollout import (
    DEFAULT_MAX_ENVS,
    CollectedSteps,
    Transition,
    collect_transitions,
    run_episodes,
    step_policy,
)
from offline_dt.envs.seeds import (
    SEED_RULES,
    episode_seed,
    evaluation_seed,
    validation_seed,
)
from offline_dt.envs.spaces import SpaceMismatchError, require_spaces
from offline_dt.envs.stream import EpisodeStream

__all__ = [
    "DEFAULT_MAX_ENVS",
    "SEED_RULES",
    "ActionReplayPolicy",
    "CallablePolicy",
    "CollectedSteps",
    "EnvDependencyError",
    "EnvNotFoundError",
    "EpisodeStream",
    "Policy",
    "RandomPolicy",
    "SpaceMismatchError",
    "Transition",
    "collect_transitions",
    "env_spaces",
    "episode_seed",
    "evaluation_seed",
    "make_env",
    "make_vec_env",
    "require_spaces",
    "run_episodes",
    "step_policy",
    "validation_seed",
]
