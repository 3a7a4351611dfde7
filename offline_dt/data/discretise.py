"""A per-dimension discretiser: continuous values to bin tokens and back (the tokeniser of the
Trajectory Transformer, Janner, Li and Levine 2021, "Offline Reinforcement Learning as One Big
Sequence Modeling Problem", Section 3.1 "Discretization"; ``jannerm/trajectory-transformer``
``trajectory/utils/discretization.py``).

Each dimension ``d`` of a ``(n, D)`` sample gets its own ``N + 1`` bin edges: ``quantile``
(TT's default: edge ``i`` is the ``i / N`` quantile of the column, so every bin holds about
``n / N`` values) or ``uniform`` (``N`` equal widths from the column's minimum to its maximum).
A value encodes to the bin ``i`` with ``edges[i] <= x < edges[i + 1]`` (values outside the
edges go to the first or last bin) and decodes to that bin's ``midpoint`` (TT's
``reconstruct``) or the ``mean`` of the fitted values that fell in it (the midpoint for an
empty bin). :func:`fit_bins` returns plain tensors, so a network can hold them as buffers and
its checkpoint carries them (``offline_dt.methods.tt``): evaluation never refits.

GATO's tokens need no fitting (:func:`mu_law_encode`, :func:`mu_law_decode`; Reed et al.
2022, "A Generalist Agent", Section 2.1): every continuous value is mu-law companded into
``[-1, 1]`` and cut into uniform bins (``offline_dt.methods.gato``).
"""

from __future__ import annotations

import numpy as np
import torch

#: How :func:`fit_bins` places edges and how a bin decodes.
BIN_KINDS = ("quantile", "uniform")
DECODE_KINDS = ("midpoint", "mean")


def fit_bins(values: np.ndarray, n_bins: int, kind: str = "quantile",
             decode: str = "midpoint") -> tuple[torch.Tensor, torch.Tensor]:
    """Bin edges and the decoded value of every bin, per dimension of ``values``.

    Args:
        values: ``(n, D)`` finite sample (any float dtype), ``n >= 1``.
        n_bins: N, bins per dimension (>= 1).
        kind: ``quantile`` (edges at the ``i / N`` quantiles, linear interpolation, as
            ``np.quantile``) or ``uniform`` (equal widths over ``[min, max]``).
        decode: ``midpoint`` of each bin's edges or ``mean`` of the sample values in it.

    Returns:
        ``(edges (D, N + 1) float32, centres (D, N) float32)``.

    Raises:
        ValueError: an unknown ``kind``/``decode``, ``n_bins < 1``, an empty or non-finite
            sample, or ``values`` not 2-D (names what was found).
    """
    if kind not in BIN_KINDS or decode not in DECODE_KINDS:
        raise ValueError(f"discretiser: kind must be one of {BIN_KINDS} and decode one of "
                         f"{DECODE_KINDS}, found {kind!r} and {decode!r}")
    x = np.asarray(values, np.float64)
    if n_bins < 1 or x.ndim != 2 or x.shape[0] == 0 or not np.isfinite(x).all():
        raise ValueError(f"discretiser: needs n_bins >= 1 and a finite (n >= 1, D) sample, "
                         f"found n_bins={n_bins} and shape {x.shape}")
    if kind == "quantile":
        edges = np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1), axis=0).T
    else:
        lo, hi = x.min(0), x.max(0)
        edges = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, n_bins + 1)[None]
    edges_t = torch.from_numpy(np.ascontiguousarray(edges)).float()
    centres = (edges_t[:, :-1] + edges_t[:, 1:]) / 2
    if decode == "mean":
        bins = encode(torch.from_numpy(x).float(), edges_t)  # (n, D)
        d = x.shape[1]
        flat = bins + torch.arange(d) * n_bins  # one bin id per (dimension, bin)
        sums = torch.zeros(d * n_bins, dtype=torch.float64).index_add_(
            0, flat.reshape(-1), torch.from_numpy(x).reshape(-1))
        counts = torch.bincount(flat.reshape(-1), minlength=d * n_bins).double()
        means = (sums / counts.clamp(min=1)).view(d, n_bins).float()
        centres = torch.where(counts.view(d, n_bins) > 0, means, centres)
    return edges_t, centres


def encode(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``(..., D)`` values → ``(..., D) int64`` bins in ``[0, N)``: bin ``i`` holds
    ``edges[d, i] <= x < edges[d, i + 1]``; values below the first edge go to bin 0, values at
    or above the last to bin ``N - 1``. With repeated edges (a value that fills several
    quantile bins) a value equal to them goes to the last of those bins.

    Args:
        values: ``(..., D)`` float.
        edges: ``(D, N + 1)`` from :func:`fit_bins`.
    """
    inner = edges[:, 1:-1].to(values.dtype).contiguous()  # (D, N - 1)
    d = edges.shape[0]
    flat = values.reshape(-1, d).T.contiguous()  # (D, m)
    bins = torch.searchsorted(inner, flat, right=True)  # (D, m) in [0, N - 1]
    return bins.T.reshape(values.shape)


def decode(bins: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``(..., D) int64`` bins → ``(..., D) float32`` decoded values (``centres[d, bin]``)."""
    d = centres.shape[0]
    flat = bins.reshape(-1, d).clamp(0, centres.shape[1] - 1)
    return torch.gather(centres.T, 0, flat).reshape(bins.shape)


# ------------------------------------------------------------------ mu-law (GATO's tokens)
def mu_law(values: torch.Tensor, mu: float = 100.0, m: float = 256.0) -> torch.Tensor:
    """Mu-law companding of GATO (Reed et al. 2022, "A Generalist Agent", Section 2.1):
    ``F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1)``, float32 of the shape of ``values``;
    ``|x| <= M`` maps into ``[-1, 1]`` (larger values beyond, clipped by
    :func:`mu_law_encode`)."""
    x = values.float()
    return torch.sign(x) * torch.log1p(x.abs() * mu) / float(np.log1p(m * mu))


def mu_law_encode(values: torch.Tensor, n_bins: int = 1024, mu: float = 100.0,
                  m: float = 256.0) -> torch.Tensor:
    """GATO's continuous tokens: :func:`mu_law` of ``values`` clipped to ``[-1, 1]``, then
    ``n_bins`` uniform bins over ``[-1, 1]``: bin ``floor((F + 1) / 2 · n_bins)``, the top
    edge in the last bin. ``(...) int64`` in ``[0, n_bins)``."""
    f = mu_law(values, mu, m).clamp(-1.0, 1.0)
    return ((f + 1.0) * (0.5 * n_bins)).floor().long().clamp(0, n_bins - 1)


def mu_law_decode(bins: torch.Tensor, n_bins: int = 1024, mu: float = 100.0,
                  m: float = 256.0) -> torch.Tensor:
    """Inverse of :func:`mu_law_encode`: the bin's centre in companded units,
    ``F = (b + 1/2) · 2 / n_bins - 1``, expanded by the inverse of :func:`mu_law`,
    ``x = sgn(F) ((M mu + 1)^|F| - 1) / mu``. ``(...) float32``; encoding the result gives
    ``bins`` back."""
    f = (bins.float() + 0.5) * (2.0 / n_bins) - 1.0
    return torch.sign(f) * torch.expm1(f.abs() * float(np.log1p(m * mu))) / mu
