"""QDT relabelling of returns-to-go (offline_dt.data.relabel) on hand-computed episodes."""

from __future__ import annotations

import numpy as np
import pytest

from offline_dt.data import DatasetError, load_dataset, write_hdf5
from offline_dt.data.relabel import qdt_relabel, relabelled_returns_to_go
from offline_dt.data.windows import Normalizer, WindowSampler
from tests.offline_dt.conftest import make_box_dataset


def test_relabelled_returns_to_go_by_hand() -> None:
    rewards = np.array([-1.0, -2.0, -3.0, -4.0])
    # plain returns-to-go: -10, -9, -7, -4. V(s_1) = -5 beats -9; V(s_3) = -1 beats -4.
    next_values = np.array([-5.0, -20.0, -1.0, 99.0])  # the last one is never used
    g = relabelled_returns_to_go(rewards, next_values, np.zeros(4, bool))
    # g3 = -4; g2 = -3 + max(-4, -1) = -4; g1 = -2 + max(-4, -20) = -6; g0 = -1 + max(-6, -5) = -6
    np.testing.assert_allclose(g, [-6.0, -6.0, -4.0, -4.0])


def test_a_terminal_step_takes_no_value_from_beyond_it() -> None:
    g = relabelled_returns_to_go(np.array([-1.0, -1.0]), np.array([50.0, 0.0]),
                                 np.array([True, False]))
    np.testing.assert_allclose(g, [-2.0, -1.0])


def test_low_values_change_nothing_and_the_file_round_trips(tmp_path) -> None:
    ds = make_box_dataset()
    same = qdt_relabel(ds, np.full(ds.num_transitions, -1e9))
    np.testing.assert_allclose(same.rewards, ds.rewards, atol=1e-4)
    assert same.metadata["relabelled"]["episodes_raised"] == 0
    high = qdt_relabel(ds, np.zeros(ds.num_transitions), {"critic": "x"})
    assert high.metadata["relabelled"]["episodes_raised"] == ds.num_episodes
    assert high.metadata["relabelled"]["critic"] == "x"
    path = write_hdf5(high, tmp_path / "relabelled.hdf5")
    back = load_dataset(path)
    np.testing.assert_array_equal(back.rewards, high.rewards)
    np.testing.assert_array_equal(back.observations, ds.observations)


def test_the_window_sampler_sees_the_relabelled_returns_to_go() -> None:
    ds = make_box_dataset(lengths=(5, 6))
    values = np.zeros(ds.num_transitions)  # V = 0 beats every (negative) continuation
    relabelled = qdt_relabel(ds, values)
    norm = Normalizer.fit(relabelled, rtg_scale=1.0)
    batch = WindowSampler(relabelled, norm, 5, 100, seed=0).sample(8)
    # each episode's g_t = r_t + 0 before its last step and r_{T-1} at it
    valid = batch.mask.bool()
    rtg = batch.returns_to_go[..., 0][valid].numpy()
    allowed = np.concatenate([ds.rewards, ds.rewards])  # r_t (+ g_{t+1} = max(., 0) = 0)
    assert np.isin(np.round(rtg, 4), np.round(allowed, 4)).all()


def test_bad_values_are_refused() -> None:
    ds = make_box_dataset()
    with pytest.raises(DatasetError, match="next_values must be finite with shape"):
        qdt_relabel(ds, np.zeros(3))
    bad = np.zeros(ds.num_transitions)
    bad[0] = np.nan
    with pytest.raises(DatasetError, match="tiny-box"):
        qdt_relabel(ds, bad)
