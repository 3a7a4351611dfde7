"""``TrainConfig``: every hyperparameter of an offline training run, checked and resolved.

Defaults are the paper's OpenAI-gym settings (Chen et al. 2021, "Decision Transformer",
Table 8 and the reference ``gym/experiment.py``): K=20, d=128, 3 layers, 1 head, dropout 0.1,
ReLU, batch 64, AdamW lr 1e-4, weight decay 1e-4, 10k linear warmup steps (``LambdaLR``),
gradient-norm clip 0.25, 100k updates. :meth:`TrainConfig.validate` refuses bad values naming
the field; :meth:`TrainConfig.resolved` fills in the defaults that depend on the data and the
device (``AUTO_FIELDS``); :func:`config_differences` is what resume and reuse compare.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from offline_dt.data.suite import suite_members
from offline_dt.methods import METHODS, get_method
from offline_dt.methods.base import method_help, methods_for
from offline_dt.methods.options import upgrade_strings
from offline_dt.nn.config import DTConfig
from offline_dt.training.configs import check_choices, to_jsonable
from offline_dt.training.device import resolve_precision, step_flops

# Fields that may change between a run and its resumption: they do not affect the parameters.
RESUMABLE_FIELDS = frozenset({
    "steps", "progress", "log_every", "checkpoint_every", "eval_every", "eval_episodes",
    "resume", "overwrite", "run_dir", "compile", "cuda_graph", "dist_timeout", "download",
})
#: Fields whose default is resolved once when a run starts (``TrainConfig.resolved``) and
#: their defaults: a run's saved config holds the resolved values, which the default ("not
#: chosen") matches on resume and reuse.
AUTO_FIELDS = {"warmup_steps": None, "max_timestep": 1000, "precision": "auto",
               "band_tokens": None, "segment_length": None}
DEFAULT_MAX_TIMESTEP = 1000
#: The learning-rate schedules after the warmup (``TrainConfig.lr_decay``,
#: :func:`offline_dt.training.step.lr_factor`).
LR_DECAYS = ("none", "linear")


@dataclass
class TrainConfig:
    """Training hyperparameters; defaults are the paper's OpenAI-gym settings."""

    dataset: str = field(default="", metadata={
        "help": "dataset: D4RL-style .hdf5 path, Minari dataset directory, or Minari id; or a "
                "suite, several of them comma-separated (a multi-task method such as mgdt; "
                "each env normalised on its own, offline_dt.data.suite)"})
    minari_root: str | None = field(default=None, metadata={
        "help": "Minari datasets root (default data/minari or $MINARI_DATASETS_PATH)"})
    download: bool = field(default=False, metadata={
        "help": "fetch a Minari id found nowhere on disk from the Minari remote "
                "($MINARI_REMOTE, default hf://farama-minari) into minari_root first"})
    env_id: str | None = field(default=None, metadata={
        "help": "Gymnasium env id; when given, the dataset's spaces must match the env's "
                "(a suite: one id per dataset, comma-separated, or unset: each dataset's own)"})
    method: str = field(default="dt", metadata={
        "help": lambda: "training method (offline_dt.methods): " + method_help("train"),
        "choices": lambda: methods_for("train")})
    method_options: Any = field(default=None, metadata={
        "cli": False,
        "help": "the method's own hyperparameters: an instance of its options dataclass "
                "(Method.options_class, e.g. QTOptions(expectile=0.8)) or a mapping of its "
                "fields to typed values, checked and completed with the defaults when the "
                "config is made; None: the defaults. The CLI gives each as a typed flag, "
                "--<method>.<option> (offline-dt train --method qt --qt.expectile 0.8)"})
    init_from: str | None = field(default=None, metadata={
        "help": "transfer (offline_dt.training.transfer): start from this multi-task "
                "checkpoint (run directory or file of a multi-task method, e.g. mgdt): its "
                "weights, network shape and method options, and the envs it knows, with the "
                "envs of --dataset it does not know added; --dataset is the new task's data "
                "(e.g. 10 episodes); optimizer and schedule start fresh"})
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
        "help": "torch.compile the loss (the method's forward passes); opt-in, never chosen "
                "automatically: compiling takes a while, and on a CPU the compiled step was "
                "slower than eager (docs/scaling.md, benchmarks/results/speed.md)"})
    cuda_graph: bool | None = field(default=None, metadata={
        "help": "capture the loss's forward and backward passes as CUDA graphs and replay "
                "them (offline_dt.training.cuda_graph): auto (None in Python) where it is "
                "safe (one process on CUDA, no --compile, methods whose loss is graph-safe "
                "such as dt and bc), true (an error where it is not safe), false"})
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

    def __post_init__(self) -> None:
        """``method_options`` as the method's checked options instance (defaults filled in;
        None for a method without options), when the method is registered (``validate``
        refuses another).

        Raises:
            ValueError: options the method does not take, or of the wrong type or range.
        """
        if self.method in METHODS:
            self.method_options = get_method(self.method).options(self.method_options)

    @classmethod
    def upgrade_json(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A saved ``config.json`` dict in today's types: a config written before options
        were typed recorded ``method_options`` as strings and ``cuda_graph`` as
        ``"auto"``/``"true"``/``"false"`` (:func:`offline_dt.training.configs.from_dict`
        calls this)."""
        data = dict(data)
        graph = data.get("cuda_graph")
        if isinstance(graph, str):
            data["cuda_graph"] = {"auto": None, "true": True, "false": False}.get(graph, graph)
        options, method = data.get("method_options"), METHODS.get(data.get("method", "dt"))
        if isinstance(options, dict) and method is not None:
            if method.options_class is None:
                data["method_options"] = options or None
            else:
                data["method_options"] = upgrade_strings(method.options_class, options)
        return data

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
        check_choices(self, skip=("device", "method"))
        if self.cuda_graph not in (None, True, False):
            raise ValueError(f"TrainConfig.cuda_graph must be None (auto), True or False, "
                             f"found {self.cuda_graph!r}")
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
        self._validate_suite()

    def _validate_suite(self) -> None:
        """A suite (comma-separated ``dataset``) and ``init_from`` only for a multi-task
        method, and as many ``env_id``s as datasets when ids are given."""
        if METHODS[self.method].multi_task and self.eval_every:
            raise ValueError(f"TrainConfig.eval_every={self.eval_every}: the periodic "
                             f"evaluation acts in one env; evaluate a multi-task run "
                             f"({self.method}) after training, env by env: offline-dt evaluate "
                             f"--checkpoint RUN --env-id ENV")
        if self.init_from and not METHODS[self.method].multi_task:
            multi = [m for m, cls in METHODS.items() if cls.multi_task]
            raise ValueError(f"TrainConfig.init_from: transfer starts from a multi-task "
                             f"checkpoint and trains its method; method {self.method!r} trains "
                             f"one env from scratch (multi-task methods: {multi})")
        members = suite_members(self.dataset)
        if members is None:
            return
        if not METHODS[self.method].multi_task:
            multi = [m for m, cls in METHODS.items() if cls.multi_task]
            raise ValueError(f"TrainConfig.dataset names a suite of {len(members)} datasets; "
                             f"method {self.method!r} trains on one dataset (multi-task "
                             f"methods: {multi})")
        env_ids = suite_members(self.env_id) or ([self.env_id] if self.env_id else None)
        if env_ids is not None and len(env_ids) != len(members):
            raise ValueError(f"TrainConfig.env_id: a suite of {len(members)} datasets needs "
                             f"{len(members)} comma-separated env ids (or none), found "
                             f"{self.env_id!r}")

    def _validate_band(self) -> None:
        """The band-attention fields: ``band_tokens >= 1``, ``segment_length >=
        context_length``, both unset in window mode, methods that support band only."""
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


def default_warmup(steps: int) -> int:
    """Warmup steps when the user chose none: ``min(10000, steps // 10)`` (the paper's 10k
    for its 100k updates; a tenth of a shorter budget, so a short run reaches its peak lr)."""
    return min(10_000, steps // 10)


def config_differences(saved: TrainConfig, current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields (other than ``RESUMABLE_FIELDS``) whose values differ: name → (saved, current).
    An ``AUTO_FIELDS`` field left at its default in ``current`` matches any saved value."""
    a, b = to_jsonable(saved), to_jsonable(current)
    auto = {k for k, default in AUTO_FIELDS.items() if b.get(k) == default}
    return {k: (a[k], b.get(k)) for k in a
            if k not in RESUMABLE_FIELDS and k not in auto and a[k] != b.get(k)}

