"""Evaluation on the live env: a checkpoint's method, or a baseline, rolled out on fixed episodes.

Every row of the results table answers the same :class:`~offline_dt.envs.rollout.Policy` protocol
and is rolled out by the one rollout engine (:mod:`offline_dt.envs.rollout`), on the same episodes
and seeds: a trained checkpoint acts through its method (``Method.policy``: for ``dt`` a
Decision Transformer conditioned on a target return, Chen et al. 2021 Algorithm 1; for ``bc``
the same network fed zeros as returns-to-go), the random agent through ``RandomPolicy`` and
the behaviour agent through ``CallablePolicy`` (built by ``offline_dt.study.pipeline``; this module
never imports datagen).

:func:`evaluate_policy` steps all episodes at once through a Gymnasium vector env (one batched
policy call per env step); :func:`evaluate_sequential` is the one-episode-at-a-time reference
loop of the original implementation (one model call per step per episode), kept for tests and
the speed benchmark. Both seed test episode ``i`` of an evaluation with seed ``s`` as
``10**12 + s * 100_000 + i`` (``offline_dt.envs.rollout.evaluation_seed``), so the same
``(seed, i)`` is the same episode for every policy and both loops, and never the start of an
episode of a dataset that datagen generated.

Nothing is chosen on test episodes. :func:`evaluate_checkpoint` chooses a checkpoint's target
return and inference settings on validation episodes (``2 * 10**12 + s * 100_000 + i``,
``offline_dt.envs.rollout.validation_seed``; a range that never meets the test one) and rolls only
the chosen candidate out on the test episodes. :func:`make_eval_hook` is the training loop's
periodic evaluation, on the trainer's own network and normaliser, on validation episodes of
its own (indices from :data:`CURVE_EPISODE_OFFSET`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from offline_dt.data.atomic import check_writable, is_json_file
from offline_dt.data.d4rl import normalized_score
from offline_dt.data.dataset import registered_env_id
from offline_dt.envs.rollout import (
    DEFAULT_MAX_ENVS,
    SEED_RULES,
    SEED_STRIDE,
    Policy,
    evaluation_seed,
    run_episodes,
    validation_seed,
)
from offline_dt.nn.transformer import cache_is_exact
from offline_dt.training.configs import save_json, to_jsonable
from offline_dt.training.device import resolve_device
from offline_dt.training.loop import EvalHook, TrainingRun, load_checkpoint

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------- results
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
    or ``"validation"`` (choosing a candidate; learning curves), see :data:`SEED_FUNCTIONS`.
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


# ---------------------------------------------------------------------------------- loops
#: Reset seed of episode ``i`` of each kind of episode (``EvalResult.split``): test episodes
#: score a policy, validation episodes choose among a method's candidates (and draw learning
#: curves); the two ranges never meet (``offline_dt.envs.rollout``).
SEED_FUNCTIONS = {"test": evaluation_seed, "validation": validation_seed}
#: The learning-curve hook's episodes are validation episodes from this index on: never a test
#: episode, and never one of the first ``CURVE_EPISODE_OFFSET`` validation episodes, where
#: :func:`evaluate_checkpoint` chooses targets (``EvalConfig.validation_episodes`` is capped
#: there).
CURVE_EPISODE_OFFSET = SEED_STRIDE // 2


def episode_seeds(split: str, seed: int, episodes: int, first: int = 0) -> list[int]:
    """Reset seeds of episodes ``first .. first + episodes - 1`` of kind ``split``
    (``"test"`` or ``"validation"``, see :data:`SEED_FUNCTIONS`) for evaluation seed ``seed``.

    Raises:
        ValueError: unknown ``split``, ``episodes < 1``, or indices/seed outside the rule's
            range (``offline_dt.envs.rollout.episode_seed``).
    """
    if split not in SEED_FUNCTIONS:
        raise ValueError(f"split must be one of {sorted(SEED_FUNCTIONS)}, found {split!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, found {episodes}")
    return [SEED_FUNCTIONS[split](seed, first + i) for i in range(episodes)]


def evaluate_policy(
    env_id: str,
    policy: Policy,
    episodes: int = 200,
    seed: int = 0,
    *,
    split: str = "test",
    max_envs: int = DEFAULT_MAX_ENVS,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    env_kwargs: dict[str, Any] | None = None,
    first: int = 0,
) -> EvalResult:
    """Roll ``policy`` out for ``episodes`` episodes, all at once, through a vector env.

    A thin wrapper over :func:`offline_dt.envs.rollout.run_episodes`: episodes run in waves of at
    most ``max_envs`` envs in one ``SyncVectorEnv`` (same-step autoreset). Test episode ``i``
    (``split="test"``) is reset with ``offline_dt.envs.rollout.evaluation_seed(seed, i)``
    (``10**12 + seed * 100_000 + i``: never a seed a generated dataset was collected from);
    validation episode ``i`` with ``validation_seed(seed, i)`` (``2 * 10**12 + ...``: never a
    test episode). Every wave calls
    ``policy.act`` once per env step for all its envs and runs until every env has terminated
    or been truncated; an env that has finished keeps being stepped (its autoreset episode is
    ignored: its rewards are neither counted nor passed to ``policy.observe``), so each
    episode is counted exactly once.

    Args:
        env_id: Gymnasium id.
        policy: a :class:`Policy`.
        episodes: number of episodes.
        seed: evaluation seed, in ``[0, 10**7)``.
        split: ``"test"`` or ``"validation"`` episodes.
        max_envs: most envs stepped at once.
        ref_min_score, ref_max_score: D4RL reference scores for the normalized score.
        env_kwargs: extra ``gym.make`` keyword arguments (e.g. ``max_episode_steps``).
        first: index of the first episode (the learning-curve hook's start past the
            validation episodes that choose targets).

    Raises:
        ValueError: ``episodes < 1``, unknown ``split``, seed or episode index out of range.
    """
    seeds = episode_seeds(split, seed, episodes, first)
    start = time.perf_counter()
    returns, lengths = run_episodes(env_id, policy, seeds, max_envs=max_envs,
                                    env_kwargs=env_kwargs)
    return EvalResult(env_id=env_id, seed=seed, returns=returns, lengths=lengths,
                      episode_seeds=seeds, ref_min_score=ref_min_score,
                      ref_max_score=ref_max_score, wall_seconds=time.perf_counter() - start,
                      split=split)


def evaluate_sequential(
    env_id: str,
    policy: Policy,
    episodes: int = 200,
    seed: int = 0,
    *,
    split: str = "test",
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> EvalResult:
    """The reference loop: one ``gym.make`` env, one episode at a time, one policy call (batch
    of 1) per step. Same episode seeds as :func:`evaluate_policy`, so the returns agree up to
    floating-point differences between batch sizes."""
    seeds = episode_seeds(split, seed, episodes)
    start = time.perf_counter()
    returns = np.zeros(episodes, np.float64)
    lengths = np.zeros(episodes, np.int64)
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        for i, s in enumerate(seeds):
            obs, _ = env.reset(seed=s)
            policy.reset(1, seeds=[s])
            done = False
            while not done:
                action = policy.act(np.asarray(obs, np.float32)[None])[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                returns[i] += float(reward)
                lengths[i] += 1
                policy.observe(np.array([reward], np.float64))
                done = bool(terminated or truncated)
    finally:
        env.close()
    return EvalResult(env_id=env_id, seed=seed, returns=returns, lengths=lengths,
                      episode_seeds=seeds, ref_min_score=ref_min_score,
                      ref_max_score=ref_max_score, wall_seconds=time.perf_counter() - start,
                      split=split)


# ---------------------------------------------------------------------------------- checkpoints
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
        "help": "Gymnasium env id; unset: the checkpoint dataset's env"})
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
    out: Path | None = field(default=None, metadata={
        "help": "output JSON; unset: <run dir>/eval.json"})
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


def use_kv_cache(net: Any, kv_cache: bool = False, full_recompute: bool = False) -> bool:
    """Whether a policy on ``net`` acts from the key/value cache: where the cache is exact
    (a band-attention network, ``offline_dt.nn.transformer.cache_is_exact``) unless
    ``full_recompute``; for a classic (window) network only when ``kv_cache`` asks for the
    approximation (logged as such)."""
    if cache_is_exact(getattr(net, "cfg", None)):
        return not full_recompute
    if kv_cache:
        log.warning("kv_cache on a window-attention network: exact for the first K steps of "
                    "an episode, an approximation after (train with attention='band' for an "
                    "exact cache)")
    return kv_cache


def _get(info: Any, *keys: str) -> Any:
    """First non-None value under any of ``keys`` in ``info`` or its ``metadata``/``summary``
    sub-dicts (the trainer's ``dataset_info``)."""
    if not isinstance(info, dict):
        info = to_jsonable(info) if info is not None else {}
    for key in keys:
        for d in (info, info.get("metadata") or {}, info.get("summary") or {}):
            if isinstance(d, dict) and d.get(key) is not None:
                return d[key]
    return None


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def checkpoint_facts(ckpt: Any) -> dict[str, Any]:
    """env id, method, reference scores, best dataset return and dataset path/id of a loaded
    checkpoint, from its ``dataset_info`` and ``train_config``."""
    info = ckpt.dataset_info
    tc = ckpt.train_config
    dataset = _get(info, "dataset", "path", "source", "dataset_id")
    if dataset is None:
        dataset = getattr(tc, "dataset", None)
    best = _get(info, "return_max", "max_return", "best_return")
    return {
        "env_id": _get(info, "env_id"),
        "method": getattr(tc, "method", "dt"),
        "ref_min_score": _opt_float(_get(info, "ref_min_score")),
        "ref_max_score": _opt_float(_get(info, "ref_max_score")),
        "best_return": _opt_float(best),
        "dataset": None if dataset is None else str(dataset),
    }


def default_target_returns(best_return: float | None, ref_max_score: float | None
                           ) -> list[float]:
    """The dataset's best episode return and the expert reference score (deduplicated)."""
    targets: list[float] = []
    for t in (best_return, ref_max_score):
        if t is not None and all(abs(t - u) > 1e-9 for u in targets):
            targets.append(float(t))
    if not targets:
        raise ValueError("no target return given and the checkpoint's dataset_info has neither "
                         "the best episode return nor ref_max_score; pass target_returns")
    return targets


def _run_dir(checkpoint: Path) -> Path:
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


def inference_candidates(method: Any, net: Any, targets: list[float | None]
                         ) -> list[dict[str, Any]]:
    """Every ``{"target_return": t, "settings": s}`` of ``targets`` crossed with
    ``method.inference_candidates(net)``, targets outermost (the order of ``eval.json``)."""
    settings = [dict(s) for s in method.inference_candidates(net)] or [{}]
    return [{"target_return": t, "settings": st} for t in targets for st in settings]


def choose_candidate(
    env_id: str,
    candidates: list[dict[str, Any]],
    make_policy: Any,
    cfg: EvalConfig,
    refs: dict[str, float | None],
) -> tuple[int, list[dict[str, Any]]]:
    """Index of the candidate with the best mean return on the validation episodes, and every
    candidate's validation evaluation (``EvalResult.to_dict`` plus the candidate's keys).

    ``make_policy(candidate) -> Policy``. Each candidate is rolled out on
    ``cfg.validation_episodes`` validation episodes of seed ``cfg.seed`` (never a test
    episode); ties go to the earlier candidate. A single candidate is chosen without any
    rollout (index 0, no validation results).
    """
    if len(candidates) == 1:
        return 0, []
    results = []
    for cand in candidates:
        res = evaluate_policy(env_id, make_policy(cand), cfg.validation_episodes, cfg.seed,
                              split="validation", max_envs=cfg.max_envs,
                              ref_min_score=refs["ref_min_score"],
                              ref_max_score=refs["ref_max_score"])
        log.info("validation: target %s settings %s: mean %.2f (%d episodes, %.1fs)",
                 cand["target_return"], cand["settings"], res.mean, res.episodes,
                 res.wall_seconds)
        results.append({**to_jsonable(cand), **res.to_dict()})
    best = max(range(len(results)), key=lambda j: (results[j]["mean"], -j))
    return best, results


def selection_record(candidates: list[dict[str, Any]], chosen: int,
                     validation: list[dict[str, Any]], cfg: EvalConfig, why: str
                     ) -> dict[str, Any]:
    """``eval.json``'s ``selection``: how the tested candidate was chosen (the rule, the
    validation episodes and their seed rule, every candidate's validation results)."""
    if validation:
        rule = (f"best mean return on {cfg.validation_episodes} validation episodes per "
                f"candidate (reset seeds {SEED_RULES['validation']}, disjoint from the test "
                "episodes); only the chosen candidate was rolled out on the test episodes")
    else:
        rule = f"single candidate ({why}): no validation rollouts, tested directly"
    return {"rule": rule, "candidates": to_jsonable(candidates), "chosen_index": chosen,
            "chosen": to_jsonable(candidates[chosen]),
            "validation_episodes": cfg.validation_episodes if validation else 0,
            "validation_episode_seeds": SEED_RULES["validation"],
            "validation": validation}


def evaluate_checkpoint(cfg: EvalConfig) -> dict[str, Any]:
    """Choose a checkpoint's target return and inference settings on validation episodes,
    roll the chosen one out on the test episodes and write ``eval.json`` atomically.

    Candidates (:func:`checkpoint_candidates`): for a return-conditioned method (``dt``) the
    targets (``cfg.target_returns``, default the dataset's best episode return and
    ``ref_max_score``), else none (``target_return`` null), crossed with
    ``Method.inference_candidates``, for the checkpoint and each of
    ``cfg.candidate_checkpoints`` (then each candidate names its ``checkpoint``). With more
    than one, :func:`choose_candidate` picks the best mean return on
    ``cfg.validation_episodes`` validation episodes; then only that one is evaluated on the
    ``cfg.episodes`` test episodes. The candidate's checkpoint builds its policy
    (``Method.policy(net, normalizer, target, kv_cache=..., **settings)``), acting from the
    key/value cache where it is exact (band-attention checkpoints, unless
    ``cfg.full_recompute``) or where ``cfg.kv_cache`` asks for it (:func:`use_kv_cache`).

    ``eval.json``: the headline (top-level ``mean_return``, ``std_return``, ``ci95``,
    ``normalized_score``, ``headline_target``, ``headline_settings``, and ``checkpoint`` and
    ``step`` of the chosen checkpoint) is the chosen candidate's test evaluation, ``targets``
    holds that one evaluation with per-episode returns, ``selection`` every candidate's
    validation results and the rule (:func:`selection_record`), ``headline_rule`` says how
    the headline was chosen.

    Returns:
        The dict written to ``cfg.out`` (default ``<run dir>/eval.json`` of ``cfg.checkpoint``).

    Raises:
        ValueError: no checkpoint given; no target return given or known for a
            return-conditioned method; a candidate checkpoint of another env, dataset or
            method.
        FileExistsError: the output path is a directory or a file that is not JSON (checked
            before any rollout; nothing is replaced).
    """
    if cfg.checkpoint is None:
        raise ValueError("EvalConfig.checkpoint is required (checkpoint file or run directory)")
    checkpoint = Path(cfg.checkpoint)
    out = Path(cfg.out) if cfg.out is not None else _run_dir(checkpoint) / "eval.json"
    check_writable(out, True, "JSON file", ours=is_json_file)  # refused before any rollout
    candidates, loaded, facts = checkpoint_candidates(cfg)
    env_id = cfg.env_id  # the user's explicit choice; an id from the data must be registered
    if not env_id:
        env_id = registered_env_id(facts["env_id"], str(checkpoint), "dataset_info/env_id")

    def make_policy(cand: dict[str, Any]) -> Policy:
        ckpt = loaded[cand.get("checkpoint", str(checkpoint))]
        kv_cache = use_kv_cache(ckpt.model, cfg.kv_cache, cfg.full_recompute)
        return ckpt.method.policy(ckpt.model, ckpt.normalizer, cand["target_return"],
                                  kv_cache=kv_cache, **cand["settings"])

    chosen, validation = choose_candidate(env_id, candidates, make_policy, cfg, facts)
    cand = candidates[chosen]
    source = cand.get("checkpoint", str(checkpoint))
    ckpt = loaded[source]
    res = evaluate_policy(env_id, make_policy(cand), cfg.episodes, cfg.seed,
                          max_envs=cfg.max_envs, ref_min_score=facts["ref_min_score"],
                          ref_max_score=facts["ref_max_score"])
    log.info("%s %s target %s settings %s: test mean %.2f, episode-level 95%% CI ± %.2f "
             "(%d episodes, %.1fs)", source, facts["method"], cand["target_return"],
             cand["settings"], res.mean, res.ci95, res.episodes, res.wall_seconds)
    why = ("one target return, no inference settings to choose"
           if ckpt.method.conditions_on_return
           else f"{facts['method']} ignores target returns and has no inference settings to "
                "choose")
    selection = selection_record(candidates, chosen, validation, cfg, why)
    payload = build_eval_payload(
        method=facts["method"], env_id=env_id,
        results=[{**to_jsonable(cand), **res.to_dict()}],
        headline_rule=f"test episodes of the chosen candidate only; chosen by "
                      f"{selection['rule']}",
        extra={"checkpoint": source, "step": getattr(ckpt, "step", None),
               "dataset": facts["dataset"], "config": to_jsonable(cfg),
               "headline_settings": to_jsonable(cand["settings"]), "selection": selection,
               "kv_cache": use_kv_cache(ckpt.model, cfg.kv_cache, cfg.full_recompute)},
    )
    save_json(payload, out)
    return payload


def checkpoint_candidates(cfg: EvalConfig) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                    dict[str, Any]]:
    """(candidates, loaded checkpoints by path, facts of ``cfg.checkpoint``) of
    :func:`evaluate_checkpoint`: :func:`inference_candidates` of ``cfg.checkpoint`` and then
    of each of ``cfg.candidate_checkpoints``; with candidate checkpoints every candidate
    carries its ``checkpoint`` path.

    Raises:
        ValueError: a return-conditioned method with no target known; a candidate checkpoint
            whose env id, dataset or method differs from ``cfg.checkpoint``'s.
    """
    device = resolve_device(cfg.device)
    paths = [Path(cfg.checkpoint), *map(Path, cfg.candidate_checkpoints)]
    loaded = {str(p): load_checkpoint(p, device) for p in paths}
    facts = checkpoint_facts(loaded[str(paths[0])])
    candidates: list[dict[str, Any]] = []
    for path, ckpt in loaded.items():
        other = checkpoint_facts(ckpt)
        for key in ("env_id", "dataset", "method"):
            if other[key] != facts[key]:
                raise ValueError(f"EvalConfig.candidate_checkpoints: {path} has {key} "
                                 f"{other[key]!r}, expected {facts[key]!r} as "
                                 f"{paths[0]} (candidates must share env, dataset and method)")
        targets: list[float | None] = [None]
        if ckpt.method.conditions_on_return:
            targets = list(cfg.target_returns or default_target_returns(
                other["best_return"], other["ref_max_score"]))
        for cand in inference_candidates(ckpt.method, ckpt.model, targets):
            candidates.append({**cand, "checkpoint": path} if len(paths) > 1 else cand)
    return candidates, loaded, facts


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


