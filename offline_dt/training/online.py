"""Online RL with a transformer policy (``offline-dt online``: methods of kind ``online``,
e.g. ``ppo``, ``dqn``, ``reinforce``, ``a2c``) on the one training loop.

``train_online(OnlineConfig)`` calls ``offline_dt.training.loop.train`` with no dataset (the
networks are sized by the env's spaces and observations are not normalised, ``train._env_data``) and
the batch source the method makes (``OnlineMethod.make_source``, e.g.
``offline_dt.methods.ppo_rollout.RolloutSource``, ``offline_dt.methods.dqn.WindowReplaySource``),
which collects its own data through the one rollout engine. The method also sets the loop's
update cap and batch size for the env-step budget (``OnlineMethod.budget``), its default
learning rate, learning-rate schedule and gradient clip. Optimizer, schedule, gradient
clipping, logs, periodic evaluation, checkpoints and exact resume are the loop's; this module
is the command's config, the loop's config built from it, and the settings a resumed run must
share (:data:`RESUMABLE`).

``init`` warm-starts from a pretrained checkpoint (e.g. ``offline-dt train --method dt``; seed
002, section 5.1.3): its trunk (``Method.warm_start``: embeddings, blocks, final LayerNorm;
for ppo also the action head, for dqn not) and its observation statistics are loaded, the
other heads, optimizer and schedule are fresh, and the network shape (``embed_dim``,
``n_layer``, ``n_head``, ``activation``, ``max_timestep``) is the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from offline_dt.data.windows import Normalizer
from offline_dt.methods import (
    METHODS,
    BatchSource,
    OnlineMethod,
    check_command,
    get_method,
    methods_for,
)
from offline_dt.methods.base import ResumeSettings, SourceSpec, method_help
from offline_dt.training.checkpoint import checkpoint_path, read_checkpoint
from offline_dt.training.configs import RunControls, from_dict, same_as, save_json
from offline_dt.training.loop import EvalHook, TrainResult, train
from offline_dt.training.train_config import LR_DECAYS, TrainConfig

log = logging.getLogger(__name__)

#: OnlineConfig fields that may change when a run is resumed.
RESUMABLE = frozenset({"env_steps", "resume", "overwrite", "progress", "log_every",
                       "checkpoint_every", "eval_every", "eval_episodes", "run_dir", "device",
                       "init"})
#: The network-shape fields an ``init`` checkpoint fixes.
SHAPE_FIELDS = ("embed_dim", "n_layer", "n_head", "activation", "max_timestep")
#: The OnlineConfig fields the loop's ``TrainConfig`` takes as they are (the others are
#: resolved by :func:`online_train_config`).
AS_GIVEN = ("env_id", "method", "method_options", "seed", "device", "weight_decay",
            "context_length", "dropout", "checkpoint_every", "log_every", "eval_every",
            "eval_episodes", "resume", "overwrite", "progress")


@dataclass
class OnlineConfig(RunControls):
    """Online training of a transformer policy (module docstring). The network and optimizer
    fields are ``TrainConfig``'s, with online defaults (the method's learning rate, e.g.
    CleanRL's 2.5e-4 for ppo and dqn, without weight decay or warmup, no dropout, fp32)."""

    method: str = field(default="ppo", metadata={
        "help": lambda: "online method (offline_dt.methods): " + method_help("online"),
        "choices": lambda: methods_for("online")})
    env_id: str = field(default="CartPole-v1", metadata={"help": "Gymnasium env id"})
    env_steps: int = field(default=100_000, metadata={
        "help": "env steps to collect in total (rollout methods such as ppo: whole rollouts, "
                "so up to one rollout more)"})
    run_dir: Path | None = field(default=None, metadata={
        "help": "output run directory (default data/runs/online/<env>/<method>/seed<seed>)"})
    seed: int = field(default=0, metadata={
        "help": "seed (networks, minibatches, collect noise, collect env resets)"})
    init: str | None = field(default=None, metadata={
        "help": "warm start from a pretrained run directory or checkpoint (e.g. offline-dt "
                "train --method dt): its trunk and observation statistics; the network shape "
                "is its"})
    method_options: Any = field(default=None, metadata={
        "cli": False,
        "help": "the method's hyperparameters: an instance of its options dataclass (e.g. "
                "offline_dt.methods.ppo.PPOOptions) or a mapping of its fields to typed "
                "values; None: the defaults. The CLI gives each as --<method>.<option> "
                "(--ppo.n-envs 4)"})
    context_length: int = same_as(TrainConfig, "context_length")
    embed_dim: int = same_as(TrainConfig, "embed_dim")
    n_layer: int = same_as(TrainConfig, "n_layer")
    n_head: int = same_as(TrainConfig, "n_head")
    dropout: float = same_as(TrainConfig, "dropout", default=0.0, help=(
        "dropout probability (0: the collect's and the update's policies agree)"))
    activation: str = same_as(TrainConfig, "activation")
    max_timestep: int = same_as(TrainConfig, "max_timestep", help=(
        "timestep embedding table size (grows to the env's time limit)"))
    learning_rate: float | None = field(default=None, metadata={
        "help": lambda: "AdamW learning rate (default: the method's, " + ", ".join(
            f"{m}: {METHODS[m].learning_rate:g}" for m in methods_for("online")) + ")"})
    lr_decay: str = field(default="auto", metadata={
        "help": lambda: "learning-rate schedule (TrainConfig.lr_decay): auto is the method's ("
                + ", ".join(f"{m}: {METHODS[m].lr_decay}" for m in methods_for("online"))
                + ")",
        "choices": ["auto", *LR_DECAYS]})
    weight_decay: float = same_as(TrainConfig, "weight_decay", default=0.0)
    grad_clip: float | None = field(default=None, metadata={
        "help": lambda: "gradient-norm clip (default: the method's, " + ", ".join(
            f"{m}: {METHODS[m].grad_clip:g}" for m in methods_for("online")) + ")"})
    batch_size: int | None = field(default=None, metadata={
        "help": "samples per update (default: the method's, e.g. dqn 128 transitions, "
                "CleanRL's; a rollout method's is fixed by its rollout, e.g. ppo's n_envs * "
                "n_steps / minibatches)"})
    log_every: int = field(default=16, metadata={"help": "metrics.csv row every this many updates"})

    def __post_init__(self) -> None:
        """``method_options`` as the method's checked options instance (as
        ``TrainConfig``'s), when the method is registered."""
        if self.method in METHODS:
            self.method_options = get_method(self.method).options(self.method_options)

    def validate(self) -> None:
        """Raises ValueError naming the argument, what is expected and the value found."""
        check_command(self.method, "online")
        if self.env_steps < 1:
            raise ValueError(f"OnlineConfig.env_steps must be >= 1, found {self.env_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"OnlineConfig.grad_clip must be > 0, found {self.grad_clip}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"OnlineConfig.learning_rate must be > 0, found "
                             f"{self.learning_rate}")
        if self.lr_decay not in ("auto", *LR_DECAYS):
            raise ValueError(f"OnlineConfig.lr_decay must be 'auto', 'none' or 'linear', "
                             f"found {self.lr_decay!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"OnlineConfig.batch_size must be >= 1, found {self.batch_size}")

    def resolved_run_dir(self) -> Path:
        if self.run_dir is not None:
            return Path(self.run_dir)
        return Path("data/runs/online") / self.env_id.replace("/", "_") / self.method / \
            f"seed{self.seed}"


# ---------------------------------------------------------------------------------- entry point
def _shape_from(cfg: OnlineConfig) -> dict[str, Any]:
    """The network-shape fields a checkpoint fixes: on resume the run's own, else the
    ``init`` checkpoint's; none without either."""
    own = checkpoint_path(cfg.resolved_run_dir())
    path = own if cfg.resume and own.is_file() else cfg.init
    if not path:
        return {}
    _, payload = read_checkpoint(path, "cpu")
    base = from_dict(TrainConfig, json.loads(payload["train_config"]))
    return {k: getattr(base, k) for k in SHAPE_FIELDS}


def online_train_config(cfg: OnlineConfig) -> TrainConfig:
    """The loop's config: no dataset, ``cfg.env_id``, the method and its options, the update
    cap and batch size (``OnlineMethod.budget``), fp32, no warmup, the network shape
    (``init``'s or the resumed run's when there is one: :data:`SHAPE_FIELDS`), the learning
    rate, its schedule and the gradient clip (``learning_rate``, ``lr_decay`` and
    ``grad_clip``; the method's under None, ``auto`` and None)."""
    method = _online_method(cfg.method)
    budget = method.budget(cfg.method_options, cfg.env_steps, cfg.batch_size)
    shape = {k: getattr(cfg, k) for k in SHAPE_FIELDS}
    chosen = _shape_from(cfg)
    if chosen and chosen != shape:
        log.info("network shape from the checkpoint: %s", chosen)
    as_given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                if f.name in AS_GIVEN}
    return TrainConfig(
        dataset="", **as_given, **{**shape, **chosen}, steps=budget.steps,
        batch_size=budget.batch_size,
        learning_rate=method.learning_rate if cfg.learning_rate is None else cfg.learning_rate,
        warmup_steps=0, grad_clip=cfg.grad_clip or method.grad_clip, precision="fp32",
        lr_decay=method.lr_decay if cfg.lr_decay == "auto" else cfg.lr_decay,
        run_dir=cfg.resolved_run_dir())


