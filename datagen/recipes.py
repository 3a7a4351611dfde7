"""Scripted recipes: env families whose datasets a planner or search expert writes, not a
trained Stable-Baselines3 agent (the field's recipes for goal-conditioned and gridworld data).

A :class:`Recipe` says, for the env ids it :meth:`~Recipe.matches`, which levels it builds,
which env the data is collected in and how a long run is cut into episodes, which policy acts
at each level and which policies give D4RL's reference scores. The engine that steps them and
writes the levels is ``datagen.scripted``; one module per family holds its recipe:
``datagen.maze`` (PointMaze: a waypoint planner driving a PD controller, D4RL maze2d) and
``datagen.minigrid`` (MiniGrid FourRooms: a breadth-first-search expert with epsilon-random
actions). ``datagen.scripted.recipe_for`` picks the recipe from the env id; an env no recipe
matches is generated with the SB3 behaviour agent (``datagen.agents``).

A :class:`ScriptedPolicy` acts on one env: it sees the env's raw observation (a Dict for
PointMaze and MiniGrid, text leaves included) and the env itself (``env.unwrapped``'s maze
map or grid), and draws its noise from a ``numpy.random.Generator`` it is given.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np

__all__ = ["Recipe", "ScriptedPolicy", "UniformRandom", "env_name"]


class ScriptedPolicy(Protocol):
    """One env's policy: ``reset`` after every ``env.reset``, then ``act`` once per step.

    ``act`` returns an action of ``env.action_space``: ``(act_dim,) float32`` for a Box,
    an ``int`` for a Discrete.
    """

    def reset(self, env: gym.Env, obs: Any) -> None: ...

    def act(self, env: gym.Env, obs: Any) -> Any: ...


class UniformRandom:
    """Uniform random actions of ``env.action_space`` from ``rng`` (D4RL's random agent):
    ``rng.uniform(low, high)`` for a Box, ``rng.integers(n) + start`` for a Discrete."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def reset(self, env: gym.Env, obs: Any) -> None:
        pass

    def act(self, env: gym.Env, obs: Any) -> Any:
        space = env.action_space
        if isinstance(space, gym.spaces.Discrete):
            return int(self.rng.integers(int(space.n)) + int(space.start))
        return self.rng.uniform(space.low, space.high).astype(space.dtype)


class Recipe:
    """A family's recipe; subclasses fill the class attributes and the policy hooks.

    Attributes:
        name: the recipe's name in metadata and messages (``pointmaze-waypoint``).
        levels: the levels it builds, in build order (a subset of
            ``offline_dt.data.d4rl.LEVELS``).
        version: bumped when the recipe's data change (part of every fingerprint).
    """

    name: str = ""
    levels: tuple[str, ...] = ()
    version: int = 1

    def matches(self, env_id: str) -> bool:
        """Whether ``env_id`` (its name without a ``module:`` part) is of this family."""
        raise NotImplementedError

    def register(self) -> None:
        """Register the family's envs with Gymnasium (import its package)."""

    def collection_env(self, env_id: str, steps: int) -> gym.Env:
        """The env one stream of ``steps`` data steps is collected in (default: ``env_id``
        as registered)."""
        return gym.make(env_id)

    def evaluation_env(self, env_id: str) -> gym.Env:
        """The env reference scores are measured in: ``env_id`` as registered, the env that
        ``offline-dt evaluate`` makes from the dataset's ``env_id``."""
        return gym.make(env_id)

    def episode_cut(self, env_id: str) -> int | None:
        """Steps after which a continuing run is cut into a new episode without a reset
        (``timeouts=True``), or None: episodes end when the env ends them."""
        return None

    def policy(self, level: str, rng: np.random.Generator) -> ScriptedPolicy:
        """The (stochastic) behaviour policy that collects ``level``."""
        raise NotImplementedError

    def reference_policy(self, rng: np.random.Generator) -> ScriptedPolicy:
        """The noise-free expert whose evaluation return is ``ref_max_score``."""
        raise NotImplementedError

    def agent_name(self, level: str) -> str:
        """The dataset's ``agent`` name at ``level``."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The recipe's constants (gains, noise, epsilons), JSON-able: stored in every
        dataset's metadata and part of its fingerprint."""
        return {}


def env_name(env_id: str) -> str:
    """``env_id`` without a ``module:`` part (``gymnasium_robotics:PointMaze_UMaze-v3`` →
    ``PointMaze_UMaze-v3``)."""
    return env_id.split(":")[-1]
