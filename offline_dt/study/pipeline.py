"""``reproduce``: the whole study in one call — generate → train → evaluate → report.

Rows: the methods of the one training loop (``dt``, ``bc``, and ``qt`` once registered), the
field's reference rows trained by d3rlpy (``iql``, ``mlp-bc``, ``pct-bc``;
``offline_dt.study.reference``) and the baselines (``random``, ``behaviour``); ``methods`` picks
among them (:func:`reproduce_methods`).

A preset is a named set of overrides of the stage dataclasses (``GenerateConfig``,
``TrainConfig``, ``EvalConfig``) plus the reference rows' updates, the seeds and the eval-hook
size:

* ``smoke``: seconds-sized everything (tiny datasets and SAC run, tiny model, a few hundred
  training steps, 40 reference updates, 1 seed, 10 test episodes). Exercises every stage; used
  by the tests.
* ``quick``: the D4RL-sized default datasets (shared with ``offline-dt generate`` and with
  ``paper``), a small DT, 1 seed, 50 test episodes.
* ``paper``: the D4RL-sized datasets, 3 training seeds, 200 test episodes, a model and
  step budget shrunk from the paper's (Chen et al. 2021 gym config: embed 128, 3 layers,
  100k steps) to fit this 2-core CPU; see ``PRESETS["paper"].description``.

Layout under ``root`` (default ``data``)::

    d4rl/, minari/, agents/          datasets and behaviour agent (smoke: smoke/d4rl, ...)
    runs/<preset>/<env>/<dataset>/<method>/seed<k>/   config.json, eval.json (+ training files)
    reports/<env>/<preset>/           results.csv/.md, plots, timings.json

Every run directory holds its resolved config (``config.json``); a run whose ``eval.json``
exists, whose config matches and whose test episodes are today's (:data:`EPISODE_SEEDS`) is
reused on rerun. Every method is evaluated on the same test episodes: for training seed ``k``
evaluation seed ``k`` (episode ``i`` resets with ``10**12 + k * 100_000 + i``,
``offline_dt.envs.rollout.evaluation_seed``). Nothing is chosen on them: a checkpoint's target
return and inference settings are chosen on validation episodes
(``2 * 10**12 + k * 100_000 + i``, ``offline_dt.evaluation.evaluate.evaluate_checkpoint``), and the
learning-curve hook rolls out on validation episodes of its own (indices from 50000).

Behaviour baseline per level (the policy that produced the data, acting as it did when
collecting — stochastic for SAC): ``random`` → uniform random; ``medium``/``expert`` → the
checkpoint named in the dataset metadata; ``medium-expert`` → its fixed mixture, half the
episodes medium, half expert. ``medium-replay``/``full-replay``
(``offline_dt.study.runs.REPLAY_LEVELS``) get no behaviour job: a sequence of policies during
SAC training wrote them, not one agent, so the report compares them with the dataset's own
episode returns (its ``data`` row) instead.

Intervals: the ``±`` of the per-run log line and the ``ci95`` of ``eval.json`` are
episode-level (``1.96 std / √episodes`` over one run's test episodes: evaluation noise only);
the report adds the run-level intervals (over training seeds).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from offline_dt.data.d4rl import LEVELS
from offline_dt.envs.rollout import SEED_RULES, CallablePolicy, RandomPolicy
from offline_dt.evaluation.evaluate import (
    EvalConfig,
    evaluate_checkpoint,
    make_eval_hook,
    write_baseline_eval,
)
from offline_dt.study.reference import REFERENCE_METHODS
from offline_dt.study.report import report
from offline_dt.study.runs import REPLAY_LEVELS
from offline_dt.training.checkpoint import kept_checkpoints
from offline_dt.training.configs import save_json, to_jsonable
from offline_dt.training.device import resolve_device

log = logging.getLogger(__name__)

#: Methods trained by the one training loop (``offline_dt.training.loop``) with the preset's budget;
#: ``qt`` joins when its module is registered (:func:`trained_methods`).
TRAINED_METHODS = ("dt", "bc", "qt")
#: Evaluated only: the uniform random agent and the policy that wrote the data.
BASELINES = ("random", "behaviour")
#: Levels with a behaviour job: those written by one policy (or medium-expert's fixed mixture).
BEHAVIOUR_LEVELS = tuple(lv for lv in LEVELS if lv not in REPLAY_LEVELS)
#: The test episodes' reset seeds as eval.json records them (``evaluate.build_eval_payload``);
#: an eval.json of other episodes (written before the seeds moved) is evaluated again.
EPISODE_SEEDS = SEED_RULES["test"]
#: The validation episodes' reset seeds as a checkpoint's eval.json records them
#: (``selection.validation_episode_seeds``); an eval.json without it chose its target on the
#: test episodes (before issue 18) and is evaluated again.
VALIDATION_EPISODE_SEEDS = SEED_RULES["validation"]


def trained_methods() -> tuple[str, ...]:
    """:data:`TRAINED_METHODS` registered in ``offline_dt.methods`` (``qt`` once it exists)."""
    from offline_dt.methods import METHODS as REGISTERED

    return tuple(m for m in TRAINED_METHODS if m in REGISTERED)


def all_methods() -> tuple[str, ...]:
    """Every method a reproduce run can include, in job order: trained, reference, baselines."""
    return (*trained_methods(), *REFERENCE_METHODS, *BASELINES)


@dataclass(frozen=True)
class Preset:
    """A named budget: overrides of each stage's config dataclass.

    Attributes:
        name: preset name.
        description: what it is for and how long it takes here.
        generate: ``GenerateConfig`` field overrides.
        train: ``TrainConfig`` field overrides of every method of the training loop (dt, bc
            and qt alike; bc = same network, returns-to-go zeroed).
        method_train: per method, ``TrainConfig`` overrides on top of ``train`` (e.g. a
            method's ``method_options``).
        method_candidates: per method, named alternatives to its ``method_options`` (e.g.
            qt's η and β), each trained as a run of its own under
            ``<run dir>/candidates/<name>``; the method's evaluation chooses among its own
            checkpoint and these (with their targets and inference settings) on validation
            episodes (``EvalConfig.candidate_checkpoints``), so a training hyperparameter is
            tuned per dataset and seed the way a target return is, never on test episodes.
        evaluate: ``EvalConfig`` field overrides (test episodes, validation episodes, ...);
            the reference rows and baselines use its ``episodes``.
        reference_steps: gradient updates of each d3rlpy reference row (iql, mlp-bc,
            pct-bc; ``offline_dt.study.reference``).
        seeds: training seeds; seed k is also the evaluation seed of every method.
        hook_episodes: episodes per learning-curve evaluation (TrainConfig.eval_every).
        data_dir: sub-directory of ``root`` for datasets and agents (None: ``root`` itself,
            i.e. the standard ``data/d4rl``, ``data/minari``, ``data/agents``).
    """

    name: str
    description: str
    generate: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    method_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_candidates: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    reference_steps: dict[str, int] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    hook_episodes: int = 10
    data_dir: str | None = None


#: The small DT of the quick and paper presets (embed 64, 2 layers, K=20, no dropout, lr 3e-4,
#: warmup 500, batch 64): in short sweeps on our Pendulum expert data it was the cheapest
#: setting that reached the expert agent's level; dropout 0.1, one layer and K=10 were worse
#: or less stable. Measured returns belong in benchmarks/results, produced by benchmarks/.
_SMALL_DT: dict[str, Any] = {
    "embed_dim": 64, "n_layer": 2, "n_head": 1, "context_length": 20, "dropout": 0.0,
    "learning_rate": 3e-4, "warmup_steps": 500, "batch_size": 64, "log_every": 100,
}

#: Updates of the d3rlpy reference rows in the quick and paper presets. IQL: 10k updates,
#: the budget the issue measured (d3rlpy IQL defaults on 1000 random Pendulum episodes: -230.9
#: on our pendulum-random; 108 s on 2 cores unloaded, 27 s per 1k updates on one thread of
#: this 2-core machine while another job ran). BC (mlp-bc, pct-bc): 5k updates of batch 100
#: (3.4 s per 1k here under the same load): 2.5 passes over the 200k-step expert data, 25 over
#: %BC's 20k steps of pendulum-random, where a plain MLP BC has converged.
_REFERENCE_STEPS = {"iql": 10_000, "mlp-bc": 5_000, "pct-bc": 5_000}

#: qt's η and β, chosen per dataset and seed on validation episodes from its defaults (η 1,
#: β 10) and both terms off (η 0, β 0: the DT action loss, the critic still trained and its
#: candidate-return choice still offered at inference). The QT paper (Hu et al. 2024) sets η
#: per dataset; on our expert data every setting with a term on fell far below dt while
#: the terms-off run matched it (benchmarks/results/beyond_data.md), and on random data the
#: terms are what lifts qt above the data, so no single setting serves every level.
_QT_CANDIDATES = {"qt": {"eta0-beta0": {"eta": "0", "beta": "0"}}}

#: dt and bc keep their checkpoints (every 500 steps in the paper preset) and their evaluation
#: chooses one on validation episodes with the target: their validation returns swing by
#: hundreds between checkpoints 500 steps apart (the learning curves in
#: benchmarks/results/pendulum.md), so the last one is often not the best.
_CHOOSE_CHECKPOINT = {"dt": {"keep_checkpoints": True}, "bc": {"keep_checkpoints": True}}

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        description="every stage at toy size (about 2 minutes on 2 CPU cores): tiny datasets "
                    "from a 400-step SAC run, a 1-layer 32-wide DT trained 150 steps, the "
                    "d3rlpy reference rows 40 updates, 1 seed, 5 validation and 10 test "
                    "episodes. Numbers are meaningless; it checks the plumbing.",
        generate={"random_steps": 2_000, "expert_steps": 1_000, "medium_steps": 1_000,
                  "agent_steps": 400, "checkpoint_every": 100, "ref_episodes": 4,
                  "eval_episodes": 2, "num_envs": 4},
        train={"steps": 150, "warmup_steps": 30, "learning_rate": 1e-3, "batch_size": 32,
               "context_length": 10, "embed_dim": 32, "n_layer": 1, "n_head": 1,
               "dropout": 0.0, "eval_every": 75, "log_every": 25, "checkpoint_every": 150},
        evaluate={"episodes": 10, "validation_episodes": 5},
        reference_steps={"iql": 40, "mlp-bc": 40, "pct-bc": 40},
        seeds=(0,),
        hook_episodes=3,
        method_candidates=_QT_CANDIDATES,
        data_dir="smoke",
    ),
    "quick": Preset(
        name="quick",
        description="D4RL-sized default datasets (shared with `offline-dt generate` and the "
                    "paper preset; SAC 20k steps), DT embed 64, 2 layers, K=20, no dropout, "
                    "2000 steps (lr 3e-4, warmup 500), d3rlpy IQL 5k updates and MLP BC / %BC "
                    "2k updates, 1 seed, targets chosen on 50 validation episodes, 50 test "
                    "episodes.",
        generate={},
        train=dict(_SMALL_DT, steps=2000, eval_every=500, checkpoint_every=500),
        evaluate={"episodes": 50},
        reference_steps={"iql": 5_000, "mlp-bc": 2_000, "pct-bc": 2_000},
        seeds=(0,),
        hook_episodes=10,
        method_candidates=_QT_CANDIDATES,
    ),
    "paper": Preset(
        name="paper",
        description="D4RL-sized datasets (random 1M, medium/expert 200k steps), 3 training "
                    "seeds, targets chosen on 50 validation episodes (dt and bc: with the "
                    "checkpoint, among those kept every 500 steps), 200 test episodes. The "
                    "paper's gym config (embed 128, 3 layers, K=20, 100k steps) would take "
                    "days on this 2-core CPU, so the DT is shrunk to embed 64, 2 layers, K=20, "
                    "no dropout, 2500 steps (lr 3e-4, warmup 500); see "
                    "benchmarks/results/pendulum.md for wall time. Reference rows (d3rlpy "
                    "defaults): IQL 10k updates, the budget the issue measured (-230.9 on "
                    "pendulum-random; 27 s per 1k updates on one loaded core here), MLP BC and "
                    "%BC 5k updates (3.4 s per 1k; 2.5 passes over the expert data).",
        generate={},
        train=dict(_SMALL_DT, steps=2500, eval_every=500, checkpoint_every=500),
        method_train=_CHOOSE_CHECKPOINT,
        evaluate={"episodes": 200},
        reference_steps=dict(_REFERENCE_STEPS),
        seeds=(0, 1, 2),
        hook_episodes=10,
        method_candidates=_QT_CANDIDATES,
    ),
}
PRESETS["hopper"] = dataclasses.replace(
    PRESETS["paper"], name="hopper",
    description="Hopper-v5 (MuJoCo; pip install -e '.[mujoco]'): the behaviour agent is SAC "
                "with rl-zoo's MuJoCo settings (learning_starts 10k, SB3 defaults otherwise) "
                "for 100k env steps instead of the zoo's 1M, which does not fit a 2-core CPU "
                "in a few hours (the score it reached is the expert row); random, medium and "
                "expert 200k steps each, medium-replay its replay buffer up to the medium "
                "checkpoint (checkpoints every 5k steps), the medium checkpoint the first to "
                "reach a normalized score of 30 (D4RL's hopper-medium scores about a third "
                "of its expert; at 50, this agent's first such checkpoint was its expert). "
                "The paper preset's small DT (embed "
                "64, 2 layers, K=20, 2500 steps), 3 training seeds, targets chosen on 50 "
                "validation episodes, 100 test episodes (up to 1000 steps each); the last "
                "checkpoint is evaluated (none kept).",
    generate={"agent_steps": 100_000, "checkpoint_every": 5_000, "random_steps": 200_000,
              "medium_target_score": 30.0},
    evaluate={"episodes": 100},
    hook_episodes=5,
    method_train={},
)
PRESETS["paper-band"] = dataclasses.replace(
    PRESETS["paper"], name="paper-band",
    description="the paper preset with a band-attention DT (--attention band: every token sees "
                "the last 60 tokens at every layer; the key/value cache it acts from is exact) "
                "trained on whole 200-step episodes, 8 per update (1600 predicted actions per "
                "update against the window DT's 1280), 2500 steps, its last checkpoint "
                "evaluated; the rest as in paper.",
    train=dict(_SMALL_DT, steps=2500, eval_every=500, checkpoint_every=500, attention="band",
               batch_size=8),
    method_train={})
PRESETS["paper-long"] = dataclasses.replace(
    PRESETS["paper"], name="paper-long",
    description="the paper preset with twice the training (5000 DT steps): the learning curves "
                "of the paper preset are still rising at 2500 steps; reference rows as in "
                "paper.",
    train=dict(_SMALL_DT, steps=5000, eval_every=1000, checkpoint_every=1000))

#: The DT paper's gym config: ``TrainConfig``'s own defaults (Chen et al. 2021, Table 8), only
#: the step budget and what is kept along the way set here.
PRESETS["paper-gpu"] = dataclasses.replace(
    PRESETS["paper"], name="paper-gpu",
    description="the paper preset with the DT paper's own gym config (offline-dt train's "
                "defaults: embed 128, 3 layers, 1 head, K=20, dropout 0.1, lr 1e-4, batch 64, "
                "warmup min(10k, steps/10)) at 15000 steps instead of its 100k, a checkpoint "
                "kept every 3000; for a GPU (--device cuda: fp32 with the loss captured as "
                "CUDA graphs; benchmarks/results/speed-cuda.md), where a run takes minutes. "
                "On 2 CPU cores a run takes hours (benchmarks/results/paper-budget-15k-cpu.md "
                "trained this config for pendulum-full-replay). Reference rows as in paper.",
    train={"steps": 15_000, "eval_every": 3_000, "checkpoint_every": 3_000, "log_every": 500})


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, found {name!r}")
    return PRESETS[name]


def _replace(obj: Any, overrides: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown} for {type(obj).__name__}")
    return dataclasses.replace(obj, **overrides)


class Timer:
    """Wall seconds per stage and per run, written to ``timings.json``."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.runs: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def add(self, stage: str, seconds: float, run: str | None = None, reused: bool = False
            ) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        if run is not None:
            self.runs.append({"stage": stage, "run": run, "seconds": round(seconds, 3),
                              "reused": reused})

    def to_dict(self) -> dict[str, Any]:
        return {"stages": {k: round(v, 3) for k, v in self.stages.items()},
                "total": round(time.perf_counter() - self.t0, 3), "runs": self.runs}


# ---------------------------------------------------------------------------------- behaviour
class MixturePolicy:
    """Episode-level mixture of batched callables: env ``j`` of a wave follows policy
    ``episode_seed % len(policies)`` for its whole episode (medium-expert's behaviour)."""

    def __init__(self, fns: Sequence[Callable[[np.ndarray], np.ndarray]]) -> None:
        self.fns = list(fns)
        self.assign = np.zeros(0, np.int64)

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        seeds = list(seeds) if seeds is not None else list(range(num_envs))
        self.assign = np.asarray(seeds, np.int64) % len(self.fns)

    def act(self, observations: np.ndarray) -> np.ndarray:
        out = None
        for k, fn in enumerate(self.fns):
            rows = np.flatnonzero(self.assign == k)
            if rows.size == 0:
                continue
            a = np.asarray(fn(observations[rows]))
            if out is None:
                out = np.zeros((len(observations), *a.shape[1:]), a.dtype)
            out[rows] = a
        return out

    def observe(self, rewards: np.ndarray) -> None:
        pass


def behaviour_policy(level: str, metas: dict[str, dict[str, Any]], env_id: str, device: str,
                     seed: int) -> tuple[Any, dict[str, Any]]:
    """The policy that produced a level's data, and a JSON description of it.

    ``metas`` maps level → dataset metadata (``medium-expert`` needs ``medium`` and
    ``expert``). SAC acts stochastically, as it did when collecting (metadata ``policy``).

    Raises:
        ValueError: ``level`` is a replay level (no single policy wrote it) or its metadata
            names no checkpoint.
    """
    if level not in BEHAVIOUR_LEVELS:
        raise ValueError(f"{level}: no behaviour policy (a sequence of policies during SAC "
                         f"training wrote it); behaviour levels are {list(BEHAVIOUR_LEVELS)}")
    from datagen.agents import load_behaviour_policy

    if level == "random":
        space = gym.make(env_id).action_space
        return RandomPolicy(space, seed), {"behaviour": "uniform random"}
    torch.manual_seed(seed)

    def policy_path(md: dict[str, Any]) -> tuple[Path, bool]:
        ckpt = md.get("checkpoint")
        if not ckpt:
            raise ValueError(f"{md.get('dataset_id', level)}: metadata names no behaviour "
                             "checkpoint")
        return Path(ckpt), md.get("policy", "stochastic") == "stochastic"

    def load(path: Path, stochastic: bool) -> Any:
        return load_behaviour_policy(path, env_id, device, deterministic=not stochastic,
                                     seed=seed)

    if level == "medium-expert":
        (med, s_med), (exp, s_exp) = policy_path(metas["medium"]), policy_path(metas["expert"])
        desc = {"behaviour": [str(med), str(exp)], "stochastic": s_med and s_exp,
                "mixture": "per episode by seed parity: even medium, odd expert"}
        return MixturePolicy([load(med, s_med), load(exp, s_exp)]), desc
    ckpt, stochastic = policy_path(metas[level])
    return CallablePolicy(load(ckpt, stochastic)), {"behaviour": str(ckpt),
                                                    "stochastic": stochastic}


# ---------------------------------------------------------------------------------- stages
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
    from offline_dt.training.configs import from_dict
    from offline_dt.training.loop import (
        CHECKPOINT_NAME,
        TrainConfig,
        config_differences,
        load_checkpoint,
        train,
    )

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


@dataclass(frozen=True)
class JobSpec:
    """One (level, seed, method) run of :func:`reproduce`, picklable for worker processes."""

    env_id: str
    preset: str
    root: str
    device: str
    level: str
    seed: int
    method: str
    dataset: str
    metas: dict[str, dict[str, Any]]
    label: str
    #: the level's dataset was regenerated (``reproduce(overwrite=...)``): train afresh
    fresh: bool = False


def _train_job(spec: JobSpec, p: Preset, run_dir: Path) -> dict[str, float]:
    """Train (or reuse) a method of the one training loop and evaluate it: seconds per stage."""
    from offline_dt.training.loop import TrainConfig

    tcfg = _replace(TrainConfig(
        dataset=spec.dataset, env_id=spec.env_id, method=spec.method, seed=spec.seed,
        device=spec.device, run_dir=run_dir, progress=False, eval_episodes=p.hook_episodes),
        {**p.train, **p.method_train.get(spec.method, {})}, "preset train")
    ecfg = _replace(EvalConfig(checkpoint=run_dir, env_id=spec.env_id, seed=spec.seed,
                               device=spec.device), p.evaluate, "preset evaluate")
    # The hook's episodes are validation episodes of its own: never a test episode.
    hook = make_eval_hook() if tcfg.eval_every > 0 else None
    ev, secs = train_and_evaluate(tcfg, ecfg, hook, candidate_configs(tcfg, p))
    return {"eval": ev, **secs}


def candidate_configs(tcfg: Any, p: Preset) -> list[Any]:
    """TrainConfigs of ``p.method_candidates[tcfg.method]``: ``tcfg`` with each alternative's
    method options, in ``<run dir>/candidates/<name>`` (deeper than the report reads)."""
    return [dataclasses.replace(tcfg, run_dir=Path(tcfg.run_dir) / "candidates" / name,
                                method_options={**tcfg.method_options, **options})
            for name, options in p.method_candidates.get(tcfg.method, {}).items()]


def _reference_job(spec: JobSpec, p: Preset, run_dir: Path) -> dict[str, float]:
    """Train (or reuse) a d3rlpy reference row and evaluate it: seconds per stage."""
    from offline_dt.study.reference import ReferenceConfig, run_reference

    if spec.method not in p.reference_steps:
        raise ValueError(f"preset {p.name}: reference_steps has no budget for "
                         f"{spec.method!r} (has {sorted(p.reference_steps)})")
    cfg = ReferenceConfig(
        dataset=spec.dataset, method=spec.method, env_id=spec.env_id, seed=spec.seed,
        steps=p.reference_steps[spec.method], device=spec.device, run_dir=run_dir,
        episodes=int(p.evaluate.get("episodes", EvalConfig.episodes)), overwrite=True)
    ev, secs = run_reference(cfg)
    return {"eval": ev, **secs}


def _baseline_job(spec: JobSpec, p: Preset, run_dir: Path) -> tuple[dict[str, Any], float,
                                                                      bool]:
    """Evaluate (or reuse) the random or behaviour baseline: (eval.json, seconds, reused)."""
    method, seed, env_id = spec.method, spec.seed, spec.env_id
    meta = spec.metas[spec.level]
    eval_episodes = int(p.evaluate.get("episodes", EvalConfig.episodes))
    if method == "random":
        def make() -> tuple[Any, dict[str, Any]]:
            return RandomPolicy(gym.make(env_id).action_space, seed), {
                "policy": "uniform random"}
    else:
        def make() -> tuple[Any, dict[str, Any]]:
            pol, desc = behaviour_policy(spec.level, spec.metas, env_id, spec.device, seed)
            return pol, {"policy": desc}
    config = {"method": method, "env_id": env_id, "dataset": spec.dataset,
              "level": spec.level, "episodes": eval_episodes, "seed": seed,
              "episode_seeds": EPISODE_SEEDS}
    return evaluate_baseline(run_dir, method, env_id, make, config, eval_episodes, seed,
                             meta.get("ref_min_score"), meta.get("ref_max_score"))


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Train and evaluate one run (a method of the training loop: dt, bc, qt; a d3rlpy
    reference row: iql, mlp-bc, pct-bc) or evaluate a baseline (random, behaviour), reusing
    finished work. Returns ``{"eval", "timings": [(stage, seconds, run, reused)], "took",
    "label"}``; reference rows count as stages ``reference_train`` and ``reference_evaluate``."""
    p = get_preset(spec.preset)
    root = Path(spec.root)
    run_dir = (root / "runs" / p.name / spec.env_id / Path(spec.dataset).stem / spec.method
               / f"seed{spec.seed}")
    run = str(run_dir.relative_to(root))
    if spec.fresh and spec.method not in BASELINES:
        for name in ("config.json", "eval.json"):  # nothing of the old run is reused
            (run_dir / name).unlink(missing_ok=True)
            for cand in p.method_candidates.get(spec.method, {}):
                (run_dir / "candidates" / cand / name).unlink(missing_ok=True)
    if spec.method in BASELINES:
        ev, took, reused = _baseline_job(spec, p, run_dir)
        timings = [("baselines", took, run, reused)]
    else:
        reference = spec.method in REFERENCE_METHODS
        out = (_reference_job if reference else _train_job)(spec, p, run_dir)
        ev = out.pop("eval")
        prefix = "reference_" if reference else ""
        timings = [(prefix + stage, s, run, s == 0.0) for stage, s in out.items()]
        took = sum(out.values())
    return {"eval": ev, "timings": timings, "took": took, "label": spec.label}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def _map_jobs(specs: Sequence[JobSpec], workers: int) -> Iterator[dict[str, Any]]:
    """``run_job`` over ``specs``: in order in this process (``workers == 1``), else in a
    spawn-context process pool, yielding results as runs finish."""
    if workers == 1:
        yield from map(run_job, specs)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(run_job, spec) for spec in specs]
        for fut in as_completed(futures):
            yield fut.result()


def _generate_stage(p: Preset, env_id: str, levels: list[str], root: Path, device: str,
                    timer: Timer, overwrite: Sequence[str] = ()
                    ) -> tuple[Any, Any, dict[str, Path], dict[str, dict]]:
    """Generate (or reuse) the levels' datasets, regenerating those of ``overwrite``; return
    (GenerateConfig, GenerateResult, level → HDF5 path, level → dataset metadata)."""
    from datagen.generate import GenerateConfig, generate
    from offline_dt.data import read_hdf5

    data_root = root / p.data_dir if p.data_dir else root
    gen_levels = list(levels)
    if "medium-expert" in gen_levels:
        gen_levels += [lv for lv in ("medium", "expert") if lv not in gen_levels]
    gcfg = _replace(GenerateConfig(
        env_id=env_id, levels=[lv for lv in LEVELS if lv in gen_levels],
        out_dir=data_root / "d4rl", minari_root=data_root / "minari",
        agents_dir=data_root / "agents", device=device, overwrite=list(overwrite) or False),
        p.generate, "preset generate")
    log.info("reproduce %s %s: stage generate (%s)", env_id, p.name, ", ".join(gcfg.levels))
    t = time.perf_counter()
    gen = generate(gcfg)
    timer.add("generate", time.perf_counter() - t)
    log.info("reproduce: stage generate done in %.1fs", timer.stages["generate"])
    paths = {lv: Path(gen.paths[lv]["hdf5"]) for lv in gcfg.levels}
    metas = {lv: read_hdf5(paths[lv]).metadata for lv in gcfg.levels}
    return gcfg, gen, paths, metas


def _run_jobs(specs: Sequence[JobSpec], workers: int, timer: Timer, progress: bool,
              desc: str) -> None:
    """Run every job (in ``workers`` processes), recording its timings in ``timer``."""
    bar = tqdm(total=len(specs), desc=desc, unit="run",
               disable=not progress or not sys.stderr.isatty())
    for out in _map_jobs(specs, workers):
        for stage, secs, run, reused in out["timings"]:
            timer.add(stage, secs, run=run, reused=reused)
        bar.update(1)
        ev = out["eval"]
        log.info("reproduce %s: mean return %.1f ± %.1f (± = episode-level 95%% CI of this "
                 "run, not over training runs; %s, %.1fs)", out["label"], ev["mean_return"],
                 ev["ci95"], "reused" if out["took"] == 0.0 else "done", out["took"])
    bar.close()


def _checked_levels(levels: Sequence[str] | None) -> list[str]:
    levels = list(levels or LEVELS)
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise ValueError(f"levels: unknown {unknown}; choose from {list(LEVELS)}")
    return levels


def reproduce_jobs(levels: Sequence[str], seeds: Sequence[int],
                   methods: Sequence[str] | None = None) -> list[tuple[str, int, str]]:
    """(level, seed, method) of every run of :func:`reproduce`: the trained methods and the
    reference rows everywhere (longest jobs first), then the baselines: random everywhere,
    behaviour only on :data:`BEHAVIOUR_LEVELS`. ``methods`` (default :func:`all_methods`)
    picks which; their order is :func:`all_methods`'."""
    chosen = set(all_methods() if methods is None else methods)
    learned = [m for m in all_methods() if m in chosen and m not in BASELINES]
    jobs = [(lv, s, m) for lv in levels for s in seeds for m in learned]
    jobs += [(lv, s, m) for lv in levels for s in seeds for m in BASELINES
             if m in chosen and (m == "random" or lv in BEHAVIOUR_LEVELS)]
    return jobs


def reproduce_methods(methods: Sequence[str] | None, env_id: str) -> list[str]:
    """The methods a reproduce run includes, checked before any work.

    ``None``: :func:`all_methods`, less the reference rows when d3rlpy is not installed and
    less ``iql`` when ``env_id`` has no Box action space (each with a warning). Named
    methods are all run, or refused here.

    Raises:
        ValueError: an unknown method, or ``iql`` named for an env without Box actions.
        offline_dt.study.reference.MissingDependencyError: a reference row named without d3rlpy;
            the message gives the install command.
    """
    from offline_dt.study.reference import MissingDependencyError, import_d3rlpy

    known = all_methods()
    if methods is not None:
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; choose from {list(known)}")
    chosen = list(known if methods is None else dict.fromkeys(methods))
    if any(m in REFERENCE_METHODS for m in chosen):
        try:
            import_d3rlpy()
        except MissingDependencyError as e:
            if methods is not None:
                raise
            log.warning("reproduce: reference rows %s left out: %s", list(REFERENCE_METHODS), e)
            chosen = [m for m in chosen if m not in REFERENCE_METHODS]
    if "iql" in chosen and not isinstance(gym.make(env_id).action_space, gym.spaces.Box):
        if methods is not None:
            raise ValueError(f"methods: 'iql' needs a Box action space; {env_id} has "
                             f"{gym.make(env_id).action_space}")
        log.warning("reproduce: iql left out: %s has no Box action space", env_id)
        chosen.remove("iql")
    return chosen


def reproduce(
    env_id: str = "Pendulum-v1",
    preset: str = "quick",
    root: str | Path = Path("data"),
    device: str = "auto",
    *,
    levels: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    workers: int = 1,
    methods: Sequence[str] | None = None,
    overwrite: Sequence[str] = (),
) -> pd.DataFrame:
    """The whole study: generate → train dt, bc (and qt) and the d3rlpy reference rows (iql,
    mlp-bc, pct-bc) per level and seed → evaluate them, random and (on the levels one policy
    wrote) behaviour on the same test episodes → report.

    Args:
        env_id: Gymnasium id (the datagen levels need a trainable behaviour agent).
        preset: a name in :data:`PRESETS` (``smoke``, ``quick``, ``paper``, ...).
        root: output root (datasets, runs, reports; see the module docstring).
        device: torch device for training, evaluation and the behaviour agent.
        levels: dataset levels (default: all six).
        seeds: training seeds (default: the preset's).
        progress: a tqdm bar over the runs (TTY only) and INFO log lines per run.
        workers: runs trained and evaluated at once, each in its own process with
            ``cpu_count // workers`` torch threads (1: all in this process). Small DTs use a
            core poorly, so on a 2-core CPU two single-threaded workers finish the study
            sooner than one two-threaded process. Every run is seeded the same whatever
            ``workers`` is (the thread count can change float rounding, nothing else).
            Stage seconds in ``timings.json`` are then summed over workers (CPU-side time),
            while ``total`` stays wall time.
        methods: which rows to run (default all, see :func:`reproduce_methods`: the
            reference rows need d3rlpy, ``iql`` Box actions). Runs of other methods already
            under ``root`` stay and are reported too.
        overwrite: levels (of ``levels``) whose datasets are regenerated, with the behaviour
            agent reused (``GenerateConfig.overwrite``), and whose trained and reference runs
            are trained and evaluated again; baselines are kept (they do not read the data).

    Returns:
        The results table (also in ``<root>/reports/<env>/<preset>/results.csv``), with
        ``timings.json`` (wall seconds per stage and per run) beside it.

    Raises:
        ValueError: unknown preset, level or method, ``workers < 1``, an ``overwrite``
            level not in ``levels``.
        offline_dt.study.reference.MissingDependencyError: a reference row named without d3rlpy.
    """
    p = get_preset(preset)
    root = Path(root)
    levels, seeds = _checked_levels(levels), list(seeds if seeds is not None else p.seeds)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, found {workers}")
    stray = [lv for lv in overwrite if lv not in levels]
    if stray:
        raise ValueError(f"overwrite: {stray} are not among the levels run ({levels})")
    chosen = reproduce_methods(methods, env_id)
    report_dir = root / "reports" / env_id / p.name
    timer = Timer()
    dev = str(resolve_device(device)) if device == "auto" else device
    gcfg, gen, paths, metas = _generate_stage(p, env_id, levels, root, dev, timer, overwrite)
    jobs = reproduce_jobs(levels, seeds, chosen)
    specs = [JobSpec(env_id=env_id, preset=p.name, root=str(root), device=dev, level=lv,
                     seed=s, method=m, dataset=str(paths[lv]), metas=metas,
                     label=f"[{n}/{len(jobs)}] {m} {paths[lv].stem} seed{s}",
                     fresh=lv in overwrite)
             for n, (lv, s, m) in enumerate(jobs, 1)]
    _run_jobs(specs, workers, timer, progress, f"reproduce {p.name}")
    t = time.perf_counter()
    table = report(root / "runs" / p.name, report_dir, quiet=not progress)
    timer.add("report", time.perf_counter() - t)
    timings = {"env_id": env_id, "preset": p.name, "seeds": seeds, "levels": levels,
               "methods": chosen, "device": dev, "workers": workers, **timer.to_dict(),
               "generate_stages": {k: round(v, 3) for k, v in gen.stage_seconds.items()}}
    save_json(timings, report_dir / "timings.json")
    save_json({"preset": p, "generate_config": gcfg}, report_dir / "preset.json")
    log.info("reproduce %s %s: done in %.1fs; report in %s", env_id, p.name,
             timings["total"], report_dir)
    return table
