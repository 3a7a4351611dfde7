"""Fixed-size datasets from rollouts, and policy returns, via ``offline_dt.envs.rollout``.

A behaviour policy here is a batched callable ``policy(obs) -> actions`` taking ``obs
(num_envs, obs_dim) float32`` and returning ``(num_envs, act_dim) float32`` (Box) or
``(num_envs,) int64`` (Discrete); ``policy=None`` means uniform random actions. The stepping
itself is the project's one rollout engine (``offline_dt.envs.rollout``).
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

from datagen.envs import check_env_id, check_spaces
from offline_dt.data.dataset import OfflineDataset
from offline_dt.envs.make import env_spaces
from offline_dt.envs.policies import ActionReplayPolicy, CallablePolicy, RandomPolicy
from offline_dt.envs.rollout import CollectedSteps, collect_transitions, run_episodes
from offline_dt.envs.seeds import episode_seed

log = logging.getLogger(__name__)

#: A batched behaviour policy: ``obs (N, obs_dim) float32 -> actions``.
ActionFn = Callable[[np.ndarray], np.ndarray]


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


def _progress(total: int, desc: str, show: bool = True) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", disable=not show or not sys.stderr.isatty(),
                leave=False, mininterval=1.0)


def _collect(env_id: str, steps: int, env_offset: int, num_envs: int, seed: int,
             policy: ActionFn | None, desc: str, show: bool) -> CollectedSteps:
    """Step sub-envs ``env_offset .. env_offset + num_envs - 1`` (reset seeds ``seed +
    index``; random actions from ``default_rng([seed, index])``) for ``steps`` steps each."""
    if policy is None:
        space = env_spaces(env_id)[1]
        runner: Any = ActionReplayPolicy(np.stack(
            [_random_actions(space, seed, env_offset + j, steps) for j in range(num_envs)],
            axis=1))
    else:
        runner = CallablePolicy(policy)
    seeds = [seed + env_offset + j for j in range(num_envs)]
    with _progress(steps * num_envs, desc, show) as bar:
        def on_step(t: int) -> None:
            if t % 256 == 0:
                bar.update(min(256, steps - t) * num_envs)

        return collect_transitions(env_id, runner, seeds, steps, on_step=on_step)


def _collect_task(args: tuple) -> CollectedSteps:
    return _collect(*args)


def _collect_parts(env_id: str, steps: int, num_envs: int, seed: int,
                   policy: ActionFn | None, desc: str, nproc: int) -> list[CollectedSteps]:
    """Collect ``num_envs`` sub-envs split into ``nproc`` contiguous blocks, one per process."""
    bounds = np.linspace(0, num_envs, nproc + 1).astype(int)
    tasks = [(env_id, steps, int(lo), int(hi - lo), seed, policy, desc, k == 0)
             for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
    if nproc == 1:
        return [_collect(*tasks[0])]
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(nproc)
    try:
        parts = pool.map(_collect_task, tasks)
    except BaseException:
        pool.terminate()
        raise
    finally:
        # close + join lets the workers exit on their own; ``with Pool`` terminates them, which
        # leaks the pool's semaphores ("leaked semaphore objects" warnings at shutdown).
        pool.close()
        pool.join()
    return parts


def _to_dataset(parts: list[CollectedSteps], n_steps: int,
                metadata: dict[str, Any] | None) -> OfflineDataset:
    """Lay the sub-env streams end to end in env order, cut to ``n_steps`` rows; a stream cut
    off mid-episode gets ``timeouts=True`` on its last kept step."""
    steps = parts[0].rewards.shape[0]
    num_envs = sum(p.rewards.shape[1] for p in parts)

    def flat(key: str) -> np.ndarray:
        a = np.concatenate([getattr(p, key) for p in parts], axis=1)  # (T, num_envs, ...)
        return np.swapaxes(a, 0, 1).reshape(num_envs * steps, *a.shape[2:])[:n_steps]

    terminals = flat("terminated")
    timeouts = flat("truncated")
    cut = np.unique(np.minimum(np.arange(1, num_envs + 1) * steps, n_steps) - 1)
    timeouts[cut] |= ~terminals[cut]
    return OfflineDataset.from_flat(
        observations=flat("observations"), actions=flat("actions"), rewards=flat("rewards"),
        next_observations=flat("next_observations"), terminals=terminals, timeouts=timeouts,
        observation_space=parts[0].observation_space, action_space=parts[0].action_space,
        metadata=metadata,
    )


def _recorded_returns(parts: list[CollectedSteps], ds: OfflineDataset, n_steps: int
                      ) -> np.ndarray:
    """``(E,) float64`` the ``RecordEpisodeStatistics`` return of each dataset episode that
    ended inside the kept rows (NaN for the others)."""
    steps = parts[0].rewards.shape[0]
    offsets = np.cumsum([0] + [p.rewards.shape[1] for p in parts[:-1]])
    rows = np.concatenate([(p.episode_end_envs + off) * steps + p.episode_end_steps
                           for p, off in zip(parts, offsets, strict=True)])
    rets = np.concatenate([p.episode_returns for p in parts])
    recorded = np.full(ds.num_episodes, np.nan)
    keep = rows < n_steps
    rows, rets = rows[keep], rets[keep]
    idx = np.searchsorted(ds.episode_starts, rows, side="right") - 1
    assert (ds.episode_starts[idx + 1] - 1 == rows).all()
    recorded[idx] = rets
    return recorded


def rollout(
    env_id: str,
    n_steps: int,
    policy: ActionFn | None = None,
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
    check_spaces(*env_spaces(env_id), env_id)
    nproc = 1 if policy is not None else min(int(processes), num_envs)
    parts = _collect_parts(env_id, math.ceil(n_steps / num_envs), num_envs, seed, policy, desc,
                           nproc)
    ds = _to_dataset(parts, n_steps, metadata)
    recorded = _recorded_returns(parts, ds, n_steps)
    wall = time.perf_counter() - t0
    log.info("%s: %d steps, %d episodes of %s in %.1f s (%d process%s)", desc, n_steps,
             ds.num_episodes, env_id, wall, nproc, "" if nproc == 1 else "es")
    return RolloutResult(ds, recorded, wall)


def policy_returns(
    env_id: str,
    policy: ActionFn | None,
    n_episodes: int,
    *,
    seed: int = 0,
    num_envs: int = 10,
) -> np.ndarray:
    """Undiscounted returns of ``n_episodes`` complete episodes of ``policy``.

    Runs ``offline_dt.envs.rollout.run_episodes`` with the evaluation seeds ``episode_seed(seed,
    i) = seed * 100_000 + i``, at most ``num_envs`` envs at once. ``policy=None`` is the
    uniform random policy (``RandomPolicy``, D4RL's ``ref_min_score`` agent).

    Returns:
        ``(n_episodes,) float64`` returns, episode by episode.

    Raises:
        ValueError: ``n_episodes`` or ``num_envs`` not positive.
    """
    if int(n_episodes) <= 0:
        raise ValueError(f"n_episodes: must be positive, found {n_episodes}")
    if int(num_envs) <= 0:
        raise ValueError(f"num_envs: must be positive, found {num_envs}")
    if policy is None:
        runner: Any = RandomPolicy(env_spaces(env_id)[1], seed=seed)
    else:
        runner = CallablePolicy(policy)
    seeds = [episode_seed(seed, i) for i in range(int(n_episodes))]
    returns, _ = run_episodes(env_id, runner, seeds, max_envs=int(num_envs))
    return returns
