"""Returns-to-go, normalisation and the vectorised window sampler for Decision Transformer
training (Chen et al. 2021, Section 3: returns-to-go R̂_t = Σ_{t'≥t} r_t', eq. 3 undiscounted).

Sampling follows the reference implementation (``experiment.py`` ``get_batch``): an episode is
drawn with probability proportional to its length, a start index uniformly inside it, the next
K steps are taken, and windows that run past the episode's end are left-padded and masked.
Everything is a gather over precomputed flat arrays: no Python loop per sample.

:class:`SegmentSampler` feeds band-attention networks (``DTConfig.attention == "band"``):
segments of up to S steps (whole episodes when they fit), right-padded, every real step in the
loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offline_dt.data.dataset import DatasetError, OfflineDataset
from offline_dt.data.layout import IMAGE_SCALE, Layout


def returns_to_go(rewards: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
    """Undiscounted returns-to-go of every transition, episode by episode.

    Args:
        rewards: ``(N,)`` rewards.
        episode_starts: ``(E + 1,) int64`` CSR offsets.

    Returns:
        ``(N,) float64``: ``R̂_t = Σ_{t'=t}^{T_episode-1} r_t'`` (includes ``r_t``).
    """
    r = rewards.astype(np.float64)
    # Suffix sums over the whole array, then subtract the suffix after each episode's end.
    suffix = np.append(np.cumsum(r[::-1])[::-1], 0.0)
    lengths = np.diff(episode_starts)
    ends = np.repeat(episode_starts[1:], lengths)
    return suffix[:-1] - suffix[ends]


def timesteps_in_episode(episode_starts: np.ndarray) -> np.ndarray:
    """``(N,) int64`` position of each transition inside its episode (0-based)."""
    lengths = np.diff(episode_starts)
    n = int(episode_starts[-1])
    return np.arange(n, dtype=np.int64) - np.repeat(episode_starts[:-1], lengths)


@dataclass
class Normalizer:
    """What maps raw data to model inputs; saved with every checkpoint.

    Attributes:
        state_mean: ``(obs_dim,) float32`` observation mean over the dataset (per column of
            the flat view for a space with a layout, ``offline_dt.data.layout``: a Box leaf's
            mean, 0 for image and Discrete columns).
        state_std: ``(obs_dim,) float32`` observation std over the dataset, plus 1e-6 (an
            image column's is 255, so images are scaled to [0, 1], not normalised; a
            Discrete column's 1, so it holds the value).
        rtg_scale: returns-to-go are divided by this (reward units).
        action_low: ``(act_dim,) float32`` Box lower bound (empty for Discrete).
        action_high: ``(act_dim,) float32`` Box upper bound (empty for Discrete).
    """

    state_mean: np.ndarray
    state_std: np.ndarray
    rtg_scale: float
    action_low: np.ndarray
    action_high: np.ndarray

    @classmethod
    def fit(cls, dataset: OfflineDataset, rtg_scale: float | None = None) -> Normalizer:
        """Statistics of ``dataset``. ``rtg_scale=None`` picks the largest absolute episode
        return, so scaled returns-to-go lie in [-1, 1]."""
        if rtg_scale is None:
            rtg_scale = float(np.abs(dataset.episode_returns).max()) or 1.0
        if rtg_scale <= 0:
            raise ValueError(f"rtg_scale must be positive, found {rtg_scale}")
        if isinstance(dataset.action_space, gym.spaces.Box):
            low = dataset.action_space.low.astype(np.float32).reshape(-1)
            high = dataset.action_space.high.astype(np.float32).reshape(-1)
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise DatasetError(
                    f"{dataset.source}: Box action space must be bounded for the tanh head, "
                    f"found low={low}, high={high}"
                )
        else:
            low = high = np.zeros(0, np.float32)
        mean, std = observation_statistics(dataset.observations, dataset.layout)
        return cls(
            state_mean=mean,
            state_std=std,
            rtg_scale=float(rtg_scale),
            action_low=low,
            action_high=high,
        )

    def observations(self, obs: np.ndarray) -> np.ndarray:
        """Raw ``(..., obs_dim)`` → normalised float32."""
        return ((obs - self.state_mean) / self.state_std).astype(np.float32)

    def actions_to_model(self, actions: np.ndarray) -> np.ndarray:
        """Box actions in env units → [-1, 1] float32 (clipped); Discrete passes through."""
        if self.action_low.size == 0:
            return actions
        scaled = 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0
        return np.clip(scaled, -1.0, 1.0).astype(np.float32)

    def actions_from_model(self, actions: np.ndarray) -> np.ndarray:
        """Model output in [-1, 1] → env units (Box); Discrete passes through."""
        if self.action_low.size == 0:
            return actions
        return (self.action_low + (actions + 1.0) * 0.5 * (self.action_high - self.action_low)
                ).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "state_mean": self.state_mean,
            "state_std": self.state_std,
            "rtg_scale": np.array(self.rtg_scale, np.float64),
            "action_low": self.action_low,
            "action_high": self.action_high,
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray]) -> Normalizer:
        return cls(
            state_mean=np.asarray(d["state_mean"], np.float32),
            state_std=np.asarray(d["state_std"], np.float32),
            rtg_scale=float(np.asarray(d["rtg_scale"])),
            action_low=np.asarray(d["action_low"], np.float32),
            action_high=np.asarray(d["action_high"], np.float32),
        )


def observation_statistics(observations: Any, layout: Layout | None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``(obs_dim,) float32`` mean and std (+ 1e-6) of each column of the flat view: of the
    array for a flat Box; per leaf otherwise (:class:`Normalizer`), leaf by leaf so no
    float copy of an image is made."""
    if layout is None:
        obs = observations.astype(np.float64)
        return obs.mean(0).astype(np.float32), (obs.std(0) + 1e-6).astype(np.float32)
    means, stds = [], []
    for leaf, arr in zip(layout, leaf_arrays(observations, layout), strict=True):
        if leaf.kind == "vector":
            x = arr.reshape(len(arr), -1).astype(np.float64)
            means.append(x.mean(0))
            stds.append(x.std(0) + 1e-6)
        else:
            scale = IMAGE_SCALE if leaf.kind == "image" else 1.0
            means.append(np.zeros(leaf.width))
            stds.append(np.full(leaf.width, scale))
    return (np.concatenate(means).astype(np.float32), np.concatenate(stds).astype(np.float32))


def leaf_arrays(observations: Any, layout: Layout) -> list[np.ndarray]:
    """A dataset's observations of ``layout``, one array per leaf in layout order."""
    if isinstance(observations, dict):
        return [observations[leaf.key] for leaf in layout]
    return [observations]


@dataclass
class Batch:
    """A batch of training windows (all tensors on one device).

    Attributes:
        returns_to_go: ``(B, K, 1) float32`` scaled R̂.
        observations: ``(B, K, obs_dim) float32`` normalised (the flat view of a Dict or
            image space, ``offline_dt.data.layout``: each leaf gathered from its own array
            and normalised per batch).
        actions: ``(B, K, act_dim) float32`` in [-1, 1], or ``(B, K) int64`` for Discrete.
        timesteps: ``(B, K) int64``.
        mask: ``(B, K) bool``, False on padding (left padding for :class:`WindowSampler`'s
            windows, right padding for :class:`SegmentSampler`'s segments).
        rewards: ``(B, K) float32`` rewards r_t divided by the return-to-go scale (what a
            critic learns from; zero on padding).
        next_observations: ``(B, K, obs_dim) float32`` normalised s_{t+1} of each transition
            (the dataset's ``next_observations``, so also for an episode's last step).
        terminals: ``(B, K) bool`` the transition ended the MDP (Gymnasium ``terminated``: no
            bootstrap from s_{t+1}); False on time limits and padding.
    """

    returns_to_go: torch.Tensor
    observations: torch.Tensor
    actions: torch.Tensor
    timesteps: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor | None = None
    next_observations: torch.Tensor | None = None
    terminals: torch.Tensor | None = None


class WindowSampler:
    """Samples ``Batch``es of context-length-K windows from an ``OfflineDataset``.

    The model inputs (normalised observations, scaled actions, scaled returns-to-go,
    timesteps) are computed once here and held on ``device``; ``sample`` is a vectorised
    gather there. The random draw (episodes, start indices: ``2 * batch_size`` numbers) uses
    a CPU generator on every device, so a sampler on CUDA yields the batches of one on the CPU
    and each step copies only those indices to the device, never a batch.

    Raises:
        DatasetError: an episode is at least ``max_timestep`` long.
    """

    def __init__(
        self,
        dataset: OfflineDataset,
        normalizer: Normalizer,
        context_length: int,
        max_timestep: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, found {context_length}")
        longest = int(dataset.episode_lengths.max())
        if longest > max_timestep:
            raise DatasetError(
                f"{dataset.source}: longest episode has {longest} steps but the timestep "
                f"table holds {max_timestep} (set max_timestep to at least {longest}; if the "
                f"episodes should be shorter, check the file's terminals and timeouts)"
            )
        self.k = context_length
        self.discrete = dataset.discrete
        self.device = dev = torch.device(device)
        rtg = returns_to_go(dataset.rewards, dataset.episode_starts) / normalizer.rtg_scale
        rewards = dataset.rewards.astype(np.float64) / normalizer.rtg_scale
        self.layout = layout = dataset.layout
        arrays = {
            "actions": np.ascontiguousarray(normalizer.actions_to_model(dataset.actions)),
            "rtg": rtg.astype(np.float32),
            "rewards": rewards.astype(np.float32),
            "terminals": dataset.terminals.astype(bool),
            "timesteps": timesteps_in_episode(dataset.episode_starts),
            "ep_start": dataset.episode_starts[:-1].copy(),
        }
        if layout is None:
            arrays["obs"] = normalizer.observations(dataset.observations)
            arrays["next_obs"] = normalizer.observations(dataset.next_observations)
        else:  # each leaf at rest in its own dtype (images uint8), normalised per batch
            self.obs_leaves = [torch.from_numpy(np.ascontiguousarray(a)).to(dev)
                               for a in leaf_arrays(dataset.observations, layout)]
            self.next_obs_leaves = [torch.from_numpy(np.ascontiguousarray(a)).to(dev)
                                    for a in leaf_arrays(dataset.next_observations, layout)]
            self.state_mean = torch.from_numpy(normalizer.state_mean).to(dev)
            self.state_std = torch.from_numpy(normalizer.state_std).to(dev)
        for name, array in arrays.items():  # once: sample() moves only indices
            setattr(self, name, torch.from_numpy(array).to(dev))
        # The draw stays on the CPU generator, so every device samples the same windows.
        self.ep_len = torch.from_numpy(dataset.episode_lengths.copy())
        self.ep_prob = self.ep_len.double() / self.ep_len.sum()
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(context_length, device=dev)

    def _observations(self, idx: torch.Tensor, next_obs: bool = False) -> torch.Tensor:
        """``(b, K, obs_dim) float32`` normalised observations of rows ``idx`` ``(b, K)``: a
        gather of the flat array, or of every leaf, normalised and concatenated (the flat
        view, ``offline_dt.data.layout``)."""
        if self.layout is None:
            return (self.next_obs if next_obs else self.obs)[idx]
        leaves = self.next_obs_leaves if next_obs else self.obs_leaves
        x = torch.cat([leaf[idx].reshape(*idx.shape, -1).float() for leaf in leaves], -1)
        return (x - self.state_mean) / self.state_std

    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` windows (episodes ∝ length, start uniform, left-padded)."""
        return self.sample_shard(batch_size, 0, 1)[0]

    def sample_shard(self, batch_size: int, rank: int, world_size: int) -> tuple[Batch, float]:
        """Rank ``rank``'s shard of the global batch :meth:`sample` would draw, and its share.

        The whole global batch is drawn (so the generator advances as in one process) but
        only the rows ``offline_dt.training.distributed.shard_bounds`` gives this rank are gathered:
        the shards of ``world_size`` ranks concatenated are ``sample(batch_size)``.

        Returns:
            (the shard on ``self.device``, its real steps over the global batch's real steps).
        """
        k = self.k
        ep = torch.multinomial(self.ep_prob, batch_size, replacement=True,
                               generator=self.generator)
        length = self.ep_len[ep]
        start = (torch.rand(batch_size, generator=self.generator) * length).long()
        valid = torch.clamp(length - start, max=k)  # real steps in the window
        lo = batch_size * rank // world_size
        hi = batch_size * (rank + 1) // world_size
        share = 1.0 if world_size == 1 else float(valid[lo:hi].sum()) / float(valid.sum())
        dev = self.device
        ep, start, valid = (t[lo:hi].to(dev, non_blocking=True) for t in (ep, start, valid))
        pad = k - valid
        # Window slot j holds step start + j - pad; slots j < pad are padding.
        rel = self._offsets[None, :] - pad[:, None]
        mask = rel >= 0
        idx = self.ep_start[ep, None] + start[:, None] + rel.clamp(min=0)
        obs = self._observations(idx) * mask[..., None]
        if self.discrete:
            actions = self.actions[idx] * mask
        else:
            actions = self.actions[idx] * mask[..., None]
        return Batch(
            returns_to_go=(self.rtg[idx] * mask)[..., None],
            observations=obs,
            actions=actions,
            timesteps=self.timesteps[idx] * mask,
            mask=mask,
            rewards=self.rewards[idx] * mask,
            next_observations=self._observations(idx, True) * mask[..., None],
            terminals=self.terminals[idx] & mask,
        ), share


class SegmentSampler(WindowSampler):
    """Samples ``Batch``es of segments of up to ``segment_length`` (S) steps, for networks
    with band attention (``DTConfig.attention == "band"``), which see every step of a
    segment and are trained on all of them.

    An episode of length L is drawn with probability proportional to ``max(L, S)``; a
    segment is the whole episode when ``L <= S``, else S consecutive steps starting
    uniformly in ``[0, L - S]``. So every step is, on average, as likely as any other to be
    in the loss, and a segment always starts at its episode's start when the episode fits
    (as acting does). Short segments are right-padded (``mask`` False) and the batch is
    cropped to its longest segment. The random draw (``2 * batch_size`` numbers) is on the
    CPU generator as in :class:`WindowSampler`, whose arrays and checkpointed generator this
    reuses.

    Raises:
        DatasetError: an episode is longer than ``max_timestep``.
    """

    def __init__(
        self,
        dataset: OfflineDataset,
        normalizer: Normalizer,
        segment_length: int,
        max_timestep: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(dataset, normalizer, segment_length, max_timestep, seed, device)
        self.ep_prob = self.ep_len.clamp(min=segment_length).double()
        self.ep_prob /= self.ep_prob.sum()

    def sample_shard(self, batch_size: int, rank: int, world_size: int) -> tuple[Batch, float]:
        """Rank ``rank``'s shard of the global batch of segments and its share of the real
        steps (as :meth:`WindowSampler.sample_shard`); tensors ``(b, T, ...)`` with ``T`` the
        longest segment of the shard (at most S), padding on the right."""
        s = self.k
        ep = torch.multinomial(self.ep_prob, batch_size, replacement=True,
                               generator=self.generator)
        length = self.ep_len[ep]
        room = torch.clamp(length - s, min=0) + 1  # possible starts
        start = (torch.rand(batch_size, generator=self.generator) * room).long()
        valid = torch.clamp(length - start, max=s)  # real steps in the segment
        lo = batch_size * rank // world_size
        hi = batch_size * (rank + 1) // world_size
        share = 1.0 if world_size == 1 else float(valid[lo:hi].sum()) / float(valid.sum())
        t = int(valid[lo:hi].max())
        dev = self.device
        ep, start, valid = (x[lo:hi].to(dev, non_blocking=True) for x in (ep, start, valid))
        rel = self._offsets[None, :t]
        mask = rel < valid[:, None]
        idx = self.ep_start[ep, None] + start[:, None] + torch.minimum(rel, valid[:, None] - 1)
        return self._gather(idx, mask), share

    def _gather(self, idx: torch.Tensor, mask: torch.Tensor) -> Batch:
        """The ``Batch`` of flat-array rows ``idx`` ``(b, T) int64``, zero where ``mask``
        ``(b, T) bool`` is False."""
        m = mask[..., None]
        return Batch(
            returns_to_go=(self.rtg[idx] * mask)[..., None],
            observations=self._observations(idx) * m,
            actions=self.actions[idx] * (mask if self.discrete else m),
            timesteps=self.timesteps[idx] * mask,
            mask=mask,
            rewards=self.rewards[idx] * mask,
            next_observations=self._observations(idx, True) * m,
            terminals=self.terminals[idx] & mask,
        )
