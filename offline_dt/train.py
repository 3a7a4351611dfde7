"""Train a Decision Transformer (Chen et al. 2021) or behaviour cloning on an offline dataset.

One file, readable top to bottom (in the spirit of CleanRL / CORL):

1. ``TrainConfig``: every hyperparameter, defaults = the paper's OpenAI-gym settings
   (Chen et al. 2021, Table 8 and the reference ``gym/experiment.py``): K=20, d=128, 3 layers,
   1 head, dropout 0.1, ReLU, batch 64, AdamW lr 1e-4, weight decay 1e-4, 10k linear warmup
   steps (``LambdaLR``), gradient-norm clip 0.25, 100k updates.
2. The loss: MSE on Box actions / cross-entropy on Discrete actions, over the real
   (non-padding) positions of each window.
3. Checkpoints that hold only tensors and primitive containers (loaded with
   ``weights_only=True``; nothing else is ever unpickled), written atomically.
4. ``train(cfg, eval_hook=None)``: the loop, with exact resume (parameters after N + M steps
   equal an uninterrupted run on CPU: the model, optimizer, scheduler, torch RNG, sampler RNG
   and CUDA RNG are all restored).
5. ``load_checkpoint(path)``: the model, configs, normaliser and dataset facts, for evaluation.

``method="bc"`` is behaviour cloning with the *same* network, data, windows and budget: the
returns-to-go tokens are replaced by zeros, so the policy cannot condition on the return (the
evaluator feeds zeros too). This isolates the effect of return conditioning.

Outputs in ``run_dir``: ``checkpoint.pt``, ``config.json`` (resolved config, DTConfig,
dataset summary), ``metrics.csv`` (step, loss, lr, steps_per_second, wall_seconds, plus the
eval hook's columns), ``tb/`` (TensorBoard scalars) and ``loss.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from offline_dt.config import from_dict, save_json, to_jsonable
from offline_dt.data import load_dataset
from offline_dt.data.d4rl import space_to_json
from offline_dt.data.dataset import DatasetError, OfflineDataset
from offline_dt.data.windows import Batch, Normalizer, WindowSampler
from offline_dt.model import DecisionTransformer, DTConfig

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "offline-dt-checkpoint"
CHECKPOINT_VERSION = 1
# Fields that may change between a run and its resumption: they do not affect the parameters.
RESUMABLE_FIELDS = frozenset({
    "steps", "progress", "log_every", "checkpoint_every", "eval_every", "resume", "overwrite",
    "run_dir",
})
EvalHook = Callable[[torch.nn.Module, int], dict[str, float]]


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
        "help": "dt: Decision Transformer; bc: same network with returns-to-go zeroed "
                "(behaviour cloning, same architecture and budget)",
        "choices": ["dt", "bc"]})
    seed: int = field(default=0, metadata={"help": "seed (torch, numpy, window sampler)"})
    device: str = field(default="auto", metadata={
        "help": "torch device; auto picks CUDA when available", "choices": ["auto", "cpu", "cuda"]})
    steps: int = field(default=100_000, metadata={"help": "gradient updates in total"})
    batch_size: int = field(default=64, metadata={"help": "windows per update"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=10_000, metadata={
        "help": "linear learning-rate warmup steps (LambdaLR)"})
    grad_clip: float = field(default=0.25, metadata={"help": "gradient-norm clip"})
    precision: str = field(default="fp32", metadata={
        "help": "fp32, or bf16: forward and loss under torch.autocast(bfloat16), weights and "
                "optimizer in fp32 (faster on CPUs with AMX/AVX512-BF16 at the paper config, "
                "see benchmarks/results/speed.md; can be slower on small models)",
        "choices": ["fp32", "bf16"]})
    context_length: int = field(default=20, metadata={"help": "K, timesteps per window"})
    embed_dim: int = field(default=128, metadata={"help": "transformer width d"})
    n_layer: int = field(default=3, metadata={"help": "transformer blocks"})
    n_head: int = field(default=1, metadata={"help": "attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    activation: str = field(default="relu", metadata={
        "help": "MLP nonlinearity", "choices": ["relu", "gelu"]})
    max_timestep: int = field(default=1000, metadata={
        "help": "timestep embedding table size; every episode must be at most this long"})
    rtg_scale: float | None = field(default=None, metadata={
        "help": "returns-to-go divisor (default: largest |episode return| of the dataset)"})
    run_dir: Path = field(default=Path("data/runs/default"), metadata={
        "help": "output directory (checkpoint.pt, config.json, metrics.csv, tb/, loss.png)"})
    checkpoint_every: int = field(default=1000, metadata={
        "help": "save checkpoint.pt every this many steps (and at the end)"})
    log_every: int = field(default=100, metadata={"help": "metrics.csv row every this many steps"})
    eval_every: int = field(default=0, metadata={
        "help": "call the evaluation hook every this many steps and at the end (0: never)"})
    resume: bool = field(default=False, metadata={
        "help": "continue exactly from run_dir/checkpoint.pt (same config required)"})
    overwrite: bool = field(default=False, metadata={
        "help": "start afresh even if run_dir already holds a checkpoint"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar (TTY only)"})

    def model_config(self, obs_dim: int, act_dim: int, discrete: bool) -> DTConfig:
        return DTConfig(
            obs_dim=obs_dim, act_dim=act_dim, discrete=discrete,
            context_length=self.context_length, max_timestep=self.max_timestep,
            embed_dim=self.embed_dim, n_layer=self.n_layer, n_head=self.n_head,
            dropout=self.dropout, activation=self.activation,
        )

    def validate(self) -> None:
        """Raises ValueError naming the argument, the expected range and the value found."""
        if self.method not in ("dt", "bc"):
            raise ValueError(f"TrainConfig.method must be 'dt' or 'bc', found {self.method!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(
                f"TrainConfig.precision must be 'fp32' or 'bf16', found {self.precision!r}")
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            raise ValueError(
                f"TrainConfig.device must be auto, cpu or cuda, found {self.device!r}")
        positive = ("steps", "batch_size", "context_length", "embed_dim", "n_layer", "n_head",
                    "max_timestep", "checkpoint_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, found {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, found {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TrainConfig.dropout must be in [0, 1), found {self.dropout}")
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
    """A checkpoint ready for evaluation (``model`` is in eval mode on the requested device)."""

    model: DecisionTransformer
    model_config: DTConfig
    train_config: TrainConfig
    normalizer: Normalizer
    dataset_info: dict[str, Any]
    step: int


# ---------------------------------------------------------------------------------- helpers
def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def describe_space(space: gym.Space) -> dict[str, Any]:
    return json.loads(space_to_json(space))


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
    if isinstance(act_space, gym.spaces.Discrete):
        if not dataset.discrete or int(dataset.action_space.n) != int(act_space.n):
            raise DatasetError(
                f"{src}: action space {dataset.action_space} does not match env {env_id}'s "
                f"{act_space}")
        return dataset
    if not isinstance(act_space, gym.spaces.Box) or dataset.discrete \
            or dataset.action_space.shape != act_space.shape:
        raise DatasetError(
            f"{src}: action space {dataset.action_space} does not match env {env_id}'s "
            f"{act_space}")
    same = (np.allclose(dataset.action_space.low, act_space.low)
            and np.allclose(dataset.action_space.high, act_space.high))
    if same:
        return dataset
    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    if (dataset.actions < low - 1e-6).any() or (dataset.actions > high + 1e-6).any():
        raise DatasetError(
            f"{src}: action space {dataset.action_space} does not match env {env_id}'s "
            f"{act_space} and the actions leave the env's bounds")
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
        "observation_space": describe_space(dataset.observation_space),
        "action_space": describe_space(dataset.action_space),
        "longest_episode": int(dataset.episode_lengths.max()),
        "rtg_scale": rtg_scale,
    }


# ---------------------------------------------------------------------------------- loss
def compute_loss(model: DecisionTransformer, batch: Batch, method: str) -> torch.Tensor:
    """Action-prediction loss over the real (non-padding) positions of the windows.

    Box actions: MSE between the tanh output and the [-1, 1]-scaled action. Discrete actions:
    cross-entropy of the logits. ``method="bc"`` zeroes the returns-to-go input.
    """
    rtg = batch.returns_to_go if method == "dt" else torch.zeros_like(batch.returns_to_go)
    pred = model(rtg, batch.observations, batch.actions, batch.timesteps, batch.mask).float()
    mask = batch.mask
    if model.cfg.discrete:
        return F.cross_entropy(pred[mask], batch.actions[mask])
    return F.mse_loss(pred[mask], batch.actions[mask])


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    return Batch(*(t.to(device, non_blocking=True) for t in dataclasses.astuple(batch)))


# ---------------------------------------------------------------------------------- checkpoints
def _rng_state(sampler: WindowSampler, device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "sampler": sampler.generator.get_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gaussian": float(np_state[4]),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], sampler: WindowSampler, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    sampler.generator.set_state(state["sampler"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_has_gauss"],
                         state["numpy_cached_gaussian"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary sibling, then ``os.replace``: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _checkpoint_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


_REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "rng", "step", "normalizer",
                  "train_config", "model_config", "dataset_info")


def _read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                     ) -> tuple[Path, dict[str, Any]]:
    p = _checkpoint_path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"checkpoint {p} does not exist (pass a checkpoint file or a run directory "
            f"holding {CHECKPOINT_NAME})")
    try:
        payload = torch.load(p, map_location=device, weights_only=True)
    except Exception as e:  # pickle errors, zip errors, disallowed globals
        raise ValueError(f"{p}: not a readable offline-dt checkpoint ({type(e).__name__}: {e})"
                         ) from e
    if not isinstance(payload, dict):
        raise ValueError(f"{p}: expected a dict checkpoint, found {type(payload).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(
            f"{p}: not an offline-dt checkpoint, missing key(s) {missing} "
            f"(found {sorted(payload)})")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: key 'format' is {payload['format']!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}")
    return p, payload


def _normalizer_to_tensors(norm: Normalizer) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v).copy()) for k, v in norm.state_dict().items()}


def _normalizer_from_tensors(d: dict[str, torch.Tensor]) -> Normalizer:
    return Normalizer.from_state_dict({k: v.cpu().numpy() for k, v in d.items()})


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> LoadedCheckpoint:
    """Load a checkpoint file (or ``run_dir/checkpoint.pt``) for evaluation.

    Only tensors and primitive containers are unpickled (``weights_only=True``).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not an offline-dt checkpoint or its contents do not fit.
    """
    p, payload = _read_checkpoint(path, device)
    try:
        model_cfg = from_dict(DTConfig, json.loads(payload["model_config"]))
        train_cfg = from_dict(TrainConfig, json.loads(payload["train_config"]))
        info = json.loads(payload["dataset_info"])
        normalizer = _normalizer_from_tensors(payload["normalizer"])
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{p}: malformed checkpoint contents ({e})") from e
    model = DecisionTransformer(model_cfg)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise ValueError(f"{p}: key 'model' does not fit its model_config ({e})") from e
    model.to(device).eval()
    return LoadedCheckpoint(model=model, model_config=model_cfg, train_config=train_cfg,
                            normalizer=normalizer, dataset_info=info, step=int(payload["step"]))


def config_differences(saved: TrainConfig, current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields (other than ``RESUMABLE_FIELDS``) whose values differ: name → (saved, current)."""
    a, b = to_jsonable(saved), to_jsonable(current)
    return {k: (a[k], b.get(k)) for k in a if k not in RESUMABLE_FIELDS and a[k] != b.get(k)}


