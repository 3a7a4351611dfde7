"""Gymnasium spaces to and from JSON (how both formats and checkpoints record them), and the
spaces inferred for a file that records none (``offline_dt.data.d4rl.read_hdf5``)."""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np

from offline_dt.data.layout import nest_keys
from offline_dt.data.validate import DatasetError


def space_to_json(space: gym.Space) -> str:
    """Serialise a Box, Discrete or Dict (of those, nested) space to JSON."""
    return json.dumps(_space_object(space))


def _space_object(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "low": space.low.tolist(),
            "high": space.high.tolist(),
            "shape": list(space.shape),
            "dtype": str(space.dtype),
        }
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict",
                "spaces": {k: _space_object(s) for k, s in space.spaces.items()}}
    raise DatasetError(f"unsupported space {space!r}: expected Box, Discrete or Dict")


def space_from_json(text: str) -> gym.Space:
    return _space_from_object(json.loads(text))


def _space_from_object(d: dict[str, Any]) -> gym.Space:
    if d["type"] == "Dict":
        return gym.spaces.Dict({k: _space_from_object(v) for k, v in d["spaces"].items()})
    if d["type"] == "Discrete":
        return gym.spaces.Discrete(d["n"], start=d.get("start", 0))
    dtype = np.dtype(d["dtype"])
    low = np.array(d["low"], dtype=dtype)
    high = np.array(d["high"], dtype=dtype)
    return gym.spaces.Box(low=low, high=high, shape=tuple(d["shape"]), dtype=dtype)


def infer_observation_space(obs: Any) -> gym.Space:
    """The observation space of a file that records none: for groups a Dict of the leaves
    (:func:`infer_leaf`), for an ``(N, H, W, C) uint8`` array an image Box, else an
    unbounded flat Box of the array's width."""
    if isinstance(obs, dict):
        return nested_dict_space({k: infer_leaf(v) for k, v in obs.items()})
    if obs.ndim == 4 and obs.dtype == np.uint8:
        return infer_leaf(obs)
    width = obs.shape[1] if obs.ndim >= 2 else 1
    return gym.spaces.Box(-np.inf, np.inf, (width,), np.float32)


def infer_leaf(arr: np.ndarray) -> gym.Space:
    """uint8 ``(N, H, W, C)``: an image Box; integer ``(N,)``: ``Discrete(max + 1)``; else an
    unbounded float32 Box of the row shape."""
    if arr.ndim == 4 and arr.dtype == np.uint8:
        return gym.spaces.Box(0, 255, arr.shape[1:], np.uint8)
    if arr.ndim == 1 and arr.dtype.kind in "iu":
        return gym.spaces.Discrete(int(arr.max()) + 1 if len(arr) else 1)
    return gym.spaces.Box(-np.inf, np.inf, arr.shape[1:], np.float32)


def nested_dict_space(leaves: dict[str, gym.Space]) -> gym.spaces.Dict:
    """A (nested) Dict space of spaces keyed by ``/``-joined paths."""
    def build(node: dict[str, Any]) -> gym.spaces.Dict:
        return gym.spaces.Dict({k: build(v) if isinstance(v, dict) else v
                                for k, v in node.items()})
    return build(nest_keys(leaves))


def infer_action_space(actions: np.ndarray, src: str) -> gym.Space:
    if actions.dtype.kind in "iu":
        if actions.ndim != 1:
            raise DatasetError(f"{src}: integer key 'actions' must be (N,), found {actions.shape}")
        return gym.spaces.Discrete(int(actions.max()) + 1 if len(actions) else 1)
    if actions.ndim != 2:
        raise DatasetError(f"{src}: key 'actions' must be (N, act_dim), found {actions.shape}")
    bound = max(1.0, float(np.abs(actions).max()) if len(actions) else 1.0)
    return gym.spaces.Box(-bound, bound, (actions.shape[1],), np.float32)
