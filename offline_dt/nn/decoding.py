"""Decoding token by token from a key/value cache: what the token models share (the Decision
Transformer's cached acting, ``offline_dt.nn.transformer.DecisionTransformer.step_cached``;
the Trajectory Transformer's planner, ``offline_dt.methods.tt_planner``; GATO's action
decoder, ``offline_dt.methods.gato_policy``).

:func:`cached_forward` pushes the embeddings of new tokens through a stack of blocks that
attend over a :class:`~offline_dt.nn.cache.KVCache` (the held tokens' keys and values) and
the new tokens; :func:`top_p_sample` draws the next token from logits, nucleus sampling
(Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", Section 3.1) from given
uniforms, so the caller owns the random stream.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from offline_dt.nn.beam_cache import BeamKVCache
from offline_dt.nn.cache import KVCache


def cached_forward(blocks: Iterable[nn.Module], x: torch.Tensor,
                   cache: KVCache | BeamKVCache, commit: bool = True) -> torch.Tensor:
    """Push ``n`` new tokens through ``blocks`` from ``cache``.

    Args:
        blocks: the network's blocks in order (``offline_dt.nn.transformer.Block``: each
            called as ``block(x, cache=cache)``, attending over the held tokens and the new
            ones up to itself, and writing the new keys and values into ``cache``).
        x: ``(B, n, d)`` embedded new tokens (the rows of ``cache``).
        cache: room is made for the ``n`` tokens (``KVCache.reserve``); a
            ``offline_dt.nn.beam_cache.BeamKVCache`` alike.
        commit: the new tokens are held afterwards (``KVCache.commit``); False: a query only,
            overwritten by the next push.

    Returns:
        ``(B, n, d)`` the last block's outputs for the new tokens.
    """
    n = x.shape[1]
    cache.reserve(n)
    for block in blocks:
        x = block(x, cache=cache)
    if commit:
        cache.commit(n)
    return x


def top_p_sample(logits: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """``(R,)`` tokens drawn from ``(R, V)`` logits restricted to the smallest set of tokens
    whose probability reaches ``top_p`` (most likely first), by inverting its renormalised CDF
    at the uniforms ``u`` ``(R,)`` in ``[0, 1)``. ``top_p`` 1 samples the whole distribution;
    a ``top_p`` below the most likely token's probability always takes that token (greedy).
    Tokens at ``-inf`` are never drawn. Computed in float32 (float64 for float64 logits)."""
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    p, order = probs.sort(-1, descending=True)
    keep = (p.cumsum(-1) - p) < top_p  # the mass before a token is still short of top_p
    p = p * keep
    cdf = p.cumsum(-1)
    u = u.to(cdf.dtype)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=p.shape[1] - 1)
    return order.gather(1, pick)[:, 0]
