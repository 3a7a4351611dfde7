"""A suite: several offline datasets of different environments trained on as one set (the
multi-task runs of ``offline_dt.methods.mgdt``, Lee et al. 2022, "Multi-Game Decision
Transformers", and of ``offline_dt.methods.gato``, Reed et al. 2022, "A Generalist Agent").

A suite is named where one dataset is (``TrainConfig.dataset``, ``offline-dt train
--dataset``) by a comma-separated list of datasets, each one as today (a D4RL-style ``.hdf5``
file, a Minari dataset directory or a Minari id): ``--dataset pendulum.hdf5,cartpole.hdf5``.
Each dataset's env is its own ``metadata/env_id`` (or, in the same order, a comma-separated
``--env-id``). A name without a comma is one dataset, exactly as before.

Each env keeps its own :class:`~offline_dt.data.windows.Normalizer` (observation statistics,
returns-to-go scale, action bounds), fitted on its own dataset. :class:`SuiteSampler` draws
every batch as a :class:`SuiteBatch`: first the env of each window by the suite's sampling
rule (:func:`env_weights`), then the windows of each env from its own
:class:`~offline_dt.data.windows.WindowSampler`, all on one generator; observations and Box
actions are zero-padded to the suite's widest (JAT's padded embedding input).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.windows import Normalizer, WindowSampler

#: What separates the datasets of a suite in ``TrainConfig.dataset`` (and their env ids).
SEPARATOR = ","
#: How a suite's batches share their windows among its envs (:func:`env_weights`).
Sampling = Literal["proportional", "balanced", "temperature"]
SAMPLINGS: tuple[str, ...] = typing.get_args(Sampling)


def suite_members(spec: str | None) -> list[str] | None:
    """The datasets (or env ids) of a comma-separated suite ``spec``, blanks around each name
    stripped; None when ``spec`` names one (no comma).

    Raises:
        ValueError: an empty member (``a,,b`` or a trailing comma).
    """
    if not spec or SEPARATOR not in spec:
        return None
    names = [s.strip() for s in spec.split(SEPARATOR)]
    if not all(names):
        raise ValueError(f"TrainConfig.dataset: a suite is a comma-separated list of datasets "
                         f"with none empty, found {spec!r}")
    return names


def env_weights(transitions: Sequence[int], rule: str, temperature: float = 1.0
                ) -> np.ndarray:
    """``(E,) float64`` probability that a window of a batch comes from each env.

    ``proportional``: ``n_i / sum n`` (``n_i`` the env's transitions: every transition of the
    suite equally likely, as one concatenated dataset); ``balanced``: ``1 / E`` (every env
    the same share of the updates); ``temperature``: ``n_i^(1/T) / sum n^(1/T)`` (T = 1
    proportional, T -> inf balanced; the temperature sampling of multilingual translation,
    Arivazhagan et al. 2019, "Massively Multilingual Neural Machine Translation", Sec. 4.2).

    Raises:
        ValueError: an unknown rule, no env, a count below 1, or ``temperature <= 0``.
    """
    n = np.asarray(transitions, np.float64)
    if rule not in SAMPLINGS or n.size == 0 or (n < 1).any() or not temperature > 0:
        raise ValueError(f"suite sampling: rule must be one of {SAMPLINGS} over envs of at "
                         f"least 1 transition with temperature > 0, found {rule!r}, "
                         f"{n.tolist()}, {temperature}")
    if rule == "balanced":
        w = np.ones_like(n)
    elif rule == "proportional":
        w = n
    else:
        w = n ** (1.0 / temperature)
    return w / w.sum()


def normalizer_to_json(norm: Normalizer) -> dict[str, Any]:
    """A normaliser as JSON lists (float32 values, exact through JSON's doubles)."""
    return {k: np.asarray(v).tolist() for k, v in norm.state_dict().items()}


def normalizer_from_json(d: dict[str, Any]) -> Normalizer:
    """Inverse of :func:`normalizer_to_json`."""
    return Normalizer.from_state_dict({k: np.asarray(v) for k, v in d.items()})


@dataclass(frozen=True)
class Suite:
    """The datasets of a multi-task run, each with its env id and normaliser (in the order
    named).

    Attributes:
        datasets: flat Box observations each (checked by the method that trains them).
        env_ids: one per dataset.
        normalizers: one per dataset, fitted on it (a transfer run: the checkpoint's for an
            env it knows).
        network_tasks: the envs of the network this suite trains (``DTConfig.tasks``) when
            the network knows more envs than the suite has datasets: a transfer run
            (``offline_dt.training.transfer``), whose network holds a checkpoint's envs and
            the new ones. None: the suite's own envs (:meth:`own_tasks`).
        indices: with ``network_tasks``, each dataset's env index in it (what a batch's
            ``env`` holds and the network's per-env rows are read with).
    """

    datasets: tuple[OfflineDataset, ...]
    env_ids: tuple[str, ...]
    normalizers: tuple[Normalizer, ...]
    network_tasks: tuple[dict[str, Any], ...] | None = None
    indices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.network_tasks is None) != (self.indices is None) or (
                self.indices is not None and len(self.indices) != len(self.datasets)):
            raise ValueError("Suite: network_tasks and indices go together, one index per "
                             f"dataset; found {self.indices!r} for {len(self.datasets)} "
                             "datasets")

    @property
    def source(self) -> str:
        """The suite in messages: ``suite[a, b]`` of the datasets' sources."""
        return "suite[" + ", ".join(d.source for d in self.datasets) + "]"

    def own_tasks(self) -> list[dict[str, Any]]:
        """The datasets' envs as ``DTConfig.tasks`` holds them: ``env_id``, ``obs_dim``,
        ``act_dim`` (the number of actions for Discrete) and ``discrete`` of each."""
        return [{"env_id": e, "obs_dim": int(d.obs_dim), "act_dim": int(d.act_dim),
                 "discrete": bool(d.discrete)} for d, e in zip(self.datasets, self.env_ids,
                                                                strict=True)]

    def tasks(self) -> list[dict[str, Any]]:
        """The network's envs (``DTConfig.tasks``): ``network_tasks``, else
        :meth:`own_tasks`."""
        if self.network_tasks is not None:
            return [dict(t) for t in self.network_tasks]
        return self.own_tasks()

    def index(self, i: int) -> int:
        """Dataset ``i``'s env index in the network (:meth:`tasks`): ``indices[i]``, else
        ``i``."""
        return int(self.indices[i]) if self.indices is not None else int(i)


