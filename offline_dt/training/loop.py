"""Train a method (``dt``, ``bc``, ...) on an offline dataset: the one training loop.

Readable top to bottom (in the spirit of CleanRL / CORL):

1. ``TrainConfig``: every hyperparameter, defaults = the paper's OpenAI-gym settings
   (Chen et al. 2021, Table 8 and the reference ``gym/experiment.py``): K=20, d=128, 3 layers,
   1 head, dropout 0.1, ReLU, batch 64, AdamW lr 1e-4, weight decay 1e-4, 10k linear warmup
   steps (``LambdaLR``), gradient-norm clip 0.25, 100k updates.
2. ``train(cfg, eval_hook=None)``: validate, load the data, build the method's networks,
   then the loop: sample windows, ``method.loss``, AdamW step, warmup schedule, logs
   (``offline_dt.training.run_log``), periodic evaluation, checkpoints
   (``offline_dt.training.checkpoint``) with exact resume (parameters after N + M steps equal an
   uninterrupted run on CPU: model, optimizer, scheduler, torch, numpy, sampler and CUDA RNGs are
   all restored). The batches come from a dataset's windows, or from the
   ``offline_dt.methods.base.BatchSource`` the caller passes (its hooks: ``collect`` before
   updates, ``finished``, ``log_values``, a checkpointed state; e.g. the replay buffer an
   ``odt`` fine-tune makes, ``offline_dt.training.finetune``), and ``init`` warm-starts a new
   run from a checkpoint.
3. ``load_checkpoint(path)``: the networks, configs, normaliser and dataset facts.

What a method is (its networks, loss and acting) lives in ``offline_dt.methods``; the loop
knows nothing else about it. The periodic evaluation is a hook (``offline_dt.evaluation.curves.
make_eval_hook``) called with the trainer's own :class:`TrainingRun`: its networks,
normaliser (observation statistics, action bounds) and dataset facts.

Outputs in ``run_dir``: ``checkpoint.pt``, ``config.json`` (resolved config, DTConfig,
dataset summary), ``metrics.csv``, ``tb/`` (TensorBoard scalars) and ``loss.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from offline_dt.data import load_dataset
from offline_dt.data.d4rl import space_to_json
from offline_dt.data.dataset import DatasetError, OfflineDataset
from offline_dt.data.lock import exclusive_lock
from offline_dt.data.windows import Batch, Normalizer, SegmentSampler, WindowSampler
from offline_dt.methods import METHODS, BatchSource, Method, check_command, get_method
from offline_dt.methods.base import WindowSource, method_help, methods_for
from offline_dt.nn.config import DTConfig
from offline_dt.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    kept_checkpoint_path,
    normalizer_from_tensors,
    normalizer_to_tensors,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from offline_dt.training.configs import from_dict, save_json, to_jsonable
from offline_dt.training.cuda_graph import SETTINGS as CUDA_GRAPH_SETTINGS
from offline_dt.training.cuda_graph import graphed_loss
from offline_dt.training.device import resolve_device, resolve_precision, step_flops
from offline_dt.training.distributed import Ranks, loss_scale, process_group, rank_seed
from offline_dt.training.run_dir import PreviousRun, recover_run_dir
from offline_dt.training.run_log import RunLog

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_NAME", "EvalHook", "LoadedCheckpoint", "TrainConfig", "TrainResult",
           "TrainingRun", "load_checkpoint", "train"]

# Fields that may change between a run and its resumption: they do not affect the parameters.
RESUMABLE_FIELDS = frozenset({
    "steps", "progress", "log_every", "checkpoint_every", "eval_every", "eval_episodes",
    "resume", "overwrite", "run_dir", "compile", "cuda_graph", "dist_timeout",
})
#: Fields whose default is resolved once when a run starts (``TrainConfig.resolved``) and
#: their defaults: a run's saved config holds the resolved values, which the default ("not
#: chosen") matches on resume and reuse.
AUTO_FIELDS = {"warmup_steps": None, "max_timestep": 1000, "precision": "auto",
               "band_tokens": None, "segment_length": None}
DEFAULT_MAX_TIMESTEP = 1000
#: The learning-rate schedules after the warmup (``TrainConfig.lr_decay``, :func:`lr_factor`).
LR_DECAYS = ("none", "linear")


# ---------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Training hyperparameters; defaults are the paper's OpenAI-gym settings."""

    dataset: str = field(default="", metadata={
        "help": "dataset: D4RL-style .hdf5 path, Minari dataset directory, or Minari id"})
    minari_root: str | None = field(default=None, metadata={
        "help": "Minari datasets root (default data/minari or $MINARI_DATASETS_PATH)"})
    env_id: str | None = field(default=None, metadata={
        "help": "Gymnasium env id; when given, the dataset's spaces must match the env's"})
    method: str = field(default="dt", metadata={
        "help": "training method (offline_dt.methods): " + method_help("train"),
        "choices": methods_for("train")})
    method_options: dict[str, str] = field(default_factory=dict, metadata={
        "help": "the method's own hyperparameters as KEY VALUE pairs (e.g. for qt: "
                "critic transformer expectile 0.8); each method's module lists its keys and "
                "defaults"})
    seed: int = field(default=0, metadata={"help": "seed (torch, numpy, window sampler)"})
    device: str = field(default="auto", metadata={
        "help": "torch device; auto picks CUDA when available", "choices": ["auto", "cpu", "cuda"]})
    steps: int = field(default=100_000, metadata={"help": "gradient updates in total"})
    batch_size: int = field(default=64, metadata={"help": "windows per update"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    warmup_steps: int | None = field(default=None, metadata={
        "help": "linear learning-rate warmup steps (LambdaLR); default min(10000, steps // 10): "
                "the paper's 10k for its 100k steps, a tenth of a shorter budget"})
    lr_decay: str = field(default="none", metadata={
        "help": "after the warmup: none keeps the peak learning rate (the DT paper); linear "
                "takes it linearly to 0 at the last update (CleanRL's PPO anneal_lr)",
        "choices": list(LR_DECAYS)})
    grad_clip: float = field(default=0.25, metadata={"help": "gradient-norm clip"})
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 on a CPU with AMX/AVX512-BF16, and on a CUDA device with bf16 "
                "support unless the step is launch-bound (under 1e11 matmul FLOPs, e.g. the "
                "paper config: fp32, captured as CUDA graphs), else fp32; fp32; or bf16: "
                "forward and loss under torch.autocast(bfloat16), "
                "weights and optimizer in fp32 (faster on CPUs with AMX/AVX512-BF16 at the "
                "paper config, see benchmarks/results/speed.md; can be slower on small models)",
        "choices": ["auto", "fp32", "bf16"]})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the loss (the method's forward passes); opt-in: compiling "
                "takes a while, and on small models may not pay back (README 'GPU')"})
    cuda_graph: str = field(default="auto", metadata={
        "help": "capture the loss's forward and backward passes as CUDA graphs and replay "
                "them (offline_dt.training.cuda_graph): auto where it is safe (one process on "
                "CUDA, no --compile, methods dt and bc), true (an error where it is not safe), "
                "false",
        "choices": list(CUDA_GRAPH_SETTINGS)})
    dist_timeout: float = field(default=600.0, metadata={
        "help": "seconds a rank of a torchrun job waits for the others in a collective before "
                "it fails (a rank that died or hangs); must exceed one eval-hook call, which "
                "rank 0 runs while the others wait"})
    context_length: int = field(default=20, metadata={"help": "K, timesteps per window"})
    attention: str = field(default="window", metadata={
        "help": "window: the classic DT (causal attention inside windows of K steps, "
                "recomputed at every env step when acting); band: sliding-window causal "
                "attention, every token sees the last band_tokens tokens at every layer, "
                "trained on segments of segment_length steps, so the key/value cache that "
                "evaluation acts from is exact (Mistral 7B's rolling cache; methods "
                f"{', '.join(m for m in methods_for('train') if 'band' in METHODS[m].attentions)})",
        "choices": ["window", "band"]})
    band_tokens: int | None = field(default=None, metadata={
        "help": "band: W, tokens each token attends to (itself and the W - 1 before it); "
                "default 3 * context_length"})
    segment_length: int | None = field(default=None, metadata={
        "help": "band: S, timesteps per training segment (batch_size segments per update, "
                "every real step in the loss); default min(longest episode, 10 * "
                "context_length): whole episodes when they fit"})
    embed_dim: int = field(default=128, metadata={"help": "transformer width d"})
    n_layer: int = field(default=3, metadata={"help": "transformer blocks"})
    n_head: int = field(default=1, metadata={"help": "attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    activation: str = field(default="relu", metadata={
        "help": "MLP nonlinearity", "choices": ["relu", "gelu"]})
    max_timestep: int = field(default=1000, metadata={
        "help": "timestep embedding table size; every episode must be at most this long "
                "(the default 1000, the paper's, grows to the dataset's longest episode)"})
    rtg_scale: float | None = field(default=None, metadata={
        "help": "returns-to-go divisor (default: largest |episode return| of the dataset)"})
    run_dir: Path = field(default=Path("data/runs/default"), metadata={
        "help": "output directory (checkpoint.pt, config.json, metrics.csv, tb/, loss.png)"})
    checkpoint_every: int = field(default=1000, metadata={
        "help": "save checkpoint.pt every this many steps (and at the end)"})
    keep_checkpoints: bool = field(default=False, metadata={
        "help": "also keep each checkpoint before the last as checkpoints/step-NNNNNNN.pt, so "
                "that evaluation can choose a checkpoint on validation episodes (evaluate "
                "--candidate-checkpoints; the reproduce presets do)"})
    log_every: int = field(default=100, metadata={"help": "metrics.csv row every this many steps"})
    eval_every: int = field(default=0, metadata={
        "help": "call the evaluation hook every this many steps and at the end (0: never)"})
    eval_episodes: int = field(default=20, metadata={
        "help": "episodes per periodic evaluation (eval_every); reset seeds 500 + seed"})
    resume: bool = field(default=False, metadata={
        "help": "continue exactly from run_dir/checkpoint.pt (same config required)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start afresh even if run_dir already holds a checkpoint"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar (TTY only)"})

    def resolved(self, longest_episode: int, device: str | torch.device = "cpu"
                 ) -> TrainConfig:
        """This config with the defaults of ``AUTO_FIELDS`` filled in (chosen values kept):
        ``warmup_steps = min(10000, steps // 10)``; ``max_timestep = max(1000,
        longest_episode)`` (the paper's table, grown to fit the data); ``precision`` for
        ``device`` (:func:`offline_dt.training.device.resolve_precision`)."""
        changes: dict[str, Any] = {}
        if self.precision == "auto":
            tokens = 3 * self.batch_size * (self.segment_length or self.context_length)
            changes["precision"] = resolve_precision(
                "auto", torch.device(device), step_flops(self.embed_dim, self.n_layer, tokens))
        if self.warmup_steps is None:
            changes["warmup_steps"] = default_warmup(self.steps)
        if self.max_timestep == DEFAULT_MAX_TIMESTEP:
            changes["max_timestep"] = max(DEFAULT_MAX_TIMESTEP, int(longest_episode))
        if self.attention == "band" and self.band_tokens is None:
            changes["band_tokens"] = 3 * self.context_length
        if self.attention == "band" and self.segment_length is None:
            changes["segment_length"] = max(min(int(longest_episode), 10 * self.context_length),
                                            self.context_length)
        # every method option with its value, so a change of a method's defaults is a
        # different config (resume and reuse refuse it) rather than a silent one
        changes["method_options"] = get_method(self.method).resolve_options(
            self.method_options)
        return dataclasses.replace(self, **changes)

    def model_config(self, obs_dim: int, act_dim: int, discrete: bool) -> DTConfig:
        return DTConfig(
            obs_dim=obs_dim, act_dim=act_dim, discrete=discrete,
            context_length=self.context_length, max_timestep=self.max_timestep,
            embed_dim=self.embed_dim, n_layer=self.n_layer, n_head=self.n_head,
            dropout=self.dropout, activation=self.activation, attention=self.attention,
            band_tokens=self.band_tokens if self.attention == "band" else None,
        )

    def validate(self) -> None:
        """Raises ValueError naming the argument, the expected range and the value found."""
        if self.method not in METHODS:
            raise ValueError(
                f"TrainConfig.method must be one of {sorted(METHODS)}, found {self.method!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"TrainConfig.precision must be 'auto', 'fp32' or 'bf16', found "
                             f"{self.precision!r}")
        if self.cuda_graph not in CUDA_GRAPH_SETTINGS:
            raise ValueError(f"TrainConfig.cuda_graph must be 'auto', 'true' or 'false', found "
                             f"{self.cuda_graph!r}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"TrainConfig.lr_decay must be 'none' or 'linear', found "
                             f"{self.lr_decay!r}")
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ValueError(
                f"TrainConfig.device must be auto, cpu or cuda, found {self.device!r}")
        positive = ("steps", "batch_size", "context_length", "embed_dim", "n_layer", "n_head",
                    "max_timestep", "checkpoint_every", "log_every", "eval_episodes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, found {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "weight_decay"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, found {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TrainConfig.dropout must be in [0, 1), found {self.dropout}")
        if not self.dist_timeout > 0:
            raise ValueError(f"TrainConfig.dist_timeout must be > 0, found {self.dist_timeout}")
        if self.learning_rate <= 0 or self.grad_clip <= 0:
            raise ValueError(
                f"TrainConfig.learning_rate and grad_clip must be > 0, found "
                f"{self.learning_rate} and {self.grad_clip}")
        if self.rtg_scale is not None and not self.rtg_scale > 0:
            raise ValueError(f"TrainConfig.rtg_scale must be > 0 or None, found {self.rtg_scale}")
        if self.embed_dim % self.n_head:
            raise ValueError(
                f"TrainConfig.embed_dim={self.embed_dim} must be divisible by "
                f"n_head={self.n_head}")
        self._validate_band()

    def _validate_band(self) -> None:
        """The band-attention fields: known ``attention``, ``band_tokens >= 1``,
        ``segment_length >= context_length``, both unset in window mode, dt or bc only."""
        if self.attention not in ("window", "band"):
            raise ValueError(f"TrainConfig.attention must be 'window' or 'band', found "
                             f"{self.attention!r}")
        if self.attention == "window":
            for name in ("band_tokens", "segment_length"):
                if getattr(self, name) is not None:
                    raise ValueError(f"TrainConfig.{name}={getattr(self, name)} applies to "
                                     f"attention='band' only (attention is 'window')")
            return
        if "band" not in METHODS[self.method].attentions:
            band = [m for m, cls in METHODS.items() if "band" in cls.attentions]
            raise ValueError(f"TrainConfig.attention='band' is implemented for methods {band}, "
                             f"found method {self.method!r}")
        if self.band_tokens is not None and self.band_tokens < 1:
            raise ValueError(f"TrainConfig.band_tokens must be >= 1, found {self.band_tokens}")
        if self.segment_length is not None and self.segment_length < self.context_length:
            raise ValueError(f"TrainConfig.segment_length must be >= context_length="
                             f"{self.context_length}, found {self.segment_length}")


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
class LoadedCheckpoint:
    """A checkpoint ready for evaluation (``model`` is in eval mode on the requested device).

    ``model`` is the method's network module (a ``DecisionTransformer`` for dt and bc);
    ``method`` acts with it (``method.policy(model, normalizer, target_return)``).
    """

    model: nn.Module
    model_config: DTConfig
    train_config: TrainConfig
    normalizer: Normalizer
    dataset_info: dict[str, Any]
    step: int
    method: Method


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


# ---------------------------------------------------------------------------------- data
def check_env_spaces(dataset: OfflineDataset, env_id: str) -> OfflineDataset:
    """Make sure ``dataset`` fits ``gym.make(env_id)``.

    Observation shape, action space type and shape (or ``n``) must match. Box bounds that
    differ (e.g. a D4RL file whose bounds were inferred from the data) are replaced by the
    env's when every action lies inside them, else rejected.

    Raises:
        DatasetError: naming the dataset, the env and expected vs found.
    """
    try:
        env = gym.make(env_id)
    except Exception as e:  # gymnasium raises several types for unknown ids
        raise ValueError(f"env_id {env_id!r}: gym.make failed ({e})") from e
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    src = dataset.source
    if getattr(obs_space, "shape", None) != dataset.observation_space.shape:
        raise DatasetError(
            f"{src}: observation space {dataset.observation_space} does not match env "
            f"{env_id}'s {obs_space} (expected shape {getattr(obs_space, 'shape', None)}, "
            f"found {dataset.observation_space.shape})")
    mismatch = DatasetError(
        f"{src}: action space {dataset.action_space} does not match env {env_id}'s {act_space}")
    if isinstance(act_space, gym.spaces.Discrete):
        if not dataset.discrete or int(dataset.action_space.n) != int(act_space.n):
            raise mismatch
        return dataset
    if not isinstance(act_space, gym.spaces.Box) or dataset.discrete \
            or dataset.action_space.shape != act_space.shape:
        raise mismatch
    if (np.allclose(dataset.action_space.low, act_space.low)
            and np.allclose(dataset.action_space.high, act_space.high)):
        return dataset
    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    if (dataset.actions < low - 1e-6).any() or (dataset.actions > high + 1e-6).any():
        raise DatasetError(f"{mismatch} and the actions leave the env's bounds")
    log.info("%s: using %s's action bounds %s", src, env_id, act_space)
    return dataclasses.replace(dataset, action_space=act_space)


def dataset_info(dataset: OfflineDataset, cfg: TrainConfig, rtg_scale: float) -> dict[str, Any]:
    """Dataset facts saved with the run (what the evaluator and the report need)."""
    meta = dataset.metadata
    s = dataset.summary()
    return {
        **s,
        "env_id": cfg.env_id or meta.get("env_id") or "",
        "dataset": cfg.dataset,
        "dataset_id": meta.get("dataset_id", ""),
        "source": dataset.source,
        "checksum": dataset.checksum(),
        "best_return": s["return_max"],
        "ref_min_score": meta.get("ref_min_score"),
        "ref_max_score": meta.get("ref_max_score"),
        "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim,
        "discrete": dataset.discrete,
        "observation_space": json.loads(space_to_json(dataset.observation_space)),
        "action_space": json.loads(space_to_json(dataset.action_space)),
        "longest_episode": int(dataset.episode_lengths.max()),
        "rtg_scale": rtg_scale,
    }


def default_warmup(steps: int) -> int:
    """Warmup steps when the user chose none: ``min(10000, steps // 10)`` (the paper's 10k
    for its 100k updates; a tenth of a shorter budget, so a short run reaches its peak lr)."""
    return min(10_000, steps // 10)


# ---------------------------------------------------------------------------------- sizes
def _check_sizes(cfg: TrainConfig, shape: dict[str, Any], device: torch.device,
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
    """Bytes free for a new allocation: CUDA's free memory on a CUDA device; else Linux
    ``MemAvailable`` (or free pages by ``os.sysconf``), capped by a cgroup v2 memory limit.
    None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            pass
    try:
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cg / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


# ---------------------------------------------------------------------------------- one update
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


# ---------------------------------------------------------------------------------- the run
@dataclass
class _State:
    """Everything the loop updates, and what a checkpoint saves."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: BatchSource
    normalizer: Normalizer
    ranks: Ranks = field(default_factory=Ranks)
    #: the loss as train_step computes it: None (``method.loss(net, batch)``), or a
    #: DDP-wrapped and/or compiled :class:`MethodLoss` over ``net``, or CUDA graphs of it
    loss_fn: Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    step: int = 0
    #: called once after the next checkpoint is written (an overwrite discards the old run)
    after_save: Callable[[], None] | None = None


class QuietLog:
    """The log of a rank other than 0 under DDP: the same calls as :class:`RunLog`, nothing
    written (rank 0 writes the run's logs)."""

    last_loss = math.nan

    def add(self, loss: torch.Tensor, extras: dict[str, torch.Tensor]) -> None:
        pass

    def interval_row(self, step: int, lr: float) -> dict[str, float]:
        return {"step": step}

    def append(self, row: dict[str, float]) -> None:
        pass

    def restart_interval(self, step: int) -> None:
        pass

    def save(self) -> None:
        pass

    def close(self, title: str) -> None:
        pass


def _options(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.method_options`` with the method's defaults filled in (as given when the method
    or an option is unknown: the comparison then reports the difference)."""
    try:
        return get_method(cfg.method).resolve_options(cfg.method_options)
    except ValueError:
        return dict(cfg.method_options)


def config_differences(saved: TrainConfig, current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields (other than ``RESUMABLE_FIELDS``) whose values differ: name → (saved, current).
    An ``AUTO_FIELDS`` field left at its default in ``current`` matches any saved value."""
    a, b = to_jsonable(saved), to_jsonable(current)
    a["method_options"], b["method_options"] = _options(saved), _options(current)
    auto = {k for k, default in AUTO_FIELDS.items() if b.get(k) == default}
    return {k: (a[k], b.get(k)) for k in a
            if k not in RESUMABLE_FIELDS and k not in auto and a[k] != b.get(k)}


def _claim_run_dir(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
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
        return dataclasses.replace(cfg, **adopt), resumed
    if ckpt_path.exists() and not cfg.overwrite:
        raise FileExistsError(
            f"{ckpt_path} exists; pass --resume to continue it or --overwrite to start "
            f"afresh")
    return cfg, None


def _load_data(cfg: TrainConfig, resumed: dict[str, Any] | None, origin: Path | None = None
               ) -> tuple[OfflineDataset | None, Normalizer, dict[str, Any]]:
    """The dataset (checked against ``env_id``), its normaliser and facts: refitted for a
    new run, the checkpoint's own on resume or a warm start from the checkpoint ``origin``
    (after checking the data did not change). Without ``cfg.dataset``, no dataset and the
    env's facts (:func:`_env_data`)."""
    if not cfg.dataset:
        return None, *_env_data(cfg, resumed, origin)
    dataset = load_dataset(cfg.dataset, cfg.minari_root, env_id=cfg.env_id)
    if cfg.env_id:
        dataset = check_env_spaces(dataset, cfg.env_id)
    if resumed is None:
        normalizer = Normalizer.fit(dataset, cfg.rtg_scale)
        return dataset, normalizer, dataset_info(dataset, cfg, normalizer.rtg_scale)
    info = json.loads(resumed["dataset_info"])
    if info.get("checksum") != dataset.checksum():
        raise ValueError(
            f"{origin or Path(cfg.run_dir) / CHECKPOINT_NAME}: dataset {cfg.dataset} has checksum "
            f"{dataset.checksum()[:12]}…, the checkpoint was trained on "
            f"{str(info.get('checksum'))[:12]}…")
    return dataset, normalizer_from_tensors(resumed["normalizer"]), info


def _shape(dataset: OfflineDataset | None, info: dict[str, Any]) -> dict[str, Any]:
    """What sizes the networks and checks the budget: ``obs_dim``, ``act_dim``, ``discrete``,
    ``longest_episode`` and ``source``, the dataset's (when there is one) else ``info``'s."""
    if dataset is None:
        return {k: info[k] for k in ("obs_dim", "act_dim", "discrete", "longest_episode",
                                     "source")}
    return {"obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim,
            "discrete": dataset.discrete, "source": dataset.source,
            "longest_episode": int(dataset.episode_lengths.max())}


def _env_data(cfg: TrainConfig, resumed: dict[str, Any] | None, origin: Path | None
              ) -> tuple[Normalizer, dict[str, Any]]:
    """A run without a dataset (its batch source collects from ``cfg.env_id``): the
    normaliser and facts of the env's spaces. A new run's normaliser leaves observations as
    they are (mean 0, std 1) with the env's action bounds and ``rtg_scale`` (default 1);
    resumed, the checkpoint's; warm-started from ``origin``, that checkpoint's observation
    statistics (what its networks were trained on) with the env's action bounds.

    Raises:
        ValueError: no ``env_id``; ``gym.make`` fails; an unbounded Box action space; the
            ``origin`` checkpoint's observations have another width than the env's.
    """
    if not cfg.env_id:
        raise ValueError("TrainConfig.dataset or TrainConfig.env_id is required: a run "
                         "without a dataset takes its spaces from env_id")
    if resumed is not None and origin is None:
        return normalizer_from_tensors(resumed["normalizer"]), json.loads(
            resumed["dataset_info"])
    try:
        env = gym.make(cfg.env_id)
    except Exception as e:  # gymnasium raises several types for unknown ids
        raise ValueError(f"TrainConfig.env_id {cfg.env_id!r}: gym.make failed ({e})") from e
    obs_space, act_space, spec = env.observation_space, env.action_space, env.spec
    env.close()
    discrete = isinstance(act_space, gym.spaces.Discrete)
    low = np.zeros(0, np.float32) if discrete else act_space.low.astype(np.float32).ravel()
    high = np.zeros(0, np.float32) if discrete else act_space.high.astype(np.float32).ravel()
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(f"TrainConfig.env_id {cfg.env_id!r}: Box action space must be "
                         f"bounded, found {act_space}")
    obs_dim = int(np.prod(obs_space.shape))
    normalizer = Normalizer(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32),
                            float(cfg.rtg_scale or 1.0), low, high)
    if resumed is not None:
        saved = normalizer_from_tensors(resumed["normalizer"])
        if saved.state_mean.shape != (obs_dim,):
            raise ValueError(f"{origin}: its observations have {saved.state_mean.shape[0]} "
                             f"dimensions, env {cfg.env_id}'s {obs_dim}")
        normalizer = dataclasses.replace(normalizer, state_mean=saved.state_mean,
                                         state_std=saved.state_std)
    longest = (spec.max_episode_steps if spec is not None else None) or cfg.max_timestep
    info = {"env_id": cfg.env_id, "dataset": "", "dataset_id": "",
            "source": f"env {cfg.env_id}", "checksum": None, "best_return": None,
            "ref_min_score": None, "ref_max_score": None, "obs_dim": obs_dim,
            "act_dim": int(act_space.n) if discrete else int(np.prod(act_space.shape)),
            "discrete": discrete,
            "observation_space": json.loads(space_to_json(obs_space)),
            "action_space": json.loads(space_to_json(act_space)),
            "longest_episode": int(longest), "rtg_scale": normalizer.rtg_scale,
            "init_checkpoint": None if origin is None else str(origin)}
    return normalizer, info


def _build(cfg: TrainConfig, method: Method, dataset: OfflineDataset | None,
           normalizer: Normalizer, shape: dict[str, Any], ranks: Ranks,
           resumed: dict[str, Any] | None, start: dict[str, Any] | None = None,
           batch_source: SourceFactory | None = None) -> _State:
    """Seed, then sampler (``batch_source``'s, or windows/segments of ``dataset``; its arrays
    on the device), networks, optimizer and schedule (seeded identically on resume, then
    overwritten by the checkpoint's states; a new run from ``start`` takes that checkpoint's
    networks, optimizer and schedule), then the loss as the loop computes it
    (:func:`loss_function`). The network's sizes are ``shape``'s (:func:`_shape`).

    Raises:
        ValueError: no dataset and no ``batch_source``; a collecting source under torchrun;
            ``start``'s networks do not fit (``Method.warm_start``).
    """
    device = ranks.device
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(cfg.seed)
    if batch_source is not None:
        sampler = batch_source(dataset, normalizer, cfg, device)
        if ranks.distributed and sampler.collects:
            raise ValueError("a batch source that collects online data (collect) trains in "
                             "one process only; run it without torchrun (WORLD_SIZE=1)")
    elif dataset is None:
        raise ValueError("TrainConfig.dataset is empty: a run without a dataset needs a "
                         "batch source that collects its own data (train(batch_source=...), "
                         "e.g. offline_dt.training.online)")
    elif cfg.attention == "band":
        sampler = WindowSource(SegmentSampler(dataset, normalizer, cfg.segment_length,
                                              cfg.max_timestep, seed=cfg.seed, device=device))
    else:
        sampler = WindowSource(WindowSampler(dataset, normalizer, cfg.context_length,
                                             cfg.max_timestep, seed=cfg.seed, device=device))
    net = method.build(cfg.model_config(int(shape["obs_dim"]), int(shape["act_dim"]),
                                        bool(shape["discrete"])), cfg.method_options)
    net = net.to(device)
    optimizer, scheduler = make_optimizer(net, cfg)
    state = _State(net, optimizer, scheduler, sampler, normalizer, ranks)
    if ranks.rank > 0:  # same parameters as rank 0 (built above), its own dropout masks
        torch.manual_seed(rank_seed(cfg.seed, ranks.rank))
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        _restore_rng(resumed["rng"], state, cfg)
        if "source" in resumed:
            sampler.load_state_dict(resumed["source"])
        state.step = int(resumed["step"])
        log.info("resuming %s at step %d", Path(cfg.run_dir) / CHECKPOINT_NAME, state.step)
    elif start is not None and method.warm_start(net, start):
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
    state.loss_fn = loss_function(cfg, method, net, ranks)
    return state


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


def _rank_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """This rank's own RNG states: the ones that draw its dropout masks."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(rng: dict[str, Any], state: _State, cfg: TrainConfig) -> None:
    """Restore a checkpoint's RNG states; a rank of a DDP run takes its own dropout stream
    (``rng["ranks"]``, saved by a run of the same world size; else a fresh per-rank seed)."""
    ranks = state.ranks
    set_rng_state(rng, state.sampler, ranks.device)
    if not ranks.distributed:
        return
    saved = rng.get("ranks") or []
    if len(saved) == ranks.world_size:
        torch.set_rng_state(saved[ranks.rank]["torch"])
        if "cuda" in saved[ranks.rank] and ranks.device.type == "cuda":
            torch.cuda.set_rng_state(saved[ranks.rank]["cuda"], ranks.device)
        return
    if ranks.rank > 0:
        torch.manual_seed(rank_seed(cfg.seed + int(state.step), ranks.rank))
    if cfg.dropout > 0 and ranks.is_main:
        log.warning("resuming a run saved by %d rank(s) on %d: dropout masks continue from new "
                    "per-rank seeds (the run is not bit-identical to an uninterrupted one)",
                    len(saved) or 1, ranks.world_size)


def _write_config(cfg: TrainConfig, state: _State, info: dict[str, Any]) -> None:
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


def _save(cfg: TrainConfig, state: _State, info: dict[str, Any],
          runlog: RunLog | QuietLog) -> None:
    """Write ``metrics.csv`` then ``checkpoint.pt`` (both atomically; rank 0; every rank
    hands it its own RNG states first). In that order, a kill between the two leaves a log
    that runs ahead of the checkpoint, which resume cuts back (``read_metrics``), never a
    checkpoint whose log rows are missing."""
    ranks = state.ranks
    rng = rng_state(state.sampler, ranks.device)
    if ranks.distributed:
        rng["ranks"] = ranks.all_gather(_rank_rng(ranks.device),
                                        "gathering RNG states for the checkpoint")
    if not ranks.is_main:
        return
    source = state.sampler.state_dict()
    runlog.save()
    payload = {
        **({} if source is None else {"source": source}),
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": state.step,
        "model": state.net.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": rng,
        "normalizer": normalizer_to_tensors(state.normalizer),
        "train_config": json.dumps(to_jsonable(cfg), sort_keys=True),
        "model_config": json.dumps(to_jsonable(state.net.cfg), sort_keys=True),
        "dataset_info": json.dumps(to_jsonable(info), sort_keys=True),
    }
    keep = cfg.keep_checkpoints and state.step < cfg.steps
    save_checkpoint(Path(cfg.run_dir) / CHECKPOINT_NAME, payload,
                    keep=kept_checkpoint_path(Path(cfg.run_dir), state.step) if keep else None)
    if state.after_save is not None:
        state.after_save()
        state.after_save = None


def _evaluate_now(hook: EvalHook, run: TrainingRun, state: _State) -> dict[str, float]:
    """Call the eval hook without disturbing any training RNG (resume stays exact)."""
    device = state.ranks.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        gen_state = state.sampler.generator.get_state()
        metrics = hook(run, state.step)
        state.sampler.generator.set_state(gen_state)
    state.net.train()
    return {k: float(v) for k, v in metrics.items()}


def _update(cfg: TrainConfig, method: Method, state: _State
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


def _source_finished(state: _State) -> bool:
    """The batch source's ``finished(step)`` (an online source whose budget is spent)."""
    return bool(state.sampler.finished(state.step))


def _collect(run: TrainingRun, state: _State) -> None:
    """The batch source's ``collect(run, step)`` before an update (an online source acts in
    its environment when it is time to), then the networks back in train mode."""
    state.sampler.collect(run, state.step)
    if state.sampler.collects:
        state.net.train()


def _loop(cfg: TrainConfig, method: Method, state: _State, run: TrainingRun,
          hook: EvalHook | None, runlog: RunLog | QuietLog) -> float:
    """Update until ``cfg.steps`` (or the batch source is finished); log, evaluate and
    checkpoint on their schedules. Returns the seconds spent training (eval hook excluded;
    a batch source's collect steps included)."""
    state.net.train()
    train_seconds = 0.0
    t_loop = time.perf_counter()
    while state.step < cfg.steps and not _source_finished(state):
        _collect(run, state)
        loss, extras = _update(cfg, method, state)
        state.step += 1
        runlog.add(loss, extras)
        last = state.step == cfg.steps or _source_finished(state)
        do_eval = hook is not None and cfg.eval_every > 0 and (
            state.step % cfg.eval_every == 0 or last)
        if state.step % cfg.log_every == 0 or last or do_eval:
            row = runlog.interval_row(state.step, state.scheduler.get_last_lr()[0])
            row.update(state.sampler.log_values())
            if do_eval:
                train_seconds += time.perf_counter() - t_loop
                row.update(_evaluate_now(hook, run, state))
                t_loop = time.perf_counter()
            runlog.append(row)
            runlog.restart_interval(state.step)
        if state.step % cfg.checkpoint_every == 0 or last:
            _save(cfg, state, run.dataset_info, runlog)
    return train_seconds + time.perf_counter() - t_loop


def train(cfg: TrainConfig, eval_hook: EvalHook | None = None, *,
          init: str | Path | None = None, batch_source: SourceFactory | None = None
          ) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.dataset`` and write the run to ``cfg.run_dir``.

    ``eval_hook(run, step) -> dict[str, float]`` (e.g.
    ``offline_dt.evaluation.curves.make_eval_hook()``) runs every ``cfg.eval_every`` steps and at
    the end (when ``eval_every > 0``) with the trainer's own :class:`TrainingRun`; its values become
    ``metrics.csv`` columns. It runs under ``torch.random.fork_rng`` so it cannot disturb the
    training RNG (resume stays exact).

    Under torchrun (``WORLD_SIZE > 1``), or inside a process group the caller opened, every
    rank calls this and they train one model with DistributedDataParallel
    (``offline_dt.training.distributed``): ``batch_size`` is the global batch, split across ranks;
    rank 0 alone holds the lock, writes the run directory and calls ``eval_hook``.

    ``init`` (a checkpoint file or run directory) warm-starts a new run: its networks
    (``Method.warm_start``: all of them by default, then also the optimizer and schedule
    states), normaliser and dataset facts are taken (its dataset must be ``cfg.dataset``,
    checked by checksum; ``cfg`` must build the same networks), and the new run counts its
    own ``cfg.steps`` from 0; on ``resume`` the run's own checkpoint is used instead.
    ``batch_source(dataset, normalizer, cfg, device)`` replaces the window sampler with any
    ``offline_dt.methods.base.BatchSource`` (e.g. the replay buffer an ``odt`` fine-tune
    collects into before updates, ``offline_dt.training.finetune``).

    Without a dataset (``cfg.dataset`` empty; a ``batch_source`` that collects its own data
    is then required, e.g. ``offline_dt.training.online``) the networks are sized by the spaces of
    ``cfg.env_id`` and the normaliser leaves observations unchanged (:func:`_env_data`;
    warm-started, the ``init`` checkpoint's observation statistics).

    The whole call holds an exclusive lock on ``run_dir`` (:func:`offline_dt.data.lock.
    exclusive_lock`). Everything is checked (config, dataset, env, sizes, memory) before the
    run directory is touched; with ``overwrite`` the existing run is set aside and deleted at
    the new run's first checkpoint, or put back if the new run fails (or is killed) before it.

    Raises:
        LockedError: another process is writing ``run_dir``.
        FileExistsError: ``run_dir`` holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        FileNotFoundError: the dataset, or (with ``resume``) the checkpoint, does not exist.
        DatasetError: the dataset is malformed, does not match ``env_id``, or has an episode
            longer than ``max_timestep``.
        ValueError: bad arguments, sizes beyond the data or the available memory, or
            ``resume`` with a config that differs from the checkpoint's (names the fields).
        offline_dt.training.distributed.DistributedError: (torchrun) another rank died or hung.
    """
    t_start = time.perf_counter()
    cfg.validate()
    if batch_source is None:  # the dataset's windows: no online method
        check_command(cfg.method, "train")
    method = get_method(cfg.method)
    with process_group(resolve_device(cfg.device), cfg.dist_timeout) as ranks, \
            ExitStack() as held:
        def claim() -> tuple[TrainConfig, dict[str, Any] | None]:
            held.enter_context(exclusive_lock(Path(cfg.run_dir), "run directory"))
            return _claim_run_dir(cfg)

        cfg, resumed = ranks.from_main(claim)
        start = None
        if resumed is None and init is not None:
            init, start = read_checkpoint(init, "cpu")
        dataset, normalizer, info = _load_data(cfg, resumed or start,
                                               init if start is not None else None)
        shape = _shape(dataset, info)
        cfg = _check_sizes(cfg, shape, ranks.device, new_run=resumed is None)
        state = _build(cfg, method, dataset, normalizer, shape, ranks, resumed, start,
                       batch_source)
        del resumed, start
        previous = None
        if ranks.is_main and not cfg.resume and (Path(cfg.run_dir) / CHECKPOINT_NAME).exists():
            previous = PreviousRun(Path(cfg.run_dir))
            previous.set_aside()
            state.after_save = previous.discard
        try:
            return _run(cfg, method, state, info, eval_hook, t_start)
        except BaseException:
            if previous is not None and state.after_save is not None:
                previous.restore()  # failed before its first checkpoint: the old run is back
            raise


def _run(cfg: TrainConfig, method: Method, state: _State, info: dict[str, Any],
         eval_hook: EvalHook | None, t_start: float) -> TrainResult:
    """Write ``config.json``, run the loop, close the logs (rank 0); the
    :class:`TrainResult`."""
    run_dir, main = Path(cfg.run_dir), state.ranks.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(cfg, state, info)
    runlog: RunLog | QuietLog = (
        RunLog(run_dir, state.step, cfg.steps, cfg.progress, t_start) if main else QuietLog())
    run = TrainingRun(cfg, method, state.net, state.normalizer, info)
    start_step = state.step
    seconds = _loop(cfg, method, state, run, eval_hook if main else None, runlog)
    if state.step == start_step and state.ranks.from_main(
            lambda: not (run_dir / CHECKPOINT_NAME).exists()):
        _save(cfg, state, info, runlog)  # resumed a finished run: refresh outputs
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


# ---------------------------------------------------------------------------------- loading
def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint file (or ``run_dir/checkpoint.pt``) for evaluation.

    Only tensors and primitive containers are unpickled (``weights_only=True``).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not an offline-dt checkpoint or its contents do not fit.
    """
    p, payload = read_checkpoint(path, device)
    try:
        model_cfg = from_dict(DTConfig, json.loads(payload["model_config"]))
        train_cfg = from_dict(TrainConfig, json.loads(payload["train_config"]))
        info = json.loads(payload["dataset_info"])
        normalizer = normalizer_from_tensors(payload["normalizer"])
        method = get_method(train_cfg.method)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{p}: malformed checkpoint contents ({e})") from e
    net = method.build(model_cfg, train_cfg.method_options)
    try:
        net.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise ValueError(f"{p}: key 'model' does not fit its model_config ({e})") from e
    net.to(device).eval()
    return LoadedCheckpoint(model=net, model_config=model_cfg, train_config=train_cfg,
                            normalizer=normalizer, dataset_info=info,
                            step=int(payload["step"]), method=method)
