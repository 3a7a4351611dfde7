"""Behaviour agents: train (Stable-Baselines3 SAC / DQN) and checkpoint; reloading and acting
are ``datagen.behaviour``'s.

Nothing here is pickled. Weights are ``safetensors`` files of ``policy.state_dict()``; the
hyperparameters are JSON; a policy is reloaded by rebuilding the SB3 model with the same
hyperparameters and calling ``policy.load_state_dict`` (``datagen.behaviour``). The replay
buffer is saved as plain arrays (``replay_buffer.safetensors``), never with SB3's
``save_replay_buffer``.

Layout of ``agents_dir/<namespace>/seed<k>/``::

    hyperparams.json          algo, SB3 kwargs, env id, seed, training budget
    checkpoints/step_XXXXXXX.safetensors   inference weights every ``checkpoint_every`` steps
                              (SAC: the ``actor.*`` keys; DQN: the ``q_net.*`` keys)
    policy.safetensors        full ``policy.state_dict()`` after training
    replay_buffer.safetensors chronological buffer arrays (actions as SB3 stores them)
    learning_curve.csv / .png env_steps, eval_return_mean, eval_return_std
    COMPLETE.json             written last; a directory without it is restarted clean

Hyperparameters follow rl-baselines3-zoo (``hyperparams/sac.yml`` Pendulum-v1: 20k steps,
lr 1e-3, SB3 defaults otherwise; Hopper: the MuJoCo defaults, 1M steps, learning_starts 10k;
``hyperparams/dqn.yml`` CartPole-v1).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file as save_torch
from tqdm.auto import tqdm

from datagen.behaviour import HYPERPARAMS, POLICY, REPLAY, build_model, inference_keys
from datagen.envs import check_env
from datagen.rollout import policy_returns
from offline_dt.data.atomic import atomic_path

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE.json"

# rl-baselines3-zoo hyperparameters (hyperparams/sac.yml, hyperparams/dqn.yml).
ZOO: dict[str, dict[str, dict[str, Any]]] = {
    "SAC": {
        "Pendulum-v1": {"n_timesteps": 20_000, "learning_rate": 1e-3},
        # The zoo's MuJoCo defaults (Hopper-v3 and kin): 1M steps, 10k random first steps.
        "Hopper-v5": {"n_timesteps": 1_000_000, "learning_starts": 10_000},
        "default": {"n_timesteps": 100_000},
    },
    "DQN": {
        "CartPole-v1": {
            "n_timesteps": 50_000,
            "learning_rate": 2.3e-3,
            "batch_size": 64,
            "buffer_size": 100_000,
            "learning_starts": 1000,
            "gamma": 0.99,
            "target_update_interval": 10,
            "train_freq": 256,
            "gradient_steps": 128,
            "exploration_fraction": 0.16,
            "exploration_final_eps": 0.04,
            "policy_kwargs": {"net_arch": [256, 256]},
        },
        "default": {"n_timesteps": 100_000},
    },
}


def single_thread_torch() -> None:
    """Run torch on one CPU thread: the agents are small MLPs, and with several threads on a
    busy 2-core machine a 256x256 forward pass was ~17x slower (9.6 ms vs 0.55 ms)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def algo_for(action_space: gym.Space) -> str:
    """``"SAC"`` for Box actions, ``"DQN"`` for Discrete."""
    return "DQN" if isinstance(action_space, gym.spaces.Discrete) else "SAC"


def zoo_hyperparams(algo: str, env_id: str) -> tuple[int, dict[str, Any]]:
    """(default training steps, SB3 constructor kwargs) for ``algo`` on ``env_id``."""
    table = ZOO[algo].get(env_id, ZOO[algo]["default"])
    kwargs = {k: v for k, v in table.items() if k != "n_timesteps"}
    return int(table["n_timesteps"]), json.loads(json.dumps(kwargs))


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    with atomic_path(path, overwrite=True) as tmp:
        save_torch(tensors, str(tmp))


@dataclass
class Checkpoint:
    """One learning-curve point: env steps, deterministic eval return, weights file."""

    step: int
    eval_return_mean: float
    eval_return_std: float
    path: Path


@dataclass
class AgentArtifacts:
    """What ``train_agent`` produced (or found complete on disk)."""

    dir: Path
    algo: str
    env_id: str
    seed: int
    total_steps: int
    hyperparams: dict[str, Any]
    checkpoints: list[Checkpoint] = field(default_factory=list)
    train_wall_s: float = 0.0
    reused: bool = False

    @property
    def policy_path(self) -> Path:
        return self.dir / POLICY

    @property
    def replay_path(self) -> Path:
        return self.dir / REPLAY

    @property
    def name(self) -> str:
        return self.algo.lower()


def _agent_config(env_id: str, seed: int, total_steps: int, checkpoint_every: int,
                  eval_episodes: int, algo: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"env_id": env_id, "seed": int(seed), "total_steps": int(total_steps),
            "checkpoint_every": int(checkpoint_every), "eval_episodes": int(eval_episodes),
            "algo": algo, "kwargs": kwargs}


