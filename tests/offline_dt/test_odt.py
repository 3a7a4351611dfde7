"""odt and online fine-tuning: the policy's likelihood against torch.distributions, the
temperature's direction, the TD3 critic's target and gradients by hand, hindsight relabelling
by hand, a fine-tune through the CLI that ``evaluate`` reads (also with TD3 gradients from a
plain odt checkpoint), exact resume after an interruption, and the error for a dt
checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_box_dataset
from torch.distributions import Categorical, Normal, TanhTransform, TransformedDistribution

from offline_dt.cli import main, parse
from offline_dt.data import write_hdf5
from offline_dt.data.windows import Batch
from offline_dt.envs.policies import CallablePolicy
from offline_dt.methods import get_method
from offline_dt.methods.odt import (
    log_likelihood_and_entropy,
    odt_loss,
    td3_terms,
    temperature_step,
)
from offline_dt.methods.odt_replay import ReplaySource, hindsight_returns_to_go
from offline_dt.nn.config import DTConfig
from offline_dt.training import TrainConfig, TrainingRun, load_checkpoint, train
from offline_dt.training.checkpoint import read_checkpoint
from offline_dt.training.finetune import FinetuneConfig, finetune, source_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Pendulum episodes are 200 steps: the timestep table holds them whole.
PRETRAIN = {**TINY_TRAIN, "max_timestep": 200}


def _net(discrete: bool = False, **options: float):
    cfg = DTConfig(obs_dim=3, act_dim=2 if discrete else 1, discrete=discrete,
                   context_length=4, embed_dim=16, n_layer=1, max_timestep=16, dropout=0.0)
    torch.manual_seed(0)
    return get_method("odt").build(cfg, options)


def _batch(discrete: bool = False) -> Batch:
    g = torch.Generator().manual_seed(1)
    actions = (torch.randint(0, 2, (2, 4), generator=g) if discrete
               else torch.rand(2, 4, 1, generator=g) * 1.8 - 0.9)
    return Batch(returns_to_go=torch.rand(2, 4, 1, generator=g),
                 observations=torch.randn(2, 4, 3, generator=g), actions=actions,
                 timesteps=torch.arange(4).repeat(2, 1),
                 mask=torch.tensor([[False, True, True, True], [True] * 4]))


def _critic_batch() -> Batch:
    """:func:`_batch` with rewards and a terminal at the second window's last step."""
    g = torch.Generator().manual_seed(2)
    terminals = torch.zeros(2, 4, dtype=torch.bool)
    terminals[1, 3] = True
    return dataclasses.replace(_batch(), rewards=-torch.rand(2, 4, generator=g),
                               next_observations=torch.randn(2, 4, 3, generator=g),
                               terminals=terminals)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, Path]:
    """Tiny odt and dt runs on the Pendulum-shaped dataset (20 updates each)."""
    root = tmp_path_factory.mktemp("odt")
    h5 = write_hdf5(make_box_dataset(), root / "tiny-box-v0.hdf5")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method in ("odt", "dt"):
            train(TrainConfig(dataset=str(h5), method=method, run_dir=root / method, **PRETRAIN))
    finally:
        torch.set_num_threads(n)
    return {"odt": root / "odt", "dt": root / "dt", "root": root}


# ---------------------------------------------------------------------------------- the math
def test_gaussian_nll_matches_torch_distributions():
    net, batch = _net(), _batch()
    mean, log_std = net.heads(batch.returns_to_go, batch.observations, batch.actions,
                              batch.timesteps, batch.mask)
    data, _ = log_likelihood_and_entropy(mean, log_std, batch.actions)
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    expected = dist.log_prob(batch.actions).sum(-1)
    torch.testing.assert_close(data, expected, rtol=1e-5, atol=1e-5)
    loss, extras = odt_loss(net, batch)
    m = batch.mask
    torch.testing.assert_close(extras["nll"], -expected[m].mean(), rtol=1e-5, atol=1e-5)
    lam = math.exp(math.log(0.1))
    torch.testing.assert_close(loss, extras["nll"] - lam * extras["entropy"])
    # by hand at one step: log N(atanh a; mu, sigma) - log(1 - a^2)
    a, mu, s = batch.actions[1, 0, 0], mean[1, 0, 0], log_std[1, 0, 0].exp()
    u = torch.atanh(a)
    by_hand = (-0.5 * ((u - mu) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)
               - torch.log(1 - a ** 2))
    torch.testing.assert_close(data[1, 0], by_hand, rtol=1e-5, atol=1e-5)


