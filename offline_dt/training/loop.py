"""Train a method (``dt``, ``bc``, ...) on an offline dataset: the one training loop.

Readable top to bottom (in the spirit of CleanRL / CORL): :func:`train` validates the config
(``training.train_config``), claims the run directory (``training.resume``), loads the data
(``training.run_data``), checks the memory budget (``training.memory``), builds the networks,
optimizer and schedule (``training.state``), then :func:`_loop`: sample a batch, one update
(``training.step.train_step``), logs (``training.run_log``), periodic evaluation, checkpoints
(``training.checkpoint``) with exact resume (parameters after N + M steps equal an
uninterrupted run on CPU: model, optimizer, scheduler, torch, numpy, sampler and CUDA RNGs are
all restored). The batches come from a dataset's windows or the
``offline_dt.methods.base.BatchSource`` the caller passes (e.g. the replay buffer an ``odt``
fine-tune makes, ``training.finetune``); ``init`` warm-starts a run from a checkpoint.

Nothing is lost, whatever happens: a non-finite loss or weight stops the run
(:class:`~offline_dt.training.divergence.DivergenceError`) before it reaches a checkpoint; a
write that finds the disk full (:class:`~offline_dt.data.atomic.DiskFullError`) leaves the
previous checkpoint; Ctrl-C raises :class:`TrainingInterrupted` naming the checkpoint to
resume from; after any failure ``metrics.csv`` is cut back to the checkpoint on disk.

:func:`train` holds an exclusive lock on ``run_dir`` for the whole call. Everything is checked
(config, dataset, env, sizes, memory) before the run directory is touched; with ``overwrite``
the existing run is set aside and deleted at the new run's first checkpoint, or put back if
the new run fails (or is killed) before it. Under torchrun (``WORLD_SIZE > 1``), or inside a
process group the caller opened, every rank calls :func:`train` and they train one model with
DistributedDataParallel (``offline_dt.training.distributed``): ``batch_size`` is the global
batch, split across ranks; rank 0 alone holds the lock, writes the run directory and calls
``eval_hook``.

What a method is (its networks, loss and acting) lives in ``offline_dt.methods``; the loop
knows nothing else about it. The periodic evaluation is a hook (``offline_dt.evaluation.
curves.make_eval_hook``) called with the trainer's own :class:`TrainingRun`. Outputs in
``run_dir``: ``checkpoint.pt``, ``config.json`` (resolved config, DTConfig, dataset summary),
``metrics.csv``, ``tb/`` (TensorBoard scalars) and ``loss.png``.
"""
from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.lock import exclusive_lock
from offline_dt.data.windows import Normalizer, SegmentSampler, WindowSampler
from offline_dt.methods import BatchSource, Method, check_command, get_method
from offline_dt.methods.base import WindowSource
from offline_dt.training.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_payload,
    checkpoint_step,
    kept_checkpoint_path,
    read_checkpoint,
    rng_state,
    save_checkpoint,
)
from offline_dt.training.configs import save_json
from offline_dt.training.device import resolve_device
from offline_dt.training.distributed import Ranks, loss_scale, process_group
from offline_dt.training.divergence import DivergenceError, FiniteGuard, state_tensors
from offline_dt.training.memory import check_sizes
from offline_dt.training.resume import claim_run_dir, rank_rng
from offline_dt.training.run_data import data_shape, load_data
from offline_dt.training.run_dir import PreviousRun, room_for
from offline_dt.training.run_log import QuietLog, RunLog
from offline_dt.training.state import TrainState, build_state
from offline_dt.training.step import train_step
from offline_dt.training.train_config import TrainConfig
from offline_dt.training.transfer import source_config, transfer_data

log = logging.getLogger(__name__)

__all__ = ["EvalHook", "TrainResult", "TrainingInterrupted", "TrainingRun", "train"]


@dataclass
class TrainResult:
    """What ``train`` returns. ``final_loss`` is the mean loss over the last logged interval;
    ``steps_per_second`` counts the updates of this call over the loop's time excluding the
    eval hook; ``wall_seconds`` is the whole call."""

    run_dir: Path
    checkpoint: Path
    final_loss: float
    steps: int
    steps_per_second: float
    wall_seconds: float


