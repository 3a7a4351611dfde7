"""TQ and SACo (offline_dt.data.characteristics, Schweighofer et al. 2022) on tiny datasets
whose bins, unique pairs and returns are worked out by hand below, and their columns in
``offline-dt datasets`` (offline_dt.data.catalog)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import SACO_MEDIUM as MEDIUM
from conftest import saco_dataset as _dataset
from conftest import saco_medium as medium
from conftest import saco_replay as replay

from offline_dt.data.catalog import list_datasets
from offline_dt.data.characteristics import (
    CharacteristicsError,
    state_action_codes,
    state_action_coverage,
    state_action_limits,
    trajectory_quality,
    unique_state_actions,
)
from offline_dt.data.d4rl import write_hdf5
from offline_dt.data.dataset import OfflineDataset


def test_trajectory_quality_by_hand():
    assert trajectory_quality(medium()) == pytest.approx(0.5)  # (20 - 0) / (40 - 0)
    assert trajectory_quality(medium(), -20.0, 80.0) == pytest.approx(0.4)  # 40 / 100
    # replay: returns 1+2+3 = 6 and 4+5+6 = 15, mean 10.5 -> 10.5 / 40
    assert trajectory_quality(replay()) == pytest.approx(0.2625)
    unknown = _dataset(MEDIUM, [10, 10, 20], [0, 2], "medium", ref_max_score=None)
    assert trajectory_quality(unknown) is None
    assert trajectory_quality(medium(), 5.0, 5.0) is None


def test_bins_and_unique_pairs_by_hand():
    lo, hi = state_action_limits([medium(), replay()])
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [1, 1, 1]
    codes = state_action_codes(replay(), lo, hi)
    assert codes.tolist() == [[0, 0, 0], [0, 0, 0], [50, 25, 99], [99, 99, 1], [99, 99, 1],
                              [37, 62, 50]]
    assert unique_state_actions(replay(), lo, hi) == 4
    assert unique_state_actions(medium(), lo, hi) == 2
    assert state_action_coverage(medium(), replay()) == pytest.approx(0.5)
    assert state_action_coverage(replay(), replay()) == 1.0
    # a coarser grid: 2 bins per dimension -> medium (0,0,0), (1,0,1); replay also (1,1,0)
    # and (0,1,1): 2 / 4 again; 1 bin: everything in one cell, 1 / 1
    assert state_action_coverage(medium(), replay(), bins=2) == pytest.approx(0.5)
    assert state_action_coverage(medium(), replay(), bins=1) == 1.0


def test_values_outside_the_limits_fall_in_the_edge_bins():
    lo, hi = np.array([0.25, 0.0, 0.0]), np.array([0.5, 1.0, 1.0])
    codes = state_action_codes(replay(), lo, hi)
    # obs0 0.0 -> below 0.25: bin 0; 1.0 -> above 0.5: bin 99; 0.375 -> floor(50) = 50
    assert codes[:, 0].tolist() == [0, 0, 99, 99, 99, 50]


def test_discrete_actions_are_counted_as_values():
    obs = np.array([[0.0], [0.0], [0.0], [0.5], [1.0]], np.float32)
    ds = OfflineDataset.from_flat(
        observations=obs, actions=np.array([0, 1, 0, 1, 1]), rewards=np.ones(5, np.float32),
        terminals=np.eye(5, dtype=bool)[4], timeouts=np.zeros(5, bool),
        observation_space=gym.spaces.Box(0.0, 1.0, (1,), np.float32),
        action_space=gym.spaces.Discrete(2), metadata={})
    lo, hi = state_action_limits([ds])
    assert state_action_codes(ds, lo, hi).tolist() == [[0, 0], [0, 1], [0, 0], [50, 1],
                                                      [99, 1]]
    assert unique_state_actions(ds, lo, hi) == 4


def test_limits_of_another_width_are_refused():
    with pytest.raises(CharacteristicsError, match="limits for"):
        state_action_codes(replay(), np.zeros(2), np.ones(2))


def test_datasets_lists_tq_unique_pairs_and_saco(tmp_path):
    write_hdf5(replay(), tmp_path / "toy-full-replay-v0.hdf5")
    write_hdf5(medium(), tmp_path / "toy-medium-v0.hdf5")
    table = list_datasets(tmp_path, tmp_path / "no-minari").set_index("id")
    assert table.loc["toy-medium-v0", "tq"] == pytest.approx(0.5)
    assert table.loc["toy-medium-v0", "unique_sa"] == 2
    assert table.loc["toy-medium-v0", "saco"] == pytest.approx(0.5)
    assert table.loc["toy-full-replay-v0", "saco"] == 1.0
    alone = list_datasets(tmp_path, tmp_path / "no-minari", coverage=False)
    assert alone["saco"].isna().all() and alone["tq"].notna().all()
    (tmp_path / "toy-full-replay-v0.hdf5").unlink()
    table = list_datasets(tmp_path, tmp_path / "no-minari").set_index("id")
    # no replay dataset: SACo is not defined; the absolute count is on medium's own grid
    # (obs0 in [0, 0.5], obs1 in [0, 0.25]): (0.009, 0.0099) -> bins (1, 3) is a cell of
    # its own now, so 3 unique bins
    assert table.loc["toy-medium-v0", "unique_sa"] == 3
    assert np.isnan(table.loc["toy-medium-v0", "saco"])
