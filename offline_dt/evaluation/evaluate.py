"""Evaluation on the live env: a checkpoint's method, or a baseline, rolled out on fixed episodes.

Every row of the results table answers the same :class:`~offline_dt.envs.policies.Policy`
protocol and is rolled out by the one rollout engine (:mod:`offline_dt.envs.rollout`, through
:func:`~offline_dt.evaluation.episodes.evaluate_policy`), on the same episodes and seeds: a
trained checkpoint acts through its method (``Method.policy``: for ``dt`` a Decision
Transformer conditioned on a target return, Chen et al. 2021 Algorithm 1; for ``bc`` the same
network fed zeros as returns-to-go), the random agent through ``RandomPolicy`` and the
behaviour agent through ``CallablePolicy`` (built by ``offline_dt.study.behaviour``; this layer
never imports datagen).

Nothing is chosen on test episodes. :func:`evaluate_checkpoint` chooses a checkpoint's target
return and inference settings on validation episodes (``2 * 10**12 + s * 100_000 + i``,
``offline_dt.envs.seeds.validation_seed``; a range that never meets the test one,
:mod:`offline_dt.evaluation.selection`) and rolls only the chosen candidate out on the test
episodes (``10**12 + s * 100_000 + i``). :func:`write_baseline_eval` scores a policy that has
nothing to choose. The training loop's learning curve is
:func:`offline_dt.evaluation.curves.make_eval_hook`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_dt.data.atomic import check_writable, is_json_file
from offline_dt.envs.make import registered_id
from offline_dt.envs.policies import Policy
from offline_dt.envs.rollout import DEFAULT_MAX_ENVS
from offline_dt.evaluation.episodes import CURVE_EPISODE_OFFSET, evaluate_policy
from offline_dt.evaluation.results import EvalResult, build_eval_payload
from offline_dt.evaluation.selection import (
    check_env_fits,
    checkpoint_candidates,
    choose_candidate,
    selection_record,
    use_kv_cache,
)
from offline_dt.training.configs import save_json, to_jsonable

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Evaluate a trained checkpoint (``offline-dt evaluate``).

    The candidates are the target returns (for a method that conditions on one; else no
    target) crossed with the method's inference settings (``Method.inference_candidates``).
    With more than one, each is rolled out on ``validation_episodes`` validation episodes
    (reset seeds ``2 * 10**12 + seed * 100000 + i``, never a test episode), the best mean
    return there is chosen, and only that candidate is rolled out on the ``episodes`` test
    episodes (``10**12 + seed * 100000 + i``): the headline of ``eval.json`` is that test
    evaluation alone, so no choice is ever made on the episodes that score it.
    """

    checkpoint: Path | None = field(default=None, metadata={
        "help": "checkpoint file or run directory (required)"})
    env_id: str | None = field(default=None, metadata={
        "help": "Gymnasium env id; unset: the checkpoint dataset's env (a multi-task "
                "checkpoint: one env of its suite, which picks its adapter and normaliser)"})
    target_returns: list[float] | None = field(default=None, metadata={
        "help": "returns to condition on, env reward units; unset: the dataset's best "
                "episode return and its expert reference score ref_max_score"})
    episodes: int = field(default=200, metadata={
        "help": "test episodes of the chosen candidate (the reported numbers)"})
    validation_episodes: int = field(default=50, metadata={
        "help": "validation episodes per candidate (target return x inference setting) to "
                f"choose the one tested; at most {CURVE_EPISODE_OFFSET}; unused with a single "
                "candidate"})
    seed: int = field(default=0, metadata={
        "help": "evaluation seed in [0, 10**7); test episode i resets with 10**12 + seed * "
                "100000 + i (a range no generated dataset was collected from), validation "
                "episode i with 2 * 10**12 + seed * 100000 + i"})
    device: str = field(default="auto", metadata={
        "help": "torch device", "choices": ["auto", "cpu", "cuda"]})
    max_envs: int = field(default=DEFAULT_MAX_ENVS, metadata={
        "help": "most envs stepped at once (more episodes run in waves)"})
    kv_cache: bool = field(default=False, metadata={
        "help": "act from a key/value cache also for a classic (attention window) checkpoint: "
                "faster, exact for the first K steps of an episode, approximate after (see "
                "DTPolicy); a band-attention checkpoint acts from its cache anyway (exact)"})
    full_recompute: bool = field(default=False, metadata={
        "help": "band-attention checkpoint: recompute the whole episode's banded forward at "
                "every step instead of acting from the key/value cache (the same actions, "
                "slower; a check of the cache)"})
    out: str | Path | None = field(default=None, metadata={
        "help": "output JSON file (not a directory); unset: <run dir>/eval.json"})
    candidate_checkpoints: list[Path] = field(default_factory=list, metadata={
        "help": "more checkpoints (files or run directories) of the same dataset, e.g. the "
                "method trained with other hyperparameters: their candidates compete with "
                "the checkpoint's on the validation episodes, and eval.json records which "
                "checkpoint was chosen"})

    def __post_init__(self) -> None:
        if not 1 <= self.validation_episodes <= CURVE_EPISODE_OFFSET:
            raise ValueError(f"EvalConfig.validation_episodes must be in [1, "
                             f"{CURVE_EPISODE_OFFSET}], found {self.validation_episodes}")
        if self.episodes < 1:
            raise ValueError(f"EvalConfig.episodes must be >= 1, found {self.episodes}")
        if self.kv_cache and self.full_recompute:
            raise ValueError("EvalConfig.kv_cache and full_recompute contradict each other; "
                             "set at most one")


