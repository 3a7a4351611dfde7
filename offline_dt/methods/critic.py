"""Building blocks of the value-guided methods' critics (``qt``, ``odt`` with TD3 gradients,
``dqn``): the MLP, the Polyak-averaged target update, and the check that a Q term
differentiated through the action has Box actions."""

from __future__ import annotations

import torch
from torch import nn

from offline_dt.nn.config import DTConfig


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """Two ``hidden``-wide ReLU layers and a linear output (IQL's and TD3's critic MLP)."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, out))


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """``θ' ← rate·θ + (1 - rate)·θ'`` for every parameter of ``target`` (a copy at
    ``rate = 1``); buffers are copied. Both modules have the same structure."""
    for p_t, p in zip(target.parameters(), source.parameters(), strict=True):
        p_t.lerp_(p, rate)
    for b_t, b in zip(target.buffers(), source.buffers(), strict=True):
        b_t.copy_(b)


def require_box_actions(cfg: DTConfig, term: str, off: str) -> None:
    """Refuse a Q term differentiated through the action (``term``, e.g. ``"qt's Q term
    (eta=1.0)"``) for Discrete actions.

    Raises:
        ValueError: ``cfg`` has Discrete actions; the message names ``off``, the flag
            (and option) that turns the term off.
    """
    if cfg.discrete:
        raise ValueError(f"{term} differentiates Q through the action and needs Box actions; "
                         f"this dataset has Discrete({cfg.act_dim}) actions: pass "
                         f"{off}")