@dataclass
class TrainingRun:
    """What the loop hands to an eval hook and a batch source's ``collect`` (the methods
    layer's ``offline_dt.methods.base.Run``): the trainer's own objects, never refitted.

    Attributes:
        config: the run's config.
        method: the method being trained (``method.policy`` acts with ``net``).
        net: the networks being trained (in train mode; a hook must restore that).
        normalizer: the trainer's normaliser: observation statistics, returns-to-go scale,
            action bounds (the env's when ``env_id`` is given).
        dataset_info: dataset facts (``env_id``, ``ref_min_score``, ``ref_max_score``,
            ``best_return``, ...), as saved with the checkpoint.
    """

    config: TrainConfig
    method: Method
    net: nn.Module
    normalizer: Normalizer
    dataset_info: dict[str, Any]


#: ``hook(run, step) -> {column: value}``: periodic evaluation, values become metrics columns.
EvalHook = Callable[[TrainingRun, int], dict[str, float]]


#: ``batch_source(dataset, normalizer, cfg, device) -> BatchSource`` (``dataset`` None for a
#: run without one, ``cfg.dataset`` empty).
SourceFactory = Callable[[OfflineDataset | None, Normalizer, "TrainConfig", torch.device],
                         BatchSource]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :func:`train`'s loop. ``checkpoint`` is the checkpoint file
    the run has on disk and ``step`` its update (both None: none was written yet); training
    again with ``resume=True`` and the same config continues from it exactly."""

    def __init__(self, checkpoint: Path | None, step: int | None) -> None:
        super().__init__(f"interrupted; {checkpoint} (update {step}) is saved"
                         if checkpoint is not None else "interrupted before a checkpoint")
        self.checkpoint, self.step = checkpoint, step


def train(cfg: TrainConfig, eval_hook: EvalHook | None = None, *,
          init: str | Path | None = None, batch_source: SourceFactory | None = None
          ) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.dataset`` and write the run to ``cfg.run_dir``.

    ``eval_hook(run, step) -> dict[str, float]`` (e.g. ``offline_dt.evaluation.curves.
    make_eval_hook()``) runs every ``cfg.eval_every`` steps and at the end (when
    ``eval_every > 0``) with the trainer's own :class:`TrainingRun`; its values become
    ``metrics.csv`` columns. It runs under ``torch.random.fork_rng`` (resume stays exact).

    ``init`` (a checkpoint file or run directory) warm-starts a new run (``Method.warm_start``;
    its normaliser and dataset facts too; its dataset must be ``cfg.dataset``, by checksum);
    the new run counts its own ``cfg.steps`` from 0. ``cfg.init_from`` instead transfers a
    multi-task checkpoint to the new task of ``cfg.dataset`` (``offline_dt.training.transfer``:
    its weights, shape and options, its envs and the new ones; a fresh optimizer).
    ``batch_source(dataset, normalizer, cfg, device)`` replaces the dataset's windows (an
    ``offline_dt.methods.base.BatchSource``, e.g. the replay buffer an ``odt`` fine-tune
    collects into). Without a dataset
    (``cfg.dataset`` empty) a ``batch_source`` that collects is required, and the networks are
    sized by the spaces of ``cfg.env_id`` (``offline_dt.training.run_data.env_data``).

    Locking, checks before any write, ``overwrite`` and torchrun: see the module docstring.

    Raises:
        LockedError: another process is writing ``run_dir``.
        FileExistsError: ``run_dir`` holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        FileNotFoundError: the dataset, or (with ``resume``) the checkpoint, does not exist.
        DatasetError: the dataset is malformed, does not match ``env_id``, or has an episode
            longer than ``max_timestep``.
        ValueError: bad arguments, sizes beyond the data or the available memory, or
            ``resume`` with a config that differs from the checkpoint's (names the fields);
            an ``init_from`` checkpoint that is not multi-task, of another method, or whose
            tables the new envs do not fit (``offline_dt.training.transfer``).
        DivergenceError: (a ValueError) a non-finite loss or weight; the checkpoint on disk
            is the last finite one.
        offline_dt.data.atomic.DiskFullError: no room to write; the checkpoint is intact.
        TrainingInterrupted: (a KeyboardInterrupt) Ctrl-C; names the checkpoint to resume.
        offline_dt.training.distributed.DistributedError: (torchrun) another rank died or hung.
    """
    t_start = time.perf_counter()
    cfg.validate()
    if batch_source is None:  # the dataset's windows: no online method
        check_command(cfg.method, "train")
    if cfg.init_from:
        if init is not None or batch_source is not None:
            raise ValueError("TrainConfig.init_from (a transfer run) takes neither init nor "
                             "batch_source")
        cfg = source_config(cfg)
    method = get_method(cfg.method)
    with process_group(resolve_device(cfg.device), cfg.dist_timeout) as ranks, \
            ExitStack() as held:
        cfg, state, info = _prepare(cfg, method, ranks, held, init, batch_source)
        previous = _set_aside(cfg, state)
        try:
            return _run(cfg, method, state, info, eval_hook, t_start)
        except BaseException:
            if previous is not None and state.after_save is not None:
                previous.restore()  # failed before its first checkpoint: the old run is back
            raise


