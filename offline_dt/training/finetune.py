"""Online fine-tuning of an ``odt`` checkpoint (Zheng, Zhang & Grover 2022, "Online Decision
Transformer", Algorithm 1), on the one training loop of ``offline_dt.training.loop``.

Algorithm 1, as run here:

1. A trajectory replay buffer is seeded with the offline dataset's ``buffer_size``
   trajectories of highest return (ODT: 1000 for D4RL's 1000-step episodes; here 100 by
   default, so that on our small Pendulum budgets the online episodes replace the offline ones
   within a run, as ODT's 1500 online rounds replace its 1000).
2. Each round collects ``episodes_per_round`` episodes with the *stochastic* policy
   (``Method.policy(..., sample=True)``) conditioned on the exploration target ``g_online``
   (:func:`default_online_target`), through the one rollout engine
   (``offline_dt.envs.rollout.make_vec_env`` and ``step_policy``). Hindsight return relabelling:
   a collected episode enters the buffer with its own rewards, so the returns-to-go it is
   trained on are the returns it actually achieved,
   ``R̂_t = Σ_{t' >= t} r_t'`` (:func:`hindsight_returns_to_go`), not ``g_online`` minus
   the rewards; the oldest trajectories leave first (FIFO) once the buffer is full.
3. Then ``updates_per_round`` updates (ODT: 300) on windows of K steps sampled from the
   buffer, a trajectory drawn with probability proportional to its length and a start
   uniformly inside it (ODT's sampler, ``offline_dt.data.windows.WindowSampler`` over the
   buffer).
4. Rounds repeat until ``online_steps`` env steps have been collected (the last round's
   episodes are played to their end, so the total may pass it by less than one round).

With ``method_options`` ``critic_weight`` > 0 the fine-tune adds TD3 gradients (a twin Q
critic learned by TD on the buffer's windows, and its normalised Q term in the actor's loss:
Yan, Schwing & Wang, NeurIPS 2024; ``offline_dt.methods.odt``), the answer to ODT's failure
on low-return data, whose episodes hindsight relabelling can only imitate.

The loop is ``offline_dt.training.loop.train``: this module passes it the pretrained checkpoint
(``init``: networks, optimizer and schedule continue from pretraining, as ODT continues its
optimizer online; a critic the pretrained run lacks starts fresh, and then so do the
optimizer and schedule) and a :class:`ReplaySource` as its batch source, whose ``collect`` hook
acts before each round's updates. Optimizer, precision, logs (``metrics.csv`` gains
``env_steps``, ``online_episodes``, ``collect_return_mean``, ``buffer_episodes``),
checkpoints and exact resume are the loop's; the buffer (arrays, as tensors), the collect RNG
and the counters are the checkpoint's ``source``. A finetuned run directory is a training run
like any other: ``offline-dt evaluate --checkpoint RUN_DIR`` acts with the deterministic
(mean) policy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_dt.data.dataset import OfflineDataset, registered_env_id
from offline_dt.data.windows import Batch, Normalizer, WindowSampler, returns_to_go
from offline_dt.envs.rollout import SEED_RANGE, Policy, episode_seed, make_vec_env, step_policy
from offline_dt.training.checkpoint import checkpoint_path, read_checkpoint
from offline_dt.training.configs import RunControls, from_dict, save_json, to_jsonable
from offline_dt.training.loop import (
    EvalHook,
    TrainConfig,
    TrainingRun,
    TrainResult,
    check_env_spaces,
    train,
)

#: Collected episode ``i`` of a fine-tune with seed ``s`` resets its env with
#: ``COLLECT_SEED_BASE + s * 100000 + i``: a block of its own, apart from datagen's (below
#: ``10**12``), the test episodes' (``[10**12, 2 * 10**12)``) and validation's
#: (``[2 * 10**12, 3 * 10**12)``), see ``offline_dt.envs.rollout``.
COLLECT_SEED_BASE = 3 * SEED_RANGE
#: FinetuneConfig fields that may change when a fine-tune is resumed.
RESUMABLE = frozenset({"online_steps", "resume", "overwrite", "progress", "log_every",
                       "checkpoint_every", "eval_every", "eval_episodes", "run_dir", "device",
                       "checkpoint"})


@dataclass
class FinetuneConfig(RunControls):
    """Online fine-tuning of an ``odt`` checkpoint (module docstring)."""

    checkpoint: str = field(default="", metadata={
        "help": "the pretrained odt run directory or checkpoint file (offline-dt train "
                "--method odt)"})
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
        "help": "g_online, the exploration target return (default: r + |r| for r the larger "
                "of the dataset's best return and its expert score: ODT's 2x for positive "
                "returns, 0 for Pendulum's negative ones)"})
    method_options: dict[str, str] = field(default_factory=dict, metadata={
        "help": "odt options to change for the fine-tune, as KEY VALUE pairs over the "
                "pretrained run's (e.g. critic_weight 1: TD3 gradients, Yan et al. 2024; "
                "offline_dt.methods.odt lists the keys)"})
    seed: int = field(default=0, metadata={
        "help": "seed (torch, numpy, window sampler, collect noise, collect env resets)"})
    log_every: int = field(default=100, metadata={
        "help": "metrics.csv row every this many updates"})

    def validate(self) -> None:
        """Raises ValueError naming the argument and the value found."""
        if not self.checkpoint:
            raise ValueError("FinetuneConfig.checkpoint is required: the pretrained odt run "
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


# ---------------------------------------------------------------------------------- buffer
def hindsight_returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Hindsight relabelling of one collected episode (ODT's): its returns-to-go are
    the returns it achieved from each step, whatever target it was conditioned on.

    Args:
        rewards: ``(T,)`` the episode's rewards ``r_0 .. r_{T-1}``.

    Returns:
        ``(T,) float64`` ``R̂_t = Σ_{t'=t}^{T-1} r_t'``, what ``WindowSampler`` trains the
        buffer's episodes on (``offline_dt.data.windows.returns_to_go``).
    """
    r = np.asarray(rewards).reshape(-1)
    return returns_to_go(r, np.array([0, len(r)], np.int64))


