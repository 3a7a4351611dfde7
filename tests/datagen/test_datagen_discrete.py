"""A Discrete-action env end to end: CartPole-v1 with a (barely trained) DQN."""

from __future__ import annotations

import minari
import numpy as np
import pytest

from datagen.behaviour import load_behaviour_policy
from datagen.generate import generate
from offline_dt.data.d4rl import LEVELS, read_hdf5


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory, make_config):
    root = tmp_path_factory.mktemp("cartpole")
    cfg = make_config(root, env_id="CartPole-v1", agent_steps=300, random_steps=300,
                      expert_steps=200, medium_steps=200)
    return cfg, generate(cfg)


def test_cartpole_end_to_end(cartpole, monkeypatch):
    cfg, res = cartpole
    for level in LEVELS:
        path = res.paths[level]["hdf5"]
        assert path.name == f"cartpole-{level}-v0.hdf5"
        ds = read_hdf5(path)
        assert ds.actions.dtype == np.int64 and ds.actions.shape == (ds.num_transitions,)
        assert set(np.unique(ds.actions)) <= {0, 1}
        assert ds.metadata["agent"].startswith("random" if level == "random" else "dqn")
    rnd = read_hdf5(res.paths["random"]["hdf5"])
    assert rnd.terminals.any()  # CartPole terminates (pole falls), unlike Pendulum
    full = read_hdf5(res.paths["full-replay"]["hdf5"])
    assert full.num_transitions == 300 and full.terminals.any()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(cfg.minari_root))
    mds = minari.load_dataset("cartpole/expert-v0")
    ep = next(iter(mds.iterate_episodes()))
    assert ep.observations.shape == (len(ep.actions) + 1, 4)
    pol = load_behaviour_policy(res.agent_dir, "CartPole-v1", "cpu")
    a = pol(np.zeros((5, 4), np.float32))
    assert a.shape == (5,) and a.dtype == np.int64