def _set_aside(cfg: TrainConfig, state: TrainState) -> PreviousRun | None:
    """A new run over an existing one (``overwrite``; rank 0): the old run set aside until
    the new one's first checkpoint (``state.after_save`` discards it then); None if none."""
    run_dir = Path(cfg.run_dir)
    if not state.ranks.is_main or cfg.resume or not (run_dir / CHECKPOINT_NAME).exists():
        return None
    previous = PreviousRun(run_dir)
    previous.set_aside()
    state.after_save = previous.discard
    return previous


def _prepare(cfg: TrainConfig, method: Method, ranks: Ranks, held: ExitStack,
             init: str | Path | None, batch_source: SourceFactory | None
             ) -> tuple[TrainConfig, TrainState, dict[str, Any]]:
    """Claim the run directory (rank 0, holding its lock in ``held``), read the data (or the
    ``init`` checkpoint's), check the sizes and build the state: (the config resolved and
    sized, the state, the dataset facts)."""
    def claim() -> tuple[TrainConfig, dict[str, Any] | None]:
        held.enter_context(exclusive_lock(Path(cfg.run_dir), "run directory"))
        return claim_run_dir(cfg)

    cfg, resumed = ranks.from_main(claim)
    start = None
    if cfg.init_from:  # a transfer run (training.transfer)
        where = Path(cfg.run_dir) / CHECKPOINT_NAME
        if resumed is None:
            where, start = read_checkpoint(cfg.init_from, "cpu")
        dataset, normalizer, info = transfer_data(cfg, resumed or start, resumed is None, where)
    else:
        if resumed is None and init is not None:
            init, start = read_checkpoint(init, "cpu")
        dataset, normalizer, info = load_data(cfg, resumed or start,
                                              init if start is not None else None)
    shape = data_shape(dataset, info)
    cfg = check_sizes(cfg, shape, ranks.device, new_run=resumed is None)
    state = build_state(cfg, method,
                        lambda: _sampler(cfg, method, dataset, normalizer, ranks, batch_source),
                        normalizer, shape, ranks, resumed, start, dataset=dataset,
                        transfer=bool(cfg.init_from))
    return cfg, state, info


def _sampler(cfg: TrainConfig, method: Method, dataset: OfflineDataset | None,
             normalizer: Normalizer, ranks: Ranks, batch_source: SourceFactory | None
             ) -> BatchSource:
    """The batch source: ``batch_source``'s, else the method's own over ``dataset``
    (``Method.offline_source``), else windows (segments with band attention) of ``dataset``
    with its arrays on the device.

    Raises:
        ValueError: no dataset and no ``batch_source``; a collecting source under torchrun.
    """
    if batch_source is not None:
        sampler = batch_source(dataset, normalizer, cfg, ranks.device)
        if ranks.distributed and sampler.collects:
            raise ValueError("a batch source that collects online data (collect) trains in "
                             "one process only; run it without torchrun (WORLD_SIZE=1)")
        return sampler
    own = None if dataset is None else method.offline_source(dataset, normalizer, cfg,
                                                              ranks.device)
    if own is not None:  # the method's own windows of the dataset (tt)
        return own
    if dataset is None:
        raise ValueError("TrainConfig.dataset is empty: a run without a dataset needs a "
                         "batch source that collects its own data (train(batch_source=...), "
                         "e.g. offline_dt.training.online)")
    if cfg.attention == "band":
        return WindowSource(SegmentSampler(dataset, normalizer, cfg.segment_length,
                                           cfg.max_timestep, seed=cfg.seed, device=ranks.device))
    return WindowSource(WindowSampler(dataset, normalizer, cfg.context_length, cfg.max_timestep,
                                      seed=cfg.seed, device=ranks.device))


