"""The reference rows (issue 18 part 3): our dataset as a d3rlpy replay buffer, %BC's episode
choice, iql / mlp-bc / pct-bc runs scored on the test episodes of dt, their reuse, Discrete
actions, and the message without d3rlpy."""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from conftest import PENDULUM_ACT, PENDULUM_OBS

from offline_dt.data import OfflineDataset
from offline_dt.envs.seeds import SEED_RULES, evaluation_seed
from offline_dt.study.d3rlpy_io import (
    INSTALL_HINT,
    MissingDependencyError,
    import_d3rlpy,
    to_replay_buffer,
)
from offline_dt.study.reference import (
    WEIGHTS_NAME,
    ReferenceConfig,
    load_reference,
    run_reference,
    top_episodes,
    training_episodes,
)

pytest.importorskip("d3rlpy", reason=INSTALL_HINT)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def flagged_dataset() -> OfflineDataset:
    """Three episodes: rows 0-2 terminated, 3-4 timed out, 5-6 cut off (no flag, last)."""
    n = 7
    obs = np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 10
    nxt = obs + 100.0  # next observations unlike any observation: which one was used shows
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[2] = timeouts[4] = True
    return OfflineDataset.from_flat(
        observations=obs, next_observations=nxt, actions=np.linspace(-2, 2, n)[:, None],
        rewards=np.arange(n, dtype=np.float32), terminals=terminals, timeouts=timeouts,
        observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT,
        metadata={"env_id": "Pendulum-v1"}, source="flagged")


def test_replay_buffer_keeps_terminals_timeouts_and_every_transition():
    ds = flagged_dataset()
    buf = to_replay_buffer(ds)
    assert [len(e.observations) for e in buf.episodes] == [3, 3, 3]
    assert [e.terminated for e in buf.episodes] == [True, False, False]
    assert buf.transition_count == ds.num_transitions == 7
    ends = set((ds.episode_starts[1:] - 1).tolist())  # rows 2, 4, 6
    rows = iter(range(7))
    for ep in buf.episodes:
        for k in range(ep.transition_count):
            row = next(rows)
            tr = buf.transition_picker(ep, k)
            np.testing.assert_array_equal(tr.observation, ds.observations[row])
            np.testing.assert_array_equal(tr.action, ds.actions[row])
            assert tr.reward[0] == ds.rewards[row]
            assert tr.terminal == float(row == 2)
            if row == 2:  # terminated: no bootstrap, d3rlpy's zero next observation
                np.testing.assert_array_equal(tr.next_observation, np.zeros(3))
            elif row in ends:  # timeout or cut off: the true next observation from the file
                np.testing.assert_array_equal(tr.next_observation, ds.next_observations[row])
            else:
                np.testing.assert_array_equal(tr.next_observation, ds.observations[row + 1])
    # A subset, in the order given.
    sub = to_replay_buffer(ds, [2, 0])
    assert [e.terminated for e in sub.episodes] == [False, True]
    assert sub.transition_count == 5
    with pytest.raises(ValueError, match="episodes: expected indices in \\[0, 3\\)"):
        to_replay_buffer(ds, [3])


def test_pct_bc_keeps_the_top_tenth_of_episodes_by_return():
    returns = np.array([-5.0, 3.0, 1.0, 3.0, -1.0, 0.0, 2.0, 7.0, 6.0, 4.0,
                        -9.0, -8.0, -7.0, -6.0, -4.0, -3.0, -2.0, -1.5, -0.5, 0.5])
    np.testing.assert_array_equal(top_episodes(returns, 0.1), [7, 8])
    np.testing.assert_array_equal(top_episodes(returns, 0.25), [7, 8, 9, 1, 3])  # tie: 1 first
    np.testing.assert_array_equal(top_episodes(returns[:5], 0.1), [1])  # at least one
    # On a dataset: 20 two-step episodes whose returns are the ones above.
    rewards = np.repeat(returns / 2, 2).astype(np.float32)
    n = rewards.size
    ds = OfflineDataset.from_flat(
        observations=np.zeros((n, 3), np.float32), actions=np.zeros((n, 1), np.float32),
        rewards=rewards, terminals=np.zeros(n, bool), timeouts=np.tile([False, True], 20),
        observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT)
    np.testing.assert_allclose(ds.episode_returns, returns)
    cfg = ReferenceConfig(dataset="x.hdf5", method="pct-bc")
    np.testing.assert_array_equal(training_episodes(cfg, ds), [7, 8])
    assert len(training_episodes(ReferenceConfig(dataset="x.hdf5", method="mlp-bc"), ds)) == 20


