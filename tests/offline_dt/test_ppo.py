"""ppo and the online driver: GAE and the clipped losses by hand, the collect's log-probs
against the loss's, short CLI runs on CartPole and Pendulum that ``evaluate`` reads, exact
resume after an interruption, and a warm start from a dt checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, make_discrete_dataset

import offline_dt.evaluation.evaluate
import offline_dt.methods.ppo_rollout
from offline_dt.cli import main
from offline_dt.data import write_hdf5
from offline_dt.methods import get_method
from offline_dt.methods.history import trunk_timesteps
from offline_dt.methods.ppo import clipped_surrogate, value_loss
from offline_dt.methods.ppo_rollout import gae
from offline_dt.training import TrainConfig, TrainingRun, load_checkpoint, train
from offline_dt.training.checkpoint import read_checkpoint
from offline_dt.training.online import (
    OnlineConfig,
    online_train_config,
    source_spec,
    train_online,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A tiny network and a short rollout: 2 envs x 16 steps, 2 epochs x 2 minibatches.
TINY = ["--context-length", "4", "--embed-dim", "16", "--n-layer", "1", "--progress", "false",
        "--log-every", "2", "--device", "cpu"]
OPTIONS = ["--ppo.n-envs", "2", "--ppo.n-steps", "16", "--ppo.epochs", "2", "--ppo.minibatches",
           "2"]
TINY_CFG = dict(context_length=4, embed_dim=16, n_layer=1, progress=False, log_every=2,
                device="cpu",
                method_options={"n_envs": 2, "n_steps": 16, "epochs": 2,
                                "minibatches": 2})


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------- the math
def test_gae_by_hand_with_a_termination_and_a_truncation():
    """Env 0: terminates at t=1 (no bootstrap), is truncated at t=3 (bootstrap 0.7 from the
    true last observation); env 1: no episode end, the last step bootstraps from 2.0."""
    rewards = np.array([[1, 0], [1, 0], [1, 0], [1, 1]], np.float32)
    values = np.array([[0.5, 0], [0.4, 0], [0.3, 0], [0.2, 0]], np.float32)
    next_values = np.array([[0.4, 0], [99.0, 0], [0.2, 0], [0.7, 2.0]], np.float32)
    terminated = np.array([[0, 0], [1, 0], [0, 0], [0, 0]], bool)
    truncated = np.array([[0, 0], [0, 0], [0, 0], [1, 0]], bool)
    adv, ret = gae(rewards, values, next_values, terminated, truncated, gamma=0.9, lam=0.8)
    # env 0: δ = [1 + .9*.4 - .5, 1 - .4, 1 + .9*.2 - .3, 1 + .9*.7 - .2]
    #        A3 = 1.43; A2 = .88 + .72 * 1.43; A1 = .6 (episode ended); A0 = .86 + .72 * .6
    np.testing.assert_allclose(adv[:, 0], [1.292, 0.6, 1.9096, 1.43], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [1.792, 1.0, 2.2096, 1.63], rtol=1e-6)
    # env 1: δ3 = 1 + .9 * 2 = 2.8, then A_t = .72 A_{t+1}
    np.testing.assert_allclose(adv[:, 1], [2.8 * 0.72 ** 3, 2.8 * 0.72 ** 2, 2.016, 2.8],
                               rtol=1e-6)


def test_clipped_surrogate_and_value_loss_by_hand():
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.5])
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0])
    old = torch.zeros(4)
    # min(ρA, clip(ρ, .8, 1.2) A): 1.2, 0.5, -2.2, -0.8 → mean -0.325, negated
    loss = clipped_surrogate(ratios.log(), old, adv, clip=0.2)
    assert loss.item() == pytest.approx(0.325, abs=1e-6)
    v, v_old, ret = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0])
    # clipped values 0.7, 0.3: max((1-2)², (0.7-2)²) = 1.69, max(0, 0.09) = 0.09
    assert value_loss(v, v_old, ret, clip=0.2).item() == pytest.approx(0.445, abs=1e-6)
    assert value_loss(v, v_old, ret, clip=None).item() == pytest.approx(0.25, abs=1e-6)


def test_a_separate_critic_keeps_the_value_loss_off_the_policy_trunk():
    from offline_dt.data.windows import Batch

    cfg = online_train_config(OnlineConfig(method="ppo", env_id="CartPole-v1", env_steps=32,
                                           **TINY_CFG)).model_config(4, 2, True)
    window = Batch(returns_to_go=torch.zeros(2, 4, 1), observations=torch.randn(2, 4, 4),
                   actions=torch.zeros(2, 4, dtype=torch.long),
                   timesteps=torch.zeros(2, 4, dtype=torch.long),
                   mask=torch.ones(2, 4, dtype=torch.bool))
    for critic, reaches in (("separate", False), ("shared", True)):
        net = get_method("ppo").build(cfg, {"critic": critic})
        assert (net.critic is None) is reaches
        net.heads(window)[1].sum().backward()
        grads = [p.grad for p in net.trunk.blocks.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) is reaches


def test_clip_decay_and_the_rollout_clip_reaching_the_loss(tmp_path):
    """clip_decay linear: ε (1 - n / N) after n of N env steps (rl-zoo's lin_0.2); the
    source hands the rollout's ε to the loss, whose clip fraction then counts against it."""
    from offline_dt.methods.ppo import PPOOptions

    assert PPOOptions(clip=0.2).clip_at(50, 200) == 0.2
    assert PPOOptions(clip=0.2, clip_decay="linear").clip_at(50, 200) == pytest.approx(0.15)
    assert PPOOptions(clip=0.2, clip_decay="linear").clip_at(250, 200) == 0.0
    opts = {**TINY_CFG["method_options"], "clip_decay": "linear"}
    run = train_online(OnlineConfig(method="ppo", env_id="CartPole-v1", env_steps=64,
                                    run_dir=tmp_path / "run", **{**TINY_CFG,
                                                                "method_options": opts}))
    rows = _rows(run.run_dir)
    # the second rollout (all 64 steps collected) trains with ε = 0: every moved ratio clips
    assert float(rows[-1]["clip_frac"]) == pytest.approx(1.0)
    assert float(rows[0]["clip_frac"]) < 1.0


def test_window_timesteps_hide_the_episode_timestep():
    """``timesteps window`` (the default) embeds slot positions 0..K-1: windows that differ
    only in their episode timesteps act alike; ``episode`` embeds the timesteps themselves."""
    ts = torch.tensor([[0, 0, 7, 8], [3, 4, 5, 6]])
    assert trunk_timesteps(ts, "window").tolist() == [[0, 1, 2, 3]] * 2
    assert trunk_timesteps(ts, "episode") is ts
    from offline_dt.data.windows import Batch

    cfg = online_train_config(OnlineConfig(method="ppo", env_id="CartPole-v1", env_steps=32,
                                           **TINY_CFG)).model_config(4, 2, True)
    torch.manual_seed(0)
    obs = torch.randn(1, 4, 4).expand(2, 4, 4)
    window = Batch(returns_to_go=torch.zeros(2, 4, 1), observations=obs,
                   actions=torch.zeros(2, 4, dtype=torch.long), timesteps=ts,
                   mask=torch.ones(2, 4, dtype=torch.bool))
    for mode, same in (("window", True), ("episode", False)):
        net = get_method("ppo").build(cfg, {**TINY_CFG["method_options"], "timesteps": mode})
        logits, values = net.heads(window)
        assert torch.allclose(logits[0], logits[1]) is same
        assert torch.allclose(values[0], values[1]) is same
    with pytest.raises(ValueError, match="must be .window. or .episode., found .absolute."):
        get_method("ppo").build(cfg, {"timesteps": "absolute"})


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_collect_log_probs_equal_the_loss_forward(tmp_path, env_id):
    """The windows stored at collect give the loss the log-probs and values the policy acted
    with (ratio 1 before the first update: causal masking and padding agree)."""
    options = {**TINY_CFG["method_options"], "n_steps": 48}  # CartPole episodes end
    cfg = OnlineConfig(method="ppo", env_id=env_id, env_steps=96, run_dir=tmp_path,
                       **{**TINY_CFG, "method_options": options})
    tcfg = online_train_config(cfg)
    from offline_dt.training.run_data import env_data

    method = get_method("ppo")
    tcfg = tcfg.resolved(500)
    normalizer, info = env_data(tcfg, None, None)
    torch.manual_seed(0)
    net = method.build(tcfg.model_config(info["obs_dim"], info["act_dim"], info["discrete"]),
                       tcfg.method_options)
    source = method.make_source(source_spec(cfg, tcfg, normalizer, torch.device("cpu")))
    source.collect(TrainingRun(tcfg, method, net, normalizer, info), 0)
    data = source.rollout
    assert not data["mask"][:, -1].logical_not().any()  # the trained step is real
    from offline_dt.methods.ppo import PPOBatch

    batch = PPOBatch(**data)
    with torch.no_grad():
        params, values = net.heads(batch)
        logp = net.distribution(params).log_prob(batch.raw_actions)
    torch.testing.assert_close(logp, data["old_log_probs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(values, data["old_values"], atol=1e-5, rtol=0)
    assert source.episodes > 0 or env_id == "Pendulum-v1"


def test_truncation_starts_a_fresh_window_and_bootstraps(tmp_path, monkeypatch):
    """Pendulum is truncated at 200 steps: step 200 of the one env starts a new episode
    (one real slot, timestep 0, no previous reward), and GAE gets step 199's next value from
    the window of the true last observation (not step 200's value), with no termination."""
    cfg = OnlineConfig(method="ppo", env_id="Pendulum-v1", env_steps=210, run_dir=tmp_path,
                       **{**TINY_CFG, "method_options": {"n_envs": 1, "n_steps": 210,
                                                         "minibatches": 2}})
    from offline_dt.training.run_data import env_data

    tcfg = online_train_config(cfg).resolved(200)
    normalizer, info = env_data(tcfg, None, None)
    net = get_method("ppo").build(tcfg.model_config(3, 1, False), tcfg.method_options)
    source = get_method("ppo").make_source(source_spec(cfg, tcfg, normalizer,
                                                       torch.device("cpu")))
    seen, boot = {}, []
    real_gae, real_values = offline_dt.methods.ppo_rollout.gae, source._values
    monkeypatch.setattr(offline_dt.methods.ppo_rollout, "gae",
                        lambda *a: seen.update(args=a) or real_gae(*a))
    monkeypatch.setattr(source, "_values", lambda *a: boot.append(real_values(*a)) or boot[-1])
    source.collect(TrainingRun(tcfg, get_method("ppo"), net, normalizer, info), 0)
    d = source.rollout
    assert d["mask"][200].tolist() == [False, False, False, True]
    assert d["timesteps"][200, -1] == 0 and d["returns_to_go"][200, -1, 0] == 0
    assert d["timesteps"][199, -1] == 199 and d["mask"][199].all()
    rewards, values, next_values, terminated, truncated = seen["args"][:5]
    assert not terminated.any() and truncated[:, 0].nonzero()[0].tolist() == [199]
    assert len(boot) == 2  # the truncation, then the rollout's last step
    assert next_values[199, 0] == pytest.approx(float(boot[0][0]))
    assert next_values[199, 0] != pytest.approx(float(values[200, 0]))
    np.testing.assert_allclose(next_values[:199, 0], values[1:200, 0])
    assert next_values[209, 0] == pytest.approx(float(boot[1][0]))
    assert source.episodes == 1


# ---------------------------------------------------------------------------------- the driver
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_cli_run_writes_a_run_that_evaluate_reads(tmp_path, env_id):
    run = tmp_path / "run"
    assert main(["online", "--method", "ppo", "--env-id", env_id, "--env-steps", "64",
                 "--run-dir", str(run), *TINY, *OPTIONS]) == 0
    rows = _rows(run)
    for col in ("loss", "pg_loss", "v_loss", "entropy", "approx_kl", "clip_frac", "env_steps",
                "episodes", "episode_return_mean"):
        assert col in rows[-1], col
    assert float(rows[-1]["env_steps"]) == 64 and rows[-1]["step"] == "8"
    # lr_decay auto is linear for ppo (CleanRL's anneal_lr): 8 updates, no warmup, the lr
    # logged after update s is the one update s + 1 takes, 2.5e-4 * (1 - s / 8)
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [2.5e-4 * (1 - s / 8) for s in (2, 4, 6, 8)])
    ckpt = load_checkpoint(run)
    assert ckpt.train_config.method == "ppo" and ckpt.train_config.dataset == ""
    assert ckpt.dataset_info["env_id"] == env_id
    np.testing.assert_array_equal(ckpt.normalizer.state_std, 1.0)
    assert (run / "online.json").is_file()
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "2", "--device",
                 "cpu"]) == 0
    import json

    ev = json.loads((run / "eval.json").read_text())
    assert ev["method"] == "ppo" and ev["episodes"] == 2 and ev["headline_target"] is None


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    """Interrupted at update 7 (last checkpoint at update 6, inside the second rollout;
    CartPole episodes span the rollouts), resumed to the end: the same weights."""
    kw = dict(method="ppo", env_id="CartPole-v1", env_steps=96, checkpoint_every=2,
              **TINY_CFG)
    full = train_online(OnlineConfig(run_dir=tmp_path / "full", **kw))

    class Interrupt(Exception):
        pass

    def hook(run, step):
        raise Interrupt

    with pytest.raises(Interrupt):
        train_online(OnlineConfig(run_dir=tmp_path / "cut", eval_every=7, **kw), hook)
    assert read_checkpoint(tmp_path / "cut")[1]["step"] == 6
    resumed = train_online(OnlineConfig(run_dir=tmp_path / "cut", resume=True, **kw))
    assert resumed.steps == full.steps == 12
    a = read_checkpoint(tmp_path / "full")[1]["model"]
    b = read_checkpoint(tmp_path / "cut")[1]["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    assert _rows(tmp_path / "full")[-1]["episodes"] == _rows(tmp_path / "cut")[-1]["episodes"]


def test_init_from_a_dt_checkpoint_loads_the_trunk(tmp_path):
    h5 = write_hdf5(make_discrete_dataset(), tmp_path / "tiny-discrete-v0.hdf5")
    dt = train(TrainConfig(dataset=str(h5), method="dt", run_dir=tmp_path / "dt",
                           **{**TINY_TRAIN, "context_length": 4}))
    run = tmp_path / "ppo"
    assert main(["online", "--method", "ppo", "--env-id", "CartPole-v1", "--env-steps", "32",
                 "--run-dir", str(run), "--init", str(dt.run_dir), *TINY, *OPTIONS,
                 "--checkpoint-every", "1000", "--log-every", "100"]) == 0
    pre = read_checkpoint(dt.run_dir)[1]["model"]
    # the first checkpoint is after 4 updates: compare the weights the run started from
    cfg = online_train_config(OnlineConfig(method="ppo", env_id="CartPole-v1", env_steps=32,
                                           init=str(dt.run_dir), run_dir=run, **TINY_CFG))
    assert cfg.max_timestep == 64 and cfg.embed_dim == 16

    net = get_method("ppo").build(cfg.model_config(4, 2, True), cfg.method_options)
    assert get_method("ppo").warm_start(net, {"model": pre}) is False
    for name, value in net.trunk.state_dict().items():
        torch.testing.assert_close(value, pre[name], msg=name)
    ckpt = load_checkpoint(run)
    assert ckpt.dataset_info["init_checkpoint"].endswith("checkpoint.pt")
    np.testing.assert_allclose(ckpt.normalizer.state_mean,
                               load_checkpoint(dt.run_dir).normalizer.state_mean)


def test_bad_options_and_a_dataset_run_are_refused(tmp_path, discrete_hdf5):
    with pytest.raises(ValueError, match="n_envs \\* n_steps = 30 must be divisible"):
        train_online(OnlineConfig(env_steps=8, run_dir=tmp_path / "a",
                                  method_options={"n_envs": 3, "n_steps": 10}))
    with pytest.raises(ValueError, match="ppo option 'clip_vloss' must be bool, found 'true'"):
        train_online(OnlineConfig(env_steps=8, run_dir=tmp_path / "b",
                                  method_options={"clip_vloss": "true"}))  # never parsed
    with pytest.raises(ValueError, match="'ppo' is a method of kind 'online': run "
                                         "`offline-dt online --method ppo`"):
        train(TrainConfig(dataset=str(discrete_hdf5), method="ppo", run_dir=tmp_path / "c",
                          **TINY_TRAIN))
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="trains on its rollouts"):
        get_method("ppo").loss(None, None)