def test_categorical_nll_and_entropy_match_torch_distributions():
    net, batch = _net(discrete=True), _batch(discrete=True)
    logits, none = net.heads(batch.returns_to_go, batch.observations, batch.actions,
                             batch.timesteps, batch.mask)
    data, entropy = log_likelihood_and_entropy(logits, none, batch.actions)
    assert none is None
    dist = Categorical(logits=logits)
    torch.testing.assert_close(data, dist.log_prob(batch.actions))
    torch.testing.assert_close(entropy, dist.entropy())
    assert net.target_entropy == pytest.approx(0.5 * math.log(2))


def test_td3_target_and_loss_by_hand():
    """TD target ``r·c + γ(1 - terminal) min Q_target(s_{t+1}, tanh μ_{t+1})`` (no smoothing
    noise), on the steps whose next step is in the window or that are terminal."""
    net = _net(critic_weight=2.0, policy_noise=0.0, reward_scale=10.0, discount=0.9)
    batch = _critic_batch()
    with torch.no_grad():  # a target unlike the critic, so the test sees which one is used
        for p in net.critic_target.parameters():
            p.add_(0.1)
    with torch.no_grad():  # values only (the gradients have their own test)
        mean, _ = net.heads(batch.returns_to_go, batch.observations, batch.actions,
                            batch.timesteps, batch.mask)
        q_loss, q_term, extras = td3_terms(net, batch, mean)
    expected, count = 0.0, 0
    for b in range(2):
        for t in range(4):
            terminal = bool(batch.terminals[b, t])
            if not batch.mask[b, t] or (t == 3 and not terminal):
                continue  # padding, or no next action in the window
            y = float(batch.rewards[b, t]) * 10
            if not terminal:
                a_next = torch.tanh(mean[b, t + 1])
                y += 0.9 * float(net.critic_target(batch.observations[b, t + 1],
                                                  a_next).detach().min())
            q = net.critic(batch.observations[b, t], batch.actions[b, t]).detach()
            expected += float(((q - y) ** 2).sum())
            count += 1
    assert count == 6  # 3 + 3 steps: two last steps lack a next action, one is terminal
    assert float(q_loss) == pytest.approx(expected / count, rel=1e-5)
    q_pi = net.critic(batch.observations, torch.tanh(mean)).detach().min(-1).values[batch.mask]
    assert float(q_term) == pytest.approx(float(-2 * q_pi.mean() / q_pi.abs().mean()), rel=1e-5)
    assert float(extras["q_mean"]) == pytest.approx(float(q_pi.mean()), rel=1e-5)


def test_td3_gradients_reach_the_right_networks():
    """The Q term moves the actor, not the critic; the TD loss moves the critic, not the
    actor; the target only moves by the Polyak step."""
    net, batch = _net(critic_weight=1.0), _critic_batch()
    mean, _ = net.heads(batch.returns_to_go, batch.observations, batch.actions,
                        batch.timesteps, batch.mask)
    q_loss, q_term, _ = td3_terms(net, batch, mean)
    q_term.backward(retain_graph=True)
    assert all(p.grad is None for p in net.critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.trunk.parameters())
    net.zero_grad(set_to_none=True)
    q_loss.backward()
    assert all(p.grad is None for p in net.trunk.parameters())
    assert all(p.grad is not None for p in net.critic.parameters())
    assert not any(p.requires_grad for p in net.critic_target.parameters())
    target = [p.clone() for p in net.critic_target.parameters()]
    with torch.no_grad():
        for p in net.critic.parameters():
            p.add_(1.0)
    get_method("odt").after_step(net)
    for before, after, source in zip(target, net.critic_target.parameters(),
                                     net.critic.parameters(), strict=True):
        torch.testing.assert_close(after, before + 0.005 * (source - before))


def test_td3_options_are_checked():
    assert _net().critic is None  # the published ODT: no critic
    with pytest.raises(ValueError, match="Discrete.*--odt.critic-weight 0"):
        _net(discrete=True, critic_weight=1.0)
    with pytest.raises(ValueError, match="odt discount"):
        _net(critic_weight=1.0, discount=1.0)
    with pytest.raises(ValueError, match="odt critic_weight must be >= 0"):
        _net(critic_weight=-1.0)


@pytest.mark.parametrize(("target", "grows"), [(100.0, True), (-100.0, False)])
def test_temperature_moves_toward_the_entropy_target(target, grows):
    """Entropy below the target: λ grows; above: λ shrinks (a few Adam steps of lr 0.01)."""
    net, batch = _net(target_entropy=target, temperature_lr=0.01), _batch()
    before = float(net.log_temperature.exp())
    for _ in range(3):
        odt_loss(net, batch)
        temperature_step(net)
    after = float(net.log_temperature.exp())
    assert (after > before) if grows else (after < before), (before, after)
    # Adam's first steps move log λ by about lr each
    assert abs(math.log(after) - math.log(before)) == pytest.approx(0.03, rel=1e-3)
    assert not net.log_temperature.requires_grad  # the loop's AdamW never moves it


