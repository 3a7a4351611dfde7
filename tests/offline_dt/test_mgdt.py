"""Suites (``offline_dt.data.suite``) and the Multi-Game Decision Transformer
(``offline_dt.methods.mgdt``): a two-env batch's layout and the network's token order by
hand, expert-return inference on a hand-made distribution, the sampling rules, training on a
two-env suite through the real loop, evaluation in each env, refusals, exact resume."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_box_dataset, make_discrete_dataset

from offline_dt.data import OfflineDataset, write_hdf5
from offline_dt.data.suite import Suite, SuiteSampler, env_weights, suite_members
from offline_dt.data.windows import Normalizer
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint
from offline_dt.methods.mgdt import MGDTNetwork, MGDTOptions, expert_return_probs
from offline_dt.nn.config import DTConfig
from offline_dt.training import TrainConfig, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _identity(obs_dim: int, low=(), high=()) -> Normalizer:
    return Normalizer(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32), 1.0,
                      np.asarray(low, np.float32), np.asarray(high, np.float32))


def _two_env_suite() -> Suite:
    """Env 0: Box obs (3,), Box action (1,) in [-2, 2], one episode of 2 steps, rewards 1, 2
    (returns-to-go 3, 2). Env 1: Box obs (4,), Discrete(2), one episode of 1 step, reward 5."""
    box = OfflineDataset.from_flat(
        observations=np.array([[1, 2, 3], [4, 5, 6]], np.float32),
        actions=np.array([[-2.0], [2.0]], np.float32), rewards=np.array([1, 2], np.float32),
        terminals=np.array([False, True]), timeouts=np.zeros(2, bool),
        observation_space=gym.spaces.Box(-10, 10, (3,), np.float32),
        action_space=gym.spaces.Box(-2, 2, (1,), np.float32), metadata={}, source="a")
    disc = OfflineDataset.from_flat(
        observations=np.array([[7, 8, 9, 10]], np.float32), actions=np.array([1]),
        rewards=np.array([5], np.float32), terminals=np.array([True]),
        timeouts=np.zeros(1, bool), observation_space=gym.spaces.Box(-10, 10, (4,), np.float32),
        action_space=gym.spaces.Discrete(2), metadata={}, source="b")
    return Suite((box, disc), ("Pendulum-v1", "CartPole-v1"),
                 (_identity(3, [-2], [2]), _identity(4)))


def test_two_env_batch_layout_by_hand():
    batch = SuiteSampler(_two_env_suite(), 2, 16, np.array([0.5, 0.5]), seed=3).sample(12)
    env = batch.env.tolist()
    assert env == sorted(env) and set(env) == {0, 1}  # rows grouped by env, both drawn
    assert batch.observations.shape == (12, 2, 4) and batch.box_actions.shape == (12, 2, 1)
    # env 0's windows of K=2 steps: from step 0 (no padding) or step 1 (left-padded)
    box_windows = {
        0: ([[1, 2, 3, 0], [4, 5, 6, 0]], [[-1.0], [1.0]], [3.0, 2.0], [0, 1], [True, True]),
        1: ([[0, 0, 0, 0], [4, 5, 6, 0]], [[0.0], [1.0]], [0.0, 2.0], [0, 1], [False, True]),
    }
    disc_window = ([[0, 0, 0, 0], [7, 8, 9, 10]], [0, 1], [0.0, 5.0], [0, 0], [False, True])
    for row in range(12):
        got = (batch.observations[row].tolist(), batch.returns_to_go[row].tolist(),
               batch.timesteps[row].tolist(), batch.mask[row].tolist())
        if env[row] == 0:
            obs, act, rtg, ts, mask = box_windows[0 if batch.mask[row, 0] else 1]
            assert batch.box_actions[row].tolist() == act
            assert batch.discrete_actions[row].tolist() == [0, 0]
        else:
            obs, act, rtg, ts, mask = disc_window
            assert batch.discrete_actions[row].tolist() == act
            assert batch.box_actions[row].tolist() == [[0.0], [0.0]]
        assert got == (obs, rtg, ts, mask)


def _tiny_net(n_bins: int = 5) -> MGDTNetwork:
    tasks = [{"env_id": "A", "obs_dim": 3, "act_dim": 1, "discrete": False},
             {"env_id": "B", "obs_dim": 4, "act_dim": 2, "discrete": True}]
    cfg = DTConfig(obs_dim=4, act_dim=1, context_length=3, max_timestep=8, embed_dim=8,
                   n_layer=2, n_head=1, dropout=0.0, tasks=tasks)
    return MGDTNetwork(cfg, MGDTOptions(n_bins=n_bins)).eval()


def test_token_order_return_from_observation_action_from_return():
    """Tokens are (s_t, R_t, a_t): step t's return logits see s_t but not R_t or a_t; its
    action sees R_t but not a_t; Discrete logits beyond env B's 2 actions are masked."""
    torch.manual_seed(0)
    net = _tiny_net()
    obs, box = torch.randn(2, 3, 4), torch.rand(2, 3, 1) * 2 - 1
    disc, bins = torch.tensor([[0, 1, 0], [1, 1, 0]]), torch.tensor([[0, 1, 2], [3, 4, 0]])
    ts, env = torch.arange(3).expand(2, 3), torch.tensor([0, 1])
    ret, act, logits = net(obs, box, disc, bins, ts, env)
    bins2, box2, disc2 = bins.clone(), box.clone(), disc.clone()
    bins2[:, 2] = (bins[:, 2] + 2) % 5
    box2[:, 2], disc2[:, 2] = -box[:, 2], 1 - disc[:, 2]
    ret_b, act_b, _ = net(obs, box, disc, bins2, ts, env)  # R_2 changed
    ret_a, act_a, logits_a = net(obs, box2, disc2, bins, ts, env)  # a_2 changed
    assert torch.allclose(ret_b, ret) and torch.allclose(ret_a, ret)
    assert not torch.allclose(act_b[:, 2], act[:, 2])
    assert torch.allclose(act_a, act) and torch.allclose(logits_a, logits)
    assert logits.shape == (2, 3, 2)  # the most actions of the suite: B's 2 (A counts 1)
    assert (logits[0, :, 1] == -1e9).all() and (logits[1] > -1e8).all()


