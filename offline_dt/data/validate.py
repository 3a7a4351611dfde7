"""What a dataset must be, checked: in memory (:class:`~offline_dt.data.dataset.OfflineDataset`'s
arrays and spaces) and on disk, *before* a reader reads (HDF5 arrays' declared dtype and shape
against the memory there is), and episode lengths against the env's time limit.

Every check raises :class:`DatasetError` with one message naming the file (or argument), the
key, what was expected and what was found; errors of h5py are translated, never shown raw.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

log = logging.getLogger(__name__)

#: numpy dtype kinds a dataset array may hold: bool, signed and unsigned integers, floats.
REAL_KINDS = "biuf"
_KIND_NAMES = {"S": "bytes", "U": "strings", "O": "Python objects (e.g. variable-length "
               "strings)", "V": "compound records", "c": "complex numbers", "M": "datetimes",
               "m": "timedeltas"}


class DatasetError(ValueError):
    """A dataset (file, array or argument) is not what offline-dt expects.

    The message names the source (file, key or argument), what was expected and what was found.
    """


# ---------------------------------------------------------------------- in-memory datasets
def check_dataset(ds: Any) -> None:
    """Check an ``OfflineDataset``: spaces, array shapes and dtypes, finiteness, Discrete action
    range, episode boundaries and ``infos`` lengths, in that order (the first problem found is
    raised).

    Raises:
        DatasetError: naming ``ds.source`` and the offending key.
    """
    src = ds.source
    layout = getattr(ds, "layout", None)
    check_spaces(ds.observation_space, ds.action_space, src, layout is not None)
    if ds.rewards.ndim != 1:
        raise DatasetError(f"{src}: key 'rewards' must be (N,), found shape {ds.rewards.shape}")
    n = ds.rewards.shape[0]
    if layout is not None:
        for key in ("observations", "next_observations"):
            check_leaves(getattr(ds, key), layout, n, src, key)
    expected = expected_layout(n, ds.observation_space, ds.action_space, layout is not None)
    for key, (shape, dtype) in expected.items():
        arr = getattr(ds, key)
        if not isinstance(arr, np.ndarray):
            raise DatasetError(f"{src}: key '{key}' must be a numpy array, found {type(arr)}")
        if arr.shape != shape:
            raise DatasetError(f"{src}: key '{key}' has shape {arr.shape}, expected {shape} "
                               f"(N={n} transitions from 'rewards')")
        if arr.dtype != dtype:
            raise DatasetError(
                f"{src}: key '{key}' has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    _check_finite(ds, n)
    _check_discrete_action_range(ds, n)
    _check_episode_starts(ds.episode_starts, n, src)
    for key, arr in ds.infos.items():
        if arr.shape[:1] != (n,):
            raise DatasetError(f"{src}: key 'infos/{key}' has leading length {arr.shape[:1]}, "
                               f"expected ({n},)")


def _check_finite(ds: Any, n: int) -> None:
    arrays: dict[str, np.ndarray] = {}
    for key in ("observations", "next_observations", "rewards", "actions"):
        arr = getattr(ds, key)
        if isinstance(arr, dict):
            arrays.update({f"{key}/{k}": v for k, v in arr.items()})
        else:
            arrays[key] = arr
    for key, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr.reshape(n, -1)).all(axis=1))[0, 0])
            raise DatasetError(f"{ds.source}: key '{key}' holds NaN or inf (first at row {bad})")


def check_leaves(observations: Any, layout: Any, n: int, src: str, key: str) -> None:
    """The observations of an ``n``-transition dataset with a layout
    (``offline_dt.data.layout``): a dict holding exactly the layout's keys (an ``(N, H, W, C)``
    array for a top-level image Box), each ``(n, *leaf.shape)`` of the leaf's dtype.

    Raises:
        DatasetError: naming ``src``, the key (``observations/<leaf>``), expected and found.
    """
    if len(layout) == 1 and layout[0].key == "":
        arrays = {"": observations}
    elif not isinstance(observations, dict):
        raise DatasetError(f"{src}: key '{key}' must be a dict of arrays for the Dict "
                           f"observation space, found {type(observations).__name__}")
    else:
        arrays = observations
        wanted = [leaf.key for leaf in layout]
        missing = [k for k in wanted if k not in arrays]
        extra = sorted(k for k in arrays if k not in wanted)
        if missing or extra:
            what = (f"key(s) {[f'{key}/{k}' for k in missing]} missing" if missing
                    else f"key(s) {[f'{key}/{k}' for k in extra]} not in the observation space")
            raise DatasetError(f"{src}: {what}; the observation space has keys {wanted}, the "
                               f"data {sorted(arrays)}")
    for leaf in layout:
        arr, name = arrays[leaf.key], f"{key}/{leaf.key}" if leaf.key else key
        if not isinstance(arr, np.ndarray):
            raise DatasetError(f"{src}: key '{name}' must be a numpy array, found {type(arr)}")
        if arr.shape != (n, *leaf.shape):
            raise DatasetError(f"{src}: key '{name}' has shape {arr.shape}, expected "
                               f"{(n, *leaf.shape)} for the {leaf.kind} leaf '{leaf.key}' of "
                               "the observation space")
        if arr.dtype != leaf.dtype:
            raise DatasetError(f"{src}: key '{name}' has dtype {arr.dtype}, expected "
                               f"{leaf.dtype} for a {leaf.kind} leaf")


def _check_discrete_action_range(ds: Any, n: int) -> None:
    space = ds.action_space
    if not isinstance(space, gym.spaces.Discrete) or not n:
        return
    lo, hi = int(ds.actions.min()), int(ds.actions.max())
    if lo < 0 or hi >= space.n:
        raise DatasetError(f"{ds.source}: key 'actions' holds values in [{lo}, {hi}], expected "
                           f"[0, {space.n - 1}] for Discrete({space.n})")


def _check_episode_starts(starts: np.ndarray, n: int, src: str) -> None:
    if (starts.ndim != 1 or starts.shape[0] < 1 or starts[0] != 0 or starts[-1] != n
            or (np.diff(starts) <= 0).any()):
        raise DatasetError(
            f"{src}: episode_starts must rise strictly from 0 to N={n}, found "
            f"{starts[:5]}...{starts[-3:]} (length {starts.shape[0]})"
        )


def check_spaces(observation_space: Any, action_space: Any, src: str,
                 has_layout: bool = False) -> None:
    """A flat Box observation space (any other when ``has_layout``: its layout,
    ``offline_dt.data.layout.observation_layout``, checked it) and a Box or Discrete action
    space.

    Raises:
        DatasetError: naming ``src``, the space expected and the one found.
    """
    if not has_layout and not isinstance(observation_space, gym.spaces.Box):
        raise DatasetError(f"{src}: observation space must be a gymnasium Box or Dict, "
                           f"found {type(observation_space).__name__}")
    if not has_layout and len(observation_space.shape) != 1:
        raise DatasetError(
            f"{src}: observation space must be flat (obs_dim,), an image (H, W, C) uint8 or a "
            f"Dict, found shape {observation_space.shape}")
    if not isinstance(action_space, gym.spaces.Box | gym.spaces.Discrete):
        raise DatasetError(f"{src}: action space must be a Box or Discrete, "
                           f"found {type(action_space).__name__}")


def expected_layout(
    n: int, observation_space: gym.Space, action_space: gym.spaces.Box | gym.spaces.Discrete,
    has_layout: bool = False,
) -> dict[str, tuple[tuple[int, ...], type]]:
    """Key → (shape, dtype) every array of an ``n``-transition dataset must have, in the order
    they are checked; the observations only for a flat Box (``has_layout`` False: the leaves
    of any other are :func:`check_leaves`')."""
    expect: dict[str, tuple[tuple[int, ...], type]] = {}
    if not has_layout:
        obs_dim = observation_space.shape[0]
        expect["observations"] = ((n, obs_dim), np.float32)
        expect["next_observations"] = ((n, obs_dim), np.float32)
    expect.update({
        "rewards": ((n,), np.float32),
        "terminals": ((n,), np.bool_),
        "timeouts": ((n,), np.bool_),
    })
    if isinstance(action_space, gym.spaces.Discrete):
        expect["actions"] = ((n,), np.int64)
    else:
        expect["actions"] = ((n, *action_space.shape), np.float32)
    return expect


def check_row_counts(source: str, n: int, **arrays: Any) -> None:
    """Every array in ``arrays`` (numpy or a declared ``h5py.Dataset``) has ``n`` rows, the
    length of ``rewards``.

    Raises:
        DatasetError: naming ``source``, the key and both row counts.
    """
    for key, arr in arrays.items():
        rows = arr.shape[0] if getattr(arr, "shape", ()) else len(arr)
        if rows != n:
            raise DatasetError(f"{source}: key '{key}' has {rows} rows but 'rewards' has {n}")


def check_real_dtype(dtype: np.dtype, src: str, key: str) -> None:
    """``dtype`` is bool, integer or floating point (what an array of a dataset may hold).

    Raises:
        DatasetError: naming ``src`` and ``key``, e.g. observations stored as bytes or strings
            (which would otherwise fail later as ``could not convert string to float``).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in REAL_KINDS:
        what = _KIND_NAMES.get(dtype.kind, f"dtype kind {dtype.kind!r}")
        raise DatasetError(f"{src}: key '{key}' holds {what} (dtype {dtype}), expected a real "
                           "numeric or bool array (float, int, uint or bool)")


# ---------------------------------------------------------------------- memory before reading
def available_memory() -> int | None:
    """Bytes of memory this process can still allocate: the smaller of the kernel's
    ``MemAvailable`` (``/proc/meminfo``) and the room left under a cgroup memory limit (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``); ``os.sysconf`` free pages where there is no
    ``/proc``; None when nothing tells."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cg = Path("/sys/fs/cgroup")
    for limit, usage in ((cg / "memory.max", cg / "memory.current"),
                         (cg / "memory" / "memory.limit_in_bytes",
                          cg / "memory" / "memory.usage_in_bytes")):
        try:
            room = int(limit.read_text()) - int(usage.read_text())
        except (OSError, ValueError):  # absent, or "max" (no limit)
            continue
        found.append(max(room, 0))
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return min(found)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``32.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` takes in memory."""
    return int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize


def check_fits_in_memory(src: str, declared: dict[str, tuple[tuple[int, ...], np.dtype]],
                         built_float32: tuple[str, ...] = ()) -> int:
    """Refuse to read arrays that cannot fit in memory, before reading them.

    The estimate is a lower bound of the reader's peak: the bytes of every array in
    ``declared`` (key → declared shape and dtype) plus a float32 copy of each key in
    ``built_float32`` whose dtype is not float32 (the cast ``OfflineDataset.from_flat`` makes).

    Returns:
        The estimate in bytes.

    Raises:
        DatasetError: the estimate exceeds :func:`available_memory`; the message names
            ``src``, the largest key with its declared shape and dtype, both sizes.
    """
    need = sum(nbytes(s, d) for s, d in declared.values())
    need += sum(nbytes(declared[k][0], np.float32) for k in built_float32
                if k in declared and np.dtype(declared[k][1]) != np.float32)
    avail = available_memory()
    if avail is not None and need > avail:
        key = max(declared, key=lambda k: nbytes(*declared[k]))
        shape, dtype = declared[key]
        raise DatasetError(
            f"{src}: reading it needs at least {format_bytes(need)} of memory (key '{key}' "
            f"declares shape {tuple(shape)} {np.dtype(dtype)}, {format_bytes(nbytes(shape, dtype))}"
            f"), but {format_bytes(avail)} is available; nothing was read (is the file damaged, "
            "or meant for a larger machine?)")
    return need


# ---------------------------------------------------------------------- HDF5 files on disk
def open_hdf5(path: Path, src: str) -> h5py.File:
    """``h5py.File(path, "r")``, its errors translated (``src`` names the file in messages).

    Raises:
        DatasetError: ``path`` is not a readable HDF5 file (truncated by an interrupted
            download or copy, damaged, or another format).
    """
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{src}: not a readable HDF5 file; it may be truncated (an "
                           f"interrupted download or copy) or damaged ({e})") from e


def declared_array(group: h5py.Group, key: str, src: str, prefix: str = "") -> h5py.Dataset:
    """The HDF5 dataset ``group[key]``, checked (without reading it) to be an array of a real
    dtype (:func:`check_real_dtype`); ``prefix`` is prepended to ``key`` in messages.

    Raises:
        DatasetError: ``key`` is missing, unreadable, a group, or not real numeric / bool.
    """
    name = f"{prefix}{key}"
    try:
        obj = group[key]
    except (KeyError, OSError, RuntimeError) as e:
        raise DatasetError(f"{src}: key '{name}' cannot be opened; the file may be truncated "
                           f"or damaged ({e})") from e
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"{src}: key '{name}' is a {type(obj).__name__}, expected an array "
                           "(nested Dict/Tuple data is unsupported)")
    try:
        dtype = obj.dtype
    except (OSError, RuntimeError, TypeError) as e:
        raise DatasetError(f"{src}: key '{name}' has a type h5py cannot read ({e})") from e
    check_real_dtype(dtype, src, name)
    if obj.shape is None or obj.shape == ():
        raise DatasetError(f"{src}: key '{name}' is a scalar, expected an array with one row per "
                           "step")
    return obj


def read_array(ds: h5py.Dataset, src: str, name: str) -> np.ndarray:
    """All of ``ds`` as a numpy array, read errors translated.

    Raises:
        DatasetError: h5py could not read it (a damaged or truncated file); naming the key.
    """
    try:
        return ds[()]
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise DatasetError(f"{src}: key '{name}' cannot be read; the file may be truncated or "
                           f"damaged ({e})") from e


# ---------------------------------------------------------------------- time limits
def time_limit(env_id: str | None) -> int | None:
    """``max_episode_steps`` of ``env_id`` in this process's Gymnasium registry
    (``gym.spec(env_id).max_episode_steps``), or None (no id, not registered, no limit)."""
    if not env_id:
        return None
    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        return None
    steps = spec.max_episode_steps
    return int(steps) if steps else None


def warn_long_episodes(episode_lengths: np.ndarray, env_id: str | None, src: str) -> int:
    """Log a warning when episodes are longer than ``env_id``'s time limit (the data was not
    collected under that env's ``TimeLimit``, or its episode ends were lost).

    Returns:
        The number of episodes longer than the limit (0 when the limit is unknown).
    """
    limit = time_limit(env_id)
    if limit is None or not len(episode_lengths):
        return 0
    long = int((np.asarray(episode_lengths) > limit).sum())
    if long:
        log.warning("%s: %d episode(s) are longer than %s's time limit of %d steps (longest "
                    "%d): were they collected under another time limit, or were their ends "
                    "lost?", src, long, env_id, limit, int(np.max(episode_lengths)))
    return long
