"""The memory budget of a training step: refuse sizes the data or the machine cannot hold,
before anything is allocated (:func:`check_sizes`)."""

from __future__ import annotations

from typing import Any

import torch

from offline_dt.data.validate import available_memory as host_available_memory
from offline_dt.training.train_config import TrainConfig


def check_sizes(cfg: TrainConfig, shape: dict[str, Any], device: torch.device,
                new_run: bool) -> TrainConfig:
    """Resolve the defaults the data bounds (:meth:`TrainConfig.resolved`), then refuse what
    the data or the machine cannot hold, before anything is allocated.

    Raises:
        ValueError: (new run) ``context_length`` exceeds the longest episode; or a training
            step's estimated memory (:func:`estimate_step_bytes`) exceeds what is available
            (:func:`available_memory`); the message names the arguments and both sizes.
    """
    longest = int(shape["longest_episode"])
    cfg = cfg.resolved(longest, device)
    if new_run and cfg.context_length > longest:
        raise ValueError(
            f"TrainConfig.context_length={cfg.context_length} exceeds the longest episode of "
            f"{shape['source']} ({longest} steps): a window holds timesteps of one episode; "
            f"pass context_length <= {longest}")
    need = estimate_step_bytes(cfg, int(shape["obs_dim"]), int(shape["act_dim"]))
    have = available_memory(device)
    if have is not None and need > have:
        raise ValueError(
            f"a training step needs about {_size(need)} (batch_size={cfg.batch_size}, "
            f"context_length={cfg.context_length}, attention={cfg.attention!r}: "
            f"{3 * _steps(cfg)} tokens, "
            f"embed_dim={cfg.embed_dim}, n_layer={cfg.n_layer}, n_head={cfg.n_head}, "
            f"max_timestep={cfg.max_timestep}) but {_size(have)} is available on "
            f"{device}; reduce batch_size, context_length, embed_dim or n_layer (band: "
            f"segment_length)")
    return cfg


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _steps(cfg: TrainConfig) -> int:
    """Timesteps per training sequence: K windows, or S segments with band attention."""
    return cfg.segment_length if cfg.attention == "band" and cfg.segment_length else \
        cfg.context_length


def estimate_step_bytes(cfg: TrainConfig, obs_dim: int, act_dim: int) -> int:
    """Rough peak bytes of one fp32 training step of the Decision Transformer (an upper-side
    estimate; the point is to catch sizes that cannot fit, not to predict exactly).

    With B = batch_size, T = 3 K tokens (3 S with band attention, S = segment_length),
    d = embed_dim, L = n_layer, h = n_head:
    parameters P ≈ L (12 d² + 13 d) + (max_timestep + obs_dim + act_dim + 5) d + act_dim (d+1),
    held 4 times (weights, gradients, AdamW's two moments) at 4 bytes; attention
    4 · B h T² L · 4 bytes (scores, probabilities, dropout mask, their gradient); other
    activations 24 · B T d L · 4 bytes (LayerNorms, q/k/v, projections, the 4d MLP).
    """
    b, t, d, layers = cfg.batch_size, 3 * _steps(cfg), cfg.embed_dim, cfg.n_layer
    params = layers * (12 * d * d + 13 * d) + (cfg.max_timestep + obs_dim + act_dim + 5) * d \
        + act_dim * (d + 1)
    attention = 4 * b * cfg.n_head * t * t * layers
    activations = 24 * b * t * d * layers
    return 4 * (4 * params + attention + activations)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation: CUDA's free memory on a CUDA device; else what the
    data layer's readers check against (:func:`offline_dt.data.validate.available_memory`:
    Linux ``MemAvailable`` or free pages, capped by a cgroup memory limit). None when it
    cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return host_available_memory()

