"""Dataset characteristics that predict which offline RL method works on a dataset: Trajectory
Quality (TQ) and State-Action Coverage (SACo) of Schweighofer et al. 2022, "A Dataset
Perspective on Offline Reinforcement Learning" (Section 3; code ml-jku/OfflineRL,
``evaluator.py``).

- **TQ** (:func:`trajectory_quality`): the dataset's mean episode return normalised by the
  random and expert reference returns, ``(mean return - ref_min) / (ref_max - ref_min)``
  (the paper's Eq. for TQ, with D4RL's ``ref_min_score`` / ``ref_max_score``, which our
  generated datasets take from a uniform random policy and the expert agent). 0: random
  quality, 1: expert quality. Behaviour cloning tracks it.
- **SACo** (:func:`state_action_coverage`): the number of unique (state, action) pairs of
  the dataset relative to that of the replay dataset of the same env (our ``full-replay``
  level: every transition of the online agent's training, the paper's reference), after
  each dimension is binned into :data:`BINS` equal-width bins (:func:`state_action_codes`).
  Unconstrained value-based methods need it high.

Binning. Each Box observation and action dimension ``x`` with limits ``[lo, hi]`` becomes bin
``floor(BINS (x - lo) / (hi - lo))``, clipped to ``[0, BINS - 1]`` (so ``hi`` lies in the last
bin; a dimension with ``hi == lo`` is one bin); a Discrete action is its value, unbinned. The
dataset and its reference must share the limits, or the counts are of different grids: by
default they are each dimension's min and max over the union of the datasets compared
(:func:`state_action_limits`); ``offline-dt datasets`` uses the union of every dataset of the
env in the listing (:mod:`offline_dt.data.catalog`). The paper's code bins with
``np.digitize(x, np.linspace(lo, hi, 100))`` (100 edges, so ``hi`` gets an index of its own:
101 indices) and counts with HyperLogLog (1% error); here the grid is exactly 100 bins and the
count exact (``np.unique`` over the bin rows). Only flat Box observations are binned
(Dict and image observations: :class:`CharacteristicsError`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from offline_dt.data.dataset import OfflineDataset

#: Equal-width bins per Box dimension (Schweighofer et al. 2022).
BINS = 100


class CharacteristicsError(ValueError):
    """SACo is not defined for a dataset (its observations are not a flat Box, or the limits
    do not fit its width); the message names the dataset."""


def trajectory_quality(dataset: OfflineDataset, ref_min: float | None = None,
                       ref_max: float | None = None) -> float | None:
    """TQ ``(mean episode return - ref_min) / (ref_max - ref_min)`` (module docstring).

    Args:
        dataset: any dataset with at least one episode.
        ref_min, ref_max: random and expert reference returns; None: the dataset's metadata
            ``ref_min_score`` / ``ref_max_score``.

    Returns:
        TQ as a float (0 random, 1 expert; outside [0, 1] when the data is worse or better),
        or None when a reference is unknown or both are equal.
    """
    lo = dataset.metadata.get("ref_min_score") if ref_min is None else ref_min
    hi = dataset.metadata.get("ref_max_score") if ref_max is None else ref_max
    if lo is None or hi is None or float(hi) == float(lo) or dataset.num_episodes == 0:
        return None
    return (float(dataset.episode_returns.mean()) - float(lo)) / (float(hi) - float(lo))


def _columns(dataset: OfflineDataset) -> tuple[np.ndarray, np.ndarray | None]:
    """(``(N, obs_dim + act_dim)`` float64 Box columns, ``(N,)`` Discrete actions or None).

    Raises:
        CharacteristicsError: the observations are not a flat Box.
    """
    if dataset.layout is not None:
        raise CharacteristicsError(f"{dataset.source}: SACo bins flat Box observations; this "
                                   f"dataset has a {type(dataset.observation_space).__name__} "
                                   f"space with a layout (Dict or image)")
    obs = np.asarray(dataset.observations, np.float64).reshape(dataset.num_transitions, -1)
    if dataset.discrete:
        return obs, np.asarray(dataset.actions, np.int64)
    acts = np.asarray(dataset.actions, np.float64).reshape(dataset.num_transitions, -1)
    return np.concatenate([obs, acts], axis=1), None


def state_action_limits(datasets: Sequence[OfflineDataset]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(lo, hi)``, each ``(D,) float64``: the min and max of every Box
    observation and action column over all of ``datasets`` (which must share the widths).

    Raises:
        CharacteristicsError: a dataset cannot be binned or the widths differ.
        ValueError: ``datasets`` is empty.
    """
    if not datasets:
        raise ValueError("state_action_limits: no datasets")
    los, his = [], []
    for ds in datasets:
        box, _ = _columns(ds)
        if los and box.shape[1] != los[0].shape[0]:
            raise CharacteristicsError(f"{ds.source}: {box.shape[1]} state-action columns, the "
                                       f"others have {los[0].shape[0]}")
        los.append(box.min(axis=0))
        his.append(box.max(axis=0))
    return np.min(los, axis=0), np.max(his, axis=0)


def state_action_codes(dataset: OfflineDataset, lo: np.ndarray, hi: np.ndarray,
                       bins: int = BINS) -> np.ndarray:
    """``(N, D) int64`` bin index of every Box observation and action value (module
    docstring), with a Discrete action's value as the last column.

    Raises:
        CharacteristicsError: the dataset cannot be binned, or ``lo``/``hi`` do not have its
            ``D`` Box columns.
    """
    box, discrete = _columns(dataset)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if lo.shape != (box.shape[1],) or hi.shape != lo.shape:
        raise CharacteristicsError(f"{dataset.source}: limits for {lo.shape} columns, the "
                                   f"dataset has {box.shape[1]} Box state-action columns")
    width = np.where(hi > lo, hi - lo, 1.0)
    codes = np.floor((box - lo) / width * bins).astype(np.int64)
    codes = np.clip(codes, 0, bins - 1)
    if discrete is not None:
        codes = np.concatenate([codes, discrete[:, None]], axis=1)
    return codes


def unique_state_actions(dataset: OfflineDataset, lo: np.ndarray, hi: np.ndarray,
                         bins: int = BINS) -> int:
    """The number of distinct rows of :func:`state_action_codes` (exact)."""
    codes = state_action_codes(dataset, lo, hi, bins)
    return int(np.unique(codes, axis=0).shape[0]) if len(codes) else 0


def state_action_coverage(dataset: OfflineDataset, reference: OfflineDataset,
                          limits: tuple[np.ndarray, np.ndarray] | None = None,
                          bins: int = BINS) -> float:
    """SACo: unique (state, action) bins of ``dataset`` over those of ``reference`` (the
    env's replay dataset), both on one grid: ``limits`` (``(lo, hi)``), default
    :func:`state_action_limits` of the two.

    Raises:
        CharacteristicsError: as :func:`state_action_codes`; ``reference`` has no transitions.
    """
    lo, hi = limits if limits is not None else state_action_limits([dataset, reference])
    ref = unique_state_actions(reference, lo, hi, bins)
    if ref == 0:
        raise CharacteristicsError(f"{reference.source}: the SACo reference has no transitions")
    return unique_state_actions(dataset, lo, hi, bins) / ref
