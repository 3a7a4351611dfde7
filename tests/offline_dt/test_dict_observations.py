"""Datasets Minari's own ``DataCollector`` wrote on PointMaze (Dict observations) and MiniGrid
(an image, a Discrete direction and a text mission) load by id and by path, pass Minari's
own loading, train ``dt`` through the CLI and evaluate; the observation encoders' shapes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import gymnasium as gym
import gymnasium_robotics
import minari
import minigrid  # noqa: F401  (registers the MiniGrid envs)
import numpy as np
import pytest
import torch

from offline_dt.cli import main
from offline_dt.data import load_dataset
from offline_dt.methods import get_method
from offline_dt.nn.config import DTConfig
from offline_dt.nn.encoders import DictEncoder, ImageEncoder, state_encoder
from offline_dt.nn.transformer import DecisionTransformer

gym.register_envs(gymnasium_robotics)

MINIGRID = "MiniGrid-Empty-5x5-v0"
POINTMAZE = "PointMaze_UMaze-v3"


def _collect(env: gym.Env, dataset_id: str, episodes: int, steps: int, **kwargs) -> None:
    """Random episodes through ``minari.DataCollector``, written as ``dataset_id``."""
    collector = minari.DataCollector(env, **kwargs)
    for ep in range(episodes):
        collector.reset(seed=ep)
        collector.action_space.seed(ep)
        for _ in range(steps):
            *_, terminated, truncated, _ = collector.step(collector.action_space.sample())
            if terminated or truncated:
                break
    collector.create_dataset(dataset_id=dataset_id, algorithm_name="random")
    collector.close()


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        _collect(gym.make(POINTMAZE, max_episode_steps=25), "pointmaze/random-v0", 3, 25)
        grid = gym.make(MINIGRID)
        # MiniGrid's MissionSpace has no Minari serialisation: store it as Text, as Minari's
        # own D4RL/minigrid datasets do
        space = gym.spaces.Dict({"direction": grid.observation_space["direction"],
                                 "image": grid.observation_space["image"],
                                 "mission": gym.spaces.Text(max_length=64)})
        _collect(grid, "minigrid/random-v0", 3, 30, observation_space=space)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return root


def test_pointmaze_loads_by_id_and_path(minari_root):
    by_id = load_dataset("pointmaze/random-v0", minari_root)
    by_path = load_dataset(minari_root / "pointmaze" / "random-v0")
    assert by_id.checksum() == by_path.checksum()
    assert sorted(by_id.observations) == ["achieved_goal", "desired_goal", "observation"]
    assert by_id.observations["observation"].shape == (by_id.num_transitions, 4)
    assert by_id.obs_dim == 8 and by_id.metadata["env_id"] == POINTMAZE
    theirs = minari.MinariDataset(minari_root / "pointmaze" / "random-v0" / "data")
    ep = next(theirs.iterate_episodes())
    np.testing.assert_allclose(by_id.episode(0)["observations"]["desired_goal"],
                               ep.observations["desired_goal"][:-1], rtol=1e-6)


def test_minigrid_loads_dropping_the_mission_with_a_note(minari_root, caplog):
    with caplog.at_level(logging.INFO, logger="offline_dt.data.layout"):
        ds = load_dataset("minigrid/random-v0", minari_root)
    assert "dropping observation key(s) ['mission']" in caplog.text
    assert sorted(ds.observations) == ["direction", "image"]
    assert ds.observations["image"].dtype == np.uint8
    assert ds.observations["image"].shape[1:] == (7, 7, 3)
    assert ds.obs_dim == 1 + 7 * 7 * 3
    assert load_dataset(minari_root / "minigrid" / "random-v0").checksum() == ds.checksum()


def test_written_dict_dataset_passes_minaris_loading_and_recover_environment(minari_root,
                                                                            tmp_path):
    from offline_dt.data import write_minari

    ds = load_dataset("pointmaze/random-v0", minari_root)
    write_minari(ds, "pointmaze/copy-v0", tmp_path)
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        theirs = minari.load_dataset("pointmaze/copy-v0")
        env = theirs.recover_environment()
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    assert theirs.total_steps == ds.num_transitions
    assert env.observation_space["observation"].shape == (4,)
    env.close()
    assert load_dataset(tmp_path / "pointmaze" / "copy-v0").checksum() == ds.checksum()


TINY = ["--steps", "24", "--batch-size", "4", "--context-length", "4", "--embed-dim", "16",
        "--n-layer", "1", "--device", "cpu", "--log-every", "12", "--checkpoint-every", "24"]


@pytest.mark.parametrize("dataset", ["pointmaze/random-v0", "minigrid/random-v0"])
def test_dt_trains_and_evaluates_through_the_cli(minari_root, tmp_path, dataset):
    run = tmp_path / "run"
    main(["train", "--method", "dt", "--dataset", dataset, "--minari-root", str(minari_root),
          "--run-dir", str(run), *TINY])
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    layout = json.loads(ckpt["model_config"])["obs_layout"]
    assert layout and {leaf["kind"] for leaf in layout} <= {"vector", "image", "discrete"}
    main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "2",
          "--target-returns", "1", "--device", "cpu"])
    result = json.loads((run / "eval.json").read_text())
    assert "PointMaze" in json.dumps(result) or "MiniGrid" in json.dumps(result)


LAYOUT = [{"key": "direction", "kind": "discrete", "shape": [], "n": 4, "start": 0},
          {"key": "image", "kind": "image", "shape": [7, 7, 3], "n": 0, "start": 0},
          {"key": "pos", "kind": "vector", "shape": [2], "n": 0, "start": 0}]


def test_encoder_shapes():
    assert ImageEncoder((7, 7, 3), 16)(torch.rand(5, 147)).shape == (5, 16)
    big = ImageEncoder((84, 84, 4), 16)
    assert isinstance(big.convs[0], torch.nn.Conv2d) and big.convs[0].kernel_size == (8, 8)
    assert big(torch.rand(2, 84 * 84 * 4)).shape == (2, 16)
    enc = state_encoder(150, 16, LAYOUT)
    assert isinstance(enc, DictEncoder)
    x = torch.rand(3, 4, 150)
    x[..., 0] = 2.0
    assert enc(x).shape == (3, 4, 16)
    assert type(state_encoder(3, 16)) is torch.nn.Linear  # a flat Box: today's embedding
    with pytest.raises(ValueError, match="150 columns wide, obs_dim is 151"):
        state_encoder(151, 16, LAYOUT)


def test_a_dict_encoder_of_vector_leaves_is_linear_in_their_concatenation():
    layout = [{"key": "a", "kind": "vector", "shape": [2]},
              {"key": "b", "kind": "vector", "shape": [3]}]
    enc = DictEncoder(layout, 4)
    x = torch.randn(6, 5)
    w = torch.cat([enc.leaves[0].weight, enc.leaves[1].weight], 1)
    b = enc.leaves[0].bias + enc.leaves[1].bias
    torch.testing.assert_close(enc(x), x @ w.T + b)


@pytest.mark.parametrize("method", ["dt", "bc", "qt", "odt"])
def test_methods_build_and_take_a_loss_on_dict_observations(method):
    from offline_dt.data.windows import Batch

    cfg = DTConfig(obs_dim=150, act_dim=2, context_length=4, max_timestep=50,
                   embed_dim=16, n_layer=1, obs_layout=LAYOUT)
    m = get_method(method)
    net = m.build(cfg)
    b, k = 2, 4
    batch = Batch(returns_to_go=torch.rand(b, k, 1), observations=torch.rand(b, k, 150),
                  actions=torch.rand(b, k, 2) * 2 - 1, timesteps=torch.arange(k).expand(b, k),
                  mask=torch.ones(b, k, dtype=torch.bool), rewards=torch.rand(b, k),
                  next_observations=torch.rand(b, k, 150),
                  terminals=torch.zeros(b, k, dtype=torch.bool))
    loss, _ = m.loss(net, batch)
    assert torch.isfinite(loss)
    assert isinstance(DecisionTransformer(cfg).embed_state, DictEncoder)
