"""The GATO-style generalist (``offline_dt.methods.gato``): mu-law tokens by hand, the token
layout of a two-env batch by hand, decoding from the key/value cache against recomputation,
training on a two-env suite (Box and Discrete actions) and acting in each env through
``offline-dt evaluate``, refusing an env it was not trained on, exact resume."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import interrupted_and_full, make_box_dataset, make_discrete_dataset

from offline_dt.cli import main
from offline_dt.data import OfflineDataset, write_hdf5
from offline_dt.data.discretise import mu_law_decode, mu_law_encode
from offline_dt.data.suite import Suite
from offline_dt.data.windows import Normalizer
from offline_dt.methods.gato import Gato, GatoNetwork, GatoOptions, GatoWindows
from offline_dt.methods.gato_policy import GatoPolicy
from offline_dt.methods.mgdt import EnvNet
from offline_dt.nn.cache import KVCache
from offline_dt.nn.config import DTConfig
from offline_dt.nn.decoding import cached_forward
from offline_dt.training import load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LOG_MU_M = math.log(100 * 256 + 1)  # log(M mu + 1), GATO's mu = 100 and M = 256


def test_mu_law_tokens_by_hand_and_round_trip_within_one_bin():
    # F(x) = sgn(x) log(100|x| + 1) / log(25601); bin = floor((F + 1) / 2 * 1024):
    # F(1) = log(101) / log(25601) = 0.45467 -> 744.79 -> 744; F(-1) -> 279.21 -> 279;
    # F(3) = log(301) / log(25601) = 0.56226 -> 799.87 -> 799; |x| >= 256: F clipped to +-1.
    x = torch.tensor([0.0, 1.0, -1.0, 3.0, 256.0, 1e4, -1e4])
    assert mu_law_encode(x).tolist() == [512, 744, 279, 799, 1023, 1023, 0]
    # bin 512 decodes to its centre, F = 1/1024: x = (25601^(1/1024) - 1) / 100
    assert float(mu_law_decode(torch.tensor(512))) == pytest.approx(
        math.expm1(LOG_MU_M / 1024) / 100, rel=1e-5)
    bins = torch.arange(1024)
    assert torch.equal(mu_law_encode(mu_law_decode(bins)), bins)
    # any value decodes into its own bin: between the bin's edges F^-1(2b/1024 - 1), ...
    values = torch.linspace(-300.0, 300.0, 20001)
    b = mu_law_encode(values).double()
    edge = lambda f: torch.sign(f) * torch.expm1(f.abs() * LOG_MU_M) / 100  # noqa: E731
    lo, hi = edge(b * 2 / 1024 - 1), edge((b + 1) * 2 / 1024 - 1)
    back = mu_law_decode(b.long()).double()
    assert bool(((lo - 1e-6 <= back) & (back <= hi + 1e-6)).all())
    inside = values.abs() < 256
    assert bool(((lo - 1e-4 <= values.double()) & (values.double() <= hi + 1e-4))[inside].all())


def _identity(obs_dim: int, low=(), high=()) -> Normalizer:
    return Normalizer(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32), 1.0,
                      np.asarray(low, np.float32), np.asarray(high, np.float32))


def _two_env_suite() -> Suite:
    """Env 0: obs (2,), a Box action in [-2, 2], one episode of 2 steps, rewards 1, 2
    (returns-to-go 3, 2). Env 1: obs (3,), Discrete(3), one episode of 2 steps."""
    box = OfflineDataset.from_flat(
        observations=np.array([[0, 1], [-1, 0]], np.float32),
        actions=np.array([[-2.0], [2.0]], np.float32), rewards=np.array([1, 2], np.float32),
        terminals=np.array([False, True]), timeouts=np.zeros(2, bool),
        observation_space=gym.spaces.Box(-10, 10, (2,), np.float32),
        action_space=gym.spaces.Box(-2, 2, (1,), np.float32), metadata={}, source="a")
    disc = OfflineDataset.from_flat(
        observations=np.array([[1, 0, -1], [0, 0, 0]], np.float32), actions=np.array([2, 0]),
        rewards=np.array([1, 1], np.float32), terminals=np.array([False, True]),
        timeouts=np.zeros(2, bool), observation_space=gym.spaces.Box(-10, 10, (3,), np.float32),
        action_space=gym.spaces.Discrete(3), metadata={}, source="b")
    return Suite((box, disc), ("A-v0", "B-v0"), (_identity(2, [-2], [2]), _identity(3)))


def test_token_layout_of_a_two_env_batch_by_hand():
    """Vocabulary: bins 0..1023, Discrete actions 1024..1026 (B's 3), separator 1027. Local
    positions: return 0, o^1..o^3 1..3, separator 4, action 5. A timestep is padded to B's
    5 tokens. Env A: o = (0, 1) -> 512, 744; (-1, 0) -> 279, 512; actions -2, 2 -> model -1,
    1 -> 279, 744. Env B: o = (0, 0, 0) -> 512 x 3; action 0 -> 1024."""
    src = GatoWindows(_two_env_suite(), GatoOptions(prompt_steps=1), k=2, max_timestep=8,
                      weights=np.array([0.5, 0.5]))
    t = torch.tensor
    # env A: window from step 0 (no padding), led by a prompt of its episode's last step
    a = src.windows(0, t([0]), t([0]), t([1]), t([1]))
    step1, step0 = [279, 512, 1027, 744, 0], [512, 744, 1027, 279, 0]
    assert a.tokens.tolist() == [step1 + step0 + step1]
    assert a.positions.tolist() == [[1, 2, 4, 5, 0] * 3]
    assert a.valid.tolist() == [[True, True, True, True, False] * 3]
    assert a.timesteps.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]]
    # the separator comes before the action; only the window's actions are in the loss
    assert a.in_loss[0].nonzero()[:, 0].tolist() == [8, 13]
    # env B: a window from step 1 (one step, left-padded), no prompt
    b = src.windows(1, t([0]), t([1]), t([0]), t([0]))
    assert b.tokens.tolist() == [[0] * 10 + [512, 512, 512, 1027, 1024]]
    assert b.positions.tolist() == [[0] * 10 + [1, 2, 3, 4, 5]]
    assert b.valid[0].nonzero()[:, 0].tolist() == [10, 11, 12, 13, 14]
    assert b.in_loss[0].nonzero()[:, 0].tolist() == [14] and (b.env == 1).all()
    # return tokens lead each timestep: A's returns-to-go 3 and 2 -> 799 and 779
    # (F(2) = log(201) / log(25601) = 0.52247 -> 779.51)
    ret = GatoWindows(_two_env_suite(), GatoOptions(prompt_prob=0.0, return_tokens=True), k=2,
                      max_timestep=8, weights=np.array([0.5, 0.5]))
    r = ret.windows(0, t([0]), t([0]), t([0]), t([0]))
    assert r.tokens.tolist() == [[799, 512, 744, 1027, 279, 0, 779, 279, 512, 1027, 744, 0]]
    assert r.positions.tolist() == [[0, 1, 2, 4, 5, 0] * 2]
    batch, share = src.sample_shard(12, 0, 1)
    env = batch.env.tolist()
    assert env == sorted(env) and set(env) == {0, 1} and batch.tokens.shape == (12, 15)
    assert share == 1.0


def test_a_suite_of_image_observations_is_refused():
    image = OfflineDataset.from_flat(
        observations=np.zeros((2, 4, 4, 3), np.uint8), actions=np.array([0, 1]),
        rewards=np.ones(2, np.float32), terminals=np.array([False, True]),
        timeouts=np.zeros(2, bool), observation_space=gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
        action_space=gym.spaces.Discrete(2), metadata={}, source="img")
    with pytest.raises(ValueError, match=r"img: gato takes flat Box observations.*refused"):
        Gato().offline_source(Suite((image,), ("X-v0",), (_identity(48),)), None, None, "cpu")
    with pytest.raises(ValueError, match="gato trains on a suite"):
        Gato().offline_source(image, None, None, "cpu")


def _tiny_net(tasks, **options) -> GatoNetwork:
    cfg = DTConfig(obs_dim=3, act_dim=2, context_length=3, max_timestep=16, embed_dim=16,
                   n_layer=2, n_head=2, dropout=0.0, tasks=tasks)
    return GatoNetwork(cfg, GatoOptions(**options)).eval()


def test_cached_decoding_equals_recomputation():
    """Pushing a context and then one token through the cache gives the logits of the
    recomputed sequence; over the first K steps (the context not yet full) the policy acts
    the same from one cache for the episode as from a fresh cache at every step."""
    torch.manual_seed(0)
    tasks = [{"env_id": "A", "obs_dim": 3, "act_dim": 2, "discrete": False}]
    net = _tiny_net(tasks, n_bins=64, prompt_steps=2)
    net.prompt_tokens[0, :, :6] = torch.randint(0, 64, (2, 6))
    net.prompt_length[0] = 2
    tok, env = torch.randint(0, 64, (2, 9)), torch.zeros(2, dtype=torch.long)
    pos, ts = torch.arange(9).remainder(6)[None].expand(2, 9), torch.zeros(2, 9, dtype=torch.long)
    full = net.action_logits(net.hidden(tok, pos, ts, torch.ones(2, 9, dtype=torch.bool), env),
                             env[:, None])
    policy = GatoPolicy(EnvNet(net, 0), _identity(3, [-1, -1], [1, 1]), None)
    policy.reset(2, [1, 2])
    with torch.no_grad():
        x = net.embed(tok[:, :8], pos[:, :8], ts[:, :8], env)
        cache = KVCache(2, 2, 2, 8, 9, x)
        cached_forward(net.blocks, x, cache)
        h = cached_forward(net.blocks, net.embed(tok[:, 8:], pos[:, 8:], ts[:, 8:], env), cache)
        assert torch.allclose(net.action_logits(h[:, -1], env), full[:, -1], atol=1e-5)
    obs = np.random.default_rng(0).normal(size=(3, 2, 3)).astype(np.float32)
    runs = []
    for cached in (False, True):
        p = GatoPolicy(EnvNet(net, 0), _identity(3, [-1, -1], [1, 1]), None, cached=cached)
        p.reset(2, [1, 2])
        acts = []
        for o in obs:  # K = 3 steps: the whole episode fits the context
            acts.append(p.act(o))
            p.observe(np.zeros(2))
        runs.append(np.stack(acts))
    assert runs[0].shape == (3, 2, 2) and np.abs(runs[0]).max() <= 1.0
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)


@pytest.fixture(scope="module")
def suite_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    return (write_hdf5(make_box_dataset(), root / "box.hdf5"),
            write_hdf5(make_discrete_dataset(), root / "disc.hdf5"))


def test_train_on_two_envs_and_evaluate_in_each(suite_paths, tiny_config, tmp_path, capsys):
    """One checkpoint acts in Pendulum-v1 (Box obs 3, Box action) and CartPole-v1 (Box obs 4,
    Discrete(2)) through ``offline-dt evaluate --env-id``; other envs are refused."""
    cfg = tiny_config(f"{suite_paths[0]},{suite_paths[1]}", method="gato", steps=6)
    res = train(cfg)
    assert np.isfinite(res.final_loss)
    assert "action_accuracy" in (cfg.run_dir / "metrics.csv").read_text().splitlines()[0]
    box = make_box_dataset()
    best = int(np.argmax(box.episode_returns))
    length = int(box.episode_lengths[best])
    net = load_checkpoint(cfg.run_dir, env_id="Pendulum-v1").model.net
    assert bool(net.fitted) and net.prompt_length.tolist() == [min(5, length), 5]
    assert net.prompt_timesteps[0, 5 - min(5, length):].tolist() == list(
        range(max(0, length - 5), length))
    for env, low, high in (("Pendulum-v1", -2000, 0), ("CartPole-v1", 1, 500)):
        out = tmp_path / f"{env}.json"
        assert main(["evaluate", "--checkpoint", str(cfg.run_dir), "--env-id", env,
                     "--episodes", "2", "--validation-episodes", "1", "--device", "cpu",
                     "--out", str(out)]) == 0
        ev = json.loads(out.read_text())
        cands = ev["selection"]["candidates"]
        assert [c["settings"]["prompt"] for c in cands] == [True, False]
        assert all(c["target_return"] is None for c in cands)  # no return tokens: no target
        assert ev["env_id"] == env and low <= ev["mean_return"] <= high
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(cfg.run_dir), "--env-id", "Acrobot-v1",
                 "--episodes", "1", "--device", "cpu", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "trained on the envs ['Pendulum-v1', 'CartPole-v1']" in err and "Acrobot-v1" in err


def test_return_tokens_act_toward_a_target(suite_paths, tiny_config, tmp_path):
    cfg = tiny_config(f"{suite_paths[0]},{suite_paths[1]}", method="gato", steps=2,
                      method_options={"return_tokens": True, "inference": "plain"})
    train(cfg)
    ck = load_checkpoint(cfg.run_dir, env_id="CartPole-v1")
    assert ck.method.inference_candidates(ck.model) == [{"prompt": False, "target": True}]
    with pytest.raises(ValueError, match="pass target_return"):
        ck.method.policy(ck.model, ck.normalizer, None)
    policy = ck.method.policy(ck.model, ck.normalizer, 30.0, prompt=False, target=True)
    policy.reset(2, [0, 1])
    assert set(policy.act(np.zeros((2, 4), np.float32)).tolist()) <= {0, 1}


def test_resume_of_a_gato_run_is_exact(suite_paths, tiny_config, tmp_path):
    full = tiny_config(f"{suite_paths[0]},{suite_paths[1]}", method="gato", steps=10,
                       checkpoint_every=5, run_dir=tmp_path / "full",
                       method_options={"prompt_prob": 0.5, "sampling": "proportional"})
    a, b = interrupted_and_full(full, tmp_path, env_id="CartPole-v1")
    assert "net.prompt_tokens" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name
