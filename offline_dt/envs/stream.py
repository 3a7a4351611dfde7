"""Episodes streamed for online training: a vector env stepped on across calls.

:class:`EpisodeStream` keeps every sub-env playing episode after episode, each reset with its
own seed, yields the rollout engine's ``offline_dt.envs.rollout.Transition`` per step, and
restores its state by replaying actions (``offline_dt.methods.env_source`` collects with it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offline_dt.envs.make import make_vec_env
from offline_dt.envs.policies import Policy
from offline_dt.envs.rollout import (
    Transition,
    env_layout,
    policy_observations,
    true_next_observations,
)


class EpisodeStream:
    """A vector env stepped on across calls, for online training: each sub-env plays episode
    after episode, and every episode is reset with its own seed.

    Episodes are numbered in the order they start (the first ``num_envs`` at :meth:`start`,
    then, as episodes end, the sub-envs ascending within a step) and episode ``k`` resets with
    ``reset_seed(k)``, so a stream is reproducible from its seeds and its policy. An episode
    that ends is first autoreset by the vector env (SAME_STEP) and then reset again with its
    seed (``reset(options={"reset_mask": ...})``), after the step's :class:`Transition` was
    yielded; a policy that keeps per-env state is told through its optional hook
    ``begin_episodes(mask (N,) bool, seeds)``, called after those resets.

    Its state (:meth:`state_dict`) is every sub-env's reset seed and the env actions taken
    since, and :meth:`load_state_dict` restores the envs by replaying them, so a stream
    resumes exactly for envs that are deterministic given the reset seed and the actions
    (Gymnasium's classic-control and MuJoCo envs); the restored observations are checked.

    Attributes:
        observations: ``(N, obs_dim) float32`` what the policy acts on next.
        env_steps: steps taken, counted over all sub-envs.
        finished: ``(return, length)`` of every episode that ended since the last
            :meth:`drain_finished`.
    """

    def __init__(self, env_id: str, num_envs: int, reset_seed: Callable[[int], int],
                 env_kwargs: dict[str, Any] | None = None) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs: must be >= 1, found {num_envs}")
        self.envs = make_vec_env(env_id, int(num_envs), env_kwargs=env_kwargs)
        #: the flat view of a Dict or image space (``offline_dt.data.layout``), or None
        self.layout = env_layout(self.envs.single_observation_space, env_id)
        self.num_envs, self.reset_seed = int(num_envs), reset_seed
        self.started = 0
        self.env_steps = 0
        self.seeds = np.zeros(self.num_envs, np.int64)
        self.actions: list[list[np.ndarray]] = [[] for _ in range(self.num_envs)]
        self.returns = np.zeros(self.num_envs, np.float64)
        self.finished: list[tuple[float, int]] = []
        self.observations = np.zeros((0,), np.float32)

    def close(self) -> None:
        self.envs.close()

    def _next_seeds(self, count: int) -> list[int]:
        seeds = [int(self.reset_seed(self.started + i)) for i in range(count)]
        self.started += count
        return seeds

    def start(self, policy: Policy) -> None:
        """Reset every sub-env with the next episode seeds and ``policy.reset(N, seeds)``."""
        seeds = self._next_seeds(self.num_envs)
        obs, _ = self.envs.reset(seed=seeds)
        self.seeds[:] = seeds
        self.actions = [[] for _ in range(self.num_envs)]
        self.returns[:] = 0.0
        self.observations = policy_observations(obs, self.layout)
        policy.reset(self.num_envs, seeds=seeds)

    def steps(self, policy: Policy, steps: int) -> Iterator[Transition]:
        """Step every sub-env ``steps`` times with ``policy`` (which :meth:`start` reset),
        yielding a :class:`Transition` per step (``active`` all True) before the episodes that
        ended in it are reset with their seeds.

        Raises:
            ValueError: ``steps`` < 0, or the stream was never started.
        """
        if steps < 0:
            raise ValueError(f"steps: must be >= 0, found {steps}")
        if self.observations.size == 0:
            raise ValueError("EpisodeStream.start(policy) must be called before steps")
        for _ in range(int(steps)):
            observations = self.observations
            actions = policy.act(observations)
            obs, rewards, terminated, truncated, infos = self.envs.step(actions)
            terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
            counted = np.asarray(rewards, np.float64)
            policy.observe(counted)
            for j in range(self.num_envs):
                self.actions[j].append(np.array(actions[j], copy=True))
            self.returns += counted
            self.env_steps += self.num_envs
            t = self.env_steps // self.num_envs - 1
            yield Transition(t, observations, actions, rewards, terminated, truncated,
                             true_next_observations(obs, infos, self.layout),
                             np.ones(self.num_envs, bool), counted, infos)
            self.observations = policy_observations(obs, self.layout)
            self._begin(terminated | truncated, policy)

    def _begin(self, ended: np.ndarray, policy: Policy | None) -> None:
        """Reset the sub-envs that ended with their episodes' seeds; tell ``policy``."""
        if not ended.any():
            return
        for j in np.flatnonzero(ended):
            self.finished.append((float(self.returns[j]), len(self.actions[j])))
        seeds = self._next_seeds(int(ended.sum()))
        full = [int(s) for s in self.seeds]
        for j, s in zip(np.flatnonzero(ended), seeds, strict=True):
            full[j] = s
            self.actions[j] = []
            self.returns[j] = 0.0
        obs, _ = self.envs.reset(seed=full, options={"reset_mask": ended.copy()})
        self.seeds[:] = full
        self.observations = policy_observations(obs, self.layout)
        begin = getattr(policy, "begin_episodes", None)
        if begin is not None:
            begin(ended.copy(), [full[j] for j in np.flatnonzero(ended)])

    def drain_finished(self) -> list[tuple[float, int]]:
        """The ``(return, length)`` of the episodes that ended since the last call."""
        out, self.finished = self.finished, []
        return out

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers: the episode counters, each sub-env's reset seed, the env
        actions since (flat, with per-env counts), returns so far and observations."""
        counts = [len(a) for a in self.actions]
        flat = [a for acts in self.actions for a in acts]
        space = self.envs.single_action_space
        shape = () if isinstance(space, gym.spaces.Discrete) else tuple(space.shape)
        dtype = np.int64 if isinstance(space, gym.spaces.Discrete) else np.float32
        actions = np.stack(flat).astype(dtype) if flat else np.zeros((0, *shape), dtype)
        return {"started": self.started, "env_steps": self.env_steps,
                "seeds": torch.from_numpy(self.seeds.copy()),
                "counts": torch.tensor(counts, dtype=torch.int64),
                "actions": torch.from_numpy(actions),
                "returns": torch.from_numpy(self.returns.copy()),
                "observations": torch.from_numpy(self.observations.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s stream: reset each sub-env with its seed and replay
        its actions (staggered in one vector env, so they all end together; before its own
        reset a sub-env is stepped with a fixed action and what it does is discarded).

        Raises:
            ValueError: the state is for another number of envs, or the replayed
                observations differ from the saved ones (the env is not deterministic).
        """
        counts = state["counts"].cpu().numpy()
        if len(counts) != self.num_envs:
            raise ValueError(f"stream state: saved for {len(counts)} envs, this stream has "
                             f"{self.num_envs}")
        actions = state["actions"].cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(counts)])
        per_env = [actions[offsets[j]:offsets[j + 1]] for j in range(self.num_envs)]
        self.seeds = state["seeds"].cpu().numpy().astype(np.int64)
        self._replay(per_env)
        saved = state["observations"].cpu().numpy()
        if not np.array_equal(self.observations, saved):
            raise ValueError("stream state: replaying the saved actions from the saved reset "
                             "seeds did not reproduce the saved observations (is the env "
                             "deterministic given its seed?); cannot resume exactly")
        self.actions = [list(a) for a in per_env]
        self.started, self.env_steps = int(state["started"]), int(state["env_steps"])
        self.returns = state["returns"].cpu().numpy().astype(np.float64)
        self.finished = []

    def _replay(self, per_env: list[np.ndarray]) -> None:
        """Bring sub-env ``j`` to step ``len(per_env[j])`` of the episode seeded
        ``self.seeds[j]``: it is reset ``M - len`` steps into a replay of ``M`` steps."""
        space = self.envs.single_action_space
        filler = (np.zeros((), np.int64) if isinstance(space, gym.spaces.Discrete)
                  else ((space.low + space.high) / 2).astype(np.float32))
        lengths = np.array([len(a) for a in per_env])
        m = int(lengths.max(initial=0))
        obs, _ = self.envs.reset(seed=[int(s) for s in self.seeds])
        for s in range(m + 1):
            due = (m - lengths == s) & (s > 0)
            if due.any():
                obs, _ = self.envs.reset(seed=[int(x) for x in self.seeds],
                                         options={"reset_mask": due})
            if s == m:
                break
            acts = np.stack([per_env[j][s - (m - lengths[j])] if s >= m - lengths[j]
                             else filler for j in range(self.num_envs)])
            obs, *_ = self.envs.step(acts)
        self.observations = policy_observations(obs, self.layout)