def test_episode_stream_seeds_every_episode_and_resumes_by_replay():
    """Episode k resets with reset_seed(k) (its first observation is gym's for that seed);
    a stream restored from its state steps on exactly as the original."""
    import gymnasium as gym

    from offline_dt.envs.policies import ActionReplayPolicy
    from offline_dt.envs.stream import EpisodeStream

    env = gym.make("CartPole-v1")
    actions = np.random.default_rng(0).integers(0, 2, (90, 3))
    stream, policy = EpisodeStream("CartPole-v1", 3, lambda k: 1000 + k), \
        ActionReplayPolicy(actions)
    stream.start(policy)
    for j in range(3):
        np.testing.assert_array_equal(stream.observations[j], env.reset(seed=1000 + j)[0])
    ended = np.zeros(3, bool)
    for tr in stream.steps(policy, 60):
        for j in np.flatnonzero(ended):  # reset after the last step's yield
            np.testing.assert_array_equal(tr.observations[j],
                                          env.reset(seed=int(stream.seeds[j]))[0])
        ended = tr.terminated | tr.truncated
    assert stream.started > 3 and len(stream.drain_finished()) == stream.started - 3
    restored = EpisodeStream("CartPole-v1", 3, lambda k: 1000 + k)
    restored.load_state_dict(stream.state_dict())
    np.testing.assert_array_equal(restored.observations, stream.observations)
    tail = ActionReplayPolicy(actions[60:])
    tail.reset(3)
    a = [t.next_observations for t in stream.steps(policy, 30)]
    b = [t.next_observations for t in restored.steps(tail, 30)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert restored.started == stream.started