# ---------------------------------------------------------------------------------- metrics
def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _read_metrics(path: Path, up_to_step: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(f)]
    return [r for r in rows if r.get("step", math.inf) <= up_to_step]


def _plot_loss(path: Path, rows: list[dict[str, float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if pts:
        ax.plot(*zip(*pts, strict=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log" if pts and min(p[1] for p in pts) > 0 else "linear")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- training
def make_optimizer(model: torch.nn.Module, cfg: TrainConfig
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on all parameters and a linear warmup (reference ``gym/experiment.py``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    warmup = max(cfg.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 1.0))
    return optimizer, scheduler


def train_step(model: DecisionTransformer, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, batch: Batch,
               cfg: TrainConfig) -> torch.Tensor:
    """One update: loss, backward, gradient-norm clip, AdamW step, warmup schedule step.
    With ``cfg.precision == "bf16"`` the forward pass and loss run under bfloat16 autocast."""
    device_type = batch.observations.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        loss = compute_loss(model, batch, cfg.method)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.detach()


def train(cfg: TrainConfig, eval_hook: EvalHook | None = None) -> TrainResult:
    """Train on ``cfg.dataset`` and write the run to ``cfg.run_dir``.

    ``eval_hook(model, step) -> dict[str, float]`` runs every ``cfg.eval_every`` steps and at
    the end (when ``eval_every > 0``); its values become ``metrics.csv`` columns. It runs under
    ``torch.random.fork_rng`` so it cannot disturb the training RNG (resume stays exact).

    Raises:
        FileExistsError: ``run_dir`` holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        FileNotFoundError: the dataset, or (with ``resume``) the checkpoint, does not exist.
        DatasetError: the dataset is malformed, does not match ``env_id``, or has an episode
            longer than ``max_timestep``.
        ValueError: bad arguments, or ``resume`` with a config that differs from the
            checkpoint's (the message names the fields).
    """
    t_start = time.perf_counter()
    cfg.validate()
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    device = resolve_device(cfg.device)

    # -- refuse to clobber, or read what we resume from (before the slow dataset load)
    resumed: dict[str, Any] | None = None
    if cfg.resume:
        _, resumed = _read_checkpoint(ckpt_path, "cpu")
        saved_cfg = from_dict(TrainConfig, json.loads(resumed["train_config"]))
        diff = config_differences(saved_cfg, cfg)
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{ckpt_path}: cannot resume with a different config ({lines}); only "
                f"{sorted(RESUMABLE_FIELDS)} may change. Use a new run_dir or overwrite=True.")
    elif ckpt_path.exists():
        if not cfg.overwrite:
            raise FileExistsError(
                f"{ckpt_path} exists; pass --resume to continue it or --overwrite to start "
                f"afresh")
        for stale in ("metrics.csv", "loss.png", "config.json", CHECKPOINT_NAME):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tb", ignore_errors=True)

    # -- data
    dataset = load_dataset(cfg.dataset, cfg.minari_root)
    if cfg.env_id:
        dataset = check_env_spaces(dataset, cfg.env_id)
    if resumed is not None:
        normalizer = _normalizer_from_tensors(resumed["normalizer"])
        info = json.loads(resumed["dataset_info"])
        if info.get("checksum") != dataset.checksum():
            raise ValueError(
                f"{ckpt_path}: dataset {cfg.dataset} has checksum {dataset.checksum()[:12]}…, "
                f"the checkpoint was trained on {str(info.get('checksum'))[:12]}…")
    else:
        normalizer = Normalizer.fit(dataset, cfg.rtg_scale)
        info = dataset_info(dataset, cfg, normalizer.rtg_scale)

    # -- seeding, sampler, model, optimizer (seeded identically on resume, then overwritten)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(cfg.seed)
    sampler = WindowSampler(dataset, normalizer, cfg.context_length, cfg.max_timestep,
                            seed=cfg.seed)
    model_cfg = cfg.model_config(dataset.obs_dim, dataset.act_dim, dataset.discrete)
    model = DecisionTransformer(model_cfg).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    step = 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        _set_rng_state(resumed["rng"], sampler, device)
        step = int(resumed["step"])
        log.info("resuming %s at step %d", ckpt_path, step)
    del resumed

    # -- run directory: config.json, metrics, TensorBoard
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_json = json.dumps(to_jsonable(cfg), sort_keys=True)
    model_cfg_json = json.dumps(to_jsonable(model_cfg), sort_keys=True)
    info_json = json.dumps(to_jsonable(info), sort_keys=True)
    save_json({
        "train_config": cfg,
        "resolved": {"device": str(device), "rtg_scale": normalizer.rtg_scale},
        "model_config": model_cfg,
        "num_parameters": model.num_parameters(),
        "dataset": info,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__},
    }, run_dir / "config.json")
    metrics_path = run_dir / "metrics.csv"
    rows = _read_metrics(metrics_path, step)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(sampler, device),
            "normalizer": _normalizer_to_tensors(normalizer),
            "train_config": cfg_json,
            "model_config": model_cfg_json,
            "dataset_info": info_json,
        })
        _write_metrics(metrics_path, rows)

    # -- the loop
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True,
               disable=not cfg.progress or not sys.stderr.isatty())
    model.train()
    start_step = step
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    final_loss = float("nan")
    loop_seconds = 0.0  # training time, eval hook excluded
    interval_start, interval_step = time.perf_counter(), step
    t_loop = time.perf_counter()
    while step < cfg.steps:
        batch = _to_device(sampler.sample(cfg.batch_size), device)
        loss = train_step(model, optimizer, scheduler, batch, cfg)
        step += 1
        loss_sum += loss
        loss_count += 1
        bar.update(1)

        last = step == cfg.steps
        do_eval = eval_hook is not None and cfg.eval_every > 0 and (
            step % cfg.eval_every == 0 or last)
        if step % cfg.log_every == 0 or last or do_eval:
            now = time.perf_counter()
            sps = (step - interval_step) / max(now - interval_start, 1e-9)
            final_loss = float(loss_sum) / loss_count
            row = {"step": step, "loss": final_loss, "lr": scheduler.get_last_lr()[0],
                   "steps_per_second": sps,
                   "wall_seconds": now - t_start}
            if do_eval:
                loop_seconds += now - t_loop
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    gen_state = sampler.generator.get_state()
                    metrics = eval_hook(model, step)
                    sampler.generator.set_state(gen_state)
                model.train()
                row.update({k: float(v) for k, v in metrics.items()})
                t_loop = time.perf_counter()
            rows.append(row)
            for k, v in row.items():
                if k != "step" and math.isfinite(v):
                    writer.add_scalar(f"train/{k}" if not k.startswith("eval") else f"eval/{k}",
                                      v, step)
            bar.set_postfix(loss=f"{final_loss:.4g}", sps=f"{sps:.1f}")
            loss_sum.zero_()
            loss_count = 0
            interval_start, interval_step = time.perf_counter(), step
        if step % cfg.checkpoint_every == 0 or last:
            checkpoint()
    loop_seconds += time.perf_counter() - t_loop
    bar.close()
    if step == start_step:  # nothing left to do (resumed a finished run): refresh outputs
        if not ckpt_path.exists():
            checkpoint()
        if rows:
            final_loss = rows[-1].get("loss", final_loss)
    writer.flush()
    writer.close()
    _write_metrics(metrics_path, rows)
    _plot_loss(run_dir / "loss.png", rows,
               f"{cfg.method} on {info.get('dataset_id') or cfg.dataset}")
    done = step - start_step
    return TrainResult(
        run_dir=run_dir,
        checkpoint=ckpt_path,
        final_loss=final_loss,
        steps=step,
        steps_per_second=done / loop_seconds if done and loop_seconds > 0 else 0.0,
        wall_seconds=time.perf_counter() - t_start,
    )
