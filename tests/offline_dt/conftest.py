"""Tiny datasets and a tiny training config shared by the offline_dt tests.

Datasets are built directly as ``OfflineDataset`` (no rollouts): a Pendulum-shaped Box dataset
and a CartPole-shaped Discrete dataset whose actions are a deterministic function of the
observation, so a small model can fit them. ``box_hdf5``/``box_minari`` write them to tmp dirs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_dt.data import OfflineDataset, write_hdf5, write_minari

PENDULUM_OBS = gym.spaces.Box(np.array([-1, -1, -8], np.float32),
                              np.array([1, 1, 8], np.float32), (3,), np.float32)
PENDULUM_ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
_HI = np.array([4.8, np.inf, 0.41887903, np.inf], np.float32)
CARTPOLE_OBS = gym.spaces.Box(-_HI, _HI, (4,), np.float32)
CARTPOLE_ACT = gym.spaces.Discrete(2)


def make_box_dataset(lengths: tuple[int, ...] = (12, 30, 7, 25, 18, 40), seed: int = 0,
                     **meta) -> OfflineDataset:
    """Pendulum-shaped: obs (N, 3) in the Pendulum box, action = 2 tanh(1.5 obs·w) in [-2, 2],
    reward −|obs|² so returns differ per episode; the last episode is cut off (no flag)."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    obs[:, 2] *= 8
    w = np.array([1.0, -0.5, 0.1], np.float32)
    actions = (2 * np.tanh(1.5 * obs @ w))[:, None].astype(np.float32)
    rewards = -(obs ** 2).sum(1).astype(np.float32)
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    timeouts[ends[:-1]] = True
    metadata = {"env_id": "Pendulum-v1", "dataset_id": "tiny/box-v0",
                "ref_min_score": -1200.0, "ref_max_score": -150.0, **meta}
    return OfflineDataset.from_flat(
        observations=obs, actions=actions, rewards=rewards, terminals=terminals,
        timeouts=timeouts, observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT,
        metadata=metadata, source="tiny-box")