def test_options_are_recorded_and_checked():
    odt = get_method("odt")
    opts = odt.options({"init_temperature": 0.2})
    assert opts.init_temperature == 0.2 and opts.target_entropy == "auto"
    assert opts.temperature_lr == 0.0001
    assert odt.options({"target_entropy": -2}).target_entropy == -2.0
    with pytest.raises(ValueError, match="odt has no option 'temp'"):
        odt.options({"temp": 1.0})
    with pytest.raises(ValueError, match="target_entropy' must be float or 'auto', found 'high'"):
        odt.options({"target_entropy": "high"})


# ---------------------------------------------------------------------------------- buffer
def test_hindsight_relabelling_by_hand(pretrained, tmp_path):
    """A collected episode enters the buffer with the returns-to-go it achieved, not the
    target it was conditioned on."""
    assert hindsight_returns_to_go(np.array([1.0, -2.0, 4.0])).tolist() == [3.0, 2.0, 4.0]
    ckpt = load_checkpoint(pretrained["odt"])
    dataset = make_box_dataset()
    cfg = FinetuneConfig(checkpoint=str(pretrained["odt"]), buffer_size=3,
                         updates_per_round=5, online_steps=1)
    tcfg = dataclasses.replace(ckpt.train_config, context_length=4)
    source = get_method("odt").make_source(source_spec(
        cfg, tcfg, dataset, ckpt.normalizer, torch.device("cpu"), "Pendulum-v1", target=1e6))
    assert isinstance(source, ReplaySource) and source.target_return == 1e6
    # seeded with the three best episodes, in ascending order of return
    best = np.sort(dataset.episode_returns)[-3:]
    np.testing.assert_allclose(source.buffer.episode_returns, best, rtol=1e-6)

    class Constant:
        def policy(self, *args, **kwargs):
            return CallablePolicy(lambda obs: np.full((len(obs), 1), 0.5, np.float32))

    run = TrainingRun(tcfg, Constant(), ckpt.model, ckpt.normalizer, {})
    source.collect(run, step=0)
    assert source.env_steps == 200 and source.buffer.num_episodes == 3  # FIFO: oldest out
    rewards = source.buffer.episode(2)["rewards"]
    assert len(rewards) == 200 and source.return_mean == pytest.approx(rewards.sum(), rel=1e-5)
    expected = np.cumsum(rewards[::-1].astype(np.float64))[::-1] / ckpt.normalizer.rtg_scale
    start = int(source.buffer.episode_starts[2])
    np.testing.assert_allclose(source.sampler.rtg[start:].numpy(), expected, rtol=1e-5)
    assert source.finished(5) and not source.finished(3)


