"""Tiny generated datasets shared by the datagen tests (session scope keeps the suite fast)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from datagen.config import GenerateConfig
from datagen.generate import GenerateResult, generate

TINY = dict(
    env_id="Pendulum-v1",
    seed=3,
    random_steps=500,
    expert_steps=400,
    medium_steps=400,
    agent_steps=300,
    checkpoint_every=100,
    ref_episodes=4,
    eval_episodes=2,
    num_envs=2,
    device="cpu",
)


def tiny_config(root: Path, **overrides) -> GenerateConfig:
    kw = {"out_dir": root / "d4rl", "minari_root": root / "minari",
          "agents_dir": root / "agents", **TINY, **overrides}
    return GenerateConfig(**kw)


@dataclasses.dataclass
class Run:
    cfg: GenerateConfig
    result: GenerateResult
    root: Path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("tiny_a")
    cfg = tiny_config(root)
    return Run(cfg, generate(cfg), root)


@pytest.fixture(scope="session")
def tiny_run_b(tmp_path_factory) -> Run:
    """Same config as ``tiny_run`` in fresh directories (agent retrained from scratch)."""
    root = tmp_path_factory.mktemp("tiny_b")
    cfg = tiny_config(root)
    return Run(cfg, generate(cfg), root)


@pytest.fixture(scope="session")
def make_config():
    """``make_config(root, **overrides)`` → a tiny GenerateConfig writing under ``root``."""
    return tiny_config
