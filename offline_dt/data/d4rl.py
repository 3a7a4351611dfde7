"""D4RL-compatible HDF5 files: the one place their key names and dtypes are written.

Layout (Fu et al. 2020, D4RL; readable by the conventions of ``d4rl``'s ``get_dataset`` and
``qlearning_dataset``)::

    observations       (N, obs_dim) float32
    next_observations  (N, obs_dim) float32   (optional in files we did not write)
    actions            (N, act_dim) float32   ((N,) int64 for Discrete)
    rewards            (N,) float32
    terminals          (N,) bool
    timeouts           (N,) bool              (optional in old D4RL files; see below)
    infos/*            (N, ...)               (optional)
    metadata/*         scalars: env_id, level, agent, seed, ref_min_score, ref_max_score, ...

Observations of a Dict space (``offline_dt.data.layout``) are one dataset per leaf, at the
leaf's ``/``-joined path under the groups ``observations/`` and ``next_observations/``
(``observations/image (N, 7, 7, 3) uint8``, ``observations/direction (N,) int64``,
``observations/achieved_goal (N, 2) float32``); an image Box's are one ``(N, H, W, C) uint8``
dataset ``observations``. A flat Box's file is as it always was.

Episodes end after every step with ``terminals | timeouts``. A file without ``timeouts``
(old D4RL releases) gets them recovered by ``read_hdf5``: from breaks in
``next_observations`` when the file holds them, and at the env's time limit as D4RL's
``sequence_dataset`` does when the env is known (so ``next_observations`` that run on across
episode boundaries still split); with neither the read fails naming the missing key.

Before anything is read, every array's declared dtype (real numeric or bool) and shape (row
counts, and the memory it needs) are checked (``offline_dt.data.validate``); h5py's errors on
a truncated or damaged file are translated into :class:`DatasetError` naming the file and key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from offline_dt.data.atomic import atomic_path, check_free_space, check_writable
from offline_dt.data.dataset import OfflineDataset, check_plain_env_id
from offline_dt.data.layout import is_flat_box, observation_nbytes
from offline_dt.data.space_codec import (
    infer_action_space,
    infer_observation_space,
    space_from_json,
    space_to_json,
)
from offline_dt.data.validate import (
    DatasetError,
    check_fits_in_memory,
    check_real_dtype,
    check_row_counts,
    declared_array,
    open_hdf5,
    read_array,
    time_limit,
    warn_long_episodes,
)

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
# Spaces are stored as JSON under these metadata keys so a file round-trips exactly.
_OBS_SPACE_KEY = "observation_space"
_ACT_SPACE_KEY = "action_space"
#: What ``write_hdf5`` writes, in messages.
_WHAT = "HDF5 dataset"
#: Dataset levels, named as D4RL names them (Fu et al. 2020, section 5).
LEVELS = ("random", "medium", "medium-replay", "full-replay", "expert", "medium-expert")


def normalized_score(value: float, ref_min: float | None, ref_max: float | None
                     ) -> float | None:
    """D4RL normalized score ``100 (R - ref_min) / (ref_max - ref_min)`` (D4RL's
    ``get_normalized_score``), or None when a reference score is unknown or they are equal."""
    if ref_min is None or ref_max is None or ref_max == ref_min:
        return None
    return 100.0 * (float(value) - float(ref_min)) / (float(ref_max) - float(ref_min))


def d4rl_filename(env_name: str, level: str, version: int = 0) -> str:
    """D4RL file name, e.g. ``pendulum-medium-replay-v0.hdf5``."""
    return f"{env_name}-{level}-v{version}.hdf5"


def write_hdf5(dataset: OfflineDataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``dataset`` as a D4RL-style HDF5 file, atomically.

    Only a file is ever replaced, and only an HDF5 file (``is_hdf5_file``); the previous file
    stays complete until the new one is. The file is built in memory (:func:`hdf5_image`) and
    written by one plain write, so a full disk raises a clean error: HDF5 crashes the process
    (SIGSEGV in ``File.close``) when its own flush to a full disk fails.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False, or it is a directory or a
            file that is not HDF5 (left untouched).
        offline_dt.data.atomic.DiskFullError: the filesystem has less free space than the
            arrays need, or filled up while writing (no half file is left).
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, ours=is_hdf5_file, what=_WHAT) as tmp:
        check_free_space(path, _data_bytes(dataset), _WHAT)
        tmp.write_bytes(hdf5_image(dataset))
    return path


def check_hdf5_target(path: str | os.PathLike, overwrite: bool = True) -> None:
    """Check, before long work, that ``write_hdf5(..., path, overwrite)`` may write ``path``.

    Raises:
        FileExistsError: as :func:`write_hdf5` would, naming the path.
    """
    check_writable(Path(path), overwrite, _WHAT, ours=is_hdf5_file)


def hdf5_image(dataset: OfflineDataset) -> bytes:
    """The bytes of ``dataset``'s D4RL-style HDF5 file (the module docstring's layout), built
    with h5py's in-memory ``core`` driver: the same bytes h5py writes to a file on disk."""
    with h5py.File("in-memory.hdf5", "w", driver="core", backing_store=False) as f:
        for key in ("observations", "next_observations", "actions", "rewards",
                    "terminals", "timeouts"):
            value = getattr(dataset, key)
            if isinstance(value, dict):  # a Dict space: one dataset per leaf
                for leaf in sorted(value):
                    f.create_dataset(f"{key}/{leaf}", data=value[leaf])
            else:
                f.create_dataset(key, data=value)
        for key, arr in dataset.infos.items():
            f.create_dataset(f"infos/{key}", data=arr)
        meta = f.create_group("metadata")
        for key, value in dataset.metadata.items():
            meta.create_dataset(key, data=_meta_value(value))
        meta.create_dataset(_OBS_SPACE_KEY, data=space_to_json(dataset.observation_space))
        meta.create_dataset(_ACT_SPACE_KEY, data=space_to_json(dataset.action_space))
        f.flush()
        return f.id.get_file_image()


