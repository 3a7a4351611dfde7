"""MuJoCo Hopper (``pip install -e ".[mujoco]"``): falls are ``terminals``, time limits and
budget cuts ``timeouts``, in both formats, and the evaluator stops an episode at its fall."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("mujoco")

from datagen.rollout import rollout  # noqa: E402
from offline_dt.data.d4rl import read_hdf5, write_hdf5  # noqa: E402
from offline_dt.data.minari_io import read_minari, write_minari  # noqa: E402
from offline_dt.envs.policies import RandomPolicy
from offline_dt.envs.seeds import evaluation_seed
from offline_dt.evaluation.episodes import evaluate_policy


def healthy(obs: np.ndarray) -> np.ndarray:
    """Hopper-v5's ``is_healthy`` on observations (``obs[0]`` the torso height z, ``obs[1]``
    its angle, ``obs[1:]`` the state vector less x and z): z > 0.7, |angle| < 0.2 and every
    state entry inside (-100, 100), the env's defaults."""
    state_ok = np.all((obs[:, 1:] > -100) & (obs[:, 1:] < 100), axis=1)
    return state_ok & (obs[:, 0] > 0.7) & (np.abs(obs[:, 1]) < 0.2)


@pytest.fixture(scope="module")
def hopper():
    return rollout("Hopper-v5", 600, seed=0, num_envs=3).dataset


def test_falls_are_terminals_and_cuts_are_timeouts(hopper):
    ds = hopper
    # A random hopper falls within tens of steps: many episodes, each ended by a fall,
    # except the three cut off by the step budget.
    assert ds.terminals.sum() >= 5
    np.testing.assert_array_equal(ds.terminals, ~healthy(ds.next_observations))
    assert not (ds.terminals & ds.timeouts).any()
    ends = np.r_[ds.episode_starts[1:], ds.num_transitions] - 1
    assert (ds.terminals[ends] | ds.timeouts[ends]).all()
    assert ds.timeouts.sum() == 3 and ds.timeouts[-1]


def test_both_formats_keep_terminals_and_timeouts(hopper, tmp_path):
    h5 = read_hdf5(write_hdf5(hopper, tmp_path / "hopper-random-v0.hdf5"))
    mn = read_minari(write_minari(hopper, "hopper/random-v0", root=tmp_path / "minari"))
    for back in (h5, mn):
        np.testing.assert_array_equal(back.terminals, hopper.terminals)
        np.testing.assert_array_equal(back.timeouts, hopper.timeouts)
        np.testing.assert_allclose(back.rewards, hopper.rewards, rtol=1e-6)


def test_evaluation_stops_an_episode_at_its_fall():
    env = gym.make("Hopper-v5")
    res = evaluate_policy("Hopper-v5", RandomPolicy(env.action_space, 0), 3, seed=4)
    # The same episodes stepped by hand: reset seed, then the policy's per-episode actions.
    for i, length in enumerate(res.lengths):
        policy = RandomPolicy(env.action_space, 0)
        policy.reset(1, [evaluation_seed(4, i)])
        env.reset(seed=evaluation_seed(4, i))
        steps, terminated, truncated = 0, False, False
        while not (terminated or truncated):
            _, _, terminated, truncated, _ = env.step(policy.act(None)[0])
            steps += 1
        assert terminated and length == steps < 1000