def _run(cfg: TrainConfig, method: Method, state: TrainState, info: dict[str, Any],
         eval_hook: EvalHook | None, t_start: float) -> TrainResult:
    """Write ``config.json``, run the loop, close the logs (rank 0); the
    :class:`TrainResult`. On any failure the log is cut back to the checkpoint on disk
    (``RunLog.abort``), and Ctrl-C becomes :class:`TrainingInterrupted`."""
    run_dir, main = Path(cfg.run_dir), state.ranks.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(cfg, state, info)
    runlog: RunLog | QuietLog = (
        RunLog(run_dir, state.step, cfg.steps, cfg.progress, t_start) if main else QuietLog())
    run = TrainingRun(cfg, method, state.net, state.normalizer, info)
    start_step = state.step
    try:
        seconds = _loop(cfg, method, state, run, eval_hook if main else None, runlog)
        if state.step == start_step and state.ranks.from_main(
                lambda: not (run_dir / CHECKPOINT_NAME).exists()):
            _save(cfg, state, info, runlog, None)  # resumed a finished run: refresh outputs
    except BaseException as e:
        # the checkpoint file's own step: a failure right after its rename counts it
        on_disk = checkpoint_step(run_dir / CHECKPOINT_NAME) if main else state.saved_step
        runlog.abort(on_disk)
        if isinstance(e, KeyboardInterrupt) and not isinstance(e, TrainingInterrupted):
            raise TrainingInterrupted(None if on_disk is None else run_dir / CHECKPOINT_NAME,
                                      on_disk) from None
        raise
    with room_for(run_dir / "loss.png", state.step, state.saved_step):
        runlog.close(f"{cfg.method} on "
                     f"{info.get('dataset_id') or cfg.dataset or info.get('source', '')}")
    done = state.step - start_step
    return TrainResult(
        run_dir=run_dir,
        checkpoint=run_dir / CHECKPOINT_NAME,
        final_loss=runlog.last_loss,
        steps=state.step,
        steps_per_second=done / seconds if done and seconds > 0 else 0.0,
        wall_seconds=time.perf_counter() - t_start,
    )


def _loop(cfg: TrainConfig, method: Method, state: TrainState, run: TrainingRun,
          hook: EvalHook | None, runlog: RunLog | QuietLog) -> float:
    """Update until ``cfg.steps`` (or the batch source is finished); log, evaluate and
    checkpoint on their schedules, the losses checked for divergence at each (no sync per
    update: ``offline_dt.training.divergence``). Returns the seconds spent training (eval
    hook excluded; a batch source's collect steps included)."""
    state.net.train()
    guard = FiniteGuard(cfg.learning_rate, Path(cfg.run_dir) / CHECKPOINT_NAME)
    train_seconds = 0.0
    t_loop = time.perf_counter()
    while state.step < cfg.steps and not _source_finished(state):
        try:
            _collect(run, state, guard)
            loss, extras = _update(cfg, method, state)
        except DivergenceError:
            raise
        except (ValueError, RuntimeError) as e:  # a loss refusing NaN inputs, say
            guard.explain(e, state_tensors(state.net, state.optimizer), state.step,
                          state.saved_step)
            raise
        state.step += 1
        runlog.add(loss, extras)
        guard.add(loss, state.step, state.saved_step)
        last = state.step == cfg.steps or _source_finished(state)
        do_eval = hook is not None and cfg.eval_every > 0 and (
            state.step % cfg.eval_every == 0 or last)
        if state.step % cfg.log_every == 0 or last or do_eval:
            guard.check(state.step, state.saved_step)
            row = runlog.interval_row(state.step, state.scheduler.get_last_lr()[0])
            row.update(state.sampler.log_values())
            if do_eval:
                train_seconds += time.perf_counter() - t_loop
                row.update(_evaluate_now(hook, run, state))
                t_loop = time.perf_counter()
            with room_for(Path(cfg.run_dir) / "metrics.csv", state.step, state.saved_step):
                runlog.append(row)
            runlog.restart_interval(state.step)
        if state.step % cfg.checkpoint_every == 0 or last:
            _save(cfg, state, run.dataset_info, runlog, guard)
    return train_seconds + time.perf_counter() - t_loop


