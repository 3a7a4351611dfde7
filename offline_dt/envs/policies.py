"""What the rollout engine steps: the :class:`Policy` protocol and the policies that need no
network.

:class:`RandomPolicy` (seeded per episode), :class:`CallablePolicy` (any batched
``fn(observations) -> actions``, e.g. a Stable-Baselines3 agent), :class:`ActionReplayPolicy`
(pre-drawn actions, e.g. datagen's random level). A trained network acts through its method's
policy (``offline_dt.methods``: ``Method.policy``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch


@runtime_checkable
class Policy(Protocol):
    """What the engine rolls out: one batched call per env step.

    ``reset(num_envs, seeds)`` starts ``num_envs`` episodes (``seeds`` are their reset seeds,
    which stochastic policies use to seed themselves); ``act`` maps ``(N, obs_dim) float32``
    observations to ``(N, act_dim) float32`` (Box) or ``(N,) int64`` (Discrete) actions in env
    units; ``observe`` receives the ``(N,) float64`` rewards of the step just taken (zero for
    an env whose first episode has ended).
    """

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None: ...

    def act(self, observations: np.ndarray) -> np.ndarray: ...

    def observe(self, rewards: np.ndarray) -> None: ...


def _as_action_array(actions: Any) -> np.ndarray:
    """``(N, ...)`` actions as ``int64`` (integer input) or ``float32`` (anything else)."""
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().cpu().numpy()
    actions = np.asarray(actions)
    return actions.astype(np.int64 if actions.dtype.kind in "iu" else np.float32)


class RandomPolicy:
    """Uniform random actions: ``action_space.sample()`` per env.

    Env ``j``'s copy of the space is seeded with its episode's reset seed (or ``seed + j``
    when none are given), so an episode gets the same actions in the batched and the
    sequential loop.
    """

    def __init__(self, action_space: gym.Space, seed: int = 0) -> None:
        self.action_space = action_space
        self.seed = seed
        self.spaces: list[gym.Space] = []

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        seeds = list(seeds) if seeds is not None else [self.seed + j for j in range(num_envs)]
        self.spaces = []
        for s in seeds:
            space = copy.deepcopy(self.action_space)
            space.seed(int(s))
            self.spaces.append(space)

    def act(self, observations: np.ndarray) -> np.ndarray:
        actions = np.stack([np.asarray(sp.sample()) for sp in self.spaces])
        if isinstance(self.action_space, gym.spaces.Discrete):
            return actions.astype(np.int64)
        return actions.astype(np.float32)

    def observe(self, rewards: np.ndarray) -> None:
        pass


class CallablePolicy:
    """Wraps a batched, stateless ``fn(observations (N, obs_dim) float32) -> actions``, e.g. the
    behaviour agent from ``datagen.behaviour.load_behaviour_policy``. Integer actions come back
    as ``int64``, others as ``float32`` (torch tensors are moved to NumPy)."""

    def __init__(self, fn: Callable[[np.ndarray], Any]) -> None:
        self.fn = fn

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        self.num_envs = num_envs

    def act(self, observations: np.ndarray) -> np.ndarray:
        return _as_action_array(self.fn(np.asarray(observations, np.float32)))

    def observe(self, rewards: np.ndarray) -> None:
        pass


class ActionReplayPolicy:
    """Replays pre-drawn actions, one row per step, ignoring the observations.

    Args:
        actions: ``(T, N, act_dim)`` (Box) or ``(T, N)`` (Discrete): step ``t``'s actions of
            the ``N`` envs; returned as ``float32`` / ``int64``.

    Raises:
        ValueError: ``actions`` has fewer than 2 dimensions; on ``reset``, ``num_envs`` differs
            from ``N``; on ``act``, all ``T`` rows have been replayed.
    """

    def __init__(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions)
        if actions.ndim < 2:
            raise ValueError(f"actions: expected (steps, num_envs, ...), found shape "
                             f"{actions.shape}")
        self.actions = actions
        self.t = 0

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        if num_envs != self.actions.shape[1]:
            raise ValueError(f"num_envs: the replayed actions are for {self.actions.shape[1]} "
                             f"envs, found {num_envs}")
        self.t = 0

    def act(self, observations: np.ndarray) -> np.ndarray:
        if self.t >= len(self.actions):
            raise ValueError(f"actions: all {len(self.actions)} steps have been replayed")
        self.t += 1
        return _as_action_array(self.actions[self.t - 1])

    def observe(self, rewards: np.ndarray) -> None:
        pass

