"""Key/value caches for acting one step at a time (``DecisionTransformer.step_cached``).

:class:`KVCache` holds the keys and values of the last tokens of every block; in band mode
(``DTConfig.attention == "band"``) acting from it equals the banded forward over the whole
episode (:func:`cache_is_exact`; Mistral 7B's rolling buffer cache, Jiang et al. 2023,
Section 2).
"""

from __future__ import annotations

import torch

from offline_dt.nn.config import DTConfig


def cache_is_exact(cfg: DTConfig | None) -> bool:
    """True when ``DecisionTransformer.step_cached`` equals full recomputation for the
    whole episode: a band-attention network (``cfg.attention == "band"``). A network without
    a ``DTConfig`` (None) is not."""
    return cfg is not None and getattr(cfg, "attention", "window") == "band"


class KVCache:
    """Keys and values of the last ``keep`` tokens of every block, for
    ``DecisionTransformer.step_cached`` (window mode: ``keep = 3K - 1``; band mode:
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

    @classmethod
    def for_config(cls, cfg: DTConfig, like: torch.Tensor) -> KVCache:
        """An empty cache for a network of shape ``cfg`` acting on the ``B`` episodes of
        ``like`` (``(B, n, embed_dim)`` new tokens): ``keep = 3K - 1`` in window mode; in band
        mode ``W + 2``, the W - 1 tokens before the oldest of up to 3 new ones, and those 3."""
        keep = 3 * cfg.context_length - 1 if cfg.band is None else cfg.band + 2
        return cls(cfg.n_layer, like.shape[0], cfg.n_head, cfg.embed_dim // cfg.n_head, keep,
                   like)

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

    def select(self, rows: torch.Tensor, room: int | None = None) -> KVCache:
        """A new cache holding the episodes ``rows`` ``(B',) int64`` of this one (repeated or
        reordered, as beam search expands and prunes its beams); this cache is unchanged.
        Only the held tokens are copied, into a buffer with ``room`` free slots after them
        (None: this cache's buffer length)."""
        held = self.end - self.start
        size = self.k.shape[3] if room is None else max(held + room, self.keep + 1)
        out = KVCache.__new__(KVCache)
        out.k = self.k.new_empty(self.k.shape[0], len(rows), *self.k.shape[2:3], size,
                                 self.k.shape[4])
        out.v = torch.empty_like(out.k)
        out.k[:, :, :, :held] = self.k[:, :, :, self.start:self.end].index_select(1, rows)
        out.v[:, :, :, :held] = self.v[:, :, :, self.start:self.end].index_select(1, rows)
        out.keep, out.start, out.end = self.keep, 0, held
        return out

    def commit(self, n: int) -> None:
        """The ``n`` tokens written by :meth:`append` (every layer) are now held."""
        self.end += n
        self.start = max(self.start, self.end - self.keep)
