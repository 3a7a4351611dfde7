"""A search over a d3rlpy reference row's hyperparameters (iql, mlp-bc, pct-bc) by the same
Optuna study as ``offline-dt search`` (:mod:`offline_dt.study.search`): the same storage,
TPE sampler, pruner, progress lines and outputs (``trials.csv``/``.md``, ``best.json``,
plots), the same objective on the same episodes, so a tuned reference row and a tuned
transformer row had the same search.

The space is the row's :data:`offline_dt.study.reference.REFERENCE_SPACES` (IQL: its
learning rate, expectile τ and inverse temperature β; the BC rows: the learning rate, and
%BC's kept fraction), or the part named by ``params``. A trial is an ordinary reference run
directory ``<study dir>/trials/<key>`` (``config.json``, ``metrics.csv``,
``weights.safetensors``; no ``eval.json``: a trial never meets a test episode), trained by
:func:`offline_dt.study.reference.train_reference`. Its learning curve (``curve_points``
points, each ``curve_episodes`` validation episodes from
``offline_dt.evaluation.episodes.CURVE_EPISODE_OFFSET`` on, the training loop's
learning-curve episodes) feeds the pruner; its value is the mean return of its policy on
``validation_episodes`` validation episodes of evaluation seed ``ReferenceConfig.seed``
(the episodes ``offline_dt.evaluation.evaluate.validation_score`` scores a transformer trial
on; a reference row has one policy, nothing else to choose). d3rlpy's training is not
resumable: a trial killed mid-training is retried from its start.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_dt.envs.policies import CallablePolicy
from offline_dt.evaluation.episodes import CURVE_EPISODE_OFFSET, evaluate_policy
from offline_dt.study.reference import (
    REFERENCE_SPACES,
    WEIGHTS_NAME,
    ReferenceConfig,
    load_reference,
    reference_dataset,
    same_training,
    train_reference,
)
from offline_dt.study.search import PRUNERS, load_study, run_study, suggest, trial_key
from offline_dt.study.search_report import SearchResult, write_outputs
from offline_dt.training.configs import save_json


@dataclass
class ReferenceSearchConfig:
    """A search over a reference row's hyperparameters: the base run (``reference``; its
    ``run_dir`` is replaced by each trial's, its ``seed`` trains and validates every trial)
    and the study's settings, as :class:`offline_dt.study.search.SearchConfig`'s."""

    reference: ReferenceConfig
    study_dir: Path
    trials: int = 16
    params: list[str] | None = None
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    pruner: str = "median"
    curve_points: int = 4
    curve_episodes: int = 10
    validation_episodes: int = 20
    sampler_seed: int = 0
    heartbeat: int = 60

    def validate(self) -> None:
        """Raises ValueError naming the field, what is expected and the value found."""
        if not self.reference.dataset:
            raise ValueError("ReferenceSearchConfig.reference.dataset is required")
        for name in ("trials", "workers", "validation_episodes", "curve_episodes",
                     "heartbeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReferenceSearchConfig.{name} must be >= 1, found "
                                 f"{getattr(self, name)}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"ReferenceSearchConfig.pruner must be one of {PRUNERS}, "
                             f"found {self.pruner!r}")
        if not 0 <= self.curve_points <= self.reference.steps:
            raise ValueError(f"ReferenceSearchConfig.curve_points must be in [0, steps="
                             f"{self.reference.steps}], found {self.curve_points}")
        space = REFERENCE_SPACES[self.reference.method]
        unknown = sorted(set(self.params or ()) - set(space))
        if unknown or (self.params is not None and not self.params):
            raise ValueError(f"ReferenceSearchConfig.params: {self.reference.method} can tune "
                             f"{sorted(space)}, found {self.params}")

    def resolved_study_dir(self) -> Path:
        return Path(self.study_dir)

    def resolved_storage(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.study_dir) / 'study.db').resolve()}"

    def resolved_study_name(self) -> str:
        return self.study_name or f"{self.reference.dataset}/{self.reference.method}"

    def space(self) -> dict[str, Any]:
        """The searched part of the row's space."""
        return {k: v for k, v in REFERENCE_SPACES[self.reference.method].items()
                if self.params is None or k in self.params}


def _curve(cfg: ReferenceSearchConfig, trial: Any, env_id: str, ref: tuple[Any, Any]) -> Any:
    """``fit``'s callback: every ``steps // curve_points`` updates, the policy's mean return
    on the curve's validation episodes, reported to ``trial``; ``optuna.TrialPruned`` where
    the pruner says so."""
    import optuna

    every = max(1, cfg.reference.steps // cfg.curve_points)

    def point(algo: Any, step: int) -> None:
        if step % every:
            return
        res = evaluate_policy(env_id, CallablePolicy(algo.predict), cfg.curve_episodes,
                              cfg.reference.seed, split="validation",
                              first=CURVE_EPISODE_OFFSET, max_envs=cfg.reference.max_envs,
                              ref_min_score=ref[0], ref_max_score=ref[1])
        trial.report(float(res.mean), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"step {step}: validation curve mean {res.mean:.2f}")

    return point


def objective(cfg: ReferenceSearchConfig) -> Any:
    """The study's objective: train the trial's reference run (a finished one with the same
    parameters, a retried trial's, is loaded instead), pruned on its learning curve, and
    score its policy on validation episodes (module docstring)."""
    space = cfg.space()
    root = cfg.resolved_study_dir() / "trials"

    def run(trial: Any) -> float:
        params = suggest(trial, space)
        run_dir = root / trial_key(params)
        trial.set_user_attr("run_dir", str(run_dir))
        rcfg = dataclasses.replace(cfg.reference, **params, run_dir=run_dir, overwrite=True)
        ds, env_id = reference_dataset(rcfg)
        ref = (ds.metadata.get("ref_min_score"), ds.metadata.get("ref_max_score"))
        saved = run_dir / "config.json"
        done = saved.is_file() and (run_dir / WEIGHTS_NAME).is_file() and same_training(
            json.loads(saved.read_text()), rcfg)
        algo = load_reference(run_dir, rcfg.device) if done else train_reference(
            rcfg, _curve(cfg, trial, env_id, ref) if cfg.curve_points and
            cfg.pruner != "none" else None)
        res = evaluate_policy(env_id, CallablePolicy(algo.predict), cfg.validation_episodes,
                              rcfg.seed, split="validation", max_envs=rcfg.max_envs,
                              ref_min_score=ref[0], ref_max_score=ref[1])
        trial.set_user_attr("chosen", {"target_return": None, "settings": {}})
        return float(res.mean)

    return run


def reference_search(cfg: ReferenceSearchConfig) -> SearchResult:
    """Run (or continue) the study of ``cfg`` and write its outputs (module docstring):
    ``search.json`` (config and space), the trials' run directories and what
    :func:`offline_dt.study.search_report.write_outputs` writes.

    Raises:
        ValueError: a bad config (:meth:`ReferenceSearchConfig.validate`), or what a trial's
            training raises.
        offline_dt.study.d3rlpy_io.MissingDependencyError: d3rlpy missing.
    """
    cfg.validate()
    out = cfg.resolved_study_dir()
    out.mkdir(parents=True, exist_ok=True)
    save_json({"search_config": cfg, "space": cfg.space()}, out / "search.json")
    run_study(cfg, objective)
    return write_outputs(cfg, load_study(cfg),
                         f"{cfg.reference.method} on {cfg.reference.dataset}")
