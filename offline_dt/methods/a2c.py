"""A2C, synchronous advantage actor-critic, on a causal-transformer policy, trained online by
``offline-dt online --method a2c``: the options and the method in this file; the loss, the
network, the sampling policy and the rollouts are REINFORCE's and PPO's pieces, imported
(``offline_dt.methods.reinforce``: the policy-gradient loss with a value baseline; through it
``offline_dt.methods.ppo.PPONetwork`` and ``offline_dt.methods.ppo_rollout.RolloutSource``).

Sources:
- A3C (Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning",
  Algorithm S3) run synchronously: every ``n_steps`` steps of ``n_envs`` envs one gradient
  step on ``L = -(1/T) Σ_t log π(a_t | h_t) · A_t + c_v (1/T) Σ_t (V(s_t) - G_t)² -
  c_e (1/T) Σ_t H[π(· | h_t)]`` over the ``T = n_envs · n_steps`` samples
  (``offline_dt.methods.reinforce.policy_gradient_loss``), ``A_t = G_t - V(s_t)`` held
  constant. ``G_t`` is the n-step return ``Σ_{k<n} γ^k r_{t+k} + γ^n V(s_{t+n})``,
  bootstrapped from the value of the state after the rollout (``n`` the steps left in it)
  or, at a time-limit truncation, of the episode's true last observation; a termination
  bootstraps nothing. With ``gae_lambda`` < 1 the advantages are GAE(λ)'s (Schulman et al.
  2016, ``offline_dt.methods.ppo_rollout.gae``, as SB3's A2C) and ``G_t = A_t + V(s_t)``.
- Defaults: SB3's ``A2C`` (Raffin et al. 2021; Mnih et al. 2016's settings): ``n_steps`` 5,
  γ 0.99, ``gae_lambda`` 1.0, ``ent_coef`` 0.0, ``vf_coef`` 0.5, gradient-norm clip 0.5
  (``A2C.grad_clip``), lr 7e-4 constant (``A2C.learning_rate``, ``lr_decay`` none),
  advantages not normalised; 8 envs as rl-zoo's A2C for CartPole-v1. SB3 steps RMSprop
  (α 0.99, ε 1e-5); our loop has only AdamW, so ours steps AdamW (no weight decay, as
  ``offline-dt online``'s default) at the same lr 7e-4.

Network and acting: REINFORCE's (``offline_dt.methods.reinforce``): PPO's policy and value
heads, the value on a second trunk (``critic separate``, as SB3's separate ``pi``/``vf``
MLPs) or the policy's (``critic shared``).

Hyperparameters: :class:`A2COptions`, each a typed flag (``--a2c.n-steps 5``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from offline_dt.methods.base import register
from offline_dt.methods.reinforce import Reinforce, ReinforceOptions


@dataclass(frozen=True)
class A2COptions(ReinforceOptions):
    """A2C's hyperparameters (``TrainConfig.method_options`` keys; module docstring): those
    of :class:`~offline_dt.methods.reinforce.ReinforceOptions` with A2C's defaults, and
    ``gae_lambda``.

    Attributes:
        gae_lambda: λ of GAE (1: the n-step returns of Mnih et al.).
        ent_coef: ``c_e``, the entropy bonus's weight (SB3's default 0.0; Mnih et al. 0.01).
        n_envs: envs stepped at once (rl-zoo's 8 for CartPole-v1).
        n_steps: steps per env per rollout, ``n`` of the n-step returns (5).
    """

    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    n_envs: int = 8
    n_steps: int = 5
    method: ClassVar[str] = "a2c"


@register
class A2C(Reinforce):
    """Synchronous advantage actor-critic on a causal-transformer policy (module docstring);
    trained online by ``offline-dt online --method a2c``."""

    name = "a2c"
    description = ("A2C, synchronous advantage actor-critic with n-step returns, on a "
                   "causal-transformer policy (Mnih et al. 2016)")
    learning_rate = 7e-4
    lr_decay = "none"
    grad_clip = 0.5
    options_class = A2COptions