def widths(tasks: Sequence[dict[str, Any]]) -> tuple[int, int, int]:
    """(widest observation, widest Box action, most Discrete actions) of ``tasks``
    (``DTConfig.tasks``); a kind no env has counts 1 (so every table has a row)."""
    obs = max(int(t["obs_dim"]) for t in tasks)
    box = max([int(t["act_dim"]) for t in tasks if not t["discrete"]] or [1])
    n = max([int(t["act_dim"]) for t in tasks if t["discrete"]] or [1])
    return obs, box, n


@dataclass
class SuiteBatch:
    """Windows of several envs, ``(B, K, ...)``, rows grouped by env in suite order.

    Attributes:
        observations: ``(B, K, obs_w) float32`` normalised by each env's statistics,
            zero-padded to the widest observation ``obs_w``.
        box_actions: ``(B, K, box_w) float32`` Box actions in [-1, 1], zero-padded to the
            widest ``box_w`` (zero on the rows of Discrete envs).
        discrete_actions: ``(B, K) int64`` Discrete actions (0 on the rows of Box envs).
        returns_to_go: ``(B, K) float32`` R̂ divided by each env's ``rtg_scale``.
        timesteps: ``(B, K) int64``.
        mask: ``(B, K) bool``, False on (left) padding.
        env: ``(B,) int64`` each row's env, its index in the network's envs
            (``Suite.index``: its place in the suite unless it is a transfer run's).
    """

    observations: torch.Tensor
    box_actions: torch.Tensor
    discrete_actions: torch.Tensor
    returns_to_go: torch.Tensor
    timesteps: torch.Tensor
    mask: torch.Tensor
    env: torch.Tensor


