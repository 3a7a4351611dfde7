"""Observation spaces beyond a flat vector: the leaves of a ``Dict`` (nested; each leaf a
``Box`` or ``Discrete``) and image ``Box`` es, and the one flat vector a network reads.

A flat ``Box`` ``(obs_dim,)`` has no layout (``None``): everything stays as it always was.
Any other supported space has a *layout*, a tuple of :class:`Leaf` in sorted key order:

- ``vector``: a ``Box`` that is not an image, stored ``(N, *shape) float32``;
- ``image``: a 3-d ``uint8`` ``Box`` ``(H, W, C)`` (MiniGrid's ``image``, Atari frames),
  stored ``(N, H, W, C) uint8``, scaled to [0, 1] (divided by 255), never normalised;
- ``discrete``: a ``Discrete(n, start)``, stored ``(N,) int64``.

A leaf that holds text (``Text``, MiniGrid's ``MissionSpace``) is dropped with a logged note:
no encoder reads strings. Any other space (``Tuple``, ``MultiDiscrete``, ``MultiBinary``,
``Graph``, ...) is refused, naming its key.

At rest (a dataset, a sampler's arrays) every leaf keeps its own array and dtype; a nested key
is its path joined by ``/`` (``observations/<key>`` in a D4RL-style HDF5 file). What a network
reads (a batch, an acting policy's context) is the *flat view*: the leaves, in layout order,
each flattened to its ``width`` columns and concatenated, ``(..., obs_dim)`` float32, with
``obs_dim`` the sum of the widths; a Discrete leaf is one column holding its value. The
normaliser is a per-column affine map of that view (``offline_dt.data.windows.Normalizer``),
and the network's observation encoder (``offline_dt.nn.encoders``) splits it back into leaves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from offline_dt.data.validate import DatasetError

log = logging.getLogger(__name__)

#: Leaf kinds, and the dtype each is stored in.
LEAF_DTYPES = {"vector": np.dtype(np.float32), "image": np.dtype(np.uint8),
               "discrete": np.dtype(np.int64)}
#: An image leaf is divided by this (uint8 to [0, 1]).
IMAGE_SCALE = 255.0


@dataclass(frozen=True)
class Leaf:
    """One leaf of an observation space.

    Attributes:
        key: its path in the Dict, joined by ``/`` (``""`` for a top-level image Box).
        kind: ``vector``, ``image`` or ``discrete``.
        shape: the shape of one step's value: the Box's, ``()`` for Discrete.
        n: the number of values of a Discrete leaf (0 otherwise).
        start: the smallest value of a Discrete leaf.
    """

    key: str
    kind: str
    shape: tuple[int, ...]
    n: int = 0
    start: int = 0

    @property
    def width(self) -> int:
        """Columns in the flat view: ``prod(shape)``, 1 for Discrete."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def dtype(self) -> np.dtype:
        return LEAF_DTYPES[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "shape": list(self.shape), "n": self.n,
                "start": self.start}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Leaf:
        return cls(str(d["key"]), str(d["kind"]), tuple(int(x) for x in d["shape"]),
                   int(d.get("n", 0)), int(d.get("start", 0)))


Layout = tuple[Leaf, ...]


