"""Online Decision Transformer (Zheng, Zhang & Grover, "Online Decision Transformer", ICML 2022):
pretrained by ``offline-dt train --method odt``, fine-tuned online by ``offline-dt finetune``.
The whole method in this file and the one it owns, ``offline_dt.methods.odt_replay`` (how its
fine-tuning batches are made: the trajectory replay buffer, hindsight relabelling and the
collect step of Algorithm 1); here the network, the loss and how it acts.

- Network: the DT trunk (``offline_dt.nn.transformer.DecisionTransformer``) with a stochastic policy
  head on the hidden state of the state token ``s_t`` (the token the DT predicts ``a_t``
  from; the action token embeds ``a_t`` itself). Box actions: a tanh-squashed diagonal
  Gaussian ``a = tanh(u)``, ``u ~ N(μ, σ²)``, with ``μ`` from the trunk's action head and
  ``log σ`` from its own linear head, squashed into ``[log_std_min, log_std_max]`` by a tanh
  as ODT does (``log σ = lo + (hi - lo)(tanh(x) + 1) / 2``). Discrete actions: a categorical
  over the trunk's logits.
- Loss (the paper's max-entropy sequence modelling): the negative log-likelihood of the data
  actions minus ``λ`` times the policy entropy, both masked means over the real steps of the
  window, with ``λ`` detached::

      L(θ) = -E[log π_θ(a_t | ...)] - λ · H[π_θ],          H[π_θ] >= β (target entropy)

  For the squashed Gaussian, ``log π(a) = Σ_j log N(atanh a_j; μ_j, σ_j) - log(1 - a_j²)``
  (data actions clamped to ``±(1 - 1e-6)``) and ``H`` is estimated from one reparameterised
  sample per step, ``H ≈ -log π(ã)``, ``ã = tanh(μ + σ ε)``, as ODT's code does; for the
  categorical ``H`` is exact.
- Temperature (the constraint's Lagrangian dual): ``λ = exp(log λ)`` minimises
  ``J(log λ) = λ · (H - β)`` (``H`` detached), so ``λ`` grows while the entropy is below the
  target and shrinks above it. As in ODT's code it has its own Adam (``temperature_lr``,
  β = (0.9, 0.999), no weight decay, no warmup, no gradient clipping), apart from the
  trunk's AdamW: ``log λ`` is a parameter of the network with ``requires_grad=False`` (so
  the loop's AdamW, which skips parameters without a gradient, never moves it), ``loss``
  records the batch's entropy gap ``H - β`` in a buffer, and ``after_step`` takes the Adam
  step on the closed-form gradient ``∂J/∂log λ = λ (H - β)``. The parameter and the Adam
  moments are in the network's ``state_dict``, so they checkpoint and resume with it.
  Under DDP the gap is the global batch's (``offline_dt.nn.collectives.global_mean``), so every
  rank takes the same step.
- TD3 gradients (option ``critic_weight`` η > 0; Yan, Schwing & Wang, "Reinforcement
  Learning Gradients as Vitamin for Online Finetuning Decision Transformers", NeurIPS 2024,
  arXiv 2410.24108): ODT's loss cannot lift a policy above the returns its buffer holds
  (hindsight relabelling only teaches returns it has seen); a critic can. A twin ``Q(s, a)``
  MLP (TD3, Fujimoto, van Hoof & Meger 2018: clipped double Q, a Polyak target, target
  policy smoothing) learns by TD on the window's transitions, and the actor's loss gains
  TD3+BC's normalised Q term (Fujimoto & Gu 2021) on its mean action::

      L(θ) = -E[log π_θ(a_t | ...)] - λ·H[π_θ] - η · E[Q(s_t, tanh μ_t)] / E|Q(s_t, tanh μ_t)|
      L(φ) = Σ_i E[(Q_φi(s_t, a_t) - y_t)²],
      y_t = r_t·c + γ (1 - terminal_t) · min_i Q_target_i(s_{t+1}, ã_{t+1}),
      ã_{t+1} = clip(tanh μ_{t+1} + clip(N(0, σ̃²), -ĉ, ĉ), -1, 1)

  ``μ_{t+1}`` is the actor's own mean at the window's next state token (detached), so the
  target costs no second transformer pass; the window's last step has no next action and
  trains ``Q`` only when it is terminal. The Q term's gradient reaches the actor only (the
  critic's parameters are detached in it). Rewards reach the critic as
  ``r / rtg_scale · reward_scale`` (``offline_dt.methods.qt``'s convention). Box actions only.
  With η = 0 (the default) no critic is built: the published ODT.
- Acting: evaluation acts with the mean action ``tanh(μ)`` (Box) or the most likely action
  (Discrete), deterministically, as ODT evaluates; ``policy(..., sample=True, generator=g)``
  samples from the policy (the online collect step, ``offline_dt.methods.odt_replay``).

Hyperparameters: :class:`ODTOptions`, each a typed flag (``--odt.critic-weight 300``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods.base import (
    FinetuneMethod,
    SourceSpec,
    register,
)
from offline_dt.methods.critic import mlp, polyak_update, require_box_actions
from offline_dt.methods.dt import DTPolicy
from offline_dt.methods.odt_replay import ReplaySource, default_online_target
from offline_dt.nn.collectives import global_mean
from offline_dt.nn.config import DTConfig
from offline_dt.nn.encoders import state_encoder
from offline_dt.nn.transformer import DecisionTransformer

#: Data actions at the bounds are clamped to ``±(1 - ACTION_EPS)`` before ``atanh``.
ACTION_EPS = 1e-6
#: Adam's betas and epsilon for the temperature (ODT's: torch's defaults).
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass(frozen=True)
class ODTOptions:
    """ODT's own hyperparameters (``TrainConfig.method_options`` keys).

    Attributes:
        init_temperature: λ at the start (ODT: 0.1).
        target_entropy: β; ``auto`` is ``-act_dim`` for Box actions (ODT, SAC's heuristic)
            and ``discrete_entropy_fraction · log n`` for ``n`` Discrete actions.
        discrete_entropy_fraction: the fraction of the uniform policy's entropy ``log n``
            that ``auto`` targets for Discrete actions (0.5: e.g. probabilities 0.9 / 0.1 for
            two actions keep about that much; SAC-discrete's 0.98 is near-uniform).
        temperature_lr: Adam learning rate of ``log λ`` (ODT: 1e-4).
        log_std_min, log_std_max: bounds of the Gaussian's log standard deviation (ODT:
            -5, 2).
        critic_weight: η of the TD3 term (module docstring); 0 builds no critic (ODT).
        discount: γ of the critic's TD target.
        target_rate: Polyak rate of the target critic per update (TD3: 0.005).
        policy_noise, noise_clip: σ̃ and ĉ of TD3's target policy smoothing, in the
            ``[-1, 1]`` action scale (TD3: 0.2 and 0.5 for actions in ``[-1, 1]``).
        critic_hidden: width of the critic's two hidden layers (TD3: 256).
        reward_scale: critic rewards are ``r / rtg_scale * reward_scale``.
    """

    init_temperature: float = 0.1
    target_entropy: float | Literal["auto"] = "auto"
    discrete_entropy_fraction: float = 0.5
    temperature_lr: float = 1e-4
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    critic_weight: float = 0.0
    discount: float = 0.99
    target_rate: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    critic_hidden: int = 256
    reward_scale: float = 1000.0

    def validate(self) -> None:
        if not self.init_temperature > 0 or not self.temperature_lr >= 0:
            raise ValueError(f"method_options: odt init_temperature must be > 0 and "
                             f"temperature_lr >= 0, found {self.init_temperature} and "
                             f"{self.temperature_lr}")
        if not 0.0 <= self.discrete_entropy_fraction <= 1.0:
            raise ValueError(f"method_options: odt discrete_entropy_fraction must be in "
                             f"[0, 1], found {self.discrete_entropy_fraction}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"method_options: odt log_std_min must be < log_std_max, found "
                             f"{self.log_std_min} and {self.log_std_max}")
        self._validate_critic()

    def _validate_critic(self) -> None:
        for name in ("critic_weight", "policy_noise", "noise_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"method_options: odt {name} must be >= 0, found "
                                 f"{getattr(self, name)}")
        if not 0.0 <= self.discount < 1.0 or not 0.0 < self.target_rate <= 1.0:
            raise ValueError(f"method_options: odt discount must be in [0, 1) and target_rate "
                             f"in (0, 1], found {self.discount} and {self.target_rate}")
        if self.critic_hidden < 1 or not self.reward_scale > 0:
            raise ValueError(f"method_options: odt critic_hidden and reward_scale must be > 0, "
                             f"found {self.critic_hidden} and {self.reward_scale}")

    def target(self, cfg: DTConfig) -> float:
        """β for a network of shape ``cfg`` (module docstring)."""
        if self.target_entropy != "auto":
            return float(self.target_entropy)
        if cfg.discrete:
            return self.discrete_entropy_fraction * math.log(cfg.act_dim)
        return -float(cfg.act_dim)


# ---------------------------------------------------------------------------------- network
class TwinQ(nn.Module):
    """TD3's clipped double Q: two ``Q(s, a)`` MLPs (2 x ``hidden`` ReLU) as one, on
    normalised observations and ``[-1, 1]`` actions; ``(..., obs_dim)``, ``(..., act_dim)``
    → ``(..., 2)`` float32. A Dict or image observation (``obs_layout``) is first encoded to
    ``hidden`` features by the encoder its space chooses (``offline_dt.nn.encoders``)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int,
                 obs_layout: Any = None) -> None:
        super().__init__()
        self.encode = (None if obs_layout is None
                       else state_encoder(obs_dim, hidden, obs_layout))
        self.q = mlp((obs_dim if self.encode is None else hidden) + act_dim, hidden, 2)

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.encode is not None:
            observations = self.encode(observations)
        return self.q(torch.cat((observations, actions), -1))


