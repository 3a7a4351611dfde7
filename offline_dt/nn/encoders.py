"""Observation encoders, chosen from the observation space: what turns one step's observation
into the one state token of width ``d``.

- A flat Box ``(obs_dim,)`` (no layout): ``nn.Linear(obs_dim, d)``, the Decision Transformer's
  state embedding (Chen et al. 2021, Section 3), exactly as it always was.
- Any other space has a layout (``offline_dt.data.layout``): the network reads its flat view
  ``(..., obs_dim)`` and :class:`DictEncoder` splits it into leaves, encodes each into ``d``
  and sums them into the one token. Summing is a linear map of the concatenated leaf
  features (so a Dict of vector leaves is a linear embedding of their concatenation, as for
  a flat Box); a leaf's encoder is

  - ``vector``: ``nn.Linear(width, d)``;
  - ``image`` ``(H, W, C)`` (scaled to [0, 1] by the normaliser): :class:`ImageEncoder`, the
    DT paper's Atari encoder (Chen et al. 2021, Appendix A; the Nature-DQN convolutions of
    Mnih et al. 2015): 32 8x8/4, 64 4x4/2, 64 3x3/1, ReLU, then ``Linear(·, d)`` and tanh;
    for views smaller than 36 pixels (MiniGrid's 7x7) three 3x3 stride-1 padded
    convolutions of 32, 64, 64 channels instead (an 8x8/4 kernel does not fit), so a 7x7
    view gives 7·7·64 = 3136 features, as an 84x84 frame does through the Nature stack;
  - ``discrete`` ``Discrete(n, start)``: ``nn.Embedding(n, d)`` of the value minus ``start``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Images at least this many pixels high and wide get the Nature-DQN convolutions.
NATURE_MIN_SIZE = 36


def state_encoder(obs_dim: int, width: int, layout: Any = None) -> nn.Module:
    """The encoder of one step's observation ``(..., obs_dim)`` → ``(..., width)``: a Linear
    for a flat Box (``layout`` None), else a :class:`DictEncoder` of ``layout`` (a list of
    ``Leaf.to_json`` dicts, as ``DTConfig.obs_layout`` holds it).

    Raises:
        ValueError: the layout's widths do not add up to ``obs_dim``, or a leaf's kind is
            unknown.
    """
    if layout is None:
        return nn.Linear(obs_dim, width)
    enc = DictEncoder(layout, width)
    if enc.obs_dim != obs_dim:
        raise ValueError(f"DTConfig.obs_layout: its leaves are {enc.obs_dim} columns wide, "
                         f"obs_dim is {obs_dim}")
    return enc


class ImageEncoder(nn.Module):
    """``(B, H·W·C)`` image in [0, 1] (channels last, flattened) → ``(B, d)`` (module
    docstring)."""

    def __init__(self, shape: tuple[int, int, int], d: int) -> None:
        super().__init__()
        h, w, c = (int(x) for x in shape)
        self.shape = (h, w, c)
        if min(h, w) >= NATURE_MIN_SIZE:
            convs = [nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2),
                     nn.ReLU(), nn.Conv2d(64, 64, 3, stride=1), nn.ReLU()]
        else:
            convs = [nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                     nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            features = self.convs(torch.zeros(1, c, h, w)).shape[1]
        self.project = nn.Sequential(nn.Linear(features, d), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w, c = self.shape
        img = x.reshape(-1, h, w, c).permute(0, 3, 1, 2)
        return self.project(self.convs(img))


class DiscreteEncoder(nn.Module):
    """``(B, 1)`` float column holding a ``Discrete(n, start)`` value → ``(B, d)``."""

    def __init__(self, n: int, start: int, d: int) -> None:
        super().__init__()
        self.n, self.start = int(n), int(start)
        self.embed = nn.Embedding(self.n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (x[:, 0].round().long() - self.start).clamp(0, self.n - 1)
        return self.embed(index)


class DictEncoder(nn.Module):
    """The flat view ``(..., obs_dim)`` of a layout → ``(..., d)``: the sum of each leaf's
    encoding (module docstring).

    Args:
        layout: ``Leaf.to_json`` dicts (``key``, ``kind``, ``shape``, ``n``, ``start``), in
            the order of the flat view's columns.
        d: output width.
    """

    def __init__(self, layout: Any, d: int) -> None:
        super().__init__()
        self.spans: list[tuple[int, int]] = []
        encoders = []
        offset = 0
        for leaf in layout:
            shape = tuple(int(s) for s in leaf["shape"])
            width = int(torch.tensor(shape).prod()) if shape else 1
            kind = leaf["kind"]
            if kind == "vector":
                encoders.append(nn.Linear(width, d))
            elif kind == "image":
                encoders.append(ImageEncoder(shape, d))  # type: ignore[arg-type]
            elif kind == "discrete":
                encoders.append(DiscreteEncoder(leaf["n"], leaf.get("start", 0), d))
            else:
                raise ValueError(f"DTConfig.obs_layout: leaf '{leaf['key']}' has kind "
                                 f"{kind!r}, expected vector, image or discrete")
            self.spans.append((offset, offset + width))
            offset += width
        self.obs_dim = offset
        self.leaves = nn.ModuleList(encoders)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        out = None
        for (lo, hi), enc in zip(self.spans, self.leaves, strict=True):
            h = enc(flat[:, lo:hi])
            out = h if out is None else out + h
        return out.reshape(*lead, -1)
