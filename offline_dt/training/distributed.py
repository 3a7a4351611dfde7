"""Data-parallel training on torch DistributedDataParallel: the process group and its helpers.

``torchrun --nproc-per-node N -m offline_dt.cli train ...`` starts N processes (ranks) that
train ONE model: :func:`offline_dt.training.loop.train` opens the process group here (backend
``gloo`` on CPU, ``nccl`` on CUDA, one GPU per local rank) when ``WORLD_SIZE > 1``, or joins a
group the caller opened. What makes N ranks reproduce the single-process run:

- **the batch**: every rank draws the same global batch of ``batch_size`` windows (same
  sampler generator, same seed) and gathers only its contiguous shard
  (``WindowSampler.sample_shard``), so the shards together are the single-process batch;
- **the loss**: a method's loss is a mean over the real (unpadded) steps of its batch, and DDP
  averages gradients over ranks. A plain average of per-shard means is not the mean over the
  global batch when shards hold different numbers of real steps, so each rank's loss is
  scaled by ``world_size * share`` (:func:`loss_scale`), ``share`` being its shard's
  fraction of the global batch's real steps: the averaged gradient is then exactly the
  gradient of the global masked mean, for any shard sizes;
- **the update**: identical initial parameters (same seed; DDP also broadcasts rank 0's) and
  identical averaged gradients give identical clipping, AdamW steps and ``Method.after_step``
  (e.g. ``qt``'s target network) on every rank.

Exact up to float summation order, with two limits: dropout masks are drawn per rank
(:func:`rank_seed`), so with ``dropout > 0`` a run equals the single-process one in
distribution only; and a detached batch statistic inside a loss (e.g. a normaliser
``E|Q|``) is per shard unless the method computes it with
:func:`offline_dt.nn.collectives.global_mean`, the way SyncBatchNorm does for BatchNorm.

Only rank 0 touches the run directory (lock, logs, checkpoints, ``config.json``, the eval
hook); the others wait for it in the next collective. A rank that dies ends the job: torchrun
stops the other workers, and a rank whose peer is gone or silent fails its next collective
(gloo reports a closed connection at once; anything else fails after ``timeout_s``, the
process-group timeout) with :class:`DistributedError`.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["DistributedError", "Ranks", "loss_scale", "process_group",
           "rank_seed"]


class DistributedError(RuntimeError):
    """A collective with the other ranks failed: a rank died, or none answered in time."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (a single process: rank 0 of 1).

    Attributes:
        rank: global rank.
        world_size: number of ranks.
        local_rank: rank on this machine (its GPU index on CUDA).
        device: the device this rank trains on.
        timeout_s: the process group's timeout (seconds), for error messages.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = 0.0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 alone, its result broadcast to every rank.

        Raises:
            on rank 0, whatever ``fn`` raised; on the others, a RuntimeError quoting it.
        """
        if not self.distributed:
            return fn()
        out: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                out[0] = (True, fn())
            except Exception as e:  # the other ranks must hear of it, or they wait forever
                error, out[0] = e, (False, f"{type(e).__name__}: {e}")
        self.collective(lambda: dist.broadcast_object_list(out, src=0, device=self._obj_device),
                        "receiving rank 0's run directory state")
        ok, value = out[0]
        if error is not None:
            raise error
        if not ok:
            raise RuntimeError(f"rank {self.rank}: rank 0 failed ({value})")
        return value

    def all_gather(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self.collective(lambda: dist.all_gather_object(out, obj), what)
        return out

    def all_reduce_sum(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """``t`` summed over ranks (in place)."""
        if self.distributed:
            self.collective(lambda: dist.all_reduce(t), what)
        return t

    def collective(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` (which talks to the other ranks); its failure as :class:`DistributedError`
        naming this rank, what it was doing and the timeout."""
        try:
            return fn()
        except DistributedError:
            raise
        except (RuntimeError, dist.DistError) as e:
            if not self.distributed or not _is_comm_error(e):
                raise
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank died or "
                f"did not answer within the process-group timeout ({self.timeout_s:g} s, "
                f"--dist-timeout); see the other ranks' output for the first error "
                f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})") from e

    @property
    def _obj_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None


def _is_comm_error(e: BaseException) -> bool:
    """Whether ``e`` came from the communication layer (not, say, a shape error)."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return any(s in text for s in ("gloo", "nccl", "connection", "timed out", "timeout",
                                   "peer", "socket", "broken pipe", "store"))


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """A rank's device: ``cuda`` without an index becomes ``cuda:<local_rank>``."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


@contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[Ranks]:
    """This process's :class:`Ranks`, with the default process group open inside the block.

    A group the caller already opened is joined (and left open); else, when torchrun's
    ``WORLD_SIZE`` is above 1, one is opened from its environment (``RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``, ...) with backend ``nccl`` on CUDA, ``gloo`` otherwise, and the given
    timeout, and destroyed on exit; else this is a single process.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        yield _ranks(device, local, timeout_s)
        return
    if env_world_size() <= 1:
        yield Ranks(device=device, timeout_s=timeout_s)
        return
    device = rank_device(device, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    try:
        ranks = _ranks(device, local, timeout_s)
        log.info("rank %d of %d on %s (%s)", ranks.rank, ranks.world_size, device, backend)
        yield ranks
    finally:
        dist.destroy_process_group()


def _ranks(device: torch.device, local: int, timeout_s: float) -> Ranks:
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                 device=rank_device(device, local), timeout_s=timeout_s)


def loss_scale(share: float, world_size: int) -> float:
    """The factor on a rank's loss that turns DDP's gradient average into the gradient of the
    mean over the global batch: ``world_size * share`` (``share``: the rank's fraction of the
    global batch's real steps). Averaged over ranks, ``Σ_r share_r · ∇L_r`` is the gradient of
    ``Σ_r share_r · L_r``, the global masked mean, when each ``L_r`` is its shard's mean."""
    return world_size * share


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank ``rank > 0`` (dropout masks differ per rank; rank 0 keeps the
    single-process stream)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint32)[0])
