"""Inverted dropout with a cheap mask draw on the CPU (:class:`Dropout`, :func:`keep_scale`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def keep_scale(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """An inverted-dropout multiplier of ``shape``: 0 with probability ``p`` (rounded to a
    multiple of 2^-16), else ``1 / (1 - p)``, in ``like``'s dtype and device.

    The draw takes four 16-bit uniform integers from each 64-bit draw of torch's default
    generator, where ``torch.bernoulli_`` (``nn.Dropout``) draws once per element, a large
    share of a CPU training step (``benchmarks/speed.py`` times dropout 0.1 beside 0). An
    integer ``u`` is kept iff ``u >= drop - 2^15`` (``drop = round(p * 2^16)``); the 0/1 keep
    flag is ``clamp(u, t - 1, t) - (t - 1)`` with ``t = drop - 2^15``, computed in int16 and
    converted (vectorised integer kernels; a ``torch.where`` on the comparison was several
    times slower on a CPU), then scaled, in ``like``'s dtype: the same values as
    ``where(u >= t, 1 / (1 - p), 0)`` rounded to that dtype."""
    n = math.prod(shape)
    drop = round(p * 65536)  # dropped values among the 2^16
    if drop >= 65536:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device)
    bits = bits.random_(-(2 ** 63), 2 ** 63 - 1).view(torch.int16)[:n].view(shape)
    if drop == 0:  # every value kept (p under 2^-17); the draw above still advances alike
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    t = drop - 32768  # kept iff bits >= t; t - 1 >= -32768 fits int16
    keep = bits.clamp(t - 1, t).sub_(t - 1)  # int16, 1 = kept, 0 = dropped
    return keep.to(like.dtype).mul_(65536 / (65536 - drop))


def cpu_eager(t: torch.Tensor) -> bool:
    """``t`` is on the CPU and not being traced by ``torch.compile``: where :class:`Dropout`
    and ``offline_dt.nn.attention.attend`` use their own paths instead of torch's fused kernels."""
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
        if not cpu_eager(x):
            return F.dropout(x, self.p, True)
        return x * keep_scale(tuple(x.shape), self.p, x)

