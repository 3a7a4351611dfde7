"""Trainer: overfitting, exact resume, checkpoints, formats, outputs and error cases."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from offline_dt.data import DatasetError, write_hdf5
from offline_dt.data.windows import Normalizer, WindowSampler
from offline_dt.methods import get_method
from offline_dt.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, train
from offline_dt.training.configs import parse_config
from offline_dt.training.device import cpu_has_bf16, resolve_precision
from offline_dt.training.step import lr_factor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def _params(path):
    return dict(load_checkpoint(path).model.named_parameters())


# ---------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("which,precision", [("box", "fp32"), ("discrete", "fp32"),
                                             ("box", "bf16"), ("discrete", "bf16")])
def test_tiny_model_overfits_tiny_dataset(which, precision, box_hdf5, discrete_hdf5,
                                          tiny_config):
    path = box_hdf5 if which == "box" else discrete_hdf5
    cfg = tiny_config(path, steps=80, embed_dim=32, dropout=0.0, warmup_steps=10,
                      learning_rate=3e-3, batch_size=16, log_every=10, checkpoint_every=1000,
                      grad_clip=1.0, precision=precision)
    result = train(cfg)
    rows = _rows(cfg.run_dir)
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert result.steps == 80 and rows[-1]["step"] == 80
    assert result.final_loss == pytest.approx(last)
    assert last * 10 <= first, (first, last)


def test_bc_ignores_returns_to_go(box_dataset):
    from offline_dt.nn.config import DTConfig
    from offline_dt.nn.transformer import DecisionTransformer

    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(3, 1, context_length=5, max_timestep=64,
                                         embed_dim=16, n_layer=1, dropout=0.0))
    sampler = WindowSampler(box_dataset, Normalizer.fit(box_dataset), 5, 64, seed=0)
    batch = sampler.sample(8)
    other = dataclasses.replace(batch, returns_to_go=torch.randn_like(batch.returns_to_go))
    bc, dt = get_method("bc"), get_method("dt")
    assert torch.equal(bc.loss(model, batch)[0], bc.loss(model, other)[0])
    assert not torch.equal(dt.loss(model, batch)[0], dt.loss(model, other)[0])


# ---------------------------------------------------------------------------------- resume
def test_resume_equals_uninterrupted_run(box_hdf5, tiny_config, tmp_path):
    full = tiny_config(box_hdf5, steps=12, run_dir=tmp_path / "full", checkpoint_every=4)
    train(full)
    part = dataclasses.replace(full, steps=6, run_dir=tmp_path / "part")
    train(part)
    assert load_checkpoint(part.run_dir).step == 6
    res = train(dataclasses.replace(part, steps=12, resume=True))
    assert res.steps == 12
    a, b = _params(full.run_dir), _params(part.run_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # And the interrupted run is not trivially equal to a shorter one.
    c = _params(tmp_path / "full")
    train(dataclasses.replace(full, steps=11, run_dir=tmp_path / "eleven"))
    d = _params(tmp_path / "eleven")
    assert any(not torch.equal(c[n], d[n]) for n in c)
    # metrics.csv continues without duplicated steps
    steps = [r["step"] for r in _rows(part.run_dir)]
    assert steps == [5, 6, 10, 12]


def test_resume_with_different_config_names_fields(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, steps=4)
    train(cfg)
    bad = dataclasses.replace(cfg, steps=8, resume=True, learning_rate=5e-4, seed=3)
    with pytest.raises(ValueError, match="learning_rate") as e:
        train(bad)
    assert "seed" in str(e.value) and "0.0005" in str(e.value)
    # cadence and length may change
    train(dataclasses.replace(cfg, steps=8, resume=True, log_every=2, checkpoint_every=3))
    assert load_checkpoint(cfg.run_dir).step == 8


def test_refuses_existing_checkpoint_unless_overwrite(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, steps=3)
    train(cfg)
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg)
    train(dataclasses.replace(cfg, overwrite=True, steps=2))
    assert load_checkpoint(cfg.run_dir).step == 2
    assert [r["step"] for r in _rows(cfg.run_dir)] == [2]


def test_resume_without_checkpoint_is_an_error(box_hdf5, tiny_config):
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_NAME):
        train(tiny_config(box_hdf5, resume=True))


def test_eval_hook_columns_and_rng_isolation(box_hdf5, tiny_config, tmp_path):
    calls = []

    def hook(run, step):
        calls.append((step, run.net.training))
        torch.rand(100)  # consumes the global RNG: must not change training
        return {"eval_return_mean": float(step) * 2}

    cfg = tiny_config(box_hdf5, steps=10, eval_every=4, run_dir=tmp_path / "hook")
    train(cfg, eval_hook=hook)
    assert calls == [(4, True), (8, True), (10, True)]
    rows = _rows(cfg.run_dir)
    evals = {r["step"]: r["eval_return_mean"] for r in rows if "eval_return_mean" in r}
    assert evals == {4: 8.0, 8: 16.0, 10: 20.0}
    plain = dataclasses.replace(cfg, eval_every=0, run_dir=tmp_path / "plain")
    train(plain)
    a, b = _params(cfg.run_dir), _params(plain.run_dir)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_eval_hook_uses_the_trainers_normalizer_and_env_bounds(tiny_config, tmp_path,
                                                                monkeypatch):
    """A foreign D4RL file (no spaces stored: action bounds inferred from the data) trained
    with --env-id: the trainer takes the env's bounds, and the learning-curve evaluation must
    act with exactly that normaliser, not one refitted from the file."""
    import offline_dt.evaluation.curves as curves

    rng = np.random.default_rng(0)
    n = 60
    path = tmp_path / "foreign.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        f["actions"] = rng.uniform(-0.5, 0.7, (n, 1)).astype(np.float32)
        f["rewards"] = -rng.random(n).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = (np.arange(n) % 20 == 19)
    seen = []
    real = curves.evaluate_policy

    def spy(env_id, policy, *args, **kwargs):
        seen.append((env_id, policy.normalizer))
        return real(env_id, policy, *args, **kwargs)

    monkeypatch.setattr(curves, "evaluate_policy", spy)
    cfg = tiny_config(path, steps=4, eval_every=4, eval_episodes=1, env_id="Pendulum-v1",
                      max_timestep=200)
    train(cfg, eval_hook=curves.make_eval_hook())
    ck = load_checkpoint(cfg.run_dir)
    assert [env for env, _ in seen] == ["Pendulum-v1"]
    used = seen[0][1].state_dict()
    np.testing.assert_array_equal(used["action_low"], [-2.0])
    np.testing.assert_array_equal(used["action_high"], [2.0])
    for key, value in ck.normalizer.state_dict().items():
        np.testing.assert_array_equal(used[key], value)


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoint_contents_and_outputs(box_hdf5, box_dataset, tiny_config):
    cfg = tiny_config(box_hdf5, steps=10, method="bc", env_id="Pendulum-v1")
    res = train(cfg)
    path = cfg.run_dir / CHECKPOINT_NAME
    assert res.checkpoint == path and res.steps == 10 and res.steps_per_second > 0
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 10
    assert set(raw["rng"]) >= {"torch", "sampler"}
    assert json.loads(raw["train_config"])["method"] == "bc"
    for target in (path, cfg.run_dir):
        ck = load_checkpoint(target)
        assert ck.step == 10 and not ck.model.training
    # the saved config holds the precision "auto" resolved to (fp32 on a CPU without bf16)
    assert ck.train_config == dataclasses.replace(
        cfg, precision=resolve_precision("auto", torch.device("cpu")))
    assert ck.model_config.embed_dim == 16 and ck.model_config.obs_dim == 3
    fitted = Normalizer.fit(box_dataset)
    assert ck.normalizer.rtg_scale == pytest.approx(fitted.rtg_scale)
    np.testing.assert_allclose(ck.normalizer.state_mean, fitted.state_mean)
    np.testing.assert_array_equal(ck.normalizer.action_low, [-2.0])
    info = ck.dataset_info
    assert info["env_id"] == "Pendulum-v1"
    assert info["best_return"] == pytest.approx(box_dataset.episode_returns.max())
    assert info["return_mean"] == pytest.approx(box_dataset.episode_returns.mean())
    assert info["ref_max_score"] == -150.0 and info["ref_min_score"] == -1200.0
    assert info["action_space"]["type"] == "Box"
    assert info["episodes"] == 6
    conf = json.loads((cfg.run_dir / "config.json").read_text())
    assert conf["resolved"]["rtg_scale"] == pytest.approx(fitted.rtg_scale)
    assert conf["model_config"]["n_layer"] == 1
    assert conf["dataset"]["steps"] == box_dataset.num_transitions
    rows = _rows(cfg.run_dir)
    assert [r["step"] for r in rows] == [5, 10]
    assert {"loss", "lr", "steps_per_second", "wall_seconds"} <= rows[0].keys()
    assert rows[0]["lr"] == pytest.approx(1e-3)  # warmup 5 steps: full lr from step 5
    assert (cfg.run_dir / "loss.png").stat().st_size > 1000
    assert list((cfg.run_dir / "tb").glob("events.out.tfevents.*"))


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_NAME):
        load_checkpoint(tmp_path)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {}}, wrong)
    with pytest.raises(ValueError, match=r"missing key\(s\).*optimizer"):
        load_checkpoint(wrong)
    pickled = tmp_path / "pickled.pt"
    torch.save({"obj": argparse.Namespace(a=1)}, pickled)  # needs full unpickling
    with pytest.raises(ValueError, match="pickled.pt: not a readable"):
        load_checkpoint(pickled)
    with pytest.raises(ValueError) as e:
        load_checkpoint(pickled)
    assert "weights_only" not in str(e.value) and "safe_globals" not in str(e.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(junk)


# ---------------------------------------------------------------------------------- formats
def _foreign_d4rl(path, ds):
    """A file laid out like an original D4RL download: no metadata, no next_observations."""
    with h5py.File(path, "w") as f:
        f["observations"] = ds.observations
        f["actions"] = ds.actions
        f["rewards"] = ds.rewards
        f["terminals"] = ds.terminals
        f["timeouts"] = ds.timeouts
    return path


@pytest.mark.parametrize("fmt", ["hdf5", "minari", "foreign"])
def test_trains_on_either_format(fmt, box_hdf5, box_minari, box_dataset, tiny_config, tmp_path):
    source = {"hdf5": box_hdf5, "minari": box_minari,
              "foreign": _foreign_d4rl(tmp_path / "d4rl.hdf5", box_dataset)}[fmt]
    env_id = "Pendulum-v1" if fmt == "foreign" else None
    res = train(tiny_config(source, steps=3, env_id=env_id))
    ck = load_checkpoint(res.checkpoint)
    assert ck.dataset_info["steps"] == box_dataset.num_transitions
    assert ck.dataset_info["episodes"] == box_dataset.num_episodes
    assert ck.dataset_info["env_id"] == "Pendulum-v1"
    # The foreign file's Box bounds were inferred from the data; env_id supplies [-2, 2].
    np.testing.assert_array_equal(ck.normalizer.action_low, [-2.0])
    np.testing.assert_array_equal(ck.normalizer.action_high, [2.0])
    assert np.isfinite(res.final_loss)


# ---------------------------------------------------------------------------------- errors
def test_spaces_must_match_env(box_hdf5, discrete_dataset, tiny_config, tmp_path):
    with pytest.raises(DatasetError, match=r"observation space .* does not match env CartPole"):
        train(tiny_config(box_hdf5, env_id="CartPole-v1"))
    three = tmp_path / "three.hdf5"
    write_hdf5(dataclasses.replace(discrete_dataset, action_space=gym.spaces.Discrete(3)), three)
    with pytest.raises(DatasetError, match=r"three.hdf5: action space Discrete\(3\) does not "
                                           r"match env CartPole-v1's Discrete\(2\)"):
        train(tiny_config(three, env_id="CartPole-v1"))
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        train(tiny_config(box_hdf5, env_id="NoSuchEnv-v0"))


def test_episode_longer_than_timestep_table(box_hdf5, tiny_config):
    with pytest.raises(DatasetError, match=r"longest episode has 40 steps.*holds 39"):
        train(tiny_config(box_hdf5, max_timestep=39))
    train(tiny_config(box_hdf5, max_timestep=40, steps=1))  # exactly fits: t in [0, 40)


@pytest.mark.parametrize("key", ["rewards", "observations"])
def test_nan_in_dataset_surfaces(key, box_dataset, tiny_config, tmp_path):
    path = _foreign_d4rl(tmp_path / "nan.hdf5", box_dataset)
    with h5py.File(path, "r+") as f:
        arr = f[key][()]
        arr[7] = np.nan
        f[key][...] = arr
    with pytest.raises(DatasetError, match=rf"nan.hdf5: key '{key}' holds NaN.*row 7"):
        train(tiny_config(path))


def test_missing_key_and_length_mismatch_surface(box_dataset, tiny_config, tmp_path):
    path = _foreign_d4rl(tmp_path / "bad.hdf5", box_dataset)
    with h5py.File(path, "r+") as f:
        del f["terminals"]
    with pytest.raises(DatasetError, match=r"bad.hdf5: missing key\(s\) \['terminals'\]"):
        train(tiny_config(path))
    path = _foreign_d4rl(tmp_path / "short.hdf5", box_dataset)
    with h5py.File(path, "r+") as f:
        del f["actions"]
        f["actions"] = box_dataset.actions[:-3]
    with pytest.raises(DatasetError, match=r"short.hdf5: key 'actions' has 129 rows.* 132"):
        train(tiny_config(path))


def test_missing_dataset_and_bad_arguments(tiny_config, box_hdf5, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.hdf5"):
        train(tiny_config(tmp_path / "nope.hdf5"))
    with pytest.raises(ValueError, match="method"):
        train(tiny_config(box_hdf5, method="cql"))
    with pytest.raises(ValueError, match="precision.*'fp16'"):
        train(tiny_config(box_hdf5, precision="fp16"))
    with pytest.raises(ValueError, match="n_head"):
        train(tiny_config(box_hdf5, embed_dim=16, n_head=3))


def test_resume_on_a_different_dataset_is_an_error(box_dataset, tiny_config, tmp_path):
    path = tmp_path / "a.hdf5"
    write_hdf5(box_dataset, path)
    cfg = tiny_config(path, steps=2)
    train(cfg)
    write_hdf5(dataclasses.replace(box_dataset, rewards=box_dataset.rewards + 1), path,
               overwrite=True)
    with pytest.raises(ValueError, match="checksum"):
        train(dataclasses.replace(cfg, steps=4, resume=True))


# ---------------------------------------------------------------------------------- CLI
def test_cli_flags_build_the_config():
    cfg = parse_config(TrainConfig, ["--dataset", "x.hdf5", "--steps", "5", "--rtg-scale", "2.5",
                                     "--method", "bc", "--resume", "true", "--run-dir", "out"])
    assert (cfg.dataset, cfg.steps, cfg.rtg_scale, cfg.method, cfg.resume, str(cfg.run_dir)) \
        == ("x.hdf5", 5, 2.5, "bc", True, "out")
    assert cfg.batch_size == 64 and cfg.warmup_steps is None and cfg.grad_clip == 0.25
    # warmup left unset scales with the budget; the paper's 100k steps keep 10k
    assert cfg.resolved(200).warmup_steps == 0
    assert TrainConfig().resolved(200).warmup_steps == 10_000
    assert TrainConfig(steps=300).resolved(200).warmup_steps == 30
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--method", "cql"])


# ---------------------------------------------------------------------------------- fast paths
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from offline_dt.training import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: True)
    assert dev.resolve_precision("auto", cpu) == "bf16"
    assert TrainConfig().resolved(200, cpu).precision == "bf16"
    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: False)
    assert dev.resolve_precision("auto", cpu) == "fp32"
    assert dev.resolve_precision("bf16", cpu) == "bf16"
    assert TrainConfig(precision="fp32").resolved(200, cpu).precision == "fp32"


@pytest.mark.skipif(not cpu_has_bf16(), reason="the CPU has no native bf16 (AMX/AVX512-BF16)")
def test_auto_precision_trains_in_bf16_on_a_bf16_cpu(box_hdf5, tiny_config, tmp_path):
    """Where the CPU has native bf16, ``--precision auto`` trains under bf16 autocast and lands
    near the fp32 run (the shipped default on such a CPU, not only an opt-in)."""
    common = dict(steps=40, embed_dim=32, dropout=0.0, warmup_steps=5, learning_rate=3e-3,
                  batch_size=16, log_every=10, checkpoint_every=1000)
    auto = train(tiny_config(box_hdf5, precision="auto", run_dir=tmp_path / "auto", **common))
    fp32 = train(tiny_config(box_hdf5, precision="fp32", run_dir=tmp_path / "fp32", **common))
    assert load_checkpoint(tmp_path / "auto").train_config.precision == "bf16"
    assert math.isfinite(auto.final_loss)
    assert auto.final_loss == pytest.approx(fp32.final_loss, rel=0.25, abs=0.02)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_bf16_step_keeps_fp32_master_weights_and_lands_near_fp32(box_dataset, dropout):
    """Under bf16 autocast (``precision="bf16"``) the forward pass runs in bf16 but the
    weights, their gradients and AdamW's moments stay fp32 (the master copy; fused AdamW on
    the CPU), and the loss and the updated weights of one step are within bf16 rounding of
    the fp32 step's from the same weights and batch (same dropout draws: same generator)."""
    from offline_dt.nn.transformer import DecisionTransformer
    from offline_dt.training.step import make_optimizer, train_step

    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(dataset="x", precision=precision, embed_dim=32, n_layer=2,
                          n_head=2, context_length=6, batch_size=8, dropout=dropout,
                          learning_rate=1e-3, warmup_steps=1).resolved(64, torch.device("cpu"))
        torch.manual_seed(0)
        net = DecisionTransformer(cfg.model_config(box_dataset.obs_dim, box_dataset.act_dim,
                                                    False)).train()
        opt, sched = make_optimizer(net, cfg)
        batch = WindowSampler(box_dataset, Normalizer.fit(box_dataset), 6, 64, seed=1).sample(8)
        torch.manual_seed(7)
        loss, _ = train_step(net, opt, sched, batch, cfg, get_method("dt"))
        runs[precision] = (net, opt, loss)
    net, opt, loss = runs["bf16"]
    assert opt.defaults["fused"] is True
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in net.parameters())
    moments = [v for st in opt.state.values() for k, v in st.items() if k != "step"]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    ref_net, _, ref_loss = runs["fp32"]
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss.item(), rel=2e-2)
    assert loss.item() != ref_loss.item()  # bf16 arithmetic did run
    for (name, p), q in zip(net.named_parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-3, msg=name)  # lr 1e-3: one step


