"""The network layer: the transformer (:mod:`~offline_dt.nn.transformer`), its shape
(:mod:`~offline_dt.nn.config`), attention (:mod:`~offline_dt.nn.attention`, window or band),
key/value caches (:mod:`~offline_dt.nn.cache`), dropout (:mod:`~offline_dt.nn.dropout`) and
the parts networks share; nothing about losses or data."""

from __future__ import annotations

from offline_dt.nn.cache import KVCache, cache_is_exact
from offline_dt.nn.config import ATTENTION_KINDS, DTConfig
from offline_dt.nn.transformer import DecisionTransformer

__all__ = ["ATTENTION_KINDS", "DTConfig", "DecisionTransformer", "KVCache", "cache_is_exact"]
