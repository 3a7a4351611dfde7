"""DQN on a causal-transformer Q-network, trained online by ``offline-dt online``: the whole
method in one file (the network, the TD loss, the target network, the exploration schedule,
how it acts, and how its batches are made: :class:`WindowReplaySource`, the replay buffer the
ε-greedy collect fills and the one training loop samples from).

Sources:
- DQN (Mnih et al. 2015, "Human-level control through deep reinforcement learning",
  Algorithm 1): ``y = r + γ (1 - terminated) max_a' Q_target(h', a')``, loss
  ``Huber(Q(h, a) - y)`` (the error clipping of Mnih et al., SB3's ``smooth_l1_loss``), a
  target network copied from the online one every ``target_every`` updates (``tau = 1``) or
  moved toward it by Polyak averaging ``θ' ← τ θ + (1 - τ) θ'`` (``tau < 1``), ε-greedy
  exploration with ε decayed linearly (:func:`linear_epsilon`).
- Double DQN (van Hasselt et al. 2016, eq. 4), option ``double``: the next action is the
  online network's argmax, evaluated by the target network.
- Defaults: CleanRL's ``dqn.py`` (Huang et al. 2022): buffer 10,000 transitions, γ 0.99,
  τ 1.0, target copy every 500 env steps (here ``target_every`` = 50 updates at one update
  per ``train_frequency`` = 10 env steps), ε from 1.0 to 0.05 over half the budget,
  learning starts after 10,000 env steps, Adam lr 2.5e-4, batch 128, one env. CleanRL
  regresses with MSE; the Huber loss here is SB3's and Mnih et al.'s.

Network: the Decision Transformer trunk over the episode's last K ``(r_{t-1}, s_t, a_t)``
(``offline_dt.methods.history``); ``Q(h_t, ·)`` is the trunk's action head (one output per
Discrete action) on the newest state token. The history ``h_{t+1}`` of the next state is the
window shifted by one step, so the replay buffer (:class:`WindowReplaySource`) stores each
transition as one window of K + 1 steps: ``[:K]`` ends at ``s_t``, ``[1:]`` at ``s_{t+1}``
(the true last observation where the episode ended). Box actions are refused.

Hyperparameters: :class:`DQNOptions`, each a typed flag (``--dqn.buffer-size 50000``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods.base import (
    Budget,
    OnlineMethod,
    Run,
    SourceSpec,
    register,
)
from offline_dt.methods.critic import polyak_update
from offline_dt.methods.env_source import WINDOW_FIELDS, EnvSource
from offline_dt.methods.history import (
    Decide,
    HistoryOptions,
    HistoryPolicy,
    load_trunk,
    trunk_timesteps,
)
from offline_dt.nn.config import DTConfig
from offline_dt.nn.transformer import DecisionTransformer


@dataclass(frozen=True)
class DQNOptions(HistoryOptions):
    """DQN's own hyperparameters (``TrainConfig.method_options`` keys; module docstring),
    and ``timesteps`` (:class:`~offline_dt.methods.history.HistoryOptions`).

    Attributes:
        buffer_size: transitions (windows) held; the oldest leave first.
        gamma: discount γ.
        tau: target update rate (1: copy).
        target_every: updates between target updates.
        start_e, end_e: ε at the start and the end of the decay.
        exploration_fraction: the fraction of the env-step budget over which ε decays.
        learning_starts: env steps collected before the first update.
        train_frequency: env steps collected per update.
        n_envs: envs stepped at once in a collect.
        double: Double DQN's target.
        reward_scale: rewards are multiplied by this (reward tokens and TD targets).
    """

    buffer_size: int = 10_000
    gamma: float = 0.99
    tau: float = 1.0
    target_every: int = 50
    start_e: float = 1.0
    end_e: float = 0.05
    exploration_fraction: float = 0.5
    learning_starts: int = 10_000
    train_frequency: int = 10
    n_envs: int = 1
    double: bool = False
    reward_scale: float = 1.0

    def validate(self) -> None:
        for name in ("buffer_size", "target_every", "train_frequency", "n_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"method_options: dqn {name} must be >= 1, found "
                                 f"{getattr(self, name)}")
        if self.learning_starts < 0:
            raise ValueError(f"method_options: dqn learning_starts must be >= 0, found "
                             f"{self.learning_starts}")
        for name in ("gamma", "start_e", "end_e"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"method_options: dqn {name} must be in [0, 1], found "
                                 f"{getattr(self, name)}")
        if not 0.0 < self.tau <= 1.0 or not 0.0 < self.exploration_fraction <= 1.0:
            raise ValueError(f"method_options: dqn tau and exploration_fraction must be in "
                             f"(0, 1], found {self.tau} and {self.exploration_fraction}")
        if not self.reward_scale > 0:
            raise ValueError(f"method_options: dqn reward_scale must be > 0, found "
                             f"{self.reward_scale}")


@dataclass
class DQNBatch(Batch):
    """``B`` transitions as windows of K + 1 steps (the :class:`Batch` fields, ``(B, K + 1)``,
    left-padded): ``[:, :K]`` is the history of ``s_t`` (its last slot holds ``a_t``),
    ``[:, 1:]`` that of ``s_{t+1}``.

    Attributes:
        reward: ``(B,) float32`` ``reward_scale · r_t``.
        terminal: ``(B,) bool`` the step terminated the episode (no bootstrap).
    """

    reward: torch.Tensor | None = None
    terminal: torch.Tensor | None = None


def split_windows(batch: Batch) -> tuple[Batch, Batch]:
    """The ``(B, K)`` histories of ``s_t`` and ``s_{t+1}`` of a ``(B, K + 1)`` batch."""
    cur = Batch(**{n: getattr(batch, n)[:, :-1] for n in WINDOW_FIELDS})
    nxt = Batch(**{n: getattr(batch, n)[:, 1:] for n in WINDOW_FIELDS})
    return cur, nxt


# ---------------------------------------------------------------------------------- network
class DQNNetwork(nn.Module):
    """The DT trunk as Q-network (its action head gives ``Q(h, ·)``), a target copy
    (``requires_grad=False``, always in eval mode) and the update counter (a buffer, so the
    target schedule checkpoints with the network)."""

    def __init__(self, cfg: DTConfig, options: DQNOptions) -> None:
        super().__init__()
        if not cfg.discrete:
            raise ValueError(f"method 'dqn' needs a Discrete action space; this network has "
                             f"{cfg.act_dim} continuous action dimensions (use ppo)")
        self.cfg, self.options = cfg, options
        self.trunk = DecisionTransformer(cfg)
        self.target = copy.deepcopy(self.trunk).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> DQNNetwork:
        super().train(mode)
        self.target.eval()
        return self

    def q_values(self, window: Batch, target: bool = False) -> torch.Tensor:
        """``(B, n_actions) float32`` Q at the last step of ``(B, K)`` windows, from the
        online network or (``target``) the target network."""
        trunk = self.target if target else self.trunk
        ts = trunk_timesteps(window.timesteps, self.options.timesteps)
        h = trunk.token_states(window.returns_to_go, window.observations, window.actions,
                               ts, window.mask)[:, -1, 1].float()
        with torch.autocast(h.device.type, enabled=False):
            return trunk.predict_action(h)

    def forward(self, returns_to_go: torch.Tensor, observations: torch.Tensor,
                actions: torch.Tensor, timesteps: torch.Tensor,
                mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Q-values at every step of the windows (``(B, K, n)``; the last only with
        ``last_only``)."""
        ts = trunk_timesteps(timesteps, self.options.timesteps)
        out = self.trunk.predict_action(self.trunk.token_states(
            returns_to_go, observations, actions, ts, mask)[:, :, 1])
        return out[:, -1:] if last_only else out


