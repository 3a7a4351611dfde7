"""The training loss as CUDA graphs: one replay per forward and per backward pass.

At the paper's config (embed 128, 3 layers, batch 64) a training step on a GPU is bound by
the host: each of the few hundred kernels of the forward and backward passes takes longer to
launch than to run. ``torch.cuda.make_graphed_callables`` records both passes once and then
replays each with one launch (NVIDIA, "CUDA Graphs", CUDA C++ Programming Guide; PyTorch
``torch.cuda.make_graphed_callables``). The math is the eager loss's: same operations, same
shapes; dropout masks come from the same CUDA generator (graph-safe Philox offsets), so they
are different draws than an eager run's, as with any change of kernel order.

The gradient clip, the fused AdamW step and the schedule stay eager (a handful of launches).
Used by the training loop (``TrainConfig.cuda_graph``) where it is safe: one process on a
CUDA device, no ``torch.compile``, and a method whose loss never reads a value back to the
host (``Method.graph_safe``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from offline_dt.data.windows import Batch
from offline_dt.methods.base import Method

#: ``TrainConfig.cuda_graph`` values: None is auto.
SETTINGS = (None, True, False)
#: Whether a loss under bf16 autocast is captured. Its backward pass invalidated the capture
#: on torch 2.11 with an H200 (cudaErrorStreamCaptureInvalidated, with dropout and without,
#: also with attention limited to the memory-efficient and math kernels), so bf16 runs eagerly
#: and ``TrainConfig.precision`` ``auto`` keeps fp32 where the graphs pay
#: (``offline_dt.training.device.LAUNCH_BOUND_FLOPS``).
BF16_CAPTURES = False


def graph_blockers(device: torch.device, method: Method, *, distributed: bool,
                   compile: bool, precision: str = "fp32") -> list[str]:
    """Why the loss of ``method`` cannot be captured as CUDA graphs here (empty: it can);
    ``precision`` resolved (``fp32``/``bf16``)."""
    reasons = []
    if precision == "bf16" and not BF16_CAPTURES:
        reasons.append("bf16 autocast is on (its backward pass does not capture)")
    if device.type != "cuda":
        reasons.append(f"the device is {device.type}, not CUDA")
    if distributed:
        reasons.append("the job runs under torchrun (DDP's gradient hooks are not captured)")
    if compile:
        reasons.append("--compile true is set (torch.compile graphs the loss its own way)")
    if not method.graph_safe:
        reasons.append(f"method {method.name!r} reads values back to the host in its loss")
    return reasons


def wants_graph(setting: bool | None, device: torch.device, method: Method, *,
                distributed: bool, compile: bool, precision: str = "fp32") -> bool:
    """Whether the loop captures the loss: None (auto) and True where :func:`graph_blockers`
    finds nothing (True raises where it finds something), False never.

    Raises:
        ValueError: ``setting`` is not None, True or False, or True where a blocker applies
            (named in the message).
    """
    if not (setting is None or isinstance(setting, bool)):
        raise ValueError(f"TrainConfig.cuda_graph must be None (auto), True or False, found "
                         f"{setting!r}")
    if setting is False:
        return False
    reasons = graph_blockers(device, method, distributed=distributed, compile=compile,
                             precision=precision)
    if setting is True and reasons:
        raise ValueError("--cuda-graph true cannot be honoured: " + "; ".join(reasons))
    return not reasons


class TensorLoss(nn.Module):
    """``method.loss(net, batch)`` over the batch's tensors as positional arguments (what
    ``make_graphed_callables`` takes), returning ``(loss, *extras)`` in ``extra_keys`` order.
    With ``bf16`` the loss runs under bfloat16 autocast without its weight cache, which a
    captured graph must not use (PyTorch, ``make_graphed_callables``)."""

    def __init__(self, method: Method, net: nn.Module, names: tuple[str, ...], bf16: bool,
                 extra_keys: tuple[str, ...]) -> None:
        super().__init__()
        self.method, self.net = method, net
        self.names, self.bf16, self.extra_keys = names, bf16, extra_keys

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = Batch(**dict(zip(self.names, tensors, strict=True)))
        device_type = tensors[0].device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16,
                            cache_enabled=False):
            loss, extras = self.method.loss(self.net, batch)
        return (loss, *(extras[k] for k in self.extra_keys))


def batch_tensors(batch: Batch) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """The batch's tensor fields (None fields left out): their names and the tensors."""
    pairs = [(f.name, getattr(batch, f.name)) for f in dataclasses.fields(batch)]
    pairs = [(n, t) for n, t in pairs if t is not None]
    return tuple(n for n, _ in pairs), tuple(t for _, t in pairs)


