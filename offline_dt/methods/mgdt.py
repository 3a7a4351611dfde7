"""Multi-Game Decision Transformer (Lee et al. 2022, "Multi-Game Decision Transformers";
reference code ``google-research/google-research/multi_game_dt``): one transformer trained on
a suite of datasets of several envs (``offline_dt.data.suite``), acting in any of them.

- Tokens (Section 3.2, Figure 2): per timestep ``(s_t, R_t, a_t)``: the observation first,
  then the return-to-go as a *token* (a bin), then the action; the return is predicted from
  the observation token (``P(R_t | s_<=t, ...)``) and the action from the return token
  (``P(a_t | R_t, s_t, ...)``). MGDT's reward tokens are left out.
- Returns: every env's returns-to-go are divided by its own ``rtg_scale`` (its normaliser)
  and mapped linearly to ``n_bins`` uniform bins (120 by default, as MGDT's) over the range
  the env's data spans, ``[min, max]`` of its scaled returns-to-go (fitted by
  :meth:`MGDT.fit` and held as buffers, so the checkpoint carries it); MGDT's fixed range
  ``[-20, 100]`` fits Atari's clipped rewards, a per-env data range fits envs whose returns
  differ in sign and size (Pendulum ~ -1000..0, CartPole 0..500). Values outside are clipped.
- Embedding: JAT's shared padded embedding rather than per-env adapters (Gallouédec et al.
  2024, "Jack of All Trades"): observations zero-padded to the suite's widest, one linear;
  Box actions zero-padded to the widest Box action, one linear; Discrete actions through one
  token table of the most actions; a learned env embedding added to every token (option
  ``env_embedding``). One set of weights serves every env and its size does not grow with
  the envs; padding is always zero, so it never reaches an env's real columns.
- Heads: a return head (``n_bins`` logits), a Box head (tanh, the widest Box action; the
  loss and the policy read the env's own columns) and a Discrete head (the most actions;
  logits beyond the env's own are masked).
- Loss: cross-entropy of the return bins plus the action loss (MSE of the env's Box columns,
  or cross-entropy of its Discrete action), each over the real steps of every window.
- Acting (Section 3.4, "expert action inference"): at each step the return distribution
  predicted from the observation is reweighted toward high returns, ``P(R | expert) ∝ P(R)
  exp(kappa · z(R))`` with ``z(R)`` in [0, 1] the bin's position in the env's range (kappa 10,
  MGDT's), a return token is sampled from it, and the action is predicted from that token
  (:func:`expert_return_probs`). The alternative setting conditions on a target return as the
  Decision Transformer does (binned, decremented by each reward), the target chosen on
  validation episodes (``inference_candidates``).

Evaluation acts in one env of the suite (``offline-dt evaluate --env-id ENV``): the
checkpoint's entry for that env gives its normaliser and facts and :meth:`MGDT.for_env` its
network (:class:`EnvNet`). Observations must be flat Boxes; actions Box or Discrete.
Options: :class:`MGDTOptions`; the policy: ``offline_dt.methods.mgdt_policy``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from offline_dt.data.suite import Sampling, Suite, SuiteBatch, SuiteSampler, env_weights, widths
from offline_dt.data.windows import Normalizer, returns_to_go
from offline_dt.methods.base import BatchSource, Method, RunConfig, WindowSource, register
from offline_dt.methods.mgdt_policy import MGDTPolicy, expert_return_probs
from offline_dt.nn.config import DTConfig
from offline_dt.nn.dropout import Dropout
from offline_dt.nn.transformer import Block, DecisionTransformer

#: The acting rules (:class:`MGDTOptions`, ``inference_candidates``).
Inference = Literal["expert", "target", "both"]


@dataclass(frozen=True)
class MGDTOptions:
    """MGDT's hyperparameters (``TrainConfig.method_options``); defaults are MGDT's where it
    has one.

    Attributes:
        n_bins: return bins per env (MGDT: 120).
        kappa: the expert-return inverse temperature, ``P(R | expert) ∝ P(R) exp(kappa z)``
            (MGDT: 10; 0 samples the predicted distribution as it is).
        return_weight: weight of the return cross-entropy in the loss (the action loss has 1).
        sampling: how a batch's windows are shared among the suite's envs
            (``offline_dt.data.suite.env_weights``): ``balanced`` (every env the same share of
            the updates), ``proportional`` (to its transitions) or ``temperature``.
        temperature: T of ``temperature`` sampling (weights ∝ transitions^(1/T)).
        env_embedding: add a learned embedding of the env to every token.
        inference: the acting settings evaluation chooses among on validation episodes:
            ``expert`` (expert-return sampling), ``target`` (a target return, as DT), or
            ``both``.
    """

    n_bins: int = 120
    kappa: float = 10.0
    return_weight: float = 1.0
    sampling: Sampling = "balanced"
    temperature: float = 2.0
    env_embedding: bool = True
    inference: Inference = "both"

    def validate(self) -> None:
        if self.n_bins < 2 or self.kappa < 0 or self.return_weight < 0 or not (
                self.temperature > 0):
            raise ValueError(f"method_options: mgdt needs n_bins >= 2, kappa >= 0, "
                             f"return_weight >= 0 and temperature > 0, found {self.n_bins}, "
                             f"{self.kappa}, {self.return_weight}, {self.temperature}")


class MGDTNetwork(nn.Module):
    """The transformer over ``(s_t, R_t, a_t)`` tokens of every env of ``cfg.tasks`` (module
    docstring). Buffers: ``discrete`` ``(E,) bool``, ``act_width`` ``(E,) int64`` (Box width,
    or number of actions), ``obs_width`` ``(E,) int64``, ``return_low``/``return_high`` ``(E,)
    float32`` (scaled returns-to-go, set by :meth:`MGDT.fit`), ``fitted``.

    Raises:
        ValueError: ``cfg.tasks`` is None (a network of one env) or ``cfg.attention`` is not
            ``window``.
    """

    def __init__(self, cfg: DTConfig, options: MGDTOptions) -> None:
        super().__init__()
        if not cfg.tasks or cfg.attention != "window":
            raise ValueError(f"mgdt: the network needs DTConfig.tasks (the suite's envs) and "
                             f"attention 'window', found {cfg.tasks!r}, {cfg.attention!r}")
        self.cfg, self.options = cfg, options
        obs_w, box_w, n_act = widths(cfg.tasks)
        d, e = cfg.embed_dim, len(cfg.tasks)
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.embed_state = nn.Linear(obs_w, d)
        self.embed_return = nn.Embedding(options.n_bins, d)
        self.embed_box = nn.Linear(box_w, d)
        self.embed_discrete = nn.Embedding(n_act, d)
        self.embed_env = nn.Embedding(e, d) if options.env_embedding else None
        self.embed_ln = nn.LayerNorm(d)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.predict_return = nn.Linear(d, options.n_bins)
        self.predict_box = nn.Linear(d, box_w)
        self.predict_discrete = nn.Linear(d, n_act)
        self.apply(DecisionTransformer._init_weights)
        for name, p in self.named_parameters():  # GPT-2's residual scaling, as DT's
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        tasks = cfg.tasks
        self.register_buffer("discrete", torch.tensor([bool(t["discrete"]) for t in tasks]))
        self.register_buffer("act_width", torch.tensor([int(t["act_dim"]) for t in tasks]))
        self.register_buffer("obs_width", torch.tensor([int(t["obs_dim"]) for t in tasks]))
        self.register_buffer("return_low", torch.zeros(e))
        self.register_buffer("return_high", torch.ones(e))
        self.register_buffer("fitted", torch.tensor(False))

    def return_bins(self, returns: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """``(B, ...) int64`` bins of scaled returns-to-go ``returns`` ``(B, ...)`` of the
        envs ``env`` ``(B,)``: ``round((R - low) / (high - low) · (n - 1))``, clipped to
        ``[0, n - 1]``."""
        shape = (-1,) + (1,) * (returns.dim() - 1)
        low, high = self.return_low[env].view(shape), self.return_high[env].view(shape)
        z = (returns - low) / (high - low).clamp(min=1e-6)
        n = self.options.n_bins
        return (z * (n - 1)).round().clamp(0, n - 1).long()

    def forward(self, observations: torch.Tensor, box_actions: torch.Tensor,
                discrete_actions: torch.Tensor, return_bins: torch.Tensor,
                timesteps: torch.Tensor, env: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return logits, Box actions and Discrete logits at every step of ``(B, K)`` windows.

        Args:
            observations: ``(B, K, obs_w) float32`` normalised, zero-padded (``SuiteBatch``).
            box_actions: ``(B, K, box_w) float32`` in [-1, 1]; discrete_actions: ``(B, K)
                int64`` (each row reads the one of its env's kind).
            return_bins: ``(B, K) int64`` return tokens (:meth:`return_bins`).
            timesteps: ``(B, K) int64``; env: ``(B,) int64``; mask: ``(B, K) bool`` or None.

        Returns:
            ``(B, K, n_bins)`` return logits from each observation token; from each return
            token ``(B, K, box_w)`` tanh Box actions and ``(B, K, n_act)`` Discrete logits,
            those beyond the env's actions set to -1e9.
        """
        b, k = timesteps.shape
        t_emb = self.embed_timestep(timesteps)
        if self.embed_env is not None:
            t_emb = t_emb + self.embed_env(env)[:, None]
        s = self.embed_state(observations) + t_emb
        r = self.embed_return(return_bins) + t_emb
        is_d = self.discrete[env][:, None, None]
        a = torch.where(is_d, self.embed_discrete(discrete_actions),
                        self.embed_box(box_actions)) + t_emb
        x = torch.stack((s, r, a), dim=2).reshape(b, 3 * k, self.cfg.embed_dim)
        x = self.drop(self.embed_ln(x))
        attn_mask = None
        if mask is not None and not bool(mask.all()):
            attn_mask = DecisionTransformer._attention_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        h = self.ln_f(x).reshape(b, k, 3, self.cfg.embed_dim)
        ret_logits = self.predict_return(h[:, :, 0])
        box = torch.tanh(self.predict_box(h[:, :, 1]))
        n_valid = torch.where(self.discrete, self.act_width, torch.ones_like(self.act_width))
        cols = torch.arange(self.predict_discrete.out_features, device=env.device)
        valid = cols[None] < n_valid[env][:, None]  # (B, n_act)
        disc = self.predict_discrete(h[:, :, 1]).masked_fill(~valid[:, None], -1e9)
        return ret_logits, box, disc


