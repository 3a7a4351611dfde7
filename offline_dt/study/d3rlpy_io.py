"""d3rlpy at arm's length: its import, our dataset as its replay buffer, its networks' weights.

d3rlpy (`github.com/takuseno/d3rlpy <https://github.com/takuseno/d3rlpy>`_, the release
:data:`D3RLPY_VERSION`) trains the reference rows (:mod:`offline_dt.study.reference`). It is
imported only when a reference row is trained (:func:`import_d3rlpy`); without it the error
names the install command (:data:`INSTALL_HINT`).

Data (:func:`to_replay_buffer`): our :class:`~offline_dt.data.dataset.OfflineDataset` becomes a
d3rlpy replay buffer of episodes (the object ``d3rlpy.dataset.MDPDataset`` builds from flat
arrays) with terminals and timeouts kept apart: an episode that ends in ``terminals`` is
terminated (no bootstrap from its last step); one that ends in a timeout, or is cut off, is not,
and its true last next-observation (``next_observations``) is appended so that its last
transition is kept with the right ``s'`` (d3rlpy's flat-array constructor would drop it).
A Dict or image observation is flattened to the flat view every policy acts on
(:func:`offline_dt.data.layout.flat_view`): the leaves in sorted key order (PointMaze:
``achieved_goal`` (2), ``desired_goal`` (2), ``observation`` (4)), each flattened row-major
and concatenated, ``float32``, images as their raw 0-255 values and a Discrete leaf as one
column holding its value; so a reference row trains on the vectors the rollout engine later
gives it (``offline_dt.envs.rollout.policy_observations``).

Weights (:func:`save_weights`, :func:`load_weights`): every network's ``state_dict`` in one
safetensors file, no optimiser state; never a pickle, so d3rlpy's own ``save_model`` is not
used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from offline_dt.data import OfflineDataset
from offline_dt.data.atomic import atomic_path
from offline_dt.data.layout import flat_view

log = logging.getLogger(__name__)

#: The d3rlpy release these rows were written and measured with.
D3RLPY_VERSION = "2.8.1"
#: d3rlpy 2.8 pins gymnasium==1.0.0 but runs on the newer Gymnasium this project needs, so it
#: is installed without its dependencies, after the ``reference`` extra installed them.
INSTALL_HINT = f'pip install -e ".[reference]" && pip install --no-deps d3rlpy=={D3RLPY_VERSION}'


class MissingDependencyError(ImportError):
    """d3rlpy (or one of its dependencies) is not installed; the message says how."""


def import_d3rlpy() -> ModuleType:
    """``import d3rlpy`` (quietly: gym 0.26 prints a deprecation notice on import).

    Raises:
        MissingDependencyError: d3rlpy or a dependency is missing; names :data:`INSTALL_HINT`.
    """
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import d3rlpy
    except ImportError as e:
        raise MissingDependencyError(
            f"the reference rows (iql, mlp-bc, pct-bc) need d3rlpy {D3RLPY_VERSION} "
            f"({e}); install it with: {INSTALL_HINT}") from e
    if d3rlpy.__version__ != D3RLPY_VERSION:
        log.warning("d3rlpy %s found; the reference rows were written for %s",
                    d3rlpy.__version__, D3RLPY_VERSION)
    return d3rlpy


def _episode(ds: OfflineDataset, i: int, d3rlpy: ModuleType) -> Any:
    """Episode ``i`` of ``ds`` as a ``d3rlpy.dataset.Episode`` (see :func:`to_replay_buffer`)."""
    e = ds.episode(i)
    terminated = bool(e["terminals"][-1])
    obs, actions = flat_view(e["observations"], ds.layout), e["actions"]
    rewards = e["rewards"].astype(np.float32)
    if ds.discrete:
        actions = actions.reshape(-1, 1)
    if not terminated:  # bootstrap from the true last next-observation: keep it
        last = flat_view(e["next_observations"], ds.layout)[-1:]
        obs = np.concatenate([obs, last])
        actions = np.concatenate([actions, actions[-1:]])
        rewards = np.concatenate([rewards, np.zeros(1, np.float32)])
    return d3rlpy.dataset.Episode(observations=obs, actions=actions,
                                  rewards=rewards.reshape(-1, 1), terminated=terminated)


def to_replay_buffer(ds: OfflineDataset, episodes: Sequence[int] | None = None) -> Any:
    """``ds`` (or its ``episodes``, by index) as a d3rlpy replay buffer of episodes.

    Each episode keeps its ``T`` transitions: a terminated one (``terminals`` on its last step)
    as ``T`` observations, its last transition terminal (d3rlpy gives it a zero next
    observation and no bootstrap); any other (timeout, cut off) as ``T + 1`` observations, the
    last being its true final ``next_observations`` row, with a placeholder action and a zero
    reward that d3rlpy never samples as a transition (a non-terminated episode of ``T + 1``
    steps has ``T`` transitions there). Observations ``(T or T + 1, obs_dim) float32``, a
    Dict's or image's flat view (module docstring); rewards ``(T, 1) float32``,
    Box actions ``(T, act_dim) float32``, Discrete ``(T, 1) int64``.

    Raises:
        ValueError: ``episodes`` empty or out of range.
    """
    d3rlpy = import_d3rlpy()
    idx = range(ds.num_episodes) if episodes is None else [int(i) for i in episodes]
    if not idx or min(idx) < 0 or max(idx) >= ds.num_episodes:
        raise ValueError(f"episodes: expected indices in [0, {ds.num_episodes}) of "
                         f"{ds.source}, found {list(idx)[:5]}... ({len(idx)})")
    eps = [_episode(ds, i, d3rlpy) for i in idx]
    sig = d3rlpy.dataset.Signature
    act_sig = sig(dtype=[np.dtype(np.int64)], shape=[(1,)]) if ds.discrete else sig(
        dtype=[np.dtype(np.float32)], shape=[(ds.act_dim,)])
    space = d3rlpy.constants.ActionSpace
    return d3rlpy.dataset.ReplayBuffer(
        d3rlpy.dataset.InfiniteBuffer(), episodes=eps,
        observation_signature=sig(dtype=[np.dtype(np.float32)], shape=[(ds.obs_dim,)]),
        action_signature=act_sig, reward_signature=sig(dtype=[np.dtype(np.float32)],
                                                       shape=[(1,)]),
        action_space=space.DISCRETE if ds.discrete else space.CONTINUOUS,
        action_size=ds.act_dim)


def action_bounds(ds: OfflineDataset) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` of the Box action space, the data's min/max where a bound is infinite
    (and ``low + 1`` where the two would meet), ``(act_dim,) float64``."""
    space = ds.action_space
    low = np.where(np.isfinite(space.low), space.low, ds.actions.min(0)).astype(np.float64)
    high = np.where(np.isfinite(space.high), space.high, ds.actions.max(0)).astype(np.float64)
    return low, np.where(high > low, high, low + 1.0)


def _modules(algo: Any) -> dict[str, torch.nn.Module]:
    """The algorithm's networks by name (``algo.impl.modules``, optimisers left out)."""
    mods = algo.impl.modules
    return {f.name: getattr(mods, f.name) for f in dataclasses.fields(mods)
            if isinstance(getattr(mods, f.name), torch.nn.Module)}


def save_weights(algo: Any, path: Path) -> None:
    """Every network's ``state_dict`` as one safetensors file (keys ``<network>.<param>``),
    written atomically."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
               for name, mod in _modules(algo).items() for k, v in mod.state_dict().items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp))


def load_weights(algo: Any, path: Path) -> None:
    """Load :func:`save_weights`'s file into ``algo``'s built networks (strict: every key).

    Raises:
        RuntimeError: the tensors do not fit the networks (torch's message).
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    for name, mod in _modules(algo).items():
        prefix = f"{name}."
        mod.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                             if k.startswith(prefix)}, strict=True)
