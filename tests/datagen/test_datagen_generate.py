"""End-to-end checks of datagen.generate on tiny Pendulum runs."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import minari
import numpy as np
import pytest

from datagen.behaviour import load_behaviour_policy
from datagen.generate import generate
from datagen.rollout import policy_returns, rollout
from offline_dt.data.d4rl import LEVELS, read_hdf5, write_hdf5
from offline_dt.data.minari_io import read_minari


def test_all_levels_written_in_both_formats(tiny_run):
    res = tiny_run.result
    assert set(res.paths) == set(LEVELS)
    for level in LEVELS:
        hdf5 = res.paths[level]["hdf5"]
        assert hdf5.name == f"pendulum-{level}-v0.hdf5"
        assert hdf5.is_file()
        assert (res.paths[level]["minari"] / "data" / "metadata.json").is_file()
        ds = read_hdf5(hdf5)
        assert ds.summary()["steps"] == res.summaries[level]["steps"]
        mds = read_minari(f"pendulum/{level}-v0", tiny_run.cfg.minari_root)
        assert mds.checksum() == ds.checksum()
    s = res.summaries
    assert s["random"]["steps"] == 500
    assert s["expert"]["steps"] == 400 and s["medium"]["steps"] == 400
    assert s["medium-expert"]["steps"] == 800
    assert s["full-replay"]["steps"] == 300  # the whole buffer of a 300-step run
    assert 0 < s["medium-replay"]["steps"] <= 300
    for key in ("train_agent", "reference_scores", "random", "total"):
        assert res.stage_seconds[key] >= 0


def test_metadata_of_every_dataset(tiny_run):
    res = tiny_run.result
    for level in LEVELS:
        md = read_hdf5(res.paths[level]["hdf5"]).metadata
        assert md["env_id"] == "Pendulum-v1"
        assert md["level"] == level
        assert md["seed"] == 3
        assert md["steps"] == res.summaries[level]["steps"]
        assert md["ref_min_score"] == pytest.approx(res.ref_min_score)
        assert md["ref_max_score"] == pytest.approx(res.ref_max_score)
        for pkg in ("python", "numpy", "gymnasium", "stable-baselines3", "torch", "minari",
                    "offline-dt"):
            assert md[f"version_{pkg}"]
    assert read_hdf5(res.paths["random"]["hdf5"]).metadata["agent"] == "random"
    expert = read_hdf5(res.paths["expert"]["hdf5"]).metadata
    assert expert["agent"] == "sac" and expert["checkpoint"].endswith("policy.safetensors")
    medium = read_hdf5(res.paths["medium"]["hdf5"]).metadata
    step = res.medium_checkpoint["step"]
    assert medium["agent"] == f"sac@step{step}"
    assert medium["checkpoint_step"] == step
    assert medium["checkpoint"].endswith(f"step_{step:07d}.safetensors")
    assert medium["checkpoint_eval_return"] == pytest.approx(res.medium_checkpoint["eval_return"])


def test_same_seed_same_checksums(tiny_run, tiny_run_b):
    for level in ("random", "expert", "medium", "medium-replay", "full-replay"):
        a = read_hdf5(tiny_run.result.paths[level]["hdf5"])
        b = read_hdf5(tiny_run_b.result.paths[level]["hdf5"])
        assert a.checksum() == b.checksum(), level
    assert tiny_run.result.ref_max_score == tiny_run_b.result.ref_max_score


def test_different_seed_different_data(tmp_path):
    a = rollout("Pendulum-v1", 300, seed=0, num_envs=2).dataset
    b = rollout("Pendulum-v1", 300, seed=1, num_envs=2).dataset
    assert a.checksum() != b.checksum()


def test_random_rollout_same_data_in_several_processes():
    """Each sub-env draws its random actions from its own generator, so splitting the sub-envs
    over processes changes nothing (the returns recorded by Gymnasium included)."""
    one = rollout("Pendulum-v1", 1_000, seed=3, num_envs=5)
    three = rollout("Pendulum-v1", 1_000, seed=3, num_envs=5, processes=3)
    assert one.dataset.checksum() == three.dataset.checksum()
    np.testing.assert_array_equal(one.recorded_returns, three.recorded_returns)
    assert np.isfinite(one.recorded_returns).sum() == 5  # five full 200-step episodes
    with pytest.raises(ValueError, match="processes"):
        rollout("Pendulum-v1", 10, processes=0)


def test_recorded_returns_equal_hdf5_returns(tiny_run, tmp_path):
    pol = load_behaviour_policy(tiny_run.result.agent_dir, "Pendulum-v1", "cpu",
                                deterministic=False, seed=0)
    for policy in (None, pol):
        res = rollout("Pendulum-v1", 900, policy, seed=5, num_envs=2)
        path = write_hdf5(res.dataset, tmp_path / f"r{policy is None}.hdf5")
        back = read_hdf5(path)
        complete = ~np.isnan(res.recorded_returns)
        assert complete.sum() == 4  # 2 envs x 450 steps: 2 full episodes each + 2 cut ones
        np.testing.assert_allclose(back.episode_returns[complete],
                                   res.recorded_returns[complete], rtol=1e-5)
        assert (back.episode_lengths[complete] == 200).all()
        # Pendulum never terminates; every episode end is a truncation (time limit or cut).
        assert not back.terminals.any()
        assert back.timeouts.sum() == back.num_episodes == 6


def test_truncated_next_observation_is_true_final_obs():
    ds = rollout("Pendulum-v1", 400, seed=0, num_envs=1).dataset
    # Inside an episode next_observations[t] == observations[t + 1] ...
    np.testing.assert_array_equal(ds.next_observations[:199], ds.observations[1:200])
    # ... but at the truncation it is the true last observation, not the next reset obs.
    assert ds.timeouts[199]
    assert not np.array_equal(ds.next_observations[199], ds.observations[200])
    cos, sin = ds.next_observations[199, 0], ds.next_observations[199, 1]
    assert cos**2 + sin**2 == pytest.approx(1.0, abs=1e-5)


def test_minari_load_iterate_and_normalized_score(tiny_run, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tiny_run.cfg.minari_root))
    ds = minari.load_dataset("pendulum/medium-v0")
    n = 0
    for ep in ds.iterate_episodes():
        t = len(ep.actions)
        assert ep.observations.shape == (t + 1, 3)
        assert ep.actions.shape == (t, 1)
        assert len(ep.rewards) == len(ep.terminations) == len(ep.truncations) == t
        n += 1
    assert n == tiny_run.result.summaries["medium"]["episodes"]
    lo, hi = tiny_run.result.ref_min_score, tiny_run.result.ref_max_score
    rets = np.array([lo, hi, (lo + hi) / 2])
    np.testing.assert_allclose(minari.get_normalized_score(ds, rets), [0.0, 1.0, 0.5],
                               rtol=1e-6)


def test_reuse_matching_and_refuse_mismatching(tiny_run, make_config):
    again = generate(tiny_run.cfg)
    assert all(s["reused"] for s in again.summaries.values())
    assert again.stage_seconds.keys() == {"total"}
    bigger = make_config(tiny_run.root, random_steps=600, levels=["random"])
    with pytest.raises(FileExistsError, match=r"pendulum-random-v0\.hdf5.*--overwrite"):
        generate(bigger)


def test_agent_artifacts_learning_curve_and_no_pickle(tiny_run):
    agent_dir = tiny_run.result.agent_dir
    assert agent_dir == tiny_run.cfg.agents_dir / "pendulum" / "seed3"
    rows = list(csv.DictReader(open(agent_dir / "learning_curve.csv")))
    assert list(rows[0]) == ["env_steps", "eval_return_mean", "eval_return_std"]
    assert [int(r["env_steps"]) for r in rows] == [100, 200, 300]
    assert all(np.isfinite(float(r["eval_return_mean"])) for r in rows)
    assert (agent_dir / "learning_curve.png").stat().st_size > 1000
    assert len(list((agent_dir / "checkpoints").glob("step_*.safetensors"))) == 3
    hp = json.loads((agent_dir / "hyperparams.json").read_text())
    assert hp["algo"] == "SAC" and hp["kwargs"]["learning_rate"] == 1e-3
    assert (agent_dir / "COMPLETE.json").is_file()
    for bad in ("*.pkl", "*.zip", "*.pt", "*.pth"):
        assert not list(agent_dir.rglob(bad))


def test_load_behaviour_policy_batched_and_deterministic(tiny_run):
    pol = load_behaviour_policy(tiny_run.result.agent_dir, "Pendulum-v1", "cpu")
    obs = np.random.default_rng(0).uniform(-1, 1, (7, 3)).astype(np.float32)
    a = pol(obs)
    assert a.shape == (7, 1) and a.dtype == np.float32
    assert (np.abs(a) <= 2.0).all()
    np.testing.assert_array_equal(a, pol(obs))
    ckpt = tiny_run.result.medium_checkpoint["path"]
    pol_m = load_behaviour_policy(ckpt, "Pendulum-v1", "cpu")
    assert pol_m(obs).shape == (7, 1)
    rets = policy_returns("Pendulum-v1", pol, 3, seed=1, num_envs=2)
    assert rets.shape == (3,) and (rets < 0).all()
    with pytest.raises(ValueError, match="env_id"):
        load_behaviour_policy(tiny_run.result.agent_dir, "MountainCarContinuous-v0")


def test_incomplete_agent_dir_is_restarted(tiny_run, tmp_path):
    from datagen.agents import train_agent

    agent_dir = tmp_path / "agent"
    (agent_dir / "checkpoints").mkdir(parents=True)
    (agent_dir / "junk.txt").write_text("left by a killed run")
    art = train_agent("Pendulum-v1", agent_dir, seed=0, total_steps=150, checkpoint_every=100,
                      eval_episodes=1, num_envs=1)
    assert not (agent_dir / "junk.txt").exists()
    assert [c.step for c in art.checkpoints] == [100, 150]
    again = train_agent("Pendulum-v1", agent_dir, seed=0, total_steps=150,
                        checkpoint_every=100, eval_episodes=1, num_envs=1)
    assert again.reused
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_agent("Pendulum-v1", agent_dir, seed=0, total_steps=200, checkpoint_every=100,
                    eval_episodes=1, num_envs=1)


def test_random_rollout_actions_in_bounds():
    ds = rollout("Pendulum-v1", 1000, seed=0, num_envs=4).dataset
    space = gym.make("Pendulum-v1").action_space
    assert (ds.actions >= space.low).all() and (ds.actions <= space.high).all()
    assert ds.actions.std() > 0.5  # uniform on [-2, 2]: std ~1.15


def test_every_level_has_a_builder_and_d4rl_levels_are_the_same():
    from datagen.levels import LEVEL_BUILDERS
    from offline_dt.data import d4rl

    assert LEVELS is d4rl.LEVELS
    assert set(LEVEL_BUILDERS) == set(LEVELS)
    order = list(LEVEL_BUILDERS)
    assert order.index("medium-expert") > max(order.index("medium"), order.index("expert"))


def test_agent_files_written_whole(tiny_run):
    """Every agent file is written through atomic_path: all present, no temporaries left."""
    files = {p.name for p in tiny_run.result.agent_dir.iterdir()}
    assert {"COMPLETE.json", "hyperparams.json", "learning_curve.csv", "learning_curve.png",
            "policy.safetensors", "replay_buffer.safetensors"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    png = (tiny_run.result.agent_dir / "learning_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_medium_expert_alone_builds_its_parts(tiny_run, make_config, tmp_path):
    """Asking for medium-expert only builds medium and expert (not written) and gives the
    same data as a run that asked for every level."""
    res = generate(make_config(tmp_path, levels=["medium-expert"]))
    assert set(res.paths) == {"medium-expert"}
    assert not (tmp_path / "d4rl" / "pendulum-medium-v0.hdf5").exists()
    a = read_hdf5(res.paths["medium-expert"]["hdf5"])
    b = read_hdf5(tiny_run.result.paths["medium-expert"]["hdf5"])
    assert a.checksum() == b.checksum()


def test_overwrite_naming_a_level_regenerates_it_alone(tiny_run, make_config, tmp_path):
    """``--overwrite random`` rewrites the random level (here with a new size) and reuses
    every other level and the behaviour agent, which is not retrained."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_run.root, root)
    agent_files = {p: p.stat().st_mtime_ns for p in (root / "agents").rglob("*") if p.is_file()}
    res = generate(make_config(root, random_steps=600, overwrite=["random"]))
    assert res.summaries["random"]["steps"] == 600 and not res.summaries["random"]["reused"]
    assert all(s["reused"] for lv, s in res.summaries.items() if lv != "random")
    assert {p: p.stat().st_mtime_ns for p in agent_files} == agent_files  # not retrained
    assert read_hdf5(res.paths["random"]["hdf5"]).metadata["ref_max_score"] == pytest.approx(
        tiny_run.result.ref_max_score)
    with pytest.raises(ValueError, match=r"overwrite: \['expert'\] are not among the levels"):
        generate(make_config(root, levels=["random"], overwrite=["expert"]))


def test_overwrite_flag_takes_true_or_levels():
    from offline_dt.cli import parse

    def flag(*args):
        return parse(["generate", *args]).config.config.overwrite

    assert flag() is False and flag("--overwrite") is True
    assert flag("--overwrite", "random", "medium") == ["random", "medium"]
    with pytest.raises(SystemExit):
        flag("--overwrite", "bogus")
