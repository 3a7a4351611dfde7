"""Which behaviour policies make the levels, and whether the agent learned at all.

D4RL's reference scores (:func:`reference_scores`: the random agent and the expert), the
expert (:func:`select_expert`: the final agent unless it is clearly worse than its best
checkpoint), the medium checkpoint (:func:`select_medium_checkpoint`: the first to reach a
normalized score) and the sanity check recorded in every dataset (:func:`behaviour_check`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from datagen.agents import AgentArtifacts
from datagen.behaviour import load_behaviour_policy
from datagen.config import GenerateConfig
from datagen.rollout import policy_returns
from offline_dt.data.d4rl import normalized_score
from offline_dt.data.dataset import DatasetError

__all__ = ["EXPERT_MARGIN_FRACTION", "EXPERT_MARGIN_SE", "LEARNED_EFFECT_SIZE", "ExpertChoice",
           "behaviour_check", "reference_returns", "reference_scores", "select_expert",
           "select_medium_checkpoint"]

log = logging.getLogger(__name__)


def reference_returns(cfg: GenerateConfig, weights: Path | None) -> np.ndarray:
    """``(ref_episodes,) float64`` undiscounted returns of the random agent (``weights`` None)
    or the deterministic policy ``weights``, on a batched vector env (``policy_returns`` with
    evaluation seed ``seed + 20_000``: episode ``i`` resets with
    ``(seed + 20_000) * 100_000 + i``)."""
    seed = cfg.seed + 20_000
    pol = None
    if weights is not None:
        pol = load_behaviour_policy(weights, cfg.env_id, cfg.device, deterministic=True)
    return policy_returns(cfg.env_id, pol, cfg.ref_episodes, seed=seed, num_envs=cfg.num_envs)


def reference_scores(cfg: GenerateConfig, agent: AgentArtifacts,
                     expert: Path | None = None) -> tuple[float, float]:
    """D4RL reference returns (``ref_min_score``, ``ref_max_score``): the means of
    ``reference_returns`` of the random agent and of ``expert`` (default: the final agent)."""
    ref_min = reference_returns(cfg, None)
    ref_max = reference_returns(cfg, expert or agent.policy_path)
    return float(ref_min.mean()), float(ref_max.mean())


def _score_or_nan(ret: float, ref_min: float, ref_max: float) -> float:
    """D4RL normalized score (``offline_dt.data.d4rl.normalized_score``); NaN if undefined."""
    score = normalized_score(ret, ref_min, ref_max)
    return float("nan") if score is None else score


def select_medium_checkpoint(agent: AgentArtifacts, ref_min: float, ref_max: float,
                             target: float) -> dict[str, Any]:
    """The FIRST checkpoint whose eval return's normalized score reaches ``target``.

    When none does (too short a training run) the checkpoint with the highest score is used
    and a warning logged.

    Returns:
        {"step", "eval_return", "normalized", "path", "reached_target"}.
    """
    if not agent.checkpoints:
        raise DatasetError(f"agent {agent.dir} has no checkpoints")
    scores = [_score_or_nan(c.eval_return_mean, ref_min, ref_max) for c in agent.checkpoints]
    idx = next((i for i, s in enumerate(scores) if s >= target), None)
    reached = idx is not None
    if idx is None:
        idx = int(np.nanargmax(scores)) if not np.isnan(scores).all() else len(scores) - 1
        log.warning("no checkpoint reached normalized score %.1f; using step %d (score %.1f)",
                    target, agent.checkpoints[idx].step, scores[idx])
    c = agent.checkpoints[idx]
    log.info("medium checkpoint: step %d, eval return %.1f, normalized %.1f", c.step,
             c.eval_return_mean, scores[idx])
    return {"step": c.step, "eval_return": c.eval_return_mean, "normalized": scores[idx],
            "path": c.path, "reached_target": reached}


#: The final agent counts as clearly worse than its best checkpoint when the eval-return gap
#: exceeds this many standard errors of the difference ...
EXPERT_MARGIN_SE = 3.0
#: ... and this fraction of the best checkpoint's lead over the random agent.
EXPERT_MARGIN_FRACTION = 0.1
#: The agent learned when its expert beats the random agent by this many pooled standard
#: deviations of the episode returns (an effect size, Cohen's d).
LEARNED_EFFECT_SIZE = 1.0


@dataclass
class ExpertChoice:
    """The policy behind the ``expert`` level and ``ref_max_score``.

    Attributes:
        path: weights file (``policy.safetensors`` or a checkpoint).
        step: env steps of training behind it.
        name: the dataset's ``agent`` name (``sac``, or ``sac@step2000`` for a checkpoint).
        final: True for the fully trained agent, False for an earlier, better checkpoint.
        reason: why (logged and stored as ``expert_choice``).
        eval_return: its learning-curve mean deterministic eval return (NaN if unknown).
    """

    path: Path
    step: int
    name: str
    final: bool
    reason: str
    eval_return: float = float("nan")


def select_expert(agent: AgentArtifacts, ref_min: float, eval_episodes: int) -> ExpertChoice:
    """The fully trained agent, unless its learning curve shows it clearly worse than its best
    evaluated checkpoint: then that checkpoint (D4RL's expert is a well-trained policy; an
    agent that collapsed late, e.g. DQN on CartPole, is not).

    "Clearly worse": the best checkpoint's mean deterministic eval return beats the final
    checkpoint's by more than ``EXPERT_MARGIN_SE`` standard errors of the difference
    (``sqrt((sd_best^2 + sd_final^2) / eval_episodes)``) and by more than
    ``EXPERT_MARGIN_FRACTION`` of its own lead over the random agent (``ref_min``). A best
    checkpoint no better than random never replaces the final agent.
    """
    cps = agent.checkpoints
    final_path = agent.policy_path
    if not cps:
        return ExpertChoice(final_path, agent.total_steps, agent.name, True, "final agent")
    last = cps[-1]
    default = ExpertChoice(final_path, agent.total_steps, agent.name, True, "final agent",
                           last.eval_return_mean)
    best = max(cps, key=lambda c: c.eval_return_mean)
    gap = best.eval_return_mean - last.eval_return_mean
    se = float(np.sqrt((best.eval_return_std**2 + last.eval_return_std**2)
                       / max(int(eval_episodes), 1)))
    lead = best.eval_return_mean - ref_min
    if best is last or lead <= 0 or gap <= EXPERT_MARGIN_SE * se \
            or gap <= EXPERT_MARGIN_FRACTION * lead:
        return default
    reason = (f"final agent (eval return {last.eval_return_mean:.1f} ± "
              f"{last.eval_return_std:.1f}) clearly worse than the checkpoint at step "
              f"{best.step} ({best.eval_return_mean:.1f} ± {best.eval_return_std:.1f})")
    log.warning("expert: %s; using that checkpoint as the expert", reason)
    return ExpertChoice(best.path, best.step, f"{agent.name}@step{best.step}", False, reason,
                        best.eval_return_mean)


def behaviour_check(env_id: str, random_returns: np.ndarray, expert_returns: np.ndarray,
                    expert: ExpertChoice, medium: dict[str, Any]) -> dict[str, Any]:
    """Whether the behaviour agent learned, as dataset metadata; every problem is logged as a
    warning and listed in ``behaviour_warnings`` (a JSON list of strings).

    Keys: ``behaviour_learned`` (bool: the expert's mean return beats the random agent's by
    at least ``LEARNED_EFFECT_SIZE`` pooled standard deviations of the episode returns),
    ``behaviour_effect_size`` (that gap in standard deviations), ``expert_choice``,
    ``expert_step``, ``behaviour_warnings``; ``behaviour_reward_threshold`` when the env's
    spec has a ``reward_threshold`` (the expert must reach it to count as solving the task:
    MountainCarContinuous' "never moves" SAC beats random but scores 0, far below 90).
    """
    gap = float(expert_returns.mean() - random_returns.mean())
    spread = float(np.sqrt((random_returns.var() + expert_returns.var()) / 2))
    effect = gap / spread if spread > 0 else (np.inf if gap > 0 else -np.inf)
    warnings_: list[str] = []
    learned = bool(effect >= LEARNED_EFFECT_SIZE)
    if not learned:
        warnings_.append(
            f"behaviour agent did not learn: expert return {expert_returns.mean():.2f} is not "
            f"clearly above the random agent's {random_returns.mean():.2f} (gap {effect:.2f} "
            f"pooled standard deviations, need {LEARNED_EFFECT_SIZE}); normalized scores and "
            "the expert/medium levels are meaningless; train the agent longer (--agent-steps)")
    out: dict[str, Any] = {"behaviour_learned": learned,
                           "behaviour_effect_size": float(np.clip(effect, -1e9, 1e9)),
                           "expert_choice": expert.reason, "expert_step": int(expert.step)}
    threshold = gym.spec(env_id).reward_threshold
    if threshold is not None:
        out["behaviour_reward_threshold"] = float(threshold)
        if expert_returns.mean() < threshold:
            warnings_.append(
                f"expert return {expert_returns.mean():.2f} is below {env_id}'s "
                f"reward_threshold {threshold}: the behaviour agent does not solve the task")
    if learned and medium["eval_return"] > expert.eval_return:
        # select_expert keeps this within evaluation noise; say so when it happens.
        out["expert_choice"] += (f"; the medium checkpoint evaluated {medium['eval_return']:.1f}"
                                 f", within noise of the expert's {expert.eval_return:.1f}")
    for w in warnings_:
        log.warning("generate %s: %s", env_id, w)
    out["behaviour_warnings"] = json.dumps(warnings_)
    return out

