"""SB3 replay-buffer arrays → dataset conversion."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from datagen.behaviour import load_replay
from datagen.replay import replay_to_dataset
from offline_dt.data.d4rl import read_hdf5
from offline_dt.data.dataset import DatasetError


def _arrays(m: int = 6) -> dict[str, np.ndarray]:
    return {
        "observations": np.arange(m * 3, dtype=np.float32).reshape(m, 3),
        "next_observations": np.arange(m * 3, dtype=np.float32).reshape(m, 3) + 100,
        "actions": np.array([[-1.0], [1.0], [0.0], [0.5], [-0.5], [1.0]], np.float32)[:m],
        "rewards": np.arange(m, dtype=np.float32),
        # step 1 ends by termination, step 3 by time limit (done and timeout), 5 is cut off
        "dones": np.array([0, 1, 0, 1, 0, 0], np.float32)[:m],
        "timeouts": np.array([0, 0, 0, 1, 0, 0], np.float32)[:m],
    }


def test_actions_unscaled_and_terminals_exclude_timeouts():
    space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    ds = replay_to_dataset(_arrays(), obs_space, space, scaled_actions=True)
    np.testing.assert_allclose(ds.actions[:, 0], [-2.0, 2.0, 0.0, 1.0, -1.0, 2.0])
    np.testing.assert_array_equal(ds.terminals, [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(ds.timeouts, [0, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(ds.episode_starts, [0, 2, 4, 6])
    np.testing.assert_array_equal(ds.next_observations[1], [103, 104, 105])


def test_asymmetric_bounds_and_stop():
    space = gym.spaces.Box(np.array([0.0], np.float32), np.array([10.0], np.float32))
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    ds = replay_to_dataset(_arrays(), obs_space, space, scaled_actions=True, stop=3)
    np.testing.assert_allclose(ds.actions[:, 0], [0.0, 10.0, 5.0])
    assert ds.num_transitions == 3 and ds.timeouts[-1]  # cut-off last episode
    with pytest.raises(DatasetError, match="stop"):
        replay_to_dataset(_arrays(), obs_space, space, scaled_actions=True, stop=0)


def test_real_sac_buffer_conversion(tiny_run):
    arrays, first = load_replay(tiny_run.result.agent_dir / "replay_buffer.safetensors")
    assert first == 0 and len(arrays["rewards"]) == 300
    assert np.abs(arrays["actions"]).max() <= 1.0  # SB3 stores SAC actions scaled
    full = read_hdf5(tiny_run.result.paths["full-replay"]["hdf5"])
    assert np.abs(full.actions).max() > 1.0  # unscaled into Pendulum's [-2, 2]
    assert (np.abs(full.actions) <= 2.0).all()
    np.testing.assert_allclose(full.actions[:, 0], arrays["actions"][:, 0] * 2.0, rtol=1e-6)
    dones = arrays["dones"].astype(bool)
    tout = arrays["timeouts"].astype(bool)
    assert dones.sum() == 1 and tout.sum() == 1  # one time-limit end at step 200
    np.testing.assert_array_equal(full.terminals, dones & ~tout)
    assert full.timeouts[199] and not full.terminals.any()
    med = read_hdf5(tiny_run.result.paths["medium-replay"]["hdf5"])
    n = med.num_transitions
    assert n == tiny_run.result.medium_checkpoint["step"]
    np.testing.assert_array_equal(med.observations, full.observations[:n])
    np.testing.assert_array_equal(med.actions, full.actions[:n])
