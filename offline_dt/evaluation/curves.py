"""The training loop's learning curve: a periodic evaluation on validation episodes of its own.

:func:`make_eval_hook` rolls the trainer's own network out with the trainer's own normaliser
(nothing reloaded or refitted) on validation episodes from index
``offline_dt.evaluation.episodes.CURVE_EPISODE_OFFSET`` on, so a learning curve never meets a
test episode nor the validation episodes on which a checkpoint's target is chosen.
"""

from __future__ import annotations

from offline_dt.envs.make import registered_id
from offline_dt.envs.rollout import DEFAULT_MAX_ENVS
from offline_dt.evaluation.episodes import CURVE_EPISODE_OFFSET, evaluate_policy
from offline_dt.evaluation.results import EvalResult
from offline_dt.evaluation.selection import check_env_fits, opt_float, use_kv_cache
from offline_dt.training.loop import EvalHook, TrainingRun


def make_eval_hook(target_return: float | None = None, seed: int | None = None,
                   max_envs: int = DEFAULT_MAX_ENVS) -> EvalHook:
    """A periodic-evaluation hook for ``offline_dt.training.loop.train``: ``hook(run, step)``.

    Each call rolls the trainer's own network out with the trainer's own normaliser and
    dataset facts (``TrainingRun``; nothing is reloaded or refitted) on the same
    ``run.config.eval_episodes`` episodes: validation episodes ``CURVE_EPISODE_OFFSET + i`` of
    validation seed ``run.config.seed`` (or ``seed``), i.e. reset seeds
    ``2 * 10**12 + seed * 100000 + 50000 + i``. They are never test episodes (whatever the
    seeds) and never the validation episodes on which
    ``offline_dt.evaluation.evaluate.evaluate_checkpoint`` chooses a target (those are
    ``i < EvalConfig.validation_episodes <= 50000``), so a learning curve selects nothing on
    either. The env is the dataset's (``run.dataset_info["env_id"]``, which
    ``env_id`` overrides); a return-conditioned method acts toward ``target_return``, by
    default the dataset's ``ref_max_score`` (expert level), else its best episode return,
    with the method's default inference settings; a band-attention network acts from its
    (exact) key/value cache.

    Returns ``eval_return_mean``, ``eval_return_std`` (over episodes), ``eval_return_ci95``
    (episode-level 95% CI half-width), ``eval_normalized_score`` (NaN when unknown),
    ``eval_episodes``, ``eval_target_return`` and ``eval_seconds``. The network is returned
    to the train/eval mode it was in. Before the first rollout in an env, its spaces are
    checked against the run's (``offline_dt.evaluation.selection.check_env_fits``).
    """

    checked: set[tuple[str, str, str]] = set()

    def hook(run: TrainingRun, step: int) -> dict[str, float]:
        info = run.dataset_info
        env_id = run.config.env_id or registered_id(
            info.get("env_id"), run.config.dataset, "metadata/env_id")
        key = (env_id, str(info.get("observation_space")), str(info.get("action_space")))
        if key not in checked:  # before the first step in this env of a run with these spaces
            check_env_fits(env_id, info, f"the run in {run.config.run_dir}")
            checked.add(key)
        ref_min, ref_max = opt_float(info.get("ref_min_score")), opt_float(
            info.get("ref_max_score"))
        target = None
        if run.method.conditions_on_return:
            target = target_return if target_return is not None else (
                ref_max if ref_max is not None else float(info["best_return"]))
        was_training = run.net.training
        try:
            kw = {"kv_cache": True} if use_kv_cache(run.net) else {}
            policy = run.method.policy(run.net, run.normalizer, target, **kw)
            res = evaluate_policy(env_id, policy, run.config.eval_episodes,
                                  run.config.seed if seed is None else seed,
                                  split="validation", first=CURVE_EPISODE_OFFSET,
                                  max_envs=max_envs, ref_min_score=ref_min,
                                  ref_max_score=ref_max)
        finally:
            run.net.train(was_training)
        return curve_metrics(res, target)

    return hook


def curve_metrics(res: EvalResult, target: float | None) -> dict[str, float]:
    """The metrics columns of one learning-curve point (:func:`make_eval_hook`): ``res``'s
    statistics, NaN for an unknown normalized score or no ``target``."""
    norm = res.normalized_score
    return {
        "eval_return_mean": res.mean,
        "eval_return_std": res.std,
        "eval_return_ci95": res.ci95,
        "eval_normalized_score": float("nan") if norm is None else norm,
        "eval_episodes": float(res.episodes),
        "eval_target_return": float("nan") if target is None else target,
        "eval_seconds": res.wall_seconds,
    }
