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

Episodes end after every step with ``terminals | timeouts``. A file without ``timeouts``
(old D4RL releases) gets them recovered by ``read_hdf5``: from breaks in
``next_observations`` when the file holds them, else at the env's time limit as D4RL's
``sequence_dataset`` does, else the read fails naming the missing key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from offline_dt.data.atomic import atomic_path
from offline_dt.data.dataset import DatasetError, OfflineDataset, check_plain_env_id

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
# Spaces are stored as JSON under these metadata keys so a file round-trips exactly.
_OBS_SPACE_KEY = "observation_space"
_ACT_SPACE_KEY = "action_space"
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


def space_to_json(space: gym.Space) -> str:
    """Serialise a Box or Discrete space to JSON."""
    if isinstance(space, gym.spaces.Discrete):
        return json.dumps({"type": "Discrete", "n": int(space.n), "start": int(space.start)})
    if isinstance(space, gym.spaces.Box):
        return json.dumps({
            "type": "Box",
            "low": space.low.tolist(),
            "high": space.high.tolist(),
            "shape": list(space.shape),
            "dtype": str(space.dtype),
        })
    raise DatasetError(f"unsupported space {space!r}: expected Box or Discrete")


def space_from_json(text: str) -> gym.Space:
    d = json.loads(text)
    if d["type"] == "Discrete":
        return gym.spaces.Discrete(d["n"], start=d.get("start", 0))
    dtype = np.dtype(d["dtype"])
    low = np.array(d["low"], dtype=dtype)
    high = np.array(d["high"], dtype=dtype)
    return gym.spaces.Box(low=low, high=high, shape=tuple(d["shape"]), dtype=dtype)


