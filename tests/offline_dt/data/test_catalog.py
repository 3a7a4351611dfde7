"""offline_dt.data.catalog.list_datasets over both formats."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from offline_dt.data.catalog import COLUMNS, list_datasets
from offline_dt.data.d4rl import write_hdf5
from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.minari_io import write_minari


def _dataset() -> OfflineDataset:
    n = 10
    rewards = np.arange(n, dtype=np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[[3, 9]] = True  # episodes of 4 and 6 steps: returns 6 and 39
    return OfflineDataset.from_flat(
        observations=np.zeros((n, 3), np.float32),
        actions=np.zeros((n, 1), np.float32),
        rewards=rewards,
        terminals=np.zeros(n, bool),
        timeouts=timeouts,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        action_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
        metadata={"env_id": "Pendulum-v1", "agent": "random"},
    )


def test_lists_both_formats(tmp_path):
    ds = _dataset()
    write_hdf5(ds, tmp_path / "d4rl" / "pendulum-random-v0.hdf5")
    write_minari(ds, "pendulum/random-v0", tmp_path / "minari")
    table = list_datasets(tmp_path / "d4rl", tmp_path / "minari")
    assert list(table.columns) == COLUMNS
    assert list(table["id"]) == ["pendulum-random-v0", "pendulum/random-v0"]
    assert list(table["format"]) == ["hdf5", "minari"]
    for _, row in table.iterrows():
        assert row["env"] == "Pendulum-v1"
        assert row["steps"] == 10 and row["episodes"] == 2
        assert row["return_mean"] == pytest.approx(22.5)
        assert row["return_std"] == pytest.approx(16.5)  # population std of 6 and 39
        assert row["return_min"] == pytest.approx(6.0)
        assert row["return_max"] == pytest.approx(39.0)


def test_empty_when_nothing_exists(tmp_path):
    table = list_datasets(tmp_path / "nope", tmp_path / "nope2")
    assert table.empty and list(table.columns) == COLUMNS
