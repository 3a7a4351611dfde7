"""qt: the IQL critic's targets by hand, learning above the data on a bandit whose best action
is known, exact resume with the critic, and the data formats it trains on."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import interrupted_and_full

from offline_dt.data import OfflineDataset, write_hdf5
from offline_dt.data.windows import Batch, Normalizer, WindowSampler
from offline_dt.methods import get_method
from offline_dt.methods.qt import QTOptions, critic_loss, expectile_loss
from offline_dt.nn.config import DTConfig
from offline_dt.training import TrainConfig, load_checkpoint, train
from offline_dt.training.step import train_step


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -2.0, 0.5])
    # tau = 0.7: positive errors weigh 0.7, negative 0.3
    assert torch.allclose(expectile_loss(diff, 0.7), torch.tensor([2.8, 1.2, 0.175]))


def _episode_batch() -> Batch:
    """One 3-step episode, K = 3, obs_dim 1, act_dim 1; the last step is terminal."""
    return Batch(
        returns_to_go=torch.zeros(1, 3, 1), observations=torch.tensor([[[0.0], [1.0], [2.0]]]),
        actions=torch.tensor([[[0.1], [0.2], [0.3]]]), timesteps=torch.arange(3)[None],
        mask=torch.ones(1, 3, dtype=torch.bool),
        rewards=torch.tensor([[1.0, 2.0, 3.0]]) / 1000.0,
        next_observations=torch.tensor([[[1.0], [2.0], [3.0]]]),
        terminals=torch.tensor([[False, False, True]]))


class _TableCritic(torch.nn.Module):
    """Q(s, a) = (10 s, 10 s + 1) (twin), V(s) = 5 s: a critic whose values are known."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, batch, actions):
        s = batch.observations[..., 0] * self.w
        return torch.stack((10 * s, 10 * s + 1), -1), 5 * s

    def next_values(self, batch, v):
        return 5 * batch.next_observations[..., 0], batch.mask


def test_critic_targets_by_hand():
    """TD targets y = r + γ(1 - terminal) V(s'), the expectile loss on min Q_target - V."""
    method = get_method("qt")
    net = method.build(DTConfig(obs_dim=1, act_dim=1, context_length=3, embed_dim=8,
                                n_layer=1), {"discount": 0.5, "expectile": 0.8})
    net.critic, net.target = _TableCritic(), _TableCritic()
    loss, adv, extras = critic_loss(net, _episode_batch())
    # rewards back in critic units: (1, 2, 3); V(s') = (5, 10, 15); the last is terminal
    y = torch.tensor([1 + 0.5 * 5, 2 + 0.5 * 10, 3.0])
    q = torch.tensor([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])
    q_loss = (q - y[:, None]).square().sum(-1).mean()
    diff = torch.tensor([0.0, 10.0, 20.0]) - torch.tensor([0.0, 5.0, 10.0])  # min Q - V
    v_loss = (0.8 * diff.square()).mean()
    assert torch.allclose(extras["q_loss"], q_loss)
    assert torch.allclose(extras["v_loss"], v_loss)
    assert torch.allclose(loss, q_loss + v_loss)
    assert torch.allclose(adv[0], diff)


def test_transformer_critic_reads_next_value_inside_the_window():
    net = get_method("qt").build(DTConfig(obs_dim=1, act_dim=1, context_length=3, embed_dim=8,
                                          n_layer=1), {"critic": "transformer"})
    batch = _episode_batch()
    batch.mask = torch.tensor([[False, True, True]])
    batch.terminals = torch.tensor([[False, False, False]])
    v = torch.tensor([[7.0, 8.0, 9.0]])
    v_next, valid = net.critic.next_values(batch, v)
    assert v_next[0, :2].tolist() == [8.0, 9.0]
    # padding and the last step of a non-terminal window are not trained
    assert valid.tolist() == [[False, True, False]]
    batch.terminals = torch.tensor([[False, False, True]])
    assert net.critic.next_values(batch, v)[1].tolist() == [[False, True, True]]


