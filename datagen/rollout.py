"""Batched rollouts over a Gymnasium vector env into an ``OfflineDataset``.

A policy here is a callable ``policy(obs) -> actions`` taking a batch ``obs (num_envs,
obs_dim) float32`` and returning ``(num_envs, act_dim) float32`` (Box) or ``(num_envs,)
int64`` (Discrete). ``policy=None`` means uniform random actions (``action_space.sample``,
seeded).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from datagen.envs import check_env_id, check_spaces, make_vec_env
from offline_dt.data.dataset import OfflineDataset

log = logging.getLogger(__name__)

Policy = Callable[[np.ndarray], np.ndarray]


def _progress(total: int, desc: str, show: bool = True) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", disable=not show or not sys.stderr.isatty(),
                leave=False, mininterval=1.0)


@dataclass
class RolloutResult:
    """A rollout's dataset plus what the env itself recorded.

    Attributes:
        dataset: the transitions, episodes in env-major order (all of sub-env 0's episodes,
            then sub-env 1's, ...).
        recorded_returns: ``(E,) float64`` the return of each dataset episode as recorded by
            Gymnasium's ``RecordEpisodeStatistics`` during the rollout (independent of the
            stored rewards); NaN for episodes cut off at the step budget.
        wall_s: seconds the rollout took.
    """

    dataset: OfflineDataset
    recorded_returns: np.ndarray
    wall_s: float


def _random_actions(space: gym.Space, seed: int, env_index: int, steps: int) -> np.ndarray:
    """Uniform random actions of one sub-env: ``(steps, *shape)``, from its own generator
    ``default_rng([seed, env_index])`` so the stream does not depend on how sub-envs are split
    across processes."""
    rng = np.random.default_rng([seed, env_index])
    if isinstance(space, gym.spaces.Discrete):
        return (rng.integers(0, int(space.n), steps) + int(space.start)).astype(np.int64)
    low = np.broadcast_to(space.low, space.shape).astype(np.float64)
    high = np.broadcast_to(space.high, space.shape).astype(np.float64)
    return rng.uniform(low, high, (steps, *space.shape)).astype(space.dtype)


def _collect(env_id: str, steps: int, env_offset: int, num_envs: int, seed: int,
             policy: Policy | None, desc: str, show: bool) -> dict[str, Any]:
    """Step sub-envs ``env_offset .. env_offset + num_envs - 1`` (reset seeds ``seed +
    index``) for ``steps`` steps each; return time-major buffers ``(steps, num_envs, ...)``
    and the episode ends ``(flat env-major row, recorded return)`` in global env indices."""
    envs = make_vec_env(env_id, num_envs, record_stats=True)
    try:
        obs_space = envs.single_observation_space
        act_space = envs.single_action_space
        obs_dim = obs_space.shape[0]
        discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_buf = np.empty((steps, num_envs, obs_dim), np.float32)
        next_buf = np.empty((steps, num_envs, obs_dim), np.float32)
        if discrete:
            act_buf = np.empty((steps, num_envs), np.int64)
        else:
            act_buf = np.empty((steps, num_envs, *act_space.shape), np.float32)
        if policy is None:
            act_buf[:] = np.stack([_random_actions(act_space, seed, env_offset + j, steps)
                                   for j in range(num_envs)], axis=1)
        rew_buf = np.empty((steps, num_envs), np.float32)
        term_buf = np.empty((steps, num_envs), bool)
        trunc_buf = np.empty((steps, num_envs), bool)
        ep_rows: list[np.ndarray] = []  # flat row index (env-major) where an episode ended
        ep_rets: list[np.ndarray] = []
        obs, _ = envs.reset(seed=seed + env_offset)
        env_idx = np.arange(env_offset, env_offset + num_envs)
        with _progress(steps * num_envs, desc, show) as bar:
            for t in range(steps):
                if policy is None:
                    act = act_buf[t]
                else:
                    act = policy(obs)
                    act_buf[t] = act
                nobs, rew, term, trunc, info = envs.step(act)
                obs_buf[t] = obs
                rew_buf[t] = rew
                term_buf[t] = term
                trunc_buf[t] = trunc
                next_buf[t] = nobs
                if "_final_obs" in info:
                    m = info["_final_obs"]
                    next_buf[t, m] = np.stack(info["final_obs"][m])
                if "_episode" in info:
                    m = info["_episode"]
                    ep_rows.append(env_idx[m] * steps + t)
                    ep_rets.append(np.asarray(info["episode"]["r"], np.float64)[m])
                obs = nobs
                if t % 256 == 0:
                    bar.update(min(256, steps - t) * num_envs)
    finally:
        envs.close()
    return {"obs": obs_buf, "next": next_buf, "act": act_buf, "rew": rew_buf,
            "term": term_buf, "trunc": trunc_buf,
            "ep_rows": np.concatenate(ep_rows) if ep_rows else np.zeros(0, np.int64),
            "ep_rets": np.concatenate(ep_rets) if ep_rets else np.zeros(0, np.float64),
            "spaces": (obs_space, act_space)}


def _collect_task(args: tuple) -> dict[str, Any]:
    return _collect(*args)


def rollout(
    env_id: str,
    n_steps: int,
    policy: Policy | None = None,
    *,
    seed: int = 0,
    num_envs: int = 10,
    metadata: dict[str, Any] | None = None,
    desc: str = "rollout",
    processes: int = 1,
) -> RolloutResult:
    """Collect exactly ``n_steps`` transitions with ``policy`` over ``num_envs`` sub-envs.

    Every sub-env runs ``ceil(n_steps / num_envs)`` steps (sub-env ``i`` reset with seed
    ``seed + i``; random actions from its own generator ``default_rng([seed, i])``); the
    streams are laid end to end in env order and cut to ``n_steps`` rows (D4RL-style fixed
    size). Gymnasium ``terminated``/``truncated`` become ``terminals``/``timeouts``; a truncated
    or terminated step's ``next_observations`` row is the true last observation
    (``infos["final_obs"]``, SAME_STEP autoreset), not the next episode's first. An episode cut
    off by the step budget gets ``timeouts=True`` on its last kept step.

    Args:
        env_id: Gymnasium id with a flat Box observation and Box/Discrete action space.
        n_steps: number of transitions, > 0.
        policy: batched policy, or None for uniform random actions.
        seed: reset seed (and random-action seed).
        num_envs: sub-envs of the synchronous vector env, > 0.
        metadata: stored on the dataset.
        processes: random rollouts only: split the sub-envs over this many processes (the
            data are the same for any value; a policy rollout always runs in this process).

    Raises:
        ValueError: non-positive ``n_steps``/``num_envs``/``processes`` or unsupported spaces.
    """
    if int(n_steps) <= 0:
        raise ValueError(f"n_steps: must be a positive number of steps, found {n_steps}")
    if int(num_envs) <= 0:
        raise ValueError(f"num_envs: must be positive, found {num_envs}")
    if int(processes) <= 0:
        raise ValueError(f"processes: must be positive, found {processes}")
    t0 = time.perf_counter()
    num_envs = min(int(num_envs), int(n_steps))
    check_env_id(env_id)
    probe = gym.make(env_id)
    try:
        check_spaces(probe.observation_space, probe.action_space, env_id)
    finally:
        probe.close()
    T = math.ceil(n_steps / num_envs)
    nproc = 1 if policy is not None else min(int(processes), num_envs)
    bounds = np.linspace(0, num_envs, nproc + 1).astype(int)
    tasks = [(env_id, T, int(lo), int(hi - lo), seed, policy, desc, k == 0)
             for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
    if nproc == 1:
        parts = [_collect(*tasks[0])]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(nproc) as pool:
            parts = pool.map(_collect_task, tasks)
    obs_space, act_space = parts[0]["spaces"]

    def flat(key: str) -> np.ndarray:
        a = np.concatenate([part[key] for part in parts], axis=1)  # (T, num_envs, ...)
        return np.swapaxes(a, 0, 1).reshape(num_envs * T, *a.shape[2:])[:n_steps]

    terminals = flat("term")
    timeouts = flat("trunc")
    # Cut-off ends: the last kept step of every sub-env stream that did not end an episode.
    cut = np.minimum(np.arange(1, num_envs + 1) * T, n_steps) - 1
    cut = np.unique(cut)
    timeouts[cut] |= ~terminals[cut]
    ds = OfflineDataset.from_flat(
        observations=flat("obs"),
        actions=flat("act"),
        rewards=flat("rew"),
        next_observations=flat("next"),
        terminals=terminals,
        timeouts=timeouts,
        observation_space=obs_space,
        action_space=act_space,
        metadata=metadata,
    )
    recorded = np.full(ds.num_episodes, np.nan)
    rows = np.concatenate([part["ep_rows"] for part in parts])
    if rows.size:
        rets = np.concatenate([part["ep_rets"] for part in parts])
        keep = rows < n_steps
        rows, rets = rows[keep], rets[keep]
        idx = np.searchsorted(ds.episode_starts, rows, side="right") - 1
        assert (ds.episode_starts[idx + 1] - 1 == rows).all()
        recorded[idx] = rets
    wall = time.perf_counter() - t0
    log.info("%s: %d steps, %d episodes of %s in %.1f s (%d process%s)", desc, n_steps,
             ds.num_episodes, env_id, wall, nproc, "" if nproc == 1 else "es")
    return RolloutResult(ds, recorded, wall)


def evaluate_policy(
    env_id: str,
    policy: Policy | None,
    n_episodes: int,
    *,
    seed: int = 0,
    num_envs: int = 10,
) -> np.ndarray:
    """Undiscounted returns of ``n_episodes`` complete episodes, batched over a vector env.

    A thin adapter over ``offline_dt.evaluate.evaluate_policy`` (the project's one batched
    evaluator: episode ``i`` reset with seed ``seed * 100_000 + i``, at most ``num_envs``
    envs at once). ``policy=None`` is the uniform random policy (D4RL's ``ref_min_score``
    agent).

    Returns:
        ``(n_episodes,) float64`` returns, episode by episode.

    Raises:
        ValueError: ``n_episodes`` or ``num_envs`` not positive.
    """
    if int(n_episodes) <= 0:
        raise ValueError(f"n_episodes: must be positive, found {n_episodes}")
    if int(num_envs) <= 0:
        raise ValueError(f"num_envs: must be positive, found {num_envs}")
    from offline_dt.evaluate import CallablePolicy, RandomPolicy
    from offline_dt.evaluate import evaluate_policy as _evaluate

    if policy is None:
        env = gym.make(env_id)
        runner = RandomPolicy(env.action_space, seed=seed)
        env.close()
    else:
        runner = CallablePolicy(policy)
    return _evaluate(env_id, runner, int(n_episodes), seed, max_envs=int(num_envs)).returns