def tiny(path, tmp_path, method, **kw) -> ReferenceConfig:
    return ReferenceConfig(dataset=str(path), method=method, steps=20, log_every=10,
                           episodes=2, seed=3, device="cpu",
                           run_dir=tmp_path / method / "seed3", **kw)


@pytest.mark.parametrize("method", ["iql", "mlp-bc", "pct-bc"])
def test_a_reference_run_is_scored_on_the_test_episodes_of_dt(box_hdf5, tmp_path, method):
    cfg = tiny(box_hdf5, tmp_path, method)
    ev, secs = run_reference(cfg)
    run = cfg.run_dir
    assert json.loads((run / "eval.json").read_text()) == ev
    assert ev["method"] == method and ev["episodes"] == 2 and ev["env_id"] == "Pendulum-v1"
    # dt and bc of training seed 3 are tested on exactly these episodes (evaluate_checkpoint).
    assert ev["episode_seeds"] == SEED_RULES["test"]
    assert ev["targets"][0]["episode_seeds"] == [evaluation_seed(3, i) for i in range(2)]
    assert ev["headline_target"] is None and np.isfinite(ev["mean_return"])
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["step"].tolist() == [10, 20] and metrics["loss"].notna().all()
    saved = json.loads((run / "config.json").read_text())
    assert saved["algorithm"]["batch_size"] == (256 if method == "iql" else 100)
    assert saved["dataset"]["episodes_trained"] == (
        [2] if method == "pct-bc" else list(range(6)))  # of 6 episodes, the best (#2)
    assert (run / WEIGHTS_NAME).is_file() and secs["train"] > 0


def test_reference_runs_are_seeded_reused_and_reloaded(box_hdf5, tmp_path):
    cfg = tiny(box_hdf5, tmp_path, "iql")
    first, _ = run_reference(cfg)
    again, secs = run_reference(cfg)
    assert again == first and secs == {"train": 0.0, "evaluate": 0.0}
    # Same seed elsewhere: the same losses and returns.
    twin = tiny(box_hdf5, tmp_path / "twin", "iql")
    other, _ = run_reference(twin)
    pd.testing.assert_frame_equal(
        pd.read_csv(cfg.run_dir / "metrics.csv").drop(columns="seconds"),
        pd.read_csv(twin.run_dir / "metrics.csv").drop(columns="seconds"))
    assert other["targets"][0]["returns"] == first["targets"][0]["returns"]
    # More test episodes: the saved weights act again, nothing is retrained.
    more, secs = run_reference(ReferenceConfig(**{**vars(cfg), "episodes": 3}))
    assert secs["train"] == 0.0 and secs["evaluate"] > 0
    assert more["targets"][0]["returns"][:2] == first["targets"][0]["returns"]
    algo = load_reference(cfg.run_dir)
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    assert algo.predict(obs).shape == (4, 1)
    # A different run in the same directory is refused unless overwrite.
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_reference(ReferenceConfig(**{**vars(cfg), "steps": 10}))


