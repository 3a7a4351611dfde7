"""Online fine-tuning of a pretrained checkpoint (``offline-dt finetune``: methods of kind
``finetune``, e.g. ``odt``: Zheng, Zhang & Grover 2022, "Online Decision Transformer",
Algorithm 1), on the one training loop of ``offline_dt.training.loop``.

This module passes the loop the pretrained checkpoint (``init``: networks, optimizer and
schedule continue from pretraining, as ODT continues its optimizer online; a critic the
pretrained run lacks starts fresh, and then so do the optimizer and schedule) and the batch
source the method makes (``FinetuneMethod.make_source``; odt's is
``offline_dt.methods.odt_replay.ReplaySource``, whose ``collect`` hook plays a round's episodes
before the round's updates). The command's settings are the rounds (``updates_per_round``,
``episodes_per_round``, ``buffer_size``), the env-step budget ``online_steps`` and the
exploration target ``g_online`` (``target_return``; by default the method's,
``FinetuneMethod.exploration_target``).

With ``method_options`` ``critic_weight`` > 0 an odt fine-tune adds TD3 gradients (a twin Q
critic learned by TD on the buffer's windows, and its normalised Q term in the actor's loss:
Yan, Schwing & Wang, NeurIPS 2024; ``offline_dt.methods.odt``), the answer to ODT's failure
on low-return data, whose episodes hindsight relabelling can only imitate.

Optimizer, precision, logs, checkpoints and exact resume are the loop's. A finetuned run
directory is a training run like any other: ``offline-dt evaluate --checkpoint RUN_DIR`` acts
with the deterministic (mean) policy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.windows import Normalizer
from offline_dt.envs.make import registered_id
from offline_dt.methods import BatchSource, FinetuneMethod, get_method, methods_for
from offline_dt.methods.base import METHODS, ResumeSettings, Rounds, SourceSpec
from offline_dt.methods.options import option_values
from offline_dt.training.checkpoint import checkpoint_path, read_checkpoint
from offline_dt.training.configs import RunControls, from_dict, save_json, to_jsonable
from offline_dt.training.loop import EvalHook, TrainResult, train
from offline_dt.training.run_data import check_env_spaces
from offline_dt.training.train_config import TrainConfig

#: FinetuneConfig fields that may change when a fine-tune is resumed.
RESUMABLE = frozenset({"online_steps", "resume", "overwrite", "progress", "log_every",
                       "checkpoint_every", "eval_every", "eval_episodes", "run_dir", "device",
                       "checkpoint"})


@dataclass
class FinetuneConfig(RunControls):
    """Online fine-tuning of a pretrained checkpoint (module docstring)."""

    checkpoint: str = field(default="", metadata={
        "help": "the pretrained run directory or checkpoint file (offline-dt train --method "
                + " or ".join(methods_for("finetune")) + ")"})
    run_dir: Path | None = field(default=None, metadata={
        "help": "output run directory (default: the pretrained run directory's sibling "
                "<name>-online)"})
    online_steps: int = field(default=10_000, metadata={
        "help": "env steps to collect in total; the run stops at the first round boundary "
                "at or after it"})
    updates_per_round: int = field(default=300, metadata={
        "help": "gradient updates after each collect step (ODT: 300)"})
    episodes_per_round: int = field(default=1, metadata={
        "help": "episodes collected per round, in one vector env (ODT: 1)"})
    buffer_size: int = field(default=100, metadata={
        "help": "trajectories in the FIFO replay buffer, seeded with the dataset's best "
                "(ODT: 1000 for D4RL's 1000-step episodes)"})
    target_return: float | None = field(default=None, metadata={
        "help": "g_online, the exploration target return (default: the method's; odt: r + |r| "
                "for r the larger of the dataset's best return and its expert score: ODT's 2x "
                "for positive returns, 0 for Pendulum's negative ones)"})
    method_options: dict[str, Any] = field(default_factory=dict, metadata={
        "cli": False,
        "help": "the method options to change for the fine-tune over the pretrained run's, "
                "as a mapping of typed values (e.g. odt's {'critic_weight': 1.0}: TD3 "
                "gradients, Yan et al. 2024; offline_dt.methods.odt.ODTOptions lists them). "
                "The CLI gives each as --<method>.<option> (--odt.critic-weight 1)"})
    seed: int = field(default=0, metadata={
        "help": "seed (torch, numpy, window sampler, collect noise, collect env resets)"})
    log_every: int = field(default=100, metadata={
        "help": "metrics.csv row every this many updates"})

    def validate(self) -> None:
        """Raises ValueError naming the argument and the value found."""
        if not self.checkpoint:
            raise ValueError("FinetuneConfig.checkpoint is required: the pretrained run "
                             "directory or checkpoint file")
        for name in ("online_steps", "updates_per_round", "episodes_per_round", "buffer_size",
                     "log_every", "checkpoint_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, found "
                                 f"{getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"FinetuneConfig.eval_every must be >= 0, found {self.eval_every}")
        if self.target_return is not None and not math.isfinite(self.target_return):
            raise ValueError(f"FinetuneConfig.target_return must be finite, found "
                             f"{self.target_return}")

    def resolved_run_dir(self) -> Path:
        if self.run_dir is not None:
            return Path(self.run_dir)
        src = checkpoint_path(self.checkpoint).parent
        return src.with_name(src.name + "-online")


# ---------------------------------------------------------------------------------- entry point
def _base_checkpoint(path: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The ``TrainConfig`` and dataset facts of the checkpoint at ``path`` (the pretrained
    one, or on resume the fine-tune's own).

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: it was not trained with a method of kind ``finetune`` (e.g. ``odt``).
    """
    path, payload = read_checkpoint(path, "cpu")
    train_cfg = from_dict(TrainConfig, json.loads(payload["train_config"]))
    cls = METHODS.get(train_cfg.method)
    if cls is None or cls.kind != "finetune":
        commands = " or ".join(f"`offline-dt train --method {m}`"
                               for m in methods_for("finetune"))
        raise ValueError(
            f"FinetuneConfig.checkpoint: {path} was trained with method "
            f"{train_cfg.method!r}, which offline-dt finetune does not fine-tune (it fine-tunes "
            f"methods {methods_for('finetune')}, whose stochastic policies sample the "
            f"exploration actions online fine-tuning collects with); pretrain with "
            f"{commands} and fine-tune that checkpoint")
    return train_cfg, json.loads(payload["dataset_info"])