def evaluate_checkpoint(cfg: EvalConfig) -> dict[str, Any]:
    """Choose a checkpoint's target return and inference settings on validation episodes,
    roll the chosen one out on the test episodes and write ``eval.json`` atomically.

    Candidates (``offline_dt.evaluation.selection.checkpoint_candidates``): for a
    return-conditioned method (``dt``) the targets (``cfg.target_returns``, default the
    dataset's best episode return and ``ref_max_score``), else none (``target_return`` null),
    crossed with ``Method.inference_candidates``, for the checkpoint and each of
    ``cfg.candidate_checkpoints`` (then each candidate names its ``checkpoint``). Before
    anything is stepped, the env (``cfg.env_id``, default the dataset's) is checked against
    the spaces every checkpoint was trained with (``check_env_fits``). With more than one
    candidate, ``choose_candidate`` picks the best mean return on ``cfg.validation_episodes``
    validation episodes; then only that one is evaluated on the ``cfg.episodes`` test
    episodes. The candidate's checkpoint builds its policy
    (``Method.policy(net, normalizer, target, kv_cache=..., **settings)``), acting from the
    key/value cache where it is exact (band-attention checkpoints, unless
    ``cfg.full_recompute``) or where ``cfg.kv_cache`` asks for it (``use_kv_cache``).
    ``eval.json``'s contents: :func:`_checkpoint_payload`.

    Returns:
        The dict written to ``cfg.out`` (default ``<run dir>/eval.json`` of ``cfg.checkpoint``).

    Raises:
        ValueError: no checkpoint given; no target return given or known for a
            return-conditioned method; a candidate checkpoint of another env, dataset or
            method; ``offline_dt.envs.spaces.SpaceMismatchError``: the env's observation or
            action space does not fit a checkpoint's.
        FileExistsError: the output path is a directory or a file that is not JSON (checked
            before any rollout; nothing is replaced).
        offline_dt.envs.make.EnvDependencyError: the env needs a package not installed.
    """
    if cfg.checkpoint is None:
        raise ValueError("EvalConfig.checkpoint is required (checkpoint file or run directory)")
    checkpoint = Path(cfg.checkpoint)
    if isinstance(cfg.out, str) and cfg.out.endswith(("/", os.sep)):
        raise ValueError(f"--out {cfg.out}: names a directory (it ends in a slash); give the "
                         f"JSON file to write, e.g. --out {cfg.out}eval.json")
    out = Path(cfg.out) if cfg.out is not None else _run_dir(checkpoint) / "eval.json"
    check_writable(out, True, "JSON file", ours=is_json_file)  # refused before any rollout
    candidates, loaded, facts = checkpoint_candidates(
        checkpoint, cfg.candidate_checkpoints, cfg.device, cfg.target_returns, cfg.env_id)
    env_id = _checked_env_id(cfg.env_id, checkpoint, loaded, facts)

    def make_policy(cand: dict[str, Any]) -> Policy:
        ckpt = loaded[cand.get("checkpoint", str(checkpoint))]
        kv_cache = use_kv_cache(ckpt.model, cfg.kv_cache, cfg.full_recompute)
        return ckpt.method.policy(ckpt.model, ckpt.normalizer, cand["target_return"],
                                  kv_cache=kv_cache, **cand["settings"])

    chosen, validation = choose_candidate(
        env_id, candidates, make_policy, episodes=cfg.validation_episodes, seed=cfg.seed,
        max_envs=cfg.max_envs, refs=facts)
    cand = candidates[chosen]
    res = evaluate_policy(env_id, make_policy(cand), cfg.episodes, cfg.seed,
                          max_envs=cfg.max_envs, ref_min_score=facts["ref_min_score"],
                          ref_max_score=facts["ref_max_score"])
    payload = _checkpoint_payload(cfg, env_id, candidates, chosen, validation, loaded, facts,
                                  res)
    save_json(payload, out)
    return payload


def _checked_env_id(env_id: str | None, checkpoint: Path, loaded: dict[str, Any],
                    facts: dict[str, Any]) -> str:
    """The env to evaluate on: ``env_id`` (the user's explicit choice) or the dataset's (which
    must be registered), checked to fit every loaded checkpoint's spaces before anything is
    stepped (``check_env_fits``)."""
    if not env_id:
        env_id = registered_id(facts["env_id"], str(checkpoint), "dataset_info/env_id")
    for path, ckpt in loaded.items():
        check_env_fits(env_id, ckpt.dataset_info, f"checkpoint {path}")
    return env_id


