"""D4RL HDF5 and Minari round trips, the D4RL episode split and malformed files."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np
import pytest

from offline_dt.data import (
    DatasetError,
    load_dataset,
    read_hdf5,
    read_minari,
    write_hdf5,
    write_minari,
)


def test_hdf5_round_trip_preserves_checksum(box_dataset, discrete_dataset, tmp_path):
    for name, ds in (("box", box_dataset), ("disc", discrete_dataset)):
        back = read_hdf5(write_hdf5(ds, tmp_path / f"{name}.hdf5"))
        assert back.checksum() == ds.checksum()
        assert back.action_space == ds.action_space
        assert back.observation_space == ds.observation_space
        assert back.metadata["env_id"] == ds.metadata["env_id"]
    with pytest.raises(FileExistsError):
        write_hdf5(box_dataset, tmp_path / "box.hdf5")


def test_minari_round_trip_preserves_checksum(box_dataset, minari_root_dir, box_minari,
                                             discrete_dataset, tmp_path):
    back = read_minari(box_minari)  # via $MINARI_DATASETS_PATH (monkeypatched)
    assert back.checksum() == box_dataset.checksum()
    assert back.metadata["ref_max_score"] == -150.0
    assert load_dataset(box_minari).checksum() == box_dataset.checksum()
    assert load_dataset(minari_root_dir / box_minari).checksum() == box_dataset.checksum()
    path = write_minari(discrete_dataset, "tiny/disc-v0", root=tmp_path)
    assert read_minari(path).checksum() == discrete_dataset.checksum()


def test_d4rl_split_at_terminals_or_timeouts(tmp_path):
    n = 10
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    term[2] = True
    tout[5] = True
    term[6] = tout[6] = True
    obs = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    path = tmp_path / "d4rl.hdf5"
    with h5py.File(path, "w") as f:  # an original D4RL layout: no metadata, no next_obs
        f["observations"] = obs
        f["actions"] = np.linspace(-1, 1, n, dtype=np.float32)[:, None]
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = term
        f["timeouts"] = tout
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.episode_starts, [0, 3, 6, 7, 10])
    np.testing.assert_array_equal(ds.episode_returns, [3, 3, 1, 3])
    # next_observations: the next row inside an episode, the row itself at an episode end
    # (rows 2, 5, 6 and 9)
    np.testing.assert_array_equal(ds.next_observations, obs[[1, 2, 2, 4, 5, 5, 6, 8, 9, 9]])
    # no spaces in the file: a Box over the observations, and a Box spanning at least [-1, 1]
    assert not ds.discrete
    assert ds.action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    assert ds.observation_space == gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    assert ds.metadata == {} and ds.source == str(path)


def test_inferred_action_spaces(tmp_path):
    obs = np.zeros((4, 2), np.float32)
    flags = np.array([0, 0, 0, 1], bool)
    path = _write(tmp_path / "wide.hdf5", None, observations=obs, rewards=np.zeros(4, np.float32),
                  terminals=flags, timeouts=flags,
                  actions=np.array([[-2.5], [0.0], [1.0], [0.5]], np.float32))
    assert read_hdf5(path).action_space == gym.spaces.Box(-2.5, 2.5, (1,), np.float32)
    path = _write(tmp_path / "int.hdf5", None, observations=obs, rewards=np.zeros(4, np.float32),
                  terminals=flags, timeouts=flags, actions=np.array([0, 4, 1, 2]))
    ds = read_hdf5(path)
    assert ds.action_space == gym.spaces.Discrete(5)
    np.testing.assert_array_equal(ds.actions, [0, 4, 1, 2])


def test_metadata_and_infos_round_trip(box_dataset, tmp_path):
    ds = box_dataset
    infos = {"qpos": np.arange(ds.num_transitions * 2, dtype=np.float64).reshape(-1, 2)}
    with_extras = type(ds).from_flat(
        observations=ds.observations, actions=ds.actions, rewards=ds.rewards,
        terminals=ds.terminals, timeouts=ds.timeouts, observation_space=ds.observation_space,
        action_space=ds.action_space, metadata={"env_id": "Pendulum-v1", "seed": 7,
                                                "level": "expert", "ref_min_score": -1200.0},
        infos=infos)
    back = read_hdf5(write_hdf5(with_extras, tmp_path / "extras.hdf5"))
    assert back.metadata == {"env_id": "Pendulum-v1", "seed": 7, "level": "expert",
                             "ref_min_score": -1200.0}
    np.testing.assert_array_equal(back.infos["qpos"], infos["qpos"])


def test_rewards_column_is_accepted_and_wider_rewards_are_refused(box_dataset, tmp_path):
    rewards = box_dataset.rewards
    path = _write(tmp_path / "col.hdf5", box_dataset, rewards=rewards[:, None])
    np.testing.assert_array_equal(read_hdf5(path).rewards, rewards)
    path = _write(tmp_path / "wide.hdf5", box_dataset, rewards=np.stack([rewards, rewards], 1))
    n = box_dataset.num_transitions
    with pytest.raises(DatasetError,
                       match=rf"wide.hdf5: key 'rewards' must be \(N,\), found \({n}, 2\)"):
        read_hdf5(path)


def _write(path, ds, **override):
    """An HDF5 file with ``ds``'s five D4RL keys, or ``override``'s (None: key left out)."""
    with h5py.File(path, "w") as f:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            value = override[key] if key in override else getattr(ds, key)
            if value is not None:
                f[key] = value
    return path


def test_missing_key_names_file_and_key(box_dataset, tmp_path):
    path = _write(tmp_path / "nokey.hdf5", box_dataset, rewards=None)
    with pytest.raises(DatasetError, match=r"nokey.hdf5: missing key\(s\) \['rewards'\]"):
        read_hdf5(path)


@pytest.mark.parametrize("key", ["observations", "actions", "terminals", "timeouts"])
def test_length_mismatch_names_file_and_key(key, box_dataset, tmp_path):
    path = _write(tmp_path / "short.hdf5", box_dataset,
                  **{key: getattr(box_dataset, key)[:-2]})
    n = box_dataset.num_transitions
    with pytest.raises(DatasetError, match=rf"short.hdf5: key '{key}' has {n - 2} rows.*{n}"):
        read_hdf5(path)


@pytest.mark.parametrize("key", ["observations", "rewards", "actions"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_names_file_and_key(key, bad, box_dataset, tmp_path):
    arr = getattr(box_dataset, key).copy()
    arr[4] = bad
    path = _write(tmp_path / "nan.hdf5", box_dataset, **{key: arr})
    with pytest.raises(DatasetError, match=rf"nan.hdf5: key '{key}' holds NaN or inf.*row 4"):
        read_hdf5(path)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"no hdf5 here")
    with pytest.raises(DatasetError, match="junk.hdf5: not a readable HDF5 file"):
        read_hdf5(junk)
    with pytest.raises(FileNotFoundError, match="missing.hdf5"):
        load_dataset(tmp_path / "missing.hdf5")
    with pytest.raises(FileNotFoundError, match="no/such-v0"):
        load_dataset("no/such-v0", minari_root=tmp_path)
