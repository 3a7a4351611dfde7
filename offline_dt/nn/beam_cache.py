"""A key/value cache for beam search over a band-attention network
(``offline_dt.methods.tt_planner``): sequences forked from an acting
:class:`~offline_dt.nn.cache.KVCache`, copied into branches without copying, pruned in place.

:class:`BeamKVCache` has :class:`KVCache`'s interface (``reserve``, ``append``, ``commit``;
attending from it equals the banded forward over the whole sequence, as there) and three
more steps, the three of a beam search: :meth:`BeamKVCache.fork` (the beams of each episode),
:meth:`BeamKVCache.expand` (every beam copied ``e`` times, its copies sharing its keys and
values; the shared-prefix attention of Hydragen, Juravsky et al. 2024, arXiv:2402.05099) and
:meth:`BeamKVCache.select` (the chosen rows kept, their keys and values moved to the front of
a preallocated second buffer with one ``index_select``).
"""

from __future__ import annotations

import torch

from offline_dt.nn.cache import KVCache


class BeamKVCache:
    """Keys and values of ``R`` band-attention token sequences (module docstring).

    The held tokens (the prefix) live in ``kv`` ``(n_layer, 2, P, n_head, keep + room,
    d_head)`` (keys, values; the dtype and device of the cache forked from); ``keep`` = band
    - 1, what the first new token may see. After :meth:`expand` with ``e`` > 1 the cache holds
    ``R = P e`` rows, row ``p e + i`` a copy of prefix row ``p``: their new tokens (the
    suffix, one a push) go to a buffer ``(n_layer, 2, P e, n_head, room, d_head)`` and
    attention reads each prefix row once for its ``e`` copies (:meth:`append_branch`,
    ``offline_dt.nn.attention.attend_branches``). :meth:`select` writes the chosen rows'
    prefix tails and suffixes to the front of the spare prefix buffer and swaps the two: no
    whole-buffer copy and, after the first forks, no allocation (a buffer grows when more
    rows are asked for than it has). :meth:`reserve` compacts the same way when the ``room``
    runs out.
    """

    def __init__(self, n_layer: int, rows: int, n_head: int, d_head: int, keep: int,
                 room: int, like: torch.Tensor) -> None:
        self.kv = torch.empty(n_layer, 2, rows, n_head, keep + room, d_head, dtype=like.dtype,
                              device=like.device)
        self.spare: torch.Tensor | None = None
        self.suffix: torch.Tensor | None = None
        self.prefix_rows, self.keep, self.room = rows, keep, room
        self.start = self.end = 0
        self.branches, self.s_end = 1, 0  # copies per prefix row; suffix tokens held

    @classmethod
    def fork(cls, cache: KVCache, rows: torch.Tensor, keep: int, room: int) -> BeamKVCache:
        """The sequences ``rows`` ``(R,) int64`` of an acting :class:`KVCache` (unchanged):
        their last ``keep`` held tokens, with ``room`` free slots after them."""
        n_layer, _, n_head, _, d_head = cache.k.shape
        out = cls(n_layer, len(rows), n_head, d_head, keep, room, cache.k)
        lo = max(cache.start, cache.end - keep)
        n = cache.end - lo
        for i, src in enumerate((cache.k, cache.v)):
            torch.index_select(src[:, :, :, lo:cache.end], 1, rows, out=out.kv[:, i, :, :, :n])
        out.end = n
        return out

    @property
    def rows(self) -> int:
        """Sequences held, ``P e``."""
        return self.prefix_rows * self.branches

    @property
    def length(self) -> int:
        """Tokens held per sequence (at most ``keep`` + the suffix's)."""
        return self.end - self.start + self.s_end

    def _buffer(self, name: str, rows: int, length: int) -> torch.Tensor:
        """The buffer ``name`` with at least ``rows`` rows (grown, contents lost, if not)."""
        buf = getattr(self, name)
        if buf is None or buf.shape[2] < rows:
            shape = list(self.kv.shape)
            shape[2], shape[4] = rows, length
            buf = self.kv.new_empty(shape)
            setattr(self, name, buf)
        return buf

    def expand(self, e: int) -> None:
        """Every sequence copied ``e`` times: row ``p e + i`` becomes a copy of row ``p``,
        the copies sharing its keys and values; their new tokens are their own."""
        if self.branches > 1:
            self.select(torch.arange(self.rows, device=self.kv.device))
        if e > 1:
            self._buffer("suffix", self.prefix_rows * e, self.room)
            self.branches, self.s_end = e, 0

    def select(self, rows: torch.Tensor) -> None:
        """Keep the sequences ``rows`` ``(R',) int64`` (repeated or reordered), in place:
        the last ``keep`` tokens of each, its prefix's then its suffix's, move to the front
        of the spare buffer, which becomes the prefix buffer."""
        r, e, s = len(rows), self.branches, self.s_end
        own = min(s, self.keep)
        a = min(self.end - self.start, self.keep - own)  # prefix tokens still within reach
        spare = self._buffer("spare", r, self.kv.shape[4])
        parents = rows if e == 1 else torch.div(rows, e, rounding_mode="floor")
        if a:
            torch.index_select(self.kv[:, :, :self.prefix_rows, :, self.end - a:self.end], 2,
                               parents, out=spare[:, :, :r, :, :a])
        if own:
            torch.index_select(self.suffix[:, :, :self.rows, :, s - own:s], 2, rows,
                               out=spare[:, :, :r, :, a:a + own])
        self.kv, self.spare = spare, self.kv
        self.prefix_rows, self.start, self.end = r, 0, a + own
        self.branches, self.s_end = 1, 0

    def reserve(self, n: int) -> None:
        """Make room for ``n`` new tokens (compacting when a buffer is full).

        Raises:
            ValueError: ``n`` is more than the ``room`` the cache was made with, or more
                than one token after :meth:`expand`."""
        if n > self.room or (self.branches > 1 and n != 1):
            raise ValueError(f"BeamKVCache: {n} new tokens, room for {self.room} (one at a "
                             f"time while expanded into {self.branches} copies)")
        if self.branches > 1:
            if self.s_end + n > self.room:
                self.select(torch.arange(self.rows, device=self.kv.device))
        elif self.end + n > self.kv.shape[4]:
            self.select(torch.arange(self.rows, device=self.kv.device))

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Not expanded (``branches`` 1): as :meth:`KVCache.append`, write ``(R, n_head, n,
        d_head)`` keys/values after the held tokens; views ``(R, n_head, T, d_head)`` of the
        last ``keep`` held tokens and the ``n`` new ones."""
        n, r, end = k.shape[2], self.prefix_rows, self.end
        self.kv[layer, 0, :r, :, end:end + n] = k
        self.kv[layer, 1, :r, :, end:end + n] = v
        lo = max(self.start, end - self.keep)
        return self.kv[layer, 0, :r, :, lo:end + n], self.kv[layer, 1, :r, :, lo:end + n]

    def append_branch(self, layer: int, k: torch.Tensor, v: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expanded: write the ``(P e, n_head, 1, d_head)`` keys/values of one new token of
        every row after its suffix; the keys and values it may see, ``(prefix keys, prefix
        values)`` ``(P, n_head, Tp, d_head)`` and ``(suffix keys, suffix values)`` ``(P e,
        n_head, Ts, d_head)`` (the new token last), ``Tp + Ts`` <= band."""
        r, s = self.rows, self.s_end
        self.suffix[layer, 0, :r, :, s:s + 1] = k
        self.suffix[layer, 1, :r, :, s:s + 1] = v
        lo = max(self.start, self.end - max(self.keep - s, 0))
        lo_s = max(0, s - self.keep)
        p = self.prefix_rows
        return (self.kv[layer, 0, :p, :, lo:self.end], self.kv[layer, 1, :p, :, lo:self.end],
                self.suffix[layer, 0, :r, :, lo_s:s + 1], self.suffix[layer, 1, :r, :, lo_s:s + 1])

    def commit(self, n: int) -> None:
        """As :meth:`KVCache.commit`."""
        if self.branches > 1:
            self.s_end += n
            return
        self.end += n
        self.start = max(self.start, self.end - self.keep)