def test_options_are_typed_and_checked():
    qt = get_method("qt")
    assert qt.options({"critic": "transformer", "beta": 1.5}) == QTOptions(
        critic="transformer", beta=1.5)
    assert qt.options({"beta": 3}).beta == 3.0 and isinstance(qt.options({"beta": 3}).beta,
                                                                 float)
    with pytest.raises(ValueError, match="no option 'betta'"):
        qt.options({"betta": 1.0})
    with pytest.raises(ValueError, match="'beta' must be float, found '1.5'"):
        qt.options({"beta": "1.5"})  # a string is not parsed
    with pytest.raises(ValueError, match="'critic' must be 'mlp' or 'transformer', found 'cnn'"):
        qt.options({"critic": "cnn"})
    with pytest.raises(ValueError, match="'hidden' must be int, found 2.5"):
        qt.options(QTOptions(hidden=2.5))  # an instance is checked as well
    with pytest.raises(ValueError, match="qt expectile must be in"):
        qt.options({"expectile": 1.0})


PENDULUM_OBS = gym.spaces.Box(np.array([-1, -1, -8], np.float32),
                              np.array([1, 1, 8], np.float32), (3,), np.float32)
PENDULUM_ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def _bandit(n_episodes: int = 300, seed: int = 0) -> OfflineDataset:
    """One-step episodes with uniformly random actions in [-2, 2] and reward -(a - 1.2)²: the
    data's average action is 0, the best is 1.2. Imitation (bc) learns ~0; a critic can
    find 1.2."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-0.1, 0.1, (n_episodes, 3)).astype(np.float32)
    actions = rng.uniform(-2, 2, (n_episodes, 1)).astype(np.float32)
    rewards = -np.square(actions[:, 0] - 1.2).astype(np.float32)
    return OfflineDataset.from_flat(
        observations=obs, actions=actions, rewards=rewards,
        terminals=np.ones(n_episodes, bool), timeouts=np.zeros(n_episodes, bool),
        observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT,
        metadata={"env_id": "Pendulum-v1", "dataset_id": "tiny/bandit-v0"}, source="bandit")


def _mean_action(method: str, options: dict[str, str], steps: int = 300) -> float:
    data = _bandit()
    cfg = TrainConfig(method=method, method_options=options, context_length=1, embed_dim=16,
                      n_layer=1, dropout=0.0, batch_size=64, learning_rate=3e-3,
                      warmup_steps=10, max_timestep=8, device="cpu")
    torch.manual_seed(0)
    m = get_method(method)
    net = m.build(cfg.model_config(3, 1, False), options)
    norm = Normalizer.fit(data)
    sampler = WindowSampler(data, norm, 1, 8, seed=0)
    from offline_dt.training.step import make_optimizer

    opt, sched = make_optimizer(net, cfg)
    for _ in range(steps):
        train_step(net, opt, sched, sampler.sample(64), cfg, m)
    policy = m.policy(net, norm, 0.0 if m.conditions_on_return else None)
    policy.reset(32)
    return float(policy.act(data.observations[:32]).mean())


def test_value_guided_method_beats_bc_where_the_best_action_is_known(one_torch_thread):
    bc = _mean_action("bc", {})
    qt = _mean_action("qt", {"reward_scale": 1000})
    assert abs(bc - 0.0) < 0.5, bc  # imitation: the data's average action
    assert abs(qt - 1.2) < 0.35, qt  # value-guided: the best action
    assert abs(qt - 1.2) < abs(bc - 1.2) - 0.5


@pytest.mark.parametrize("critic", ["mlp", "transformer"])
def test_resume_with_the_critic_is_exact(critic, box_hdf5, tiny_config, tmp_path,
                                         one_torch_thread):
    opts = {"critic": critic}
    full = tiny_config(box_hdf5, method="qt", method_options=opts, steps=10,
                       run_dir=tmp_path / "full", checkpoint_every=5)
    a, b = interrupted_and_full(full, tmp_path)
    assert any(k.startswith("target.") for k in a) and any(k.startswith("critic.") for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    init = get_method("qt").build(load_checkpoint(full.run_dir).model_config, opts)
    moved = [k for k, v in init.state_dict().items() if k.startswith("target.")
             and not torch.equal(v, a[k])]
    assert moved, "the target critic never moved"


def test_trains_on_minari_and_reports_critic_columns(box_minari, tiny_config, tmp_path,
                                                     one_torch_thread):
    cfg = tiny_config(box_minari, method="qt", steps=6, log_every=3,
                      run_dir=tmp_path / "minari")
    train(cfg)
    header = (tmp_path / "minari" / "metrics.csv").read_text().splitlines()[0]
    for col in ("q_loss", "v_loss", "weight_mean", "action_loss"):
        assert col in header


def test_discrete_actions(discrete_hdf5, tiny_config, tmp_path, one_torch_thread):
    with pytest.raises(ValueError, match=r"Discrete\(2\).*eta 0"):
        train(tiny_config(discrete_hdf5, method="qt", run_dir=tmp_path / "d1"))
    train(tiny_config(discrete_hdf5, method="qt", method_options={"eta": 0}, steps=4,
                      run_dir=tmp_path / "d2"))
    assert load_checkpoint(tmp_path / "d2").step == 4


def test_batch_carries_transitions(tmp_path):
    """The sampler's rewards / next observations / terminals line up with the dataset."""
    data = _bandit(20)
    write_hdf5(data, tmp_path / "b.hdf5")
    norm = Normalizer.fit(data)
    batch = WindowSampler(data, norm, 1, 8, seed=0).sample(16)
    obs = torch.from_numpy(norm.observations(data.observations))
    rows = [int(torch.nonzero((obs == batch.observations[i, 0]).all(1))[0]) for i in range(16)]
    expect_r = torch.from_numpy(data.rewards[rows] / norm.rtg_scale).float()
    assert torch.allclose(batch.rewards[:, 0], expect_r)
    assert batch.terminals[:, 0].all()
    assert torch.equal(batch.next_observations[:, 0],
                       torch.from_numpy(norm.observations(data.next_observations[rows])))


