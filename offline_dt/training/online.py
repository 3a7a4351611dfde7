"""Online RL with a transformer policy (``ppo``, ``dqn``) on the one training loop.

``train_online(OnlineConfig)`` calls ``offline_dt.training.loop.train`` with no dataset (the
networks are sized by the env's spaces and observations are not normalised, ``train._env_data``) and
a batch source (``offline_dt.training.loop.BatchSource``) that collects its own data through the one
rollout engine: an ``offline_dt.envs.rollout.EpisodeStream`` (a vector env stepped on across
collects, every episode reset with its own seed) driven by the method's
``offline_dt.methods.history.HistoryPolicy`` (per-env windows of the last K
``(r_{t-1}, s_t, a_t)``). Optimizer, schedule, gradient clipping, logs, periodic evaluation,
checkpoints and exact resume are the loop's; the source adds:

- :class:`RolloutSource` (``ppo``): ``collect`` plays ``n_steps`` steps in each of
  ``n_envs`` envs with the sampling policy, computes GAE (``offline_dt.methods.ppo.gae``) and
  draws ``epochs`` permutations of the ``n_envs · n_steps`` samples; the loop then takes
  ``epochs · minibatches`` updates on its minibatches before the next collect.
- :class:`WindowReplaySource` (``dqn``): ``collect`` plays ``train_frequency`` env steps
  with the ε-greedy policy before every update (``learning_starts`` before the first) into a
  FIFO buffer of (K + 1)-step windows; the loop samples batches uniformly from it.

Both end at the env-step budget (``finished``), log ``env_steps``, ``episodes`` and
``episode_return_mean`` (the mean return of the episodes that ended in the last collect;
``epsilon`` for dqn) to ``metrics.csv``, and checkpoint as the loop's ``source``: the
counters, the collect RNG, the policy's windows, the rollout or the buffer, and the env
stream, which is restored by replaying every sub-env's actions from its episode's reset seed,
so a resumed run equals an uninterrupted one (for envs deterministic given the seed).

Collect episode ``k`` of a run with seed ``s`` resets with ``ONLINE_SEED_BASE + s * 100000 +
k``: a block of its own (``[4 * 10**12, 5 * 10**12)`` for ``k`` below ``10**12``), apart
from the test and validation episodes of ``offline_dt.evaluation.evaluate`` and the datasets'.

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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.envs.rollout import SEED_RANGE, SEED_STRIDE, EpisodeStream
from offline_dt.methods.base import parse_options
from offline_dt.methods.dqn import DQNBatch, DQNOptions, linear_epsilon
from offline_dt.methods.history import HistoryPolicy
from offline_dt.methods.ppo import PPOBatch, PPOOptions, gae
from offline_dt.training.checkpoint import checkpoint_path, read_checkpoint
from offline_dt.training.configs import RunControls, from_dict, save_json
from offline_dt.training.loop import (
    LR_DECAYS,
    EvalHook,
    TrainConfig,
    TrainingRun,
    TrainResult,
    train,
)

log = logging.getLogger(__name__)

#: Collect episode ``k`` of seed ``s`` resets with ``ONLINE_SEED_BASE + s * SEED_STRIDE + k``.
ONLINE_SEED_BASE = 4 * SEED_RANGE
#: OnlineConfig fields that may change when a run is resumed.
RESUMABLE = frozenset({"env_steps", "resume", "overwrite", "progress", "log_every",
                       "checkpoint_every", "eval_every", "eval_episodes", "run_dir", "device",
                       "init"})
#: The network-shape fields an ``init`` checkpoint fixes.
SHAPE_FIELDS = ("embed_dim", "n_layer", "n_head", "activation", "max_timestep")


@dataclass
class OnlineConfig(RunControls):
    """Online training of a transformer policy (module docstring). The network and optimizer
    fields are ``TrainConfig``'s, with online defaults (CleanRL's Adam lr 2.5e-4 without
    weight decay or warmup, no dropout, fp32)."""

    method: str = field(default="ppo", metadata={
        "help": "ppo (Discrete or Box actions) or dqn (Discrete)", "choices": ["ppo", "dqn"]})
    env_id: str = field(default="CartPole-v1", metadata={"help": "Gymnasium env id"})
    env_steps: int = field(default=100_000, metadata={
        "help": "env steps to collect in total (ppo: whole rollouts, so up to one rollout "
                "more)"})
    run_dir: Path | None = field(default=None, metadata={
        "help": "output run directory (default data/runs/online/<env>/<method>/seed<seed>)"})
    seed: int = field(default=0, metadata={
        "help": "seed (networks, minibatches, collect noise, collect env resets)"})
    init: str | None = field(default=None, metadata={
        "help": "warm start from a pretrained run directory or checkpoint (e.g. offline-dt "
                "train --method dt): its trunk and observation statistics; the network shape "
                "is its"})
    method_options: dict[str, str] = field(default_factory=dict, metadata={
        "help": "the method's hyperparameters as KEY VALUE pairs (offline_dt.methods.ppo."
                "PPOOptions, offline_dt.methods.dqn.DQNOptions)"})
    context_length: int = field(default=20, metadata={"help": "K, timesteps per window"})
    embed_dim: int = field(default=128, metadata={"help": "transformer width d"})
    n_layer: int = field(default=3, metadata={"help": "transformer blocks"})
    n_head: int = field(default=1, metadata={"help": "attention heads"})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout probability (0: the collect's and the update's policies agree)"})
    activation: str = field(default="relu", metadata={
        "help": "MLP nonlinearity", "choices": ["relu", "gelu"]})
    max_timestep: int = field(default=1000, metadata={
        "help": "timestep embedding table size (grows to the env's time limit)"})
    learning_rate: float = field(default=2.5e-4, metadata={"help": "Adam(W) learning rate"})
    lr_decay: str = field(default="auto", metadata={
        "help": "learning-rate schedule (TrainConfig.lr_decay): auto is linear to 0 over the "
                "budget for ppo (CleanRL's anneal_lr) and none for dqn (CleanRL's)",
        "choices": ["auto", *LR_DECAYS]})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float | None = field(default=None, metadata={
        "help": "gradient-norm clip (default: ppo 0.5, CleanRL's; dqn 10, SB3's)"})
    batch_size: int | None = field(default=None, metadata={
        "help": "dqn: transitions per update (default 128, CleanRL's); ppo: fixed by "
                "n_envs * n_steps / minibatches"})
    log_every: int = field(default=16, metadata={"help": "metrics.csv row every this many updates"})

    def validate(self) -> None:
        """Raises ValueError naming the argument, what is expected and the value found."""
        if self.method not in SOURCES:
            raise ValueError(f"OnlineConfig.method must be one of {sorted(SOURCES)}, found "
                             f"{self.method!r}")
        if self.env_steps < 1:
            raise ValueError(f"OnlineConfig.env_steps must be >= 1, found {self.env_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"OnlineConfig.grad_clip must be > 0, found {self.grad_clip}")
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


# ---------------------------------------------------------------------------------- sources
class EnvSource:
    """What both online sources share: the env stream and the method's collect policy
    (created at the first collect, when the trainer's network is known), the env-step budget,
    episode statistics, the collect RNG and their checkpointed state.

    Args:
        normalizer: the run's (observations for the policy, Box action bounds).
        cfg: the run's ``TrainConfig`` (``seed``, ``method_options`` resolved).
        device: where batches go.
        online: the online settings (``env_id``, ``env_steps``).
        n_envs: envs stepped at once.
    """

    def __init__(self, normalizer: Normalizer, cfg: TrainConfig, device: torch.device,
                 online: OnlineConfig, n_envs: int) -> None:
        self.normalizer, self.device, self.online, self.n_envs = normalizer, device, online, n_envs
        self.seed = cfg.seed
        self.generator = torch.Generator().manual_seed(cfg.seed)  # minibatch draws
        self.collect_rng = torch.Generator().manual_seed(ONLINE_SEED_BASE + cfg.seed)
        self.stream: EpisodeStream | None = None
        self.policy: HistoryPolicy | None = None
        self.pending: dict[str, Any] | None = None
        self.env_steps = self.episodes = 0
        self.return_mean = math.nan

    def reset_seed(self, k: int) -> int:
        return ONLINE_SEED_BASE + self.seed * SEED_STRIDE + int(k)

    def make_policy(self, run: TrainingRun) -> HistoryPolicy:
        raise NotImplementedError

    def ensure_stream(self, run: TrainingRun) -> None:
        """At the first collect: the stream and the policy, started afresh or restored."""
        if self.stream is not None:
            return
        self.stream = EpisodeStream(self.online.env_id, self.n_envs, self.reset_seed)
        self.policy = self.make_policy(run)
        if self.pending is None:
            self.stream.start(self.policy)
            return
        self.stream.load_state_dict(self.pending["stream"])
        self.policy.reset(self.n_envs)
        self.policy.load_state_dict(self.pending["policy"])
        self.pending = None

    def play(self, run: TrainingRun, steps: int) -> Any:
        """Step the stream ``steps`` times (networks in eval mode, no gradients); yields its
        transitions and updates the counters and ``return_mean``."""
        self.ensure_stream(run)
        run.net.eval()
        with torch.no_grad():
            yield from self.stream.steps(self.policy, steps)
        self.env_steps = self.stream.env_steps
        done = self.stream.drain_finished()
        self.episodes += len(done)
        if done:
            self.return_mean = float(np.mean([r for r, _ in done]))

    def finished(self, step: int) -> bool:
        return self.env_steps >= self.online.env_steps

    def log_values(self) -> dict[str, float]:
        return {"env_steps": float(self.env_steps), "episodes": float(self.episodes),
                "episode_return_mean": self.return_mean}

    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with its checkpoint (RESUMABLE aside)."""
        return {k: v for k, v in json.loads(json.dumps(
            dataclasses.asdict(self.online), default=str)).items() if k not in RESUMABLE}

    def base_state(self) -> dict[str, Any]:
        stream = self.stream.state_dict() if self.stream is not None else self.pending["stream"]
        policy = self.policy.state_dict() if self.policy is not None else self.pending["policy"]
        return {"settings": json.dumps(self.settings(), sort_keys=True), "stream": stream,
                "policy": policy, "collect_rng": self.collect_rng.get_state(),
                "env_steps": self.env_steps, "episodes": self.episodes,
                "return_mean": self.return_mean}

    def load_base_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`base_state` (the env stream at the next collect).

        Raises:
            ValueError: the checkpoint's online settings differ (names them).
        """
        saved = json.loads(state["settings"])
        diff = {k: (saved.get(k), v) for k, v in self.settings().items() if saved.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume an online run with different settings ({lines}); "
                             f"only {sorted(RESUMABLE)} may change")
        self.pending = {"stream": state["stream"], "policy": state["policy"]}
        self.collect_rng.set_state(state["collect_rng"])
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
        self.return_mean = float(state["return_mean"])


def _stack(windows: list[Batch]) -> dict[str, torch.Tensor]:
    """``T`` windows of ``N`` envs → the :class:`Batch` fields as ``(T * N, K, ...)``."""
    names = ("returns_to_go", "observations", "actions", "timesteps", "mask")
    return {n: torch.stack([getattr(w, n) for w in windows]).flatten(0, 1) for n in names}


class RolloutSource(EnvSource):
    """PPO's batch source (module docstring): on-policy rollouts with GAE, served as
    ``epochs · minibatches`` minibatches.

    Raises:
        ValueError: ``cfg.batch_size`` is not ``n_envs · n_steps / minibatches``.
    """

    def __init__(self, normalizer: Normalizer, cfg: TrainConfig, device: torch.device,
                 online: OnlineConfig) -> None:
        self.opts: PPOOptions = parse_options(PPOOptions, "ppo", cfg.method_options)
        super().__init__(normalizer, cfg, device, online, self.opts.n_envs)
        if cfg.batch_size != self.opts.batch_size:
            raise ValueError(f"TrainConfig.batch_size must be n_envs * n_steps / minibatches = "
                             f"{self.opts.batch_size} for ppo, found {cfg.batch_size}")
        self.rollout: dict[str, torch.Tensor] = {}
        self.perms = torch.zeros(0, dtype=torch.long)
        self.served = 0

    @staticmethod
    def update_cap(online: OnlineConfig, opts: PPOOptions) -> int:
        """Updates for the budget: ``epochs · minibatches`` per rollout."""
        rollouts = -(-online.env_steps // (opts.n_envs * opts.n_steps))
        return opts.updates_per_rollout * rollouts

    def make_policy(self, run: TrainingRun) -> HistoryPolicy:
        return run.method.policy(run.net, run.normalizer, None, sample=True,
                                 generator=self.collect_rng)

    def collect(self, run: TrainingRun, step: int) -> None:
        """At a rollout boundary with budget left: collect, GAE, permutations."""
        if step % self.opts.updates_per_rollout or self.finished(step):
            return
        self.rollout = self._rollout(run)
        n = self.opts.n_envs * self.opts.n_steps
        self.perms = torch.stack([torch.randperm(n, generator=self.generator)
                                  for _ in range(self.opts.epochs)])
        self.served = 0

    @torch.no_grad()
    def _values(self, net: torch.nn.Module, observations: np.ndarray) -> np.ndarray:
        """``(N,)`` values of the windows ending at ``observations`` (the policy's peek)."""
        return net.heads(self.policy.peek(observations))[1].float().cpu().numpy()

    def _rollout(self, run: TrainingRun) -> dict[str, torch.Tensor]:
        """``n_steps`` steps of ``n_envs`` envs: windows, sampled actions, log-probs, values,
        then GAE's advantages and returns, flattened to ``(n_steps · n_envs, ...)``."""
        t_max, n, scale = self.opts.n_steps, self.opts.n_envs, self.opts.reward_scale
        windows, extras = [], []
        rewards, next_values = np.zeros((t_max, n)), np.zeros((t_max, n))
        terminated, truncated = np.zeros((t_max, n), bool), np.zeros((t_max, n), bool)
        for t, tr in enumerate(self.play(run, t_max)):
            windows.append(self.policy.last[0])
            extras.append(self.policy.last[1])
            rewards[t] = np.asarray(tr.rewards, np.float64) * scale
            terminated[t], truncated[t] = tr.terminated, tr.truncated & ~tr.terminated
            if truncated[t].any():  # bootstrap from the true last observation's window
                next_values[t] = self._values(run.net, tr.next_observations)
        values = torch.stack([e["values"] for e in extras]).float().cpu().numpy()
        last = self._values(run.net, self.stream.observations)
        following = np.concatenate([values[1:], last[None]])
        next_values = np.where(truncated, next_values, following)
        adv, ret = gae(rewards, values, next_values, terminated, truncated,
                       self.opts.gamma, self.opts.gae_lambda)
        out = _stack(windows)
        out.update({
            "raw_actions": torch.stack([e["raw_actions"] for e in extras]).flatten(0, 1),
            "old_log_probs": torch.stack([e["log_probs"] for e in extras]).flatten(0, 1),
            "old_values": torch.from_numpy(values.reshape(-1)),
            "advantages": torch.from_numpy(adv.reshape(-1)),
            "returns": torch.from_numpy(ret.reshape(-1))})
        return {k: v.to(self.device) for k, v in out.items()}

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[PPOBatch, float]:
        """The next minibatch of the current rollout (epoch ``served // minibatches``)."""
        epoch, part = divmod(self.served, self.opts.minibatches)
        if epoch >= len(self.perms):
            raise ValueError("RolloutSource: every minibatch of the rollout was served; "
                             "collect must run first (the loop calls it before each update)")
        size = self.opts.batch_size
        idx = self.perms[epoch, part * size:(part + 1) * size].to(self.device)
        self.served += 1
        clip = self.opts.clip_at(self.env_steps, self.online.env_steps)
        return PPOBatch(**{k: v[idx] for k, v in self.rollout.items()}, clip=clip), 1.0

    def finished(self, step: int) -> bool:
        return step % self.opts.updates_per_rollout == 0 and super().finished(step)

    def state_dict(self) -> dict[str, Any]:
        return {**self.base_state(), "rollout": dict(self.rollout), "perms": self.perms,
                "served": self.served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_base_state(state)
        self.rollout = {k: v.to(self.device) for k, v in state["rollout"].items()}
        self.perms, self.served = state["perms"], int(state["served"])


class WindowReplaySource(EnvSource):
    """DQN's batch source (module docstring): a FIFO buffer of ``buffer_size`` transitions,
    each a window of K + 1 steps (:class:`~offline_dt.methods.dqn.DQNBatch`). SB3's
    ``ReplayBuffer`` stores single transitions, but a transformer Q-network needs each
    transition's history; a window per transition (both histories in one, ``[:K]`` and
    ``[1:]``) keeps sampling one gather. Uniform sampling with replacement."""

    def __init__(self, normalizer: Normalizer, cfg: TrainConfig, device: torch.device,
                 online: OnlineConfig) -> None:
        self.opts: DQNOptions = parse_options(DQNOptions, "dqn", cfg.method_options)
        super().__init__(normalizer, cfg, device, online, self.opts.n_envs)
        self.buffer: dict[str, torch.Tensor] = {}
        self.pos = self.size = 0

    @staticmethod
    def update_cap(online: OnlineConfig, opts: DQNOptions) -> int:
        """At most one update per ``train_frequency`` env steps after ``learning_starts``."""
        after = max(online.env_steps - opts.learning_starts, 0)
        return -(-after // opts.train_frequency) + 1

    @staticmethod
    def check_env(env_id: str, action_space: gym.Space) -> None:
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"method 'dqn' needs a Discrete action space; env {env_id} has "
                             f"{action_space} (use --method ppo for Box actions)")

    def epsilon(self) -> float:
        """ε now (:func:`~offline_dt.methods.dqn.linear_epsilon` over the env steps)."""
        o = self.opts
        steps = self.env_steps if self.stream is None else self.stream.env_steps
        return linear_epsilon(steps, o.start_e, o.end_e,
                              o.exploration_fraction * self.online.env_steps)

    def make_policy(self, run: TrainingRun) -> HistoryPolicy:
        return run.method.policy(run.net, run.normalizer, None, epsilon=self.epsilon,
                                 generator=self.collect_rng)

    def collect(self, run: TrainingRun, step: int) -> None:
        """Before every update with budget left: ``train_frequency`` env steps (up to
        ``learning_starts`` before the first), never past the budget by a vector step."""
        if self.finished(step):
            return
        need = max(self.opts.learning_starts - self.env_steps, self.opts.train_frequency)
        need = min(need, self.online.env_steps - self.env_steps)
        for tr in self.play(run, -(-need // self.n_envs)):
            window = self.policy.last[0]
            nxt = self.policy.peek(tr.next_observations)
            rows = {n: torch.cat((getattr(window, n)[:, :1], getattr(nxt, n)), dim=1)
                    for n in ("returns_to_go", "observations", "actions", "timesteps", "mask")}
            rows["reward"] = torch.as_tensor(np.asarray(tr.rewards, np.float32)
                                             * self.opts.reward_scale)
            rows["terminal"] = torch.as_tensor(np.asarray(tr.terminated, bool))
            self._add(rows)

    def _add(self, rows: dict[str, torch.Tensor]) -> None:
        """Write ``N`` transitions at the FIFO position (allocating the buffer at first)."""
        cap = self.opts.buffer_size
        if not self.buffer:
            self.buffer = {k: torch.zeros((cap, *v.shape[1:]), dtype=v.dtype,
                                          device=self.device) for k, v in rows.items()}
        n = len(rows["reward"])
        idx = (self.pos + torch.arange(n)) % cap
        for k, v in rows.items():
            self.buffer[k][idx.to(self.device)] = v.to(self.device)
        self.pos = int((self.pos + n) % cap)
        self.size = min(self.size + n, cap)

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[DQNBatch, float]:
        idx = torch.randint(self.size, (batch_size,), generator=self.generator).to(self.device)
        return DQNBatch(**{k: v[idx] for k, v in self.buffer.items()}), 1.0

    def log_values(self) -> dict[str, float]:
        return {**super().log_values(), "epsilon": self.epsilon(),
                "buffer_size": float(self.size)}

    def state_dict(self) -> dict[str, Any]:
        return {**self.base_state(), "buffer": dict(self.buffer), "pos": self.pos,
                "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_base_state(state)
        self.buffer = {k: v.to(self.device) for k, v in state["buffer"].items()}
        self.pos, self.size = int(state["pos"]), int(state["size"])


#: The batch source of each online method.
SOURCES: dict[str, type[EnvSource]] = {"ppo": RolloutSource, "dqn": WindowReplaySource}
#: Each method's ``lr_decay`` under ``auto`` (CleanRL: PPO anneals, DQN does not).
LR_DECAY: dict[str, str] = {"ppo": "linear", "dqn": "none"}
#: Each method's options class and default ``grad_clip``.
OPTIONS: dict[str, tuple[type, float]] = {"ppo": (PPOOptions, 0.5), "dqn": (DQNOptions, 10.0)}


# ---------------------------------------------------------------------------------- entry point
def _env_action_space(env_id: str) -> gym.Space:
    try:
        env = gym.make(env_id)
    except Exception as e:  # gymnasium raises several types for unknown ids
        raise ValueError(f"OnlineConfig.env_id {env_id!r}: gym.make failed ({e})") from e
    space = env.action_space
    env.close()
    return space


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
    cap (``SOURCES[method].update_cap``), fp32, no warmup, the network shape (``init``'s or
    the resumed run's when there is one: :data:`SHAPE_FIELDS`), the learning-rate schedule
    (``lr_decay``; :data:`LR_DECAY` under ``auto``)."""
    options_cls, clip = OPTIONS[cfg.method]
    opts = parse_options(options_cls, cfg.method, cfg.method_options)
    batch = opts.batch_size if cfg.method == "ppo" else (cfg.batch_size or 128)
    if cfg.method == "ppo" and cfg.batch_size not in (None, batch):
        raise ValueError(f"OnlineConfig.batch_size: ppo's minibatch is n_envs * n_steps / "
                         f"minibatches = {batch}, found {cfg.batch_size}")
    shape = {k: getattr(cfg, k) for k in SHAPE_FIELDS}
    chosen = _shape_from(cfg)
    if chosen and chosen != shape:
        log.info("network shape from the checkpoint: %s", chosen)
    return TrainConfig(
        dataset="", env_id=cfg.env_id, method=cfg.method, method_options=cfg.method_options,
        seed=cfg.seed, device=cfg.device, steps=SOURCES[cfg.method].update_cap(cfg, opts),
        batch_size=batch, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        warmup_steps=0, grad_clip=cfg.grad_clip or clip, precision="fp32",
        lr_decay=LR_DECAY[cfg.method] if cfg.lr_decay == "auto" else cfg.lr_decay,
        context_length=cfg.context_length, dropout=cfg.dropout, **{**shape, **chosen},
        run_dir=cfg.resolved_run_dir(), checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every, eval_every=cfg.eval_every, eval_episodes=cfg.eval_episodes,
        resume=cfg.resume, overwrite=cfg.overwrite, progress=cfg.progress)


def train_online(cfg: OnlineConfig, eval_hook: EvalHook | None = None) -> TrainResult:
    """Train ``cfg.method`` online in ``cfg.env_id`` for ``cfg.env_steps`` env steps on the
    one training loop (module docstring); write ``online.json`` (the settings) beside the
    run's usual files. ``eval_hook`` draws the learning curve every ``cfg.eval_every``
    updates, as for ``train`` (``offline_dt.evaluation.evaluate.make_eval_hook()``).

    Raises:
        FileNotFoundError: ``init`` (or, with ``resume``, the run's checkpoint) missing.
        FileExistsError: ``run_dir`` holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        ValueError: bad arguments; dqn with a non-Discrete action space (names the env and
            the space); an ``init`` checkpoint whose trunk does not fit; a resume with
            different settings; a run under torchrun.
    """
    cfg.validate()
    if cfg.method == "dqn":
        WindowReplaySource.check_env(cfg.env_id, _env_action_space(cfg.env_id))
    train_cfg = online_train_config(cfg)

    def source(dataset: Any, normalizer: Normalizer, tcfg: TrainConfig,
               device: torch.device) -> EnvSource:
        return SOURCES[cfg.method](normalizer, tcfg, device, cfg)

    init = checkpoint_path(cfg.init) if cfg.init and not cfg.resume else None
    result = train(train_cfg, eval_hook, init=init, batch_source=source)
    save_json({"online_config": cfg, "train_config": train_cfg,
               "init_checkpoint": None if init is None else str(init)},
              result.run_dir / "online.json")
    return result