def episodes_dataset(episodes: list[dict[str, np.ndarray]], like: OfflineDataset
                     ) -> OfflineDataset:
    """The buffer as an :class:`OfflineDataset` of ``episodes`` (dicts of
    ``OfflineDataset.episode``'s arrays), with ``like``'s spaces."""
    starts = np.concatenate([[0], np.cumsum([len(e["rewards"]) for e in episodes])])
    return OfflineDataset.from_flat(
        **{k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]},
        episode_starts=starts.astype(np.int64), observation_space=like.observation_space,
        action_space=like.action_space, metadata={"env_id": like.metadata.get("env_id")},
        source="replay buffer")


def top_trajectories(dataset: OfflineDataset, n: int) -> OfflineDataset:
    """The ``n`` episodes of ``dataset`` with the highest return, in ascending order of
    return (ODT's ``ReplayBuffer`` seed; ties keep the dataset's order)."""
    order = np.argsort(dataset.episode_returns, kind="stable")[-n:]
    return episodes_dataset([dataset.episode(int(i)) for i in order], dataset)


def fifo_add(buffer: OfflineDataset, new: list[dict[str, np.ndarray]], capacity: int
             ) -> OfflineDataset:
    """``buffer`` with the ``new`` episodes appended and the oldest dropped beyond
    ``capacity`` episodes."""
    old = [buffer.episode(i) for i in range(buffer.num_episodes)]
    return episodes_dataset((old + new)[-capacity:], buffer)


def play_episodes(env_id: str, policy: Policy, seeds: list[int], max_length: int
                  ) -> tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """One episode per reset seed with ``policy`` (all at once, one vector env of the rollout
    engine).

    Returns:
        ``(episodes, lengths, returns)``: each episode as ``OfflineDataset.episode``'s arrays
        (env units): ``observations``, ``actions``, ``rewards`` ``(T,) float32``,
        ``next_observations``, ``terminals``, ``timeouts``; an episode longer than
        ``max_length`` keeps its first ``max_length`` steps (the timestep table's size), its
        last marked as a timeout. ``(E,) int64`` env steps and ``(E,) float64`` returns of
        the whole episodes.
    """
    envs = make_vec_env(env_id, len(seeds))
    try:
        steps = list(step_policy(envs, policy, seeds))
    finally:
        envs.close()
    episodes, lengths, returns = [], [], []
    for j in range(len(seeds)):
        rows = [s for s in steps if s.active[j]]
        lengths.append(len(rows))
        returns.append(sum(float(s.counted_rewards[j]) for s in rows))
        rows = rows[:max_length]
        ep = {"observations": np.stack([s.observations[j] for s in rows]),
              "actions": np.stack([np.asarray(s.actions[j]) for s in rows]),
              "rewards": np.array([s.rewards[j] for s in rows], np.float32),
              "next_observations": np.stack([s.next_observations[j] for s in rows]),
              "terminals": np.array([s.terminated[j] for s in rows], bool),
              "timeouts": np.array([s.truncated[j] for s in rows], bool)}
        ep["timeouts"][-1] |= not ep["terminals"][-1]
        episodes.append(ep)
    return episodes, np.array(lengths, np.int64), np.array(returns, np.float64)