def is_hdf5_file(path: Path) -> bool:
    """An ``ours`` test for HDF5 writers: ``path`` starts with the HDF5 signature."""
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _data_bytes(dataset: OfflineDataset) -> int:
    """Bytes of the arrays a dataset's files hold (a lower bound of their size)."""
    keys = ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    return (sum(observation_nbytes(getattr(dataset, k)) for k in keys)
            + sum(a.nbytes for a in dataset.infos.values()))


def _meta_value(value: Any) -> Any:
    if isinstance(value, str | int | float | bool | np.generic):
        return value
    return json.dumps(value)


def _read_meta(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, ds in group.items():
        if not isinstance(ds, h5py.Dataset) or ds.shape != ():
            continue
        v = ds[()]
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        out[key] = v
    return out


def _file_spaces(raw: Any, src: str, observation_space: gym.Space | None,
                 action_space: gym.Space | None) -> tuple[gym.Space, gym.Space]:
    """The spaces given, else those the file's metadata records (popped from it), else
    inferred from the arrays (observations: an unbounded Box; actions:
    :func:`infer_action_space`)."""
    obs_json = raw.metadata.pop(_OBS_SPACE_KEY, None)
    act_json = raw.metadata.pop(_ACT_SPACE_KEY, None)
    if observation_space is None:
        if obs_json is not None:
            observation_space = space_from_json(obs_json)
        else:
            observation_space = infer_observation_space(raw.arrays["observations"])
    if action_space is None:
        if act_json is not None:
            action_space = space_from_json(act_json)
        else:
            action_space = infer_action_space(raw.arrays["actions"], src)
    return observation_space, action_space


def read_hdf5(
    path: str | os.PathLike,
    observation_space: gym.spaces.Box | None = None,
    action_space: gym.spaces.Box | gym.spaces.Discrete | None = None,
    env_id: str | None = None,
) -> OfflineDataset:
    """Read a D4RL-style HDF5 file (ours or one from D4RL itself).

    Spaces: those given, else the file's metadata, else inferred (:func:`_file_spaces`: float
    actions give a Box spanning the data, integer actions ``Discrete(max + 1)``).

    ``env_id`` (the caller's env, e.g. ``TrainConfig.env_id``; else the file's
    ``metadata/env_id``, which must be a plain id, ``check_plain_env_id``) gives the time limit
    ``gym.spec(env_id).max_episode_steps``: without ``timeouts`` the episode ends are recovered
    with it (``_recover_timeouts``), and episodes longer than it are warned about. A file
    with ``timeouts`` is read exactly as stored.

    Before reading, each array's dtype must be real numeric or bool, its rows must match
    ``rewards`` and all of them must fit in the available memory (``offline_dt.data.validate``).
    ``infos/*`` arrays of another dtype or length are skipped (with a warning for the dtype).

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: the file is not readable HDF5 (truncated, damaged), a required key is
            missing or unreadable, an array holds bytes/strings/objects, arrays disagree in
            length or shape or would not fit in memory, values are not finite, ``timeouts``
            is missing and cannot be recovered, or ``metadata/env_id`` is not a plain id.
            The message names the file and the key.
    """
    path = Path(path)
    src = str(path)
    raw = _read_raw(path)
    meta = raw.metadata
    if "env_id" in meta:
        meta["env_id"] = check_plain_env_id(meta["env_id"], src)
    env_id = env_id or meta.get("env_id")
    if raw.timeouts_missing:
        raw.arrays["timeouts"] = _recover_timeouts(raw, src, env_id)
    rewards = _flat_rewards(raw.arrays["rewards"], src)
    obs = raw.arrays["observations"]
    observation_space, action_space = _file_spaces(raw, src, observation_space, action_space)
    if is_flat_box(observation_space) and (isinstance(obs, dict) or obs.ndim != 2):
        found = f"groups {sorted(obs)}" if isinstance(obs, dict) else f"shape {obs.shape}"
        raise DatasetError(
            f"{src}: key 'observations' must be (N, obs_dim) for the flat Box observation "
            f"space, found {found}")
    ds = OfflineDataset.from_flat(
        observations=obs, actions=raw.arrays["actions"], rewards=rewards,
        terminals=raw.arrays["terminals"], timeouts=raw.arrays["timeouts"],
        next_observations=raw.next_observations, observation_space=observation_space,
        action_space=action_space, metadata=meta, infos=raw.infos, source=src)
    warn_long_episodes(ds.episode_lengths, env_id, src)
    return ds


@dataclass
class _RawHDF5:
    """What an HDF5 file holds, read as is: no casting, no space handling."""

    arrays: dict[str, np.ndarray]  # REQUIRED_KEYS, plus "timeouts" (all False when absent)
    next_observations: np.ndarray | None
    infos: dict[str, np.ndarray]  # infos/* datasets with N rows; others are skipped
    metadata: dict[str, Any]  # scalar metadata/* datasets, including the space JSON
    timeouts_missing: bool = False  # the file has no "timeouts" key


#: Keys ``OfflineDataset.from_flat`` casts to float32 (a copy when stored otherwise).
_FLOAT32_KEYS = ("observations", "next_observations", "actions", "rewards")


def _read_raw(path: Path) -> _RawHDF5:
    """Open ``path``, check every dataset offline-dt uses (dtype, rows, memory), then read them.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: it is not readable HDF5, a required key is missing, or a check fails.
    """
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    src = str(path)
    with open_hdf5(path, src) as f:
        try:
            missing = [k for k in REQUIRED_KEYS if k not in f]
            if missing:
                raise DatasetError(
                    f"{src}: missing key(s) {missing}; a D4RL file needs {list(REQUIRED_KEYS)} "
                    f"(found {sorted(f.keys())})"
                )
            declared = {}
            for k in (*REQUIRED_KEYS, "timeouts", "next_observations"):
                if k in f:
                    declared.update(_declared_leaves(f, k, src))
            n = declared["rewards"].shape[0]
            check_row_counts(src, n, **{k: d for k, d in declared.items() if k != "rewards"})
            infos = _declared_infos(f, n, src)
            # float leaves of observation groups are cast to float32 too
            cast = (*_FLOAT32_KEYS, *(k for k, d in declared.items()
                                      if "/" in k and d.dtype.kind == "f"))
            check_fits_in_memory(
                src, {k: (d.shape, d.dtype) for k, d in {**declared, **infos}.items()}, cast)
            arrays = _grouped({k: read_array(d, src, k) for k, d in declared.items()})
            return _RawHDF5(
                arrays={**{k: arrays[k] for k in REQUIRED_KEYS},
                        "timeouts": arrays.get("timeouts", np.zeros(n, bool))},
                next_observations=arrays.get("next_observations"),
                infos={k[len("infos/"):]: read_array(d, src, k) for k, d in infos.items()},
                metadata=_read_meta(f["metadata"]) if "metadata" in f else {},
                timeouts_missing="timeouts" not in declared,
            )
        except (OSError, RuntimeError, KeyError) as e:  # h5py on a damaged file
            raise DatasetError(f"{src}: cannot be read; the file may be truncated or damaged "
                               f"({type(e).__name__}: {e})") from e


def _declared_leaves(f: h5py.File, key: str, src: str) -> dict[str, h5py.Dataset]:
    """``{key: dataset}``, or for the groups ``observations`` and ``next_observations`` (a
    Dict space's leaves, module docstring) ``{"<key>/<path>": dataset}`` for every dataset
    in them (nested groups give ``/``-joined paths)."""
    obj = None
    if key in ("observations", "next_observations"):
        with contextlib.suppress(KeyError, OSError, RuntimeError):  # declared_array names it
            obj = f[key]
    if not isinstance(obj, h5py.Group):
        return {key: declared_array(f, key, src)}
    found: dict[str, h5py.Dataset] = {}
    obj.visititems(lambda name, o: found.update(
        {f"{key}/{name}": declared_array(obj, name, src, f"{key}/")})
        if isinstance(o, h5py.Dataset) else None)
    if not found:
        raise DatasetError(f"{src}: group '{key}' holds no arrays (a Dict space's "
                           f"observations are one dataset per key under '{key}/')")
    return found


def _grouped(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"observations/image": a, ...}`` → ``{"observations": {"image": a, ...}}``; other keys
    as they are."""
    out: dict[str, Any] = {}
    for key, arr in arrays.items():
        head, _, leaf = key.partition("/")
        if leaf:
            out.setdefault(head, {})[leaf] = arr
        else:
            out[key] = arr
    return out


def _declared_infos(f: h5py.File, n: int, src: str) -> dict[str, h5py.Dataset]:
    """``infos/<key>`` arrays with ``n`` rows of a real dtype, keyed ``infos/<key>``; others are
    skipped (a non-real dtype with a warning: offline-dt carries infos but never uses them)."""
    out: dict[str, h5py.Dataset] = {}
    if "infos" not in f or not isinstance(f["infos"], h5py.Group):
        return out
    for k, ds in f["infos"].items():
        if not isinstance(ds, h5py.Dataset) or ds.shape is None or ds.shape[:1] != (n,):
            continue
        try:
            check_real_dtype(ds.dtype, src, f"infos/{k}")
        except DatasetError as e:
            log.warning("skipping %s", e)
            continue
        out[f"infos/{k}"] = ds
    return out


def _recover_timeouts(raw: _RawHDF5, src: str, env_id: str | None) -> np.ndarray:
    """``(N,) bool`` timeouts of a file without the key, as D4RL's ``sequence_dataset`` would
    find its episode ends.

    1. ``next_observations`` present: an episode ended at row ``t`` (not a terminal) where
       ``next_observations[t] != observations[t + 1]`` (the next row starts a new episode).
    2. ``env_id`` registered here with a time limit ``max_episode_steps``: D4RL's rule for
       files without timeouts, a timeout every ``max_episode_steps`` steps of an episode
       (counted from the last end found so far). D4RL's own loop counts its step counter one
       short after the first episode; this splits every episode at the env's actual
       ``TimeLimit``. With 1 as well, episodes whose ``next_observations`` run on past the
       limit are split there, with a warning.

    Raises:
        DatasetError: neither applies; naming the file and the missing ``timeouts`` key.
    """
    terminals = np.asarray(raw.arrays["terminals"]).astype(bool).reshape(-1)
    n = len(terminals)
    breaks = _observation_breaks(raw.arrays["observations"], raw.next_observations, n)
    if breaks is not None:
        breaks &= ~terminals
    limit = time_limit(env_id)
    if limit is None:
        if breaks is not None:
            return breaks
        why = (f"env {env_id!r} is not registered here or has no time limit" if env_id
               else "no env is named (metadata/env_id)")
        raise DatasetError(
            f"{src}: key 'timeouts' is missing, so the ends of time-limited episodes are "
            f"unknown: the file has no 'next_observations' to find them in and {why}; add a "
            "'timeouts' key (D4RL layout) or name the env (env_id / --env-id)"
        )
    ends = terminals if breaks is None else terminals | breaks
    at_limit = (_steps_since_end(ends) % limit == limit - 1) & ~terminals
    if breaks is None:
        return at_limit
    bounds = np.concatenate([[0], np.flatnonzero(ends[:-1]) + 1, [n]])
    warn_long_episodes(np.diff(bounds), env_id, f"{src} (no 'timeouts'; split at the limit "
                       "as D4RL's sequence_dataset does, since next_observations run on)")
    return breaks | at_limit


def _observation_breaks(obs: Any, nxt: Any, n: int) -> np.ndarray | None:
    """``(N,) bool``: ``next_observations[t] != observations[t + 1]`` (in any leaf of a
    Dict), or None when the file's next observations cannot be compared."""
    if nxt is None or isinstance(obs, dict) != isinstance(nxt, dict):
        return None
    pairs = ([(obs[k], nxt.get(k)) for k in obs] if isinstance(obs, dict)
             else [(obs, nxt)])
    if any(x is None or o.shape != x.shape or len(o) != n or o.ndim < 2 and
           not isinstance(obs, dict) for o, x in pairs):
        return None
    breaks = np.zeros(n, bool)
    for o, x in pairs:
        breaks[:-1] |= (x[:-1] != o[1:]).reshape(n - 1, -1).any(axis=1)
    return breaks


def _steps_since_end(ends: np.ndarray) -> np.ndarray:
    """``(N,) int64`` position of each row in its episode, episodes ending after ``ends``."""
    n = len(ends)
    start = np.zeros(n, np.int64)
    after = np.flatnonzero(ends[:-1]) + 1
    start[after] = after
    return np.arange(n, dtype=np.int64) - np.maximum.accumulate(start)


def _flat_rewards(rewards: np.ndarray, src: str) -> np.ndarray:
    """``(N,)`` rewards from a file's ``(N,)`` or ``(N, 1)`` key 'rewards'."""
    if rewards.ndim == 1:
        return rewards
    column = rewards.reshape(len(rewards), -1)
    if column.shape[1] != 1:
        raise DatasetError(f"{src}: key 'rewards' must be (N,), found {rewards.shape}")
    return column.reshape(-1)
