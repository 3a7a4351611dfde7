"""Returns-to-go, the normaliser and the window sampler, against naive per-episode loops."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from offline_dt.data import DatasetError, OfflineDataset
from offline_dt.data.windows import (
    Normalizer,
    WindowSampler,
    returns_to_go,
    timesteps_in_episode,
)


def _naive_rtg(rewards, starts):
    out = np.zeros(len(rewards))
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        for t in range(s, e):
            out[t] = sum(float(r) for r in rewards[t:e])
    return out


def test_returns_to_go_and_timesteps_of_hand_made_episodes():
    rewards = np.array([1, 2, 3, 10, -4, 0.5], np.float32)
    starts = np.array([0, 3, 5, 6])  # episodes [1, 2, 3], [10, -4], [0.5]
    np.testing.assert_array_equal(returns_to_go(rewards, starts), [6, 5, 3, 6, -4, 0.5])
    np.testing.assert_array_equal(timesteps_in_episode(starts), [0, 1, 2, 0, 1, 0])


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
    k = 5
    sampler = WindowSampler(ds, Normalizer.fit(ds), k, max_timestep=20, seed=4)
    batch = sampler.sample(400)
    # The model inputs, computed here from the raw arrays (not through Normalizer or
    # returns_to_go): z-scored observations, Box(-3, 3) actions scaled to [-1, 1], and
    # returns-to-go divided by the largest absolute episode return.
    obs = ds.observations.astype(np.float64)
    obs_all = (obs - obs.mean(0)) / (obs.std(0) + 1e-6)
    act_all = ds.actions if discrete else ds.actions / 3.0
    ends = np.cumsum(lengths)
    starts = ends - np.array(lengths)
    ep_returns = [sum(float(r) for r in ds.rewards[s:e]) for s, e in zip(starts, ends,
                                                                          strict=True)]
    rtg_all = _naive_rtg(ds.rewards, np.append(starts, ends[-1])) / max(map(abs, ep_returns))
    padded_rows = 0
    for i in range(400):
        m = batch.mask[i].numpy()
        pad = int((~m).sum())
        assert (m == (np.arange(k) >= pad)).all(), "padding must be on the left"
        padded_rows += pad > 0
        assert (batch.observations[i, :pad] == 0).all() and (batch.timesteps[i, :pad] == 0).all()
        assert (batch.returns_to_go[i, :pad] == 0).all() and (batch.actions[i, :pad] == 0).all()
        # Identify the window by its first real row: observations are unique per row.
        first_obs = batch.observations[i, pad].numpy()
        row = int(np.argmin(np.abs(obs_all - first_obs).sum(1)))
        ep = int(np.searchsorted(ends, row, side="right"))
        real = k - pad
        assert row + real <= ends[ep], "a window never crosses an episode boundary"
        assert pad == 0 or row + real == ends[ep], "only windows reaching the end are padded"
        sl = slice(row, row + real)
        np.testing.assert_allclose(batch.observations[i, pad:].numpy(), obs_all[sl], atol=1e-5)
        np.testing.assert_allclose(batch.returns_to_go[i, pad:, 0].numpy(), rtg_all[sl],
                                   atol=1e-6)
        np.testing.assert_array_equal(batch.timesteps[i, pad:].numpy(),
                                      np.arange(real) + (row - starts[ep]))
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
    returns = [float(ds.rewards[:6].sum(dtype=np.float64)),
               float(ds.rewards[6:].sum(dtype=np.float64))]
    assert norm.rtg_scale == pytest.approx(max(abs(r) for r in returns))
    # Box(-3, 3): the model sees a / 3; values outside the box are clipped to the bounds.
    np.testing.assert_allclose(norm.actions_to_model(ds.actions), ds.actions / 3.0, atol=1e-6)
    np.testing.assert_allclose(norm.actions_to_model(np.array([[-4.5], [-3.0], [1.5], [9.0]],
                                                              np.float32)),
                               [[-1.0], [-1.0], [0.5], [1.0]])
    np.testing.assert_allclose(norm.actions_from_model(np.array([[-1.0], [0.0], [0.5]],
                                                                np.float32)),
                               [[-3.0], [0.0], [1.5]])
    np.testing.assert_allclose(norm.observations(ds.observations[:2]),
                               (ds.observations[:2] - norm.state_mean) / norm.state_std)
    back = Normalizer.from_state_dict(norm.state_dict())
    for name in ("state_mean", "state_std", "action_low", "action_high"):
        np.testing.assert_array_equal(getattr(back, name), getattr(norm, name))
    np.testing.assert_array_equal(back.action_low, [-3.0])
    assert back.rtg_scale == norm.rtg_scale
    assert Normalizer.fit(ds, rtg_scale=7.0).rtg_scale == 7.0


def test_discrete_actions_pass_through_the_normalizer():
    ds = _dataset([4, 5], discrete=True)
    norm = Normalizer.fit(ds)
    assert norm.action_low.size == 0
    np.testing.assert_array_equal(norm.actions_to_model(ds.actions), ds.actions)
    np.testing.assert_array_equal(norm.actions_from_model(np.array([2, 0])), [2, 0])


def _batches_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, f).cpu(), getattr(b, f).cpu())
               for f in ("returns_to_go", "observations", "actions", "timesteps", "mask",
                         "rewards", "next_observations", "terminals"))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_a_sampler_on_a_device_yields_the_cpu_samplers_batches(device):
    """The arrays live on the device, the draw stays on the CPU generator: same windows,
    batch after batch, and the batch is on the device (no host-to-device batch copy)."""
    ds = _dataset([4, 30, 9, 17])
    norm = Normalizer.fit(ds)
    host = WindowSampler(ds, norm, 6, 30, seed=3)
    there = WindowSampler(ds, norm, 6, 30, seed=3, device=device)
    assert there.obs.device.type == device
    for _ in range(3):
        a, b = host.sample(32), there.sample(32)
        assert b.observations.device.type == device
        assert _batches_equal(a, b)


@pytest.mark.parametrize("batch_size,world", [(16, 2), (7, 3), (5, 5)])
def test_shards_of_the_ranks_concatenate_to_the_global_batch(batch_size, world):
    """Every rank draws the global batch and keeps its contiguous shard; the shares are each
    shard's fraction of the real (unpadded) steps and sum to 1."""
    ds = _dataset([4, 30, 9, 17])
    norm = Normalizer.fit(ds)
    full = WindowSampler(ds, norm, 6, 30, seed=5).sample(batch_size)
    shards = [WindowSampler(ds, norm, 6, 30, seed=5).sample_shard(batch_size, r, world)
              for r in range(world)]
    assert sum(len(b.mask) for b, _ in shards) == batch_size
    for field in ("observations", "actions", "mask", "returns_to_go", "timesteps"):
        joined = torch.cat([getattr(b, field) for b, _ in shards])
        assert torch.equal(joined, getattr(full, field)), field
    shares = [share for _, share in shards]
    assert sum(shares) == pytest.approx(1.0)
    real = full.mask.sum().item()
    assert shares == pytest.approx([b.mask.sum().item() / real for b, _ in shards])