def test_q_guided_policy_takes_the_candidate_the_critic_prefers(box_dataset):
    torch.manual_seed(0)
    method = get_method("qt")
    net = method.build(DTConfig(obs_dim=3, act_dim=1, context_length=4, embed_dim=16,
                                n_layer=1, dropout=0.0))
    norm = Normalizer.fit(box_dataset)
    policy = method.policy(net, norm, -100.0, q_candidates=5)
    envs, pick = 3, 3

    def q_last(obs, acts, ts):  # candidate-major rows: prefer candidate `pick`
        q = torch.zeros(acts.shape[0])
        q[pick * envs:(pick + 1) * envs] = 1.0
        return q

    net.critic.q_last = q_last
    policy.reset(envs)
    obs = box_dataset.observations[:envs]
    for step in range(6):  # past K = 4: the context rolls
        base = float(policy.returns_to_go[0] / norm.rtg_scale)
        action = policy.act(obs)
        chosen_rtg = policy.rtg_buf[:, policy.length - 1, 0]
        assert torch.allclose(chosen_rtg, torch.full((envs,), base + float(
            policy.offsets[pick]))), step
        n = policy.length
        expect = net.actor(policy.rtg_buf[:, :n], policy.obs_buf[:, :n], policy.act_buf[:, :n],
                           policy.ts_buf[:, :n], last_only=True)[:, -1]
        assert np.allclose(action, norm.actions_from_model(expect.detach().numpy()),
                           atol=1e-5)
        policy.observe(np.full(envs, -1.0))
    assert method.inference_candidates(net) == [{}, {"q_candidates": 5}]
    with pytest.raises(ValueError, match="unknown inference settings"):
        method.policy(net, norm, -100.0, temperature=2)


def test_options_are_recorded_in_full_and_compared_resolved(box_hdf5, tiny_config, tmp_path,
                                                            one_torch_thread):
    import json

    default_beta = QTOptions().beta
    cfg = tiny_config(box_hdf5, method="qt", method_options={"beta": default_beta}, steps=4,
                      run_dir=tmp_path / "opts")
    train(cfg)
    saved = json.loads((tmp_path / "opts" / "config.json").read_text())
    assert saved["train_config"]["method_options"] == dataclasses.asdict(QTOptions())
    # the defaults spelled out or left out are the same config: resume works
    train(dataclasses.replace(cfg, method_options=None, steps=6, resume=True))
    with pytest.raises(ValueError, match="method_options"):
        train(dataclasses.replace(cfg, method_options={"beta": 1.5}, steps=8, resume=True))
    with pytest.raises(ValueError, match="'dt' takes no options"):
        train(tiny_config(box_hdf5, method_options={"beta": 1}, run_dir=tmp_path / "dt"))
