"""The one place envs are made: :func:`make_env` and :func:`make_vec_env`.

Both call Gymnasium (``gym.make`` / ``gym.make_vec``) and translate what it raises when an
env cannot be made into one clear error:

* an env whose optional dependency is missing (Box2D for ``LunarLanderContinuous-v3``, MuJoCo
  for ``Hopper-v5``, ``gymnasium-robotics`` for ``FetchReach-v4``, ale-py for ``ALE/...``)
  raises :class:`EnvDependencyError` naming the env id and the install command;
* an id Gymnasium does not know (``NameNotFound``, ``NamespaceNotFound``,
  ``VersionNotFound``) raises :class:`EnvNotFoundError` (a ``ValueError``) naming it, with
  Gymnasium's own suggestion.

``offline-dt`` prints either as one line and exits with status 2 (``offline_dt.cli.main``).
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from offline_dt.data.dataset import registered_env_id

#: Install command of each optional Gymnasium dependency (Gymnasium's extras, the robotics
#: package), by the name :func:`missing_extra` gives it.
INSTALL = {
    "box2d": 'pip install swig && pip install "gymnasium[box2d]"',
    "mujoco": 'pip install "gymnasium[mujoco]"',
    "robotics": "pip install gymnasium-robotics",
    "atari": 'pip install "gymnasium[atari]"',
}
#: Env names registered by ``gymnasium_robotics`` (when it is imported), by prefix.
ROBOTICS_PREFIXES = ("Fetch", "HandManipulate", "HandReach", "AdroitHand", "PointMaze",
                     "AntMaze", "FrankaKitchen")


#: Packages that register their envs with Gymnasium when imported, by the envs' name prefixes:
#: a bare id such as ``PointMaze_UMaze-v3`` imports its package first (as
#: ``gymnasium_robotics:PointMaze_UMaze-v3`` would), so every command takes the plain id.
PLUGINS = {"gymnasium_robotics": ROBOTICS_PREFIXES, "minigrid": ("MiniGrid", "BabyAI")}


def ensure_registered(env_id: str) -> None:
    """Import the package of :data:`PLUGINS` that registers ``env_id`` when Gymnasium does not
    know it yet; nothing when it is registered, names its module (``module:Name``) or no
    package is known (a missing package is reported by :func:`make_env`'s error)."""
    if ":" in env_id or env_id in gym.registry:
        return
    name = env_id.split("/")[-1]
    for module, prefixes in PLUGINS.items():
        if name.startswith(prefixes):
            try:
                gym.register_envs(importlib.import_module(module))
            except ImportError:
                pass
            return


def registered_id(env_id: Any, source: str, key: str = "metadata/env_id") -> str:
    """``env_id`` read from a file, plain and registered
    (``offline_dt.data.dataset.registered_env_id``), after :func:`ensure_registered` imported
    its package of :data:`PLUGINS` (a fixed list of packages, never a module a file names).

    Raises:
        offline_dt.data.dataset.DatasetError: as ``registered_env_id``.
    """
    if isinstance(env_id, str) and ":" not in env_id:
        ensure_registered(env_id)
    return registered_env_id(env_id, source, key)


class EnvDependencyError(ImportError):
    """An env cannot be made because an optional package is missing; the message names the
    env id and the command that installs it."""


class EnvNotFoundError(ValueError):
    """Gymnasium has no env registered under the id; the message names it."""


def missing_extra(env_id: str, error: BaseException | None = None) -> str | None:
    """The optional dependency (a key of :data:`INSTALL`) ``env_id`` needs, judged from its
    registered entry point, its name and ``error``'s message; None when none is known."""
    spec = gym.registry.get(env_id)
    entry = spec.entry_point if spec is not None and isinstance(spec.entry_point, str) else ""
    text = f"{entry} {error or ''}".lower()
    name = env_id.split(":")[-1].split("/")[-1]
    if "box2d" in text:
        return "box2d"
    if "mujoco" in text:
        return "mujoco"
    if "gymnasium_robotics" in f"{env_id} {text}" or name.startswith(ROBOTICS_PREFIXES):
        return "robotics"
    if env_id.split(":")[-1].startswith("ALE/") or "ale_py" in text:
        return "atari"
    return None


def _dependency_error(env_id: str, error: BaseException) -> EnvDependencyError:
    extra = missing_extra(env_id, error)
    hint = f"install it with: {INSTALL[extra]}" if extra else "install the package it needs"
    if extra == "robotics":
        name = env_id.split(":")[-1]
        hint += (f", then pass --env-id gymnasium_robotics:{name} so that Gymnasium imports "
                 "the package that registers it")
    return EnvDependencyError(f"env_id {env_id!r}: a package this env needs is not installed; "
                              f"{hint} (gymnasium: {error})")


def _not_found_error(env_id: str, error: BaseException) -> Exception:
    extra = missing_extra(env_id, error)
    if extra in ("robotics", "atari"):
        return _dependency_error(env_id, error)
    return EnvNotFoundError(f"env_id {env_id!r}: no such Gymnasium environment is registered "
                            f"({error}); pass a registered id such as 'Pendulum-v1'")


def _translated(env_id: str, error: BaseException) -> Exception | None:
    """The error to raise instead of ``error`` (raised by Gymnasium making ``env_id``), or
    None to let ``error`` through."""
    if isinstance(error, gym.error.DependencyNotInstalled | ImportError):
        return _dependency_error(env_id, error)
    if isinstance(error, gym.error.UnregisteredEnv):
        return _not_found_error(env_id, error)
    return None


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **kwargs)``, with the errors of a missing dependency or an unknown
    id translated (module docstring).

    Raises:
        EnvDependencyError: an optional package the env needs is not installed; the message
            names the env id and the install command.
        EnvNotFoundError: no env is registered under ``env_id``.
    """
    ensure_registered(env_id)
    try:
        return gym.make(env_id, **kwargs)
    except (gym.error.Error, ImportError) as e:
        translated = _translated(env_id, e)
        if translated is None:
            raise
        raise translated from e


def make_vec_env(env_id: str, num_envs: int, record_stats: bool = False,
                 env_kwargs: dict[str, Any] | None = None) -> gym.vector.VectorEnv:
    """A synchronous vector env of ``num_envs`` copies of ``env_id`` with SAME_STEP autoreset.

    With ``AutoresetMode.SAME_STEP`` a sub-env that ends is reset inside the same ``step``:
    the returned observation is the new episode's first one and the true last observation is
    in ``infos["final_obs"]`` (mask ``infos["_final_obs"]``). With ``record_stats`` the
    ``RecordEpisodeStatistics`` wrapper adds ``infos["episode"]["r"]`` (float64 returns, mask
    ``infos["_episode"]``). ``env_kwargs`` go to ``gym.make`` (e.g. ``max_episode_steps``).

    Raises:
        EnvDependencyError, EnvNotFoundError: as :func:`make_env`.
    """
    ensure_registered(env_id)
    try:
        envs = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
            **(env_kwargs or {}),
        )
    except (gym.error.Error, ImportError) as e:
        translated = _translated(env_id, e)
        if translated is None:
            raise
        raise translated from e
    if record_stats:
        envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    return envs


def env_spaces(env_id: str, env_kwargs: dict[str, Any] | None = None
               ) -> tuple[gym.Space, gym.Space]:
    """(observation space, action space) of one ``env_id`` env, made and closed.

    Raises:
        EnvDependencyError, EnvNotFoundError: as :func:`make_env`.
    """
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()
