"""PPO on a causal-transformer policy, trained online by ``offline-dt online``: the whole
method in this file and the one it owns, ``offline_dt.methods.ppo_rollout`` (how its batches
are made: the rollout source that collects on-policy rollouts, applies GAE and serves their
minibatches to the one training loop); here the network, the loss and how it acts.

Sources:
- PPO (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7 and 9): the
  clipped surrogate ``L^CLIP = E[min(ρ_t Â_t, clip(ρ_t, 1 - ε, 1 + ε) Â_t)]``,
  ``ρ_t = π_θ(a_t | h_t) / π_old(a_t | h_t)``, plus a value loss and an entropy bonus:
  ``L = -L^CLIP + c_1 L^VF - c_2 H[π_θ]``. The value loss is clipped around the old values
  as in the reference implementations (``max((V - R)², (V_old + clip(V - V_old, ±ε) - R)²) /
  2``, option ``clip_vloss``); advantages are normalised per minibatch.
- GAE(λ) (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
  Advantage Estimation", eq. 16): ``δ_t = r_t + γ (1 - terminated_t) V(s_{t+1}) - V(s_t)``,
  ``Â_t = δ_t + γ λ (1 - done_t) Â_{t+1}``, returns ``Â_t + V(s_t)``. A time-limit
  truncation bootstraps from the value of the episode's true last observation (its own
  window), a termination does not; the rollout's last step bootstraps from the next
  observation's value (``offline_dt.methods.ppo_rollout.gae``).
- Defaults: CleanRL's ``ppo.py`` / ``ppo_continuous_action.py`` (Huang et al. 2022, "CleanRL"):
  ε = 0.2, λ = 0.95, γ = 0.99, ``c_2`` = 0.01 for Discrete and 0 for Box, ``c_1`` = 0.5,
  128 steps per env, 4 epochs of 4 minibatches, clipped value loss, gradient-norm clip 0.5
  (``PPO.grad_clip``), Adam lr 2.5e-4. Here 8 envs
  (CleanRL's ``ppo_atari.py``; its ``ppo.py`` has 4). The learning rate decays linearly to 0
  over the budget as CleanRL's ``anneal_lr`` (``PPO.lr_decay``, ``offline-dt online``'s
  ``lr_decay`` auto; the loop's schedule steps it per update, CleanRL per rollout).

Network: the Decision Transformer trunk over the episode's last K ``(r_{t-1}, s_t, a_t)``
(``offline_dt.methods.history``), a policy head and a value head ``V`` (a linear layer) on the
hidden state of the newest state token. With ``critic separate`` (the default) the value head
reads a second trunk of the same shape (the critic), so the value loss never moves the
policy's features, as CleanRL's ``ppo.py`` and SB3's ``MlpPolicy`` keep actor and critic
apart; ``critic shared`` puts both heads on one trunk (seed 000's single transformer with a
value head; on CartPole-v1 with rl-zoo's settings and the value loss unclipped, one seed's
shared trunk fell to a deterministic policy of return 9.6 at 30k env steps). Discrete
actions: a categorical over the trunk's action logits. Box actions: a plain diagonal
Gaussian in model units ``[-1, 1]`` (CleanRL's ``ppo_continuous_action``: mean from the
trunk's action head, no tanh; a state-independent learned ``log σ``); the sample ``u`` is
what the log-probability is of, and the env gets ``clip(u, -1, 1)`` scaled to its bounds
(the window holds the clipped action). Acting for evaluation is deterministic: the argmax,
or ``clip(μ, -1, 1)``.

Hyperparameters: :class:`PPOOptions`, each a typed flag (``--ppo.clip 0.2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods.base import (
    Budget,
    OnlineMethod,
    SourceSpec,
    register,
)
from offline_dt.methods.history import (
    Decide,
    HistoryOptions,
    HistoryPolicy,
    load_trunk,
    trunk_timesteps,
)
from offline_dt.methods.ppo_rollout import PPOBatch, RolloutSource
from offline_dt.nn.config import DTConfig
from offline_dt.nn.transformer import DecisionTransformer


@dataclass(frozen=True)
class PPOOptions(HistoryOptions):
    """PPO's own hyperparameters (``TrainConfig.method_options`` keys; module docstring),
    and ``timesteps`` (:class:`~offline_dt.methods.history.HistoryOptions`).

    Attributes:
        clip: ε of the clipped surrogate (and of the value clip).
        clip_decay: ``none`` keeps ε; ``linear`` takes it to ``ε · (1 - n / N)`` for the
            updates on a rollout after which ``n`` of the budget's ``N`` env steps are
            collected (rl-zoo's ``clip_range: lin_0.2``, SB3's schedule of progress
            remaining), :meth:`clip_at`.
        gamma: discount γ.
        gae_lambda: λ of GAE.
        ent_coef: ``c_2``; ``auto`` is 0.01 for Discrete actions, 0.0 for Box (CleanRL).
        vf_coef: ``c_1``.
        clip_vloss: clip the value loss around the old values.
        norm_adv: normalise advantages per minibatch.
        n_envs: envs stepped at once in a collect.
        n_steps: steps per env per rollout (a rollout holds ``n_envs · n_steps`` steps).
        epochs: passes over a rollout.
        minibatches: minibatches per pass (``TrainConfig.batch_size`` = ``n_envs · n_steps /
            minibatches``).
        reward_scale: rewards are multiplied by this, in the reward tokens and the returns
            (1: as they come; e.g. 0.1 for Pendulum's -16..0 per step).
        init_log_std: the Box Gaussian's initial ``log σ`` (CleanRL: 0).
        critic: ``separate`` (the value head on a trunk of its own) or ``shared`` (on the
            policy's trunk); module docstring.
    """

    clip: float = 0.2
    clip_decay: Literal["none", "linear"] = "none"
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float | Literal["auto"] = "auto"
    vf_coef: float = 0.5
    clip_vloss: bool = True
    norm_adv: bool = True
    n_envs: int = 8
    n_steps: int = 128
    epochs: int = 4
    minibatches: int = 4
    reward_scale: float = 1.0
    init_log_std: float = 0.0
    critic: Literal["separate", "shared"] = "separate"

    def validate(self) -> None:
        if not 0.0 < self.clip < 1.0:
            raise ValueError(f"method_options: ppo clip must be in (0, 1), found {self.clip}")
        if self.critic not in ("separate", "shared"):
            raise ValueError(f"method_options: ppo critic must be 'separate' or 'shared', "
                             f"found {self.critic!r}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"method_options: ppo gamma and gae_lambda must be in [0, 1], "
                             f"found {self.gamma} and {self.gae_lambda}")
        if self.ent_coef != "auto" and self.ent_coef < 0:
            raise ValueError(f"method_options: ppo ent_coef must be 'auto' or a number >= 0, "
                             f"found {self.ent_coef!r}")
        for name in ("n_envs", "n_steps", "epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"method_options: ppo {name} must be >= 1, found "
                                 f"{getattr(self, name)}")
        if (self.n_envs * self.n_steps) % self.minibatches:
            raise ValueError(f"method_options: ppo n_envs * n_steps = "
                             f"{self.n_envs * self.n_steps} must be divisible by minibatches="
                             f"{self.minibatches}")
        if self.vf_coef < 0 or not self.reward_scale > 0:
            raise ValueError(f"method_options: ppo vf_coef must be >= 0 and reward_scale > 0, "
                             f"found {self.vf_coef} and {self.reward_scale}")

    def clip_at(self, collected: int, budget: int) -> float:
        """ε for the updates on a rollout after which ``collected`` of ``budget`` env steps
        are collected (``clip_decay``)."""
        if self.clip_decay == "none":
            return self.clip
        return self.clip * max(1.0 - collected / budget, 0.0)

    def entropy_coef(self, discrete: bool) -> float:
        """``c_2``: the option, or for ``auto`` 0.01 (Discrete) / 0.0 (Box)."""
        if self.ent_coef != "auto":
            return float(self.ent_coef)
        return 0.01 if discrete else 0.0

    @property
    def batch_size(self) -> int:
        """Steps per minibatch, ``n_envs · n_steps / minibatches``."""
        return self.n_envs * self.n_steps // self.minibatches

    @property
    def updates_per_rollout(self) -> int:
        return self.epochs * self.minibatches


# ---------------------------------------------------------------------------------- network
class PPONetwork(nn.Module):
    """The DT trunk, a value head (on the critic trunk with ``critic separate``) and (Box) a
    state-independent ``log σ``.

    ``forward`` is the deterministic action at every step of a window (the argmax logits or
    ``clip(μ, -1, 1)``), as :meth:`DecisionTransformer.forward` is shaped."""

    def __init__(self, cfg: DTConfig, options: PPOOptions) -> None:
        super().__init__()
        self.cfg, self.options = cfg, options
        self.trunk = DecisionTransformer(cfg)
        self.critic = DecisionTransformer(cfg) if options.critic == "separate" else None
        self.value = nn.Linear(cfg.embed_dim, 1)
        self.log_std = None if cfg.discrete else nn.Parameter(
            torch.full((cfg.act_dim,), float(options.init_log_std)))

    def heads(self, window: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy parameters and value at the last step of every window, float32.

        Args:
            window: ``(B, K)`` windows (``returns_to_go`` the scaled previous rewards).

        Returns:
            ``(B, act_dim)`` logits (Discrete) or Gaussian means (Box), and ``(B,)`` values.
        """
        ts = trunk_timesteps(window.timesteps, self.options.timesteps)
        tokens = (window.returns_to_go, window.observations, window.actions, ts, window.mask)
        h = self.trunk.token_states(*tokens)[:, -1, 1].float()
        hv = h if self.critic is None else self.critic.token_states(*tokens)[:, -1, 1].float()
        with torch.autocast(h.device.type, enabled=False):
            return self.trunk.predict_action(h), self.value(hv).squeeze(-1)

    def forward(self, returns_to_go: torch.Tensor, observations: torch.Tensor,
                actions: torch.Tensor, timesteps: torch.Tensor,
                mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        ts = trunk_timesteps(timesteps, self.options.timesteps)
        out = self.trunk.predict_action(self.trunk.token_states(
            returns_to_go, observations, actions, ts, mask)[:, :, 1])
        out = out if self.cfg.discrete else out.clamp(-1.0, 1.0)
        return out[:, -1:] if last_only else out

    def distribution(self, params: torch.Tensor) -> torch.distributions.Distribution:
        """The policy at ``(B, act_dim)`` parameters: a categorical over logits, or a
        diagonal Gaussian ``N(μ, exp(log σ)²)`` (``Independent`` over action dims)."""
        if self.log_std is None:
            return torch.distributions.Categorical(logits=params)
        std = self.log_std.float().exp().expand_as(params)
        return torch.distributions.Independent(torch.distributions.Normal(params, std), 1)


# ---------------------------------------------------------------------------------- the math
def clipped_surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                      advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's policy loss ``-E[min(ρ Â, clip(ρ, 1 - ε, 1 + ε) Â)]`` (Schulman et al. 2017,
    eq. 7, negated to minimise), ``ρ = exp(log π - log π_old)``; ``(B,)`` inputs → scalar."""
    ratio = (log_probs - old_log_probs).exp()
    return torch.max(-advantages * ratio,
                     -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip: float | None) -> torch.Tensor:
    """``E[(V - R)²] / 2``; with ``clip`` ε the clipped form
    ``E[max((V - R)², (V_old + clip(V - V_old, -ε, ε) - R)²)] / 2``."""
    loss = (values - returns).square()
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.max(loss, (clipped - returns).square())
    return 0.5 * loss.mean()


def ppo_loss(net: PPONetwork, batch: PPOBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = -L^CLIP + c_1 L^VF - c_2 H`` on a minibatch (advantages normalised in it when
    ``norm_adv``), and the logged scalars ``pg_loss``, ``v_loss``, ``entropy``,
    ``approx_kl`` (``E[(ρ - 1) - log ρ]``) and ``clip_frac``."""
    opts = net.options
    params, values = net.heads(batch)
    dist = net.distribution(params)
    log_probs = dist.log_prob(batch.raw_actions)
    adv = batch.advantages
    if opts.norm_adv and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clip = opts.clip if batch.clip is None else batch.clip
    pg = clipped_surrogate(log_probs, batch.old_log_probs, adv, clip)
    v = value_loss(values, batch.old_values, batch.returns, clip if opts.clip_vloss else None)
    entropy = dist.entropy().mean()
    loss = pg + opts.vf_coef * v - opts.entropy_coef(net.cfg.discrete) * entropy
    with torch.no_grad():
        log_ratio = log_probs - batch.old_log_probs
        kl = ((log_ratio.exp() - 1) - log_ratio).mean()
        frac = ((log_ratio.exp() - 1.0).abs() > clip).float().mean()
    return loss, {"pg_loss": pg.detach(), "v_loss": v.detach(), "entropy": entropy.detach(),
                  "approx_kl": kl, "clip_frac": frac}


def sample_decide(net: PPONetwork, generator: torch.Generator) -> Decide:
    """The collect's :data:`~offline_dt.methods.history.Decide`: a draw from the policy with
    noise from ``generator`` (CPU), and extras ``raw_actions``, ``log_probs``, ``values``."""

    def decide(window: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        params, values = net.heads(window)
        if net.log_std is None:
            probs = F.softmax(params, -1).cpu()
            raw = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(params.device)
        else:
            eps = torch.randn(params.shape, generator=generator).to(params.device)
            raw = params + net.log_std.float().exp() * eps
        log_probs = net.distribution(params).log_prob(raw)
        return raw, {"raw_actions": raw, "log_probs": log_probs, "values": values}

    return decide


def greedy_decide(net: PPONetwork) -> Decide:
    """Evaluation's :data:`~offline_dt.methods.history.Decide`: the argmax, or ``μ``."""

    def decide(window: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        params, _ = net.heads(window)
        return (params.argmax(-1) if net.log_std is None else params), {}

    return decide


@register
class PPO(OnlineMethod):
    """PPO on a causal-transformer policy (module docstring); trained online by
    ``offline-dt online --method ppo``."""

    name = "ppo"
    options_class = PPOOptions
    description = "PPO on a causal-transformer policy (Schulman et al. 2017)"
    lr_decay = "linear"
    grad_clip = 0.5

    def build(self, cfg: DTConfig, options: Any = None) -> PPONetwork:
        return PPONetwork(cfg, self.options(options))

    def budget(self, options: dict[str, Any], env_steps: int, batch_size: int | None
               ) -> Budget:
        """``epochs · minibatches`` updates per rollout of ``n_envs · n_steps`` env steps
        (whole rollouts, so up to one more than the budget); the minibatch is fixed.

        Raises:
            ValueError: bad options; a ``batch_size`` other than the minibatch.
        """
        opts = self.options(options)
        if batch_size not in (None, opts.batch_size):
            raise ValueError(f"OnlineConfig.batch_size: ppo's minibatch is n_envs * n_steps / "
                             f"minibatches = {opts.batch_size}, found {batch_size}")
        rollouts = -(-env_steps // (opts.n_envs * opts.n_steps))
        return Budget(steps=opts.updates_per_rollout * rollouts, batch_size=opts.batch_size)

    def make_source(self, spec: SourceSpec) -> RolloutSource:
        return RolloutSource(spec, self.options(spec.config.method_options))

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(batch, PPOBatch):
            raise ValueError("method 'ppo' trains on its rollouts (RolloutSource), not on "
                             "dataset windows; run `offline-dt online --method ppo`")
        return ppo_loss(net, batch)

    def warm_start(self, net: nn.Module, payload: dict[str, Any]) -> bool:
        """The pretrained trunk, its action head included (the policy's logits or Gaussian
        mean: a pretrained policy to start from); the value head, the critic trunk and
        ``log σ`` are fresh, and so are the optimizer and schedule (returns False)."""
        load_trunk(net.trunk, payload["model"])
        return False

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, sample: bool = False,
               generator: torch.Generator | None = None, **settings: Any) -> HistoryPolicy:
        """The deterministic policy (argmax or ``clip(μ, -1, 1)``); with ``sample=True`` the
        collect's sampling policy (noise from ``generator``, default seeded 0). The target
        return is ignored (PPO conditions on none).

        Raises:
            ValueError: ``kv_cache`` (the window is recomputed); unknown settings.
        """
        if kv_cache:
            raise ValueError("ppo acts by recomputing its window; kv_cache is not supported")
        if settings:
            raise ValueError(f"ppo: unknown inference settings {sorted(settings)}; known: "
                             "sample, generator")
        decide = (sample_decide(net, generator or torch.Generator().manual_seed(0)) if sample
                  else greedy_decide(net))
        return HistoryPolicy(net, normalizer, net.options.reward_scale, decide)

