"""Whether an env fits what a trained network expects: its observation and action spaces.

A network trained on one env's data reads observations of one shape and emits actions of
one kind, shape and range. :func:`require_spaces` compares an env's spaces with the ones a
checkpoint (or a run) was trained with before anything is stepped, and names both when they
differ, instead of a broadcasting error deep inside the first step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from offline_dt.data.layout import is_image, layout_mismatch
from offline_dt.envs.make import env_spaces

#: Slack on Box bounds (float32 rounding of bounds written to JSON).
BOUND_TOLERANCE = 1e-6


class SpaceMismatchError(ValueError):
    """An env's observation or action space differs from the one a network was trained with;
    the message names the env, the source and both spaces."""


def space_mismatch(env_space: gym.Space, trained: gym.Space, kind: str) -> str | None:
    """Why ``env_space`` cannot stand in for ``trained``, or None when it can.

    Both must be Box or both Discrete; a Discrete needs the same ``n`` and ``start``, a Box
    the same shape, and for ``kind == "action"`` the trained bounds must lie inside the env's
    (a policy emits actions in its trained bounds; a dataset's bounds inferred from its
    actions are narrower than the env's). Observation bounds are not compared (a dataset's
    may be inferred from its data). Observations of a Dict or image space are compared leaf
    by leaf (``offline_dt.data.layout.layout_mismatch``: the same keys, kinds and shapes; text
    leaves are ignored).

    Args:
        env_space: the env's space.
        trained: the space the network was trained with.
        kind: ``"observation"`` or ``"action"``, for the message.
    """
    if kind == "observation" and any(isinstance(x, gym.spaces.Dict) or is_image(x)
                                     for x in (env_space, trained)):
        return layout_mismatch(env_space, trained)  # Dict or image: leaf by leaf
    if type(env_space) is not type(trained):
        return (f"its {kind} space is a {type(env_space).__name__}, the trained one a "
                f"{type(trained).__name__}")
    if isinstance(trained, gym.spaces.Discrete):
        if (int(env_space.n), int(env_space.start)) != (int(trained.n), int(trained.start)):
            return (f"its {kind} space has {int(env_space.n)} actions from "
                    f"{int(env_space.start)}, the trained one {int(trained.n)} from "
                    f"{int(trained.start)}")
        return None
    if tuple(env_space.shape) != tuple(trained.shape):
        return (f"its {kind} space has shape {tuple(env_space.shape)}, the trained one "
                f"{tuple(trained.shape)}")
    if kind == "action" and isinstance(trained, gym.spaces.Box):
        inside = (np.all(np.asarray(trained.low, np.float64)
                         >= np.asarray(env_space.low, np.float64) - BOUND_TOLERANCE)
                  and np.all(np.asarray(trained.high, np.float64)
                             <= np.asarray(env_space.high, np.float64) + BOUND_TOLERANCE))
        if not inside:
            return (f"its action bounds [{env_space.low}, {env_space.high}] do not hold the "
                    f"trained ones [{trained.low}, {trained.high}]")
    return None


def require_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space,
                   source: str, *, hint: str = "",
                   env_kwargs: dict[str, Any] | None = None) -> tuple[gym.Space, gym.Space]:
    """Make one ``env_id`` env (``offline_dt.envs.make.make_env``) and check that its spaces fit
    ``observation_space`` and ``action_space`` (:func:`space_mismatch`), the spaces the
    network of ``source`` (e.g. ``"checkpoint runs/x/checkpoint.pt"``) was trained with.

    Returns:
        The env's (observation space, action space).

    Raises:
        SpaceMismatchError: naming ``env_id``, ``source``, what differs and both pairs of
            spaces, followed by ``hint``.
        EnvDependencyError, EnvNotFoundError: the env cannot be made
            (``offline_dt.envs.make``).
    """
    env_obs, env_act = env_spaces(env_id, env_kwargs)
    why = [w for w in (space_mismatch(env_obs, observation_space, "observation"),
                       space_mismatch(env_act, action_space, "action")) if w]
    if why:
        raise SpaceMismatchError(
            f"env_id {env_id!r} does not fit {source}: {'; '.join(why)}. The env's spaces: "
            f"observation {env_obs}, action {env_act}; {source}'s: observation "
            f"{observation_space}, action {action_space}{hint}")
    return env_obs, env_act
