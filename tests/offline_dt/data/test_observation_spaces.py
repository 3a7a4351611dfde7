"""Dict and image observations in the data layer: the container, both formats, the flat view,
normalisation, windows and the errors that name the key (``offline_dt.data.layout``)."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from offline_dt.data import DatasetError, OfflineDataset, read_hdf5, write_hdf5
from offline_dt.data.layout import flat_view, layout_mismatch, observation_layout
from offline_dt.data.minari_io import read_minari, write_minari
from offline_dt.data.windows import Normalizer, WindowSampler

IMAGE = gym.spaces.Box(0, 255, (3, 3, 2), np.uint8)
SPACE = gym.spaces.Dict({
    "image": IMAGE,
    "direction": gym.spaces.Discrete(4),
    "goal": gym.spaces.Dict({"xy": gym.spaces.Box(-5.0, 5.0, (2,), np.float32)}),
})
ACT = gym.spaces.Discrete(3)


def dict_observations(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 11, (n, 3, 3, 2)).astype(np.uint8),
            "direction": np.arange(n) % 4,
            "goal": {"xy": rng.normal(1.0, 2.0, (n, 2))}}


def make_dict_dataset(lengths=(4, 6, 5), **overrides) -> OfflineDataset:
    n = sum(lengths)
    timeouts = np.zeros(n, bool)
    timeouts[np.cumsum(lengths) - 1] = True
    args = dict(observations=dict_observations(n), actions=np.arange(n) % 3,
                rewards=np.linspace(0, 1, n), terminals=np.zeros(n, bool), timeouts=timeouts,
                observation_space=SPACE, action_space=ACT, source="dict.hdf5",
                metadata={"env_id": ""})
    args.update(overrides)
    return OfflineDataset.from_flat(**args)


def test_layout_is_sorted_leaves_and_flat_box_has_none():
    layout = observation_layout(SPACE)
    assert [(leaf.key, leaf.kind, leaf.width) for leaf in layout] == [
        ("direction", "discrete", 1), ("goal/xy", "vector", 2), ("image", "image", 18)]
    assert observation_layout(gym.spaces.Box(-1, 1, (3,))) is None
    assert make_dict_dataset().obs_dim == 1 + 2 + 18


def test_leaves_are_stored_in_their_dtypes_and_next_observations_shift():
    ds = make_dict_dataset()
    assert ds.observations["image"].dtype == np.uint8
    assert ds.observations["direction"].dtype == np.int64
    assert ds.observations["goal/xy"].dtype == np.float32
    # inside an episode s_{t+1} is the next row; at its last step the row's own
    np.testing.assert_array_equal(ds.next_observations["direction"][:4], [1, 2, 3, 3])


def test_dict_round_trips_through_hdf5_with_one_dataset_per_key(tmp_path):
    ds = make_dict_dataset()
    path = write_hdf5(ds, tmp_path / "dict.hdf5")
    with h5py.File(path) as f:
        assert f["observations/image"].dtype == np.uint8
        assert f["observations/goal/xy"].shape == (15, 2)
        assert f["next_observations/direction"].dtype == np.int64
    back = read_hdf5(path)
    assert back.observation_space == SPACE
    for key, arr in ds.observations.items():
        np.testing.assert_array_equal(back.observations[key], arr)
        np.testing.assert_array_equal(back.next_observations[key], ds.next_observations[key])
    assert back.checksum() == ds.checksum()


def test_dict_round_trips_through_minari(tmp_path):
    import minari

    ds = make_dict_dataset()
    write_minari(ds, "tiny/dict-v0", tmp_path)
    back = read_minari("tiny/dict-v0", tmp_path)
    assert back.checksum() == ds.checksum()
    for key, arr in ds.observations.items():
        np.testing.assert_array_equal(back.observations[key], arr)
    theirs = minari.MinariDataset(tmp_path / "tiny" / "dict-v0" / "data")
    ep = next(theirs.iterate_episodes())
    np.testing.assert_array_equal(ep.observations["goal"]["xy"][:4], ds.observations["goal/xy"][:4])


def test_image_box_round_trips(tmp_path):
    n = 6
    obs = np.random.default_rng(0).integers(0, 255, (n, 3, 3, 2)).astype(np.uint8)
    ds = OfflineDataset.from_flat(observations=obs, actions=np.zeros(n, np.int64),
                                  rewards=np.ones(n), terminals=np.r_[np.zeros(n - 1), 1],
                                  timeouts=np.zeros(n), observation_space=IMAGE,
                                  action_space=ACT)
    assert ds.obs_dim == 18 and ds.observations.dtype == np.uint8
    back = read_hdf5(write_hdf5(ds, tmp_path / "img.hdf5"))
    assert back.checksum() == ds.checksum() and back.observation_space == IMAGE


def test_missing_key_wrong_image_shape_and_unsupported_leaf_are_named():
    obs = dict_observations(15)
    del obs["direction"]
    with pytest.raises(DatasetError, match=r"dict.hdf5: key\(s\) \['observations/direction'\] "
                                           r"missing; the observation space has keys"):
        make_dict_dataset(observations=obs)
    obs = dict_observations(15)
    obs["image"] = np.zeros((15, 4, 4, 2), np.uint8)
    with pytest.raises(DatasetError, match=r"key 'observations/image' has shape \(15, 4, 4, "
                                           r"2\), expected \(15, 3, 3, 2\) for the image leaf"):
        make_dict_dataset(observations=obs)
    bad = gym.spaces.Dict({"pos": gym.spaces.MultiDiscrete([2, 3])})
    with pytest.raises(DatasetError, match="observation key 'pos' is a MultiDiscrete"):
        make_dict_dataset(observation_space=bad, observations={"pos": np.zeros((15, 2))})


def test_text_leaves_are_dropped_and_env_mismatch_names_the_key():
    with_text = gym.spaces.Dict({**SPACE.spaces, "mission": gym.spaces.Text(10)})
    assert observation_layout(with_text) == observation_layout(SPACE)
    assert layout_mismatch(with_text, SPACE) is None
    smaller = gym.spaces.Dict({k: v for k, v in SPACE.spaces.items() if k != "direction"})
    assert "the env's observation key 'direction'" in layout_mismatch(SPACE, smaller)
    other = gym.spaces.Dict({**SPACE.spaces, "image": gym.spaces.Box(0, 255, (5, 5, 2),
                                                                      np.uint8)})
    assert "observation key 'image'" in layout_mismatch(other, SPACE)


def test_normaliser_scales_images_and_keeps_discrete_values():
    ds = make_dict_dataset()
    norm = Normalizer.fit(ds)
    xy = ds.observations["goal/xy"].astype(np.float64)
    np.testing.assert_allclose(norm.state_mean[1:3], xy.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.state_std[1:3], xy.std(0) + 1e-6, rtol=1e-6)
    assert norm.state_mean[0] == 0 and norm.state_std[0] == 1  # the direction column
    assert (norm.state_std[3:] == 255).all() and (norm.state_mean[3:] == 0).all()
    flat = norm.observations(flat_view(ds.observations, ds.layout))
    assert flat[:, 3:].max() <= 10 / 255 + 1e-7


def test_windows_gather_every_leaf_as_the_flat_view():
    ds = make_dict_dataset()
    norm = Normalizer.fit(ds)
    sampler = WindowSampler(ds, norm, context_length=3, max_timestep=20)
    assert sampler.obs_leaves[2].dtype == torch.uint8  # images stay uint8 at rest
    batch = sampler.sample(8)
    assert batch.observations.shape == (8, 3, 21)
    expect = norm.observations(flat_view(ds.observations, ds.layout))
    rows = torch.as_tensor(expect)
    for b in range(8):
        for j in range(3):
            if batch.mask[b, j]:
                match = (rows - batch.observations[b, j]).abs().max(1).values < 1e-5
                assert match.any()
            else:
                assert (batch.observations[b, j] == 0).all()
