"""The behaviour baseline: the policy that wrote a level's data, acting as it did then.

Per level: ``random`` → uniform random; ``medium``/``expert`` → the checkpoint named in the
dataset metadata (SAC acts stochastically, as when collecting), or for a scripted recipe's
level (metadata ``recipe``: PointMaze, MiniGrid) the recipe's noisy policy
(:func:`scripted_policy`); ``medium-expert`` → its fixed
mixture (:class:`MixturePolicy`), half the episodes medium, half expert. The replay levels
(:data:`offline_dt.study.runs.REPLAY_LEVELS`) have none: a sequence of policies during SAC
training wrote them, not one agent, so the report compares them with the dataset's own episode
returns (its ``data`` row) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offline_dt.data.d4rl import LEVELS
from offline_dt.envs.policies import CallablePolicy, RandomPolicy
from offline_dt.study.runs import REPLAY_LEVELS

#: Levels with a behaviour job: those written by one policy (or medium-expert's fixed mixture).
BEHAVIOUR_LEVELS = tuple(lv for lv in LEVELS if lv not in REPLAY_LEVELS)


class MixturePolicy:
    """Episode-level mixture of batched callables: env ``j`` of a wave follows policy
    ``episode_seed % len(policies)`` for its whole episode (medium-expert's behaviour)."""

    def __init__(self, fns: Sequence[Callable[[np.ndarray], np.ndarray]]) -> None:
        self.fns = list(fns)
        self.assign = np.zeros(0, np.int64)

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        seeds = list(seeds) if seeds is not None else list(range(num_envs))
        self.assign = np.asarray(seeds, np.int64) % len(self.fns)

    def act(self, observations: np.ndarray) -> np.ndarray:
        out = None
        for k, fn in enumerate(self.fns):
            rows = np.flatnonzero(self.assign == k)
            if rows.size == 0:
                continue
            a = np.asarray(fn(observations[rows]))
            if out is None:
                out = np.zeros((len(observations), *a.shape[1:]), a.dtype)
            out[rows] = a
        return out

    def observe(self, rewards: np.ndarray) -> None:
        pass


def scripted_policy(level: str, meta: dict[str, Any], env_id: str, seed: int
                    ) -> tuple[Any, dict[str, Any]]:
    """The scripted recipe's policy that wrote ``level`` (PointMaze's noisy planner-controller,
    MiniGrid's epsilon-BFS expert; ``datagen.recipes``), acting on mirror envs of the engine's
    episodes (``datagen.scripted_policy.MirroredScripted``), noise as when collecting.

    Raises:
        ValueError: ``env_id`` has no recipe, or not the one the dataset's metadata names.
    """
    from datagen.scripted import recipe_for
    from datagen.scripted_policy import MirroredScripted

    recipe = recipe_for(env_id)
    if recipe is None or recipe.name != meta["recipe"]:
        raise ValueError(f"{meta.get('dataset_id', level)}: metadata names recipe "
                         f"{meta['recipe']!r}, env {env_id} has "
                         f"{recipe.name if recipe else 'none'}")
    return MirroredScripted(recipe, env_id, level, seed), {
        "behaviour": recipe.agent_name(level), "recipe": recipe.name,
        "recipe_settings": meta.get("recipe_settings")}


def behaviour_policy(level: str, metas: dict[str, dict[str, Any]], env_id: str, device: str,
                     seed: int) -> tuple[Any, dict[str, Any]]:
    """The policy that produced a level's data, and a JSON description of it.

    ``metas`` maps level → dataset metadata (``medium-expert`` needs ``medium`` and
    ``expert``). SAC acts stochastically, as it did when collecting (metadata ``policy``).

    Raises:
        ValueError: ``level`` is a replay level (no single policy wrote it) or its metadata
            names no checkpoint.
    """
    if level not in BEHAVIOUR_LEVELS:
        raise ValueError(f"{level}: no behaviour policy (a sequence of policies during SAC "
                         f"training wrote it); behaviour levels are {list(BEHAVIOUR_LEVELS)}")
    from datagen.behaviour import load_behaviour_policy

    if level == "random":
        space = gym.make(env_id).action_space
        return RandomPolicy(space, seed), {"behaviour": "uniform random"}
    if metas[level].get("recipe"):
        return scripted_policy(level, metas[level], env_id, seed)
    torch.manual_seed(seed)

    def policy_path(md: dict[str, Any]) -> tuple[Path, bool]:
        ckpt = md.get("checkpoint")
        if not ckpt:
            raise ValueError(f"{md.get('dataset_id', level)}: metadata names no behaviour "
                             "checkpoint")
        return Path(ckpt), md.get("policy", "stochastic") == "stochastic"

    def load(path: Path, stochastic: bool) -> Any:
        return load_behaviour_policy(path, env_id, device, deterministic=not stochastic,
                                     seed=seed)

    if level == "medium-expert":
        (med, s_med), (exp, s_exp) = policy_path(metas["medium"]), policy_path(metas["expert"])
        desc = {"behaviour": [str(med), str(exp)], "stochastic": s_med and s_exp,
                "mixture": "per episode by seed parity: even medium, odd expert"}
        return MixturePolicy([load(med, s_med), load(exp, s_exp)]), desc
    ckpt, stochastic = policy_path(metas[level])
    return CallablePolicy(load(ckpt, stochastic)), {"behaviour": str(ckpt),
                                                    "stochastic": stochastic}