def _online_method(name: str) -> OnlineMethod:
    """The registered online method ``name`` (ValueError for another kind)."""
    check_command(name, "online")
    method = get_method(name)
    assert isinstance(method, OnlineMethod), name  # kind "online" is an OnlineMethod
    return method


def resume_settings(cfg: OnlineConfig) -> ResumeSettings:
    """What a resumed run must share with its checkpoint: every setting but
    :data:`RESUMABLE`."""
    values = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    return ResumeSettings("an online run", {k: v for k, v in values.items()
                                            if k not in RESUMABLE}, RESUMABLE)


def source_spec(cfg: OnlineConfig, train_cfg: TrainConfig, normalizer: Normalizer,
                device: torch.device) -> SourceSpec:
    """What the method's batch source is made from (``train_cfg`` the loop's resolved one)."""
    return SourceSpec(config=train_cfg, device=device, normalizer=normalizer, dataset=None,
                      env_id=cfg.env_id, env_steps=cfg.env_steps,
                      settings=resume_settings(cfg))


def train_online(cfg: OnlineConfig, eval_hook: EvalHook | None = None) -> TrainResult:
    """Train ``cfg.method`` online in ``cfg.env_id`` for ``cfg.env_steps`` env steps on the
    one training loop (module docstring); write ``online.json`` (the settings) beside the
    run's usual files. ``eval_hook`` draws the learning curve every ``cfg.eval_every``
    updates, as for ``train`` (``offline_dt.evaluation.curves.make_eval_hook()``).

    Raises:
        FileNotFoundError: ``init`` (or, with ``resume``, the run's checkpoint) missing.
        FileExistsError: ``run_dir`` holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        ValueError: bad arguments; a method of another kind (names the command that trains
            it); an env the method cannot act in (``OnlineMethod.check_env``, e.g. dqn with a
            non-Discrete action space); an ``init`` checkpoint whose trunk does not fit; a
            resume with different settings; a run under torchrun.
    """
    cfg.validate()
    method = _online_method(cfg.method)
    method.check_env(cfg.env_id)
    train_cfg = online_train_config(cfg)

    def source(dataset: Any, normalizer: Normalizer, tcfg: TrainConfig,
               device: torch.device) -> BatchSource:
        return method.make_source(source_spec(cfg, tcfg, normalizer, device))

    init = checkpoint_path(cfg.init) if cfg.init and not cfg.resume else None
    result = train(train_cfg, eval_hook, init=init, batch_source=source)
    save_json({"online_config": cfg, "train_config": train_cfg,
               "init_checkpoint": None if init is None else str(init)},
              result.run_dir / "online.json")
    return result
