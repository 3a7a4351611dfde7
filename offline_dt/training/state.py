"""What the training loop updates (:class:`TrainState`: networks, optimizer, schedule, batch
source, step) and how it is built: seeded, then restored from a checkpoint to resume, or
warm-started from another run's (:func:`build_state`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods import BatchSource, Method
from offline_dt.training.checkpoint import CHECKPOINT_NAME
from offline_dt.training.distributed import Ranks, rank_seed
from offline_dt.training.resume import restore_rng
from offline_dt.training.step import loss_function, make_optimizer
from offline_dt.training.train_config import TrainConfig
from offline_dt.training.transfer import load_source

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything the loop updates, and what a checkpoint saves (``sampler``: the batch
    source, ``offline_dt.methods.base.BatchSource``)."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: BatchSource
    normalizer: Normalizer
    ranks: Ranks = field(default_factory=Ranks)
    #: the loss as train_step computes it: None (``method.loss(net, batch)``), or a
    #: DDP-wrapped and/or compiled :class:`~offline_dt.training.step.MethodLoss` over ``net``,
    #: or CUDA graphs of it
    loss_fn: Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    step: int = 0
    #: the step of the checkpoint this run has on disk (resumed from or last written); None
    #: before its first
    saved_step: int | None = None
    #: called once after the next checkpoint is written (an overwrite discards the old run)
    after_save: Callable[[], None] | None = None


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch, numpy and (on a CUDA device) every CUDA generator with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def build_state(cfg: TrainConfig, method: Method, make_sampler: Callable[[], BatchSource],
                normalizer: Normalizer, shape: dict[str, Any], ranks: Ranks,
                resumed: dict[str, Any] | None, start: dict[str, Any] | None = None,
                dataset: OfflineDataset | None = None, transfer: bool = False) -> TrainState:
    """Seed (:func:`seed_everything`), then the sampler (``make_sampler()``), networks (a
    new run's fitted on ``dataset``: ``Method.fit``), optimizer and schedule (seeded
    identically on resume, then overwritten by the checkpoint's states ``resumed``; a new run
    from the checkpoint payload ``start`` takes its networks, optimizer and schedule as
    ``Method.warm_start`` says; with ``transfer``, a transfer run's start: the networks of
    the multi-task checkpoint ``start`` under a fresh optimizer and schedule,
    ``offline_dt.training.transfer.load_source``), then the loss as the loop computes it
    (:func:`offline_dt.training.step.loss_function`). The networks' sizes are ``shape``'s
    (``obs_dim``, ``act_dim``, ``discrete``).

    Raises:
        ValueError: what ``make_sampler`` raises; ``start``'s networks do not fit
            (``Method.warm_start``).
    """
    device = ranks.device
    seed_everything(cfg.seed, device)
    sampler = make_sampler()
    model_cfg = cfg.model_config(int(shape["obs_dim"]), int(shape["act_dim"]),
                                 bool(shape["discrete"]))
    if shape.get("obs_layout") is not None:  # a Dict or image space's leaves
        model_cfg = dataclasses.replace(model_cfg, obs_layout=shape["obs_layout"])
    if shape.get("tasks") is not None:  # a suite's envs (a multi-task method)
        model_cfg = dataclasses.replace(model_cfg, tasks=shape["tasks"])
    net = method.build(model_cfg, cfg.method_options)
    net = net.to(device)
    if resumed is None and dataset is not None:
        method.fit(net, dataset, normalizer)  # what the networks take from the data (tt)
    optimizer, scheduler = make_optimizer(net, cfg)
    state = TrainState(net, optimizer, scheduler, sampler, normalizer, ranks)
    if ranks.rank > 0:  # same parameters as rank 0 (built above), its own dropout masks
        torch.manual_seed(rank_seed(cfg.seed, ranks.rank))
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        # (a rank of a DDP run resumed on another world size reseeds from cfg.seed + 0:
        # the step is set after the RNGs, as it always was)
        restore_rng(resumed["rng"], sampler, ranks, cfg, step=state.step)
        if "source" in resumed:
            sampler.load_state_dict(resumed["source"])
        state.step = state.saved_step = int(resumed["step"])
        log.info("resuming %s at step %d", Path(cfg.run_dir) / CHECKPOINT_NAME, state.step)
    elif start is not None and transfer:
        load_source(net, start)
    elif start is not None and method.warm_start(net, start):
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
    state.loss_fn = loss_function(cfg, method, net, ranks)
    return state
