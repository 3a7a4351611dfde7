"""The Decision Transformer (Chen et al. 2021, "Decision Transformer: Reinforcement Learning via
Sequence Modeling", Section 3 and Figure 1).

A trajectory of the last K timesteps is fed as 3K interleaved tokens
``(R̂_1, s_1, a_1, R̂_2, s_2, a_2, ...)``. Each modality has its own linear embedding (the
state's is chosen from the observation space, ``offline_dt.nn.encoders``: linear for a flat
Box, a CNN for images, an embedding for Discrete leaves, their sum for a Dict); a learned
embedding of the episode timestep is added to all three tokens of that step (not a per-token
position embedding); a LayerNorm follows; a GPT-style stack of causal self-attention blocks
(``F.scaled_dot_product_attention``) processes the tokens; the action ``a_t`` is predicted from
the hidden state of the state token ``s_t``. Box actions: tanh head in [-1, 1] (the data
pipeline scales actions to that range) trained with MSE; Discrete actions: logits trained with
cross-entropy.

Attention comes in two kinds (``DTConfig.attention``):

- ``"window"`` (the default, the paper's): plain causal attention inside a window of K
  timesteps, recomputed at every env step while acting.
- ``"band"``: sliding-window (banded) causal attention, each token attending to exactly the
  last ``band_tokens`` tokens (itself included) at every layer, trained over long segments
  (whole episodes). Streaming one episode token by token with a rolling key/value cache of the
  last ``band_tokens`` keys and values per layer then reproduces the banded forward over the
  whole episode exactly, at three new tokens per env step: the rolling buffer of Mistral 7B
  (Jiang et al. 2023, "Mistral 7B", Section 2 "Sliding Window Attention" and "Rolling Buffer
  Cache") and the sliding-window attention of Longformer (Beltagy et al. 2020, "Longformer:
  The Long-Document Transformer", Section 3.1).

The network's parts have their own modules: its shape ``offline_dt.nn.config.DTConfig``, the
attention ``offline_dt.nn.attention``, the key/value cache ``offline_dt.nn.cache`` and
dropout ``offline_dt.nn.dropout``. The losses live with the methods (``offline_dt.methods``);
this package is the network alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from offline_dt.nn.attention import CausalSelfAttention, band_mask
from offline_dt.nn.beam_cache import BeamKVCache
from offline_dt.nn.cache import KVCache
from offline_dt.nn.config import DTConfig
from offline_dt.nn.decoding import cached_forward
from offline_dt.nn.dropout import Dropout
from offline_dt.nn.encoders import state_encoder


class Block(nn.Module):
    """Pre-LayerNorm GPT-2 block: attention then a 4d MLP, each on a residual branch."""

    def __init__(self, cfg: DTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.embed_dim)
        # ReLU in place on the first layer's fresh output (its backward needs only the result;
        # no allocation, about a fifth of an out-of-place ReLU's time on a CPU): same values
        act = {"relu": nn.ReLU(inplace=True), "gelu": nn.GELU(approximate="tanh")}
        if cfg.activation not in act:
            raise ValueError(f"activation must be one of {sorted(act)}, found {cfg.activation!r}")
        self.mlp = nn.Sequential(
            nn.Linear(cfg.embed_dim, 4 * cfg.embed_dim),
            act[cfg.activation],
            nn.Linear(4 * cfg.embed_dim, cfg.embed_dim),
            Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                queries: slice | None = None, cache: KVCache | BeamKVCache | None = None
                ) -> torch.Tensor:
        """``(B, T, d)`` → ``(B, Q, d)``, the rows of ``queries`` (all T when None); arguments
        as :meth:`CausalSelfAttention.forward`."""
        h = self.attn(self.ln_1(x), attn_mask, queries, cache)
        x = (x if queries is None else x[:, queries]) + h
        return x + self.mlp(self.ln_2(x))


class DecisionTransformer(nn.Module):
    """GPT-style Decision Transformer over (return-to-go, observation, action) tokens."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_state = state_encoder(cfg.obs_dim, d, cfg.obs_layout)
        if cfg.discrete:
            self.embed_action: nn.Module = nn.Embedding(cfg.act_dim, d)
        else:
            self.embed_action = nn.Linear(cfg.act_dim, d)
        self.embed_ln = nn.LayerNorm(d)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.predict_action = nn.Linear(d, cfg.act_dim)
        self.apply(self._init_weights)
        #: Run every token through the last block (reference path for tests; same result).
        self.full_last_block = False
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        returns_to_go: torch.Tensor,
        observations: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Predict the action at every timestep of a batch of windows.

        Only state-token outputs feed the action head, so the last block computes queries,
        attention and MLP for those tokens alone (for the last one alone with ``last_only``);
        the result equals running every token through every block.

        Args:
            returns_to_go: ``(B, K, 1) float32``, scaled returns-to-go R̂_t.
            observations: ``(B, K, obs_dim) float32``, normalised observations s_t.
            actions: ``(B, K, act_dim) float32`` in [-1, 1] (Box) or ``(B, K) int64`` (Discrete).
                The action at step t is never seen by the prediction for step t.
            timesteps: ``(B, K) int64`` episode timesteps, each in ``[0, max_timestep)``.
            mask: ``(B, K) bool``, False on padding (left for windows, right for band
                segments; either works); None when there is none. In band mode K may be any
                length (a whole episode).
            last_only: predict the last timestep's action only (acting in an environment).

        Returns:
            ``(B, K, act_dim) float32`` (``(B, 1, act_dim)`` with ``last_only``): actions in
            [-1, 1] (Box, with ``action_tanh``) or logits over the ``act_dim`` actions
            (Discrete).
        """
        k = timesteps.shape[1]
        x, attn_mask = self._embed(returns_to_go, observations, actions, timesteps, mask)
        for block in self.blocks[:-1]:
            x = block(x, attn_mask)
        # State tokens sit at 1, 4, 7, ...: s_t is token 3t + 1.
        states = slice(3 * k - 2, 3 * k - 1) if last_only else slice(1, None, 3)
        if self.full_last_block:
            x = self.blocks[-1](x, attn_mask)[:, states]
        else:
            x = self.blocks[-1](x, attn_mask, states)
        out = self.predict_action(self.ln_f(x))
        if not self.cfg.discrete and self.cfg.action_tanh:
            out = torch.tanh(out)
        return out

    def _embed(self, returns_to_go: torch.Tensor, observations: torch.Tensor,
               actions: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Interleaved token embeddings ``(B, 3K, d)`` and the attention mask: None when
        nothing is padded (window mode: plain causal attention) or, in band mode, nothing but
        right padding (the band alone); arguments as :meth:`forward`."""
        b, k = timesteps.shape
        t_emb = self.embed_timestep(timesteps)
        r = self.embed_return(returns_to_go) + t_emb
        s = self.embed_state(observations) + t_emb
        a = self.embed_action(actions) + t_emb
        # (B, K, 3, d) -> (B, 3K, d): R̂_1, s_1, a_1, R̂_2, ...
        x = torch.stack((r, s, a), dim=2).reshape(b, 3 * k, self.cfg.embed_dim)
        x = self.drop(self.embed_ln(x))
        # Under torch.compile and CUDA graph capture (offline_dt.training.cuda_graph) a given mask
        # is always applied: no data-dependent branch, no read back to the host (the mask of a
        # window without padding is plain causal attention, the same result).
        compiling = torch.compiler.is_compiling() or (
            x.is_cuda and torch.cuda.is_current_stream_capturing())
        padded = mask is not None and (compiling or not bool(mask.all()))
        band = self.cfg.band
        if band is None:
            return x, self._attention_mask(mask) if padded else None
        # Band mode: None means the band alone (blocks in CausalSelfAttention). Right padding
        # needs no more: by causality no real token sees a later (padded) one. A real step
        # after padding needs the full mask.
        if padded and (compiling or bool((mask[:, 1:] & ~mask[:, :-1]).any())):
            return x, self._band_attention_mask(mask, 3 * k, band, x.device)
        return x, None

    def token_states(self, returns_to_go: torch.Tensor, observations: torch.Tensor,
                     actions: torch.Tensor, timesteps: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden state of every token, ``(B, K, 3, d) float32`` (axis 2: the
        return-to-go, state and action token of each timestep), after the last LayerNorm;
        arguments as :meth:`forward`. What a head other than the action head (e.g. a
        critic's, ``offline_dt.methods.qt``) reads."""
        b, k = timesteps.shape
        x, attn_mask = self._embed(returns_to_go, observations, actions, timesteps, mask)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x).reshape(b, k, 3, self.cfg.embed_dim)

    @staticmethod
    def _attention_mask(mask: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` validity → ``(B, 1, 3K, 3K)`` bool: causal, padded keys hidden. Every token
        may attend to itself so padded rows stay finite (their outputs are masked in the loss)."""
        b, k = mask.shape
        tok = mask.repeat_interleave(3, dim=1)  # (B, 3K)
        n = 3 * k
        causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        return (causal & (tok[:, None, :] | eye))[:, None]

    @staticmethod
    def _band_attention_mask(mask: torch.Tensor, n: int, band: int,
                             device: torch.device) -> torch.Tensor:
        """Band mode with padding before real steps: token ``i`` may attend to token ``j``
        iff ``i - band < j <= i`` and ``j`` is real (every token also sees itself, so padded
        rows stay finite; their outputs are masked in the loss).

        Args:
            mask: ``(B, K) bool`` step validity.
            n: tokens, ``3K``.
            band: W.
            device: where the mask goes.

        Returns:
            ``(B, 1, n, n)`` bool.
        """
        allowed = band_mask(n, n, band, device)
        tok = mask.repeat_interleave(3, dim=1)  # (B, 3K)
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        return (allowed & (tok[:, None, :] | eye))[:, None]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def step_cached(
        self,
        cache: KVCache | None,
        returns_to_go: torch.Tensor,
        observations: torch.Tensor,
        timesteps: torch.Tensor,
        prev_actions: torch.Tensor | None = None,
        prev_timesteps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Act one step from a key/value cache instead of recomputing the context.

        Appends the tokens ``a_{t-1}`` (when ``prev_actions`` is given), ``R̂_t`` and ``s_t``
        to the cache of each block's keys and values and predicts ``a_t``.

        Band mode (``cfg.attention == "band"``): every new token attends to the last W
        tokens, itself included, as in the banded forward over the whole episode; the keys
        and values held for older tokens were computed with exactly that band when those
        tokens were new, so the output equals :meth:`forward` over the whole episode so far
        (up to float rounding) at every step: exact by construction (Mistral 7B's rolling
        buffer cache, Jiang et al. 2023). ``offline_dt.evaluation.evaluate`` acts this way by
        default for band checkpoints.

        Window mode (the classic DT): attends over the last ``3K - 1`` tokens (what ``s_t``
        sees in a recomputed window). This is exact while the episode is shorter than K
        steps. Afterwards it is an approximation: the cached keys of older tokens were
        computed when those tokens were newest, with attention reaching further back than
        the window that recomputation would give them (block 1 is still exact: its keys
        depend on the token alone). ``offline_dt.evaluation.evaluate`` keeps recomputation as the
        default for these and ``benchmarks/speed.py`` measures the drift.

        Args:
            cache: from the previous call of this episode batch, or None at ``t = 0``.
            returns_to_go: ``(B, 1) float32`` scaled R̂_t.
            observations: ``(B, obs_dim) float32`` normalised s_t.
            timesteps: ``(B,) int64`` t.
            prev_actions: ``(B, act_dim) float32`` (Box) or ``(B,) int64`` (Discrete): the
                action taken at t - 1, None at t = 0.
            prev_timesteps: ``(B,) int64`` the timestep fed with ``prev_actions`` (its step's
                own, which differs from ``timesteps - 1`` once the acting loop clamps
                timesteps to the table); None: ``timesteps - 1``.

        Returns:
            ``(B, act_dim)`` the prediction for a_t (as :meth:`forward`), and the new cache.
        """
        x = self._step_tokens(returns_to_go, observations, timesteps, prev_actions,
                              prev_timesteps)  # (B, n, d)
        if cache is None:
            cache = KVCache.for_config(self.cfg, x)
        x = cached_forward(self.blocks, x, cache)
        out = self.predict_action(self.ln_f(x[:, -1]))
        if not self.cfg.discrete and self.cfg.action_tanh:
            out = torch.tanh(out)
        return out, cache

    def _step_tokens(self, returns_to_go: torch.Tensor, observations: torch.Tensor,
                     timesteps: torch.Tensor, prev_actions: torch.Tensor | None,
                     prev_timesteps: torch.Tensor | None) -> torch.Tensor:
        """The embedded new tokens of :meth:`step_cached`, ``(B, n, d)``: ``a_{t-1}`` (when
        ``prev_actions`` is given), ``R̂_t`` and ``s_t``, after the embedding LayerNorm."""
        tokens = []
        if prev_actions is not None:
            prev_ts = timesteps - 1 if prev_timesteps is None else prev_timesteps
            tokens.append(self.embed_action(prev_actions) + self.embed_timestep(prev_ts))
        t_emb = self.embed_timestep(timesteps)
        tokens += [self.embed_return(returns_to_go) + t_emb, self.embed_state(observations) + t_emb]
        return self.embed_ln(torch.stack(tokens, dim=1))