def test_return_bins_by_hand():
    net = _tiny_net(n_bins=5)
    net.return_low[:] = torch.tensor([-1.0, 0.0])
    net.return_high[:] = torch.tensor([1.0, 500.0])
    # env 0: z = (R + 1) / 2 over 4 steps: -1 -> 0, 0 -> 2, 0.6 -> 3.2 -> 3, 5 -> clipped 4
    got = net.return_bins(torch.tensor([[-1.0, 0.0, 0.6, 5.0], [0, 250, 320, -3]]),
                          torch.tensor([0, 1]))
    assert got.tolist() == [[0, 2, 3, 4], [0, 2, 3, 0]]


def test_expert_return_inference_on_a_hand_made_distribution():
    """P = (0.5, 0.4, 0.1) over 3 bins (z = 0, 1/2, 1); kappa = 2 ln 2 weighs them 1, 2, 4:
    (0.5, 0.8, 0.4) / 1.7, so bin 1 is the most likely; kappa 0 keeps P (bin 0)."""
    logits = torch.tensor([0.5, 0.4, 0.1]).log()
    expert = expert_return_probs(logits, 2 * math.log(2))
    assert torch.allclose(expert, torch.tensor([0.5, 0.8, 0.4]) / 1.7, atol=1e-6)
    assert int(expert.argmax()) == 1
    plain = expert_return_probs(logits, 0.0)
    assert torch.allclose(plain, torch.tensor([0.5, 0.4, 0.1]), atol=1e-6)
    assert int(expert_return_probs(logits, 10.0).argmax()) == 2  # MGDT's kappa: the top bin


