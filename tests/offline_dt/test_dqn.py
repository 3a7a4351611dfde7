"""dqn: the TD target by hand (DQN and Double DQN), the ε schedule, the target network's
update, a short CLI run on CartPole that ``evaluate`` reads, exact resume of the replay
buffer, and the error for a Box env."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from offline_dt.cli import main
from offline_dt.methods import get_method
from offline_dt.methods.dqn import linear_epsilon, td_target, update_target
from offline_dt.nn.config import DTConfig
from offline_dt.training.checkpoint import read_checkpoint
from offline_dt.training.online import OnlineConfig, train_online

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_CFG = dict(method="dqn", env_id="CartPole-v1", context_length=4, embed_dim=16,
                n_layer=1, progress=False, log_every=5, device="cpu", batch_size=16,
                method_options={"learning_starts": 40, "train_frequency": 4,
                                "buffer_size": 100, "target_every": 5, "n_envs": 2})


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_td_target_by_hand():
    reward = torch.tensor([1.0, 0.5, -1.0])
    terminal = torch.tensor([False, True, False])
    q_target = torch.tensor([[2.0, 3.0], [10.0, 10.0], [-1.0, 4.0]])
    q_online = torch.tensor([[5.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    # DQN: r + .9 * (1 - term) * max_a Q_target = [1 + 2.7, 0.5, -1 + 3.6]
    torch.testing.assert_close(td_target(reward, terminal, q_target, 0.9),
                               torch.tensor([3.7, 0.5, 2.6]))
    # Double DQN: the online argmax (0, -, 1) evaluated by the target = [1 + 1.8, .5, -1 + 3.6]
    torch.testing.assert_close(td_target(reward, terminal, q_target, 0.9, q_online),
                               torch.tensor([2.8, 0.5, 2.6]))


def test_epsilon_schedule_is_linear_then_flat():
    assert linear_epsilon(0, 1.0, 0.05, 100) == 1.0
    assert linear_epsilon(50, 1.0, 0.05, 100) == pytest.approx(0.525)
    assert linear_epsilon(100, 1.0, 0.05, 100) == pytest.approx(0.05)
    assert linear_epsilon(10_000, 1.0, 0.05, 100) == pytest.approx(0.05)


def test_target_network_copies_every_target_every_updates():
    cfg = DTConfig(obs_dim=4, act_dim=2, discrete=True, context_length=4, embed_dim=16,
                   n_layer=1, max_timestep=16, dropout=0.0)
    net = get_method("dqn").build(cfg, {"target_every": 2})
    with torch.no_grad():
        net.trunk.predict_action.bias.add_(1.0)
    update_target(net)  # update 1: no copy
    assert not torch.equal(net.target.predict_action.bias, net.trunk.predict_action.bias)
    update_target(net)  # update 2: copy (tau 1)
    torch.testing.assert_close(net.target.state_dict(), net.trunk.state_dict())
    assert int(net.updates) == 2 and "updates" in net.state_dict()
    half = get_method("dqn").build(cfg, {"target_every": 1, "tau": 0.5})
    before = half.target.predict_action.bias.clone()
    with torch.no_grad():
        half.trunk.predict_action.bias.add_(2.0)
    update_target(half)  # Polyak: θ' ← .5 θ + .5 θ'
    torch.testing.assert_close(half.target.predict_action.bias, before + 1.0)


def test_cli_run_on_cartpole_and_evaluate(tmp_path):
    run = tmp_path / "run"
    assert main(["online", "--method", "dqn", "--env-id", "CartPole-v1", "--env-steps", "80",
                 "--run-dir", str(run), "--context-length", "4", "--embed-dim", "16",
                 "--n-layer", "1", "--progress", "false", "--log-every", "5", "--batch-size",
                 "16", "--device", "cpu", "--dqn.learning-starts", "40",
                 "--dqn.train-frequency", "4", "--dqn.n-envs", "2", "--dqn.double", "true"]) == 0
    rows = _rows(run)
    for col in ("loss", "q_mean", "td_target_mean", "env_steps", "episodes",
                "episode_return_mean", "epsilon", "buffer_size"):
        assert col in rows[-1], col
    # 40 steps before the first update, then 4 per update: 11 updates for 80 env steps
    assert rows[-1]["step"] == "11" and float(rows[-1]["env_steps"]) == 80
    assert 0.05 < float(rows[-1]["epsilon"]) < 1.0
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "2", "--device",
                 "cpu"]) == 0
    assert json.loads((run / "eval.json").read_text())["method"] == "dqn"


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    kw = dict(env_steps=88, checkpoint_every=3, **TINY_CFG)
    full = train_online(OnlineConfig(run_dir=tmp_path / "full", **kw))

    class Interrupt(Exception):
        pass

    def hook(run, step):
        raise Interrupt

    with pytest.raises(Interrupt):
        train_online(OnlineConfig(run_dir=tmp_path / "cut", eval_every=8, **kw), hook)
    resumed = train_online(OnlineConfig(run_dir=tmp_path / "cut", resume=True, **kw))
    assert resumed.steps == full.steps == 13
    a = read_checkpoint(tmp_path / "full")[1]
    b = read_checkpoint(tmp_path / "cut")[1]
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=1e-6, rtol=0,
                                   msg=name)
    torch.testing.assert_close(a["source"]["buffer"], b["source"]["buffer"])


def test_box_env_is_refused_naming_the_env_and_space(tmp_path):
    assert main(["online", "--method", "dqn", "--env-id", "Pendulum-v1", "--env-steps", "10",
                 "--run-dir", str(tmp_path / "run")]) == 2
    with pytest.raises(ValueError, match=r"dqn.*Discrete.*Pendulum-v1 has Box"):
        train_online(OnlineConfig(method="dqn", env_id="Pendulum-v1", env_steps=10,
                                  run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()
