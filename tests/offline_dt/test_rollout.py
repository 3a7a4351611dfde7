"""The rollout engine: episodes equal a plain gym.make loop, waves do not change returns,
collected transitions carry the true last observation at episode ends."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from offline_dt.envs.make import make_vec_env
from offline_dt.envs.policies import ActionReplayPolicy, CallablePolicy, Policy, RandomPolicy
from offline_dt.envs.rollout import collect_transitions, run_episodes, step_policy


def pd_controller(obs: np.ndarray) -> np.ndarray:
    """A deterministic Pendulum policy whose returns vary with the start state."""
    return np.clip(-3.0 * obs[:, 1:2] - obs[:, 2:3], -2.0, 2.0).astype(np.float32)


def plain_loop(env_id: str, policy: Policy, seeds: list[int], **make_kwargs):
    """Reference: one ``gym.make`` env, one episode at a time, batch of 1."""
    returns, lengths = [], []
    env = gym.make(env_id, **make_kwargs)
    for s in seeds:
        obs, _ = env.reset(seed=s)
        policy.reset(1, seeds=[s])
        ret, n, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(policy.act(np.asarray(obs, np.float32)[None])[0])
            ret += float(r)
            n += 1
            done = term or trunc
        returns.append(ret)
        lengths.append(n)
    env.close()
    return np.array(returns), np.array(lengths)


@pytest.mark.parametrize("env_id, make_policy", [
    ("Pendulum-v1", lambda space: CallablePolicy(pd_controller)),
    ("CartPole-v1", lambda space: RandomPolicy(space)),
])
def test_run_episodes_equals_plain_loop(env_id, make_policy):
    space = gym.make(env_id).action_space
    seeds = [11, 12, 40, 7]
    kw = {"max_episode_steps": 50} if env_id == "Pendulum-v1" else {}
    returns, lengths = run_episodes(env_id, make_policy(space), seeds, env_kwargs=kw)
    ref_r, ref_n = plain_loop(env_id, make_policy(space), seeds, **kw)
    assert returns.dtype == np.float64 and lengths.dtype == np.int64
    assert returns.shape == lengths.shape == (4,)
    np.testing.assert_allclose(returns, ref_r, rtol=1e-6)
    np.testing.assert_array_equal(lengths, ref_n)
    assert len(set(np.round(returns, 3))) > 1  # the episodes differ: seeds were applied


def test_waves_give_the_same_episodes_as_one_wave():
    """CartPole episodes end at different steps, so a finished env keeps being stepped; with
    max_envs=2 the 5 episodes run in 3 waves and must still score exactly the same."""
    space = gym.make("CartPole-v1").action_space
    seeds = [3, 1, 4, 1, 5]
    one = run_episodes("CartPole-v1", RandomPolicy(space), seeds)
    waves = run_episodes("CartPole-v1", RandomPolicy(space), seeds, max_envs=2)
    np.testing.assert_array_equal(one[0], waves[0])
    np.testing.assert_array_equal(one[1], waves[1])
    assert len(set(one[1].tolist())) > 1
    assert one[0][1] == one[0][3]  # same seed, same episode


def test_run_episodes_rejects_bad_arguments():
    space = gym.make("CartPole-v1").action_space
    with pytest.raises(ValueError, match="seeds"):
        run_episodes("CartPole-v1", RandomPolicy(space), [])
    with pytest.raises(ValueError, match="max_envs"):
        run_episodes("CartPole-v1", RandomPolicy(space), [0], max_envs=0)


def test_step_policy_observes_only_the_first_episode():
    """An env that ended keeps being stepped, but its rewards no longer reach observe."""

    class Recorder(CallablePolicy):
        def __init__(self):
            super().__init__(lambda o: np.zeros(len(o), np.int64))
            self.seen: list[np.ndarray] = []

        def observe(self, rewards):
            self.seen.append(np.array(rewards))

    policy = Recorder()
    envs = make_vec_env("CartPole-v1", 2)
    steps = list(step_policy(envs, policy, [0, 99]))
    envs.close()
    active = np.stack([s.active for s in steps])
    seen = np.stack(policy.seen)
    assert active[-1].sum() == 1 and active[0].all()  # one env finished before the other
    np.testing.assert_array_equal(seen, active.astype(np.float64))  # CartPole: reward 1
    with pytest.raises(ValueError, match="seeds"):
        next(step_policy(make_vec_env("CartPole-v1", 2), policy, [0]))


def test_collected_next_observation_at_episode_end_is_the_true_last_one():
    """Pendulum truncates at step 200 (here 20): the stored next observation must be the
    truncated episode's last observation, not the next episode's first (its reset)."""
    steps, seeds = 30, [5, 6]
    actions = np.random.default_rng(0).uniform(-2, 2, (steps, 2, 1)).astype(np.float32)
    got = collect_transitions("Pendulum-v1", ActionReplayPolicy(actions), seeds, steps,
                              env_kwargs={"max_episode_steps": 20})
    assert got.observations.shape == got.next_observations.shape == (steps, 2, 3)
    assert got.observations.dtype == got.next_observations.dtype == np.float32
    assert got.rewards.dtype == np.float32 and got.truncated.dtype == bool
    np.testing.assert_array_equal(got.actions, actions)
    assert got.truncated[19].all() and got.truncated.sum() == 2
    np.testing.assert_array_equal(got.episode_end_steps, [19, 19])
    np.testing.assert_array_equal(got.episode_end_envs, [0, 1])
    np.testing.assert_allclose(got.episode_returns, got.rewards[:20].sum(0), rtol=1e-5)
    for j, seed in enumerate(seeds):
        env = gym.make("Pendulum-v1", max_episode_steps=20)
        env.reset(seed=seed)
        for t in range(20):
            last, *_ = env.step(actions[t, j])
        np.testing.assert_allclose(got.next_observations[19, j], last, rtol=1e-6)
        # Within an episode next_observations[t] is observations[t + 1] ...
        np.testing.assert_array_equal(got.next_observations[:19, j], got.observations[1:20, j])
        # ... but not across the autoreset.
        assert not np.allclose(got.next_observations[19, j], got.observations[20, j])


def test_action_replay_policy_checks():
    with pytest.raises(ValueError, match="actions"):
        ActionReplayPolicy(np.zeros(3))
    pol = ActionReplayPolicy(np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="num_envs"):
        pol.reset(3)
    pol.reset(2)
    assert pol.act(np.zeros((2, 4))).dtype == np.int64
    with pytest.raises(ValueError, match="replayed"):
        pol.act(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="steps"):
        collect_transitions("CartPole-v1", pol, [0, 1], 0)
