"""Band (sliding-window) attention: the key/value cache is exact by construction.

A band network (``DTConfig.attention == "band"``) attends to the last W tokens at every layer,
so streaming an episode through ``step_cached`` equals the banded forward over the whole
episode at every step (Mistral 7B's rolling cache), not only for the first K steps as the
classic window network's cache. Also: the band mask (perturbations), the segment sampler,
training / checkpoint / resume through ``offline_dt.training.loop.train``, and
``evaluate_checkpoint`` acting from the cache with the same returns as full recomputation.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from offline_dt.data.windows import Normalizer, SegmentSampler
from offline_dt.evaluation.episodes import evaluate_policy
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint
from offline_dt.evaluation.selection import use_kv_cache
from offline_dt.methods.dt import DTPolicy
from offline_dt.nn.attention import band_mask
from offline_dt.nn.cache import cache_is_exact
from offline_dt.nn.config import DTConfig
from offline_dt.nn.transformer import DecisionTransformer
from offline_dt.training import TrainConfig, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def band_model(discrete: bool = False, k: int = 4, n_layer: int = 3, band: int | None = None,
               scale: float = 0.3, max_timestep: int = 300) -> DecisionTransformer:
    """A random band network with weights large enough that every input moves the outputs."""
    torch.manual_seed(0)
    cfg = DTConfig(obs_dim=3, act_dim=4 if discrete else 2, discrete=discrete,
                   context_length=k, embed_dim=32, n_layer=n_layer, n_head=2, dropout=0.0,
                   attention="band", band_tokens=band, max_timestep=max_timestep)
    model = DecisionTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, scale)
    return model.eval()


def episode(b: int, steps: int, discrete: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    rtg, obs = torch.randn(b, steps, 1, generator=g), torch.randn(b, steps, 3, generator=g)
    if discrete:
        act = torch.randint(0, 4, (b, steps), generator=g)
    else:
        act = torch.rand(b, steps, 2, generator=g) * 2 - 1
    return rtg, obs, act, torch.arange(steps).expand(b, steps)


# ---------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("discrete", [False, True])
def test_step_cached_equals_full_banded_forward_over_a_whole_episode(discrete):
    """(a) 200 steps, 4 envs, 3 layers: every streamed action equals the banded forward over
    the whole episode (not only the first K steps), and the cache stays W + 2 tokens long."""
    model = band_model(discrete)
    b, steps, w = 4, 200, model.cfg.band
    rtg, obs, act, ts = episode(b, steps, discrete)
    with torch.no_grad():
        full = model(rtg, obs, act, ts)  # (B, 200, act_dim): one pass over 600 tokens
    cache, diffs = None, []
    for t in range(steps):
        out, cache = model.step_cached(cache, rtg[:, t], obs[:, t], ts[:, t],
                                       act[:, t - 1] if t else None)
        diffs.append((out - full[:, t]).abs().max().item())
        assert cache.length == min(3 * t + 2, w + 2)
    assert max(diffs) <= 1e-5, (max(diffs), int(np.argmax(diffs)))
    # The band matters past the first K steps: a window network's cache drifts there.
    window = DecisionTransformer(dataclasses.replace(model.cfg, attention="window",
                                                     band_tokens=None))
    window.load_state_dict(model.state_dict())
    window.eval()
    cache, drift = None, 0.0
    with torch.no_grad():
        ref = window(rtg[:, :40], obs[:, :40], act[:, :40], ts[:, :40])
    for t in range(40):
        out, cache = window.step_cached(cache, rtg[:, t], obs[:, t], ts[:, t],
                                        act[:, t - 1] if t else None)
        lo = max(0, t - model.cfg.context_length + 1)
        with torch.no_grad():
            exact = window(rtg[:, lo:t + 1], obs[:, lo:t + 1], act[:, lo:t + 1],
                           ts[:, lo:t + 1], last_only=True)[:, -1]
        drift = max(drift, (out - exact).abs().max().item())
    assert drift > 1e-3 and ref.shape[1] == 40


class Twin:
    """Acts with ``full`` and asks ``cached`` the same question at every step (both see the
    same observations and rewards, each feeds its own actions back): the largest action
    difference over the episodes."""

    def __init__(self, full: DTPolicy, cached: DTPolicy) -> None:
        self.full, self.cached, self.diff, self.steps = full, cached, 0.0, 0

    def reset(self, num_envs, seeds=None):
        self.full.reset(num_envs, seeds)
        self.cached.reset(num_envs, seeds)

    def act(self, observations):
        a, c = self.full.act(observations), self.cached.act(observations)
        self.diff = max(self.diff, float(np.abs(np.asarray(a, np.float64) - c).max()))
        self.steps += 1
        return a

    def observe(self, rewards):
        self.full.observe(rewards)
        self.cached.observe(rewards)


@pytest.mark.parametrize("discrete", [False, True])
def test_policy_cache_equals_full_recomputation_on_the_env(discrete):
    """(a) DTPolicy on whole 200-step Pendulum (Box) and MountainCar (Discrete) episodes, 6
    envs at once: at every step the cached action equals the action of recomputing the whole
    episode so far (Box: within 1e-5 in env units; Discrete: the same action)."""
    from tests.offline_dt.test_evaluate import pendulum_normalizer

    torch.manual_seed(0)
    obs_dim, act_dim = (2, 3) if discrete else (3, 1)
    cfg = DTConfig(obs_dim=obs_dim, act_dim=act_dim, discrete=discrete, context_length=4,
                   embed_dim=16, n_layer=2, n_head=2, dropout=0.0, attention="band",
                   max_timestep=600)
    model = DecisionTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    empty = np.zeros(0, np.float32)
    env, norm = (("MountainCar-v0", Normalizer(np.array([-0.5, 0.0], np.float32),
                                               np.array([0.5, 0.05], np.float32), 100.0,
                                               empty, empty)) if discrete
                 else ("Pendulum-v1", pendulum_normalizer()))
    full = DTPolicy(model, norm, 50.0)
    assert full.k == 600  # recomputation sees the whole episode
    twin = Twin(full, DTPolicy(model, norm, 50.0, kv_cache=True))
    res = evaluate_policy(env, twin, episodes=6, seed=2)
    assert twin.diff <= (0.0 if discrete else 1e-5), twin.diff
    assert (res.lengths == 200).all() and twin.steps == 200
    if discrete:  # not a constant action: every action is taken
        assert set(np.unique(full.act_buf.numpy())) == {0, 1, 2}
    else:
        assert len(set(np.round(res.returns, 3))) == 6
    # and the recomputed context really spans the episode: its oldest steps are real
    assert int(full.length) == twin.steps and full.ts_buf[0, 0] == 0


# ---------------------------------------------------------------------------------- the mask
@pytest.mark.parametrize("n_layer", [1, 2])
def test_band_mask_perturbation(n_layer):
    """(b) Perturbing token q's input changes token p's output iff p - n_layer (W - 1) <= q
    <= p: one block sees exactly the last W tokens, each further block W - 1 more."""
    w, steps = 7, 12
    model = band_model(k=3, n_layer=n_layer, band=w)
    rtg, obs, act, ts = episode(1, steps, False)
    with torch.no_grad():
        base = model.token_states(rtg, obs, act, ts).reshape(3 * steps, -1)
    reach = n_layer * (w - 1)
    for q in range(3 * steps):
        t, kind = divmod(q, 3)
        r2, o2, a2 = rtg.clone(), obs.clone(), act.clone()
        (r2, o2, a2)[kind][:, t] += 3.0
        with torch.no_grad():
            out = model.token_states(r2, o2, a2, ts).reshape(3 * steps, -1)
        moved = (out - base).abs().amax(-1) > 1e-6
        expect = torch.tensor([q <= p <= q + reach for p in range(3 * steps)])
        assert torch.equal(moved, expect), (q, moved.nonzero().flatten().tolist())


@pytest.mark.parametrize("side", ["left", "right", "middle"])
def test_band_padding_is_never_seen(side):
    """(b) Padded steps (left: the dense band-and-padding mask; right: the band alone, by
    causality; middle: a real step after padding) never change a real step's output, and a
    real step's output equals the same real steps given alone."""
    model = band_model(k=3, n_layer=2, band=9)
    b, steps = 2, 30
    rtg, obs, act, ts = episode(b, steps, False)
    mask = torch.ones(b, steps, dtype=torch.bool)
    pads = {"left": slice(0, 5), "right": slice(22, None), "middle": slice(10, 13)}[side]
    mask[1, pads] = False
    with torch.no_grad():
        base = model(rtg, obs, act, ts, mask)
        r2, o2, a2 = rtg.clone(), obs.clone(), act.clone()
        r2[~mask], o2[~mask], a2[~mask] = 50.0, -50.0, 0.9
        out = model(r2, o2, a2, ts, mask)
        torch.testing.assert_close(out[mask], base[mask], rtol=0, atol=1e-5)
        if side != "middle":
            real = mask[1]
            alone = model(rtg[1:, real], obs[1:, real], act[1:, real], ts[1:, real])
            torch.testing.assert_close(base[1, real], alone[0], rtol=0, atol=1e-5)
        leaky = model(r2, o2, a2, ts)  # without the mask padding would leak (not right)
        if side != "right":
            assert (leaky[1][mask[1]] - base[1][mask[1]]).abs().max() > 1e-4


