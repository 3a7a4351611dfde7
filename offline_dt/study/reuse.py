"""One run trained and evaluated, or what a previous call finished reused.

Every run directory holds its resolved config (``config.json``). A trained run is reused when
its config matches and its checkpoint reached the step budget, resumed when it matches but
stopped early, replaced otherwise (:func:`train_or_reuse`); its ``eval.json`` is reused when
nothing was trained, it was written with today's evaluation config and on today's test
episodes (:data:`EPISODE_SEEDS`), with its choice made on validation episodes
(:data:`VALIDATION_EPISODE_SEEDS`) (:func:`train_and_evaluate`). A baseline's ``eval.json`` is
reused when its ``config.json`` asks for the same evaluation (:func:`evaluate_baseline`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from offline_dt.envs.seeds import SEED_RULES
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint, write_baseline_eval
from offline_dt.training.checkpoint import kept_checkpoints
from offline_dt.training.configs import save_json, to_jsonable

#: The test episodes' reset seeds as eval.json records them (``evaluate.build_eval_payload``);
#: an eval.json of other episodes (written before the seeds moved) is evaluated again.
EPISODE_SEEDS = SEED_RULES["test"]
#: The validation episodes' reset seeds as a checkpoint's eval.json records them
#: (``selection.validation_episode_seeds``); an eval.json without it chose its target on the
#: test episodes (before issue 18) and is evaluated again.
VALIDATION_EPISODE_SEEDS = SEED_RULES["validation"]


def _canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (dataclasses, paths and tuples normalised)."""
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def _same_json(a: Any, b: Any) -> bool:
    return _canonical(a) == _canonical(b)


def _same_eval_config(saved: Any, ecfg: EvalConfig) -> bool:
    """``saved`` (an eval.json's config) asks for the same evaluation as ``ecfg``; a field
    added to EvalConfig since it was written counts as matching when ``ecfg`` leaves it at its
    default."""
    if not isinstance(saved, dict):
        return False
    now, defaults, saved = _canonical(ecfg), _canonical(EvalConfig()), _canonical(saved)
    for key in now.keys() - saved.keys():
        if now[key] != defaults.get(key):
            return False
        del now[key]
    return now == saved


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train_or_reuse(tcfg: Any, hook: Callable | None) -> float:
    """Train one run, or reuse or resume it; return the seconds spent training (0.0: reused).

    Reuse: ``config.json``'s train_config equals ``tcfg`` (up to the trainer's resumable
    fields) and the checkpoint reached ``tcfg.steps``. A matching but unfinished run is
    resumed; a mismatching one is replaced. A run trained here loses its ``eval.json``.
    """
    from offline_dt.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, train
    from offline_dt.training.configs import from_dict
    from offline_dt.training.train_config import config_differences

    run_dir = Path(tcfg.run_dir)
    ckpt = run_dir / CHECKPOINT_NAME
    saved = _read_json(run_dir / "config.json")
    matches = False
    if saved is not None and ckpt.is_file():
        try:
            matches = not config_differences(from_dict(TrainConfig, saved["train_config"]), tcfg)
        except (KeyError, ValueError, TypeError):
            matches = False
    if matches:
        try:
            if load_checkpoint(ckpt, "cpu").step >= tcfg.steps:
                return 0.0
        except (ValueError, FileNotFoundError):
            matches = False
    (run_dir / "eval.json").unlink(missing_ok=True)
    run_cfg = dataclasses.replace(tcfg, resume=matches, overwrite=not matches)
    t = time.perf_counter()
    train(run_cfg, eval_hook=hook)
    return time.perf_counter() - t


def train_and_evaluate(tcfg: Any, ecfg: EvalConfig, hook: Callable | None,
                       candidates: Sequence[Any] = ()
                       ) -> tuple[dict[str, Any], dict[str, float]]:
    """Train (or reuse, or resume) one run and the runs of its ``candidates`` (TrainConfigs
    of the same method with other options, :func:`train_or_reuse` each), then evaluate it
    with the candidates' checkpoints and every intermediate checkpoint these runs kept
    (``TrainConfig.keep_checkpoints``) competing on validation episodes; return (eval.json,
    seconds per stage).

    ``eval.json`` is reused when none of the runs was trained here and it was written with
    ``ecfg`` (candidate checkpoints included) on today's test episodes (:data:`EPISODE_SEEDS`)
    with its choice made on validation episodes (:data:`VALIDATION_EPISODE_SEEDS`); else the
    run is evaluated again.
    """
    seconds = {"train": 0.0, "evaluate": 0.0}
    for cand in candidates:
        seconds["train"] += train_or_reuse(cand, hook)
    seconds["train"] += train_or_reuse(tcfg, hook)
    run_dir = Path(tcfg.run_dir)
    ecfg = dataclasses.replace(ecfg, candidate_checkpoints=[
        *[Path(c.run_dir) for c in candidates],
        *[kept for c in (tcfg, *candidates) for kept in kept_checkpoints(Path(c.run_dir))]])
    ev = _read_json(run_dir / "eval.json")
    if (seconds["train"] == 0.0 and ev is not None
            and _same_eval_config(ev.get("config"), ecfg)
            and ev.get("episode_seeds") == EPISODE_SEEDS
            and (ev.get("selection") or {}).get("validation_episode_seeds")
            == VALIDATION_EPISODE_SEEDS):
        return ev, seconds
    t = time.perf_counter()
    ev = evaluate_checkpoint(ecfg)
    seconds["evaluate"] = time.perf_counter() - t
    return ev, seconds


def evaluate_baseline(run_dir: Path, method: str, env_id: str, make_policy: Callable,
                      config: dict[str, Any], episodes: int, seed: int,
                      ref_min: float | None, ref_max: float | None
                      ) -> tuple[dict[str, Any], float, bool]:
    """Evaluate ``random`` or ``behaviour`` into ``run_dir`` (reused when its config.json
    matches and eval.json exists); returns (eval.json, seconds, reused).

    ``make_policy() -> (policy, {"policy": description})``; config.json is ``config`` plus
    that description.
    """
    saved = _read_json(run_dir / "config.json")
    ev = _read_json(run_dir / "eval.json")
    if ev is not None and saved is not None:
        request = {k: v for k, v in saved.items() if k != "policy"}
        if _same_json(request, config):
            return ev, 0.0, True
    t = time.perf_counter()
    (run_dir / "eval.json").unlink(missing_ok=True)
    policy, desc = make_policy()
    config = {**config, **desc}
    save_json(config, run_dir / "config.json")
    ev = write_baseline_eval(run_dir / "eval.json", method, env_id, policy, episodes, seed,
                             ref_min_score=ref_min, ref_max_score=ref_max,
                             extra={"config": config})
    # config.json records what was evaluated (policy description included).
    return ev, time.perf_counter() - t, False
