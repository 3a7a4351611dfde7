"""The batch source of an online method that collects in a live env (``ppo``'s rollouts,
``dqn``'s replay buffer): what they share.

:class:`EnvSource` holds an ``offline_dt.envs.stream.EpisodeStream`` (a vector env stepped
on across collects, every episode reset with its own seed) driven by the method's collect
policy (an ``offline_dt.methods.history.HistoryPolicy``, made at the first collect, when the
trainer's network is known), the env-step budget (``finished``), the episode statistics it
logs (``env_steps``, ``episodes``, ``episode_return_mean``: the mean return of the episodes
that ended in the last collect), the collect RNG and their checkpointed state. The env stream
is restored by replaying every sub-env's actions from its episode's reset seed, so a resumed
run equals an uninterrupted one (for envs deterministic given the seed).

Collect episode ``k`` of a run with seed ``s`` resets with ``ONLINE_SEED_BASE + s * 100000 +
k``: a block of its own (``[4 * 10**12, 5 * 10**12)`` for ``k`` below ``10**12``), apart
from the test and validation episodes of ``offline_dt.envs.seeds`` and the datasets'.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from offline_dt.data.windows import Batch
from offline_dt.envs.rollout import Transition
from offline_dt.envs.seeds import SEED_RANGE, SEED_STRIDE
from offline_dt.envs.stream import EpisodeStream
from offline_dt.methods.base import BatchSource, Run, SourceSpec
from offline_dt.methods.history import HistoryPolicy

#: Collect episode ``k`` of seed ``s`` resets with ``ONLINE_SEED_BASE + s * SEED_STRIDE + k``.
ONLINE_SEED_BASE = 4 * SEED_RANGE
#: The :class:`Batch` fields of a window.
WINDOW_FIELDS = ("returns_to_go", "observations", "actions", "timesteps", "mask")


class EnvSource(BatchSource):
    """What the online sources share (module docstring).

    Args:
        spec: the run's facts (``config.seed``, ``normalizer``, ``device``, ``env_id``,
            ``env_steps`` the budget, ``settings``).
        n_envs: envs stepped at once.
    """

    collects: ClassVar[bool] = True

    def __init__(self, spec: SourceSpec, n_envs: int) -> None:
        self.spec, self.normalizer, self.device = spec, spec.normalizer, spec.device
        self.n_envs, self.budget = n_envs, spec.env_steps
        self.seed = spec.config.seed
        self.generator = torch.Generator().manual_seed(self.seed)  # minibatch draws
        self.collect_rng = torch.Generator().manual_seed(ONLINE_SEED_BASE + self.seed)
        self.stream: EpisodeStream | None = None
        self.policy: HistoryPolicy | None = None
        self.pending: dict[str, Any] | None = None
        self.env_steps = self.episodes = 0
        self.return_mean = math.nan

    def reset_seed(self, k: int) -> int:
        return ONLINE_SEED_BASE + self.seed * SEED_STRIDE + int(k)

    @abc.abstractmethod
    def make_policy(self, run: Run) -> HistoryPolicy:
        """The collect policy acting with ``run.net`` (noise from ``self.collect_rng``)."""

    def ensure_stream(self, run: Run) -> None:
        """At the first collect: the stream and the policy, started afresh or restored."""
        if self.stream is not None:
            return
        self.stream = EpisodeStream(self.spec.env_id, self.n_envs, self.reset_seed)
        self.policy = self.make_policy(run)
        if self.pending is None:
            self.stream.start(self.policy)
            return
        self.stream.load_state_dict(self.pending["stream"])
        self.policy.reset(self.n_envs)
        self.policy.load_state_dict(self.pending["policy"])
        self.pending = None

    def play(self, run: Run, steps: int) -> Iterator[Transition]:
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
        return self.env_steps >= self.budget

    def log_values(self) -> dict[str, float]:
        return {"env_steps": float(self.env_steps), "episodes": float(self.episodes),
                "episode_return_mean": self.return_mean}

    def base_state(self) -> dict[str, Any]:
        """The shared state: settings, stream, policy windows, collect RNG, counters."""
        stream = self.stream.state_dict() if self.stream is not None else self.pending["stream"]
        policy = self.policy.state_dict() if self.policy is not None else self.pending["policy"]
        return {"settings": self.spec.settings.dumps(), "stream": stream,
                "policy": policy, "collect_rng": self.collect_rng.get_state(),
                "env_steps": self.env_steps, "episodes": self.episodes,
                "return_mean": self.return_mean}

    def load_base_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`base_state` (the env stream at the next collect).

        Raises:
            ValueError: the checkpoint's settings differ (names them).
        """
        self.spec.settings.check(state["settings"])
        self.pending = {"stream": state["stream"], "policy": state["policy"]}
        self.collect_rng.set_state(state["collect_rng"])
        self.env_steps, self.episodes = int(state["env_steps"]), int(state["episodes"])
        self.return_mean = float(state["return_mean"])


def stack_windows(windows: list[Batch]) -> dict[str, torch.Tensor]:
    """``T`` windows of ``N`` envs → the :class:`Batch` fields as ``(T * N, K, ...)``."""
    return {n: torch.stack([getattr(w, n) for w in windows]).flatten(0, 1)
            for n in WINDOW_FIELDS}