# ---------------------------------------------------------------------------------- the math
def td_target(reward: torch.Tensor, terminal: torch.Tensor, next_q_target: torch.Tensor,
              gamma: float, next_q_online: torch.Tensor | None = None) -> torch.Tensor:
    """``y = r + γ (1 - terminal) Q_target(h', a*)``, ``a* = argmax_a Q_target(h', a)`` (DQN)
    or ``argmax_a Q(h', a)`` of the online network when ``next_q_online`` is given (Double
    DQN). ``(B,)`` rewards and terminals, ``(B, n)`` Q-values → ``(B,)``."""
    if next_q_online is None:
        best = next_q_target.max(-1).values
    else:
        best = next_q_target.gather(-1, next_q_online.argmax(-1, keepdim=True)).squeeze(-1)
    return reward + gamma * (1.0 - terminal.float()) * best


def dqn_loss(net: DQNNetwork, batch: DQNBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``Huber(Q(h_t, a_t) - y)`` (mean over the batch) with the target :func:`td_target`;
    logged: ``q_mean`` (of the taken actions) and ``td_target_mean``."""
    cur, nxt = split_windows(batch)
    q = net.q_values(cur).gather(-1, cur.actions[:, -1:]).squeeze(-1)
    with torch.no_grad():
        online = net.q_values(nxt) if net.options.double else None
        y = td_target(batch.reward, batch.terminal, net.q_values(nxt, target=True),
                      net.options.gamma, online)
    loss = F.smooth_l1_loss(q, y)
    return loss, {"q_mean": q.detach().mean(), "td_target_mean": y.mean()}


@torch.no_grad()
def update_target(net: DQNNetwork) -> None:
    """After every update: count it; every ``target_every`` updates move the target network
    ``θ' ← τ θ + (1 - τ) θ'`` (a copy at ``τ = 1``)."""
    net.updates += 1
    if int(net.updates) % net.options.target_every:
        return
    polyak_update(net.target, net.trunk, net.options.tau)


def linear_epsilon(env_steps: int, start: float, end: float, duration: float) -> float:
    """ε after ``env_steps`` env steps: from ``start`` linearly to ``end`` over ``duration``
    steps, then ``end`` (CleanRL's ``linear_schedule``)."""
    if duration <= 0:
        return end
    return start + min(env_steps / duration, 1.0) * (end - start)


def epsilon_greedy_decide(net: DQNNetwork, generator: torch.Generator,
                          epsilon: Callable[[], float]) -> Decide:
    """The collect's :data:`~offline_dt.methods.history.Decide`: per env, a uniform random
    action with probability ``epsilon()``, else the argmax of Q (draws from ``generator``)."""

    def decide(window: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q = net.q_values(window)
        n, actions = q.shape
        explore = torch.rand(n, generator=generator) < epsilon()
        random = torch.randint(actions, (n,), generator=generator)
        return torch.where(explore.to(q.device), random.to(q.device), q.argmax(-1)), {}

    return decide


# ---------------------------------------------------------------------------------- batches
class WindowReplaySource(EnvSource):
    """DQN's batch source: ``collect`` plays ``train_frequency`` env steps with the ε-greedy
    policy before every update (``learning_starts`` before the first) into a FIFO buffer of
    ``buffer_size`` transitions, each a window of K + 1 steps (:class:`DQNBatch`); the loop
    samples batches uniformly from it, with replacement. SB3's ``ReplayBuffer`` stores single
    transitions, but a transformer Q-network needs each transition's history; a window per
    transition (both histories in one, ``[:K]`` and ``[1:]``) keeps sampling one gather.
    Checkpointed: the shared state (``EnvSource``) and the buffer.

    Args:
        spec: the run's facts (``offline_dt.methods.env_source.EnvSource``).
        opts: the run's options.
    """

    def __init__(self, spec: SourceSpec, opts: DQNOptions) -> None:
        self.opts = opts
        super().__init__(spec, opts.n_envs)
        self.buffer: dict[str, torch.Tensor] = {}
        self.pos = self.size = 0

    def epsilon(self) -> float:
        """ε now (:func:`linear_epsilon` over the env steps)."""
        o = self.opts
        steps = self.env_steps if self.stream is None else self.stream.env_steps
        return linear_epsilon(steps, o.start_e, o.end_e, o.exploration_fraction * self.budget)

    def make_policy(self, run: Run) -> HistoryPolicy:
        return run.method.policy(run.net, run.normalizer, None, epsilon=self.epsilon,
                                 generator=self.collect_rng)

    def collect(self, run: Run, step: int) -> None:
        """Before every update with budget left: ``train_frequency`` env steps (up to
        ``learning_starts`` before the first), never past the budget by a vector step."""
        if self.finished(step):
            return
        need = max(self.opts.learning_starts - self.env_steps, self.opts.train_frequency)
        need = min(need, self.budget - self.env_steps)
        for tr in self.play(run, -(-need // self.n_envs)):
            window = self.policy.last[0]
            nxt = self.policy.peek(tr.next_observations)
            rows = {n: torch.cat((getattr(window, n)[:, :1], getattr(nxt, n)), dim=1)
                    for n in WINDOW_FIELDS}
            rows["reward"] = torch.as_tensor(np.asarray(tr.rewards, np.float32)
                                             * self.opts.reward_scale)
            rows["terminal"] = torch.as_tensor(np.asarray(tr.terminated, bool))
            self._add(rows)

    def _add(self, rows: dict[str, torch.Tensor]) -> None:
        """Write ``N`` transitions at the FIFO position (allocating the buffer at first)."""
        cap = self.opts.buffer_size
        if not self.buffer:
            self.buffer = {k: torch.zeros((cap, *v.shape[1:]), dtype=v.dtype,
                                          device=self.device) for k, v in rows.items()}
        n = len(rows["reward"])
        idx = (self.pos + torch.arange(n)) % cap
        for k, v in rows.items():
            self.buffer[k][idx.to(self.device)] = v.to(self.device)
        self.pos = int((self.pos + n) % cap)
        self.size = min(self.size + n, cap)

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[DQNBatch, float]:
        idx = torch.randint(self.size, (batch_size,), generator=self.generator).to(self.device)
        return DQNBatch(**{k: v[idx] for k, v in self.buffer.items()}), 1.0

    def log_values(self) -> dict[str, float]:
        return {**super().log_values(), "epsilon": self.epsilon(),
                "buffer_size": float(self.size)}

    def state_dict(self) -> dict[str, Any]:
        return {**self.base_state(), "buffer": dict(self.buffer), "pos": self.pos,
                "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_base_state(state)
        self.buffer = {k: v.to(self.device) for k, v in state["buffer"].items()}
        self.pos, self.size = int(state["pos"]), int(state["size"])


@register
class DQN(OnlineMethod):
    """DQN on a causal-transformer Q-network (module docstring); trained online by
    ``offline-dt online --method dqn``."""

    name = "dqn"
    options_class = DQNOptions
    description = "DQN on a causal-transformer Q-network, Discrete actions (Mnih et al. 2015)"
    lr_decay = "none"  # CleanRL's dqn.py keeps the learning rate
    grad_clip = 10.0  # SB3's max_grad_norm

    def build(self, cfg: DTConfig, options: Any = None) -> DQNNetwork:
        return DQNNetwork(cfg, self.options(options))

    def check_env(self, env_id: str) -> None:
        """Raises ValueError: ``env_id`` has no Discrete action space (or no env)."""
        try:
            env = gym.make(env_id)
        except Exception as e:  # gymnasium raises several types for unknown ids
            raise ValueError(f"OnlineConfig.env_id {env_id!r}: gym.make failed ({e})") from e
        space = env.action_space
        env.close()
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(f"method 'dqn' needs a Discrete action space; env {env_id} has "
                             f"{space} (use --method ppo for Box actions)")

    def budget(self, options: dict[str, Any], env_steps: int, batch_size: int | None
               ) -> Budget:
        """At most one update per ``train_frequency`` env steps after ``learning_starts``;
        batches of ``batch_size`` transitions (default 128, CleanRL's)."""
        opts = self.options(options)
        after = max(env_steps - opts.learning_starts, 0)
        return Budget(steps=-(-after // opts.train_frequency) + 1, batch_size=batch_size or 128)

    def make_source(self, spec: SourceSpec) -> WindowReplaySource:
        return WindowReplaySource(spec, self.options(spec.config.method_options))

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(batch, DQNBatch):
            raise ValueError("method 'dqn' trains on its replay buffer (WindowReplaySource), "
                             "not on dataset windows; run `offline-dt online --method dqn`")
        return dqn_loss(net, batch)

    def after_step(self, net: nn.Module) -> None:
        update_target(net)

    def warm_start(self, net: nn.Module, payload: dict[str, Any]) -> bool:
        """The pretrained trunk without its action head (a policy's logits are no Q-values):
        the Q head, the optimizer and the schedule are fresh; the target network starts as a
        copy of the result (returns False)."""
        load_trunk(net.trunk, payload["model"], skip=("predict_action",))
        net.target.load_state_dict(net.trunk.state_dict())
        return False

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, epsilon: Callable[[], float] | None = None,
               generator: torch.Generator | None = None, **settings: Any) -> HistoryPolicy:
        """The greedy policy (argmax Q); with ``epsilon`` the collect's ε-greedy policy
        (draws from ``generator``, default seeded 0). The target return is ignored.

        Raises:
            ValueError: ``kv_cache``; unknown settings.
        """
        if kv_cache:
            raise ValueError("dqn acts by recomputing its window; kv_cache is not supported")
        if settings:
            raise ValueError(f"dqn: unknown inference settings {sorted(settings)}; known: "
                             "epsilon, generator")
        if epsilon is None:
            def decide(window: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                return net.q_values(window).argmax(-1), {}
        else:
            decide = epsilon_greedy_decide(net, generator or torch.Generator().manual_seed(0),
                                           epsilon)
        return HistoryPolicy(net, normalizer, net.options.reward_scale, decide)
