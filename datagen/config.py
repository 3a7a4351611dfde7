"""``offline-dt generate``'s settings (:class:`GenerateConfig`), their checks, and the facts
every dataset records about how it was made (:func:`package_versions`, :func:`config_dict`)."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_dt.data.d4rl import LEVELS

__all__ = ["GenerateConfig", "config_dict", "level_steps", "overwritten_levels",
           "package_versions", "resolve_levels", "validate_config"]


@dataclass
class GenerateConfig:
    """Settings of ``offline-dt generate`` (defaults: Pendulum-v1, D4RL-sized levels)."""

    env_id: str = field(default="Pendulum-v1", metadata={
        "help": "Gymnasium env id: flat Box observations with an SB3 behaviour agent, or an "
                "env of a scripted recipe (PointMaze_*-v3: waypoint planner; "
                "MiniGrid-FourRooms-v0: BFS expert; Dict/image observations)"})
    seed: int = field(default=0, metadata={"help": "seed of training, rollouts and evals"})
    levels: list[str] | None = field(default=None, metadata={
        "help": "dataset levels to write (default: every level of the env's recipe: all six "
                "for an SB3 behaviour agent, random expert for PointMaze, random medium "
                "expert for MiniGrid)", "choices": list(LEVELS)})
    random_steps: int = field(default=1_000_000, metadata={
        "help": "transitions in the random dataset"})
    expert_steps: int = field(default=200_000, metadata={
        "help": "transitions in the expert dataset"})
    medium_steps: int = field(default=200_000, metadata={
        "help": "transitions in the medium dataset"})
    agent_steps: int | None = field(default=None, metadata={
        "help": "behaviour-agent training env steps (None: rl-zoo budget, SAC Pendulum 20000)"})
    checkpoint_every: int = field(default=250, metadata={
        "help": "env steps between agent checkpoints / learning-curve evaluations"})
    medium_target_score: float = field(default=50.0, metadata={
        "help": "D4RL normalized score (0..100) the medium checkpoint must first reach"})
    ref_episodes: int = field(default=100, metadata={
        "help": "episodes for the reference scores (random and trained agent)"})
    eval_episodes: int = field(default=10, metadata={
        "help": "deterministic eval episodes per learning-curve checkpoint"})
    num_envs: int = field(default=50, metadata={
        "help": "sub-environments of the synchronous vector env used for rollouts"})
    processes: int = field(default=0, metadata={
        "help": "processes for the random rollout, which splits its sub-envs among them "
                "(same data for any value; 0: one per CPU core)"})
    out_dir: Path = field(default=Path("data/d4rl"), metadata={
        "help": "directory of the D4RL-style HDF5 files"})
    minari_root: Path | None = field(default=None, metadata={
        "help": "Minari datasets root (default data/minari or $MINARI_DATASETS_PATH)"})
    agents_dir: Path = field(default=Path("data/agents"), metadata={
        "help": "behaviour-agent artifacts (weights, learning curve, replay buffer)"})
    overwrite: bool | list[str] = field(default=False, metadata={
        "help": "true: regenerate and replace every requested dataset (and a complete agent "
                "trained with another config) instead of reusing matching ones / refusing "
                "mismatching ones; or LEVEL ...: regenerate only those levels, reusing the "
                "behaviour agent (never retrained; e.g. --overwrite random)",
        "choices": list(LEVELS)})
    device: str = field(default="auto", metadata={
        "help": "torch device of the behaviour agent (auto, cpu, cuda)"})


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the data (stored in every dataset's metadata)."""
    import gymnasium
    import minari
    import stable_baselines3

    try:
        from importlib.metadata import version

        odt = version("offline-dt")
    except Exception:  # not installed: the source tree's version
        odt = "0.1.0"
    return {"python": platform.python_version(), "numpy": np.__version__,
            "gymnasium": str(gymnasium.__version__),
            "stable-baselines3": str(stable_baselines3.__version__),
            "torch": str(torch.__version__), "minari": str(minari.__version__),
            "offline-dt": odt}


def validate_config(cfg: GenerateConfig) -> None:
    """Check ``cfg`` before any work.

    Raises:
        ValueError: unknown or no levels, ``overwrite`` naming levels not generated, a
            negative ``processes``, non-positive step/episode counts, ``medium_target_score``
            outside (0, 100].
    """
    if cfg.levels is None:
        raise ValueError("levels: resolve the default (None) first (resolve_levels)")
    unknown = [lv for lv in cfg.levels if lv not in LEVELS]
    if unknown:
        raise ValueError(f"levels: unknown level(s) {unknown}; choose from {list(LEVELS)}")
    if not cfg.levels:
        raise ValueError(f"levels: at least one level is needed, choose from {list(LEVELS)}")
    if not isinstance(cfg.overwrite, bool):
        stray = [lv for lv in cfg.overwrite if lv not in cfg.levels]
        if stray:
            raise ValueError(f"overwrite: {stray} are not among the levels generated "
                             f"({list(cfg.levels)}); name levels of --levels, or pass "
                             "--overwrite true for all of them")
    if not isinstance(cfg.processes, int | np.integer) or cfg.processes < 0:
        raise ValueError(f"processes: must be 0 (one per core) or positive, "
                         f"found {cfg.processes!r}")
    for name in ("random_steps", "expert_steps", "medium_steps", "checkpoint_every",
                 "ref_episodes", "eval_episodes", "num_envs"):
        v = getattr(cfg, name)
        if not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"{name}: must be a positive integer, found {v!r}")
    if cfg.agent_steps is not None and (not isinstance(cfg.agent_steps, int | np.integer)
                                        or cfg.agent_steps <= 0):
        raise ValueError(f"agent_steps: must be a positive integer or None, "
                         f"found {cfg.agent_steps!r}")
    if not 0 < cfg.medium_target_score <= 100:
        raise ValueError(f"medium_target_score: must be in (0, 100], found "
                         f"{cfg.medium_target_score}")


def resolve_levels(cfg: GenerateConfig, available: tuple[str, ...], recipe: str
                   ) -> GenerateConfig:
    """``cfg`` with ``levels`` None replaced by ``available`` (the levels the env's recipe
    builds); explicit levels are kept.

    Raises:
        ValueError: a requested level the recipe does not build, naming the recipe and its
            levels.
    """
    if cfg.levels is None:
        return replace(cfg, levels=list(available))
    stray = [lv for lv in cfg.levels if lv in LEVELS and lv not in available]
    if stray:
        raise ValueError(f"levels: {cfg.env_id}'s recipe ({recipe}) builds {list(available)}, "
                         f"not {stray}")
    return cfg


def overwritten_levels(cfg: GenerateConfig) -> set[str]:
    """The levels ``cfg.overwrite`` regenerates: every requested one (True), none (False), or
    those it names."""
    if isinstance(cfg.overwrite, bool):
        return set(cfg.levels) if cfg.overwrite else set()
    return set(cfg.overwrite)


def level_steps(cfg: GenerateConfig, level: str) -> int | None:
    """Transitions of ``level`` (None for the replay levels: the buffer decides)."""
    return {"random": cfg.random_steps, "expert": cfg.expert_steps,
            "medium": cfg.medium_steps,
            "medium-expert": cfg.medium_steps + cfg.expert_steps}.get(level)


def config_dict(cfg: GenerateConfig) -> dict[str, Any]:
    """The config as JSON-able dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