def _checkpoint_payload(cfg: EvalConfig, env_id: str, candidates: list[dict[str, Any]],
                        chosen: int, validation: list[dict[str, Any]], loaded: dict[str, Any],
                        facts: dict[str, Any], res: EvalResult) -> dict[str, Any]:
    """:func:`evaluate_checkpoint`'s ``eval.json`` (logged): the headline (top-level
    ``mean_return``, ``std_return``, ``ci95``, ``normalized_score``, ``headline_target``,
    ``headline_settings``, and ``checkpoint`` and ``step`` of the chosen checkpoint) is the
    chosen candidate's test evaluation ``res``, ``targets`` holds that one evaluation with
    per-episode returns, ``selection`` every candidate's validation results and the rule
    (``selection_record``), ``headline_rule`` says how the headline was chosen."""
    cand = candidates[chosen]
    source = cand.get("checkpoint", str(cfg.checkpoint))
    ckpt = loaded[source]
    log.info("%s %s target %s settings %s: test mean %.2f, episode-level 95%% CI ± %.2f "
             "(%d episodes, %.1fs)", source, facts["method"], cand["target_return"],
             cand["settings"], res.mean, res.ci95, res.episodes, res.wall_seconds)
    why = ("one target return, no inference settings to choose"
           if ckpt.method.conditions_on_return
           else f"{facts['method']} ignores target returns and has no inference settings to "
                "choose")
    selection = selection_record(candidates, chosen, validation, cfg.validation_episodes, why)
    return build_eval_payload(
        method=facts["method"], env_id=env_id,
        results=[{**to_jsonable(cand), **res.to_dict()}],
        headline_rule=f"test episodes of the chosen candidate only; chosen by "
                      f"{selection['rule']}",
        extra={"checkpoint": source, "step": getattr(ckpt, "step", None),
               "dataset": facts["dataset"], "config": to_jsonable(cfg),
               "headline_settings": to_jsonable(cand["settings"]), "selection": selection,
               "kv_cache": use_kv_cache(ckpt.model, cfg.kv_cache, cfg.full_recompute)},
    )


def _run_dir(checkpoint: Path) -> Path:
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


def write_baseline_eval(
    out: str | os.PathLike,
    method: str,
    env_id: str,
    policy: Policy,
    episodes: int = 200,
    seed: int = 0,
    *,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    max_envs: int = DEFAULT_MAX_ENVS,
    headline_rule: str = "single evaluation",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a policy that has nothing to choose (``random``, ``behaviour``, the reference
    rows of ``offline_dt.study.reference``) on the test episodes of evaluation seed ``seed`` and
    write its ``eval.json`` atomically (:func:`build_eval_payload`, ``target_return`` null)."""
    res = evaluate_policy(env_id, policy, episodes, seed, max_envs=max_envs,
                          ref_min_score=ref_min_score, ref_max_score=ref_max_score)
    payload = build_eval_payload(method, env_id, [{"target_return": None, **res.to_dict()}],
                                 headline_rule=headline_rule, extra=extra)
    save_json(payload, out)
    return payload


def validation_score(checkpoint: str | Path, episodes: int, seed: int, device: str = "auto",
                     env_id: str | None = None, max_envs: int = DEFAULT_MAX_ENVS
                     ) -> tuple[float, dict[str, Any]]:
    """The best mean return over a checkpoint's candidates (its default targets crossed with
    its inference settings, :func:`checkpoint_candidates`) on ``episodes`` validation episodes
    of evaluation seed ``seed``, and that candidate: what a hyperparameter search maximises.
    Every rollout is on validation episodes (``split="validation"``); there is no argument
    that could make it a test episode, so a search can never select on what the tables
    report.

    The env is ``env_id`` or the dataset's, checked against the checkpoint's spaces first.

    Raises:
        ValueError: ``episodes < 1``; what ``checkpoint_candidates`` raises;
            ``offline_dt.envs.spaces.SpaceMismatchError``: the env does not fit.
    """
    if episodes < 1:
        raise ValueError(f"validation_score: episodes must be >= 1, found {episodes}")
    candidates, loaded, facts = checkpoint_candidates(Path(checkpoint), [], device, None, env_id)
    ckpt = loaded[str(Path(checkpoint))]
    env_id = _checked_env_id(env_id, Path(checkpoint), loaded, facts)
    best: tuple[float, dict[str, Any]] | None = None
    for cand in candidates:
        kv_cache = use_kv_cache(ckpt.model)
        policy = ckpt.method.policy(ckpt.model, ckpt.normalizer, cand["target_return"],
                                    kv_cache=kv_cache, **cand["settings"])
        res = evaluate_policy(env_id, policy, episodes, seed, split="validation",
                              max_envs=max_envs, ref_min_score=facts["ref_min_score"],
                              ref_max_score=facts["ref_max_score"])
        if best is None or res.mean > best[0]:
            best = (res.mean, {**to_jsonable(cand), **res.to_dict()})
    assert best is not None  # checkpoint_candidates gives at least one
    return best