# ---------------------------------------------------------------------------------- end to end
def test_finetune_through_the_cli_then_evaluate(pretrained, tmp_path, capsys):
    out = tmp_path / "online"
    assert main(["finetune", "--checkpoint", str(pretrained["odt"]), "--online-steps", "400",
                 "--updates-per-round", "6", "--run-dir", str(out), "--log-every", "3",
                 "--checkpoint-every", "5", "--progress", "false", "--device", "cpu"]) == 0
    _, payload = read_checkpoint(out, "cpu")
    assert payload["step"] == 12  # two rounds of one 200-step episode
    assert payload["source"]["env_steps"] == 400 and payload["source"]["episodes"] == 2
    rows = _rows(out)
    assert {"env_steps", "collect_return_mean", "online_episodes", "buffer_episodes", "nll",
            "entropy", "temperature", "loss"} <= set(rows[0])
    assert [float(r["env_steps"]) for r in rows] == [200, 200, 400, 400]
    assert math.isfinite(float(rows[-1]["collect_return_mean"]))
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["g_online"] == 0.0  # Pendulum: r + |r| with r = -150 (ref_max_score)
    # warm start: the optimiser and schedule continue from the 20 pretraining updates
    assert payload["scheduler"]["last_epoch"] == 20 + 12
    assert load_checkpoint(out).train_config.method == "odt"
    assert main(["evaluate", "--checkpoint", str(out), "--episodes", "2",
                 "--validation-episodes", "1", "--device", "cpu"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["method"] == "odt" and ev["episodes"] == 2 and math.isfinite(ev["mean_return"])


def test_finetune_with_td3_gradients_from_a_plain_odt(pretrained, tmp_path):
    """``--odt.critic-weight 1`` over an odt checkpoint without a critic: the actor
    starts from the checkpoint, the critic fresh, the optimizer and schedule anew."""
    out = tmp_path / "td3"
    assert main(["finetune", "--checkpoint", str(pretrained["odt"]), "--online-steps", "200",
                 "--updates-per-round", "4", "--run-dir", str(out), "--log-every", "2",
                 "--odt.critic-weight", "1", "--progress", "false",
                 "--device", "cpu"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.train_config.method_options.critic_weight == 1.0
    assert ckpt.train_config.method_options.init_temperature == 0.1  # the rest kept
    _, payload = read_checkpoint(out, "cpu")
    assert payload["scheduler"]["last_epoch"] == 4  # a fresh schedule
    assert any(k.startswith("critic_target.") for k in payload["model"])
    rows = _rows(out)
    assert {"q_loss", "q_mean", "nll"} <= set(rows[0])
    assert all(math.isfinite(float(r["q_loss"])) for r in rows)
    _, base = read_checkpoint(pretrained["odt"], "cpu")
    net = get_method("odt").build(ckpt.model_config, {"critic_weight": 1})
    assert not get_method("odt").warm_start(net, base)
    for name, value in base["model"].items():
        assert torch.equal(net.state_dict()[name], value), name


def _finetune_cfg(pretrained, run_dir: Path, **kw) -> FinetuneConfig:
    return FinetuneConfig(checkpoint=str(pretrained["odt"]), run_dir=run_dir,
                          online_steps=600, updates_per_round=6, checkpoint_every=4,
                          log_every=2, progress=False, device="cpu", **kw)


@pytest.mark.parametrize("options", [{}, {"critic_weight": 1}], ids=["odt", "td3"])
def test_resume_after_an_interruption_equals_an_uninterrupted_run(pretrained, tmp_path,
                                                                  monkeypatch, options):
    full = finetune(_finetune_cfg(pretrained, tmp_path / "full", method_options=options))
    assert full.steps == 18
    collect = ReplaySource.collect

    def interrupted(self, run, step):
        if step == 10:  # mid-round 2; the last checkpoint is at step 8
            raise KeyboardInterrupt
        collect(self, run, step)

    monkeypatch.setattr(ReplaySource, "collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(_finetune_cfg(pretrained, tmp_path / "part", method_options=options))
    monkeypatch.setattr(ReplaySource, "collect", collect)
    assert read_checkpoint(tmp_path / "part", "cpu")[1]["step"] == 8
    finetune(_finetune_cfg(pretrained, tmp_path / "part", resume=True, method_options=options))
    (_, a), (_, b) = read_checkpoint(tmp_path / "full"), read_checkpoint(tmp_path / "part")
    assert a["step"] == b["step"] == 18
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["source"]["buffer"]:
        assert torch.equal(a["source"]["buffer"][name], b["source"]["buffer"][name]), name
    assert a["source"]["env_steps"] == b["source"]["env_steps"] == 600
    drop = {"steps_per_second", "wall_seconds"}
    strip = [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "full")]
    assert strip == [{k: v for k, v in r.items() if k not in drop}
                     for r in _rows(tmp_path / "part")]
    with pytest.raises(ValueError, match="buffer_size"):
        finetune(_finetune_cfg(pretrained, tmp_path / "part", resume=True, buffer_size=2,
                               method_options=options))


def test_dt_checkpoint_and_bad_input_are_refused(pretrained, tmp_path, capsys, monkeypatch):
    rc = main(["finetune", "--checkpoint", str(pretrained["dt"]), "--run-dir",
               str(tmp_path / "x"), "--online-steps", "10", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "method 'dt'" in err and "--method odt" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="online_steps"):
        finetune(FinetuneConfig(checkpoint=str(pretrained["odt"]), online_steps=0))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        finetune(FinetuneConfig(checkpoint=str(tmp_path / "nowhere")))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="one process"):
        finetune(FinetuneConfig(checkpoint=str(pretrained["odt"])))


def test_cli_flags_mirror_the_config():
    inv = parse(["finetune", "--checkpoint", "runs/odt", "--online-steps", "500",
                 "--target-return", "-100", "--buffer-size", "7"])
    assert inv.config == FinetuneConfig(checkpoint="runs/odt", online_steps=500,
                                        target_return=-100.0, buffer_size=7)
    assert parse(["finetune", "--checkpoint", "c"]).config == FinetuneConfig(checkpoint="c")
    inv = parse(["finetune", "--checkpoint", "c", "--odt.critic-weight", "300"])
    assert inv.config.method_options == {"critic_weight": 300.0}  # only what was set
    assert FinetuneConfig(checkpoint="runs/odt/checkpoint.pt").resolved_run_dir() == Path(
        "runs/odt-online")