def default_online_target(best_return: float | None, ref_max_score: float | None) -> float:
    """``g_online`` when none is given: ``r + |r|`` for ``r`` the larger of the dataset's best
    episode return and its expert reference score (ODT's twice the best for positive returns,
    e.g. hopper 3600 → 7200; 0, the largest possible return, for Pendulum's negative ones).

    Raises:
        ValueError: neither is known.
    """
    known = [float(x) for x in (best_return, ref_max_score) if x is not None]
    if not known:
        raise ValueError("FinetuneConfig.target_return: the checkpoint's dataset_info has "
                         "neither best_return nor ref_max_score; pass --target-return")
    r = max(known)
    return r + abs(r)


# ---------------------------------------------------------------------------------- source
class ReplaySource:
    """The training loop's batch source for a fine-tune (``offline_dt.training.loop.BatchSource``):
    a FIFO trajectory buffer, ODT's collect step and its state.

    Args:
        dataset: the offline dataset (its best ``cfg.buffer_size`` episodes seed the buffer).
        normalizer: the pretrained checkpoint's (the buffer is normalised with it).
        train_cfg: the run's ``TrainConfig`` (``context_length``, ``max_timestep``, ``seed``).
        device: where batches go.
        cfg: the fine-tune's settings.
        env_id: the env to collect in.
        target_return: ``g_online``.
    """

    def __init__(self, dataset: OfflineDataset, normalizer: Normalizer, train_cfg: TrainConfig,
                 device: torch.device, cfg: FinetuneConfig, env_id: str,
                 target_return: float) -> None:
        self.cfg, self.env_id, self.target_return = cfg, env_id, float(target_return)
        self.normalizer, self.device = normalizer, device
        self.k, self.max_timestep = train_cfg.context_length, train_cfg.max_timestep
        self.generator = torch.Generator().manual_seed(train_cfg.seed)  # window draws
        self.collect_rng = torch.Generator().manual_seed(COLLECT_SEED_BASE + train_cfg.seed)
        self.env_steps = self.episodes = self.rounds = 0
        self.return_mean = math.nan
        self._set_buffer(top_trajectories(check_env_spaces(dataset, env_id), cfg.buffer_size))

    def _set_buffer(self, buffer: OfflineDataset) -> None:
        """Hold ``buffer`` and sample from it with the source's own generator."""
        self.buffer = buffer
        self.sampler = WindowSampler(buffer, self.normalizer, self.k, self.max_timestep,
                                     device=self.device)
        self.sampler.generator = self.generator

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[Batch, float]:
        return self.sampler.sample_shard(batch_size, rank, world_size)

    def collect(self, run: TrainingRun, step: int) -> None:
        """At the start of every round (``step`` a multiple of ``updates_per_round``) while
        fewer than ``online_steps`` env steps are collected: play ``episodes_per_round``
        episodes with the sampled policy toward ``g_online`` and add them to the buffer."""
        if step % self.cfg.updates_per_round or self.env_steps >= self.cfg.online_steps:
            return
        policy = run.method.policy(run.net, run.normalizer, self.target_return, sample=True,
                                   generator=self.collect_rng)
        seeds = [COLLECT_SEED_BASE + episode_seed(run.config.seed, self.episodes + j)
                 for j in range(self.cfg.episodes_per_round)]
        new, lengths, returns = play_episodes(self.env_id, policy, seeds, self.max_timestep)
        self.env_steps += int(lengths.sum())
        self.episodes += len(new)
        self.rounds += 1
        self.return_mean = float(returns.mean())
        self._set_buffer(fifo_add(self.buffer, new, self.cfg.buffer_size))

    def finished(self, step: int) -> bool:
        """The budget is spent and the round's updates are done."""
        return step % self.cfg.updates_per_round == 0 and self.env_steps >= self.cfg.online_steps

    def log_values(self) -> dict[str, float]:
        return {"env_steps": float(self.env_steps), "online_episodes": float(self.episodes),
                "collect_return_mean": self.return_mean,
                "buffer_episodes": float(self.buffer.num_episodes)}

    def settings(self) -> dict[str, Any]:
        """What a resumed fine-tune must share with the checkpoint (RESUMABLE aside)."""
        fixed = {k: v for k, v in to_jsonable(self.cfg).items() if k not in RESUMABLE}
        return {**fixed, "env_id": self.env_id, "g_online": self.target_return}

    def state_dict(self) -> dict[str, Any]:
        """The buffer's arrays as tensors, the collect RNG and the counters (the window
        generator is checkpointed with the loop's RNGs)."""
        names = ("observations", "actions", "rewards", "next_observations", "terminals",
                 "timeouts", "episode_starts")
        return {"settings": json.dumps(self.settings(), sort_keys=True),
                "buffer": {k: torch.from_numpy(np.ascontiguousarray(getattr(self.buffer, k)))
                           for k in names},
                "collect_rng": self.collect_rng.get_state(), "env_steps": self.env_steps,
                "episodes": self.episodes, "rounds": self.rounds,
                "return_mean": self.return_mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state.

        Raises:
            ValueError: the checkpoint's fine-tune settings differ (names them).
        """
        saved = json.loads(state["settings"])
        diff = {k: (saved.get(k), v) for k, v in self.settings().items() if saved.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume a fine-tune with different settings ({lines}); "
                             f"only {sorted(RESUMABLE)} may change")
        arrays = {k: v.cpu().numpy() for k, v in state["buffer"].items()}
        self._set_buffer(OfflineDataset.from_flat(
            **arrays, observation_space=self.buffer.observation_space,
            action_space=self.buffer.action_space, metadata=self.buffer.metadata,
            source="replay buffer"))
        self.collect_rng.set_state(state["collect_rng"])
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
        self.rounds, self.return_mean = int(state["rounds"]), float(state["return_mean"])


# ---------------------------------------------------------------------------------- entry point
def _base_checkpoint(path: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The ``TrainConfig`` and dataset facts of the checkpoint at ``path`` (the pretrained
    one, or on resume the fine-tune's own).

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: it was not trained with ``--method odt``.
    """
    path, payload = read_checkpoint(path, "cpu")
    train_cfg = from_dict(TrainConfig, json.loads(payload["train_config"]))
    if train_cfg.method != "odt":
        raise ValueError(
            f"FinetuneConfig.checkpoint: {path} was trained with method "
            f"{train_cfg.method!r}, whose deterministic action head cannot sample the "
            f"exploration actions online fine-tuning collects with; pretrain with "
            f"`offline-dt train --method odt` (the Online Decision Transformer's stochastic "
            f"policy) and fine-tune that checkpoint")
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
        method_options={**base.method_options, **cfg.method_options},
        steps=cfg.updates_per_round * rounds, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
        eval_episodes=cfg.eval_episodes, resume=cfg.resume, overwrite=cfg.overwrite,
        progress=cfg.progress)