class GraphedLoss:
    """A drop-in for ``method.loss(net, batch)`` in ``train_step`` that captures the forward
    and backward passes on its first call and replays them afterwards.

    Every later batch must have the first one's fields, shapes and dtypes (the loop's samplers
    draw fixed-shape batches); one that differs runs eagerly. The returned tensors are copies,
    so a later replay never overwrites what the caller logged.

    Raises (on the first call):
        ValueError: the batch is not on a CUDA device.
        RuntimeError: the capture failed; its cause is chained, and the message says to train
            with ``--cuda-graph false`` (a failed capture leaves the CUDA generator unusable
            for this process, so there is no eager fallback).
    """

    def __init__(self, method: Method, net: nn.Module, bf16: bool) -> None:
        self.method, self.net, self.bf16 = method, net, bf16
        self.module: TensorLoss | None = None
        self.signature: list[tuple[str, tuple[int, ...], torch.dtype]] | None = None

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        names, tensors = batch_tensors(batch)
        signature = [(n, tuple(t.shape), t.dtype) for n, t in zip(names, tensors, strict=True)]
        if self.module is None:
            self._capture(names, tensors)
            self.signature = signature
        if self.module is None or signature != self.signature:
            with torch.autocast(tensors[0].device.type, dtype=torch.bfloat16,
                                enabled=self.bf16):
                return self.method.loss(self.net, batch)
        loss, *extras = self.module(*tensors)
        return loss.clone(), {k: v.clone() for k, v in
                              zip(self.module.extra_keys, extras, strict=True)}

    def _capture(self, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
        """Record the forward and backward passes on ``tensors`` (after the warmup passes
        ``make_graphed_callables`` runs on a side stream)."""
        if not tensors[0].is_cuda:
            raise ValueError(f"CUDA graphs need a batch on a CUDA device, found "
                             f"{tensors[0].device}")
        batch = Batch(**dict(zip(names, tensors, strict=True)))
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            _, extras = self.method.loss(self.net, batch)
        module = TensorLoss(self.method, self.net, names, self.bf16, tuple(sorted(extras)))
        try:
            # train_step's own autocast (weight cache on) is switched off around the capture:
            # TensorLoss turns bf16 autocast back on inside, without the cache
            with torch.autocast("cuda", enabled=False):
                self.module = torch.cuda.make_graphed_callables(
                    module, tuple(t.detach() for t in tensors), allow_unused_input=True)
        except RuntimeError as e:
            raise RuntimeError(f"CUDA graph capture of the {self.method.name} loss failed "
                               f"({type(e).__name__}: {str(e).splitlines()[0]}); train with "
                               f"--cuda-graph false") from e

    @property
    def captured(self) -> bool:
        return self.module is not None


def graphed_loss(setting: bool | None, device: torch.device, method: Method, net: nn.Module,
                 precision: str, **flags: Any) -> GraphedLoss | None:
    """The loop's :class:`GraphedLoss` where :func:`wants_graph` says so, else None
    (``flags``: ``distributed``, ``compile``); ``precision`` resolved (``bf16``/``fp32``)."""
    if not wants_graph(setting, device, method, precision=precision, **flags):
        return None
    return GraphedLoss(method, net, bf16=precision == "bf16")