@pytest.mark.parametrize("method", ["dt", "qt"])
def test_compiled_loss_trains_like_eager(method, box_hdf5, tiny_config, tmp_path, monkeypatch):
    """``compile=True`` goes through torch.compile (here its aot_eager backend: the same
    capture and graph breaks as inductor without minutes of C++ compilation on a CPU) and
    trains to the eager weights; the checkpoint holds the plain network."""
    calls = []
    real = torch.compile

    def compile_(fn, **kw):
        calls.append(type(fn).__name__)
        return real(fn, **{**kw, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_)
    # fp32: under bf16 autocast (auto on a CPU with native bf16) compiled and eager kernels
    # round differently.
    eager = tiny_config(box_hdf5, method=method, steps=4, dropout=0.0, precision="fp32",
                        run_dir=tmp_path / "e")
    train(eager)
    train(dataclasses.replace(eager, compile=True, run_dir=tmp_path / "c"))
    assert calls == ["MethodLoss"]
    a, b = _params(tmp_path / "e"), _params(tmp_path / "c")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_kept_checkpoints_are_the_run_at_each_checkpoint_step(box_hdf5, tiny_config, tmp_path):
    from offline_dt.training.checkpoint import kept_checkpoints

    full = tiny_config(box_hdf5, steps=12, run_dir=tmp_path / "full", checkpoint_every=4,
                       keep_checkpoints=True)
    train(full)
    kept = kept_checkpoints(full.run_dir)
    # every checkpoint before the last (the last is checkpoint.pt itself)
    assert [p.name for p in kept] == ["step-0000004.pt", "step-0000008.pt"]
    assert [load_checkpoint(p).step for p in kept] == [4, 8]
    # step 8's file is exactly a run stopped at step 8
    train(dataclasses.replace(full, steps=8, run_dir=tmp_path / "eight",
                              keep_checkpoints=False))
    a, b = _params(kept[1]), _params(tmp_path / "eight")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not kept_checkpoints(tmp_path / "eight")
    # an overwrite takes the old run's kept checkpoints with it
    train(dataclasses.replace(full, steps=4, overwrite=True))
    assert not kept_checkpoints(full.run_dir)


def test_adamw_is_fused_on_the_cpu_and_steps_as_the_loop_version(box_hdf5, tiny_config):
    from offline_dt.nn.config import DTConfig
    from offline_dt.nn.transformer import DecisionTransformer
    from offline_dt.training.step import make_optimizer

    torch.manual_seed(0)
    net = DecisionTransformer(DTConfig(3, 1, embed_dim=16, n_layer=1))
    ref = DecisionTransformer(DTConfig(3, 1, embed_dim=16, n_layer=1))
    ref.load_state_dict(net.state_dict())
    opt, _ = make_optimizer(net, tiny_config(box_hdf5))
    assert opt.defaults["fused"] is True
    loop = torch.optim.AdamW(ref.parameters(), lr=opt.param_groups[0]["lr"],  # warmup
                             weight_decay=opt.defaults["weight_decay"], foreach=False)
    for _ in range(3):
        for a, b in zip(net.parameters(), ref.parameters(), strict=True):
            a.grad = torch.full_like(a, 0.5)
            b.grad = torch.full_like(b, 0.5)
        opt.step()
        loop.step()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_lr_factor_warmup_then_constant_or_linear_decay():
    """Warmup 4 of 12 updates: (s + 1) / 4, then 1 ("none") or 1 - (s - 3) / 9 ("linear")."""
    none = [lr_factor(s, 4, 12, "none") for s in range(12)]
    linear = [lr_factor(s, 4, 12, "linear") for s in range(12)]
    assert none == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 9)
    assert linear == pytest.approx([0.25, 0.5, 0.75] + [1 - k / 9 for k in range(9)])
    assert lr_factor(5, 0, 10, "linear") == pytest.approx(0.5)  # CleanRL: 1 - 5 / 10
    with pytest.raises(ValueError,
                       match=r"lr_decay must be one of \[.none., .linear.\], found .cos."):
        TrainConfig(dataset="x.hdf5", lr_decay="cos").validate()


def test_the_training_layer_exports_its_public_names():
    import importlib

    import offline_dt.training as training

    assert sorted(training.__all__) == sorted(training._OWNERS)
    for name in training.__all__:
        owner = importlib.import_module(f"offline_dt.training.{training._OWNERS[name]}")
        assert getattr(training, name) is getattr(owner, name), name
    with pytest.raises(AttributeError, match="has no attribute 'make_optimizer'"):
        training.make_optimizer  # noqa: B018 (not public: offline_dt.training.step's)