def _write_json(obj: Any, path: Path) -> None:
    """``json.dumps(obj, indent=2)`` to ``path``, atomically."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def _reuse_or_clear(agent_dir: Path, config: dict[str, Any], overwrite: bool
                    ) -> AgentArtifacts | None:
    """The complete agent in ``agent_dir`` if it was trained with ``config``; otherwise None,
    after removing whatever ``agent_dir`` held.

    Raises:
        FileExistsError: a complete agent with another config exists and not ``overwrite``.
    """
    marker = agent_dir / COMPLETE
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("config") == config:
            log.info("agent: reusing complete %s agent in %s", config["algo"], agent_dir)
            return _artifacts_from_marker(agent_dir, done, reused=True)
        if not overwrite:
            raise FileExistsError(
                f"agents_dir: {agent_dir} holds a complete agent trained with a different "
                f"configuration ({done.get('config')}); pass --overwrite (overwrite=True) to "
                "retrain it"
            )
    if agent_dir.exists():
        log.info("agent: removing incomplete or replaced agent dir %s", agent_dir)
        shutil.rmtree(agent_dir)
    return None


def _checkpoint_callback(model, config: dict[str, Any], agent_dir: Path, num_envs: int,
                         checkpoints: list[Checkpoint], bar: tqdm):
    """An SB3 callback that stops at ``total_steps`` and, every ``checkpoint_every`` steps and
    at the end, evaluates the deterministic policy and saves its inference weights."""
    from stable_baselines3.common.callbacks import BaseCallback

    algo, env_id, seed = config["algo"], config["env_id"], config["seed"]
    total_steps, every = config["total_steps"], config["checkpoint_every"]
    # An INFO line about every tenth of the budget (at checkpoints), so a long run shows
    # progress in logs too, not only in a TTY progress bar.
    report_every = max(every, (total_steps // 10) // every * every)
    t0 = time.perf_counter()

    def policy_fn(obs: np.ndarray) -> np.ndarray:
        return model.policy.predict(obs, deterministic=True)[0]

    class _Checkpointer(BaseCallback):
        def _on_step(self) -> bool:
            step = self.num_timesteps
            if step > total_steps:
                # With train_freq > 1 (zoo DQN: 256) SB3 finishes its rollout chunk and would
                # overshoot the budget; SB3 calls on_step before storing the transition, so
                # stopping here keeps exactly total_steps transitions in the buffer.
                return False
            bar.update(1)
            if step % every == 0 or step == total_steps:
                rets = policy_returns(env_id, policy_fn, config["eval_episodes"],
                                      seed=seed + 10_000, num_envs=num_envs)
                path = agent_dir / "checkpoints" / f"step_{step:07d}.safetensors"
                _save_weights(inference_keys(algo, model.policy.state_dict()), path)
                checkpoints.append(Checkpoint(step, float(rets.mean()), float(rets.std()),
                                              path))
                if step % report_every == 0 or step == total_steps:
                    log.info("agent: %s step %d/%d (%.0f%%), eval return %.1f, %.0f s",
                             algo, step, total_steps, 100 * step / total_steps, rets.mean(),
                             time.perf_counter() - t0)
            return True

    return _Checkpointer()


def _learn(config: dict[str, Any], agent_dir: Path, num_envs: int, device: str
           ) -> tuple[Any, list[Checkpoint], float]:
    """Train the SB3 model of ``config`` with checkpoints; return (model, checkpoints, wall
    seconds)."""
    algo, total_steps = config["algo"], config["total_steps"]
    t0 = time.perf_counter()
    log.info("agent: training %s on %s for %d env steps (rl-zoo budget unless agent_steps is "
             "set); a deterministic %d-episode evaluation and a checkpoint every %d steps",
             algo, config["env_id"], total_steps, config["eval_episodes"],
             config["checkpoint_every"])
    model = build_model(algo, config["env_id"], config["kwargs"], config["seed"], device)
    checkpoints: list[Checkpoint] = []
    bar = tqdm(total=total_steps, desc=f"train {algo}", unit="step",
               disable=not sys.stderr.isatty(), leave=False, mininterval=1.0)
    try:
        model.learn(total_timesteps=total_steps, callback=_checkpoint_callback(
            model, config, agent_dir, num_envs, checkpoints, bar))
    finally:
        bar.close()
    return model, checkpoints, time.perf_counter() - t0


def train_agent(
    env_id: str,
    agent_dir: str | Path,
    *,
    seed: int = 0,
    total_steps: int | None = None,
    checkpoint_every: int = 250,
    eval_episodes: int = 10,
    num_envs: int = 10,
    device: str = "auto",
    overwrite: bool = False,
) -> AgentArtifacts:
    """Train the behaviour agent (SAC for Box actions, DQN for Discrete) with checkpoints.

    Every ``checkpoint_every`` env steps (and at the end) the current policy is evaluated
    deterministically on ``eval_episodes`` episodes (``datagen.rollout.policy_returns`` with
    evaluation seed ``seed + 10_000`` each time, at most ``num_envs`` envs at once) and its
    inference weights are saved. Learning curve → ``learning_curve.csv`` and ``.png``. A
    directory holding ``COMPLETE.json`` with the same configuration is reused; one without it
    (interrupted run) is removed and training restarts. Every JSON/CSV/PNG file is written
    atomically, ``COMPLETE.json`` last.

    Args:
        total_steps: env steps; None → the rl-zoo budget (SAC Pendulum-v1: 20_000).
        Sets torch to one CPU thread (``single_thread_torch``).

    Raises:
        ValueError: unknown env, unsupported spaces, non-positive step counts.
        FileExistsError: a complete agent with a different configuration exists and
            ``overwrite`` is False.
    """
    _, act_space = check_env(env_id)
    single_thread_torch()
    algo = algo_for(act_space)
    default_steps, kwargs = zoo_hyperparams(algo, env_id)
    total_steps = default_steps if total_steps is None else int(total_steps)
    for name, v in (("agent_steps", total_steps), ("checkpoint_every", checkpoint_every),
                    ("eval_episodes", eval_episodes)):
        if int(v) <= 0:
            raise ValueError(f"{name}: must be positive, found {v}")
    agent_dir = Path(agent_dir)
    config = _agent_config(env_id, seed, total_steps, checkpoint_every, eval_episodes, algo,
                           kwargs)
    reused = _reuse_or_clear(agent_dir, config, overwrite)
    if reused is not None:
        return reused
    (agent_dir / "checkpoints").mkdir(parents=True)
    _write_json({"algo": algo, "policy": "MlpPolicy", "kwargs": kwargs, "env_id": env_id,
                 "seed": int(seed), "total_steps": total_steps}, agent_dir / HYPERPARAMS)
    model, checkpoints, wall = _learn(config, agent_dir, num_envs, device)
    _save_weights(model.policy.state_dict(), agent_dir / POLICY)
    _save_replay(model, agent_dir / REPLAY, total_steps)
    _write_learning_curve(agent_dir, checkpoints, f"{algo} {env_id} seed {seed}")
    done = {"config": config, "train_wall_s": wall,
            "checkpoints": [[c.step, c.eval_return_mean, c.eval_return_std, c.path.name]
                            for c in checkpoints]}
    _write_json(done, agent_dir / COMPLETE)
    log.info("agent: trained %s on %s for %d steps in %.1f s (final eval return %.1f)",
             algo, env_id, total_steps, wall, checkpoints[-1].eval_return_mean)
    return _artifacts_from_marker(agent_dir, done, reused=False)


def _artifacts_from_marker(agent_dir: Path, done: dict[str, Any], reused: bool
                           ) -> AgentArtifacts:
    cfg = done["config"]
    return AgentArtifacts(
        dir=agent_dir, algo=cfg["algo"], env_id=cfg["env_id"], seed=cfg["seed"],
        total_steps=cfg["total_steps"], hyperparams=cfg["kwargs"],
        checkpoints=[Checkpoint(int(s), float(m), float(sd), agent_dir / "checkpoints" / n)
                     for s, m, sd, n in done["checkpoints"]],
        train_wall_s=float(done.get("train_wall_s", 0.0)), reused=reused,
    )


def _write_learning_curve(agent_dir: Path, checkpoints: list[Checkpoint], title: str) -> None:
    with atomic_path(agent_dir / "learning_curve.csv", overwrite=True) as tmp, \
            open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env_steps", "eval_return_mean", "eval_return_std"])
        for c in checkpoints:
            w.writerow([c.step, f"{c.eval_return_mean:.6g}", f"{c.eval_return_std:.6g}"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([c.step for c in checkpoints])
    mean = np.array([c.eval_return_mean for c in checkpoints])
    std = np.array([c.eval_return_std for c in checkpoints])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, mean, label="deterministic eval return")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(agent_dir / "learning_curve.png", overwrite=True) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- replay buffer
def _save_replay(model, path: Path, total_steps: int) -> None:
    """Save SB3's buffer arrays (``(size, n_envs, ...)``) flattened, oldest first."""
    buf = model.replay_buffer
    size = buf.buffer_size if buf.full else buf.pos
    order = (np.arange(size) + buf.pos) % buf.buffer_size if buf.full else np.arange(size)
    n_envs = buf.n_envs

    def flat(a: np.ndarray) -> np.ndarray:
        # (size, n_envs, ...) → env-major flat rows so each env's stream stays in order.
        a = a[order]
        return np.ascontiguousarray(np.swapaxes(a, 0, 1).reshape(size * n_envs, *a.shape[2:]))

    arrays = {
        "observations": flat(buf.observations).astype(np.float32),
        "next_observations": flat(buf.next_observations).astype(np.float32),
        "actions": flat(buf.actions),
        "rewards": flat(buf.rewards).astype(np.float32),
        "dones": flat(buf.dones).astype(np.float32),
        "timeouts": flat(buf.timeouts).astype(np.float32),
    }
    first_step = int(min(model.num_timesteps, total_steps)) - size * n_envs
    with atomic_path(path, overwrite=True) as tmp:
        save_np(arrays, str(tmp), metadata={"first_step": str(first_step),
                                             "n_envs": str(n_envs)})
