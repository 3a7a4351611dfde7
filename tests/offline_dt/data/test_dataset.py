"""OfflineDataset: builders on hand-made arrays, episode facts, checksum, and validation errors
(one test per concern: spaces, shapes, dtypes, finiteness, action range, episode boundaries)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from offline_dt.data import DatasetError, OfflineDataset, concatenate

OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def _flat(**override) -> OfflineDataset:
    """Five steps: episode [0, 1] ends in a terminal, [2, 3] in a timeout, [4] is cut off."""
    kw = dict(
        observations=[[0, 0], [1, 10], [2, 20], [3, 30], [4, 40]],
        actions=[[0.5], [-0.5], [0.25], [-0.25], [1.0]],
        rewards=[1, 2, 3, 4, 5],
        terminals=[0, 1, 0, 0, 0],
        timeouts=[0, 0, 0, 1, 0],
        observation_space=OBS,
        action_space=ACT,
        source="hand.hdf5",
    )
    kw.update(override)
    return OfflineDataset.from_flat(**kw)


def test_from_flat_splits_casts_and_fills_next_observations():
    ds = _flat()
    np.testing.assert_array_equal(ds.episode_starts, [0, 2, 4, 5])
    assert ds.episode_starts.dtype == np.int64
    np.testing.assert_array_equal(ds.episode_lengths, [2, 2, 1])
    np.testing.assert_array_equal(ds.episode_returns, [3.0, 7.0, 5.0])
    # next row inside an episode, the row itself on an episode's last step
    np.testing.assert_array_equal(ds.next_observations,
                                  [[1, 10], [1, 10], [3, 30], [3, 30], [4, 40]])
    assert ds.observations.dtype == ds.next_observations.dtype == np.float32
    assert ds.rewards.dtype == np.float32 and ds.actions.dtype == np.float32
    assert ds.terminals.dtype == ds.timeouts.dtype == np.bool_
    np.testing.assert_array_equal(ds.terminals, [False, True, False, False, False])
    assert (ds.num_transitions, ds.num_episodes, ds.obs_dim, ds.act_dim) == (5, 3, 2, 1)


def test_from_flat_keeps_given_boundaries_and_next_observations():
    ds = _flat(episode_starts=[0, 3, 5], next_observations=np.full((5, 2), 7.0))
    np.testing.assert_array_equal(ds.episode_starts, [0, 3, 5])
    np.testing.assert_array_equal(ds.episode_returns, [6.0, 9.0])
    assert (ds.next_observations == 7.0).all()


def test_episode_views_hold_that_episodes_rows():
    ds = _flat()
    ep = ds.episode(1)
    np.testing.assert_array_equal(ep["observations"], [[2, 20], [3, 30]])
    np.testing.assert_array_equal(ep["actions"], [[0.25], [-0.25]])
    np.testing.assert_array_equal(ep["rewards"], [3, 4])
    np.testing.assert_array_equal(ep["timeouts"], [False, True])
    np.testing.assert_array_equal(ds.episode(2)["next_observations"], [[4, 40]])


def test_discrete_actions_become_int64_and_act_dim_is_n():
    ds = _flat(actions=[0.0, 2.0, 1.0, 1.0, 0.0], action_space=gym.spaces.Discrete(3))
    assert ds.discrete and ds.act_dim == 3
    assert ds.actions.dtype == np.int64
    np.testing.assert_array_equal(ds.actions, [0, 2, 1, 1, 0])


def test_summary_statistics_by_hand():
    s = _flat(metadata={"env_id": "Hand-v0"}).summary()
    # returns 3, 7, 5: mean 5, population std sqrt(8/3)
    assert s == pytest.approx({"env_id": "Hand-v0", "steps": 5, "episodes": 3,
                               "return_mean": 5.0, "return_std": (8 / 3) ** 0.5,
                               "return_min": 3.0, "return_max": 7.0})


def test_checksum_follows_the_data_not_the_metadata():
    ds = _flat()
    # the same data from other input dtypes and with other metadata: same digest
    same = _flat(observations=np.array(ds.observations, np.float64),
                 rewards=np.array([1, 2, 3, 4, 5], np.int32), metadata={"seed": 9},
                 source="elsewhere")
    assert same.checksum() == ds.checksum()
    # one reward, one flag or one boundary different: another digest
    assert _flat(rewards=[1, 2, 3, 4, 6]).checksum() != ds.checksum()
    assert _flat(terminals=[0, 1, 0, 0, 1]).checksum() != ds.checksum()
    assert _flat(episode_starts=[0, 2, 5]).checksum() != ds.checksum()


def test_from_episodes_marks_cut_off_episodes_as_timeouts():
    obs_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    first = {"observations": np.array([[0.0], [1.0], [2.0]]), "actions": np.zeros((2, 1)),
             "rewards": np.array([1.0, 2.0]), "terminations": [False, False],
             "truncations": [False, False]}  # cut off: gets a timeout on its last step
    last = {"observations": np.array([[5.0], [6.0]]), "actions": np.zeros((1, 1)),
            "rewards": np.array([4.0]), "terminations": [False], "truncations": [False]}
    ds = OfflineDataset.from_episodes([first, last], obs_space, ACT)
    np.testing.assert_array_equal(ds.episode_starts, [0, 2, 3])
    np.testing.assert_array_equal(ds.timeouts, [False, True, False])
    np.testing.assert_array_equal(ds.observations[:, 0], [0.0, 1.0, 5.0])
    np.testing.assert_array_equal(ds.next_observations[:, 0], [1.0, 2.0, 6.0])
    with pytest.raises(DatasetError, match=r"episode 1 must hold T\+1 observations.*"
                                           r"found 1 observations and 1 actions"):
        OfflineDataset.from_episodes([first, {**last, "observations": last["observations"][:1]}],
                                     obs_space, ACT)


def test_concatenate_joins_episodes_end_to_end():
    a, b = _flat(), _flat(rewards=[10, 20, 30, 40, 50])
    both = concatenate([a, b], {"level": "medium-expert"})
    np.testing.assert_array_equal(both.episode_starts, [0, 2, 4, 5, 7, 9, 10])
    np.testing.assert_array_equal(both.episode_returns, [3, 7, 5, 30, 70, 50])
    # a's cut-off last episode is no longer the dataset's last: it now ends in a timeout
    assert both.timeouts[4] and not a.timeouts[4]
    assert both.metadata == {"level": "medium-expert"}
    disc = _flat(actions=[0, 1, 0, 1, 0], action_space=gym.spaces.Discrete(2), source="d.hdf5")
    with pytest.raises(DatasetError, match="cannot concatenate d.hdf5 with hand.hdf5"):
        concatenate([a, disc], {})


# ------------------------------------------------------------------------- validation
def test_spaces_are_checked():
    with pytest.raises(DatasetError, match=r"hand.hdf5: observation space must be a flat Box "
                                           r"\(obs_dim,\), an image Box \(H, W, C\) uint8 or "
                                           r"a Dict of Box and Discrete leaves, found Discrete"):
        _flat(observation_space=gym.spaces.Discrete(3))
    with pytest.raises(DatasetError, match=r"hand.hdf5: observation space must be a flat Box "
                                           r"\(obs_dim,\).*found Box\(0.0, 1.0, \(2, 1\)"):
        _flat(observation_space=gym.spaces.Box(0, 1, (2, 1), np.float32))
    with pytest.raises(DatasetError, match="action space must be a Box or Discrete, found "
                                           "MultiDiscrete"):
        _flat(actions=[[0], [1], [0], [1], [0]], action_space=gym.spaces.MultiDiscrete([2]))


def test_row_counts_name_the_key():
    with pytest.raises(DatasetError, match="hand.hdf5: key 'timeouts' has 4 rows but "
                                           "'rewards' has 5"):
        _flat(timeouts=[0, 0, 0, 1])
    with pytest.raises(DatasetError, match="key 'next_observations' has 6 rows but "
                                           "'rewards' has 5"):
        _flat(next_observations=np.zeros((6, 2)))


def _direct(**override) -> OfflineDataset:
    """The dataclass constructor, which validates but does not cast."""
    ds = _flat()
    kw = {k: getattr(ds, k) for k in ("observations", "actions", "rewards",
                                      "next_observations", "terminals", "timeouts",
                                      "episode_starts", "observation_space", "action_space")}
    kw.update(override, source="direct")
    return OfflineDataset(**kw)


def test_shapes_and_dtypes_name_key_expected_and_found():
    with pytest.raises(DatasetError, match=r"direct: key 'rewards' must be \(N,\), found "
                                           r"shape \(5, 1\)"):
        _direct(rewards=np.zeros((5, 1), np.float32))
    with pytest.raises(DatasetError, match=r"direct: key 'next_observations' has shape "
                                           r"\(5, 3\), expected \(5, 2\) \(N=5 transitions"):
        _direct(next_observations=np.zeros((5, 3), np.float32))
    with pytest.raises(DatasetError, match="direct: key 'terminals' has dtype int64, "
                                           "expected bool"):
        _direct(terminals=np.zeros(5, np.int64))
    with pytest.raises(DatasetError, match="direct: key 'observations' has dtype float64, "
                                           "expected float32"):
        _direct(observations=np.zeros((5, 2)))
    with pytest.raises(DatasetError, match="direct: key 'timeouts' must be a numpy array, "
                                           "found <class 'list'>"):
        _direct(timeouts=[False] * 5)


@pytest.mark.parametrize("key", ["observations", "next_observations", "rewards", "actions"])
def test_non_finite_values_name_key_and_first_row(key):
    ds = _flat()
    arr = getattr(ds, key).copy()
    arr[3] = np.nan
    arr[4] = np.inf
    with pytest.raises(DatasetError, match=rf"direct: key '{key}' holds NaN or inf "
                                           r"\(first at row 3\)"):
        _direct(**{key: arr})


def test_discrete_actions_must_lie_in_the_space():
    with pytest.raises(DatasetError, match=r"hand.hdf5: key 'actions' holds values in \[0, 3\], "
                                           r"expected \[0, 2\] for Discrete\(3\)"):
        _flat(actions=[0, 3, 1, 1, 0], action_space=gym.spaces.Discrete(3))
    with pytest.raises(DatasetError, match=r"values in \[-1, 1\]"):
        _flat(actions=[0, -1, 1, 1, 0], action_space=gym.spaces.Discrete(3))


@pytest.mark.parametrize("starts", [[0, 2, 2, 5], [1, 5], [0, 4], [0, 3, 2, 5]])
def test_episode_starts_must_rise_strictly_from_zero_to_n(starts):
    with pytest.raises(DatasetError, match=r"hand.hdf5: episode_starts must rise strictly from "
                                           rf"0 to N=5, found .*\(length {len(starts)}\)"):
        _flat(episode_starts=starts)


def test_infos_need_one_row_per_transition():
    assert _flat(infos={"qpos": np.zeros((5, 3))}).infos["qpos"].shape == (5, 3)
    with pytest.raises(DatasetError, match=r"hand.hdf5: key 'infos/qpos' has leading length "
                                           r"\(4,\), expected \(5,\)"):
        _flat(infos={"qpos": np.zeros((4, 3))})
