"""A scripted recipe's policy (``datagen.recipes``) as a batched policy of the rollout engine,
so that the behaviour baseline of a PointMaze or MiniGrid level is evaluated by the same
engine, on the same test episodes, into the same ``eval.json`` as every other row.

A :class:`~datagen.recipes.ScriptedPolicy` acts from the env itself (PointMaze's maze map,
MiniGrid's full grid and the agent's position: more than the egocentric observation shows),
while the engine's policies see only the ``(N, obs_dim)`` flat view. :class:`MirroredScripted`
bridges the two with one *mirror* env per episode: ``reset(n, seeds)`` makes ``n`` copies of
the recipe's evaluation env (the registered env, the one the engine steps) and resets copy
``j`` with the engine's reset seed ``seeds[j]``; ``act`` checks that each mirror's observation
(its flat view) equals the engine's row ``j``, lets the scripted policy act on the mirror and
steps the mirror with that action, which the engine then takes too. The envs are
deterministic given the seed and the actions, so mirror and engine stay in step; a mismatch
raises rather than scoring a policy on another episode than the one played. Once a mirror's
episode has ended, its row gets a placeholder action (the engine counts nothing after an
episode's end).

Episode ``j``'s noise (PointMaze's waypoint offsets and action noise, MiniGrid's epsilon) is
drawn from ``default_rng([seed, seeds[j]])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from datagen.recipes import Recipe
from offline_dt.envs.rollout import env_layout, policy_observations

__all__ = ["MirrorDivergedError", "MirroredScripted"]

#: Largest difference between a mirror's observation and the engine's (float32 rounding).
TOLERANCE = 1e-5


class MirrorDivergedError(RuntimeError):
    """A mirror env's observation differs from the engine's: the env is not deterministic
    given its reset seed and actions, or it was made differently."""


class MirroredScripted:
    """``recipe``'s policy of ``level`` (``expert=True``: its noise-free reference policy)
    on ``env_id``, as a :class:`~offline_dt.envs.policies.Policy` (module docstring).

    Raises:
        ValueError: ``level`` is not one the recipe builds.
    """

    def __init__(self, recipe: Recipe, env_id: str, level: str, seed: int = 0,
                 expert: bool = False) -> None:
        if level not in recipe.levels:
            raise ValueError(f"level: recipe {recipe.name} builds {list(recipe.levels)}, "
                             f"found {level!r}")
        self.recipe, self.env_id, self.level = recipe, env_id, level
        self.seed, self.expert = int(seed), expert
        self.envs: list[gym.Env] = []

    def _policy(self, rng: np.random.Generator) -> Any:
        return self.recipe.reference_policy(rng) if self.expert else self.recipe.policy(
            self.level, rng)

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        """Make and reset one mirror env per episode (``seeds``: the engine's reset seeds).

        Raises:
            ValueError: ``seeds`` missing or not ``num_envs`` long (a mirror needs them).
        """
        if seeds is None or len(seeds) != num_envs:
            raise ValueError(f"seeds: a mirrored scripted policy needs the {num_envs} reset "
                             f"seeds of the engine's episodes, found {seeds}")
        self.close()
        self.envs, self.obs, self.policies = [], [], []
        for s in seeds:
            env = self.recipe.evaluation_env(self.env_id)
            obs, _ = env.reset(seed=int(s))
            policy = self._policy(np.random.default_rng([self.seed, int(s)]))
            policy.reset(env, obs)
            self.envs.append(env)
            self.obs.append(obs)
            self.policies.append(policy)
        self.layout = env_layout(self.envs[0].observation_space)
        self.done = np.zeros(num_envs, bool)

    def _check(self, j: int, row: np.ndarray) -> None:
        mine = policy_observations(self.obs[j], self.layout)[0]
        if mine.shape != row.shape or not np.allclose(mine, row, atol=TOLERANCE, rtol=0):
            raise MirrorDivergedError(
                f"{self.env_id}: the mirror env of episode {j} observes {mine[:6]}..., the "
                f"engine {row[:6]}...; the env is not reproducible from its reset seed")

    def act(self, observations: np.ndarray) -> np.ndarray:
        """``(N, act_dim) float32`` or ``(N,) int64`` actions: the scripted policy's on each
        mirror whose episode goes on, a placeholder (zeros) elsewhere.

        Raises:
            MirrorDivergedError: a mirror's observation is not the engine's row.
        """
        space = self.envs[0].action_space
        discrete = isinstance(space, gym.spaces.Discrete)
        out = np.zeros((len(self.envs),) if discrete else (len(self.envs), *space.shape),
                       np.int64 if discrete else np.float32)
        for j, env in enumerate(self.envs):
            if self.done[j]:
                continue
            self._check(j, np.asarray(observations[j], np.float32))
            action = self.policies[j].act(env, self.obs[j])
            self.obs[j], _, term, trunc, _ = env.step(action)
            self.done[j] = term or trunc
            out[j] = action
        return out

    def observe(self, rewards: np.ndarray) -> None:
        pass

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []
