"""Evaluator: batched rollouts equal the one-episode-at-a-time loop, DT context bookkeeping,
terminations counted once, checkpoint evaluation and the training hook."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from offline_dt.data.d4rl import normalized_score
from offline_dt.data.windows import Normalizer
from offline_dt.envs.policies import CallablePolicy, Policy, RandomPolicy
from offline_dt.envs.seeds import episode_seed, evaluation_seed
from offline_dt.evaluation.curves import make_eval_hook
from offline_dt.evaluation.episodes import (
    CURVE_EPISODE_OFFSET,
    evaluate_policy,
    evaluate_sequential,
)
from offline_dt.evaluation.results import EvalResult, build_eval_payload
from offline_dt.evaluation.selection import default_target_returns
from offline_dt.methods import get_method
from offline_dt.methods.dt import DTPolicy
from offline_dt.nn.config import DTConfig
from offline_dt.nn.transformer import DecisionTransformer
from offline_dt.training import TrainConfig, TrainingRun

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pendulum_normalizer(rtg_scale: float = 100.0) -> Normalizer:
    return Normalizer(
        state_mean=np.array([0.1, -0.2, 0.3], np.float32),
        state_std=np.array([0.7, 0.7, 2.5], np.float32),
        rtg_scale=rtg_scale,
        action_low=np.array([-2.0], np.float32),
        action_high=np.array([2.0], np.float32),
    )


def cartpole_normalizer() -> Normalizer:
    empty = np.zeros(0, np.float32)
    return Normalizer(np.zeros(4, np.float32), np.ones(4, np.float32), 100.0, empty, empty)


def tiny_dt(obs_dim: int, act_dim: int, discrete: bool = False, k: int = 4) -> DecisionTransformer:
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(obs_dim=obs_dim, act_dim=act_dim, discrete=discrete,
                                         context_length=k, embed_dim=16, n_layer=1, n_head=2,
                                         max_timestep=600))
    # Untrained GPT init gives near-constant actions; larger weights make the actions depend
    # on the whole context, so a wrong context would change the returns.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(15.0)
    return model


class RecordingModel(nn.Module):
    """Stands in for a DT: records every call's inputs, predicts action 0.5 (tanh units)."""

    def __init__(self, k: int = 3, obs_dim: int = 3) -> None:
        super().__init__()
        self.cfg = DTConfig(obs_dim=obs_dim, act_dim=1, context_length=k, max_timestep=1000)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, returns_to_go, observations, actions, timesteps, mask=None,
                last_only=False):
        self.calls.append({"rtg": returns_to_go.clone(), "obs": observations.clone(),
                           "act": actions.clone(), "ts": timesteps.clone()})
        b, k = timesteps.shape
        return torch.full((b, 1 if last_only else k, 1), 0.5)


# ---------------------------------------------------------------------------------- equivalence
def test_batched_equals_sequential_dt_pendulum():
    model = tiny_dt(3, 1)
    policy = DTPolicy(model, pendulum_normalizer(), target_return=-150.0)
    batched = evaluate_policy("Pendulum-v1", policy, episodes=4, seed=3)
    seq = evaluate_sequential("Pendulum-v1", policy, episodes=4, seed=3)
    assert batched.episode_seeds == seq.episode_seeds == [10**12 + 300_000 + i
                                                          for i in range(4)]
    np.testing.assert_array_equal(batched.lengths, [200] * 4)
    np.testing.assert_array_equal(seq.lengths, [200] * 4)
    np.testing.assert_allclose(batched.returns, seq.returns, rtol=1e-5, atol=1e-3)
    # Different seeds give different episodes: the comparison is not vacuous.
    assert len(set(np.round(batched.returns, 3))) == 4


def test_batched_equals_sequential_random_and_callable():
    space = gym.make("Pendulum-v1").action_space
    for policy in (RandomPolicy(space), CallablePolicy(lambda o: np.clip(-2.0 * o[:, 2:3], -2, 2))):
        batched = evaluate_policy("Pendulum-v1", policy, episodes=5, seed=1)
        seq = evaluate_sequential("Pendulum-v1", policy, episodes=5, seed=1)
        np.testing.assert_allclose(batched.returns, seq.returns, rtol=1e-9)
        np.testing.assert_array_equal(batched.lengths, seq.lengths)


def test_waves_equal_one_wave():
    policy = CallablePolicy(lambda o: np.clip(-3.0 * o[:, 1:2] - o[:, 2:3], -2, 2))
    one = evaluate_policy("Pendulum-v1", policy, episodes=7, seed=2)
    waves = evaluate_policy("Pendulum-v1", policy, episodes=7, seed=2, max_envs=3)
    np.testing.assert_array_equal(one.returns, waves.returns)


def test_terminations_counted_once_cartpole_random():
    space = gym.make("CartPole-v1").action_space
    policy = RandomPolicy(space)
    batched = evaluate_policy("CartPole-v1", policy, episodes=12, seed=0, max_envs=5)
    seq = evaluate_sequential("CartPole-v1", policy, episodes=12, seed=0)
    assert batched.episodes == 12
    np.testing.assert_array_equal(batched.returns, seq.returns)
    np.testing.assert_array_equal(batched.lengths, seq.lengths)
    # CartPole pays 1 per step: a finished env that kept accumulating would break this.
    np.testing.assert_array_equal(batched.returns, batched.lengths)
    assert len(set(batched.lengths.tolist())) > 3  # episodes end at different steps
    assert batched.lengths.max() < 500  # all terminated, none truncated


def test_batched_equals_sequential_dt_discrete_cartpole():
    model = tiny_dt(4, 2, discrete=True)
    policy = DTPolicy(model, cartpole_normalizer(), target_return=100.0)
    batched = evaluate_policy("CartPole-v1", policy, episodes=4, seed=5)
    seq = evaluate_sequential("CartPole-v1", policy, episodes=4, seed=5)
    np.testing.assert_array_equal(batched.lengths, seq.lengths)
    np.testing.assert_array_equal(batched.returns, seq.returns)
    assert set(np.unique(policy.act_buf.numpy())) <= {0, 1}


# ---------------------------------------------------------------------------------- DT context
def test_dt_policy_decrements_return_to_go_and_keeps_last_k():
    k, scale, target = 3, 10.0, -20.0
    model = RecordingModel(k=k)
    norm = pendulum_normalizer(rtg_scale=scale)
    policy = DTPolicy(model, norm, target_return=target)
    policy.reset(2)
    rewards = [np.array([-1.0, -2.0]), np.array([-0.5, -4.0]), np.array([-3.0, 0.0]),
               np.array([-1.0, -1.0]), np.array([-2.0, -2.0])]
    observations = [np.full((2, 3), float(t), np.float32) for t in range(len(rewards))]
    expected_rtg = np.full(2, target)
    history = []
    for t, (obs, r) in enumerate(zip(observations, rewards, strict=True)):
        actions = policy.act(obs)
        np.testing.assert_allclose(actions, np.full((2, 1), 1.0))  # 0.5 in [-2, 2] units
        history.append(expected_rtg.copy())
        call = model.calls[-1]
        n = min(t + 1, k)
        assert call["rtg"].shape == (2, n, 1)
        # The newest step carries the current return-to-go, scaled.
        np.testing.assert_allclose(call["rtg"][:, -1, 0].numpy(), expected_rtg / scale,
                                   rtol=1e-6)
        # Only the last K steps, oldest first, with their episode timesteps.
        np.testing.assert_array_equal(call["ts"][0].numpy(), np.arange(t + 1 - n, t + 1))
        want_obs = norm.observations(np.stack(observations[t + 1 - n:t + 1])[:, 0])
        np.testing.assert_allclose(call["obs"][0].numpy(), want_obs, rtol=1e-6)
        want_rtg = np.stack(history[t + 1 - n:t + 1])[:, 0] / scale
        np.testing.assert_allclose(call["rtg"][0, :, 0].numpy(), want_rtg, rtol=1e-6)
        # Earlier actions are the model's predictions; the newest is a zero placeholder.
        np.testing.assert_allclose(call["act"][0, :-1, 0].numpy(), 0.5)
        assert call["act"][0, -1, 0].item() == 0.0
        policy.observe(r)
        expected_rtg = expected_rtg - r
        np.testing.assert_allclose(policy.returns_to_go, expected_rtg)
    np.testing.assert_allclose(policy.returns_to_go, target - np.sum(rewards, axis=0))


def test_bc_feeds_zero_returns_to_go():
    model = RecordingModel(k=2)
    policy = get_method("bc").policy(model, pendulum_normalizer(), target_return=-150.0)
    policy.reset(3)
    for _ in range(3):
        policy.act(np.ones((3, 3), np.float32))
        policy.observe(np.full(3, -5.0))
    assert all(float(c["rtg"].abs().max()) == 0.0 for c in model.calls)
    dt = get_method("dt").policy(model, pendulum_normalizer(), target_return=-150.0)
    dt.reset(3)
    dt.act(np.ones((3, 3), np.float32))
    assert float(model.calls[-1]["rtg"].abs().max()) > 0.0
    with pytest.raises(ValueError, match="target_return"):
        get_method("dt").policy(model, pendulum_normalizer(), target_return=None)


def test_policies_satisfy_protocol():
    space = gym.spaces.Discrete(3)
    assert isinstance(RandomPolicy(space), Policy)
    assert isinstance(CallablePolicy(lambda o: o), Policy)
    assert isinstance(DTPolicy(RecordingModel(), pendulum_normalizer(), 0.0), Policy)
    rp = RandomPolicy(space)
    rp.reset(4, seeds=[1, 2, 3, 4])
    a = rp.act(np.zeros((4, 2), np.float32))
    assert a.shape == (4,) and a.dtype == np.int64


# ---------------------------------------------------------------------------------- results
def test_eval_result_statistics_and_normalized_score():
    res = EvalResult("X-v0", 0, returns=np.array([-100.0, -200.0, -300.0, -400.0]),
                     lengths=np.array([1, 1, 1, 1]), episode_seeds=[0, 1, 2, 3],
                     ref_min_score=-1000.0, ref_max_score=-100.0)
    assert res.mean == -250.0
    assert res.std == pytest.approx(np.std([-100, -200, -300, -400]))
    assert res.ci95 == pytest.approx(1.96 * res.std / 2.0)
    assert res.normalized_score == pytest.approx(100 * 750 / 900)
    assert normalized_score(1.0, None, 2.0) is None
    assert episode_seed(2, 7) == 200_007 and evaluation_seed(2, 7) == 10**12 + 200_007
    d = res.to_dict()
    json.dumps(d)
    assert d["returns"] == [-100.0, -200.0, -300.0, -400.0]


def test_default_targets_and_payload_headline():
    assert default_target_returns(-700.0, -140.0) == [-700.0, -140.0]
    assert default_target_returns(-140.0, -140.0) == [-140.0]
    with pytest.raises(ValueError):
        default_target_returns(None, None)
    rows = [{"target_return": t, "mean": m, "std": 1.0, "ci95": 0.1, "min": m, "max": m,
             "normalized_score": None, "ref_min_score": None, "ref_max_score": None,
             "episodes": 3, "seed": 0} for t, m in ((-700.0, -300.0), (-140.0, -200.0))]
    p = build_eval_payload("dt", "Pendulum-v1", rows, headline=1)
    assert p["mean_return"] == -200.0 and p["headline_target"] == -140.0


def test_eval_hook_acts_with_the_run_and_restores_train_mode():
    model = tiny_dt(3, 1)
    model.train()
    norm = pendulum_normalizer()
    info = {"env_id": "Pendulum-v1", "ref_min_score": -1200.0, "ref_max_score": -150.0,
            "best_return": -300.0}
    run = TrainingRun(TrainConfig(dataset="tiny", seed=4, eval_episodes=2), get_method("dt"),
                      model, norm, info)
    hook = make_eval_hook()
    metrics = hook(run, 10)
    assert model.training
    # The default target is the expert score; the episodes are validation episodes of the
    # run's seed from CURVE_EPISODE_OFFSET on (never a test episode, never a target choice).
    assert metrics["eval_target_return"] == -150.0 and metrics["eval_episodes"] == 2.0
    same = evaluate_policy("Pendulum-v1", DTPolicy(model, norm, -150.0), 2, 4,
                           split="validation", first=CURVE_EPISODE_OFFSET,
                           ref_min_score=-1200.0, ref_max_score=-150.0)
    assert same.episode_seeds == [2 * 10**12 + 400_000 + 50_000 + i for i in range(2)]
    assert metrics["eval_return_mean"] == same.mean
    assert metrics["eval_normalized_score"] == pytest.approx(same.normalized_score)
    model.eval()
    hook(run, 20)
    assert not model.training


# ---------------------------------------------------------------------------------- kv cache
def test_kv_cache_matches_recomputation_while_exact():
    """One block: cached keys depend on their token alone, so the cache is exact for the whole
    episode; the returns on the same seeds match the recomputed window (Box and Discrete)."""
    for env_id, model, norm in (("Pendulum-v1", tiny_dt(3, 1), pendulum_normalizer()),
                                ("CartPole-v1", tiny_dt(4, 2, discrete=True),
                                 cartpole_normalizer())):
        exact = evaluate_policy(env_id, DTPolicy(model, norm, 50.0), episodes=3, seed=1)
        cached = evaluate_policy(env_id, DTPolicy(model, norm, 50.0, kv_cache=True),
                                 episodes=3, seed=1)
        np.testing.assert_allclose(cached.returns, exact.returns, rtol=1e-4, atol=1e-3)


def test_step_cached_exact_for_first_k_steps_then_drifts():
    torch.manual_seed(0)
    k, steps = 5, 12
    model = DecisionTransformer(DTConfig(obs_dim=3, act_dim=1, context_length=k, embed_dim=32,
                                         n_layer=3, n_head=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    b = 4
    rtg, obs = torch.randn(b, steps, 1), torch.randn(b, steps, 3)
    act, ts = torch.rand(b, steps, 1) * 2 - 1, torch.arange(steps).expand(b, steps)
    cache, diffs = None, []
    for t in range(steps):
        out, cache = model.step_cached(cache, rtg[:, t], obs[:, t], ts[:, t],
                                       act[:, t - 1] if t else None)
        lo = max(0, t - k + 1)
        with torch.no_grad():
            ref = model(rtg[:, lo:t + 1], obs[:, lo:t + 1], act[:, lo:t + 1], ts[:, lo:t + 1],
                        last_only=True)[:, -1]
        assert cache.length == min(3 * t + 2, 3 * k - 1)
        diffs.append((out - ref).abs().max().item())
    assert max(diffs[:k]) < 1e-5
    assert max(diffs[k:]) > 1e-4  # three blocks: the slid window is not recomputed


# ---------------------------------------------------------------------------------- honest seeds
class FirstObservations:
    """Random actions; records each env's first observation of its episode."""

    def __init__(self, space):
        self.random = RandomPolicy(space)
        self.first: list[np.ndarray] = []

    def reset(self, num_envs, seeds=None):
        self.random.reset(num_envs, seeds)
        self.fresh = True

    def act(self, observations):
        if self.fresh:
            self.first.extend(np.asarray(observations, np.float32))
            self.fresh = False
        return self.random.act(observations)

    def observe(self, rewards):
        pass


def test_test_episodes_never_start_where_a_generated_dataset_did():
    """datagen resets sub-env j with seed + j; evaluation seed 0 used to reset episode i with
    seed i, so test episodes started exactly where the dataset's episodes did."""
    from datagen.rollout import rollout

    ds = rollout("Pendulum-v1", 800, None, seed=0, num_envs=2).dataset  # 2 episodes per env
    starts = ds.observations[ds.episode_starts[:-1]]
    recorder = FirstObservations(gym.make("Pendulum-v1").action_space)
    evaluate_policy("Pendulum-v1", recorder, episodes=4, seed=0,
                    env_kwargs={"max_episode_steps": 2})
    first = np.stack(recorder.first)
    assert len(first) == 4
    overlap = (np.abs(first[:, None, :] - starts[None, :, :]).max(-1) < 1e-7).any()
    assert not overlap
    # The old rule (reset seed = seed * 100_000 + i) reproduced dataset starts exactly.
    old = FirstObservations(gym.make("Pendulum-v1").action_space)
    from offline_dt.envs.rollout import run_episodes

    run_episodes("Pendulum-v1", old, [episode_seed(0, i) for i in range(2)],
                 env_kwargs={"max_episode_steps": 2})
    np.testing.assert_array_equal(np.stack(old.first), starts[[0, 2]])  # env-major order


def test_eval_json_says_which_interval_it_prints():
    res = EvalResult("X-v0", 0, returns=np.array([-1.0, -3.0]), lengths=np.array([1, 1]),
                     episode_seeds=[0, 1])
    payload = build_eval_payload("dt", "X-v0", [{"target_return": -1.0, **res.to_dict()}])
    assert payload["ci95"] == pytest.approx(1.96 * 1.0 / np.sqrt(2))
    assert payload["ci95_is"].startswith("episode-level")