def make_discrete_dataset(lengths: tuple[int, ...] = (15, 9, 22, 30, 11), seed: int = 1
                          ) -> OfflineDataset:
    """CartPole-shaped: action = [obs0 + obs2 > 0]; reward 1 per step; episodes terminate."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = rng.normal(0, 0.2, (n, 4)).astype(np.float32)
    actions = (obs[:, 0] + obs[:, 2] > 0).astype(np.int64)
    rewards = np.ones(n, np.float32)
    terminals = np.zeros(n, bool)
    terminals[np.cumsum(lengths) - 1] = True
    return OfflineDataset.from_flat(
        observations=obs, actions=actions, rewards=rewards, terminals=terminals,
        timeouts=np.zeros(n, bool), observation_space=CARTPOLE_OBS, action_space=CARTPOLE_ACT,
        metadata={"env_id": "CartPole-v1", "dataset_id": "tiny/discrete-v0"},
        source="tiny-discrete")


# SACo by hand (tests/offline_dt/data/test_characteristics.py, test_report_characteristics.py)
# (obs0, obs1, action) rows; every dimension spans [0, 1] over the two datasets, so a bin is
# floor(100 x) (float32 values: 0.004 -> 0.4, 0.999 -> 99.9, 0.995 -> 99.5), 1.0 -> bin 99.
SACO_REPLAY = [(0.0, 0.0, 0.0),        # (0, 0, 0)
               (0.004, 0.0, 0.0),      # (0, 0, 0) again
               (0.5, 0.25, 1.0),       # (50, 25, 99)
               (1.0, 1.0, 0.011),      # (99, 99, 1)
               (0.999, 0.995, 0.019),  # (99, 99, 1) again
               (0.375, 0.625, 0.5)]    # (37, 62, 50): 4 unique bins
SACO_MEDIUM = [(0.0, 0.0, 0.0),        # (0, 0, 0)
               (0.009, 0.0099, 0.0),   # (0, 0, 0) again
               (0.5, 0.25, 1.0)]       # (50, 25, 99): 2 unique bins -> SACo 2 / 4 = 0.5


def saco_dataset(rows, rewards, ends, level, **meta) -> OfflineDataset:
    a = np.asarray(rows, np.float32)
    timeouts = np.zeros(len(a), bool)
    timeouts[list(ends)] = True
    return OfflineDataset.from_flat(
        observations=a[:, :2], actions=a[:, 2:], rewards=np.asarray(rewards, np.float32),
        terminals=np.zeros(len(a), bool), timeouts=timeouts,
        observation_space=gym.spaces.Box(-1.0, 2.0, (2,), np.float32),
        action_space=gym.spaces.Box(0.0, 1.0, (1,), np.float32),
        metadata={"env_id": "Toy-v0", "level": level, "ref_min_score": 0.0,
                  "ref_max_score": 40.0, **meta}, source=level)


def saco_replay() -> OfflineDataset:
    return saco_dataset(SACO_REPLAY, [1, 2, 3, 4, 5, 6], [2, 5], "full-replay")


def saco_medium() -> OfflineDataset:
    # episodes [10] and [10, 20]: returns 10 and 30, mean 20
    return saco_dataset(SACO_MEDIUM, [10, 10, 20], [0, 2], "medium")


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; one thread is fastest and immune to
    oversubscribed CI cores (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def box_dataset() -> OfflineDataset:
    return make_box_dataset()


@pytest.fixture(scope="session")
def discrete_dataset() -> OfflineDataset:
    return make_discrete_dataset()


@pytest.fixture(scope="session")
def box_hdf5(tmp_path_factory, box_dataset) -> Path:
    return write_hdf5(box_dataset, tmp_path_factory.mktemp("h5") / "tiny-box-v0.hdf5")


@pytest.fixture(scope="session")
def discrete_hdf5(tmp_path_factory, discrete_dataset) -> Path:
    return write_hdf5(discrete_dataset,
                      tmp_path_factory.mktemp("h5d") / "tiny-discrete-v0.hdf5")


@pytest.fixture(scope="session")
def minari_root_dir(tmp_path_factory, box_dataset) -> Path:
    """A Minari root holding ``tiny/box-v0`` (the box dataset)."""
    root = tmp_path_factory.mktemp("minari")
    write_minari(box_dataset, "tiny/box-v0", root=root)
    return root


@pytest.fixture
def box_minari(minari_root_dir, monkeypatch) -> str:
    """The Minari id of the box dataset, with ``MINARI_DATASETS_PATH`` pointing at its root."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root_dir))
    return "tiny/box-v0"


TINY_TRAIN = dict(
    steps=20, batch_size=8, context_length=5, embed_dim=16, n_layer=1, n_head=1,
    dropout=0.1, warmup_steps=5, max_timestep=64, checkpoint_every=10, log_every=5,
    progress=False, device="cpu", learning_rate=1e-3,
)


@pytest.fixture
def tiny_config(tmp_path) -> Callable[..., object]:
    """``tiny_config(dataset, **overrides)`` → a small ``TrainConfig`` writing under tmp_path."""
    from offline_dt.training import TrainConfig

    def make(dataset: str | Path, **overrides) -> TrainConfig:
        kw = {**TINY_TRAIN, "run_dir": tmp_path / "run", **overrides}
        return TrainConfig(dataset=str(dataset), **kw)

    return make


def replace(cfg, **changes):
    return dataclasses.replace(cfg, **changes)


def interrupted_and_full(full, tmp_path: Path, env_id: str | None = None
                         ) -> tuple[dict, dict]:
    """Train ``full`` (a TrainConfig of 10 steps, checkpoints every 5) in one go, and again
    as 5 steps then a resume to 10 in ``tmp_path/part``; the two final networks' state dicts
    (``full``'s, the resumed run's; a multi-task run's loaded for ``env_id``), for an
    exact-resume test to compare."""
    from offline_dt.training import load_checkpoint, train

    train(full)
    part = dataclasses.replace(full, steps=5, run_dir=tmp_path / "part")
    train(part)
    train(dataclasses.replace(part, steps=10, resume=True))
    return (load_checkpoint(full.run_dir, env_id=env_id).model.state_dict(),
            load_checkpoint(part.run_dir, env_id=env_id).model.state_dict())
