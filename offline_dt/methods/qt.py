"""QT: the Q-value regularized Decision Transformer, with an in-sample IQL critic: the whole
method in one file.

Sources:
- QT, "Q-value Regularized Transformer for Offline Reinforcement Learning" (Hu et al., ICML
  2024, arXiv 2405.17098, eq. 6): the DT action loss minus a normalised Q of the predicted
  action, ``L = L_DT - α·E[Q(s_t, â_t)]`` with ``α = η / E|Q(s_t, â_t)|`` (TD3+BC's
  normalisation, Fujimoto & Gu 2021).
- The critic learns in-sample as in IQL ("Offline RL with Implicit Q-Learning", Kostrikov et
  al. 2021): ``V`` by expectile regression on the target ``Q`` (eq. 5), twin ``Q`` by TD on
  ``r + γ(1 - terminal)·V(s')`` (eq. 6), a Polyak-averaged target ``Q``. QT itself uses a
  TD3-style out-of-sample maximisation, which this project measured to fail on random Pendulum
  data (TD3+BC: -1166); IQL's in-sample expectile is the one that learned there.
- Advantage weighting of the action loss (AWR / IQL's policy extraction, eq. 7): each step's
  error is weighted by ``min(exp(β·A(s,a)), max_weight)``, ``A = min(Q_target) - V``. With
  ``β = 0`` the weights are 1 (plain QT); with ``η = 0`` there is no Q term (an advantage
  -weighted DT).

The critic is one of (option ``critic``):
- ``mlp``: twin ``Q(s, a)`` and ``V(s)`` MLPs on single transitions (IQL's networks), using
  the dataset's ``next_observations``;
- ``transformer``: a second Decision Transformer trunk over the same ``(R̂, s, a, t)`` window
  as the actor (the transformer value function of seed 002, section 5.1.3) with ``Q`` read at
  each action token and ``V`` at each state token. Its return-to-go tokens are zeroed: R̂_t is
  the realised future of the behaviour policy, and a critic that sees it regresses to the
  behaviour's Monte Carlo return instead of the in-sample maximum. ``V(s_{t+1})`` is read at
  the next state token of the window, so the last step of a window only trains ``Q`` when it
  is terminal.

Rewards reach the critic as ``r / rtg_scale · reward_scale`` (``reward_scale = 1000``:
IQL's D4RL normalisation ``r · 1000 / (R_max - R_min)``, with the return-to-go scale, the
largest |episode return|, in place of the range), so ``β`` means what it means in IQL.

Acting is the DT's (``offline_dt.methods.dt.DTPolicy`` on the actor): condition on a target
return chosen on validation episodes. Hyperparameters: :class:`QTOptions`, each a typed
flag (``--qt.expectile 0.8``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods.base import Method, register
from offline_dt.methods.critic import mlp, polyak_update, require_box_actions
from offline_dt.methods.dt import DTPolicy
from offline_dt.methods.options import TRANSFORMER_SPACE, Choice, Range
from offline_dt.nn.collectives import global_mean
from offline_dt.nn.config import DTConfig
from offline_dt.nn.encoders import state_encoder
from offline_dt.nn.transformer import DecisionTransformer


@dataclass(frozen=True)
class QTOptions:
    """QT's own hyperparameters (``TrainConfig.method_options`` keys).

    Attributes:
        critic: ``mlp`` (twin Q and V MLPs on transitions) or ``transformer`` (a DT trunk over
            the window).
        expectile: IQL's τ for ``V`` (0.5 = mean; higher approaches the in-sample max).
        discount: γ of the TD target.
        target_rate: Polyak rate of the target critic per update.
        eta: η, weight of the normalised Q term (QT); 0 turns it off.
        beta: β, advantage-weight temperature (AWR/IQL); 0 turns weighting off. IQL's 3
            weighted too little here: within the paper preset's 2,500 updates the critic's
            values are far from converged (V about a tenth of the discounted return on
            pendulum-random), so its advantages are smaller than IQL's at 1M updates; 10 was
            better on validation episodes (benchmarks/results/beyond_data.md).
        max_weight: clip of the advantage weights (IQL: 100).
        reward_scale: critic rewards are ``r / rtg_scale * reward_scale``.
        hidden: width of the MLP critic's two hidden layers (IQL: 256).
        critic_grad_clip: gradient-norm clip of the critic (0: none, as IQL); the actor is
            clipped at ``TrainConfig.grad_clip``.
    """

    critic: Literal["mlp", "transformer"] = "mlp"
    expectile: float = 0.7
    discount: float = 0.99
    target_rate: float = 0.005
    eta: float = 1.0
    beta: float = 10.0
    max_weight: float = 100.0
    reward_scale: float = 1000.0
    hidden: int = 256
    critic_grad_clip: float = 0.0

    def validate(self) -> None:
        if not 0.0 < self.expectile < 1.0 or not 0.0 <= self.discount < 1.0:
            raise ValueError(f"method_options: qt expectile must be in (0, 1) and discount in "
                             f"[0, 1), found {self.expectile} and {self.discount}")
        if not 0.0 < self.target_rate <= 1.0:
            raise ValueError(f"method_options: qt target_rate must be in (0, 1], found "
                             f"{self.target_rate}")
        for name in ("eta", "beta", "critic_grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"method_options: qt {name} must be >= 0, found "
                                 f"{getattr(self, name)}")
        if self.max_weight <= 0 or self.reward_scale <= 0 or self.hidden < 1:
            raise ValueError("method_options: qt max_weight, reward_scale and hidden must be "
                             f"> 0, found {self.max_weight}, {self.reward_scale}, {self.hidden}")


# ---------------------------------------------------------------------------------- critics
class MLPCritic(nn.Module):
    """IQL's critic on single transitions: twin ``Q(s, a)`` and ``V(s)``, 2 x ``hidden`` ReLU.
    A Dict or image observation (``cfg.obs_layout``) is first encoded to ``hidden`` features by
    the encoder the space chooses (``offline_dt.nn.encoders``); a flat Box's is read as is."""

    def __init__(self, cfg: DTConfig, hidden: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encode = (None if cfg.obs_layout is None
                       else state_encoder(cfg.obs_dim, hidden, cfg.obs_layout))
        width = cfg.obs_dim if self.encode is None else hidden
        self.q = mlp(width + cfg.act_dim, hidden, 2)
        self.v = mlp(width, hidden, 1)

    def _states(self, observations: torch.Tensor) -> torch.Tensor:
        return observations if self.encode is None else self.encode(observations)

    def _actions(self, actions: torch.Tensor) -> torch.Tensor:
        if self.cfg.discrete:
            return F.one_hot(actions, self.cfg.act_dim).to(torch.float32)
        return actions

    def forward(self, batch: Batch, actions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q`` of ``actions`` ``(B, K, 2)`` (twin) and ``V`` ``(B, K)`` at every step."""
        s = self._states(batch.observations)
        q = self.q(torch.cat((s, self._actions(actions)), -1))
        return q, self.v(s).squeeze(-1)

    def next_values(self, batch: Batch, v: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``V(s_{t+1})`` ``(B, K)`` from the batch's next observations, and where it is
        valid (every real step)."""
        return self.v(self._states(batch.next_observations)).squeeze(-1), batch.mask

    def q_last(self, observations: torch.Tensor, actions: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        """``min`` twin ``Q`` ``(B,)`` of the last step of ``(B, n, ...)`` contexts."""
        x = torch.cat((self._states(observations[:, -1]), self._actions(actions[:, -1])), -1)
        return self.q(x).min(-1).values


class TransformerCritic(nn.Module):
    """A Decision Transformer trunk over the window (return-to-go tokens zeroed) with twin
    ``Q`` read at the action tokens and ``V`` at the state tokens."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = DecisionTransformer(cfg)
        self.trunk.predict_action.requires_grad_(False)  # the trunk's action head is unused
        self.q = nn.Linear(cfg.embed_dim, 2)
        self.v = nn.Linear(cfg.embed_dim, 1)

    def forward(self, batch: Batch, actions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q`` of ``actions`` ``(B, K, 2)`` (twin) and ``V`` ``(B, K)`` at every step."""
        h = self.trunk.token_states(torch.zeros_like(batch.returns_to_go), batch.observations,
                                    actions, batch.timesteps, batch.mask)
        return self.q(h[:, :, 2]), self.v(h[:, :, 1]).squeeze(-1)

    def next_values(self, batch: Batch, v: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``V(s_{t+1})`` ``(B, K)`` read at the next state token of the window, and where
        it is valid: the next step is in the window, or the step is terminal (no bootstrap)."""
        v_next = torch.cat((v[:, 1:], torch.zeros_like(v[:, :1])), 1)
        valid = torch.cat((batch.mask[:, 1:], batch.terminals[:, -1:]), 1) & batch.mask
        return v_next, valid

    def q_last(self, observations: torch.Tensor, actions: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        """``min`` twin ``Q`` ``(B,)`` of the last step of ``(B, n, ...)`` contexts."""
        rtg = torch.zeros(*timesteps.shape, 1, device=timesteps.device)
        h = self.trunk.token_states(rtg, observations, actions, timesteps)
        return self.q(h[:, -1, 2]).min(-1).values


# ---------------------------------------------------------------------------------- network
class QTNetwork(nn.Module):
    """The actor (a Decision Transformer), its critic and the critic's Polyak target.

    ``cfg`` is the actor's :class:`DTConfig` (the checkpoint's ``model_config``); the target's
    parameters do not require gradients but are in the ``state_dict``, so a checkpoint resumes
    exactly.
    """

    def __init__(self, cfg: DTConfig, options: QTOptions) -> None:
        super().__init__()
        self.cfg = cfg
        self.options = options
        self.actor = DecisionTransformer(cfg)
        critic_cfg = dataclasses.replace(cfg, dropout=0.0)
        self.critic: nn.Module = (TransformerCritic(critic_cfg) if options.critic == "transformer"
                                  else MLPCritic(critic_cfg, options.hidden))
        self.target = copy.deepcopy(self.critic).requires_grad_(False)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The actor's :meth:`DecisionTransformer.forward`."""
        return self.actor(*args, **kwargs)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL eq. 5 elementwise: ``|τ - 1(diff < 0)| · diff²`` for ``diff = Q - V``."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.square()


def critic_loss(net: QTNetwork, batch: Batch
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """IQL's value and TD losses on the real steps of ``batch``.

    Returns:
        (scalar loss, ``(B, K)`` advantages ``min(Q_target(s, a)) - V(s)`` (detached), logged
        scalars ``q_loss``, ``v_loss``, ``q_mean``).
    """
    o, m = net.options, batch.mask
    q, v = net.critic(batch, batch.actions)
    with torch.no_grad():
        q_target = net.target(batch, batch.actions)[0].min(-1).values
        v_next, valid = net.critic.next_values(batch, v)
        bootstrap = (~batch.terminals).float() * o.discount
        y = batch.rewards * o.reward_scale + bootstrap * v_next
    v_loss = expectile_loss(q_target - v, o.expectile)[m].mean()
    td = (q - y[..., None]).square().sum(-1)
    q_loss = td[valid].mean() if bool(valid.any()) else td.sum() * 0.0
    extras = {"q_loss": q_loss.detach(), "v_loss": v_loss.detach(),
              "q_mean": q_target[m].mean()}
    return q_loss + v_loss, (q_target - v).detach(), extras


def actor_loss(net: QTNetwork, batch: Batch, advantages: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage-weighted DT action loss minus QT's normalised Q term (module docstring).
    The Q term's gradient reaches the actor only: the critic is called with detached
    parameters."""
    o, m = net.options, batch.mask
    pred = net.actor(batch.returns_to_go, batch.observations, batch.actions, batch.timesteps,
                     m).float()
    if net.cfg.discrete:
        err = F.cross_entropy(pred.transpose(1, 2), batch.actions, reduction="none")
    else:
        err = (pred - batch.actions).square().mean(-1)
    weights = torch.ones_like(err)
    if o.beta > 0:
        weights = torch.exp(o.beta * advantages).clamp(max=o.max_weight)
    loss = (weights * err)[m].mean()
    extras = {"action_loss": err[m].mean().detach(), "weight_mean": weights[m].mean()}
    if o.eta > 0:
        params = {k: p.detach() for k, p in net.critic.named_parameters()}
        q_pi = functional_call(net.critic, params, (batch, pred))[0].min(-1).values[m]
        # α's normaliser over the global batch under DDP (a plain mean in one process)
        scale = global_mean(q_pi.abs().detach()).clamp(min=1e-6)
        loss = loss - o.eta * q_pi.mean() / scale
    return loss, extras


@register
class QT(Method):
    """Q-value regularized Decision Transformer with an IQL critic (module docstring)."""

    name = "qt"
    options_class = QTOptions
    description = "Q-value regularized Decision Transformer (Hu et al. 2024)"
    conditions_on_return = True
    #: A transformer's space and the critic's terms: η (QT's own sweeps span 0 to a few),
    #: β (AWR/IQL's temperature: IQL's 3, ours 10, or no weighting) and τ (IQL: 0.7 and 0.9).
    search_space = {**TRANSFORMER_SPACE, "options.eta": Range(0.0, 2.0),
                    "options.beta": Choice((0.0, 1.0, 3.0, 10.0)),
                    "options.expectile": Range(0.5, 0.95)}

    def build(self, cfg: DTConfig, options: Any = None) -> QTNetwork:
        opts = self.options(options)
        if opts.eta > 0:
            require_box_actions(cfg, f"qt's Q term (eta={opts.eta})",
                                "--qt.eta 0 (method_options eta=0.0: advantage weighting "
                                "only)")
        return QTNetwork(cfg, opts)

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if batch.rewards is None or batch.next_observations is None or batch.terminals is None:
            raise ValueError("qt needs rewards, next_observations and terminals in the batch "
                             "(offline_dt.data.windows.WindowSampler provides them)")
        c_loss, advantages, c_extras = critic_loss(net, batch)
        a_loss, a_extras = actor_loss(net, batch, advantages)
        return a_loss + c_loss, {**a_extras, **c_extras}

    def clip_gradients(self, net: nn.Module, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(net.actor.parameters(), max_norm)
        if net.options.critic_grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.critic.parameters(), net.options.critic_grad_clip)

    @torch.no_grad()
    def after_step(self, net: nn.Module) -> None:
        """Polyak update of the target critic."""
        polyak_update(net.target, net.critic, net.options.target_rate)

    def inference_candidates(self, net: nn.Module) -> list[dict[str, Any]]:
        """Act as the DT does, or pick among 5 candidate returns-to-go by Q (QT's
        inference); chosen on validation episodes."""
        return [{}, {"q_candidates": 5}]

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, q_candidates: int = 0, **settings: Any
               ) -> DTPolicy:
        """The actor acting as a DT toward ``target_return``; with ``q_candidates > 1``,
        :class:`QGuidedPolicy`.

        Raises:
            ValueError: no target return; unknown settings; ``q_candidates`` with
                ``kv_cache``.
        """
        if target_return is None:
            raise ValueError("method 'qt' acts toward a target return; pass target_return")
        if settings:
            raise ValueError(f"qt: unknown inference settings {sorted(settings)}; known: "
                             "q_candidates")
        if q_candidates > 1:
            if kv_cache:
                raise ValueError("qt: q_candidates needs the full-window path (kv_cache=False)")
            return QGuidedPolicy(net, normalizer, target_return, int(q_candidates))
        return DTPolicy(net.actor, normalizer, target_return, kv_cache=kv_cache)


class QGuidedPolicy(DTPolicy):
    """QT's inference (Hu et al. 2024, Section 4.3): at every step the actor proposes one
    action per candidate return-to-go for the current step, ``R̂_t + δ`` with ``δ`` evenly
    spaced in ``[-spread, spread]`` (return-to-go scale units, i.e. fractions of the largest
    |episode return|), and the action with the highest critic ``Q`` is taken; that candidate's
    ``R̂_t`` stays in the context. The running return-to-go is still decremented from the
    target by the rewards (Algorithm 1), so the candidates perturb one step at a time.

    Args:
        net: a :class:`QTNetwork`.
        normalizer, target_return: as :class:`DTPolicy`.
        candidates: how many returns-to-go to try per step (M); each step costs M actor
            passes and M critic passes.
        spread: half-width of the offsets.
    """

    def __init__(self, net: QTNetwork, normalizer: Normalizer, target_return: float,
                 candidates: int, spread: float = 0.25) -> None:
        super().__init__(net.actor, normalizer, target_return)
        self.critic = net.critic
        self.offsets = torch.linspace(-spread, spread, candidates, device=self.device)

    def _predict(self, i: int) -> torch.Tensor:
        n, m, envs = self.length, len(self.offsets), self.num_envs
        rtg = self.rtg_buf[:, :n].repeat(m, 1, 1)
        rtg[:, -1, 0] += self.offsets.repeat_interleave(envs)
        obs = self.obs_buf[:, :n].repeat(m, 1, 1)
        acts = self.act_buf[:, :n].repeat(m, *([1] * (self.act_buf.dim() - 1)))
        ts = self.ts_buf[:, :n].repeat(m, 1)
        out = self.model(rtg, obs, acts, ts, last_only=True)[:, -1]
        acts[:, -1] = out.argmax(-1) if self.cfg.discrete else out
        best = self.critic.q_last(obs, acts, ts).view(m, envs).argmax(0)
        rows = best * envs + torch.arange(envs, device=self.device)
        self.rtg_buf[:, i, 0] = rtg[rows, -1, 0]
        return out[rows]