class EnvNet(nn.Module):
    """An :class:`MGDTNetwork` acting in one env of its suite (``index``): what
    :meth:`MGDT.for_env` gives evaluation. ``cfg`` is the network's."""

    def __init__(self, net: MGDTNetwork, index: int) -> None:
        super().__init__()
        if not 0 <= index < len(net.cfg.tasks):
            raise ValueError(f"mgdt: env index {index} outside the suite's "
                             f"{len(net.cfg.tasks)} envs")
        self.net, self.index, self.cfg = net, int(index), net.cfg
        self.task = net.cfg.tasks[index]


def suite_loss(net: MGDTNetwork, batch: SuiteBatch, return_weight: float
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MGDT's loss on a :class:`SuiteBatch`: ``action + return_weight · return_ce``, each a
    mean over the real steps (``batch.mask``): the action term is the MSE over the env's own
    Box columns or the cross-entropy of its Discrete action; ``return_ce`` the cross-entropy
    of the return bins. Extras: ``action_loss``, ``return_ce``."""
    bins = net.return_bins(batch.returns_to_go, batch.env)
    ret, box, disc = net(batch.observations, batch.box_actions, batch.discrete_actions, bins,
                         batch.timesteps, batch.env, batch.mask)
    m = batch.mask.float()
    count = m.sum()
    ret_ce = (F.cross_entropy(ret.float().flatten(0, 1), bins.flatten(), reduction="none")
              * m.flatten()).sum() / count
    is_d = net.discrete[batch.env].float()[:, None]  # (B, 1)
    width = torch.where(net.discrete, torch.ones_like(net.act_width), net.act_width)[batch.env]
    cols = torch.arange(box.shape[-1], device=box.device)
    col_mask = (cols[None] < width[:, None]).float()[:, None]  # (B, 1, box_w)
    sq = ((box.float() - batch.box_actions).square() * col_mask).sum(-1) / col_mask.sum(-1)
    ce = F.cross_entropy(disc.float().flatten(0, 1), batch.discrete_actions.flatten(),
                         reduction="none").view_as(m)
    action = ((is_d * ce + (1 - is_d) * sq) * m).sum() / count
    return action + return_weight * ret_ce, {"action_loss": action.detach(),
                                             "return_ce": ret_ce.detach()}


def require_flat(suite: Suite, method: str = "mgdt") -> None:
    """Raises ValueError: a dataset of ``suite`` has observations other than a flat Box or
    actions neither Box nor Discrete (names the dataset, the spaces and ``method``)."""
    for ds in suite.datasets:
        obs, act = ds.observation_space, ds.action_space
        if ds.layout is not None or not isinstance(obs, gym.spaces.Box) or len(
                obs.shape) != 1 or not isinstance(act, gym.spaces.Box | gym.spaces.Discrete):
            raise ValueError(f"{ds.source}: {method} takes flat Box observations and Box or "
                             f"Discrete actions (Dict and image observations are refused); "
                             f"found {obs} and {act}")


@register
class MGDT(Method):
    """One Decision Transformer over a suite of envs, acting toward expert returns
    (Lee et al. 2022)."""

    name = "mgdt"
    description = ("Multi-Game Decision Transformer (Lee et al. 2022): one model over a "
                   "suite of envs, expert-return inference")
    conditions_on_return = True
    multi_task = True
    in_reproduce = False
    options_class: ClassVar[type | None] = MGDTOptions

    def build(self, cfg: DTConfig, options: Any = None) -> nn.Module:
        return MGDTNetwork(cfg, options or MGDTOptions())

    def offline_source(self, dataset: Any, normalizer: Normalizer, config: RunConfig,
                       device: torch.device) -> BatchSource | None:
        if not isinstance(dataset, Suite):
            raise ValueError("mgdt trains on a suite (offline_dt.data.suite), found "
                             f"{type(dataset).__name__}")
        require_flat(dataset)
        opts = config.method_options or MGDTOptions()
        weights = env_weights([int(d.episode_starts[-1]) for d in dataset.datasets],
                              opts.sampling, opts.temperature)
        return WindowSource(SuiteSampler(  # type: ignore[arg-type]
            dataset, config.context_length, config.max_timestep, weights, seed=config.seed,
            device=device))

    def fit(self, net: nn.Module, dataset: Any, normalizer: Normalizer) -> None:
        """Each env's return range: min and max of its scaled returns-to-go (in the row of
        its env in the network, ``Suite.index``)."""
        for j, (ds, norm) in enumerate(zip(dataset.datasets, dataset.normalizers,
                                           strict=True)):
            i = dataset.index(j)
            rtg = returns_to_go(ds.rewards, ds.episode_starts) / norm.rtg_scale
            net.return_low[i] = float(rtg.min())
            net.return_high[i] = float(max(rtg.max(), rtg.min() + 1e-6))
        net.fitted.fill_(True)

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return suite_loss(net, batch, net.options.return_weight)

    def for_env(self, net: nn.Module, index: int) -> nn.Module:
        return EnvNet(net, index)

    def inference_candidates(self, net: nn.Module) -> list[dict[str, Any]]:
        mode = getattr(net, "net", net).options.inference
        return [{"inference": m} for m in ("expert", "target") if mode in (m, "both")]

    def uses_target(self, settings: Mapping[str, Any]) -> bool:
        return settings.get("inference", "expert") == "target"

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, inference: str = "expert") -> MGDTPolicy:
        if not isinstance(net, EnvNet):
            raise ValueError("mgdt acts in one env of its suite: pass MGDT.for_env(net, i) "
                             "(evaluation does, from --env-id)")
        if inference == "target" and target_return is None:
            raise ValueError("mgdt inference 'target' acts toward a target return; pass "
                             "target_return")
        return MGDTPolicy(net, normalizer, target_return if inference == "target" else None,
                          kappa=net.net.options.kappa)


__all__ = ["MGDT", "EnvNet", "MGDTNetwork", "MGDTOptions", "expert_return_probs",
           "suite_loss"]