def is_flat_box(space: gym.Space) -> bool:
    """A ``Box`` of shape ``(obs_dim,)``: today's observations, no layout."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 1


def is_image(space: gym.Space) -> bool:
    """A 3-d ``uint8`` ``Box`` ``(H, W, C)``."""
    return (isinstance(space, gym.spaces.Box) and len(space.shape) == 3
            and np.dtype(space.dtype) == np.uint8)


def is_text(space: gym.Space) -> bool:
    """A space of strings (``Text``, or one whose samples are ``str``, as MiniGrid's
    ``MissionSpace``)."""
    if isinstance(space, gym.spaces.Text):
        return True
    if isinstance(space, gym.spaces.Box | gym.spaces.Discrete | gym.spaces.Dict):
        return False
    try:
        return isinstance(space.sample(), str)
    except Exception:  # a space whose sample fails is not text  # noqa: BLE001
        return False


def observation_layout(space: gym.Space, src: str = "observation space") -> Layout | None:
    """The layout of ``space`` (module docstring), None for a flat Box.

    Raises:
        DatasetError: ``space`` or one of its leaves is not supported (naming ``src`` and the
            leaf's key, the supported spaces and the one found); a Dict with no usable leaf.
    """
    if is_flat_box(space):
        return None
    if is_image(space):
        return (Leaf("", "image", tuple(int(s) for s in space.shape)),)
    if not isinstance(space, gym.spaces.Dict):
        raise DatasetError(
            f"{src}: observation space must be a flat Box (obs_dim,), an image Box (H, W, C) "
            f"uint8 or a Dict of Box and Discrete leaves, found {space}")
    leaves: list[Leaf] = []
    dropped: list[str] = []
    _collect(space, "", src, leaves, dropped)
    if dropped:
        log.info("%s: dropping observation key(s) %s: text leaves no encoder reads",
                 src, dropped)
    if not leaves:
        raise DatasetError(f"{src}: the Dict observation space has no Box or Discrete leaf "
                          f"(found {space})")
    return tuple(sorted(leaves, key=lambda leaf: leaf.key))


def _collect(space: gym.spaces.Dict, prefix: str, src: str, leaves: list[Leaf],
             dropped: list[str]) -> None:
    for name, sub in space.spaces.items():
        key = f"{prefix}{name}"
        if isinstance(sub, gym.spaces.Dict):
            _collect(sub, f"{key}/", src, leaves, dropped)
        elif is_image(sub):
            leaves.append(Leaf(key, "image", tuple(int(s) for s in sub.shape)))
        elif isinstance(sub, gym.spaces.Box):
            leaves.append(Leaf(key, "vector", tuple(int(s) for s in sub.shape)))
        elif isinstance(sub, gym.spaces.Discrete):
            leaves.append(Leaf(key, "discrete", (), int(sub.n), int(sub.start)))
        elif is_text(sub):
            dropped.append(key)
        else:
            raise DatasetError(
                f"{src}: observation key '{key}' is a {type(sub).__name__} ({sub}); supported "
                "leaves are Box (vector or (H, W, C) uint8 image) and Discrete, and Text "
                "leaves are dropped")


def pruned_space(space: gym.Space) -> gym.Space:
    """``space`` without its text leaves (what a dataset read from a file holds)."""
    if not isinstance(space, gym.spaces.Dict):
        return space
    kept = {k: pruned_space(s) for k, s in space.spaces.items() if not is_text(s)}
    return gym.spaces.Dict(kept)


def layout_width(layout: Layout) -> int:
    """``obs_dim`` of the flat view."""
    return sum(leaf.width for leaf in layout)


def leaf_value(obs: Any, key: str) -> Any:
    """The value of the leaf ``key`` in a (possibly nested) dict of arrays, or in a dict
    keyed by ``/``-joined paths; ``obs`` itself for the key ``""``.

    Raises:
        KeyError: the key is missing.
    """
    if key == "":
        return obs
    if key in obs:
        return obs[key]
    node = obs
    for part in key.split("/"):
        node = node[part]
    return node


def flat_view(obs: Any, layout: Layout | None) -> np.ndarray:
    """``(N, obs_dim) float32``: the flat view of ``N`` raw observations (module docstring).

    Args:
        obs: a flat ``(N, obs_dim)`` array (no layout), or the env's or a dataset's
            observations of a layout: a dict (nested, or keyed by paths) of ``(N, ...)``
            arrays, or an ``(N, H, W, C)`` image array; extra keys (dropped text) are ignored.
        layout: :func:`observation_layout`'s.

    Raises:
        DatasetError: a leaf is missing or has another shape than the layout's.
    """
    if layout is None:
        arr = np.asarray(obs, np.float32)
        return arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    cols = []
    for leaf in layout:
        try:
            value = np.asarray(leaf_value(obs, leaf.key))
        except (KeyError, TypeError, IndexError) as e:
            raise DatasetError(f"observation key '{leaf.key}' is missing (found "
                              f"{sorted(obs) if isinstance(obs, dict) else type(obs)})") from e
        n = value.shape[0] if value.ndim > len(leaf.shape) else 1
        if value.shape[value.ndim - len(leaf.shape):] != leaf.shape:
            raise DatasetError(f"observation key '{leaf.key}' has shape {value.shape}, expected "
                              f"(N, {', '.join(map(str, leaf.shape))}) for its {leaf.kind} leaf")
        cols.append(value.reshape(n, leaf.width).astype(np.float32))
    return np.concatenate(cols, axis=1)


def layout_mismatch(env_space: gym.Space, trained: gym.Space) -> str | None:
    """Why observations of ``env_space`` cannot feed what was trained on ``trained``, or None.

    Both flat Boxes: their shapes must agree. Otherwise their layouts must hold the same
    keys with the same kind and shape (and ``n`` for Discrete); text leaves are ignored.
    """
    try:
        env_layout = observation_layout(env_space, "the env")
        data_layout = observation_layout(trained, "the dataset")
    except DatasetError as e:
        return str(e)
    if env_layout is None or data_layout is None:
        if env_layout is None and data_layout is None:
            if tuple(env_space.shape) != tuple(trained.shape):
                return (f"its observation space has shape {tuple(env_space.shape)}, the "
                        f"trained one {tuple(trained.shape)}")
            return None
        return (f"its observation space is {env_space}, the trained one {trained} (a flat Box "
                "and a Dict or image cannot stand in for each other)")
    env_leaves = {leaf.key: leaf for leaf in env_layout}
    data_leaves = {leaf.key: leaf for leaf in data_layout}
    for key, leaf in env_leaves.items():
        if key not in data_leaves:
            return (f"the env's observation key '{key}' ({leaf.kind} {leaf.shape}) is missing "
                    f"from the trained observations (keys {sorted(data_leaves)})")
    for key, leaf in data_leaves.items():
        if key not in env_leaves:
            return (f"the trained observation key '{key}' is missing from the env's "
                    f"observations (keys {sorted(env_leaves)})")
        if env_leaves[key] != leaf:
            found = env_leaves[key]
            return (f"observation key '{key}': the env's is a {found.kind} leaf of shape "
                    f"{found.shape}{f' n={found.n}' if found.n else ''}, the trained one a "
                    f"{leaf.kind} leaf of shape {leaf.shape}{f' n={leaf.n}' if leaf.n else ''}")
    return None


def layout_to_json(layout: Layout | None) -> list[dict[str, Any]] | None:
    return None if layout is None else [leaf.to_json() for leaf in layout]


def layout_from_json(data: Any) -> Layout | None:
    return None if data is None else tuple(Leaf.from_json(d) for d in data)


def flatten_keys(obs: Any, prefix: str = "") -> Any:
    """A nested dict of arrays keyed by ``/``-joined paths (``{"a": {"b": x}}`` →
    ``{"a/b": x}``); anything but a dict is returned as it is."""
    if not isinstance(obs, dict):
        return obs
    out: dict[str, Any] = {}
    for k, v in obs.items():
        if isinstance(v, dict):
            out.update(flatten_keys(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest_keys(obs: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_keys`: ``{"a/b": x}`` → ``{"a": {"b": x}}``."""
    out: dict[str, Any] = {}
    for key, v in obs.items():
        node = out
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def map_leaves(fn: Any, *observations: Any) -> Any:
    """``fn`` applied leaf by leaf to observations that are all dicts keyed alike (a dict of
    the results), or to the arrays themselves."""
    first = observations[0]
    if isinstance(first, dict):
        return {k: fn(*(o[k] for o in observations)) for k in first}
    return fn(*observations)


def observation_nbytes(observations: Any) -> int:
    """Bytes of an observations array or of all the leaves of a dict of them."""
    if isinstance(observations, dict):
        return sum(int(v.nbytes) for v in observations.values())
    return int(observations.nbytes)
