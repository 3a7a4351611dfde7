"""The one rollout engine: a policy stepped through a Gymnasium vector env.

Everything that rolls a policy out goes through :func:`step_policy`, one stepping core:

* :func:`run_episodes` plays given episodes (one reset seed each) to their end, in waves of at
  most ``max_envs`` envs, and returns per-episode returns and lengths.
  ``offline_dt.evaluation.evaluate`` scores policies with it, and ``datagen`` its reference scores
  and learning curves.
* :func:`collect_transitions` steps every sub-env a fixed number of steps with autoreset and
  returns the transitions, time-major, with the returns ``RecordEpisodeStatistics`` recorded.
  ``datagen.rollout`` builds its datasets from it.
* :class:`EpisodeStream` steps a vector env on across calls, every episode reset with its own
  seed and a policy with per-env state told when an env starts a new episode; its state is
  restored by replaying actions. ``offline_dt.methods.env_source`` collects with it.

A policy answers the :class:`Policy` protocol: :class:`RandomPolicy` (seeded per episode),
:class:`CallablePolicy` (any batched ``fn(observations) -> actions``, e.g. a Stable-Baselines3
agent), :class:`ActionReplayPolicy` (pre-drawn actions, e.g. datagen's random level), or a
Decision Transformer (``offline_dt.evaluation.evaluate.DTPolicy``).

Vector envs are synchronous with ``AutoresetMode.SAME_STEP`` (:func:`make_vec_env`): a sub-env
that ends is reset inside the same ``step``, so the step returns the next episode's first
observation; :func:`step_policy` puts the true last observation (``infos["final_obs"]``) into
:attr:`Transition.next_observations`.

This module depends on Gymnasium, NumPy and torch only; neither ``offline_dt`` nor ``datagen``
has to import anything else to roll out a policy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch

#: Episode ``i`` of an evaluation with seed ``s`` resets its env with ``s * SEED_STRIDE + i``.
SEED_STRIDE = 100_000
#: Seeds of :func:`episode_seed`, :func:`evaluation_seed` and :func:`validation_seed` lie in
#: ``[0, SEED_LIMIT)``, so ``seed * SEED_STRIDE + i < SEED_RANGE``: each rule below fills its own
#: block of ``SEED_RANGE`` reset seeds and no two blocks meet.
SEED_LIMIT = 10**7
SEED_RANGE = SEED_LIMIT * SEED_STRIDE  # 10**12
#: Most envs stepped at once; more episodes run in several waves of at most this many.
DEFAULT_MAX_ENVS = 256


def episode_seed(seed: int, i: int) -> int:
    """Reset seed of episode ``i`` (0-based) of an evaluation with seed ``seed``:
    ``seed * SEED_STRIDE + i``, in ``[0, SEED_RANGE)`` (datagen's reference scores and agent
    learning curves).

    Raises:
        ValueError: ``i`` outside ``[0, SEED_STRIDE)`` or ``seed`` outside ``[0, SEED_LIMIT)``.
    """
    if not 0 <= int(i) < SEED_STRIDE:
        raise ValueError(f"episode index must be in [0, {SEED_STRIDE}), found {i}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, {SEED_LIMIT}), found {seed}")
    return int(seed) * SEED_STRIDE + int(i)


#: Evaluation (test) episodes reset with seeds in ``[EVALUATION_SEED_BASE, VALIDATION_SEED_BASE)``:
#: a block that no dataset of ``datagen`` is collected from (its rollouts reset sub-env ``j``
#: with ``seed + j`` for its small generation seeds; its agent learning curves and reference
#: scores use :func:`episode_seed`, below ``SEED_RANGE``), so a test episode never starts where
#: a dataset episode did.
EVALUATION_SEED_BASE = SEED_RANGE
#: Validation episodes (choosing a target return or inference setting, learning curves) reset
#: with seeds in ``[VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + SEED_RANGE)``: never a test
#: episode, whatever the two seeds are.
VALIDATION_SEED_BASE = 2 * SEED_RANGE


def evaluation_seed(seed: int, i: int) -> int:
    """Reset seed of test episode ``i`` of an evaluation with seed ``seed``:
    ``EVALUATION_SEED_BASE + seed * SEED_STRIDE + i``, in ``[10**12, 2 * 10**12)``.

    Raises:
        ValueError: ``i`` outside ``[0, SEED_STRIDE)`` or ``seed`` outside ``[0, SEED_LIMIT)``.
    """
    return EVALUATION_SEED_BASE + episode_seed(seed, i)


def validation_seed(seed: int, i: int) -> int:
    """Reset seed of validation episode ``i`` of an evaluation with seed ``seed``:
    ``VALIDATION_SEED_BASE + seed * SEED_STRIDE + i``, in ``[2 * 10**12, 3 * 10**12)``, so no
    validation episode is a test episode (:func:`evaluation_seed`) for any pair of seeds.

    Raises:
        ValueError: ``i`` outside ``[0, SEED_STRIDE)`` or ``seed`` outside ``[0, SEED_LIMIT)``.
    """
    return VALIDATION_SEED_BASE + episode_seed(seed, i)


#: The reset-seed rule of each kind of episode, as eval.json records it.
SEED_RULES = {"test": f"{EVALUATION_SEED_BASE} + seed * {SEED_STRIDE} + i",
              "validation": f"{VALIDATION_SEED_BASE} + seed * {SEED_STRIDE} + i"}


# ---------------------------------------------------------------------------------- policies
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
    behaviour agent from ``datagen.agents.load_behaviour_policy``. Integer actions come back
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


# ---------------------------------------------------------------------------------- stepping
def make_vec_env(env_id: str, num_envs: int, record_stats: bool = False,
                 env_kwargs: dict[str, Any] | None = None) -> gym.vector.VectorEnv:
    """A synchronous vector env of ``num_envs`` copies of ``env_id`` with SAME_STEP autoreset.

    With ``AutoresetMode.SAME_STEP`` a sub-env that ends is reset inside the same ``step``:
    the returned observation is the new episode's first one and the true last observation is
    in ``infos["final_obs"]`` (mask ``infos["_final_obs"]``). With ``record_stats`` the
    ``RecordEpisodeStatistics`` wrapper adds ``infos["episode"]["r"]`` (float64 returns, mask
    ``infos["_episode"]``). ``env_kwargs`` go to ``gym.make`` (e.g. ``max_episode_steps``).
    """
    envs = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        **(env_kwargs or {}),
    )
    if record_stats:
        envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    return envs


@dataclass
class Transition:
    """One step of ``N`` envs, as :func:`step_policy` yields it.

    Attributes:
        t: step index since the reset, from 0.
        observations: ``(N, obs_dim) float32`` what the policy acted on.
        actions: ``(N, act_dim) float32`` or ``(N,) int64``, as the policy returned them.
        rewards: ``(N,)`` the env's rewards (env dtype, float64 for Gymnasium's classic envs).
        terminated, truncated: ``(N,) bool``.
        next_observations: ``(N, obs_dim)`` the observation after the step; where the episode
            ended, the true last observation (``infos["final_obs"]``), not the next episode's
            first.
        active: ``(N,) bool`` the env was still in its first episode since the reset when it
            took this step.
        counted_rewards: ``(N,) float64`` ``rewards`` where ``active``, else 0 (what
            ``policy.observe`` received).
        infos: the vector env's ``infos`` of the step.
    """

    t: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_observations: np.ndarray
    active: np.ndarray
    counted_rewards: np.ndarray
    infos: dict[str, Any]


def _true_next_observations(next_obs: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
    """``next_obs`` with the rows of ended episodes replaced by ``infos["final_obs"]``."""
    if "_final_obs" not in infos:
        return next_obs
    ended = infos["_final_obs"]
    fixed = np.array(next_obs, copy=True)
    fixed[ended] = np.stack(infos["final_obs"][ended])
    return fixed


def step_policy(envs: gym.vector.VectorEnv, policy: Policy, seeds: Sequence[int], *,
                steps: int | None = None) -> Iterator[Transition]:
    """The stepping core: reset ``envs`` and ``policy``, then step them together.

    Resets sub-env ``j`` with ``seeds[j]`` and calls ``policy.reset(N, seeds)``; then, once per
    step, ``policy.act`` on the ``(N, obs_dim) float32`` observations, ``envs.step``, and
    ``policy.observe`` with :attr:`Transition.counted_rewards`, yielding a :class:`Transition`
    after each step. With ``steps=None`` it stops once every env has ended its first episode
    (an env that ended keeps being stepped with the others until then, its autoreset episode
    marked inactive); otherwise after exactly ``steps`` steps, across autoresets (the policy
    must then be stateless across episodes, e.g. :class:`CallablePolicy`).

    Raises:
        ValueError: ``len(seeds)`` differs from ``envs.num_envs``, or ``steps`` is negative.
    """
    n = envs.num_envs
    if len(seeds) != n:
        raise ValueError(f"seeds: expected one reset seed per env ({n}), found {len(seeds)}")
    if steps is not None and steps < 0:
        raise ValueError(f"steps: must be >= 0 or None, found {steps}")
    seeds = [int(s) for s in seeds]
    obs, _ = envs.reset(seed=seeds)
    policy.reset(n, seeds=seeds)
    done = np.zeros(n, bool)
    t = 0
    while (not done.all()) if steps is None else t < steps:
        observations = np.asarray(obs, np.float32)
        actions = policy.act(observations)
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool)
        active = ~done
        counted = np.where(active, np.asarray(rewards, np.float64), 0.0)
        done |= terminated | truncated
        policy.observe(counted)
        yield Transition(t, observations, actions, rewards, terminated, truncated,
                         _true_next_observations(obs, infos), active, counted, infos)
        t += 1


# ---------------------------------------------------------------------------------- episodes
def run_episodes(
    env_id: str,
    policy: Policy,
    seeds: Sequence[int],
    *,
    max_envs: int = DEFAULT_MAX_ENVS,
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Play one episode per reset seed with ``policy`` and return what each one scored.

    Episodes run in waves of at most ``max_envs`` envs of one synchronous vector env
    (:func:`make_vec_env`). All envs of a wave are reset together, episode ``i`` with
    ``seeds[i]``, and ``policy.reset(n, wave_seeds)`` is called once per wave, so every env of
    a wave is at the same timestep (what ``DTPolicy`` relies on). A wave runs until every one
    of its episodes has ended (terminated or truncated); an env whose episode has ended keeps
    being stepped, but its autoreset episode is neither counted nor observed, so each episode
    counts exactly once.

    Args:
        env_id: Gymnasium id.
        policy: a :class:`Policy`.
        seeds: ``(E,)`` reset seeds, one per episode (e.g. :func:`episode_seed`).
        max_envs: most envs stepped at once, >= 1.
        env_kwargs: extra ``gym.make`` keyword arguments (e.g. ``max_episode_steps``).

    Returns:
        ``(returns, lengths)``: ``(E,) float64`` undiscounted returns and ``(E,) int64``
        episode lengths, in the order of ``seeds``.

    Raises:
        ValueError: ``seeds`` empty, or ``max_envs`` < 1.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: need at least one episode seed, found none")
    if int(max_envs) < 1:
        raise ValueError(f"max_envs: must be >= 1, found {max_envs}")
    max_envs = int(max_envs)
    returns = np.zeros(len(seeds), np.float64)
    lengths = np.zeros(len(seeds), np.int64)
    for lo in range(0, len(seeds), max_envs):
        wave = seeds[lo:lo + max_envs]
        envs = make_vec_env(env_id, len(wave), env_kwargs=env_kwargs)
        try:
            for step in step_policy(envs, policy, wave):
                returns[lo:lo + len(wave)] += step.counted_rewards
                lengths[lo:lo + len(wave)] += step.active
        finally:
            envs.close()
    return returns, lengths


# ---------------------------------------------------------------------------------- transitions
@dataclass
class CollectedSteps:
    """Transitions of ``N`` sub-envs stepped ``T`` times each with autoreset, time-major.

    Attributes:
        observations, next_observations: ``(T, N, obs_dim) float32``; ``next_observations``
            holds the true last observation where an episode ended.
        actions: ``(T, N, act_dim) float32`` (Box) or ``(T, N) int64`` (Discrete).
        rewards: ``(T, N) float32``.
        terminated, truncated: ``(T, N) bool``.
        episode_end_steps, episode_end_envs: ``(K,) int64`` step and sub-env of every episode
            that ended, in step order (sub-envs ascending within a step).
        episode_returns: ``(K,) float64`` those episodes' returns as ``RecordEpisodeStatistics``
            recorded them.
        observation_space, action_space: the single sub-env's spaces.
    """

    observations: np.ndarray
    next_observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episode_end_steps: np.ndarray
    episode_end_envs: np.ndarray
    episode_returns: np.ndarray
    observation_space: gym.Space
    action_space: gym.Space


def _empty_steps(steps: int, num_envs: int, obs_space: gym.Space, act_space: gym.Space
                 ) -> dict[str, np.ndarray]:
    obs_dim = obs_space.shape[0]
    if isinstance(act_space, gym.spaces.Discrete):
        actions = np.empty((steps, num_envs), np.int64)
    else:
        actions = np.empty((steps, num_envs, *act_space.shape), np.float32)
    return {"observations": np.empty((steps, num_envs, obs_dim), np.float32),
            "next_observations": np.empty((steps, num_envs, obs_dim), np.float32),
            "actions": actions,
            "rewards": np.empty((steps, num_envs), np.float32),
            "terminated": np.empty((steps, num_envs), bool),
            "truncated": np.empty((steps, num_envs), bool)}


def collect_transitions(
    env_id: str,
    policy: Policy,
    seeds: Sequence[int],
    steps: int,
    *,
    on_step: Callable[[int], None] | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> CollectedSteps:
    """Step ``len(seeds)`` sub-envs ``steps`` times each with ``policy``, autoresetting.

    Sub-env ``j`` is reset once, with ``seeds[j]``; an episode that ends is followed at once
    by the next (SAME_STEP autoreset, no reset seed). The env is wrapped in
    ``RecordEpisodeStatistics``, whose returns are kept for every episode that ended.
    ``policy`` must be stateless across episodes (:class:`CallablePolicy`,
    :class:`ActionReplayPolicy`). ``on_step(t)`` is called after step ``t`` (progress bars);
    ``env_kwargs`` go to ``gym.make`` (e.g. ``max_episode_steps``).

    Returns:
        :class:`CollectedSteps` with ``T = steps`` rows per sub-env.

    Raises:
        ValueError: ``seeds`` empty or ``steps`` < 1.
    """
    if len(seeds) < 1:
        raise ValueError("seeds: need one reset seed per sub-env, found none")
    if int(steps) < 1:
        raise ValueError(f"steps: must be >= 1, found {steps}")
    envs = make_vec_env(env_id, len(seeds), record_stats=True, env_kwargs=env_kwargs)
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        buf = _empty_steps(int(steps), len(seeds), obs_space, act_space)
        end_steps: list[np.ndarray] = []
        end_envs: list[np.ndarray] = []
        end_returns: list[np.ndarray] = []
        for tr in step_policy(envs, policy, seeds, steps=int(steps)):
            for key in buf:
                buf[key][tr.t] = getattr(tr, key)
            if "_episode" in tr.infos:
                ended = tr.infos["_episode"]
                end_envs.append(np.flatnonzero(ended))
                end_steps.append(np.full(int(ended.sum()), tr.t, np.int64))
                end_returns.append(np.asarray(tr.infos["episode"]["r"], np.float64)[ended])
            if on_step is not None:
                on_step(tr.t)
    finally:
        envs.close()

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return CollectedSteps(**buf, episode_end_steps=cat(end_steps, np.int64),
                          episode_end_envs=cat(end_envs, np.int64),
                          episode_returns=cat(end_returns, np.float64),
                          observation_space=obs_space, action_space=act_space)


# ---------------------------------------------------------------------------------- streams
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
        self.observations = np.asarray(obs, np.float32)
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
                             _true_next_observations(obs, infos), np.ones(self.num_envs, bool),
                             counted, infos)
            self.observations = np.asarray(obs, np.float32)
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
        self.observations = np.asarray(obs, np.float32)
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
        self.observations = np.asarray(obs, np.float32)