def test_hyperparameters_reach_d3rlpy_and_runs_from_before_them_are_reused(box_hdf5,
                                                                           tmp_path):
    cfg = tiny(box_hdf5, tmp_path, "iql")
    run_reference(cfg)
    path = cfg.run_dir / "config.json"
    saved = json.loads(path.read_text())
    assert (saved["algorithm"]["expectile"], saved["algorithm"]["weight_temp"]) == (0.7, 3.0)
    for name in ("learning_rate", "expectile", "weight_temp"):  # as written before them
        del saved["reference_config"][name]
    path.write_text(json.dumps(saved))
    _, secs = run_reference(cfg)
    assert secs == {"train": 0.0, "evaluate": 0.0}  # d3rlpy's defaults: the same training
    tuned = ReferenceConfig(**{**vars(cfg), "run_dir": tmp_path / "tuned", "expectile": 0.9,
                               "weight_temp": 10.0, "learning_rate": 1e-4})
    ev, _ = run_reference(tuned)
    algo = json.loads((tmp_path / "tuned" / "config.json").read_text())["algorithm"]
    assert (algo["expectile"], algo["weight_temp"], algo["actor_learning_rate"],
            algo["critic_learning_rate"]) == (0.9, 10.0, 1e-4, 1e-4)
    assert "expectile 0.9" in ev["headline_rule"]
    assert load_reference(tmp_path / "tuned").config.expectile == 0.9
    bc = ReferenceConfig(**{**vars(tiny(box_hdf5, tmp_path / "bc", "mlp-bc")),
                            "learning_rate": 3e-3})
    run_reference(bc)
    saved = json.loads((bc.run_dir / "config.json").read_text())
    assert saved["algorithm"]["learning_rate"] == 3e-3


def test_discrete_actions(discrete_hdf5, tmp_path):
    with pytest.raises(ValueError, match="'iql' needs a Box action space.*Discrete\\(2\\)"):
        run_reference(tiny(discrete_hdf5, tmp_path, "iql"))
    ev, _ = run_reference(tiny(discrete_hdf5, tmp_path, "mlp-bc"))  # d3rlpy's DiscreteBC
    assert ev["env_id"] == "CartPole-v1" and ev["mean_return"] >= 1.0


def test_without_d3rlpy_the_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "d3rlpy", None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps d3rlpy==2.8.1"):
        import_d3rlpy()


def test_reference_config_checks_its_fields():
    with pytest.raises(ValueError, match="method must be one of"):
        ReferenceConfig(dataset="x", method="cql")
    with pytest.raises(ValueError, match="top_fraction"):
        ReferenceConfig(dataset="x", method="pct-bc", top_fraction=0.0)
    with pytest.raises(ValueError, match="expectile is an iql hyperparameter"):
        ReferenceConfig(dataset="x", method="mlp-bc", expectile=0.8)
    with pytest.raises(ValueError, match="expectile: 1.0 is out of range"):
        ReferenceConfig(dataset="x", method="iql", expectile=1.0)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        ReferenceConfig(dataset="x", method="pct-bc", learning_rate=0.0)
    assert str(ReferenceConfig(dataset="data/d4rl/pendulum-random-v0.hdf5", method="iql",
                               seed=2).resolved_run_dir()) == (
        "data/runs/reference/pendulum-random-v0/iql/seed2")



def test_cli_reference_command(box_hdf5, tmp_path, capsys):
    from offline_dt.cli import main, parse

    argv = ["reference", "--dataset", str(box_hdf5), "--method", "pct-bc", "--steps", "20",
            "--episodes", "2", "--device", "cpu", "--run-dir", str(tmp_path / "run")]
    assert parse(argv).config == ReferenceConfig(
        dataset=str(box_hdf5), method="pct-bc", steps=20, episodes=2, device="cpu",
        run_dir=tmp_path / "run")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pct-bc on {box_hdf5}: return mean ")
    assert "over 2 test episodes" in out and str(tmp_path / "run" / "eval.json") in out


def test_policy_values_average_q_over_sampled_actions(box_hdf5, tmp_path):
    from offline_dt.study.reference import policy_values

    cfg = tiny(box_hdf5, tmp_path, "iql")
    run_reference(cfg)
    algo = load_reference(cfg.run_dir)
    obs = np.random.default_rng(1).uniform(-1, 1, (5, 3)).astype(np.float32)
    values = policy_values(algo, obs, samples=3, seed=7)
    assert values.shape == (5,) and values.dtype == np.float64
    np.testing.assert_array_equal(values, policy_values(algo, obs, samples=3, seed=7))
    assert policy_values(algo, obs, samples=3, seed=7, batch_size=2).shape == (5,)
    import_d3rlpy().seed(7)
    by_hand = np.mean([algo.predict_value(obs, algo.sample_action(obs)) for _ in range(3)], 0)
    np.testing.assert_allclose(values, by_hand, rtol=1e-6)
    assert not np.allclose(values, policy_values(algo, obs, samples=3, seed=8))