def test_blocked_band_attention_equals_the_dense_band_mask():
    """The blocked path (T x 2W) and SDPA over the dense band mask (T x T) agree, for T not
    a multiple of W, on every query and on the state-token queries alone."""
    model = band_model(k=3, n_layer=1, band=9)
    attn = model.blocks[0].attn
    torch.manual_seed(3)
    x = torch.randn(2, 100, 32)
    with torch.no_grad():
        blocked = attn(x)  # no mask, T = 100 > 2W: blocks
        dense = attn(x, band_mask(100, 100, 9, x.device)[None, None].expand(2, 1, 100, 100))
        states = attn(x, queries=slice(1, None, 3))  # 33 queries > 2W: blocks, then rows
    torch.testing.assert_close(blocked, dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(states, dense[:, 1::3], rtol=1e-5, atol=1e-6)


def test_config_errors_and_window_checkpoints_are_not_exact():
    with pytest.raises(ValueError, match="attention"):
        DTConfig(3, 1, attention="sliding")
    with pytest.raises(ValueError, match="band_tokens"):
        DTConfig(3, 1, band_tokens=30)
    assert DTConfig(3, 1, context_length=5, attention="band").band == 15
    assert DTConfig(3, 1).band is None and not cache_is_exact(DTConfig(3, 1))
    assert cache_is_exact(DTConfig(3, 1, attention="band")) and not cache_is_exact(None)
    band, window = band_model(), DecisionTransformer(DTConfig(3, 1))
    assert use_kv_cache(band) and not use_kv_cache(band, full_recompute=True)
    assert not use_kv_cache(window) and use_kv_cache(window, kv_cache=True)
    with pytest.raises(ValueError, match="full_recompute"):
        EvalConfig(checkpoint=None, kv_cache=True, full_recompute=True)
    base = dict(dataset="x", context_length=5)
    for bad, match in ((dict(band_tokens=9), "band_tokens"),
                       (dict(segment_length=9), "segment_length"),
                       (dict(attention="band", segment_length=4), "segment_length"),
                       (dict(attention="band", method="qt"), "qt"),
                       (dict(attention="bands"), "attention")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**base, **bad).validate()
    resolved = TrainConfig(**base, attention="band").resolved(longest_episode=40)
    assert (resolved.band_tokens, resolved.segment_length) == (15, 40)
    assert TrainConfig(**base, attention="band").resolved(500).segment_length == 50


# ---------------------------------------------------------------------------------- sampler
def test_segment_sampler_whole_episodes_and_chunks(box_dataset):
    """Episodes that fit come whole from their first step, longer ones as S consecutive
    steps; right-padded; a DDP shard is its rows of the global batch."""
    norm = Normalizer.fit(box_dataset)
    lengths = box_dataset.episode_lengths  # 12, 30, 7, 25, 18, 40
    episode_of = np.repeat(np.arange(len(lengths)), lengths)
    obs = norm.observations(box_dataset.observations)
    s = 20
    batch = SegmentSampler(box_dataset, norm, s, 64, seed=0).sample(64)
    assert batch.mask.shape == (64, s) and batch.observations.shape == (64, s, 3)
    valid = batch.mask.sum(1)
    assert torch.equal(batch.mask, torch.arange(s)[None] < valid[:, None])  # right padding
    for row in range(64):
        n = int(valid[row])
        flat = int(np.abs(obs - batch.observations[row, 0].numpy()).sum(1).argmin())
        ep = episode_of[flat]
        assert (episode_of[flat:flat + n] == ep).all()  # one episode
        start = flat - int(box_dataset.episode_starts[ep])
        assert n == (lengths[ep] if lengths[ep] <= s else s)
        assert start == 0 or lengths[ep] > s
        np.testing.assert_allclose(batch.observations[row, :n].numpy(), obs[flat:flat + n])
        assert torch.equal(batch.timesteps[row, :n], start + torch.arange(n))
        assert not batch.observations[row, n:].any() and not batch.timesteps[row, n:].any()
    assert {int(v) for v in valid} == {7, 12, 18, 20}
    whole = SegmentSampler(box_dataset, norm, s, 64, seed=5).sample(10)
    for rank in range(2):
        part, share = SegmentSampler(box_dataset, norm, s, 64, seed=5).sample_shard(10, rank, 2)
        rows = slice(5 * rank, 5 * rank + 5)
        n = part.mask.shape[1]  # cropped to the shard's longest segment
        assert n == int(whole.mask[rows].sum(1).max())
        assert torch.equal(part.observations, whole.observations[rows, :n])
        assert share == pytest.approx(float(whole.mask[rows].sum() / whole.mask.sum()))


# ---------------------------------------------------------------------------------- training
def _params(path):
    return dict(load_checkpoint(path).model.named_parameters())


@pytest.mark.parametrize("which", ["box", "discrete"])
def test_band_training_checkpoints_and_resumes_exactly(which, box_hdf5, discrete_hdf5,
                                                       tiny_config, tmp_path):
    """(c) A band model trains through ``train`` on the tiny fixtures (the loss falls), its
    checkpoint holds the band config, and 6 + 6 resumed steps equal 12 straight."""
    path = box_hdf5 if which == "box" else discrete_hdf5
    full = tiny_config(path, steps=12, run_dir=tmp_path / "full", checkpoint_every=4,
                       attention="band", segment_length=16, log_every=4)
    train(full)
    part = dataclasses.replace(full, steps=6, run_dir=tmp_path / "part")
    train(part)
    train(dataclasses.replace(part, steps=12, resume=True, segment_length=None))
    a, b = _params(full.run_dir), _params(part.run_dir)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ckpt = load_checkpoint(part.run_dir)
    assert ckpt.model_config.attention == "band" and ckpt.model_config.band == 15
    assert (ckpt.train_config.band_tokens, ckpt.train_config.segment_length) == (15, 16)
    saved = json.loads((part.run_dir / "config.json").read_text())
    assert saved["model_config"]["attention"] == "band"
    with pytest.raises(ValueError, match="segment_length"):
        train(dataclasses.replace(part, steps=14, resume=True, segment_length=20))
    fit = tiny_config(path, steps=60, embed_dim=32, dropout=0.0, warmup_steps=10,
                      learning_rate=3e-3, batch_size=4, log_every=10, checkpoint_every=1000,
                      grad_clip=1.0, attention="band", run_dir=tmp_path / "fit")
    train(fit)
    import pandas as pd

    loss = pd.read_csv(fit.run_dir / "metrics.csv")["loss"]
    assert loss.iloc[-1] * 4 <= loss.iloc[0], loss.tolist()


def test_evaluate_checkpoint_acts_from_the_exact_cache(box_hdf5, tiny_config, tmp_path):
    """(d) A band checkpoint is evaluated from its key/value cache by default, with the
    same returns (1e-3) as full recomputation forced by ``full_recompute``; a window
    checkpoint keeps recomputing. Trained in fp32 on every CPU (acting is fp32 anyway): the
    weights are then the same kind on every machine, where a bf16-trained network's differ
    with the bf16 kernels, and with some weights the pendulum grows the cache's float
    rounding past 1e-3 on returns near -1000 (it did when bf16 attention moved to plain
    products, issue 36)."""
    cfg = tiny_config(box_hdf5, steps=10, attention="band", n_layer=2, dropout=0.0,
                      precision="fp32", run_dir=tmp_path / "band")
    train(cfg)
    ev = dict(checkpoint=cfg.run_dir, episodes=4, validation_episodes=2, seed=1)
    cached = evaluate_checkpoint(EvalConfig(**ev, out=tmp_path / "cached.json"))
    full = evaluate_checkpoint(EvalConfig(**ev, full_recompute=True,
                                          out=tmp_path / "full.json"))
    assert cached["kv_cache"] is True and full["kv_cache"] is False
    assert cached["headline_target"] == full["headline_target"]
    for a, b in zip(cached["selection"]["validation"], full["selection"]["validation"],
                    strict=True):
        np.testing.assert_allclose(a["returns"], b["returns"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(cached["targets"][0]["returns"], full["targets"][0]["returns"],
                               rtol=0, atol=1e-3)
    assert len(set(np.round(cached["targets"][0]["returns"], 3))) == 4
    window = tiny_config(box_hdf5, steps=2, run_dir=tmp_path / "window")
    train(window)
    out = evaluate_checkpoint(EvalConfig(checkpoint=window.run_dir, episodes=1,
                                         validation_episodes=1))
    assert out["kv_cache"] is False