def test_sampling_rules_by_hand_and_drawn():
    n = [100, 300]
    assert env_weights(n, "proportional").tolist() == [0.25, 0.75]
    assert env_weights(n, "balanced").tolist() == [0.5, 0.5]
    t2 = env_weights(n, "temperature", 2.0)  # sqrt: 10 and 17.32
    assert np.allclose(t2, [10 / (10 + 300 ** 0.5), 300 ** 0.5 / (10 + 300 ** 0.5)])
    assert np.allclose(env_weights(n, "temperature", 1.0), [0.25, 0.75])
    with pytest.raises(ValueError, match="rule must be one of"):
        env_weights(n, "uniform")
    suite = Suite((make_box_dataset(), make_discrete_dataset()), ("Pendulum-v1", "CartPole-v1"),
                  (_identity(3, [-2], [2]), _identity(4)))
    sizes = [int(d.episode_starts[-1]) for d in suite.datasets]  # 132, 87
    for rule, want in (("balanced", 0.5), ("proportional", sizes[1] / sum(sizes))):
        sampler = SuiteSampler(suite, 4, 64, env_weights(sizes, rule), seed=0)
        share = torch.cat([sampler.sample(200).env for _ in range(20)]).float().mean()
        assert abs(float(share) - want) < 0.03, (rule, float(share), want)


def test_suite_names_and_refusals(tmp_path):
    assert suite_members("a.hdf5") is None
    assert suite_members("a.hdf5, b/c-v0") == ["a.hdf5", "b/c-v0"]
    with pytest.raises(ValueError, match="none empty"):
        suite_members("a.hdf5,")
    with pytest.raises(ValueError, match="trains on one dataset"):
        TrainConfig(dataset="a.hdf5,b.hdf5", method="dt").validate()
    with pytest.raises(ValueError, match="needs 2 comma-separated env ids"):
        TrainConfig(dataset="a.hdf5,b.hdf5", method="mgdt", env_id="Pendulum-v1").validate()
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(dataset="a.hdf5,b.hdf5", method="mgdt", eval_every=5).validate()


@pytest.fixture(scope="module")
def suite_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    return (write_hdf5(make_box_dataset(), root / "box.hdf5"),
            write_hdf5(make_discrete_dataset(), root / "disc.hdf5"))


def test_train_a_two_env_suite_and_act_in_each_env(suite_paths, tiny_config, tmp_path):
    cfg = tiny_config(f"{suite_paths[0]},{suite_paths[1]}", method="mgdt", steps=6,
                      method_options={"n_bins": 16})
    res = train(cfg)
    assert np.isfinite(res.final_loss)
    header = (cfg.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "return_ce" in header and "action_loss" in header
    ck = load_checkpoint(cfg.run_dir, env_id="CartPole-v1")
    assert ck.dataset_info["suite_env_ids"] == ["Pendulum-v1", "CartPole-v1"]
    assert ck.normalizer.state_mean.shape == (4,) and ck.model.index == 1
    assert bool(ck.model.net.fitted) and float(ck.model.net.return_high[1]) == 1.0  # 30 / 30
    for env, low, high in (("Pendulum-v1", -2000, 0), ("CartPole-v1", 1, 500)):
        out = evaluate_checkpoint(EvalConfig(
            checkpoint=cfg.run_dir, env_id=env, episodes=2, validation_episodes=1,
            device="cpu", out=tmp_path / f"{env}.json"))
        cands = out["selection"]["candidates"]
        assert [c["settings"]["inference"] for c in cands][0] == "expert"
        assert cands[0]["target_return"] is None  # expert inference: once, no target
        assert all(c["target_return"] is not None for c in cands[1:])
        assert out["env_id"] == env and low <= out["mean_return"] <= high
    with pytest.raises(ValueError, match=r"trained on the envs \['Pendulum-v1', 'CartPole-v1'\]"):
        evaluate_checkpoint(EvalConfig(checkpoint=cfg.run_dir, env_id="Acrobot-v1",
                                       episodes=1, device="cpu", out=tmp_path / "x.json"))
    with pytest.raises(ValueError, match="pass --env-id"):
        load_checkpoint(cfg.run_dir)


def test_resume_of_a_multi_task_run_is_exact(suite_paths, tiny_config, tmp_path):
    full = tiny_config(f"{suite_paths[0]},{suite_paths[1]}", method="mgdt", steps=8,
                       checkpoint_every=4, run_dir=tmp_path / "full",
                       method_options={"n_bins": 16, "sampling": "proportional"})
    train(full)
    part = dataclasses.replace(full, steps=4, run_dir=tmp_path / "part")
    train(part)
    train(dataclasses.replace(part, steps=8, resume=True))
    a = load_checkpoint(full.run_dir, env_id="Pendulum-v1").model.net.state_dict()
    b = load_checkpoint(part.run_dir, env_id="Pendulum-v1").model.net.state_dict()
    assert "return_low" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name