def write_hdf5(dataset: OfflineDataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``dataset`` as a D4RL-style HDF5 file, atomically.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            for key in ("observations", "next_observations", "actions", "rewards",
                        "terminals", "timeouts"):
                f.create_dataset(key, data=getattr(dataset, key))
            for key, arr in dataset.infos.items():
                f.create_dataset(f"infos/{key}", data=arr)
            meta = f.create_group("metadata")
            for key, value in dataset.metadata.items():
                meta.create_dataset(key, data=_meta_value(value))
            meta.create_dataset(_OBS_SPACE_KEY, data=space_to_json(dataset.observation_space))
            meta.create_dataset(_ACT_SPACE_KEY, data=space_to_json(dataset.action_space))
    return path


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


def read_hdf5(
    path: str | os.PathLike,
    observation_space: gym.spaces.Box | None = None,
    action_space: gym.spaces.Box | gym.spaces.Discrete | None = None,
    env_id: str | None = None,
) -> OfflineDataset:
    """Read a D4RL-style HDF5 file (ours or one from D4RL itself).

    Spaces come from the file's metadata when we wrote it; for other files pass them (or an
    env) or they are inferred: float actions give an unbounded-check Box spanning the data
    (D4RL actions lie in [-1, 1]), integer actions give ``Discrete(max + 1)``.

    Without ``timeouts`` the episode ends are recovered (``_recover_timeouts``; the env is
    ``env_id``, else the file's). ``metadata/env_id`` must be a plain id (``check_plain_env_id``).

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: a required key is missing, ``timeouts`` is missing and cannot be
            recovered, arrays disagree in length or shape, values are not finite, or
            ``metadata/env_id`` is not a plain id. The message names the file and the key.
    """
    path = Path(path)
    src = str(path)
    raw = _read_raw(path)
    meta = raw.metadata
    if "env_id" in meta:
        meta["env_id"] = check_plain_env_id(meta["env_id"], src)
    if raw.timeouts_missing:
        raw.arrays["timeouts"] = _recover_timeouts(raw, src, env_id or meta.get("env_id"))
    obs_json = meta.pop(_OBS_SPACE_KEY, None)
    act_json = meta.pop(_ACT_SPACE_KEY, None)
    rewards = _flat_rewards(raw.arrays["rewards"], src)
    obs = raw.arrays["observations"]
    if obs.ndim != 2:
        raise DatasetError(
            f"{src}: key 'observations' must be (N, obs_dim), found shape {obs.shape}"
        )
    if observation_space is None:
        if obs_json is not None:
            observation_space = space_from_json(obs_json)
        else:
            observation_space = gym.spaces.Box(-np.inf, np.inf, (obs.shape[1],), np.float32)
    if action_space is None:
        if act_json is not None:
            action_space = space_from_json(act_json)
        else:
            action_space = _infer_action_space(raw.arrays["actions"], src)
    return OfflineDataset.from_flat(
        observations=obs,
        actions=raw.arrays["actions"],
        rewards=rewards,
        terminals=raw.arrays["terminals"],
        timeouts=raw.arrays["timeouts"],
        next_observations=raw.next_observations,
        observation_space=observation_space,
        action_space=action_space,
        metadata=meta,
        infos=raw.infos,
        source=src,
    )


@dataclass
class _RawHDF5:
    """What an HDF5 file holds, read as is: no casting, no space handling."""

    arrays: dict[str, np.ndarray]  # REQUIRED_KEYS, plus "timeouts" (all False when absent)
    next_observations: np.ndarray | None
    infos: dict[str, np.ndarray]  # infos/* datasets with N rows; others are skipped
    metadata: dict[str, Any]  # scalar metadata/* datasets, including the space JSON
    timeouts_missing: bool = False  # the file has no "timeouts" key


def _read_raw(path: Path) -> _RawHDF5:
    """Open ``path`` and read every dataset offline-dt uses.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: it is not HDF5, or a required key is missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    src = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{src}: not a readable HDF5 file ({e})") from e
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise DatasetError(
                f"{src}: missing key(s) {missing}; a D4RL file needs {list(REQUIRED_KEYS)} "
                f"(found {sorted(f.keys())})"
            )
        arrays = {k: f[k][()] for k in REQUIRED_KEYS}
        n = len(arrays["rewards"])
        arrays["timeouts"] = f["timeouts"][()] if "timeouts" in f else np.zeros(n, bool)
        infos = {}
        if "infos" in f and isinstance(f["infos"], h5py.Group):
            for k, ds in f["infos"].items():
                if isinstance(ds, h5py.Dataset) and ds.shape[:1] == (n,):
                    infos[k] = ds[()]
        return _RawHDF5(
            arrays=arrays,
            next_observations=f["next_observations"][()] if "next_observations" in f else None,
            infos=infos,
            metadata=_read_meta(f["metadata"]) if "metadata" in f else {},
            timeouts_missing="timeouts" not in f,
        )


def _recover_timeouts(raw: _RawHDF5, src: str, env_id: str | None) -> np.ndarray:
    """``(N,) bool`` timeouts of a file without the key, as D4RL's ``sequence_dataset`` would
    find its episode ends.

    1. ``next_observations`` present: an episode ended at row ``t`` (not a terminal) where
       ``next_observations[t] != observations[t + 1]`` (the next row starts a new episode).
    2. else ``env_id`` registered here with a time limit ``max_episode_steps``: D4RL's rule
       for files without timeouts, a timeout every ``max_episode_steps`` steps of an episode
       (counted from the last end). D4RL's own loop counts its step counter one short after
       the first episode; this splits every episode at the env's actual ``TimeLimit``.

    Raises:
        DatasetError: neither applies; naming the file and the missing ``timeouts`` key.
    """
    terminals = np.asarray(raw.arrays["terminals"]).astype(bool).reshape(-1)
    n = len(terminals)
    obs = raw.arrays["observations"]
    nxt = raw.next_observations
    if nxt is not None and nxt.shape == obs.shape and obs.ndim == 2 and len(obs) == n:
        ends = np.zeros(n, bool)
        ends[:-1] = (nxt[:-1] != obs[1:]).any(axis=1)
        return ends & ~terminals
    limit = _time_limit(env_id)
    if limit is None:
        why = (f"env {env_id!r} is not registered here or has no time limit" if env_id
               else "no env is named (metadata/env_id)")
        raise DatasetError(
            f"{src}: key 'timeouts' is missing, so the ends of time-limited episodes are "
            f"unknown: the file has no 'next_observations' to find them in and {why}; add a "
            "'timeouts' key (D4RL layout) or name the env (env_id / --env-id)"
        )
    episode_step = np.empty(n, np.int64)
    start = 0
    for end in [*(np.flatnonzero(terminals) + 1).tolist(), n]:
        episode_step[start:end] = np.arange(end - start)
        start = end
    return ((episode_step % limit) == limit - 1) & ~terminals


def _time_limit(env_id: str | None) -> int | None:
    """``max_episode_steps`` of ``env_id`` in this process's Gymnasium registry, or None
    (no id, not registered, no time limit)."""
    if not env_id:
        return None
    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        return None
    steps = spec.max_episode_steps
    return int(steps) if steps else None


def _flat_rewards(rewards: np.ndarray, src: str) -> np.ndarray:
    """``(N,)`` rewards from a file's ``(N,)`` or ``(N, 1)`` key 'rewards'."""
    if rewards.ndim == 1:
        return rewards
    column = rewards.reshape(len(rewards), -1)
    if column.shape[1] != 1:
        raise DatasetError(f"{src}: key 'rewards' must be (N,), found {rewards.shape}")
    return column.reshape(-1)


def _infer_action_space(actions: np.ndarray, src: str) -> gym.Space:
    if actions.dtype.kind in "iu":
        if actions.ndim != 1:
            raise DatasetError(f"{src}: integer key 'actions' must be (N,), found {actions.shape}")
        return gym.spaces.Discrete(int(actions.max()) + 1 if len(actions) else 1)
    if actions.ndim != 2:
        raise DatasetError(f"{src}: key 'actions' must be (N, act_dim), found {actions.shape}")
    bound = max(1.0, float(np.abs(actions).max()) if len(actions) else 1.0)
    return gym.spaces.Box(-bound, bound, (actions.shape[1],), np.float32)