def finetune(cfg: FinetuneConfig, eval_hook: EvalHook | None = None) -> TrainResult:
    """Fine-tune an ``odt`` checkpoint online (module docstring) into ``cfg.run_dir``; write
    ``finetune.json`` (the settings, ``g_online``, the pretrained checkpoint) beside the
    run's usual files. ``eval_hook`` draws the learning curve every ``cfg.eval_every``
    updates, as for ``train`` (``offline_dt.evaluation.evaluate.make_eval_hook()``).

    Raises:
        FileNotFoundError: no pretrained checkpoint (or, with ``resume``, no run to resume).
        FileExistsError: ``run_dir`` holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        ValueError: bad arguments; a checkpoint of another method than ``odt``; a run under
            torchrun (``WORLD_SIZE > 1``); a resume with different settings.
    """
    cfg.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("offline-dt finetune runs in one process: its collect step acts in "
                         "one environment loop; run it without torchrun")
    own = checkpoint_path(cfg.resolved_run_dir())
    base, info = _base_checkpoint(own if cfg.resume and own.is_file() else cfg.checkpoint)
    env_id = registered_env_id(info.get("env_id"), str(cfg.checkpoint), "dataset_info/env_id")
    target = cfg.target_return if cfg.target_return is not None else default_online_target(
        info.get("best_return"), info.get("ref_max_score"))
    train_cfg = finetune_train_config(cfg, base)

    def source(dataset: OfflineDataset, normalizer: Normalizer, tcfg: TrainConfig,
               device: torch.device) -> ReplaySource:
        return ReplaySource(dataset, normalizer, tcfg, device, cfg, env_id, target)

    result = train(train_cfg, eval_hook, init=checkpoint_path(cfg.checkpoint), batch_source=source)
    save_json({"finetune_config": cfg, "g_online": target, "env_id": env_id,
               "pretrained_checkpoint": str(checkpoint_path(cfg.checkpoint))},
              result.run_dir / "finetune.json")
    return result
