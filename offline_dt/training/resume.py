"""Claiming a run directory and resuming from its checkpoint: the config a resume must share
with the checkpoint (:func:`claim_run_dir`), and the RNG states that make it exact
(:func:`restore_rng`; parameters after N + M steps equal an uninterrupted run on CPU)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from offline_dt.methods import BatchSource
from offline_dt.training.checkpoint import CHECKPOINT_NAME, read_checkpoint, set_rng_state
from offline_dt.training.configs import from_dict
from offline_dt.training.distributed import Ranks, rank_seed
from offline_dt.training.run_dir import recover_run_dir
from offline_dt.training.train_config import (
    AUTO_FIELDS,
    RESUMABLE_FIELDS,
    TrainConfig,
    config_differences,
)

log = logging.getLogger(__name__)


def claim_run_dir(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Before any slow work, holding the run directory's lock: finish what a killed run left
    (``offline_dt.training.run_dir.recover_run_dir``), then (config, checkpoint payload) to resume
    from (``cfg.resume``; defaults of ``AUTO_FIELDS`` take the checkpoint's values), or (config,
    None) after refusing an existing run without ``overwrite``. Nothing is deleted here: an
    overwritten run is set aside only once the new one is ready
    (``offline_dt.training.run_dir.PreviousRun``).

    Raises:
        FileNotFoundError: ``resume`` and no checkpoint.
        FileExistsError: a checkpoint exists and neither ``resume`` nor ``overwrite``.
        ValueError: ``resume`` with a config that differs from the checkpoint's.
    """
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    recover_run_dir(run_dir)
    if cfg.resume:
        _, resumed = read_checkpoint(ckpt_path, "cpu")
        saved_cfg = from_dict(TrainConfig, json.loads(resumed["train_config"]))
        diff = config_differences(saved_cfg, cfg)
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{ckpt_path}: cannot resume with a different config ({lines}); only "
                f"{sorted(RESUMABLE_FIELDS)} may change. Use a new run_dir or overwrite=True.")
        adopt = {k: getattr(saved_cfg, k) for k, default in AUTO_FIELDS.items()
                 if getattr(cfg, k) == default}
        log.info("resuming %s from update %d", ckpt_path, resumed["step"])
        return dataclasses.replace(cfg, **adopt), resumed
    if ckpt_path.exists() and not cfg.overwrite:
        raise FileExistsError(
            f"{ckpt_path} exists; pass --resume to continue it or --overwrite to start "
            f"afresh")
    return cfg, None


def rank_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's own RNG states: the ones that draw its dropout masks."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(rng: dict[str, Any], sampler: BatchSource, ranks: Ranks, cfg: TrainConfig,
                step: int) -> None:
    """Restore a checkpoint's RNG states (saved at update ``step``); a rank of a DDP run takes
    its own dropout stream (``rng["ranks"]``, saved by a run of the same world size; else a
    fresh per-rank seed)."""
    set_rng_state(rng, sampler, ranks.device)
    if not ranks.distributed:
        return
    saved = rng.get("ranks") or []
    if len(saved) == ranks.world_size:
        torch.set_rng_state(saved[ranks.rank]["torch"])
        if "cuda" in saved[ranks.rank] and ranks.device.type == "cuda":
            torch.cuda.set_rng_state(saved[ranks.rank]["cuda"], ranks.device)
        return
    if ranks.rank > 0:
        torch.manual_seed(rank_seed(cfg.seed + int(step), ranks.rank))
    if cfg.dropout > 0 and ranks.is_main:
        log.warning("resuming a run saved by %d rank(s) on %d: dropout masks continue from new "
                    "per-rank seeds (the run is not bit-identical to an uninterrupted one)",
                    len(saved) or 1, ranks.world_size)

