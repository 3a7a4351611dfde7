"""How ODT's fine-tuning batches are made (``offline_dt.methods.odt`` owns this file): the
trajectory replay buffer, hindsight relabelling and the collect step of the Online Decision
Transformer (Zheng, Zhang & Grover 2022, "Online Decision Transformer", Algorithm 1), as the
batch source :class:`ReplaySource` of the one training loop (``offline-dt finetune``).

Algorithm 1, as run here:

1. A trajectory replay buffer is seeded with the offline dataset's ``buffer_size``
   trajectories of highest return (ODT: 1000 for D4RL's 1000-step episodes; here 100 by
   default, so that on our small Pendulum budgets the online episodes replace the offline ones
   within a run, as ODT's 1500 online rounds replace its 1000).
2. Each round collects ``episodes_per_round`` episodes with the *stochastic* policy
   (``Method.policy(..., sample=True)``) conditioned on the exploration target ``g_online``
   (:func:`default_online_target`), through the one rollout engine
   (``offline_dt.envs.make.make_vec_env`` and ``step_policy``). Hindsight return relabelling:
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

The buffer (arrays, as tensors), the collect RNG and the counters are the checkpoint's
``source``; ``metrics.csv`` gains ``env_steps``, ``online_episodes``, ``collect_return_mean``
and ``buffer_episodes``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.windows import Batch, WindowSampler, returns_to_go
from offline_dt.envs.make import make_vec_env
from offline_dt.envs.policies import Policy
from offline_dt.envs.rollout import step_policy
from offline_dt.envs.seeds import SEED_RANGE, episode_seed
from offline_dt.methods.base import BatchSource, Run, SourceSpec

#: Collected episode ``i`` of a fine-tune with seed ``s`` resets its env with
#: ``COLLECT_SEED_BASE + s * 100000 + i``: a block of its own, apart from datagen's (below
#: ``10**12``), the test episodes' (``[10**12, 2 * 10**12)``) and validation's
#: (``[2 * 10**12, 3 * 10**12)``), see ``offline_dt.envs.seeds``.
COLLECT_SEED_BASE = 3 * SEED_RANGE


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
class ReplaySource(BatchSource):
    """ODT's batch source for a fine-tune: a FIFO trajectory buffer, the collect step and
    their state (module docstring).

    Args:
        spec: the run's facts: ``dataset`` (its best ``rounds.buffer_size`` episodes seed the
            buffer), ``normalizer`` (the pretrained checkpoint's; the buffer is normalised
            with it), ``config`` (``context_length``, ``max_timestep``, ``seed``), ``device``,
            ``env_id`` (to collect in), ``env_steps`` (the budget), ``rounds`` (the schedule
            and ``g_online``), ``settings``.

    Raises:
        ValueError: ``spec`` has no dataset or no rounds.
    """

    collects: ClassVar[bool] = True

    def __init__(self, spec: SourceSpec) -> None:
        if spec.dataset is None or spec.rounds is None:
            raise ValueError("ReplaySource: a fine-tune needs the offline dataset and its "
                             "rounds (offline-dt finetune builds them)")
        self.spec, self.rounds = spec, spec.rounds
        self.env_id, self.target_return = spec.env_id, float(spec.rounds.target_return)
        self.normalizer, self.device = spec.normalizer, spec.device
        self.k, self.max_timestep = spec.config.context_length, spec.config.max_timestep
        self.generator = torch.Generator().manual_seed(spec.config.seed)  # window draws
        self.collect_rng = torch.Generator().manual_seed(COLLECT_SEED_BASE + spec.config.seed)
        self.env_steps = self.episodes = self.rounds_done = 0
        self.return_mean = math.nan
        self._set_buffer(top_trajectories(spec.dataset, self.rounds.buffer_size))

    def _set_buffer(self, buffer: OfflineDataset) -> None:
        """Hold ``buffer`` and sample from it with the source's own generator."""
        self.buffer = buffer
        self.sampler = WindowSampler(buffer, self.normalizer, self.k, self.max_timestep,
                                     device=self.device)
        self.sampler.generator = self.generator

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[Batch, float]:
        return self.sampler.sample_shard(batch_size, rank, world_size)

    def collect(self, run: Run, step: int) -> None:
        """At the start of every round (``step`` a multiple of ``updates_per_round``) while
        fewer than ``env_steps`` env steps are collected: play ``episodes_per_round``
        episodes with the sampled policy toward ``g_online`` and add them to the buffer."""
        if step % self.rounds.updates_per_round or self.env_steps >= self.spec.env_steps:
            return
        policy = run.method.policy(run.net, run.normalizer, self.target_return, sample=True,
                                   generator=self.collect_rng)
        seeds = [COLLECT_SEED_BASE + episode_seed(run.config.seed, self.episodes + j)
                 for j in range(self.rounds.episodes_per_round)]
        new, lengths, returns = play_episodes(self.env_id, policy, seeds, self.max_timestep)
        self.env_steps += int(lengths.sum())
        self.episodes += len(new)
        self.rounds_done += 1
        self.return_mean = float(returns.mean())
        self._set_buffer(fifo_add(self.buffer, new, self.rounds.buffer_size))

    def finished(self, step: int) -> bool:
        """The budget is spent and the round's updates are done."""
        return (step % self.rounds.updates_per_round == 0
                and self.env_steps >= self.spec.env_steps)

    def log_values(self) -> dict[str, float]:
        return {"env_steps": float(self.env_steps), "online_episodes": float(self.episodes),
                "collect_return_mean": self.return_mean,
                "buffer_episodes": float(self.buffer.num_episodes)}

    def state_dict(self) -> dict[str, Any]:
        """The buffer's arrays as tensors, the collect RNG and the counters (the window
        generator is checkpointed with the loop's RNGs)."""
        names = ("observations", "actions", "rewards", "next_observations", "terminals",
                 "timeouts", "episode_starts")
        return {"settings": self.spec.settings.dumps(),
                "buffer": {k: torch.from_numpy(np.ascontiguousarray(getattr(self.buffer, k)))
                           for k in names},
                "collect_rng": self.collect_rng.get_state(), "env_steps": self.env_steps,
                "episodes": self.episodes, "rounds": self.rounds_done,
                "return_mean": self.return_mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state.

        Raises:
            ValueError: the checkpoint's fine-tune settings differ (names them).
        """
        self.spec.settings.check(state["settings"])
        arrays = {k: v.cpu().numpy() for k, v in state["buffer"].items()}
        self._set_buffer(OfflineDataset.from_flat(
            **arrays, observation_space=self.buffer.observation_space,
            action_space=self.buffer.action_space, metadata=self.buffer.metadata,
            source="replay buffer"))
        self.collect_rng.set_state(state["collect_rng"])
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
        self.rounds_done, self.return_mean = int(state["rounds"]), float(state["return_mean"])
