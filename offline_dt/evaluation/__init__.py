"""The evaluation layer: checkpoints acting on the live env, targets and settings chosen on
validation episodes, scored on test episodes.

:mod:`~offline_dt.evaluation.evaluate` (``EvalConfig``, ``evaluate_checkpoint``,
``write_baseline_eval``), :mod:`~offline_dt.evaluation.selection` (candidates and how one is
chosen; whether the env fits a checkpoint), :mod:`~offline_dt.evaluation.episodes` (policies
on numbered test or validation episodes), :mod:`~offline_dt.evaluation.results` (statistics and
the ``eval.json`` schema), :mod:`~offline_dt.evaluation.curves` (the training loop's learning
curve hook).
"""

from __future__ import annotations

from offline_dt.evaluation.curves import make_eval_hook
from offline_dt.evaluation.episodes import (
    CURVE_EPISODE_OFFSET,
    episode_seeds,
    evaluate_policy,
    evaluate_sequential,
)
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint, write_baseline_eval
from offline_dt.evaluation.results import EvalResult, build_eval_payload, summarize_returns
from offline_dt.evaluation.selection import check_env_fits, default_target_returns, use_kv_cache

__all__ = [
    "CURVE_EPISODE_OFFSET",
    "EvalConfig",
    "EvalResult",
    "build_eval_payload",
    "check_env_fits",
    "default_target_returns",
    "episode_seeds",
    "evaluate_checkpoint",
    "evaluate_policy",
    "evaluate_sequential",
    "make_eval_hook",
    "summarize_returns",
    "use_kv_cache",
    "write_baseline_eval",
]