class SuiteSampler:
    """Samples :class:`SuiteBatch`es of ``k``-step windows from a :class:`Suite`: the env of
    each of the ``B`` windows drawn with :func:`env_weights`' ``weights`` (a multinomial), then
    each env's windows from its own ``WindowSampler`` (episodes ∝ length, start uniform, left
    padding), every draw on the one CPU ``generator`` (checkpointed by the training loop).

    Raises:
        DatasetError: an episode of a dataset is longer than ``max_timestep``.
        ValueError: ``weights`` is not one probability per env.
    """

    def __init__(self, suite: Suite, k: int, max_timestep: int, weights: np.ndarray,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        if len(weights) != len(suite.datasets):
            raise ValueError(f"suite sampling: {len(weights)} weights for "
                             f"{len(suite.datasets)} envs")
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.weights = torch.as_tensor(np.asarray(weights, np.float64))
        self.samplers = []
        for ds, norm in zip(suite.datasets, suite.normalizers, strict=True):
            s = WindowSampler(ds, norm, k, max_timestep, seed=seed, device=self.device)
            s.generator = self.generator  # one stream of draws for the whole suite
            self.samplers.append(s)
        self.obs_w, self.box_w, _ = widths(suite.tasks())
        self.k = int(k)
        self.indices = [suite.index(i) for i in range(len(suite.datasets))]

    def sample(self, batch_size: int) -> SuiteBatch:
        """Draw ``batch_size`` windows (see the class docstring)."""
        return self.sample_shard(batch_size, 0, 1)[0]

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[SuiteBatch, float]:
        """Rank ``rank``'s rows of the global batch and their share of its real steps (as
        ``WindowSampler.sample_shard``: the whole batch is drawn on every rank)."""
        env = torch.multinomial(self.weights, batch_size, replacement=True,
                                generator=self.generator)
        counts = torch.bincount(env, minlength=len(self.samplers)).tolist()
        parts = [self._env_windows(i, c) for i, c in enumerate(counts) if c]
        batch = SuiteBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in (
            "observations", "box_actions", "discrete_actions", "returns_to_go", "timesteps",
            "mask", "env")))
        if world_size == 1:
            return batch, 1.0
        lo, hi = batch_size * rank // world_size, batch_size * (rank + 1) // world_size
        real = batch.mask.sum(1).float()
        share = float(real[lo:hi].sum() / real.sum())
        return SuiteBatch(*(getattr(batch, f)[lo:hi] for f in (
            "observations", "box_actions", "discrete_actions", "returns_to_go", "timesteps",
            "mask", "env"))), share

    def _env_windows(self, i: int, count: int) -> SuiteBatch:
        """``count`` windows of env ``i``, padded to the suite's widths."""
        b = self.samplers[i].sample(count)
        dev, k = self.device, self.k
        obs = torch.zeros(count, k, self.obs_w, device=dev)
        obs[..., :b.observations.shape[-1]] = b.observations
        box = torch.zeros(count, k, self.box_w, device=dev)
        disc = torch.zeros(count, k, dtype=torch.long, device=dev)
        if self.samplers[i].discrete:
            disc = b.actions.long()
        else:
            box[..., :b.actions.shape[-1]] = b.actions
        return SuiteBatch(obs, box, disc, b.returns_to_go[..., 0], b.timesteps, b.mask,
                          torch.full((count,), self.indices[i], dtype=torch.long, device=dev))
