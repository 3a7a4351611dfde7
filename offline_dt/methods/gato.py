"""A GATO-style generalist (Reed et al. 2022, "A Generalist Agent"): one transformer and one
vocabulary over a suite of envs (``offline_dt.data.suite``), every observation and action
dimension a token, actions decoded token by token.

- Tokens (Section 2.1): a continuous value (an observation dimension normalised by its env's
  statistics, a Box action dimension in [-1, 1], a return-to-go divided by its env's
  ``rtg_scale``) is mu-law companded (mu 100, M 256) and cut into 1024 uniform bins
  (``offline_dt.data.discretise.mu_law_encode``): tokens ``[0, n_bins)``. A Discrete action
  ``k`` is its own token, ``n_bins + k``; the separator ``|`` is the last token,
  ``n_bins + D`` (D the most actions of the suite's Discrete envs, 1 when there are none).
  One vocabulary of ``n_bins + D + 1`` tokens and one set of weights serve every env.
- A timestep of an env with ``n`` observation and ``m`` action dimensions (``m = 1`` for a
  Discrete action) is ``n + 1 + m`` tokens, ``o^1 .. o^n | a^1 .. a^m`` (Section 2.1's
  ordering), led by a return-to-go token ``R`` with the option ``return_tokens`` (not
  GATO's: the return conditioning of the Decision Transformer). A token's input is its
  token's embedding plus a learned local position (Section 2.2's local observation
  positions: the return slot, observation dimension ``i``, the separator, and here also
  action dimension ``j``, so a small model knows which dimension it decodes), plus the
  episode timestep (as the Decision Transformer's) and, with ``env_embedding``, the env's.
- Loss (Section 2.2, "setting output targets"): cross-entropy of the action tokens only, each
  predicted from the token before it (the separator or the previous action dimension), over
  the tokens the env's actions can take (Box: the ``n_bins`` bins; Discrete: its own
  actions); the mean over the batch's action tokens.
- Batches (:class:`GatoWindows`): windows of ``context_length`` timesteps of one env each, the
  env drawn by ``sampling`` (``offline_dt.data.suite.env_weights``), the episode in
  proportion to its length and the start uniform (the Decision Transformer's windows),
  left-padded. Prompt conditioning (Section 2.3): with probability ``prompt_prob`` (GATO's
  25%) a window is led by a prompt of up to ``prompt_steps`` timesteps, the end of the
  episode (with probability ``prompt_end_share``, GATO's half: goal conditioning) or a
  uniform stretch of it. GATO takes prompts from an episode of the same task and source agent
  (its data are experts'); ours mix qualities, so a prompt comes from the window's own
  episode: what follows it is as good as the prompt. The prompt is context, not in the loss.
  Timesteps are padded to the suite's longest (masked), so a batch mixes envs.
- Acting (``offline_dt.methods.gato_policy``, Section 2.4): the current observation's
  tokens and the separator are appended to the context, then each action dimension is
  sampled from the logits of the env's action tokens (``action_top_p``: 1 samples the whole
  distribution as GATO does) and fed back through the key/value cache. Settings: ``prompt``
  (GATO's: the last ``prompt_steps`` timesteps of the env's highest-return training episode,
  stored by :meth:`Gato.fit` as buffers, prepended) and ``plain``; with ``return_tokens``
  each conditions on a target return as the Decision Transformer does.

Evaluation acts in one env of the suite (``offline-dt evaluate --env-id ENV``, through
``Method.for_env``). Observations must be flat Boxes (Dict and image spaces are refused;
GATO's image patches are not built); actions Box or Discrete. Options: :class:`GatoOptions`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline_dt.data.discretise import mu_law_encode
from offline_dt.data.suite import Sampling, Suite, env_weights, widths
from offline_dt.data.windows import Normalizer, WindowSampler, returns_to_go, timesteps_in_episode
from offline_dt.methods.base import BatchSource, Method, RunConfig, register
from offline_dt.methods.gato_policy import GatoPolicy
from offline_dt.methods.mgdt import EnvNet, require_flat
from offline_dt.nn.config import DTConfig
from offline_dt.nn.dropout import Dropout
from offline_dt.nn.transformer import Block, DecisionTransformer

#: The acting settings evaluation chooses among (:class:`GatoOptions`).
Inference = Literal["prompt", "plain", "both"]


@dataclass(frozen=True)
class GatoOptions:
    """GATO's hyperparameters (``TrainConfig.method_options``); defaults are GATO's where it
    has one.

    Attributes:
        n_bins: uniform bins of the mu-law companded values (GATO: 1024).
        mu: the mu-law's mu (GATO: 100).
        max_value: the mu-law's M, the largest magnitude companded into [-1, 1] (GATO:
            256).
        return_tokens: lead every timestep with a return-to-go token and act toward a target
            return (the Decision Transformer's conditioning; GATO has none).
        prompt_prob: share of the training windows led by a prompt of their episode (GATO:
            0.25).
        prompt_end_share: share of the prompts taken from the episode's end, the rest
            uniformly from it (GATO: 0.5).
        prompt_steps: timesteps of a prompt, in training and acting.
        inference: the acting settings evaluation chooses among on validation episodes:
            ``prompt`` (the env's highest-return training episode's end prepended),
            ``plain`` (no prompt), or ``both``.
        action_top_p: action tokens are sampled from the smallest set of this probability
            mass (1: the whole distribution, GATO's; near 0: the most likely token).
        sampling: how a batch's windows are shared among the suite's envs
            (``offline_dt.data.suite.env_weights``): ``balanced``, ``proportional`` or
            ``temperature``.
        temperature: T of ``temperature`` sampling (weights ∝ transitions^(1/T)).
        env_embedding: add a learned embedding of the env to every token (GATO has none: the
            env is told by its tokens and the prompt).
    """

    n_bins: int = 1024
    mu: float = 100.0
    max_value: float = 256.0
    return_tokens: bool = False
    prompt_prob: float = 0.25
    prompt_end_share: float = 0.5
    prompt_steps: int = 5
    inference: Inference = "both"
    action_top_p: float = 1.0
    sampling: Sampling = "balanced"
    temperature: float = 2.0
    env_embedding: bool = False

    def validate(self) -> None:
        shares = (self.prompt_prob, self.prompt_end_share)
        positive = (self.mu, self.max_value, self.action_top_p, self.temperature)
        if self.n_bins < 2 or self.prompt_steps < 1 or not min(positive) > 0 or not (
                self.action_top_p <= 1.0 and all(0.0 <= s <= 1.0 for s in shares)):
            raise ValueError(f"method_options: gato needs n_bins >= 2, prompt_steps >= 1, mu "
                             f"and max_value > 0, action_top_p in (0, 1], temperature > 0 and "
                             f"prompt_prob, prompt_end_share in [0, 1], found {self}")


class Layout:
    """The token layout of every env of ``tasks`` (``DTConfig.tasks``; module docstring).

    Attributes:
        separator, vocab: the separator's token and the vocabulary size.
        lengths: tokens per timestep of each env, ``r + n + 1 + m``.
        step: the longest, every env's timestep padded to it in a batch.
        positions: ``(E, step) int64`` local position of each slot (0 on padding);
            ``is_action``, ``is_real``: ``(E, step) bool`` action slots, non-padding slots.
        action_ids: ``(E, vocab) bool`` the tokens each env's actions can take.
    """

    def __init__(self, tasks: Sequence[Mapping[str, Any]], n_bins: int, return_tokens: bool
                 ) -> None:
        obs_w, box_w, n_act = widths(tasks)
        self.n_bins, self.r = int(n_bins), int(return_tokens)
        self.separator, self.vocab = self.n_bins + n_act, self.n_bins + n_act + 1
        self.n_positions = 2 + obs_w + box_w  # the return slot, o^i, |, a^j
        self.act_tokens = [1 if t["discrete"] else int(t["act_dim"]) for t in tasks]
        self.lengths = [self.r + int(t["obs_dim"]) + 1 + a
                        for t, a in zip(tasks, self.act_tokens, strict=True)]
        self.step = max(self.lengths)
        e = len(tasks)
        self.positions = torch.zeros(e, self.step, dtype=torch.long)
        self.is_action = torch.zeros(e, self.step, dtype=torch.bool)
        self.is_real = torch.zeros(e, self.step, dtype=torch.bool)
        self.action_ids = torch.zeros(e, self.vocab, dtype=torch.bool)
        for i, (t, a) in enumerate(zip(tasks, self.act_tokens, strict=True)):
            n = int(t["obs_dim"])
            pos = [0] * self.r + list(range(1, n + 1)) + [1 + obs_w] + [
                2 + obs_w + j for j in range(a)]
            self.positions[i, :len(pos)] = torch.tensor(pos)
            self.is_real[i, :len(pos)] = True
            self.is_action[i, len(pos) - a:len(pos)] = True
            if t["discrete"]:
                self.action_ids[i, self.n_bins:self.n_bins + int(t["act_dim"])] = True
            else:
                self.action_ids[i, :self.n_bins] = True


def timestep_tokens(layout: Layout, options: GatoOptions, index: int, observations: torch.Tensor,
                    actions: torch.Tensor, returns: torch.Tensor, discrete: bool
                    ) -> torch.Tensor:
    """``(..., L) int64`` tokens of timesteps of env ``index`` (``L`` its ``lengths``
    entry): ``[R] o^1 .. o^n | a^1 .. a^m``.

    Args:
        observations: ``(..., n) float`` normalised; returns: ``(...)`` scaled returns-to-go
            (read with ``return_tokens`` only).
        actions: ``(..., m) float`` in [-1, 1] (Box) or ``(...) int64`` (Discrete).
    """
    o = options

    def cont(x: torch.Tensor) -> torch.Tensor:
        return mu_law_encode(x, o.n_bins, o.mu, o.max_value)

    parts = [cont(returns)[..., None]] if layout.r else []
    sep = torch.full_like(observations[..., :1], layout.separator, dtype=torch.long)
    act = (actions.long()[..., None] + layout.n_bins) if discrete else cont(actions)
    return torch.cat([*parts, cont(observations), sep, act], -1)


@dataclass
class GatoBatch:
    """Token sequences of windows of several envs, ``(B, T)`` with ``T = (P + K) · step``
    (:class:`Layout`; rows grouped by env in suite order).

    Attributes:
        tokens, positions, timesteps: ``(B, T) int64`` (0 on padding).
        valid: ``(B, T) bool`` real tokens; in_loss: ``(B, T) bool`` the window's action
            tokens (the prompt's are context).
        env: ``(B,) int64`` each row's env.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    timesteps: torch.Tensor
    valid: torch.Tensor
    in_loss: torch.Tensor
    env: torch.Tensor

    @property
    def observations(self) -> torch.Tensor:
        """The tokens (what the training loop reads a batch's device from)."""
        return self.tokens

    def rows(self, lo: int, hi: int) -> GatoBatch:
        return GatoBatch(*(getattr(self, f)[lo:hi] for f in (
            "tokens", "positions", "timesteps", "valid", "in_loss", "env")))


class GatoWindows(BatchSource):
    """:class:`GatoBatch`es from a :class:`Suite` (module docstring): per row the env (by
    ``weights``), the episode (∝ length), the window's start (uniform), whether a prompt
    leads it (``prompt_prob``), from the episode's end or a uniform start; every draw on the
    one CPU ``generator`` (checkpointed by the loop). Each env's arrays (normalised
    observations, model-unit actions, scaled returns-to-go) are its ``WindowSampler``'s."""

    def __init__(self, suite: Suite, options: GatoOptions, k: int, max_timestep: int,
                 weights: np.ndarray, seed: int = 0, device: str | torch.device = "cpu"
                 ) -> None:
        self.device = torch.device(device)
        self.layout = Layout(suite.tasks(), options.n_bins, options.return_tokens)
        self.options, self.k = options, int(k)
        self.p = options.prompt_steps if options.prompt_prob > 0 else 0
        self.generator = torch.Generator().manual_seed(seed)
        self.weights = torch.as_tensor(np.asarray(weights, np.float64))
        self.samplers = [WindowSampler(ds, norm, k, max_timestep, seed=seed, device=self.device)
                         for ds, norm in zip(suite.datasets, suite.normalizers, strict=True)]
        self.indices = [suite.index(i) for i in range(len(suite.datasets))]

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[GatoBatch, float]:
        g, o = self.generator, self.options
        env = torch.multinomial(self.weights, batch_size, replacement=True, generator=g)
        parts = []
        for i, c in enumerate(torch.bincount(env, minlength=len(self.samplers)).tolist()):
            if not c:
                continue
            s = self.samplers[i]
            ep = torch.multinomial(s.ep_prob, c, replacement=True, generator=g)
            length = s.ep_len[ep]
            start = (torch.rand(c, generator=g) * length).long()
            p_len = torch.zeros(c, dtype=torch.long)
            p_start = torch.zeros(c, dtype=torch.long)
            if self.p:
                has, at_end, u = (torch.rand(c, generator=g) for _ in range(3))
                p_len = torch.where(has < o.prompt_prob, length.clamp(max=self.p), 0)
                p_start = torch.where(at_end < o.prompt_end_share, length - p_len,
                                      (u * (length - p_len + 1)).long())
            parts.append(self.windows(i, *(t.to(self.device) for t in (
                ep, start, p_len, p_start))))
        batch = GatoBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in (
            "tokens", "positions", "timesteps", "valid", "in_loss", "env")))
        if world_size == 1:
            return batch, 1.0
        lo, hi = batch_size * rank // world_size, batch_size * (rank + 1) // world_size
        counts = batch.in_loss.sum(1).float()
        return batch.rows(lo, hi), float(counts[lo:hi].sum() / counts.sum())

    def windows(self, i: int, ep: torch.Tensor, start: torch.Tensor, p_len: torch.Tensor,
                p_start: torch.Tensor) -> GatoBatch:
        """The rows of dataset ``i`` (its env's index in the network: ``Suite.index``):
        window steps from ``start`` of episodes ``ep`` (``(c,) int64``), led by ``p_len``
        prompt steps from ``p_start`` of the same episodes (right-aligned in the prompt's
        slots; 0: no prompt)."""
        s, lay, k, p, dev = self.samplers[i], self.layout, self.k, self.p, self.device
        e = self.indices[i]
        length = s.ep_len.to(dev)[ep]
        pad = k - torch.clamp(length - start, max=k)
        rel = torch.arange(k, device=dev)[None] - pad[:, None]  # window slot -> step offset
        prel = torch.arange(p, device=dev)[None] - (p - p_len)[:, None]
        step = torch.cat((p_start[:, None] + prel, start[:, None] + rel), 1)  # (c, P + K)
        real = torch.cat((prel >= 0, rel >= 0), 1)
        idx = s.ep_start[ep, None] + step.clamp(min=0)
        tok = timestep_tokens(lay, self.options, e, s.obs[idx], s.actions[idx], s.rtg[idx],
                              s.discrete)
        tok = F.pad(tok, (0, lay.step - tok.shape[-1]))  # (c, P + K, step)
        valid = real[..., None] & lay.is_real[e].to(dev)
        in_window = (torch.arange(p + k, device=dev) >= p)[None, :, None]
        in_loss = valid & lay.is_action[e].to(dev) & in_window
        ts = (s.timesteps[idx] * real)[..., None].expand_as(tok)
        pos = lay.positions[e].to(dev).expand_as(tok)
        c = len(ep)
        return GatoBatch(*(x.reshape(c, -1) for x in (tok * valid, pos * valid, ts * valid,
                                                      valid, in_loss)),
                         torch.full((c,), e, dtype=torch.long, device=dev))


class GatoNetwork(nn.Module):
    """The transformer over the tokens of every env of ``cfg.tasks`` (module docstring).

    Buffers: ``prompt_tokens`` ``(E, P, step) int64``, ``prompt_timesteps`` ``(E, P) int64``
    and ``prompt_length`` ``(E,) int64``: each env's acting prompt, right-aligned (set by
    :meth:`Gato.fit`); ``fitted``. The layout's tables (:class:`Layout`) are rebuilt from
    ``cfg`` and not saved.

    Raises:
        ValueError: ``cfg.tasks`` is None or ``cfg.attention`` is not ``window``.
    """

    def __init__(self, cfg: DTConfig, options: GatoOptions) -> None:
        super().__init__()
        if not cfg.tasks or cfg.attention != "window":
            raise ValueError(f"gato: the network needs DTConfig.tasks (the suite's envs) and "
                             f"attention 'window', found {cfg.tasks!r}, {cfg.attention!r}")
        self.cfg, self.options = cfg, options
        lay = self.layout = Layout(cfg.tasks, options.n_bins, options.return_tokens)
        d, e = cfg.embed_dim, len(cfg.tasks)
        self.tok_emb = nn.Embedding(lay.vocab, d)
        self.pos_emb = nn.Embedding(lay.n_positions, d)
        self.t_emb = nn.Embedding(cfg.max_timestep, d)
        self.env_emb = nn.Embedding(e, d) if options.env_embedding else None
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, lay.vocab)
        self.apply(DecisionTransformer._init_weights)
        for name, p in self.named_parameters():  # GPT-2's residual scaling
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))
        self.register_buffer("action_ids", lay.action_ids.clone(), persistent=False)
        p = options.prompt_steps
        self.register_buffer("prompt_tokens", torch.zeros(e, p, lay.step, dtype=torch.long))
        self.register_buffer("prompt_timesteps", torch.zeros(e, p, dtype=torch.long))
        self.register_buffer("prompt_length", torch.zeros(e, dtype=torch.long))
        self.register_buffer("fitted", torch.tensor(False))

    def timestep_tokens(self, index: int, observations: torch.Tensor, actions: torch.Tensor,
                        returns: torch.Tensor) -> torch.Tensor:
        """:func:`timestep_tokens` of env ``index``."""
        return timestep_tokens(self.layout, self.options, index, observations, actions,
                               returns, bool(self.cfg.tasks[index]["discrete"]))

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor, timesteps: torch.Tensor,
              env: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` tokens, local positions, timesteps and ``(B,)`` envs → ``(B, T, d)``."""
        x = self.tok_emb(tokens) + self.pos_emb(positions) + self.t_emb(timesteps)
        if self.env_emb is not None:
            x = x + self.env_emb(env)[:, None]
        return self.drop(x)

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, timesteps: torch.Tensor,
               valid: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """The last block's ``(B, T, d)`` outputs (causal; padding hidden from every
        query); arguments as :class:`GatoBatch`'s."""
        x = self.embed(tokens, positions, timesteps, env)
        mask = None
        if not bool(valid.all()):
            t = tokens.shape[1]
            causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
            eye = torch.eye(t, dtype=torch.bool, device=tokens.device)
            mask = (causal & (valid[:, None, :] | eye))[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return x

    def action_logits(self, h: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """``(..., vocab) float32`` logits of the next token from hidden states ``(..., d)``
        of envs ``env`` ``(...)``, the tokens the env's actions cannot take at ``-inf``."""
        out = self.head(self.ln_f(h)).float()
        return out.masked_fill(~self.action_ids[env], float("-inf"))


def gato_loss(net: GatoNetwork, batch: GatoBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of every action token of the windows, predicted from the token before
    it (module docstring); extras: ``action_accuracy`` (the most likely token is right)."""
    h = net.hidden(batch.tokens, batch.positions, batch.timesteps, batch.valid, batch.env)
    pred = batch.in_loss[:, 1:]  # token p + 1 is an action: predicted at p
    rows = batch.env[:, None].expand_as(pred)[pred]
    logits = net.action_logits(h[:, :-1][pred], rows)
    target = batch.tokens[:, 1:][pred]
    accuracy = (logits.argmax(-1) == target).float().mean()
    return F.cross_entropy(logits, target), {"action_accuracy": accuracy.detach()}


@register
class Gato(Method):
    """A GATO-style generalist over a suite of envs (Reed et al. 2022)."""

    name = "gato"
    description = ("GATO-style generalist (Reed et al. 2022): every observation and action "
                   "dimension a token, one model over a suite of envs, expert prompts")
    conditions_on_return = True
    multi_task = True
    in_reproduce = False
    options_class: ClassVar[type | None] = GatoOptions

    def build(self, cfg: DTConfig, options: Any = None) -> nn.Module:
        return GatoNetwork(cfg, self.options(options))

    def offline_source(self, dataset: Any, normalizer: Normalizer, config: RunConfig,
                       device: torch.device) -> BatchSource | None:
        if not isinstance(dataset, Suite):
            raise ValueError("gato trains on a suite (offline_dt.data.suite), found "
                             f"{type(dataset).__name__}")
        require_flat(dataset, "gato")
        opts = self.options(config.method_options)
        weights = env_weights([int(d.episode_starts[-1]) for d in dataset.datasets],
                              opts.sampling, opts.temperature)
        return GatoWindows(dataset, opts, config.context_length, config.max_timestep, weights,
                           seed=config.seed, device=device)

    @torch.no_grad()
    def fit(self, net: nn.Module, dataset: Any, normalizer: Normalizer) -> None:
        """Each env's acting prompt: the last ``prompt_steps`` timesteps of its
        highest-return episode (the first of equals), as tokens (in the row of its env in
        the network, ``Suite.index``)."""
        p = net.options.prompt_steps
        for j, (ds, norm) in enumerate(zip(dataset.datasets, dataset.normalizers,
                                           strict=True)):
            i = dataset.index(j)
            best = int(np.argmax(ds.episode_returns))
            end = int(ds.episode_starts[best + 1])
            n = min(p, end - int(ds.episode_starts[best]))
            rows = slice(end - n, end)
            rtg = returns_to_go(ds.rewards, ds.episode_starts)[rows] / norm.rtg_scale
            tok = net.timestep_tokens(
                i, torch.from_numpy(norm.observations(ds.observations[rows])),
                torch.from_numpy(np.asarray(norm.actions_to_model(ds.actions[rows]))),
                torch.from_numpy(rtg.astype(np.float32)))
            net.prompt_tokens[i, p - n:, :tok.shape[1]] = tok.to(net.prompt_tokens.device)
            ts = timesteps_in_episode(ds.episode_starts)[rows]
            net.prompt_timesteps[i, p - n:] = torch.from_numpy(ts).clamp(
                max=net.cfg.max_timestep - 1).to(net.prompt_timesteps.device)
            net.prompt_length[i] = n
        net.fitted.fill_(True)

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return gato_loss(net, batch)

    def for_env(self, net: nn.Module, index: int) -> nn.Module:
        return EnvNet(net, index)

    def inference_candidates(self, net: nn.Module) -> list[dict[str, Any]]:
        o = getattr(net, "net", net).options
        return [{"prompt": m == "prompt", "target": o.return_tokens}
                for m in ("prompt", "plain") if o.inference in (m, "both")]

    def uses_target(self, settings: Mapping[str, Any]) -> bool:
        return bool(settings.get("target", False))

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, prompt: bool = True, target: bool | None = None
               ) -> GatoPolicy:
        """The network acting in one env of its suite (``net`` from :meth:`for_env`):
        ``prompt`` prepends the env's prompt; ``kv_cache`` keeps one key/value cache over the
        episode (else one per step, over the recomputed context). ``target`` (default: the
        network's ``return_tokens``) must match the network.

        Raises:
            ValueError: ``net`` is not one env's; ``target`` disagrees with the network;
                a network with return tokens and no ``target_return``.
        """
        if not isinstance(net, EnvNet):
            raise ValueError("gato acts in one env of its suite: pass Gato.for_env(net, i) "
                             "(evaluation does, from --env-id)")
        o = net.net.options
        if target is not None and bool(target) != o.return_tokens:
            raise ValueError(f"gato: setting target={target} but the network was trained with "
                             f"return_tokens={o.return_tokens}")
        if o.return_tokens and target_return is None:
            raise ValueError("gato: a network with return tokens acts toward a target "
                             "return; pass target_return")
        return GatoPolicy(net, normalizer, target_return if o.return_tokens else None,
                          prompt=prompt, cached=kv_cache, top_p=o.action_top_p)


__all__ = ["Gato", "GatoBatch", "GatoNetwork", "GatoOptions", "GatoWindows", "Layout",
           "gato_loss", "timestep_tokens"]
