"""Causal self-attention, the one attention of the network: plain (window) or banded
(sliding window), over training windows, state-token-only queries and key/value caches alike.

:func:`band_mask` says which keys a query may see; :func:`attend` is scaled dot-product
attention (Vaswani et al. 2017, Eq. 1) with CPU paths of its own, and :func:`attend_branches`
the same for copies of a sequence that share its keys (a beam search's,
``offline_dt.nn.beam_cache``); :class:`CausalSelfAttention` computes queries, keys and values
and attends, in band mode over blocks of W queries (Longformer's sliding window, Beltagy et
al. 2020, Section 3.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from offline_dt.nn.beam_cache import BeamKVCache
from offline_dt.nn.cache import KVCache
from offline_dt.nn.config import DTConfig
from offline_dt.nn.dropout import Dropout, cpu_eager, keep_scale


def band_mask(n: int, total: int, band: int | None, device: torch.device) -> torch.Tensor:
    """``(n, total)`` bool: query ``j`` (key position ``total - n + j``, the last ``n``
    positions) may attend to key ``i`` iff ``i <= total - n + j`` (causal) and, with a
    ``band`` W, ``i > total - n + j - W`` (the last W tokens, itself included)."""
    m = torch.ones(n, total, dtype=torch.bool, device=device).tril(total - n)
    if band is not None:
        m = m.triu(total - n - band + 1)
    return m


#: Queries up to which :func:`attend` uses plain matrix products on a CPU.
FEW_QUERIES = 8


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           causal: bool, dropout: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, mask, dropout, causal)`` (Vaswani et al. 2017,
    Eq. 1). On a CPU (eager) it is computed with plain matrix products when attention-weight
    dropout is on (its mask drawn by :func:`keep_scale`; SDPA's CPU path draws it with
    ``bernoulli_``), when there are at most :data:`FEW_QUERIES` queries (acting from a
    key/value cache: SDPA's CPU kernel has a fixed cost per batch row that dwarfs 1-3 queries)
    or when ``q`` is bfloat16 (under bf16 autocast: SDPA's CPU kernel in bf16, forward and
    backward, took about 2.4x as long as the plain products at the paper's window, 64 windows
    of 60 tokens, head size 128, on an AVX512-BF16 EPYC; ``benchmarks/speed.py`` times
    dropout 0 beside 0.1).

    Args:
        q: ``(B, h, Q, d_head)``; k, v: ``(B, h, T, d_head)``.
        mask: bool (True = may attend) or additive float, broadcastable to ``(B, h, Q, T)``.
        causal: query ``j`` sees keys ``<= j``, with ``Q == T`` (``mask`` must then be None).
        dropout: attention-weight dropout probability.

    Returns:
        ``(B, h, Q, d_head)``.
    """
    plain = dropout > 0.0 or q.shape[-2] <= FEW_QUERIES or q.dtype == torch.bfloat16
    if not (plain and cpu_eager(q)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              is_causal=causal)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        mask = band_mask(q.shape[2], k.shape[2], None, q.device)
    if mask is not None and mask.dtype == torch.bool:
        att = att.masked_fill_(~mask, float("-inf"))  # att is this call's own tensor
    elif mask is not None:
        att = att + mask
    att = torch.softmax(att, dim=-1)
    if dropout > 0.0:
        att = att * keep_scale(tuple(att.shape), dropout, att)
    return att @ v


def attend_branches(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, ks: torch.Tensor,
                    vs: torch.Tensor) -> torch.Tensor:
    """:func:`attend` (no mask, no dropout) of ``P e`` one-token queries over two key sets:
    query ``p e + i`` sees the keys of prefix row ``p``, shared by its ``e`` copies, then its
    own: one softmax over both, each prefix read once for its ``e`` queries (the shared-prefix
    attention of Hydragen, Juravsky et al. 2024, arXiv:2402.05099; used with
    ``offline_dt.nn.beam_cache``).

    Args:
        q: ``(P e, h, 1, d_head)``.
        kp, vp: ``(P, h, Tp, d_head)`` prefix keys/values.
        ks, vs: ``(P e, h, Ts, d_head)`` each query's own keys/values.

    Returns:
        ``(P e, h, 1, d_head)``.
    """
    pe, h, _, dh = q.shape
    p, tp = kp.shape[0], kp.shape[2]
    e = pe // p
    scores = torch.cat((q.reshape(p, e, h, dh).transpose(1, 2) @ kp.transpose(-2, -1),
                        (q @ ks.transpose(-2, -1)).reshape(p, e, h, -1).transpose(1, 2)), -1)
    att = torch.softmax(scores * (1.0 / math.sqrt(dh)), dim=-1)  # (P, h, e, Tp + Ts)
    own = att[..., tp:].transpose(1, 2).reshape(pe, h, 1, -1) @ vs
    return (att[..., :tp] @ vp).transpose(1, 2).reshape(pe, h, 1, dh) + own


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
                queries: slice | None = None, cache: KVCache | BeamKVCache | None = None
                ) -> torch.Tensor:
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
        elif isinstance(cache, BeamKVCache) and cache.branches > 1:
            y = attend_branches(q, *cache.append_branch(self.layer, k, v))
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
    def _mask(attn_mask: torch.Tensor | None, queries: slice | None,
              cache: KVCache | BeamKVCache | None,
              n: int, total: int, device: torch.device, band: int | None = None
              ) -> tuple[torch.Tensor | None, bool]:
        """(SDPA ``attn_mask``, ``is_causal``) for ``n`` queries over ``total`` keys; without
        ``attn_mask`` causal attention, within the last ``band`` tokens when given."""
        if cache is not None:
            # New token j (key position total - n + j) sees the held tokens (within the band
            # in band mode) and the new ones <= j; one new token within the band sees all.
            if n == 1 and (band is None or total <= band):
                return None, False
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
