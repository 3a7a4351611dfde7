"""Stable-Baselines3 replay-buffer arrays → ``OfflineDataset`` (D4RL ``*-replay`` levels).

D4RL's medium-replay / full-replay datasets are the replay buffer of the behaviour agent's
training run, in insertion order (Fu et al. 2020, section 5).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from datagen.behaviour import unscale_actions
from offline_dt.data.dataset import DatasetError, OfflineDataset


def replay_to_dataset(
    arrays: dict[str, np.ndarray],
    observation_space: gym.spaces.Box,
    action_space: gym.spaces.Box | gym.spaces.Discrete,
    *,
    scaled_actions: bool,
    stop: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> OfflineDataset:
    """Convert buffer arrays (single env, oldest first) to a dataset.

    Args:
        arrays: ``observations (M, obs_dim)``, ``next_observations (M, obs_dim)``,
            ``actions (M, act_dim)`` (SAC: scaled to [-1, 1]; DQN: ``(M, 1)`` ints),
            ``rewards (M,)``, ``dones (M,)`` and ``timeouts (M,)`` as SB3 stores them
            (float 0/1; ``dones`` include time-limit truncations, ``timeouts`` marks them when
            ``handle_timeout_termination`` is on).
        scaled_actions: unscale Box actions into the env bounds (SB3 ``unscale_action``).
        stop: keep rows ``[0, stop)`` (e.g. up to the medium checkpoint); None keeps all.

    Returns:
        dataset with ``terminals = dones & ~timeouts`` and ``timeouts = dones & timeouts``;
        a last episode cut by ``stop`` is marked ``timeouts`` on its last row.

    Raises:
        DatasetError: ``stop`` outside ``(0, M]`` or arrays missing.
    """
    missing = [k for k in ("observations", "next_observations", "actions", "rewards", "dones",
                           "timeouts") if k not in arrays]
    if missing:
        raise DatasetError(f"replay buffer: missing arrays {missing}")
    m = len(arrays["rewards"])
    stop = m if stop is None else int(stop)
    if not 0 < stop <= m:
        raise DatasetError(f"replay buffer: stop={stop} outside (0, {m}] rows held")
    sl = slice(0, stop)
    dones = arrays["dones"][sl].reshape(stop).astype(bool)
    tout = arrays["timeouts"][sl].reshape(stop).astype(bool)
    terminals = dones & ~tout
    timeouts = dones & tout
    if not dones[-1]:
        timeouts[-1] = True  # cut-off episode
    act = arrays["actions"][sl]
    if isinstance(action_space, gym.spaces.Discrete):
        act = act.reshape(stop).astype(np.int64)
    else:
        act = act.reshape(stop, *action_space.shape)
        act = unscale_actions(act, action_space) if scaled_actions else act.astype(np.float32)
    return OfflineDataset.from_flat(
        observations=arrays["observations"][sl].reshape(stop, -1),
        next_observations=arrays["next_observations"][sl].reshape(stop, -1),
        actions=act,
        rewards=arrays["rewards"][sl].reshape(stop),
        terminals=terminals,
        timeouts=timeouts,
        observation_space=observation_space,
        action_space=action_space,
        metadata=metadata,
    )
