"""What an evaluation found: per-episode returns with their statistics (:class:`EvalResult`),
and the ``eval.json`` schema every row of the results table shares (:func:`build_eval_payload`,
what ``offline_dt.study.report`` reads)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from offline_dt.data.d4rl import normalized_score
from offline_dt.envs.seeds import SEED_RULES


def summarize_returns(returns: np.ndarray) -> dict[str, float]:
    """mean, std (population, ddof=0), min, max and the 95% CI half-width ``1.96 std / √n``."""
    r = np.asarray(returns, np.float64)
    if r.size == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "ci95": nan}
    std = float(r.std())
    return {"mean": float(r.mean()), "std": std, "min": float(r.min()),
            "max": float(r.max()), "ci95": 1.96 * std / math.sqrt(r.size)}


@dataclass
class EvalResult:
    """Per-episode returns and lengths of one evaluation, with summary statistics.

    ``std`` is the population standard deviation over episodes; ``ci95`` the half-width
    ``1.96 std / √n``; the normalized score uses the D4RL formula when both reference scores
    are known (None otherwise). ``split`` says which episodes these are: ``"test"`` (scoring)
    or ``"validation"`` (choosing a candidate; learning curves), see
    ``offline_dt.evaluation.episodes.SEED_FUNCTIONS``.
    """

    env_id: str
    seed: int
    returns: np.ndarray
    lengths: np.ndarray
    episode_seeds: list[int]
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    wall_seconds: float = 0.0
    split: str = "test"
    stats: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.returns = np.asarray(self.returns, np.float64)
        self.lengths = np.asarray(self.lengths, np.int64)
        self.stats = summarize_returns(self.returns)

    @property
    def episodes(self) -> int:
        return int(self.returns.size)

    @property
    def mean(self) -> float:
        return self.stats["mean"]

    @property
    def std(self) -> float:
        return self.stats["std"]

    @property
    def ci95(self) -> float:
        return self.stats["ci95"]

    @property
    def min(self) -> float:
        return self.stats["min"]

    @property
    def max(self) -> float:
        return self.stats["max"]

    @property
    def normalized_score(self) -> float | None:
        return normalized_score(self.mean, self.ref_min_score, self.ref_max_score)

    @property
    def normalized_ci95(self) -> float | None:
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        span = float(self.ref_max_score) - float(self.ref_min_score)
        return 100.0 * self.ci95 / abs(span) if span else None

    def to_dict(self, include_episodes: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "env_id": self.env_id,
            "seed": self.seed,
            "episodes": self.episodes,
            **self.stats,
            "normalized_score": self.normalized_score,
            "normalized_ci95": self.normalized_ci95,
            "ref_min_score": self.ref_min_score,
            "ref_max_score": self.ref_max_score,
            "mean_length": float(self.lengths.mean()) if self.lengths.size else float("nan"),
            "wall_seconds": self.wall_seconds,
            "split": self.split,
        }
        if include_episodes:
            d["returns"] = self.returns.tolist()
            d["lengths"] = self.lengths.tolist()
            d["episode_seeds"] = list(self.episode_seeds)
        return d



def build_eval_payload(
    method: str,
    env_id: str,
    results: list[dict[str, Any]],
    headline: int = 0,
    headline_rule: str = "single evaluation",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``eval.json`` schema shared by checkpoints, baselines and reference rows (what
    ``report`` reads).

    ``results`` are :meth:`EvalResult.to_dict` outputs of test episodes, each with a
    ``target_return`` key; ``results[headline]`` is the headline. ``episode_seeds`` is the
    test episodes' reset-seed rule; ``headline_rule`` says how the headline was chosen.
    """
    h = results[headline]
    return {
        "method": method,
        "env_id": env_id,
        "episodes": h["episodes"],
        "seed": h["seed"],
        "episode_seeds": SEED_RULES["test"],
        "mean_return": h["mean"],
        "std_return": h["std"],
        "ci95": h["ci95"],
        "ci95_is": "episode-level 95% CI half-width of mean_return, 1.96 std / sqrt(episodes) "
                   "(evaluation noise of this one run; intervals over training runs are the "
                   "report's run_ci95_*)",
        "min_return": h["min"],
        "max_return": h["max"],
        "normalized_score": h["normalized_score"],
        "ref_min_score": h["ref_min_score"],
        "ref_max_score": h["ref_max_score"],
        "headline_target": h.get("target_return"),
        "headline_index": headline,
        "headline_rule": headline_rule,
        "targets": results,
        **(extra or {}),
    }
