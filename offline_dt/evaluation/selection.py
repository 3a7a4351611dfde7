"""What a checkpoint's evaluation chooses among, and how: candidates rolled out on validation
episodes, never on the test episodes that score the chosen one.

A checkpoint's candidates (:func:`checkpoint_candidates`) are its target returns (for a method
that conditions on one: the user's, or the dataset's best episode return and its expert
reference score, :func:`default_target_returns`; else none) crossed with the method's
inference settings (``Method.inference_candidates``), for the checkpoint and each candidate
checkpoint of the same env, dataset and method. :func:`choose_candidate` rolls each out on
validation episodes (``offline_dt.envs.seeds.validation_seed``) and picks the best mean return;
:func:`selection_record` is how ``eval.json`` records the choice. :func:`check_env_fits`
compares the env with the spaces a checkpoint was trained with before anything is stepped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from offline_dt.data.space_codec import space_from_json
from offline_dt.envs.policies import Policy
from offline_dt.envs.seeds import SEED_RULES
from offline_dt.envs.spaces import require_spaces
from offline_dt.evaluation.episodes import evaluate_policy
from offline_dt.nn.cache import cache_is_exact
from offline_dt.training.checkpoint import load_checkpoint
from offline_dt.training.configs import to_jsonable
from offline_dt.training.device import resolve_device

log = logging.getLogger(__name__)


def use_kv_cache(net: Any, kv_cache: bool = False, full_recompute: bool = False) -> bool:
    """Whether a policy on ``net`` acts from the key/value cache: where the cache is exact
    (a band-attention network, ``offline_dt.nn.cache.cache_is_exact``) unless
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


def opt_float(v: Any) -> float | None:
    """``float(v)``, or None for None."""
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
        "ref_min_score": opt_float(_get(info, "ref_min_score")),
        "ref_max_score": opt_float(_get(info, "ref_max_score")),
        "best_return": opt_float(best),
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


def inference_candidates(method: Any, net: Any, targets: list[float | None]
                         ) -> list[dict[str, Any]]:
    """Every ``{"target_return": t, "settings": s}`` of ``targets`` crossed with
    ``method.inference_candidates(net)``, targets outermost (the order of ``eval.json``); a
    setting that acts without a target (``Method.uses_target`` False, e.g. ``mgdt``'s
    expert-return inference) comes once, with the first target's, as ``target_return``
    None."""
    settings = [dict(s) for s in method.inference_candidates(net)] or [{}]
    uses_target = getattr(method, "uses_target", lambda st: True)  # a duck-typed method too
    out: list[dict[str, Any]] = []
    for t in targets:
        for st in settings:
            if uses_target(st):
                out.append({"target_return": t, "settings": st})
            elif t is targets[0]:  # a setting that ignores the target: once, with none
                out.append({"target_return": None, "settings": st})
    return out



