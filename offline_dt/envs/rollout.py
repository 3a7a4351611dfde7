"""The one rollout engine: a policy stepped through a Gymnasium vector env.

Everything that rolls a policy out goes through :func:`step_policy`, one stepping core:

* :func:`run_episodes` plays given episodes (one reset seed each, ``offline_dt.envs.seeds``) to
  their end, in waves of at most ``max_envs`` envs, and returns per-episode returns and
  lengths. ``offline_dt.evaluation`` scores policies with it, and ``datagen`` its reference
  scores and learning curves.
* :func:`collect_transitions` steps every sub-env a fixed number of steps with autoreset and
  returns the transitions, time-major, with the returns ``RecordEpisodeStatistics`` recorded.
  ``datagen.rollout`` builds its datasets from it.
* ``offline_dt.envs.stream.EpisodeStream`` steps a vector env on across calls for online
  training, yielding the same :class:`Transition`.

A policy answers the ``offline_dt.envs.policies.Policy`` protocol. Vector envs are synchronous
with ``AutoresetMode.SAME_STEP`` (``offline_dt.envs.make.make_vec_env``): a sub-env that ends is
reset inside the same ``step``, so the step returns the next episode's first observation;
:func:`step_policy` puts the true last observation (``infos["final_obs"]``) into
:attr:`Transition.next_observations`.

This layer depends on Gymnasium, NumPy and torch only; neither ``offline_dt`` nor ``datagen``
has to import anything else to roll out a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from offline_dt.data.layout import Layout, flat_view, is_image, observation_layout
from offline_dt.envs.make import make_vec_env
from offline_dt.envs.policies import Policy

#: Most envs stepped at once; more episodes run in several waves of at most this many.
DEFAULT_MAX_ENVS = 256


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


def env_layout(space: gym.Space, env: str = "the env") -> Layout | None:
    """The layout whose flat view policies act on (``offline_dt.data.layout``): None for a
    Box that is not an image (its observations go as they are, as always).

    Raises:
        DatasetError: a Dict space with a leaf no encoder reads, naming its key.
    """
    if isinstance(space, gym.spaces.Box) and not is_image(space):
        return None
    return observation_layout(space, env)


def policy_observations(obs: Any, layout: Layout | None) -> np.ndarray:
    """``(N, obs_dim) float32``, what a policy acts on: a flat Box's observations as they are;
    a Dict's or an image's flat view (``offline_dt.data.layout.flat_view``; text leaves such
    as MiniGrid's ``mission`` left out), ``layout`` being the env's
    (``observation_layout(envs.single_observation_space)``)."""
    if layout is None:
        return np.asarray(obs, np.float32)
    return flat_view(obs, layout)


def true_next_observations(next_obs: Any, infos: dict[str, Any],
                           layout: Layout | None = None) -> np.ndarray:
    """``next_obs`` with the rows of ended episodes replaced by ``infos["final_obs"]``; for a
    space with a ``layout``, both as the flat view (:func:`policy_observations`)."""
    if layout is not None:
        fixed = flat_view(next_obs, layout)
        if "_final_obs" in infos:
            for j in np.flatnonzero(infos["_final_obs"]):
                fixed[j] = flat_view(infos["final_obs"][j], layout)[0]
        return fixed
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
    must then be stateless across episodes, e.g. :class:`~offline_dt.envs.policies.CallablePolicy`).

    Raises:
        ValueError: ``len(seeds)`` differs from ``envs.num_envs``, or ``steps`` is negative.
    """
    n = envs.num_envs
    if len(seeds) != n:
        raise ValueError(f"seeds: expected one reset seed per env ({n}), found {len(seeds)}")
    if steps is not None and steps < 0:
        raise ValueError(f"steps: must be >= 0 or None, found {steps}")
    seeds = [int(s) for s in seeds]
    layout = env_layout(envs.single_observation_space)
    obs, _ = envs.reset(seed=seeds)
    policy.reset(n, seeds=seeds)
    done = np.zeros(n, bool)
    t = 0
    while (not done.all()) if steps is None else t < steps:
        observations = policy_observations(obs, layout)
        actions = policy.act(observations)
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool)
        active = ~done
        counted = np.where(active, np.asarray(rewards, np.float64), 0.0)
        done |= terminated | truncated
        policy.observe(counted)
        yield Transition(t, observations, actions, rewards, terminated, truncated,
                         true_next_observations(obs, infos, layout), active, counted, infos)
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
    (``offline_dt.envs.make.make_vec_env``). All envs of a wave are reset together, episode
    ``i`` with ``seeds[i]``, and ``policy.reset(n, wave_seeds)`` is called once per wave, so
    every env of a wave is at the same timestep (what ``offline_dt.methods.dt.DTPolicy``
    relies on). A wave runs until every one of its episodes has ended (terminated or
    truncated); an env whose episode has ended keeps being stepped, but its autoreset episode
    is neither counted nor observed, so each episode counts exactly once.

    Args:
        env_id: Gymnasium id.
        policy: a :class:`~offline_dt.envs.policies.Policy`.
        seeds: ``(E,)`` reset seeds, one per episode (e.g. ``offline_dt.envs.seeds.episode_seed``).
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
    ``policy`` must be stateless across episodes
    (:class:`~offline_dt.envs.policies.CallablePolicy`,
    :class:`~offline_dt.envs.policies.ActionReplayPolicy`). ``on_step(t)`` is called after step
    ``t`` (progress bars); ``env_kwargs`` go to ``gym.make`` (e.g. ``max_episode_steps``).

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