def finetune_train_config(cfg: FinetuneConfig, base: TrainConfig) -> TrainConfig:
    """The loop's config: the pretrained run's (same networks, optimizer, batch) with this
    fine-tune's run directory, seed, device and logging, ``cfg.method_options`` over the
    pretrained run's, and ``steps`` the update cap
    ``updates_per_round * ceil(online_steps / episodes_per_round)`` (every round collects at
    least one step per episode; the source ends the run when the env steps are spent)."""
    rounds = -(-cfg.online_steps // cfg.episodes_per_round)
    return dataclasses.replace(
        base, run_dir=cfg.resolved_run_dir(), seed=cfg.seed, device=cfg.device,
        method_options=METHODS[base.method]().options(
            {**option_values(base.method_options), **cfg.method_options}),
        steps=cfg.updates_per_round * rounds, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
        eval_episodes=cfg.eval_episodes, resume=cfg.resume, overwrite=cfg.overwrite,
        progress=cfg.progress)


def resume_settings(cfg: FinetuneConfig, env_id: str, target: float) -> ResumeSettings:
    """What a resumed fine-tune must share with its checkpoint: every setting but
    :data:`RESUMABLE`, the env and ``g_online``."""
    fixed = {k: v for k, v in to_jsonable(cfg).items() if k not in RESUMABLE}
    return ResumeSettings("a fine-tune", {**fixed, "env_id": env_id, "g_online": float(target)},
                          RESUMABLE)


def source_spec(cfg: FinetuneConfig, train_cfg: TrainConfig, dataset: OfflineDataset,
                normalizer: Normalizer, device: torch.device, env_id: str, target: float
                ) -> SourceSpec:
    """What the method's batch source is made from: ``dataset`` checked against ``env_id``
    (``check_env_spaces``), the rounds and ``g_online`` = ``target``."""
    rounds = Rounds(updates_per_round=cfg.updates_per_round,
                    episodes_per_round=cfg.episodes_per_round, buffer_size=cfg.buffer_size,
                    target_return=float(target))
    return SourceSpec(config=train_cfg, device=device, normalizer=normalizer,
                      dataset=check_env_spaces(dataset, env_id), env_id=env_id,
                      env_steps=cfg.online_steps, settings=resume_settings(cfg, env_id, target),
                      rounds=rounds)


def finetune(cfg: FinetuneConfig, eval_hook: EvalHook | None = None) -> TrainResult:
    """Fine-tune a pretrained checkpoint online (module docstring) into ``cfg.run_dir``; write
    ``finetune.json`` (the settings, ``g_online``, the pretrained checkpoint) beside the
    run's usual files. ``eval_hook`` draws the learning curve every ``cfg.eval_every``
    updates, as for ``train`` (``offline_dt.evaluation.curves.make_eval_hook()``).

    Raises:
        FileNotFoundError: no pretrained checkpoint (or, with ``resume``, no run to resume).
        FileExistsError: ``run_dir`` holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        ValueError: bad arguments; a checkpoint of a method of another kind than
            ``finetune``; a run under torchrun (``WORLD_SIZE > 1``); a resume with different
            settings.
    """
    cfg.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("offline-dt finetune runs in one process: its collect step acts in "
                         "one environment loop; run it without torchrun")
    own = checkpoint_path(cfg.resolved_run_dir())
    base, info = _base_checkpoint(own if cfg.resume and own.is_file() else cfg.checkpoint)
    method = get_method(base.method)
    assert isinstance(method, FinetuneMethod), base.method  # kind checked above
    env_id = registered_id(info.get("env_id"), str(cfg.checkpoint), "dataset_info/env_id")
    target = cfg.target_return if cfg.target_return is not None else \
        method.exploration_target(info)
    train_cfg = finetune_train_config(cfg, base)

    def source(dataset: OfflineDataset, normalizer: Normalizer, tcfg: TrainConfig,
               device: torch.device) -> BatchSource:
        return method.make_source(source_spec(cfg, tcfg, dataset, normalizer, device, env_id,
                                              target))

    result = train(train_cfg, eval_hook, init=checkpoint_path(cfg.checkpoint), batch_source=source)
    save_json({"finetune_config": cfg, "g_online": target, "env_id": env_id,
               "pretrained_checkpoint": str(checkpoint_path(cfg.checkpoint))},
              result.run_dir / "finetune.json")
    return result
