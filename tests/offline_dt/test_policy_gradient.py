"""reinforce (with a value baseline) and a2c: the returns, advantages and both losses of a
3-step episode by hand, the rollout's returns and the loss on a real collect, and tiny
CartPole runs through ``train_online`` that resume bit-exactly after an interruption."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_dt.cli import main, parse
from offline_dt.methods import get_method
from offline_dt.methods.a2c import A2COptions
from offline_dt.methods.options import make_options
from offline_dt.methods.ppo_rollout import PPOBatch, gae
from offline_dt.methods.reinforce import ReinforceOptions, policy_gradient_loss
from offline_dt.training.checkpoint import read_checkpoint
from offline_dt.training.loop import TrainingRun
from offline_dt.training.online import (
    OnlineConfig,
    online_train_config,
    source_spec,
    train_online,
)
from offline_dt.training.run_data import env_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(context_length=4, embed_dim=16, n_layer=1, progress=False, log_every=2,
            device="cpu")
#: a few hundred CartPole steps: reinforce 2 envs x 32 steps (6 updates of 64 samples),
#: a2c 2 envs x 5 steps (30 updates of 10)
OPTIONS = {"reinforce": {"n_envs": 2, "n_steps": 32}, "a2c": {"n_envs": 2}}

# A 3-step episode, γ = 0.9: rewards, values V(s_t) and log π(a_t | h_t) at collect time.
REWARDS = np.array([[1.0], [2.0], [3.0]])
VALUES = np.array([[4.0], [5.0], [2.0]])
LOG_PROBS = torch.tensor([-0.5, -1.0, -0.2])
ENTROPY = torch.tensor([0.6, 0.5, 0.4])


def _returns(terminated: bool, bootstrap: float) -> tuple[np.ndarray, np.ndarray]:
    """GAE at λ = 1 over the episode (one env): ended by a termination at t = 2, or cut by
    the rollout's end with ``bootstrap`` = V(s_3)."""
    term = np.array([[False], [False], [terminated]])
    nxt = np.array([[5.0], [2.0], [bootstrap]])  # values[t + 1], then V(s_3)
    return gae(REWARDS, VALUES, nxt, term, np.zeros_like(term), gamma=0.9, lam=1.0)


def test_returns_and_advantages_of_a_terminated_episode_by_hand():
    adv, ret = _returns(terminated=True, bootstrap=99.0)  # a termination adds nothing
    # G_2 = 3; G_1 = 2 + .9 * 3 = 4.7; G_0 = 1 + .9 * 4.7 = 5.23 (Σ_k γ^k r_{t+k})
    np.testing.assert_allclose(ret[:, 0], [5.23, 4.7, 3.0], rtol=1e-6)
    # A_t = G_t - V(s_t)
    np.testing.assert_allclose(adv[:, 0], [1.23, -0.3, 1.0], rtol=1e-5)


def test_returns_at_the_rollout_end_bootstrap_from_the_value_there():
    adv, ret = _returns(terminated=False, bootstrap=10.0)
    # G_2 = 3 + .9 * 10 = 12; G_1 = 2 + .9 * 12 = 12.8; G_0 = 1 + .9 * 12.8 = 12.52
    # (= 1 + .9 * 2 + .81 * 3 + .729 * 10: the 3-step return of a2c)
    np.testing.assert_allclose(ret[:, 0], [12.52, 12.8, 12.0], rtol=1e-6)
    np.testing.assert_allclose(adv[:, 0], [8.52, 7.8, 10.0], rtol=1e-6)


def test_the_reinforce_and_a2c_losses_by_hand():
    adv, ret = (torch.from_numpy(a[:, 0]) for a in _returns(terminated=True, bootstrap=0.0))
    values = torch.from_numpy(VALUES[:, 0].astype(np.float32)).requires_grad_()
    log_probs = LOG_PROBS.clone().requires_grad_()
    # reinforce: -mean(log π · A) + 0.5 mean((V - G)²), no entropy bonus
    loss, logged = policy_gradient_loss(log_probs, values, adv, ret, ENTROPY, 0.5, 0.0)
    # pg = -(-.5 * 1.23 + -1 * -.3 + -.2 * 1) / 3 = .515 / 3
    assert logged["pg_loss"].item() == pytest.approx(0.515 / 3, rel=1e-5)
    # v = (1.23² + .3² + 1²) / 3 = 2.6029 / 3
    assert logged["v_loss"].item() == pytest.approx(2.6029 / 3, rel=1e-5)
    assert loss.item() == pytest.approx(0.515 / 3 + 0.5 * 2.6029 / 3, rel=1e-5)
    loss.backward()
    # the advantage is held constant: ∂L/∂V comes from the baseline's loss alone,
    # c_v · 2 (V - G) / 3; ∂L/∂log π = -A / 3
    torch.testing.assert_close(values.grad, 0.5 * 2 * (values.detach() - ret) / 3)
    torch.testing.assert_close(log_probs.grad, -adv / 3)
    # a2c: the same minus c_e · mean(H), mean(H) = .5
    loss2, logged2 = policy_gradient_loss(LOG_PROBS, values.detach(), adv, ret, ENTROPY,
                                          0.5, 0.01)
    assert loss2.item() == pytest.approx(loss.item() - 0.01 * 0.5, rel=1e-5)
    assert logged2["entropy"].item() == pytest.approx(0.5)


