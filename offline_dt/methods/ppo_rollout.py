"""How PPO's batches are made (``offline_dt.methods.ppo`` owns this file): the samples of a
rollout (:class:`PPOBatch`), GAE (:func:`gae`) and :class:`RolloutSource`, the batch source
that collects on-policy rollouts through the one rollout engine, bootstraps truncated
episodes from their true last observation and serves the rollout's minibatches to the one
training loop (``offline-dt online --method ppo``).

Sources: GAE(λ), Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation", eq. 16; the rollout, epochs and minibatches as CleanRL's ``ppo.py``
(Huang et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from offline_dt.data.windows import Batch
from offline_dt.methods.base import Run, SourceSpec
from offline_dt.methods.env_source import EnvSource, stack_windows
from offline_dt.methods.history import HistoryPolicy


class RolloutOptions(Protocol):
    """The options a rollout reads (``offline_dt.methods.ppo.PPOOptions`` has them)."""

    n_envs: int
    n_steps: int
    epochs: int
    minibatches: int
    gamma: float
    gae_lambda: float
    reward_scale: float

    @property
    def batch_size(self) -> int: ...

    @property
    def updates_per_rollout(self) -> int: ...

    def clip_at(self, collected: int, budget: int) -> float: ...


@dataclass
class PPOBatch(Batch):
    """A minibatch of PPO samples: ``B`` windows ``(B, K)`` (the :class:`Batch` fields, each
    window ending at the step trained on, left-padded) and per sample:

    Attributes:
        raw_actions: ``(B,) int64`` (Discrete) or ``(B, act_dim) float32`` the unclipped
            Gaussian sample ``u`` (Box): what ``old_log_probs`` is of.
        old_log_probs, old_values, advantages, returns: ``(B,) float32`` from the collect.
        clip: ε for this rollout (``PPOOptions.clip_at``); None: the option's ``clip``.
    """

    raw_actions: torch.Tensor | None = None
    old_log_probs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    clip: float | None = None


def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray,
        terminated: np.ndarray, truncated: np.ndarray, gamma: float, lam: float
        ) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over a rollout.

    Args:
        rewards: ``(T, N)`` r_t (scaled).
        values: ``(T, N)`` V(s_t) at collect time.
        next_values: ``(T, N)`` V of the state after step t: ``values[t + 1]`` inside an
            episode, the value of the true last observation where the step was truncated,
            the next observation's value at ``t = T - 1``; unused (any finite number) where
            the step terminated.
        terminated, truncated: ``(T, N) bool``.
        gamma, lam: γ and λ.

    Returns:
        ``(advantages, returns)``, ``(T, N) float32`` each: ``Â_t = δ_t + γ λ (1 - done_t)
        Â_{t+1}`` with ``δ_t = r_t + γ (1 - terminated_t) next_values_t - V(s_t)`` and
        ``done_t = terminated_t or truncated_t``; returns ``Â_t + V(s_t)``.
    """
    r, v = np.asarray(rewards, np.float64), np.asarray(values, np.float64)
    term = np.asarray(terminated, bool)
    done = term | np.asarray(truncated, bool)
    nv = np.where(term, 0.0, np.asarray(next_values, np.float64))
    adv = np.zeros_like(r)
    last = np.zeros(r.shape[1:], np.float64)
    for t in range(r.shape[0] - 1, -1, -1):
        delta = r[t] + gamma * nv[t] - v[t]
        last = delta + gamma * lam * (~done[t]) * last
        adv[t] = last
    return adv.astype(np.float32), (adv + v).astype(np.float32)


