"""Trajectory Transformer (Janner, Li and Levine 2021, "Offline Reinforcement Learning as One
Big Sequence Modeling Problem"; reference code ``jannerm/trajectory-transformer``): a GPT over
discretised transitions, trained by cross-entropy on every token, acting by beam search.

- Tokens (Section 3.1): every dimension of a transition is its own token, in the order
  ``(s^1 .. s^n, a^1 .. a^m, r, V)``: observation dimensions, action dimensions (a Discrete
  action is one token, its index), the reward and the value ``V_t = sum_{k>=1} gamma^(k-1)
  r_{t+k}``, the discounted return-to-go after ``r_t`` (the reference's ``values_segmented``,
  gamma 0.99), so a plan of H steps is worth ``sum_h gamma^h r_h + gamma^H V_{H-1}``. Each
  continuous dimension is discretised on its own (``offline_dt.data.discretise``: N = 100
  quantile bins by default), fitted on the dataset by :meth:`TT.fit` and held as buffers of
  the network, so the checkpoint carries it and evaluation never refits. Each dimension has
  its own embedding rows (the reference's ``offset_tokens``) and its own output head (its
  ``EinLinear``): the head of the token that is predicted next.
- Loss (Section 3.2): cross-entropy of every next token, action tokens weighted 5 (the
  reference's ``action_weight``). Termination (the reference's ``SequenceDataset``): a window
  (``context_length`` transitions from a uniform start) that runs past a *terminal* step
  continues with a stop token in every dimension, which is predicted too (the value after the
  end is 0); past a time limit or the end of the data (no terminal) the window is padding and
  masked out of the loss.
- Attention: no token attends to a value token (the reference masks their columns: the values
  of the real context are unknown when acting). The reference crops its context to the last 5
  transitions and recomputes every token; a cache cannot reproduce a recomputed crop, so here
  the context is a band: every token attends to itself and the last ``context * (D - 1) - 1``
  non-value tokens before it, at every layer (``offline_dt.nn.attention`` in band mode,
  Longformer's sliding window), and the model's position signal is the episode timestep of
  each transition (as the Decision Transformer's) instead of a position in the cropped block.
  Acting from the key/value cache then equals recomputation exactly
  (``offline_dt.methods.tt_planner``).
- Acting: TT's beam search (``offline_dt.methods.tt_planner.TTPolicy``).

Observations must be a flat Box (refused otherwise: Dict and image observations are not
discretised per dimension here); actions Box or Discrete. Options: :class:`TTOptions`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.discretise import encode, fit_bins
from offline_dt.data.windows import Normalizer, timesteps_in_episode
from offline_dt.methods.base import BatchSource, Method, RunConfig, register
from offline_dt.methods.tt_planner import PLANNER_SETTINGS, TTPolicy
from offline_dt.nn.config import DTConfig
from offline_dt.nn.dropout import Dropout
from offline_dt.nn.transformer import Block


@dataclass(frozen=True)
class TTOptions:
    """TT's hyperparameters (``TrainConfig.method_options``); defaults are the reference's
    (``config/offline.py``) where it has one.

    Attributes:
        n_bins: N, bins per continuous dimension.
        bins: bin edges: ``quantile`` (TT's) or ``uniform``.
        decode: a bin decodes to the ``midpoint`` of its edges (TT's) or the ``mean`` of its
            data.
        discount: gamma of the value tokens and of a plan's value.
        action_weight: cross-entropy weight of the action tokens.
        reward_weight: cross-entropy weight of the reward tokens.
        value_weight: cross-entropy weight of the value tokens.
        context: transitions each token attends to (the band, at every layer).
        horizon: planning horizon H, transitions.
        beam_width: beams kept per env.
        expansions: candidates sampled per beam at every planned transition.
        action_top_p: action tokens are sampled from the smallest set of this probability
            mass.
        plan_every: env steps between plans (the plan's next actions are taken in between).
        other_horizons, other_beam_widths, other_plan_every: more values of ``horizon``,
            ``beam_width`` and ``plan_every`` that evaluation may choose on validation
            episodes, each a candidate with that one setting changed (e.g.
            ``--tt.other-horizons 5 10``).
    """

    n_bins: int = 100
    bins: Literal["quantile", "uniform"] = "quantile"
    decode: Literal["midpoint", "mean"] = "midpoint"
    discount: float = 0.99
    action_weight: float = 5.0
    reward_weight: float = 1.0
    value_weight: float = 1.0
    context: int = 5
    horizon: int = 15
    beam_width: int = 128
    expansions: int = 2
    action_top_p: float = 0.6
    plan_every: int = 1
    other_horizons: tuple[int, ...] = ()
    other_beam_widths: tuple[int, ...] = ()
    other_plan_every: tuple[int, ...] = ()

    def validate(self) -> None:
        ints = {k: getattr(self, k) for k in ("n_bins", "context", *PLANNER_SETTINGS,
                                              "expansions")}
        if min(ints.values()) < 1 or not 0.0 <= self.discount <= 1.0 or not (
                0.0 < self.action_top_p <= 1.0):
            raise ValueError(f"method_options: tt needs {sorted(ints)} >= 1, discount in "
                             f"[0, 1] and action_top_p in (0, 1], found {ints}, "
                             f"{self.discount}, {self.action_top_p}")
        others = (*self.other_horizons, *self.other_beam_widths, *self.other_plan_every)
        if others and min(others) < 1:
            raise ValueError(f"method_options: tt other_horizons, other_beam_widths and "
                             f"other_plan_every must hold integers >= 1, found {others}")


# ---------------------------------------------------------------------------------- tokens
def discounted_values(rewards: np.ndarray, episode_starts: np.ndarray, discount: float
                      ) -> np.ndarray:
    """``(N,) float64`` value tokens: ``V_t = sum_{k>=1} discount^(k-1) r_{t+k}`` within the
    episode (0 at its last step), the discounted return-to-go of the next step.

    Args:
        rewards: ``(N,)``; episode_starts: ``(E + 1,) int64`` CSR offsets.
    """
    lengths = np.diff(episode_starts)
    steps = timesteps_in_episode(episode_starts)
    grid = np.zeros((len(lengths), int(lengths.max()) + 1))
    episode = np.repeat(np.arange(len(lengths)), lengths)
    grid[episode, steps] = rewards
    ret = np.zeros_like(grid)  # ret[:, t] = discounted return-to-go from t
    for t in range(grid.shape[1] - 2, -1, -1):
        ret[:, t] = grid[:, t] + discount * ret[:, t + 1]
    return ret[episode, steps + 1]


def layout(obs_dim: int, act_tokens: int) -> dict[str, slice]:
    """The token slots of one transition: ``obs``, ``act``, ``reward``, ``value``."""
    a = obs_dim + act_tokens
    return {"obs": slice(0, obs_dim), "act": slice(obs_dim, a), "reward": slice(a, a + 1),
            "value": slice(a + 1, a + 2)}


@dataclass
class TTBatch:
    """Windows of whole transitions in env units (``TTWindows``), ``(B, K, ...)``.

    Attributes:
        observations: ``(B, K, obs_dim) float32``; actions: ``(B, K, act_dim) float32`` or
            ``(B, K) int64``; rewards, values: ``(B, K) float32`` (zero on padding).
        timesteps: ``(B, K) int64`` episode timesteps (counting on past the end, clamped to
            the timestep table).
        mask: ``(B, K) bool`` real steps; stopped: ``(B, K) bool`` steps after a terminal one
            (stop tokens, in the loss). Neither: padding after a truncation (masked).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    values: torch.Tensor
    timesteps: torch.Tensor
    mask: torch.Tensor
    stopped: torch.Tensor


def require_flat_box(dataset: OfflineDataset) -> None:
    """Raises ValueError: ``dataset``'s observations are not a flat Box or its actions are
    neither Box nor Discrete (names the dataset and the space found)."""
    obs, act = dataset.observation_space, dataset.action_space
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1 or not isinstance(
            act, (gym.spaces.Box, gym.spaces.Discrete)):
        raise ValueError(f"{dataset.source}: tt discretises flat Box observations and Box or "
                         f"Discrete actions per dimension; found observation space {obs} and "
                         f"action space {act} (Dict and image observations are refused)")


class TTWindows(BatchSource):
    """Windows of ``k`` whole transitions of ``dataset`` (:class:`TTBatch`): an episode drawn
    with probability proportional to its length, a start uniform in it, right padding past
    its end (the reference's ``SequenceDataset``). The draw is on a CPU generator as
    ``offline_dt.data.windows.WindowSampler``'s (checkpointed by the loop)."""

    def __init__(self, dataset: OfflineDataset, k: int, max_timestep: int, discount: float,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        require_flat_box(dataset)
        dev = self.device = torch.device(device)
        starts = dataset.episode_starts
        self.k, self.max_timestep, self.discrete = int(k), int(max_timestep), dataset.discrete
        arrays = {
            "obs": dataset.observations.astype(np.float32),
            "actions": dataset.actions.astype(np.int64 if self.discrete else np.float32),
            "rewards": dataset.rewards.astype(np.float32),
            "values": discounted_values(dataset.rewards, starts, discount).astype(np.float32),
            "ep_start": starts[:-1].copy(),
            "ep_terminal": dataset.terminals[starts[1:] - 1].astype(bool),
        }
        for name, array in arrays.items():
            setattr(self, name, torch.from_numpy(np.ascontiguousarray(array)).to(dev))
        self.ep_len = torch.from_numpy(dataset.episode_lengths.copy())
        self.ep_len_on_device = self.ep_len.to(dev)
        self.ep_prob = self.ep_len.double() / self.ep_len.sum()
        self.generator = torch.Generator().manual_seed(seed)

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[TTBatch, float]:
        ep = torch.multinomial(self.ep_prob, batch_size, replacement=True,
                               generator=self.generator)
        length = self.ep_len[ep]
        start = (torch.rand(batch_size, generator=self.generator) * length).long()
        valid = torch.clamp(length - start, max=self.k)
        lo, hi = batch_size * rank // world_size, batch_size * (rank + 1) // world_size
        share = 1.0 if world_size == 1 else float(valid[lo:hi].sum()) / float(valid.sum())
        return self.windows(ep[lo:hi].to(self.device), start[lo:hi].to(self.device)), share

    def windows(self, ep: torch.Tensor, start: torch.Tensor) -> TTBatch:
        """The :class:`TTBatch` of the ``k`` transitions from step ``start`` ``(b,) int64`` of
        episodes ``ep`` ``(b,) int64`` (on the source's device)."""
        length = self.ep_len_on_device[ep]
        step = start[:, None] + torch.arange(self.k, device=self.device)  # (b, K)
        real = step < length[:, None]
        idx = self.ep_start[ep, None] + torch.minimum(step, length[:, None] - 1)
        m = real.float()
        return TTBatch(
            observations=self.obs[idx] * m[..., None],
            actions=self.actions[idx] * (real if self.discrete else m[..., None]),
            rewards=self.rewards[idx] * m, values=self.values[idx] * m,
            timesteps=step.clamp(max=self.max_timestep - 1), mask=real,
            stopped=~real & self.ep_terminal[ep, None])


# ---------------------------------------------------------------------------------- network
class TTNetwork(nn.Module):
    """The GPT over tokens (module docstring). ``cfg`` is a band-attention :class:`DTConfig`
    (``band_tokens`` = ``context * (D - 1)`` non-value tokens), saved as the checkpoint's
    ``model_config``, so evaluation acts from the exact key/value cache by default.

    Buffers: ``edges`` ``(D, N + 1)`` and ``centres`` ``(D, N)`` (the discretiser, env units;
    the rows of a Discrete action are unused), ``fitted`` (set by :meth:`TT.fit`).
    """

    def __init__(self, cfg: DTConfig, options: TTOptions) -> None:
        super().__init__()
        self.options = options
        self.obs_dim, n = cfg.obs_dim, options.n_bins
        self.act_tokens = 1 if cfg.discrete else cfg.act_dim
        self.slots = layout(self.obs_dim, self.act_tokens)
        self.dim = d_tr = self.obs_dim + self.act_tokens + 2  # D, tokens per transition
        vocab = [n] * d_tr
        if cfg.discrete:
            vocab[self.slots["act"].start] = cfg.act_dim
        self.vocab = tuple(vocab)  # values of each dimension (its stop value not counted)
        self.stop = max(vocab)  # V: every dimension's stop value, and its logit's index
        self.cfg = dataclasses.replace(cfg, attention="band",
                                       band_tokens=options.context * (d_tr - 1))
        self.register_buffer("offsets", torch.tensor(np.cumsum([0, *vocab[:-1]])),
                             persistent=False)
        valid = torch.arange(self.stop + 1)[None] < torch.tensor(vocab)[:, None]
        valid[:, self.stop] = True
        self.register_buffer("valid_logits", valid, persistent=False)  # (D, V + 1)
        self.register_buffer("edges", torch.zeros(d_tr, n + 1))
        self.register_buffer("centres", torch.zeros(d_tr, n))
        self.register_buffer("fitted", torch.tensor(False))
        e = cfg.embed_dim
        self.tok_emb = nn.Embedding(sum(vocab) + 1, e)  # the last row: the stop token
        self.t_emb = nn.Embedding(cfg.max_timestep, e)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(self.cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(e)
        self.head_w = nn.Parameter(torch.randn(d_tr, self.stop + 1, e) * 0.02)
        self.head_b = nn.Parameter(torch.zeros(d_tr, self.stop + 1))
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "mlp.2.weight")):  # GPT-2's residual scaling
                nn.init.normal_(p, 0.0, 0.02 / np.sqrt(2 * cfg.n_layer))

    def tokens(self, observations: torch.Tensor, actions: torch.Tensor,
               rewards: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``(..., D) int64`` tokens of transitions in env units (``actions`` ``(..., act_dim)``
        float or ``(...)`` int64; rewards and values ``(...)``)."""
        act = actions[..., None] if self.cfg.discrete else actions.float()
        x = torch.cat((observations.float(), act.float(), rewards.float()[..., None],
                       values.float()[..., None]), -1)
        tok = encode(x, self.edges)
        if self.cfg.discrete:
            tok[..., self.slots["act"]] = actions[..., None].long()
        return tok

    def embed(self, tokens: torch.Tensor, dims: torch.Tensor, timesteps: torch.Tensor
              ) -> torch.Tensor:
        """``(R, n)`` token values at dimensions ``dims`` ``(n,)`` and episode ``timesteps``
        ``(R, n)`` → ``(R, n, embed_dim)`` inputs (a value ``V`` is the stop token)."""
        ids = torch.where(tokens >= self.stop, self.tok_emb.num_embeddings - 1,
                          self.offsets[dims] + tokens)
        return self.drop(self.tok_emb(ids) + self.t_emb(timesteps))

    def logits(self, h: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
        """``(R, n, V + 1)`` logits of the token after each of ``(R, n, d)`` final hidden
        states at dimensions ``dims`` ``(n,)``: the head of the next dimension, the values a
        dimension cannot take at ``-inf``."""
        nxt = (dims + 1) % self.dim
        out = torch.einsum("rnd,nvd->rnv", self.ln_f(h), self.head_w[nxt]) + self.head_b[nxt]
        return out.masked_fill(~self.valid_logits[nxt], float("-inf"))

    def next_logits(self, h: torch.Tensor, dim: int) -> torch.Tensor:
        """``(R, vocab[dim + 1])`` logits of the values the token after ``(R, d)`` final
        hidden states at dimension ``dim`` can take: :meth:`logits` for one dimension,
        sliced to that dimension's head rows (no stop value, which a plan never holds)."""
        nxt = (dim + 1) % self.dim
        n = self.vocab[nxt]
        return F.linear(self.ln_f(h), self.head_w[nxt, :n], self.head_b[nxt, :n])

    def attention_mask(self, is_value: torch.Tensor) -> torch.Tensor:
        """``(T, T) bool`` (True = may attend): query ``q`` sees itself and the last
        ``band - 1`` non-value tokens before it (module docstring)."""
        keys = (~is_value).long()
        rank = torch.cumsum(keys, 0) - keys  # non-value tokens before each position
        pos = torch.arange(len(is_value), device=is_value.device)
        near = rank[None, :] >= rank[:, None] - (self.cfg.band - 1)
        before = pos[None, :] < pos[:, None]
        return (pos[None, :] == pos[:, None]) | (before & ~is_value[None, :] & near)

    def hidden(self, tokens: torch.Tensor, dims: torch.Tensor, timesteps: torch.Tensor
               ) -> torch.Tensor:
        """The last block's outputs ``(B, T, d)`` for ``(B, T)`` tokens at dimensions
        ``dims`` ``(T,)`` and ``timesteps`` ``(B, T)``, the whole sequence computed."""
        x = self.embed(tokens, dims, timesteps)
        mask = self.attention_mask(dims == self.dim - 1)[None, None]
        for block in self.blocks:
            x = block(x, mask)
        return x

    def forward(self, tokens: torch.Tensor, dims: torch.Tensor, timesteps: torch.Tensor
                ) -> torch.Tensor:
        """Next-token logits ``(B, T, V + 1)`` (arguments as :meth:`hidden`)."""
        return self.logits(self.hidden(tokens, dims, timesteps), dims)


def sequence(net: TTNetwork, batch: TTBatch
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The token sequence of ``(B, K)`` windows: ``(tokens (B, K D) int64, dims (K D,) int64,
    timesteps (B, K D) int64, in_loss (B, K D) bool)``; every token of a step past the end is
    the stop value ``V``; ``in_loss`` holds at real and stopped steps."""
    b, k = batch.mask.shape
    d = net.dim
    tok = net.tokens(batch.observations, batch.actions, batch.rewards, batch.values)
    tok = tok.masked_fill(~batch.mask[..., None], net.stop).reshape(b, k * d)
    dims = torch.arange(d, device=tok.device).repeat(k)
    in_loss = (batch.mask | batch.stopped).repeat_interleave(d, 1)
    return tok, dims, batch.timesteps.repeat_interleave(d, 1), in_loss


def tt_loss(net: TTNetwork, batch: TTBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted next-token cross-entropy over the real and stopped steps (module docstring):
    ``sum(w * ce * m) / sum(m)`` over the ``K * D - 1`` predicted tokens of every window.

    Raises:
        ValueError: the network's discretiser was never fitted (``TT.fit``).
    """
    if not bool(net.fitted):
        raise ValueError("tt: the network's discretiser is not fitted (TT.fit runs before a "
                         "new run trains; a checkpoint holds it)")
    tok, dims, ts, m = sequence(net, batch)
    logits = net(tok[:, :-1], dims[:-1], ts[:, :-1]).float()
    ce = F.cross_entropy(logits.transpose(1, 2), tok[:, 1:], reduction="none")  # (B, KD-1)
    d, m = net.dim, m[:, 1:].float()
    o, s = net.options, net.slots
    weights = torch.ones(d, device=tok.device)
    weights[s["act"]], weights[s["reward"]] = o.action_weight, o.reward_weight
    weights[s["value"]] = o.value_weight
    loss = (ce * weights[dims[1:]] * m).sum() / m.sum()
    extras = {}
    for name, sl in s.items():
        sel = ((dims[1:] >= sl.start) & (dims[1:] < sl.stop)).float() * m
        extras[f"{name}_ce"] = ((ce * sel).sum() / sel.sum().clamp(min=1)).detach()
    return loss, extras


@register
class TT(Method):
    """Trajectory Transformer (module docstring)."""

    name = "tt"
    description = "Trajectory Transformer: beam search over a discretised sequence model " \
                  "(Janner et al. 2021)"
    conditions_on_return = False
    #: Its planner costs seconds per env step on a CPU (benchmarks/results/tt/cost.md): a
    #: reproduce preset runs it only when named (``--methods tt``).
    in_reproduce = False
    options_class = TTOptions

    def build(self, cfg: DTConfig, options: Any = None) -> TTNetwork:
        return TTNetwork(cfg, self.options(options))

    def offline_source(self, dataset: OfflineDataset, normalizer: Normalizer,
                       config: RunConfig, device: torch.device) -> TTWindows:
        opts = self.options(config.method_options)
        return TTWindows(dataset, config.context_length, config.max_timestep, opts.discount,
                         seed=config.seed, device=device)

    @torch.no_grad()
    def fit(self, net: nn.Module, dataset: OfflineDataset, normalizer: Normalizer) -> None:
        """Fit the discretiser on every transition of ``dataset`` (env units)."""
        require_flat_box(dataset)
        o = net.options
        act = dataset.actions.reshape(len(dataset.actions), -1).astype(np.float64)
        values = discounted_values(dataset.rewards, dataset.episode_starts, o.discount)
        x = np.concatenate((dataset.observations.astype(np.float64), act,
                            dataset.rewards.astype(np.float64)[:, None], values[:, None]), 1)
        edges, centres = fit_bins(x, o.n_bins, o.bins, o.decode)
        net.edges.copy_(edges)
        net.centres.copy_(centres)
        net.fitted.fill_(True)

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return tt_loss(net, batch)

    def inference_candidates(self, net: nn.Module) -> list[dict[str, Any]]:
        """The options' planner settings, then one candidate per value of
        ``other_horizons``, ``other_beam_widths`` and ``other_plan_every`` (that setting
        changed, the others the options')."""
        o = net.options
        base = {k: getattr(o, k) for k in PLANNER_SETTINGS}
        others = {"horizon": o.other_horizons, "beam_width": o.other_beam_widths,
                  "plan_every": o.other_plan_every}
        extra = [{**base, k: v} for k, values in others.items() for v in values]
        return [base] + [c for c in extra if c != base]

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = True, **settings: Any) -> TTPolicy:
        """TT's beam-search planner (``kv_cache``: from the exact key/value cache, else
        recomputing every token). ``settings``: ``horizon``, ``beam_width``, ``plan_every``
        (default the options').

        Raises:
            ValueError: an unknown setting or a value below 1.
        """
        unknown = sorted(set(settings) - set(PLANNER_SETTINGS))
        if unknown:
            raise ValueError(f"tt: unknown inference settings {unknown}; known: "
                             f"{list(PLANNER_SETTINGS)}")
        o = net.options
        chosen = {k: int(settings.get(k, getattr(o, k))) for k in PLANNER_SETTINGS}
        return TTPolicy(net, cached=kv_cache, expansions=o.expansions,
                        action_top_p=o.action_top_p, discount=o.discount, **chosen)