class ODTNetwork(nn.Module):
    """The DT trunk, the log-std head (Box), the temperature and its Adam state.

    ``forward`` is the trunk's (:meth:`DecisionTransformer.forward`): ``tanh(μ)`` for Box, the
    logits for Discrete, so ``DTPolicy`` acts deterministically with it.
    """

    def __init__(self, cfg: DTConfig, options: ODTOptions) -> None:
        super().__init__()
        self.cfg = cfg
        self.options = options
        self.target_entropy = options.target(cfg)
        self.trunk = DecisionTransformer(cfg)
        self.log_std = None if cfg.discrete else nn.Linear(cfg.embed_dim, cfg.act_dim)
        self.critic: TwinQ | None = None
        self.critic_target: TwinQ | None = None
        if options.critic_weight > 0:
            self.critic = TwinQ(cfg.obs_dim, cfg.act_dim, options.critic_hidden, cfg.obs_layout)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(options.init_temperature)), requires_grad=False)
        for name in ("temperature_adam_m", "temperature_adam_v", "temperature_adam_t",
                     "entropy_gap"):
            self.register_buffer(name, torch.zeros(()))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The trunk's deterministic action (Box: ``tanh(μ)``) or logits (Discrete)."""
        return self.trunk(*args, **kwargs)

    def heads(self, returns_to_go: torch.Tensor, observations: torch.Tensor,
              actions: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The policy's parameters at every step, in float32 (outside autocast).

        Returns:
            Box: ``μ`` and ``log σ``, each ``(B, K, act_dim)``, ``log σ`` inside
            ``[log_std_min, log_std_max]``; Discrete: the logits ``(B, K, n)`` and None.
        """
        h = self.trunk.token_states(returns_to_go, observations, actions, timesteps, mask)
        h = h[:, :, 1].float()  # the state tokens: a_t is predicted from s_t
        with torch.autocast(h.device.type, enabled=False):
            mean = self.trunk.predict_action(h)
            if self.log_std is None:
                return mean, None
            lo, hi = self.options.log_std_min, self.options.log_std_max
            log_std = lo + 0.5 * (hi - lo) * (torch.tanh(self.log_std(h)) + 1.0)
        return mean, log_std


# ---------------------------------------------------------------------------------- the math
def squashed_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
                      ) -> torch.Tensor:
    """``log π(tanh u)`` of the tanh-squashed diagonal Gaussian, summed over action dims.

    ``Σ_j [log N(u_j; μ_j, σ_j) - log(1 - tanh² u_j)]``, with the stable
    ``log(1 - tanh² u) = 2 (log 2 - u - softplus(-2u))``. Shapes ``(..., act_dim)`` →
    ``(...)``.
    """
    normal = -0.5 * ((u - mean) / log_std.exp()).square() - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (normal - log_det).sum(-1)


def log_likelihood_and_entropy(mean: torch.Tensor, log_std: torch.Tensor | None,
                               actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step ``log π(a_t)`` of the data ``actions`` and the entropy estimate, ``(B, K)``
    float32 each, from the policy's parameters (:meth:`ODTNetwork.heads`; module docstring:
    one reparameterised sample for the squashed Gaussian, exact for the categorical)."""
    if log_std is None:
        logp = F.log_softmax(mean, -1)
        data = logp.gather(-1, actions[..., None]).squeeze(-1)
        return data, -(logp.exp() * logp).sum(-1)
    a = actions.float().clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
    data = squashed_log_prob(torch.atanh(a), mean, log_std)
    u = mean + log_std.exp() * torch.randn_like(mean)  # reparameterised sample
    return data, -squashed_log_prob(u, mean, log_std)


def odt_loss(net: ODTNetwork, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-E[log π(a)] - λ H`` over the real steps (λ detached), and the logged scalars
    ``nll``, ``entropy``, ``temperature``. Records ``H - β`` in ``net.entropy_gap`` for the
    temperature step (:func:`temperature_step`). With a critic (``critic_weight`` > 0) the
    loss adds the critic's TD loss and the actor's Q term (:func:`td3_terms`)."""
    mean, log_std = net.heads(batch.returns_to_go, batch.observations, batch.actions,
                              batch.timesteps, batch.mask)
    data, entropy = log_likelihood_and_entropy(mean, log_std, batch.actions)
    m = batch.mask
    nll, h = -data[m].mean(), entropy[m].mean()
    temperature = net.log_temperature.detach().exp()
    with torch.no_grad():
        net.entropy_gap.copy_(global_mean(h.detach()) - net.target_entropy)
    loss = nll - temperature * h
    extras = {"nll": nll.detach(), "entropy": h.detach(), "temperature": temperature}
    if net.critic is not None:
        q_loss, q_term, critic_extras = td3_terms(net, batch, mean)
        loss = loss + q_loss + q_term
        extras.update(critic_extras)
    return loss, extras


def td3_terms(net: ODTNetwork, batch: Batch, mean: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The critic's TD loss and the actor's normalised Q term (module docstring).

    Args:
        net: an :class:`ODTNetwork` with a critic.
        batch: windows with ``rewards`` and ``terminals``.
        mean: ``(B, K, act_dim)`` the actor's pre-tanh means ``μ`` on ``batch``.

    Returns:
        (TD loss over the steps with a target, ``-η E[Q(s, tanh μ)] / E|Q|``, logged scalars
        ``q_loss`` and ``q_mean``).

    Raises:
        ValueError: the batch has no rewards or terminals.
    """
    if batch.rewards is None or batch.terminals is None:
        raise ValueError("odt's critic needs rewards and terminals in the batch "
                         "(offline_dt.data.windows.WindowSampler provides them)")
    o, m = net.options, batch.mask
    q = net.critic(batch.observations, batch.actions.float()).float()
    with torch.no_grad():
        a_next = torch.tanh(mean[:, 1:])
        noise = (torch.randn_like(a_next) * o.policy_noise).clamp(-o.noise_clip, o.noise_clip)
        a_next = (a_next + noise).clamp(-1.0, 1.0)
        q_next = net.critic_target(batch.observations[:, 1:], a_next).float().min(-1).values
        q_next = torch.cat((q_next, torch.zeros_like(q_next[:, :1])), 1)
        valid = torch.cat((m[:, 1:], batch.terminals[:, -1:]), 1) & m
        bootstrap = (~batch.terminals).float() * o.discount
        y = batch.rewards * o.reward_scale + bootstrap * q_next
    td = (q - y[..., None]).square().sum(-1)
    q_loss = td[valid].mean() if bool(valid.any()) else td.sum() * 0.0
    params = {k: p.detach() for k, p in net.critic.named_parameters()}
    q_pi = functional_call(net.critic, params, (batch.observations, torch.tanh(mean)))
    q_pi = q_pi.float().min(-1).values[m]
    scale = global_mean(q_pi.abs().detach()).clamp(min=1e-6)  # over the global batch (DDP)
    q_term = -o.critic_weight * q_pi.mean() / scale
    return q_loss, q_term, {"q_loss": q_loss.detach(), "q_mean": q_pi.mean().detach()}


@torch.no_grad()
def temperature_step(net: ODTNetwork) -> None:
    """One Adam step (Kingma & Ba 2015) of ``log λ`` on ``J = λ (H - β)``, whose gradient is
    ``λ · net.entropy_gap``: ``λ`` grows while the entropy is below β, shrinks above it."""
    lr = net.options.temperature_lr
    (b1, b2), t = ADAM_BETAS, net.temperature_adam_t.add_(1.0)
    grad = net.log_temperature.exp() * net.entropy_gap
    net.temperature_adam_m.lerp_(grad, 1.0 - b1)
    net.temperature_adam_v.lerp_(grad.square(), 1.0 - b2)
    m_hat = net.temperature_adam_m / (1.0 - b1 ** t)
    v_hat = net.temperature_adam_v / (1.0 - b2 ** t)
    net.log_temperature.sub_(lr * m_hat / (v_hat.sqrt() + ADAM_EPS))


@register
class ODT(FinetuneMethod):
    """Online Decision Transformer's stochastic policy and entropy-regularised loss (module
    docstring); ``offline-dt finetune`` fine-tunes its checkpoints online."""

    name = "odt"
    options_class = ODTOptions
    description = ("Online Decision Transformer: a stochastic DT with an entropy constraint, "
                   "fine-tuned online (Zheng et al. 2022)")
    conditions_on_return = True

    def exploration_target(self, dataset_info: Mapping[str, Any]) -> float:
        """``g_online`` (:func:`~offline_dt.methods.odt_replay.default_online_target`)."""
        return default_online_target(dataset_info.get("best_return"),
                                     dataset_info.get("ref_max_score"))

    def make_source(self, spec: SourceSpec) -> ReplaySource:
        return ReplaySource(spec)

    def build(self, cfg: DTConfig, options: Any = None) -> ODTNetwork:
        """Raises ValueError: a critic (``critic_weight`` > 0) for Discrete actions."""
        opts = self.options(options)
        if opts.critic_weight > 0:
            require_box_actions(cfg, f"odt's TD3 term (critic_weight={opts.critic_weight})",
                                "--odt.critic-weight 0 (method_options critic_weight=0.0)")
        return ODTNetwork(cfg, opts)

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return odt_loss(net, batch)

    def clip_gradients(self, net: nn.Module, max_norm: float) -> None:
        """The trunk and log-std head only (ODT clips the model, not the temperature; TD3
        does not clip its critic)."""
        actor = [p for n, p in net.named_parameters()
                 if p.requires_grad and not n.startswith("critic.")]
        torch.nn.utils.clip_grad_norm_(actor, max_norm)

    @torch.no_grad()
    def after_step(self, net: nn.Module) -> None:
        """The temperature's Adam step; the target critic's Polyak update."""
        temperature_step(net)
        if net.critic is not None:
            polyak_update(net.critic_target, net.critic, net.options.target_rate)

    def warm_start(self, net: nn.Module, payload: dict[str, Any]) -> bool:
        """All of a checkpoint's networks, or, for a run with a critic from an ``odt``
        checkpoint without one (fine-tuning with TD3 gradients from a plain ODT), the actor
        and temperature under a fresh critic; then False, so the optimizer and schedule start
        fresh (their state has no critic parameters).

        Raises:
            ValueError: the checkpoint's networks do not fit ``net`` otherwise.
        """
        model, own = payload["model"], net.state_dict()
        fresh = [k for k in own if k not in model]
        if (net.critic is None or not fresh or any(k not in own for k in model)
                or any(not k.startswith("critic") for k in fresh)):
            return super().warm_start(net, payload)
        try:
            net.load_state_dict(model, strict=False)
        except RuntimeError as e:
            raise ValueError(f"init checkpoint: its networks do not fit this run's config "
                             f"({e})") from e
        return False

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, sample: bool = False,
               generator: torch.Generator | None = None, **settings: Any) -> DTPolicy:
        """The deterministic policy (``tanh(μ)``, or the argmax) toward ``target_return``;
        with ``sample=True`` a :class:`SampledPolicy` drawing from ``generator``.

        Raises:
            ValueError: no target return; unknown settings; ``kv_cache`` (odt recomputes its
                window).
        """
        if target_return is None:
            raise ValueError("method 'odt' acts toward a target return; pass target_return")
        if settings:
            raise ValueError(f"odt: unknown inference settings {sorted(settings)}; known: "
                             "sample, generator")
        if kv_cache:
            raise ValueError("odt acts by recomputing its window; kv_cache is not supported")
        if sample:
            return SampledPolicy(net, normalizer, target_return, generator=generator)
        return DTPolicy(net, normalizer, target_return)


class SampledPolicy(DTPolicy):
    """ODT acting stochastically (the online collect step): at every step the action is drawn
    from the policy at the newest state token, ``tanh(μ + σ ε)`` (Box) or a categorical draw
    (Discrete), with noise from ``generator`` (CPU; a fresh one seeded 0 when None), so a
    collect step is reproducible from the generator's state alone. Otherwise as
    :class:`DTPolicy` (the returns-to-go decrement from ``target_return``)."""

    def __init__(self, net: ODTNetwork, normalizer: Normalizer, target_return: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(net, normalizer, target_return)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def _predict(self, i: int) -> torch.Tensor:
        n = self.length
        mean, log_std = self.model.heads(self.rtg_buf[:, :n], self.obs_buf[:, :n],
                                         self.act_buf[:, :n], self.ts_buf[:, :n])
        mean = mean[:, -1]
        if log_std is None:  # DTPolicy takes the argmax: a one-hot of the draw
            probs = F.softmax(mean, -1).cpu()
            draw = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
            return F.one_hot(draw, self.cfg.act_dim).to(self.device, torch.float32)
        eps = torch.randn(mean.shape, generator=self.generator).to(self.device)
        return torch.tanh(mean + log_std[:, -1].exp() * eps)
