"""The training layer: configs, the one loop, checkpoints and exact resume, run directories
and logs, devices, DDP and CUDA graphs; the online and fine-tune entry points.

Its modules, each the owner of one concern: ``train_config`` (``TrainConfig``), ``loop`` (the
loop: ``train``), ``step`` (one update: optimizer, schedule, ``train_step``), ``state`` (what
the loop updates, built and restored), ``run_data`` (the dataset or env a run trains on),
``memory`` (the step's memory budget), ``resume`` (claiming a run directory, exact resume),
``checkpoint`` (the file format, ``load_checkpoint``), ``divergence`` (the finite-loss
guard), ``run_dir``, ``run_log``, ``device``, ``distributed``, ``cuda_graph``, ``configs``
(CLI and JSON plumbing); ``online`` and ``finetune`` (entry points on the same loop).

The names of :data:`__all__` are imported from their module on first use (PEP 562), so
importing one module of the layer (e.g. ``offline_dt.training.checkpoint`` for a report)
does not import the loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name → the module of this package that owns it.
_OWNERS = {
    "CHECKPOINT_NAME": "checkpoint",
    "LoadedCheckpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "DivergenceError": "divergence",
    "EvalHook": "loop",
    "TrainingInterrupted": "loop",
    "TrainingRun": "loop",
    "TrainResult": "loop",
    "train": "loop",
    "TrainConfig": "train_config",
}
__all__ = ["CHECKPOINT_NAME", "DivergenceError", "EvalHook", "LoadedCheckpoint", "TrainConfig",
           "TrainResult", "TrainingInterrupted", "TrainingRun", "load_checkpoint", "train"]

if TYPE_CHECKING:
    from offline_dt.training.checkpoint import CHECKPOINT_NAME, LoadedCheckpoint, load_checkpoint
    from offline_dt.training.divergence import DivergenceError
    from offline_dt.training.loop import (
        EvalHook,
        TrainingInterrupted,
        TrainingRun,
        TrainResult,
        train,
    )
    from offline_dt.training.train_config import TrainConfig


def __getattr__(name: str) -> Any:
    if name not in _OWNERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_OWNERS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