def pointmaze_dataset(n: int = 40) -> OfflineDataset:
    """Two timed-out PointMaze-shaped episodes (Dict observations, keys given unsorted)."""
    rng = np.random.default_rng(0)
    space = gym.spaces.Dict({"observation": gym.spaces.Box(-np.inf, np.inf, (4,)),
                             "desired_goal": gym.spaces.Box(-np.inf, np.inf, (2,)),
                             "achieved_goal": gym.spaces.Box(-np.inf, np.inf, (2,))})
    obs = {k: rng.normal(size=(n, *s.shape)).astype(np.float32) for k, s in space.items()}
    nxt = {k: v + 100.0 for k, v in obs.items()}
    timeouts = np.zeros(n, bool)
    timeouts[[n // 2 - 1, n - 1]] = True
    return OfflineDataset.from_flat(
        observations=obs, next_observations=nxt, actions=rng.uniform(-1, 1, (n, 2)),
        rewards=rng.random(n).astype(np.float32), terminals=np.zeros(n, bool),
        timeouts=timeouts, observation_space=space,
        action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        metadata={"env_id": "PointMaze_UMaze-v3"}, source="pointmaze-like")


def test_dict_observations_reach_d3rlpy_as_the_flat_view_in_sorted_key_order():
    ds = pointmaze_dataset()
    buf = to_replay_buffer(ds)
    order = ("achieved_goal", "desired_goal", "observation")  # sorted, not the space's order
    flat = np.concatenate([ds.observations[k] for k in order], axis=1)
    last = np.concatenate([ds.next_observations[k] for k in order], axis=1)
    assert [e.observations.shape for e in buf.episodes] == [(21, 8), (21, 8)]
    np.testing.assert_array_equal(buf.episodes[0].observations[:20], flat[:20])
    np.testing.assert_array_equal(buf.episodes[1].observations[:20], flat[20:])
    # a timed-out episode bootstraps from its true last next observation, flattened alike
    np.testing.assert_array_equal(buf.episodes[0].observations[20], last[19])
    np.testing.assert_array_equal(buf.episodes[1].observations[20], last[39])


@pytest.mark.parametrize("method", ["iql", "pct-bc"])
def test_a_reference_row_trains_and_evaluates_on_a_dict_dataset(tmp_path, method):
    from offline_dt.data import write_hdf5

    path = write_hdf5(pointmaze_dataset(), tmp_path / "pointmaze-umaze-expert-v0.hdf5")
    cfg = tiny(path, tmp_path, method, max_envs=2)
    ev, _ = run_reference(cfg)
    assert ev["env_id"] == "PointMaze_UMaze-v3" and ev["episodes"] == 2
    assert ev["targets"][0]["episode_seeds"] == [evaluation_seed(3, i) for i in range(2)]
    algo = load_reference(cfg.run_dir)  # rebuilt at the flat view's width
    assert algo.predict(np.zeros((3, 8), np.float32)).shape == (3, 2)


def test_a_reference_row_refuses_an_env_whose_dict_keys_differ(tmp_path):
    from offline_dt.data import write_hdf5
    from offline_dt.envs.spaces import SpaceMismatchError

    ds = pointmaze_dataset()
    keys = {"observation": gym.spaces.Box(-np.inf, np.inf, (4,)),
            "goal": gym.spaces.Box(-np.inf, np.inf, (2,))}
    renamed = OfflineDataset.from_flat(
        observations={"observation": ds.observations["observation"],
                      "goal": ds.observations["desired_goal"]},
        actions=ds.actions, rewards=ds.rewards, terminals=ds.terminals,
        timeouts=ds.timeouts, observation_space=gym.spaces.Dict(keys),
        action_space=ds.action_space, metadata=ds.metadata, source="renamed")
    path = write_hdf5(renamed, tmp_path / "renamed.hdf5")
    cfg = tiny(path, tmp_path, "mlp-bc")
    with pytest.raises(SpaceMismatchError, match="'achieved_goal'"):
        run_reference(cfg)
    assert not cfg.run_dir.exists()  # refused before any training
