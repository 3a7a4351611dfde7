"""REINFORCE with a value baseline on a causal-transformer policy, trained online by
``offline-dt online --method reinforce``: the options, the loss and the method in this file;
the network, the sampling policy and the rollouts are PPO's pieces, imported
(``offline_dt.methods.ppo.PPONetwork``, its ``sample_decide``/``greedy_decide``, and
``offline_dt.methods.ppo_rollout.RolloutSource`` with GAE at λ = 1).

Sources:
- REINFORCE (Williams 1992, "Simple statistical gradient-following algorithms for
  connectionist reinforcement learning", eq. 11 with a reinforcement baseline) and Sutton &
  Barto 2018, "Reinforcement Learning: An Introduction", ch. 13.4 "REINFORCE with Baseline":
  ``∇J ∝ E[(G_t - b(s_t)) ∇ log π(a_t | h_t)]``, the baseline a learnt state value
  ``b = V(s_t)`` regressed on ``G_t``. Minimised here per rollout of ``T = n_envs · n_steps``
  samples: ``L = -(1/T) Σ_t log π(a_t | h_t) · A_t + c_v (1/T) Σ_t (V(s_t) - G_t)² -
  c_e H[π]``, ``A_t = G_t - V(s_t)`` held constant (no gradient into the baseline through
  the policy term), :func:`policy_gradient_loss`. Sutton & Barto step the policy and the
  baseline with two step sizes; one AdamW optimizer and the weight ``c_v`` (``vf_coef``)
  stand for them here. ``c_e`` (``ent_coef``, default 0: not in Williams' algorithm) is the
  entropy bonus a2c shares (``offline_dt.methods.a2c``).
- The return ``G_t = Σ_k γ^k r_{t+k}``: the discounted return-to-go of the step's episode,
  computed backwards over each rollout of ``n_steps`` steps per env (GAE with λ = 1,
  ``offline_dt.methods.ppo_rollout.gae``: ``G_t = r_t + γ G_{t+1}``). **The rule where the
  episode's remaining rewards are not in the rollout**: a termination adds nothing (``G`` of
  the terminal step is ``r_t``); a time-limit truncation adds ``γ V(s')``, the baseline's
  value of the episode's true last observation (the episode did not end, the env cut it); the
  rollout's end (the env stream goes on, the episode continues into the next rollout) adds
  ``γ V(s_T)``, the value of the next observation. So ``G_t`` is the Monte Carlo return of
  every step whose episode ends inside its rollout, and otherwise the rewards collected to
  the cut plus the discounted baseline there (a biased estimate: the price of fixed-size
  on-policy batches from a vector env that never waits; Sutton & Barto's algorithm waits for
  every episode's end). ``n_steps`` long against the episodes (default 128 steps of 4 envs)
  keeps most returns Monte Carlo; short, it is n-step actor-critic (``a2c``).
- Defaults: γ 0.99, ``c_v`` 0.5, gradient-norm clip 0.5 and AdamW lr 7e-4 constant, as a2c's
  (SB3's A2C; our loop has AdamW, no RMSprop), one gradient step per rollout (no epochs, no
  minibatches: the samples are on-policy only for the step they were collected for),
  advantages not normalised (``norm_adv``).

Network: PPO's (``offline_dt.methods.ppo``, module docstring): the DT trunk over the episode's
last K ``(r_{t-1}, s_t, a_t)``, a categorical (Discrete) or diagonal Gaussian (Box) policy
head, and the value head ``V`` on a second trunk (``critic separate``, the default) or on the
policy's (``critic shared``). It acts by sampling while collecting, deterministically (argmax
or ``clip(μ, -1, 1)``) when evaluated.

Hyperparameters: :class:`ReinforceOptions`, each a typed flag (``--reinforce.n-envs 4``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods.base import (
    Budget,
    OnlineMethod,
    SourceSpec,
    register,
)
from offline_dt.methods.history import HistoryOptions, HistoryPolicy, load_trunk
from offline_dt.methods.ppo import PPONetwork, greedy_decide, sample_decide
from offline_dt.methods.ppo_rollout import PPOBatch, RolloutSource
from offline_dt.nn.config import DTConfig


@dataclass(frozen=True)
class ReinforceOptions(HistoryOptions):
    """REINFORCE's hyperparameters (``TrainConfig.method_options`` keys; module docstring),
    and ``timesteps`` (:class:`~offline_dt.methods.history.HistoryOptions`). The rollout
    (``offline_dt.methods.ppo_rollout.RolloutOptions``) is one pass of one minibatch with
    GAE's λ = 1 (class constants ``epochs``, ``minibatches``, ``gae_lambda``).

    Attributes:
        gamma: discount γ of the returns.
        vf_coef: ``c_v``, the weight of the baseline's loss ``(V(s_t) - G_t)²``.
        ent_coef: ``c_e``, the weight of the entropy bonus (0: none, Williams' algorithm).
        norm_adv: normalise the advantages over the rollout (mean 0, std 1); off in Williams
            and Sutton & Barto.
        n_envs: envs stepped at once in a collect.
        n_steps: steps per env per rollout (a rollout, one update's batch, holds ``n_envs ·
            n_steps`` steps).
        reward_scale: rewards are multiplied by this, in the reward tokens and the returns.
        init_log_std: the Box Gaussian's initial ``log σ``.
        critic: ``separate`` (the value head on a trunk of its own) or ``shared``.
    """

    gamma: float = 0.99
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    norm_adv: bool = False
    n_envs: int = 4
    n_steps: int = 128
    reward_scale: float = 1.0
    init_log_std: float = 0.0
    critic: Literal["separate", "shared"] = "separate"

    #: One gradient step per rollout: one pass, one minibatch.
    epochs: ClassVar[int] = 1
    minibatches: ClassVar[int] = 1
    #: The returns are GAE's with λ = 1 (``G_t - V(s_t) = Σ_k (γλ)^k δ_{t+k}`` at λ = 1).
    gae_lambda: ClassVar[float] = 1.0
    method: ClassVar[str] = "reinforce"

    def validate(self) -> None:
        """Raises ValueError naming the method, the option, what is expected and found."""
        m = self.method
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"method_options: {m} gamma and gae_lambda must be in [0, 1], "
                             f"found {self.gamma} and {self.gae_lambda}")
        if self.vf_coef < 0 or self.ent_coef < 0 or not self.reward_scale > 0:
            raise ValueError(f"method_options: {m} vf_coef and ent_coef must be >= 0 and "
                             f"reward_scale > 0, found {self.vf_coef}, {self.ent_coef} and "
                             f"{self.reward_scale}")
        if self.n_envs < 1 or self.n_steps < 1:
            raise ValueError(f"method_options: {m} n_envs and n_steps must be >= 1, found "
                             f"{self.n_envs} and {self.n_steps}")

    @property
    def batch_size(self) -> int:
        """Steps per update: the whole rollout, ``n_envs · n_steps``."""
        return self.n_envs * self.n_steps

    @property
    def updates_per_rollout(self) -> int:
        return 1

    def clip_at(self, collected: int, budget: int) -> float | None:
        """No ratio clip (the rollout's ``PPOBatch.clip``; unused by this loss)."""
        return None


# ---------------------------------------------------------------------------------- the math
def policy_gradient_loss(log_probs: torch.Tensor, values: torch.Tensor,
                         advantages: torch.Tensor, returns: torch.Tensor,
                         entropy: torch.Tensor, vf_coef: float, ent_coef: float
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy-gradient loss with a value baseline (Williams 1992; Sutton & Barto 13.4;
    Mnih et al. 2016's A3C/A2C with ``c_e > 0``), means over the ``T`` samples:
    ``-mean(log π(a_t) · A_t) + c_v mean((V(s_t) - G_t)²) - c_e mean(H_t)``.

    Args:
        log_probs: ``(T,)`` ``log π(a_t | h_t)`` under the current parameters.
        values: ``(T,)`` ``V(s_t)`` under the current parameters.
        advantages: ``(T,)`` ``A_t`` (e.g. ``G_t - V(s_t)`` at collect time), held constant.
        returns: ``(T,)`` ``G_t``, the baseline's regression target.
        entropy: ``(T,)`` ``H[π(· | h_t)]``.
        vf_coef, ent_coef: ``c_v`` and ``c_e``.

    Returns:
        ``(loss, {"pg_loss", "v_loss", "entropy"})``, scalars (the logged ones detached).
    """
    pg = -(log_probs * advantages.detach()).mean()
    v = (values - returns.detach()).square().mean()
    ent = entropy.mean()
    loss = pg + vf_coef * v - ent_coef * ent
    return loss, {"pg_loss": pg.detach(), "v_loss": v.detach(), "entropy": ent.detach()}


def rollout_loss(net: PPONetwork, batch: PPOBatch
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`policy_gradient_loss` on a rollout: log-probs, values and entropies from the
    network now, the advantages ``G_t - V(s_t)`` and returns ``G_t`` of the collect
    (normalised over the rollout when ``norm_adv``)."""
    opts = net.options
    params, values = net.heads(batch)
    dist = net.distribution(params)
    adv = batch.advantages
    if opts.norm_adv and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return policy_gradient_loss(dist.log_prob(batch.raw_actions), values, adv, batch.returns,
                                dist.entropy(), opts.vf_coef, opts.ent_coef)


@register
class Reinforce(OnlineMethod):
    """REINFORCE with a value baseline on a causal-transformer policy (module docstring);
    trained online by ``offline-dt online --method reinforce``. A subclass with another
    ``name`` and ``options_class`` is another rollout policy-gradient method (``a2c``)."""

    name = "reinforce"
    description = ("REINFORCE with a value baseline on a causal-transformer policy "
                   "(Williams 1992; Sutton & Barto 13.4)")
    learning_rate = 7e-4
    lr_decay = "none"
    grad_clip = 0.5
    #: The options dataclass (``TrainConfig.method_options``).
    options_class: ClassVar[type[ReinforceOptions]] = ReinforceOptions

    def build(self, cfg: DTConfig, options: Any = None) -> PPONetwork:
        return PPONetwork(cfg, self.options(options))

    def budget(self, options: dict[str, Any], env_steps: int, batch_size: int | None
               ) -> Budget:
        """One update per rollout of ``n_envs · n_steps`` env steps (whole rollouts, so up to
        one more than the budget); the batch is the rollout.

        Raises:
            ValueError: bad options; a ``batch_size`` other than ``n_envs · n_steps``.
        """
        opts = self.options(options)
        if batch_size not in (None, opts.batch_size):
            raise ValueError(f"OnlineConfig.batch_size: {self.name}'s batch is the rollout, "
                             f"n_envs * n_steps = {opts.batch_size}, found {batch_size}")
        return Budget(steps=-(-env_steps // opts.batch_size), batch_size=opts.batch_size)

    def make_source(self, spec: SourceSpec) -> RolloutSource:
        return RolloutSource(spec, self.options(spec.config.method_options))

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(batch, PPOBatch):
            raise ValueError(f"method {self.name!r} trains on its rollouts (RolloutSource), "
                             f"not on dataset windows; run `offline-dt online --method "
                             f"{self.name}`")
        return rollout_loss(net, batch)

    def warm_start(self, net: nn.Module, payload: dict[str, Any]) -> bool:
        """The pretrained trunk with its action head (as ppo's); the value head, the critic
        trunk, ``log σ``, the optimizer and the schedule are fresh (returns False)."""
        load_trunk(net.trunk, payload["model"])
        return False

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, sample: bool = False,
               generator: torch.Generator | None = None, **settings: Any) -> HistoryPolicy:
        """The deterministic policy (argmax or ``clip(μ, -1, 1)``); with ``sample=True`` the
        collect's sampling policy (noise from ``generator``, default seeded 0). The target
        return is ignored.

        Raises:
            ValueError: ``kv_cache`` (the window is recomputed); unknown settings.
        """
        if kv_cache:
            raise ValueError(f"{self.name} acts by recomputing its window; kv_cache is not "
                             "supported")
        if settings:
            raise ValueError(f"{self.name}: unknown inference settings {sorted(settings)}; "
                             "known: sample, generator")
        decide = (sample_decide(net, generator or torch.Generator().manual_seed(0)) if sample
                  else greedy_decide(net))
        return HistoryPolicy(net, normalizer, net.options.reward_scale, decide)
