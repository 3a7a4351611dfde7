"""Environment checks and helpers shared by the datagen stages."""

from __future__ import annotations

import difflib
import re

import gymnasium as gym
import numpy as np

from offline_dt.data.layout import observation_layout
from offline_dt.data.validate import DatasetError
from offline_dt.envs.make import env_spaces

#: Appended to the refusal of a Dict or image observation space for the SB3 agent.
RECIPE_HINT = ("; datagen generates Dict / image observation envs through a scripted recipe "
               "only (PointMaze_*-v3, MiniGrid-FourRooms-v0: datagen.recipes)")


def env_namespace(env_id: str) -> str:
    """Dataset namespace of a Gymnasium id: ``Pendulum-v1`` → ``pendulum``,
    ``CartPole-v1`` → ``cartpole``, ``ALE/Pong-v5`` → ``ale-pong``.

    The version suffix is dropped and the rest lower-cased, with anything but letters and
    digits turned into ``-`` (Minari namespaces allow ``[a-z0-9-_]``).
    """
    name = re.sub(r"-v\d+$", "", env_id)
    name = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not name:
        raise ValueError(f"env_id: cannot derive a dataset namespace from {env_id!r}")
    return name


def check_env_id(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of ``env_id``.

    Raises:
        ValueError: ``env_id`` is not registered; the message lists a few close registered ids
            (``difflib``) and wraps the ``gymnasium.error`` raised.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id: expected a Gymnasium id like 'Pendulum-v1', found {env_id!r}")
    try:
        return gym.spec(env_id)
    except gym.error.Error as e:
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=5, cutoff=0.5)
        hint = f"; close registered ids: {close}" if close else ""
        raise ValueError(f"env_id: unknown Gymnasium environment {env_id!r}{hint} ({e})") from e


def check_spaces(
    observation_space: gym.Space, action_space: gym.Space, env_id: str = "env"
) -> None:
    """Accept a flat Box observation space and a Box or Discrete action space.

    Raises:
        ValueError: naming the env and the space found (Dict, Tuple, image observations with
            ``ndim > 1``, MultiDiscrete, ...).
    """
    if not isinstance(observation_space, gym.spaces.Box):
        raise ValueError(
            f"env_id {env_id}: observation space must be a flat gymnasium Box, found "
            f"{type(observation_space).__name__} ({observation_space}); Dict/Tuple "
            "observations are unsupported for an SB3 behaviour agent" + RECIPE_HINT
        )
    if len(observation_space.shape) != 1:
        raise ValueError(
            f"env_id {env_id}: observation space must be flat (obs_dim,), found shape "
            f"{observation_space.shape}; image observations (ndim > 1) are unsupported for "
            "an SB3 behaviour agent" + RECIPE_HINT
        )
    check_action_space(action_space, env_id)


def check_action_space(action_space: gym.Space, env_id: str = "env") -> None:
    """Accept a bounded ``(act_dim,)`` Box or a Discrete action space.

    Raises:
        ValueError: naming the env and the space found.
    """
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1:
            raise ValueError(
                f"env_id {env_id}: Box action space must be (act_dim,), found shape "
                f"{action_space.shape}"
            )
        if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            raise ValueError(
                f"env_id {env_id}: Box action space must be bounded, found {action_space}"
            )
    elif not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(
            f"env_id {env_id}: action space must be a Box or Discrete, found "
            f"{type(action_space).__name__} ({action_space})"
        )


def check_env(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Box | gym.spaces.Discrete]:
    """Validate ``env_id`` and its spaces before any work; return (observation, action) spaces.

    Raises:
        ValueError: unknown id or unsupported spaces (see ``check_env_id``/``check_spaces``).
        offline_dt.envs.make.EnvDependencyError: the env needs a package not installed.
    """
    check_env_id(env_id)
    obs_space, act_space = env_spaces(env_id)  # a missing extra: EnvDependencyError
    check_spaces(obs_space, act_space, env_id)
    return obs_space, act_space


def check_recipe_env(env_id: str) -> tuple[gym.Space, gym.Space]:
    """Validate the env of a scripted recipe: any observation space the data layer reads (a
    flat Box, an image Box, a Dict of Box and Discrete leaves, text leaves dropped:
    ``offline_dt.data.layout.observation_layout``) and a Box or Discrete action space;
    return (observation, action) spaces.

    Raises:
        ValueError: unknown id, or a space the data layer cannot hold (naming the key).
        offline_dt.envs.make.EnvDependencyError: the env needs a package not installed.
    """
    check_env_id(env_id)
    obs_space, act_space = env_spaces(env_id)
    try:
        observation_layout(obs_space, f"env_id {env_id}")
    except DatasetError as e:
        raise ValueError(str(e)) from e
    check_action_space(act_space, env_id)
    return obs_space, act_space