class RolloutSource(EnvSource):
    """PPO's batch source: ``collect`` plays ``n_steps`` steps in each of ``n_envs`` envs
    with the sampling policy, applies GAE (:func:`gae`; a truncated step bootstraps from its
    true last observation's window) and draws ``epochs`` permutations of the ``n_envs ·
    n_steps`` samples; the loop then takes ``epochs · minibatches`` updates on its minibatches
    before the next collect. Checkpointed: the shared state (``EnvSource``), the rollout, the
    permutations and the minibatches served.

    Args:
        spec: the run's facts (``offline_dt.methods.env_source.EnvSource``).
        opts: the run's ``PPOOptions``.

    Raises:
        ValueError: the run's ``batch_size`` is not ``n_envs · n_steps / minibatches``.
    """

    def __init__(self, spec: SourceSpec, opts: RolloutOptions) -> None:
        self.opts = opts
        super().__init__(spec, opts.n_envs)
        if spec.config.batch_size != self.opts.batch_size:
            raise ValueError(f"TrainConfig.batch_size must be n_envs * n_steps / minibatches = "
                             f"{self.opts.batch_size} for ppo, found {spec.config.batch_size}")
        self.rollout: dict[str, torch.Tensor] = {}
        self.perms = torch.zeros(0, dtype=torch.long)
        self.served = 0

    def make_policy(self, run: Run) -> HistoryPolicy:
        return run.method.policy(run.net, run.normalizer, None, sample=True,
                                 generator=self.collect_rng)

    def collect(self, run: Run, step: int) -> None:
        """At a rollout boundary with budget left: collect, GAE, permutations."""
        if step % self.opts.updates_per_rollout or self.finished(step):
            return
        self.rollout = self._rollout(run)
        n = self.opts.n_envs * self.opts.n_steps
        self.perms = torch.stack([torch.randperm(n, generator=self.generator)
                                  for _ in range(self.opts.epochs)])
        self.served = 0

    @torch.no_grad()
    def _values(self, net: torch.nn.Module, observations: np.ndarray) -> np.ndarray:
        """``(N,)`` values of the windows ending at ``observations`` (the policy's peek)."""
        return net.heads(self.policy.peek(observations))[1].float().cpu().numpy()

    def _rollout(self, run: Run) -> dict[str, torch.Tensor]:
        """``n_steps`` steps of ``n_envs`` envs: windows, sampled actions, log-probs, values,
        then GAE's advantages and returns, flattened to ``(n_steps · n_envs, ...)``."""
        t_max, n, scale = self.opts.n_steps, self.opts.n_envs, self.opts.reward_scale
        windows, extras = [], []
        rewards, next_values = np.zeros((t_max, n)), np.zeros((t_max, n))
        terminated, truncated = np.zeros((t_max, n), bool), np.zeros((t_max, n), bool)
        for t, tr in enumerate(self.play(run, t_max)):
            windows.append(self.policy.last[0])
            extras.append(self.policy.last[1])
            rewards[t] = np.asarray(tr.rewards, np.float64) * scale
            terminated[t], truncated[t] = tr.terminated, tr.truncated & ~tr.terminated
            if truncated[t].any():  # bootstrap from the true last observation's window
                next_values[t] = self._values(run.net, tr.next_observations)
        values = torch.stack([e["values"] for e in extras]).float().cpu().numpy()
        last = self._values(run.net, self.stream.observations)
        following = np.concatenate([values[1:], last[None]])
        next_values = np.where(truncated, next_values, following)
        adv, ret = gae(rewards, values, next_values, terminated, truncated,
                       self.opts.gamma, self.opts.gae_lambda)
        out = stack_windows(windows)
        out.update({
            "raw_actions": torch.stack([e["raw_actions"] for e in extras]).flatten(0, 1),
            "old_log_probs": torch.stack([e["log_probs"] for e in extras]).flatten(0, 1),
            "old_values": torch.from_numpy(values.reshape(-1)),
            "advantages": torch.from_numpy(adv.reshape(-1)),
            "returns": torch.from_numpy(ret.reshape(-1))})
        return {k: v.to(self.device) for k, v in out.items()}

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[PPOBatch, float]:
        """The next minibatch of the current rollout (epoch ``served // minibatches``)."""
        epoch, part = divmod(self.served, self.opts.minibatches)
        if epoch >= len(self.perms):
            raise ValueError("RolloutSource: every minibatch of the rollout was served; "
                             "collect must run first (the loop calls it before each update)")
        size = self.opts.batch_size
        idx = self.perms[epoch, part * size:(part + 1) * size].to(self.device)
        self.served += 1
        clip = self.opts.clip_at(self.env_steps, self.budget)
        return PPOBatch(**{k: v[idx] for k, v in self.rollout.items()}, clip=clip), 1.0

    def finished(self, step: int) -> bool:
        return step % self.opts.updates_per_rollout == 0 and super().finished(step)

    def state_dict(self) -> dict[str, Any]:
        return {**self.base_state(), "rollout": dict(self.rollout), "perms": self.perms,
                "served": self.served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_base_state(state)
        self.rollout = {k: v.to(self.device) for k, v in state["rollout"].items()}
        self.perms, self.served = state["perms"], int(state["served"])
