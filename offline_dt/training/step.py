"""One update: the optimizer and its learning-rate schedule, the loss as the loop computes it
(eager, DDP-wrapped, compiled or CUDA graphs) and :func:`train_step`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from offline_dt.data.windows import Batch
from offline_dt.methods import Method, get_method
from offline_dt.training.cuda_graph import graphed_loss
from offline_dt.training.device import resolve_precision
from offline_dt.training.distributed import Ranks
from offline_dt.training.train_config import TrainConfig, default_warmup


def make_optimizer(net: nn.Module, cfg: TrainConfig
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on all parameters and the learning-rate schedule :func:`lr_factor` (a linear
    warmup, reference ``gym/experiment.py``, then ``cfg.lr_decay``). On CUDA and on the CPU
    the fused AdamW kernel (one call for every parameter; on the CPU torch's default is a
    Python loop over parameters, several times slower at the paper config); elsewhere torch's
    default implementation."""
    fused = all(p.device.type in ("cpu", "cuda") for p in net.parameters())
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay, fused=True if fused else None)
    chosen = cfg.warmup_steps
    warmup = default_warmup(cfg.steps) if chosen is None else chosen
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, warmup=warmup, steps=cfg.steps,
                                     decay=cfg.lr_decay))
    return optimizer, scheduler


def lr_factor(step: int, warmup: int, steps: int, decay: str) -> float:
    """The learning rate of update ``step`` (0-based) as a fraction of the peak: a linear
    warmup ``(step + 1) / w`` over ``w = max(warmup, 1)`` updates, then 1 (``decay``
    ``"none"``, the DT paper) or ``1 - (step + 1 - w) / (steps + 1 - w)`` (``"linear"``: from
    1 at the warmup's last update down to ``1 / (steps + 1 - w)`` at the last, CleanRL's PPO
    ``anneal_lr``, ``1 - (i - 1) / N`` for update ``i`` of ``N`` without warmup)."""
    w = max(warmup, 1)
    if step + 1 < w:
        return (step + 1) / w
    if decay == "none":
        return 1.0
    return max(1.0 - (step + 1 - w) / (steps + 1 - w), 0.0)


class MethodLoss(nn.Module):
    """``method.loss(net, batch)`` as one module, so that DistributedDataParallel and
    ``torch.compile`` see every forward pass a method makes (``qt`` calls its actor, critic
    and target network itself). Its ``net`` is the method's network, unwrapped."""

    def __init__(self, method: Method, net: nn.Module) -> None:
        super().__init__()
        self.method = method
        self.net = net

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.method.loss(self.net, batch)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, batch: Batch,
               cfg: TrainConfig, method: Method | None = None, *,
               loss_fn: Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
               | None = None, scale: float = 1.0
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One update: the method's loss, backward, gradient-norm clip
    (``Method.clip_gradients``), AdamW step, warmup schedule step, ``Method.after_step``.
    With bf16 precision (``cfg.precision``, ``auto`` resolved for the batch's device) the
    forward pass and loss run under bfloat16 autocast. ``loss_fn`` computes the loss in place
    of ``method.loss(net, batch)`` (a DDP-wrapped or compiled :class:`MethodLoss`); the loss
    is multiplied by ``scale`` before backward (a DDP rank's share,
    ``offline_dt.training.distributed.loss_scale``). Returns the detached (unscaled) loss and the
    method's extra scalars."""
    method = method or get_method(cfg.method)
    device = batch.observations.device
    bf16 = resolve_precision(cfg.precision, device) == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, extras = method.loss(net, batch) if loss_fn is None else loss_fn(batch)
    optimizer.zero_grad(set_to_none=True)
    (loss if scale == 1.0 else loss * scale).backward()
    method.clip_gradients(net, cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    method.after_step(net)
    return loss.detach(), {k: v.detach() for k, v in extras.items()}


def loss_function(cfg: TrainConfig, method: Method, net: nn.Module, ranks: Ranks
                  ) -> Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None:
    """The loss as the loop computes it: a :class:`~offline_dt.training.cuda_graph.GraphedLoss`
    where ``cfg.cuda_graph`` asks for it (on CUDA, by default); None (the loop calls
    ``method.loss`` itself) in one process without ``compile``; else a :class:`MethodLoss`
    wrapped in DistributedDataParallel (several ranks: its backward averages gradients over
    ranks) and/or ``torch.compile`` (``cfg.compile``)."""
    graphed = graphed_loss(cfg.cuda_graph, ranks.device, method, net,
                           resolve_precision(cfg.precision, ranks.device),
                           distributed=ranks.distributed, compile=cfg.compile)
    if graphed is not None:
        return graphed
    if not ranks.distributed and not cfg.compile:
        return None
    loss_fn: nn.Module = MethodLoss(method, net)
    if ranks.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ranks.device.index] if ranks.device.type == "cuda" else None
        loss_fn = ranks.collective(lambda: DistributedDataParallel(loss_fn, device_ids=ids),
                                   "broadcasting rank 0's parameters")
    return torch.compile(loss_fn) if cfg.compile else loss_fn

