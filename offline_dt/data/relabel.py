"""QDT-style relabelling of returns-to-go with learned values (Yamagata et al., ICML 2023).

A Decision Transformer conditions on the return that followed each step in its episode, so it
cannot stitch: on a state from which the data holds a better continuation in *another*
episode, its label is still this episode's return. The Q-learning Decision Transformer (QDT,
Yamagata, Khalil and Santos-Rodriguez, "Q-learning Decision Transformer: Leveraging Dynamic
Programming for Conditional Sequence Modelling in Offline RL", ICML 2023, Algorithm 1) replaces
the return-to-go by a learned value where the value is higher, going backwards through each
episode::

    g_{T-1} = r_{T-1}
    g_t     = r_t + max(g_{t+1}, V(s_{t+1}))          t < T-1

and then trains an ordinary DT on the relabelled returns-to-go ``g``. ``V(s)`` is the learned
value of the learned policy at ``s`` (QDT: CQL; d3rlpy's QDT reproduction also allows IQL,
averaging ``Q(s, a)`` over actions sampled from the policy). As in QDT, a discounted value is
compared with an undiscounted return.

Our loaders compute returns-to-go from ``rewards``, so the relabelled dataset stores
``r'_t = g_t - g_{t+1}`` (``g_T = 0``) in place of the rewards: its returns-to-go are exactly
``g``. Such a file no longer holds the environment's rewards; its metadata says so
(``relabelled``) and it is for training a DT only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from offline_dt.data.dataset import DatasetError, OfflineDataset


def relabelled_returns_to_go(rewards: np.ndarray, next_values: np.ndarray,
                             terminals: np.ndarray) -> np.ndarray:
    """QDT's relabelled returns-to-go of one episode (Algorithm 1, see the module docstring).

    Args:
        rewards: ``(T,)`` rewards ``r_t``.
        next_values: ``(T,)`` learned values ``V(s_{t+1})`` of each step's next observation
            (the last entry is not used: nothing is bootstrapped past the episode's end).
        terminals: ``(T,) bool``; a terminal step takes no value from beyond it.

    Returns:
        ``(T,) float64`` ``g``: ``g_t >= `` the plain return-to-go, equal where no later
        value beats the episode's own continuation.
    """
    n = len(rewards)
    g = np.empty(n, dtype=np.float64)
    g[n - 1] = rewards[n - 1]
    for t in range(n - 2, -1, -1):
        after = g[t + 1] if terminals[t] else max(g[t + 1], float(next_values[t]))
        g[t] = float(rewards[t]) + after
    return g


def qdt_relabel(dataset: OfflineDataset, next_values: np.ndarray,
                about: dict[str, Any] | None = None) -> OfflineDataset:
    """A copy of ``dataset`` whose returns-to-go are QDT's relabelled ones.

    Args:
        dataset: the dataset to relabel (any loader's output).
        next_values: ``(N,) float`` learned values ``V(s_{t+1})`` of every row's
            ``next_observations``, in the dataset's reward units.
        about: facts about the value function (e.g. the critic's run directory), stored in
            the copy's ``metadata["relabelled"]``.

    Returns:
        An :class:`OfflineDataset` with rewards ``r'_t = g_t - g_{t+1}`` (float32), every other
        array shared with ``dataset``.

    Raises:
        DatasetError: ``next_values`` is not ``(N,)`` or holds non-finite values.
    """
    values = np.asarray(next_values, dtype=np.float64)
    if values.shape != (dataset.num_transitions,) or not np.isfinite(values).all():
        raise DatasetError(
            f"{dataset.source}: next_values must be finite with shape "
            f"({dataset.num_transitions},), found shape {values.shape}")
    rewards = np.empty(dataset.num_transitions, dtype=np.float32)
    starts = dataset.episode_starts
    raised = 0
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        g = relabelled_returns_to_go(dataset.rewards[a:b], values[a:b], dataset.terminals[a:b])
        rewards[a:b] = g - np.append(g[1:], 0.0)
        plain = float(dataset.rewards[a:b].astype(np.float64).sum())
        raised += int(g[0] > plain + 1e-6 * max(1.0, abs(plain)))
    metadata = {**dataset.metadata,
                "relabelled": {"rule": "QDT (Yamagata et al. 2023, Algorithm 1): g_t = r_t + "
                               "max(g_{t+1}, V(s_{t+1})); rewards hold g_t - g_{t+1}",
                               "episodes_raised": raised, **(about or {})}}
    return dataclasses.replace(dataset, rewards=rewards, metadata=metadata,
                               source=f"{dataset.source} (QDT-relabelled)")
