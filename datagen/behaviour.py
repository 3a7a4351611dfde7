"""Behaviour agents reloaded from their files: no pickle, rebuilt from JSON hyperparameters.

A policy is reloaded by rebuilding the Stable-Baselines3 model with the hyperparameters of
``hyperparams.json`` (:func:`build_model`) and calling ``policy.load_state_dict`` with a
``safetensors`` weights file (:func:`load_behaviour_policy`, a batched callable
:class:`BehaviourPolicy`); the replay buffer is read back as plain arrays (:func:`load_replay`)
and SAC's scaled actions mapped to env units (:func:`unscale_actions`). The files are written
by ``datagen.agents.train_agent``, whose docstring gives the layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file as load_torch

from offline_dt.envs.make import make_env

HYPERPARAMS = "hyperparams.json"
POLICY = "policy.safetensors"
REPLAY = "replay_buffer.safetensors"


def sb3_class(algo: str):
    """The Stable-Baselines3 class of ``algo`` (``"SAC"`` or ``"DQN"``)."""
    from stable_baselines3 import DQN, SAC

    return {"SAC": SAC, "DQN": DQN}[algo]


def inference_keys(algo: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights a policy acts with: SAC's ``actor.*``, DQN's ``q_net.*``."""
    prefix = "actor." if algo == "SAC" else "q_net."
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def build_model(algo: str, env_id: str, kwargs: dict[str, Any], seed: int, device: str,
                for_inference: bool = False):
    """The SB3 ``algo`` model (``"SAC"`` or ``"DQN"``, ``MlpPolicy``) on one ``env_id`` env
    (``offline_dt.envs.make.make_env``) with constructor ``kwargs``; ``for_inference`` keeps
    a one-transition replay buffer.

    Raises:
        offline_dt.envs.make.EnvDependencyError, EnvNotFoundError: the env cannot be made.
    """
    cls = sb3_class(algo)
    kw = dict(kwargs)
    if for_inference:
        kw["buffer_size"] = 1
    env = make_env(env_id)
    return cls("MlpPolicy", env, seed=seed, device=device, verbose=0, **kw)


def load_replay(path: str | Path) -> tuple[dict[str, np.ndarray], int]:
    """Arrays saved by ``datagen.agents.train_agent`` (oldest first) and the env step of row 0."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    return load_np(str(path)), int(meta.get("first_step", 0))


class BehaviourPolicy:
    """A reloaded SB3 policy as a batched callable ``obs (N, obs_dim) float32 → actions``.

    Returns ``(N, act_dim) float32`` within the Box bounds (SB3 ``policy.predict``: the tanh
    output unscaled from [-1, 1]) or ``(N,) int64`` for Discrete. ``deterministic=False``
    samples SAC's Gaussian (torch global RNG; seed it with ``torch.manual_seed``) or acts
    epsilon-greedily for DQN with the zoo ``exploration_final_eps`` (``rng``).
    """

    def __init__(self, model, algo: str, deterministic: bool, eps: float = 0.0,
                 seed: int | None = None, path: Path | None = None) -> None:
        self.model = model
        self.algo = algo
        self.deterministic = deterministic
        self.eps = eps
        self.rng = np.random.default_rng(seed)
        self.path = path
        self.discrete = isinstance(model.action_space, gym.spaces.Discrete)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        act, _ = self.model.policy.predict(obs, deterministic=self.deterministic)
        if self.discrete:
            act = np.asarray(act, dtype=np.int64).reshape(len(obs))
            if not self.deterministic and self.eps > 0:
                explore = self.rng.random(len(obs)) < self.eps
                act[explore] = self.rng.integers(0, self.model.action_space.n, explore.sum())
            return act
        return np.asarray(act, dtype=np.float32).reshape(len(obs), -1)


def load_behaviour_policy(
    path: str | Path,
    env_id: str,
    device: str = "cpu",
    deterministic: bool = True,
    seed: int | None = None,
) -> BehaviourPolicy:
    """Rebuild a behaviour policy from a ``.safetensors`` weights file (no pickle).

    Args:
        path: a checkpoint (``checkpoints/step_*.safetensors``), the final
            ``policy.safetensors``, or the agent directory (→ its ``policy.safetensors``).
            ``hyperparams.json`` is read from the agent directory.
        env_id: the Gymnasium id the agent was trained on (must match hyperparams.json).
        device: torch device for inference ("cpu", "cuda", "auto").
        deterministic: SAC mean action / DQN greedy action (True, the evaluation baseline);
            False for the behaviour distribution used to collect data.

    Returns:
        callable ``obs (N, obs_dim) float32 → (N, act_dim) float32 | (N,) int64``.

    Raises:
        FileNotFoundError: weights or hyperparams.json missing.
        ValueError: ``env_id`` differs from the one the agent was trained on, or the weights
            lack the policy's inference keys.
    """
    path = Path(path)
    if path.is_dir():
        path = path / POLICY
    if not path.is_file():
        raise FileNotFoundError(f"path: behaviour policy weights {path} do not exist")
    agent_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    hp_path = agent_dir / HYPERPARAMS
    if not hp_path.is_file():
        raise FileNotFoundError(f"path: {hp_path} (hyperparameters of {path}) does not exist")
    hp = json.loads(hp_path.read_text())
    if hp["env_id"] != env_id:
        raise ValueError(f"env_id: {path} was trained on {hp['env_id']!r}, not {env_id!r}")
    algo = hp["algo"]
    model = build_model(algo, env_id, hp["kwargs"], hp.get("seed", 0), device,
                         for_inference=True)
    state = load_torch(str(path), device=str(model.device))
    need = inference_keys(algo, model.policy.state_dict())
    missing = sorted(set(need) - set(state))
    if missing:
        raise ValueError(f"path: {path} lacks policy weights {missing[:5]}")
    unexpected = sorted(set(state) - set(model.policy.state_dict()))
    if unexpected:
        raise ValueError(f"path: {path} holds unexpected weights {unexpected[:5]}")
    model.policy.load_state_dict(state, strict=False)
    model.policy.set_training_mode(False)
    eps = float(hp["kwargs"].get("exploration_final_eps", 0.05)) if algo == "DQN" else 0.0
    return BehaviourPolicy(model, algo, deterministic, eps=eps, seed=seed, path=path)


def unscale_actions(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """SB3's ``policy.unscale_action``: ``low + (a + 1) / 2 * (high - low)``, clipped.

    Args:
        actions: ``(N, act_dim)`` in [-1, 1] (SAC replay-buffer actions).

    Returns:
        ``(N, act_dim) float32`` in ``[space.low, space.high]``.
    """
    low = space.low.astype(np.float64)
    high = space.high.astype(np.float64)
    out = low + 0.5 * (actions.astype(np.float64) + 1.0) * (high - low)
    return np.clip(out, low, high).astype(np.float32)
