"""The Decision Transformer (Chen et al. 2021, "Decision Transformer: Reinforcement Learning via
Sequence Modeling", Section 3 and Figure 1), in one readable file.

A trajectory of the last K timesteps is fed as 3K interleaved tokens
``(R̂_1, s_1, a_1, R̂_2, s_2, a_2, ...)``. Each modality has its own linear embedding; a learned
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

The loss lives in ``offline_dt.training.loop``; this module is the network alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DTConfig:
    """Network shape. Defaults are the paper's OpenAI-gym settings (Chen et al. 2021, Table 8).

    Attributes:
        obs_dim: observation width.
        act_dim: action width for Box actions; number of actions for Discrete.
        discrete: True for a Discrete action space (logits + cross-entropy).
        context_length: K, timesteps per window (3K tokens).
        max_timestep: size of the timestep embedding table; episodes must be shorter.
        embed_dim: token width d.
        n_layer: transformer blocks.
        n_head: attention heads.
        dropout: dropout on embeddings, attention weights and residual branches.
        activation: MLP nonlinearity, ``relu`` as in the reference implementation or ``gelu``.
        action_tanh: squash Box action predictions with tanh.
        attention: ``"window"`` (classic DT: causal attention over a window of K steps) or
            ``"band"`` (causal attention to the last ``band_tokens`` tokens at every layer,
            for sequences of any length; the key/value cache is then exact).
        band_tokens: W, tokens each token sees in ``band`` mode (itself and the W - 1 before
            it); None: ``3 * context_length``. Must be None in ``window`` mode.
    """

    obs_dim: int
    act_dim: int
    discrete: bool = False
    context_length: int = 20
    max_timestep: int = 1000
    embed_dim: int = 128
    n_layer: int = 3
    n_head: int = 1
    dropout: float = 0.1
    activation: str = "relu"
    action_tanh: bool = True
    attention: str = "window"
    band_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"DTConfig.attention must be one of {ATTENTION_KINDS}, found "
                             f"{self.attention!r}")
        if self.attention == "window" and self.band_tokens is not None:
            raise ValueError(f"DTConfig.band_tokens={self.band_tokens} needs attention='band'")
        if self.band_tokens is not None and self.band_tokens < 1:
            raise ValueError(f"DTConfig.band_tokens must be >= 1, found {self.band_tokens}")

    @property
    def band(self) -> int | None:
        """W, the tokens each token attends to, in ``band`` mode (None in ``window`` mode)."""
        if self.attention != "band":
            return None
        return self.band_tokens if self.band_tokens is not None else 3 * self.context_length


#: ``DTConfig.attention`` values: the classic window, the sliding band.
ATTENTION_KINDS = ("window", "band")


def cache_is_exact(cfg: DTConfig | None) -> bool:
    """True when :meth:`DecisionTransformer.step_cached` equals full recomputation for the
    whole episode: a band-attention network (``cfg.attention == "band"``). A network without
    a ``DTConfig`` (None) is not."""
    return cfg is not None and getattr(cfg, "attention", "window") == "band"


def band_mask(n: int, total: int, band: int | None, device: torch.device) -> torch.Tensor:
    """``(n, total)`` bool: query ``j`` (key position ``total - n + j``, the last ``n``
    positions) may attend to key ``i`` iff ``i <= total - n + j`` (causal) and, with a
    ``band`` W, ``i > total - n + j - W`` (the last W tokens, itself included)."""
    m = torch.ones(n, total, dtype=torch.bool, device=device).tril(total - n)
    if band is not None:
        m = m.triu(total - n - band + 1)
    return m


def keep_scale(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """An inverted-dropout multiplier of ``shape``: 0 with probability ``p`` (rounded to a
    multiple of 2^-16), else ``1 / (1 - p)``, in ``like``'s dtype and device.

    The draw takes four 16-bit uniform integers from each 64-bit draw of torch's default
    generator, where ``torch.bernoulli_`` (``nn.Dropout``) draws once per element, a large
    share of a CPU training step (``benchmarks/speed.py`` times dropout 0.1 beside 0)."""
    n = math.prod(shape)
    drop = round(p * 65536)  # dropped values among the 2^16
    if drop >= 65536:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device)
    bits = bits.random_(-(2 ** 63), 2 ** 63 - 1).view(torch.int16)[:n].view(shape)
    return torch.where(bits >= drop - 32768, 65536 / (65536 - drop), 0.0).to(like.dtype)


def _cpu_eager(t: torch.Tensor) -> bool:
    """``t`` is on the CPU and not being traced by ``torch.compile``: where :class:`Dropout`
    and :func:`attend` use their own paths instead of torch's fused kernels."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