def _update(cfg: TrainConfig, method: Method, state: TrainState
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One update on this rank's shard of the next global batch; the loss and extras over
    the whole global batch (share-weighted sums over ranks: the global means)."""
    ranks = state.ranks
    batch, share = state.sampler.sample_shard(cfg.batch_size, ranks.rank, ranks.world_size)
    if not ranks.distributed:
        return train_step(state.net, state.optimizer, state.scheduler, batch, cfg, method,
                          loss_fn=state.loss_fn)
    what = f"update {state.step + 1} (gradient all-reduce)"
    loss, extras = ranks.collective(lambda: train_step(
        state.net, state.optimizer, state.scheduler, batch, cfg, method,
        loss_fn=state.loss_fn, scale=loss_scale(share, ranks.world_size)), what)
    keys = sorted(extras)
    values = torch.stack([loss.float(), *(extras[k].float() for k in keys)]) * share
    ranks.all_reduce_sum(values, f"update {state.step + 1} (loss for the log)")
    return values[0], {k: values[i + 1] for i, k in enumerate(keys)}


def _source_finished(state: TrainState) -> bool:
    """The batch source's ``finished(step)`` (an online source whose budget is spent)."""
    return bool(state.sampler.finished(state.step))


def _collect(run: TrainingRun, state: TrainState, guard: FiniteGuard) -> None:
    """The batch source's ``collect(run, step)`` before an update (an online source acts in
    its environment when it is time to; for such a source the losses so far are checked
    first, so it never acts with networks whose loss diverged), then the networks back in
    train mode."""
    if state.sampler.collects:
        guard.check(state.step, state.saved_step)
    state.sampler.collect(run, state.step)
    if state.sampler.collects:
        state.net.train()


def _evaluate_now(hook: EvalHook, run: TrainingRun, state: TrainState) -> dict[str, float]:
    """Call the eval hook without disturbing any training RNG (resume stays exact)."""
    device = state.ranks.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        gen_state = state.sampler.generator.get_state()
        metrics = hook(run, state.step)
        state.sampler.generator.set_state(gen_state)
    state.net.train()
    return {k: float(v) for k, v in metrics.items()}


def _write_config(cfg: TrainConfig, state: TrainState, info: dict[str, Any]) -> None:
    """``config.json``: the resolved config, network shape, dataset facts and versions."""
    model_cfg = state.net.cfg
    save_json({
        "train_config": cfg,
        "resolved": {"device": str(state.ranks.device), "rtg_scale": state.normalizer.rtg_scale,
                     "world_size": state.ranks.world_size},
        "model_config": model_cfg,
        "num_parameters": sum(p.numel() for p in state.net.parameters()),
        "dataset": info,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__},
    }, Path(cfg.run_dir) / "config.json")


def _save(cfg: TrainConfig, state: TrainState, info: dict[str, Any],
          runlog: RunLog | QuietLog, guard: FiniteGuard | None) -> None:
    """Check that the losses and weights are finite (``guard``; every rank), then write
    ``metrics.csv`` and ``checkpoint.pt`` (both atomically; rank 0; every rank hands it its
    own RNG states first). In that order, a kill between the two leaves a log that runs ahead
    of the checkpoint, which resume cuts back (``read_metrics``), never a checkpoint whose log
    rows are missing.

    Raises:
        DivergenceError: a loss since the last check, or a weight, is not finite.
        offline_dt.data.atomic.DiskFullError: no room for the log or the checkpoint (the
            previous one is intact).
    """
    ranks = state.ranks
    if guard is not None:
        guard.check(state.step, state.saved_step)
        guard.check_weights(state_tensors(state.net, state.optimizer), state.step,
                            state.saved_step)
    rng = rng_state(state.sampler, ranks.device)
    if ranks.distributed:
        rng["ranks"] = ranks.all_gather(rank_rng(ranks.device),
                                        "gathering RNG states for the checkpoint")
    if not ranks.is_main:
        state.saved_step = state.step
        return
    source = state.sampler.state_dict()
    payload = checkpoint_payload(
        step=state.step, model=state.net, optimizer=state.optimizer,
        scheduler=state.scheduler, rng=rng, normalizer=state.normalizer, train_config=cfg,
        model_config=state.net.cfg, dataset_info=info, source=source)
    keep = cfg.keep_checkpoints and state.step < cfg.steps
    run_dir = Path(cfg.run_dir)
    with room_for(run_dir / "metrics.csv", state.step, state.saved_step):
        runlog.save()
    with room_for(run_dir / CHECKPOINT_NAME, state.step, state.saved_step):
        save_checkpoint(run_dir / CHECKPOINT_NAME, payload,
                        keep=kept_checkpoint_path(run_dir, state.step) if keep else None)
    state.saved_step = state.step
    if state.after_save is not None:
        state.after_save()
        state.after_save = None