def test_options_and_their_defaults():
    r = make_options(ReinforceOptions, "reinforce", {})
    a = make_options(A2COptions, "a2c", {})
    assert (r.gamma, r.vf_coef, r.ent_coef, r.gae_lambda, r.norm_adv) == (0.99, 0.5, 0, 1, False)
    assert (a.n_steps, a.n_envs, a.gamma, a.gae_lambda, a.ent_coef, a.vf_coef) == (
        5, 8, 0.99, 1.0, 0.0, 0.5)
    assert a.batch_size == 40 and a.updates_per_rollout == 1 and r.batch_size == 512
    assert (get_method("a2c").learning_rate, get_method("a2c").grad_clip) == (7e-4, 0.5)
    with pytest.raises(ValueError, match="reinforce has no option 'gae_lambda'"):
        make_options(ReinforceOptions, "reinforce", {"gae_lambda": 0.9})
    with pytest.raises(ValueError, match="a2c gamma and gae_lambda must be in"):
        make_options(A2COptions, "a2c", {"gae_lambda": 1.5})
    with pytest.raises(ValueError, match=r"a2c's batch is the rollout.*= 40, found 64"):
        get_method("a2c").budget({}, 1000, 64)
    assert get_method("a2c").budget({}, 1000, None).steps == 25


@pytest.mark.parametrize("method", ["reinforce", "a2c"])
def test_a_collected_rollout_holds_discounted_returns_and_the_loss_is_the_formula(
        tmp_path, method):
    """CartPole (reward 1 a step), one env: within an episode ``G_t = 1 + γ G_{t+1}``, a
    terminal step's ``G`` is 1, ``A = G - V``; the method's loss on the rollout is
    ``-mean(log π · A) + c_v mean((V - G)²)`` from the network's own heads."""
    opts = {"n_envs": 1, "n_steps": 64}
    cfg = OnlineConfig(method=method, env_steps=64, run_dir=tmp_path, method_options=opts,
                       **TINY)
    m = get_method(method)
    tcfg = online_train_config(cfg).resolved(500)
    normalizer, info = env_data(tcfg, None, None)
    torch.manual_seed(0)
    net = m.build(tcfg.model_config(info["obs_dim"], info["act_dim"], info["discrete"]),
                  tcfg.method_options)
    source = m.make_source(source_spec(cfg, tcfg, normalizer, torch.device("cpu")))
    source.collect(TrainingRun(tcfg, m, net, normalizer, info), 0)
    d = source.rollout
    g, ts = d["returns"].double(), d["timesteps"][:, -1]
    torch.testing.assert_close(d["advantages"], d["returns"] - d["old_values"])
    inside = (ts[1:] != 0).nonzero().squeeze(-1)  # t and t + 1 in one episode
    ended = (ts[1:] == 0).nonzero().squeeze(-1)  # CartPole ends by termination here
    assert len(ended) >= 1 and source.episodes == len(ended)
    torch.testing.assert_close(g[inside], 1 + 0.99 * g[inside + 1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g[ended], torch.ones_like(g[ended]))
    net.train()
    batch = PPOBatch(**d)
    loss, logged = m.loss(net, batch)
    params, values = net.heads(batch)
    logp = net.distribution(params).log_prob(batch.raw_actions)
    expect = -(logp * d["advantages"]).mean() + 0.5 * (values - d["returns"]).square().mean()
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    assert set(logged) == {"pg_loss", "v_loss", "entropy"}


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(("method", "env_steps", "updates", "cut"),
                         [("reinforce", 384, 6, 5), ("a2c", 300, 30, 7)])
def test_a_short_run_resumes_bit_exactly_after_an_interruption(tmp_path, method, env_steps,
                                                               updates, cut):
    """Interrupted at update ``cut`` (the last checkpoint one before), resumed to the end:
    the same weights, bit for bit, and the same episodes counted; the final policy acts."""
    kw = dict(method=method, env_id="CartPole-v1", env_steps=env_steps, checkpoint_every=2,
              method_options=OPTIONS[method], **TINY)
    full = train_online(OnlineConfig(run_dir=tmp_path / "full", **kw))

    class Interrupt(Exception):
        pass

    def hook(run, step):
        raise Interrupt

    with pytest.raises(Interrupt):
        train_online(OnlineConfig(run_dir=tmp_path / "cut", eval_every=cut, **kw), hook)
    assert read_checkpoint(tmp_path / "cut")[1]["step"] == cut - 1
    resumed = train_online(OnlineConfig(run_dir=tmp_path / "cut", resume=True, **kw))
    assert resumed.steps == full.steps == updates
    a = read_checkpoint(tmp_path / "full")[1]
    b = read_checkpoint(tmp_path / "cut")[1]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    rows = _rows(tmp_path / "full")
    assert rows[-1]["episodes"] == _rows(tmp_path / "cut")[-1]["episodes"]
    assert float(rows[-1]["env_steps"]) >= env_steps and float(rows[-1]["lr"]) == 7e-4
    assert {"pg_loss", "v_loss", "entropy"} <= set(rows[-1])
    assert main(["evaluate", "--checkpoint", str(tmp_path / "full"), "--episodes", "2",
                 "--device", "cpu"]) == 0
    ev = json.loads((tmp_path / "full" / "eval.json").read_text())
    assert ev["method"] == method and ev["episodes"] == 2


def test_online_help_lists_both_with_their_defaults(capsys):
    with pytest.raises(SystemExit):
        parse(["online", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{a2c,dqn,ppo,reinforce}" in text
    assert "a2c: 0.0007" in text and "reinforce: 0.0007" in text and "ppo: 0.00025" in text
