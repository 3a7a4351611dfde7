"""Returns-to-go, the normaliser and the window sampler, against naive per-episode loops."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from offline_dt.data import DatasetError, OfflineDataset
from offline_dt.data.windows import Normalizer, WindowSampler, returns_to_go


def _naive_rtg(rewards, starts):
    out = np.zeros(len(rewards))
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        for t in range(s, e):
            out[t] = sum(float(r) for r in rewards[t:e])
    return out


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_returns_to_go_matches_naive_loop(lengths, seed):
    rewards = np.random.default_rng(seed).normal(0, 10, sum(lengths)).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    got = returns_to_go(rewards, starts)
    np.testing.assert_allclose(got, _naive_rtg(rewards, starts), rtol=1e-9, atol=1e-9)
    # the first step's RTG is the episode return; the last is the last reward
    np.testing.assert_allclose(got[starts[:-1]],
                               np.add.reduceat(rewards.astype(np.float64), starts[:-1]),
                               atol=1e-9)
    np.testing.assert_allclose(got[starts[1:] - 1], rewards[starts[1:] - 1], atol=1e-9)


def _dataset(lengths, discrete=False, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = rng.normal(size=(n, 2)).astype(np.float32)
    if discrete:
        actions, space = rng.integers(0, 3, n), gym.spaces.Discrete(3)
    else:
        actions = rng.uniform(-3, 3, (n, 1)).astype(np.float32)
        space = gym.spaces.Box(-3.0, 3.0, (1,), np.float32)
    term = np.zeros(n, bool)
    term[np.cumsum(lengths) - 1] = True
    return OfflineDataset.from_flat(
        observations=obs, actions=actions, rewards=rng.normal(size=n).astype(np.float32),
        terminals=term, timeouts=np.zeros(n, bool),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
        action_space=space)


@pytest.mark.parametrize("discrete", [False, True])
def test_windows_equal_naive_slices_with_left_padding(discrete):
    lengths = [3, 9, 1, 14]
    ds = _dataset(lengths, discrete)
    norm = Normalizer.fit(ds)
    k = 5
    sampler = WindowSampler(ds, norm, k, max_timestep=20, seed=4)
    batch = sampler.sample(400)
    rtg_all = returns_to_go(ds.rewards, ds.episode_starts) / norm.rtg_scale
    obs_all = norm.observations(ds.observations)
    act_all = norm.actions_to_model(ds.actions)
    # Identify each window by its last real row: observations are unique per row.
    padded_rows = 0
    for i in range(400):
        m = batch.mask[i].numpy()
        pad = int((~m).sum())
        assert (m == (np.arange(k) >= pad)).all(), "padding must be on the left"
        padded_rows += pad > 0
        assert (batch.observations[i, :pad] == 0).all() and (batch.timesteps[i, :pad] == 0).all()
        assert (batch.returns_to_go[i, :pad] == 0).all() and (batch.actions[i, :pad] == 0).all()
        first_obs = batch.observations[i, pad].numpy()
        row = int(np.argmin(np.abs(obs_all - first_obs).sum(1)))
        ep = int(np.searchsorted(ds.episode_starts, row, side="right") - 1)
        end = int(ds.episode_starts[ep + 1])
        real = k - pad
        assert row + real <= end, "a window never crosses an episode boundary"
        assert pad == 0 or row + real == end, "only windows reaching the episode end are padded"
        sl = slice(row, row + real)
        np.testing.assert_allclose(batch.observations[i, pad:].numpy(), obs_all[sl], atol=1e-6)
        np.testing.assert_allclose(batch.returns_to_go[i, pad:, 0].numpy(), rtg_all[sl],
                                   atol=1e-6)
        np.testing.assert_array_equal(batch.timesteps[i, pad:].numpy(),
                                      np.arange(row, row + real) - ds.episode_starts[ep])
        if discrete:
            np.testing.assert_array_equal(batch.actions[i, pad:].numpy(), act_all[sl])
        else:
            np.testing.assert_allclose(batch.actions[i, pad:].numpy(), act_all[sl], atol=1e-6)
    assert padded_rows > 0
    assert batch.actions.dtype == (torch.int64 if discrete else torch.float32)
    assert batch.returns_to_go.shape == (400, k, 1)


def test_sampling_frequency_proportional_to_episode_length():
    lengths = [5, 10, 20, 45]
    ds = _dataset(lengths)
    sampler = WindowSampler(ds, Normalizer.fit(ds), 1, max_timestep=64, seed=0)
    n = 20_000
    batch = sampler.sample(n)
    # K=1: the one slot is the start step; its episode is found from the timestep + obs row.
    obs_all = Normalizer.fit(ds).observations(ds.observations)
    key = {tuple(np.round(o, 5)): i for i, o in enumerate(obs_all)}
    rows = np.array([key[tuple(np.round(o, 5))] for o in batch.observations[:, 0].numpy()])
    eps = np.searchsorted(ds.episode_starts, rows, side="right") - 1
    freq = np.bincount(eps, minlength=4) / n
    np.testing.assert_allclose(freq, np.array(lengths) / sum(lengths), atol=0.02)
    # and the start is uniform within an episode: every row of the long episode is drawn
    assert len(np.unique(rows)) == sum(lengths)


def test_sampler_is_seeded_and_checks_timestep_table():
    ds = _dataset([4, 30])
    norm = Normalizer.fit(ds)
    a = WindowSampler(ds, norm, 4, 30, seed=1).sample(16)
    b = WindowSampler(ds, norm, 4, 30, seed=1).sample(16)
    c = WindowSampler(ds, norm, 4, 30, seed=2).sample(16)
    assert torch.equal(a.observations, b.observations)
    assert not torch.equal(a.observations, c.observations)
    with pytest.raises(DatasetError, match="longest episode has 30 steps"):
        WindowSampler(ds, norm, 4, 29)


def test_normalizer_statistics_and_round_trip():
    ds = _dataset([6, 7])
    norm = Normalizer.fit(ds)
    np.testing.assert_allclose(norm.state_mean, ds.observations.mean(0), atol=1e-5)
    np.testing.assert_allclose(norm.state_std, ds.observations.std(0) + 1e-6, atol=1e-5)
    assert norm.rtg_scale == pytest.approx(np.abs(ds.episode_returns).max())
    a = norm.actions_to_model(ds.actions)
    assert a.min() >= -1 and a.max() <= 1
    np.testing.assert_allclose(norm.actions_from_model(a), ds.actions, atol=1e-5)
    back = Normalizer.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(back.state_std, norm.state_std)
    assert back.rtg_scale == norm.rtg_scale
    assert Normalizer.fit(ds, rtg_scale=7.0).rtg_scale == 7.0
