"""Batch statistics over every rank of a DDP run, for losses that need one (SyncBatchNorm's
idea): the methods call this; process groups themselves belong to
``offline_dt.training.distributed``."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["global_mean"]


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over every rank's elements (all-reduced sum and count), for a
    detached batch statistic a method's loss uses (like SyncBatchNorm's); ``values.mean()``
    in a single process. Call it on detached values: the reduction carries no gradient.

    Args:
        values: any shape, float dtype.

    Returns:
        a 0-d tensor of ``values.dtype`` (the sum is taken in float32)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values.mean()
    both = torch.stack((values.detach().sum(dtype=torch.float32),
                        torch.tensor(float(values.numel()), device=values.device)))
    dist.all_reduce(both)
    return (both[0] / both[1]).to(values.dtype)