def checkpoint_candidates(checkpoint: Path, candidate_checkpoints: Sequence[Path], device: str,
                          target_returns: Sequence[float] | None, env_id: str | None = None
                          ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(candidates, loaded checkpoints by path, facts of ``checkpoint``) of an evaluation:
    :func:`inference_candidates` of ``checkpoint`` and then of each of
    ``candidate_checkpoints``, all loaded on ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``);
    with candidate checkpoints every candidate carries its ``checkpoint`` path. A
    return-conditioned method's targets are ``target_returns``, else
    :func:`default_target_returns` of its dataset. A multi-task checkpoint is loaded for
    ``env_id`` (``offline_dt.training.checkpoint.select_env``: that env's facts, normaliser
    and network).

    Raises:
        ValueError: a return-conditioned method with no target known; a candidate checkpoint
            whose env id, dataset or method differs from ``checkpoint``'s.
    """
    resolved = resolve_device(device)
    paths = [Path(checkpoint), *map(Path, candidate_checkpoints)]
    loaded = {str(p): load_checkpoint(p, resolved, env_id) for p in paths}
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
            targets = list(target_returns or default_target_returns(
                other["best_return"], other["ref_max_score"]))
        for cand in inference_candidates(ckpt.method, ckpt.model, targets):
            candidates.append({**cand, "checkpoint": path} if len(paths) > 1 else cand)
    return candidates, loaded, facts


def trained_spaces(info: Any, source: str) -> tuple[gym.Space, gym.Space] | None:
    """(observation space, action space) a network was trained with, from its
    ``dataset_info`` (the JSON objects of ``offline_dt.data.space_codec.space_to_json`` under
    ``observation_space`` and ``action_space``); None when it records none.

    Raises:
        ValueError: a recorded space is not one ``space_from_json`` reads, naming ``source``.
    """
    found = [_get(info, key) for key in ("observation_space", "action_space")]
    if any(s is None for s in found):
        return None
    spaces = []
    for key, value in zip(("observation_space", "action_space"), found, strict=True):
        try:
            spaces.append(space_from_json(value if isinstance(value, str) else json.dumps(value)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: dataset_info/{key} is not a Box or Discrete space "
                             f"({e!r})") from e
    return spaces[0], spaces[1]


def check_env_fits(env_id: str, info: Any, source: str) -> None:
    """Check, before anything is stepped, that ``env_id``'s spaces fit the ones recorded in
    ``info`` (a checkpoint's or run's ``dataset_info``, :func:`trained_spaces`) with
    ``offline_dt.envs.spaces.require_spaces``; nothing is checked when none are recorded.

    Raises:
        offline_dt.envs.spaces.SpaceMismatchError: naming ``env_id``, ``source`` (e.g.
            ``"checkpoint runs/x"``), what differs and both spaces, and the env the network
            was trained on.
        offline_dt.envs.make.EnvDependencyError, EnvNotFoundError: the env cannot be made.
    """
    spaces = trained_spaces(info, source)
    if spaces is None:
        log.debug("%s records no spaces; %s is not checked against them", source, env_id)
        return
    trained_on = _get(info, "env_id")
    hint = (f". It was trained on {trained_on!r}: pass --env-id of an env with its spaces"
            if trained_on and trained_on != env_id else "")
    require_spaces(env_id, *spaces, source, hint=hint)


def choose_candidate(
    env_id: str,
    candidates: list[dict[str, Any]],
    make_policy: Callable[[dict[str, Any]], Policy],
    *,
    episodes: int,
    seed: int,
    max_envs: int,
    refs: dict[str, float | None],
) -> tuple[int, list[dict[str, Any]]]:
    """Index of the candidate with the best mean return on the validation episodes, and every
    candidate's validation evaluation (``EvalResult.to_dict`` plus the candidate's keys).

    Each candidate's ``make_policy(candidate)`` is rolled out on ``episodes`` validation
    episodes of evaluation seed ``seed`` (never a test episode), at most ``max_envs`` at once,
    scored against ``refs["ref_min_score"]`` and ``refs["ref_max_score"]``; ties go to the
    earlier candidate. A single candidate is chosen without any rollout (index 0, no
    validation results).
    """
    if len(candidates) == 1:
        return 0, []
    results = []
    for cand in candidates:
        res = evaluate_policy(env_id, make_policy(cand), episodes, seed,
                              split="validation", max_envs=max_envs,
                              ref_min_score=refs["ref_min_score"],
                              ref_max_score=refs["ref_max_score"])
        log.info("validation: target %s settings %s: mean %.2f (%d episodes, %.1fs)",
                 cand["target_return"], cand["settings"], res.mean, res.episodes,
                 res.wall_seconds)
        results.append({**to_jsonable(cand), **res.to_dict()})
    best = max(range(len(results)), key=lambda j: (results[j]["mean"], -j))
    return best, results


def selection_record(candidates: list[dict[str, Any]], chosen: int,
                     validation: list[dict[str, Any]], validation_episodes: int, why: str
                     ) -> dict[str, Any]:
    """``eval.json``'s ``selection``: how the tested candidate was chosen (the rule, the
    validation episodes and their seed rule, every candidate's validation results); ``why``
    says why a single candidate needed no choice."""
    if validation:
        rule = (f"best mean return on {validation_episodes} validation episodes per "
                f"candidate (reset seeds {SEED_RULES['validation']}, disjoint from the test "
                "episodes); only the chosen candidate was rolled out on the test episodes")
    else:
        rule = f"single candidate ({why}): no validation rollouts, tested directly"
    return {"rule": rule, "candidates": to_jsonable(candidates), "chosen_index": chosen,
            "chosen": to_jsonable(candidates[chosen]),
            "validation_episodes": validation_episodes if validation else 0,
            "validation_episode_seeds": SEED_RULES["validation"],
            "validation": validation}