# ---------------------------------------------------------------------------------- training hook
def make_eval_hook(target_return: float | None = None, seed: int | None = None,
                   max_envs: int = DEFAULT_MAX_ENVS) -> EvalHook:
    """A periodic-evaluation hook for ``offline_dt.training.loop.train``: ``hook(run, step)``.

    Each call rolls the trainer's own network out with the trainer's own normaliser and
    dataset facts (``TrainingRun``; nothing is reloaded or refitted) on the same
    ``run.config.eval_episodes`` episodes: validation episodes ``CURVE_EPISODE_OFFSET + i`` of
    validation seed ``run.config.seed`` (or ``seed``), i.e. reset seeds
    ``2 * 10**12 + seed * 100000 + 50000 + i``. They are never test episodes (whatever the
    seeds) and never the validation episodes on which :func:`evaluate_checkpoint` chooses a
    target (those are ``i < EvalConfig.validation_episodes <= 50000``), so a learning curve
    selects nothing on either. The env is the dataset's (``run.dataset_info["env_id"]``, which
    ``env_id`` overrides); a return-conditioned method acts toward ``target_return``, by
    default the dataset's ``ref_max_score`` (expert level), else its best episode return,
    with the method's default inference settings; a band-attention network acts from its
    (exact) key/value cache.

    Returns ``eval_return_mean``, ``eval_return_std`` (over episodes), ``eval_return_ci95``
    (episode-level 95% CI half-width), ``eval_normalized_score`` (NaN when unknown),
    ``eval_episodes``, ``eval_target_return`` and ``eval_seconds``. The network is returned
    to the train/eval mode it was in.
    """

    def hook(run: TrainingRun, step: int) -> dict[str, float]:
        info = run.dataset_info
        env_id = run.config.env_id or registered_env_id(
            info.get("env_id"), run.config.dataset, "metadata/env_id")
        ref_min, ref_max = _opt_float(info.get("ref_min_score")), _opt_float(
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

    return hook