class Dropout(nn.Module):
    """Inverted dropout (Srivastava et al. 2014, "Dropout: A Simple Way to Prevent Neural
    Networks from Overfitting", JMLR 15): in training each element is zeroed with probability
    ``p`` and the rest scaled by ``1 / (1 - p)``; the identity in eval mode. On a CPU the mask
    comes from :func:`keep_scale` (``p`` rounded to a multiple of 2^-16: 0.1 becomes
    0.1000061, and the scale uses the rounded value, so the expectation is exact); elsewhere,
    and under ``torch.compile``, ``F.dropout`` (fused on CUDA; compiled code draws its own)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], found {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if not _cpu_eager(x):
            return F.dropout(x, self.p, True)
        return x * keep_scale(tuple(x.shape), self.p, x)


#: Queries up to which :func:`attend` uses plain matrix products on a CPU.
FEW_QUERIES = 8


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           causal: bool, dropout: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, mask, dropout, causal)`` (Vaswani et al. 2017,
    Eq. 1). On a CPU (eager) it is computed with plain matrix products when attention-weight
    dropout is on (its mask drawn by :func:`keep_scale`; SDPA's CPU path draws it with
    ``bernoulli_``) or when there are at most :data:`FEW_QUERIES` queries (acting from a
    key/value cache: SDPA's CPU kernel has a fixed cost per batch row that dwarfs 1-3 queries).

    Args:
        q: ``(B, h, Q, d_head)``; k, v: ``(B, h, T, d_head)``.
        mask: bool (True = may attend) or additive float, broadcastable to ``(B, h, Q, T)``.
        causal: query ``j`` sees keys ``<= j``, with ``Q == T`` (``mask`` must then be None).
        dropout: attention-weight dropout probability.

    Returns:
        ``(B, h, Q, d_head)``.
    """
    plain = dropout > 0.0 or q.shape[-2] <= FEW_QUERIES
    if not (plain and _cpu_eager(q)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              is_causal=causal)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        mask = band_mask(q.shape[2], k.shape[2], None, q.device)
    if mask is not None and mask.dtype == torch.bool:
        att = att.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        att = att + mask
    att = torch.softmax(att, dim=-1)
    if dropout > 0.0:
        att = att * keep_scale(tuple(att.shape), dropout, att)
    return att @ v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: the one attention module (through :func:`attend`),
    for training windows, state-token-only queries and key/value-cache acting alike."""

    def __init__(self, cfg: DTConfig, layer: int = 0) -> None:
        super().__init__()
        if cfg.embed_dim % cfg.n_head:
            raise ValueError(
                f"embed_dim={cfg.embed_dim} must be divisible by n_head={cfg.n_head}"
            )
        self.n_head = cfg.n_head
        self.band = cfg.band  # W in band mode, None in window mode
        self.layer = layer  # index of this block's keys/values in a KVCache
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                queries: slice | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Attend over ``x`` (and, with ``cache``, over the tokens held before it).

        Args:
            x: ``(B, T, d)`` token inputs (with ``cache``: the T new tokens only).
            attn_mask: ``(B, 1, T, T)`` bool (True = may attend), or None for plain causal
                attention (band mode: causal within the band, see :func:`band_mask`).
                Ignored with ``cache``: new tokens see every held token (window mode) or the
                held tokens within the band (band mode).
            queries: token positions whose outputs are wanted (None: all T). Keys and values
                still come from every token.
            cache: keys/values of earlier tokens; this call appends the new ones to it (the
                caller commits them with :meth:`KVCache.commit` after the last block).

        Returns:
            ``(B, Q, d)`` for the Q positions of ``queries`` (all T when None).
        """
        b, t, d = x.shape
        h = self.n_head
        wanted = t if queries is None else len(range(t)[queries])
        # band mode, no mask: blocks of W queries over 2W keys beat T x T when Q > 2W
        blocked = (cache is None and attn_mask is None and self.band is not None
                   and wanted > 2 * self.band)
        if queries is None or blocked:
            q, k, v = self.qkv(x).split(d, dim=2)
        else:
            q = F.linear(x[:, queries], self.qkv.weight[:d], self.qkv.bias[:d])
            k, v = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:]).split(d, dim=2)
        n = q.shape[1]
        q = q.view(b, n, h, d // h).transpose(1, 2)  # (B, h, Q, d_head)
        k = k.view(b, t, h, d // h).transpose(1, 2)  # (B, h, T, d_head)
        v = v.view(b, t, h, d // h).transpose(1, 2)
        dropout = self.attn_dropout if self.training else 0.0
        if blocked:
            y = self._band_blocks(q, k, v, dropout)
            y = y if queries is None else y[:, :, queries]
        else:
            if cache is not None:
                k, v = cache.append(self.layer, k, v)  # (B, h, held + T, d_head)
            mask, causal = self._mask(attn_mask, queries, cache, n, k.shape[2], x.device,
                                      self.band)
            y = attend(q, k, v, mask, causal, dropout)
        y = y.transpose(1, 2).contiguous().view(b, wanted, d)
        return self.resid_dropout(self.proj(y))

    def _band_blocks(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     dropout: float) -> torch.Tensor:
        """Band attention in blocks (Longformer's sliding window, Beltagy et al. 2020,
        Section 3.1): the T queries are cut into blocks of W; block j attends to the keys of
        blocks j - 1 and j under :func:`band_mask`, so the cost is T x 2W, not T x T, with
        the same result as the dense band mask.

        Args:
            q, k, v: ``(B, h, T, d_head)``.
            dropout: attention-weight dropout probability.

        Returns:
            ``(B, h, T, d_head)``.
        """
        b, h, t, dh = q.shape
        w = self.band
        nb = -(-t // w)  # blocks
        pad = nb * w - t  # queries and keys past T: zeros, never seen by a real query

        def pairs(z: torch.Tensor) -> torch.Tensor:  # (B, h nb, 2W, dh): blocks j-1, j
            z = F.pad(z, (0, 0, w, pad)).view(b, h, nb + 1, w, dh)
            return torch.cat((z[:, :, :-1], z[:, :, 1:]), dim=3).view(b, h * nb, 2 * w, dh)

        allowed = band_mask(w, 2 * w, w, q.device).expand(h, nb, w, 2 * w).clone()
        allowed[:, 0, :, :w] = False  # block 0 has no block before it
        # additive (0 / -inf) rather than bool, and 4-D: SDPA's fused CPU kernel takes these
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~allowed, float("-inf")).view(1, h * nb, w, 2 * w)
        y = attend(F.pad(q, (0, 0, 0, pad)).reshape(b, h * nb, w, dh), pairs(k), pairs(v),
                   mask, False, dropout)
        return y.reshape(b, h, nb * w, dh)[:, :, :t]

    @staticmethod
    def _mask(attn_mask: torch.Tensor | None, queries: slice | None, cache: KVCache | None,
              n: int, total: int, device: torch.device, band: int | None = None
              ) -> tuple[torch.Tensor | None, bool]:
        """(SDPA ``attn_mask``, ``is_causal``) for ``n`` queries over ``total`` keys; without
        ``attn_mask`` causal attention, within the last ``band`` tokens when given."""
        if cache is not None:
            # New token j (key position total - n + j) sees the held tokens (within the band
            # in band mode) and the new ones <= j.
            return band_mask(n, total, band, device), False
        if attn_mask is None and (band is None or total <= band):
            band = None  # the band spans the whole sequence: plain causal attention
            if queries is None:
                return None, True
        if attn_mask is None:
            full = band_mask(total, total, band, device)
            return (full, False) if queries is None else (full[queries], False)
        if queries is None:
            return attn_mask, False
        return attn_mask[:, :, queries], False


class Block(nn.Module):
    """Pre-LayerNorm GPT-2 block: attention then a 4d MLP, each on a residual branch."""

    def __init__(self, cfg: DTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.embed_dim)
        act = {"relu": nn.ReLU(), "gelu": nn.GELU(approximate="tanh")}
        if cfg.activation not in act:
            raise ValueError(f"activation must be one of {sorted(act)}, found {cfg.activation!r}")
        self.mlp = nn.Sequential(
            nn.Linear(cfg.embed_dim, 4 * cfg.embed_dim),
            act[cfg.activation],
            nn.Linear(4 * cfg.embed_dim, cfg.embed_dim),
            Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                queries: slice | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """``(B, T, d)`` → ``(B, Q, d)``, the rows of ``queries`` (all T when None); arguments
        as :meth:`CausalSelfAttention.forward`."""
        h = self.attn(self.ln_1(x), attn_mask, queries, cache)
        x = (x if queries is None else x[:, queries]) + h
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of the last ``keep`` tokens of every block, for
    :meth:`DecisionTransformer.step_cached` (window mode: ``keep = 3K - 1``; band mode:
    ``keep = W + 2``, so that the first of three new tokens still finds the W - 1 before it;
    the band mask hides what is older).

    Tokens are appended into a buffer of twice the window; when it fills, the last ``keep``
    tokens move to its front (one copy every ``keep / 3`` steps instead of one per step).
    Buffers: ``(n_layer, B, n_head, 2 * keep + 3, d_head)``, the dtype and device of ``like``.
    """

    def __init__(self, n_layer: int, b: int, n_head: int, d_head: int, keep: int,
                 like: torch.Tensor) -> None:
        shape = (n_layer, b, n_head, 2 * keep + 3, d_head)
        self.k = torch.empty(shape, dtype=like.dtype, device=like.device)
        self.v = torch.empty_like(self.k)
        self.keep = keep
        self.start = self.end = 0

    @property
    def length(self) -> int:
        """Tokens held (at most ``keep``)."""
        return self.end - self.start

    def reserve(self, n: int) -> None:
        """Make room for ``n`` new tokens, keeping the last ``keep - n``."""
        if self.end + n > self.k.shape[3]:
            lo = max(self.start, self.end - (self.keep - n))
            size = self.end - lo
            self.k[:, :, :, :size] = self.k[:, :, :, lo:self.end].clone()
            self.v[:, :, :, :size] = self.v[:, :, :, lo:self.end].clone()
            self.start, self.end = 0, size

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``(B, n_head, n, d_head)`` keys/values after the held tokens; return views of
        the last ``keep`` tokens including them."""
        n = k.shape[2]
        self.k[layer, :, :, self.end:self.end + n] = k
        self.v[layer, :, :, self.end:self.end + n] = v
        lo = max(self.start, self.end + n - self.keep)
        return self.k[layer, :, :, lo:self.end + n], self.v[layer, :, :, lo:self.end + n]

    def commit(self, n: int) -> None:
        """The ``n`` tokens written by :meth:`append` (every layer) are now held."""
        self.end += n
        self.start = max(self.start, self.end - self.keep)


class DecisionTransformer(nn.Module):
    """GPT-style Decision Transformer over (return-to-go, observation, action) tokens."""

    def __init__(self, cfg: DTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(cfg.obs_dim, d)
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
        cfg = self.cfg
        tokens = []
        if prev_actions is not None:
            prev_ts = timesteps - 1 if prev_timesteps is None else prev_timesteps
            tokens.append(self.embed_action(prev_actions) + self.embed_timestep(prev_ts))
        t_emb = self.embed_timestep(timesteps)
        tokens += [self.embed_return(returns_to_go) + t_emb, self.embed_state(observations) + t_emb]
        x = self.embed_ln(torch.stack(tokens, dim=1))  # (B, n, d)
        b, n, d = x.shape
        h = cfg.n_head
        if cache is None:
            # band: the W - 1 tokens before the oldest of up to 3 new ones, and those 3
            keep = 3 * cfg.context_length - 1 if cfg.band is None else cfg.band + 2
            cache = KVCache(cfg.n_layer, b, h, d // h, keep, x)
        cache.reserve(n)
        for block in self.blocks:
            x = block(x, cache=cache)
        cache.commit(n)
        out = self.predict_action(self.ln_f(x[:, -1]))
        if not cfg.discrete and cfg.action_tanh:
            out = torch.tanh(out)
        return out, cache
