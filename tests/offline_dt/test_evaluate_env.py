"""The wrong env (issue 30): where a checkpoint meets an env, the spaces are compared before the
first step and a mismatch, an unknown id or a missing optional package (Box2D, MuJoCo,
gymnasium-robotics) ends in one line naming the env, both spaces, the checkpoint and the
install command: never a broadcasting error or a traceback."""

from __future__ import annotations

import importlib.util
import json

import gymnasium as gym
import numpy as np
import pytest
from conftest import PENDULUM_ACT, PENDULUM_OBS

import offline_dt.envs.rollout as rollout_engine
import offline_dt.evaluation.curves as curves
from offline_dt.cli import main
from offline_dt.data.space_codec import space_to_json
from offline_dt.envs.make import (
    EnvDependencyError,
    EnvNotFoundError,
    make_env,
    make_vec_env,
    missing_extra,
)
from offline_dt.envs.spaces import SpaceMismatchError, require_spaces, space_mismatch
from offline_dt.evaluation.curves import make_eval_hook
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint
from offline_dt.methods import get_method
from offline_dt.nn.config import DTConfig
from offline_dt.nn.transformer import DecisionTransformer
from offline_dt.training import TrainConfig, TrainingRun, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _needs_mujoco(**kwargs):
    raise gym.error.DependencyNotInstalled(
        'MuJoCo is not installed, run `pip install "gymnasium[mujoco]"`')


def _needs_box2d(**kwargs):
    raise gym.error.DependencyNotInstalled(
        'Box2D is not installed, you can install it by run `pip install swig` followed by '
        '`pip install "gymnasium[box2d]"`')


NEEDS_MUJOCO, NEEDS_BOX2D = "NeedsMujocoTest-v0", "NeedsBox2DTest-v0"
for _id, _entry in ((NEEDS_MUJOCO, _needs_mujoco), (NEEDS_BOX2D, _needs_box2d)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry)


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory, box_hdf5):
    """A tiny dt checkpoint trained on the Pendulum-shaped dataset (obs (3,), action [-2, 2])."""
    from conftest import TINY_TRAIN

    run_dir = tmp_path_factory.mktemp("pendulum") / "run"
    train(TrainConfig(dataset=str(box_hdf5), **{**TINY_TRAIN, "steps": 2, "run_dir": run_dir,
                                                 "checkpoint_every": 2}))
    return run_dir


# ---------------------------------------------------------------------------------- spaces
def test_space_mismatch_compares_kind_shape_count_and_action_bounds():
    box3 = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    assert space_mismatch(box3, PENDULUM_OBS, "observation") is None  # bounds not compared
    assert "shape (2,), the trained one (3,)" in space_mismatch(
        gym.spaces.Box(-1.0, 1.0, (2,), np.float32), PENDULUM_OBS, "observation")
    assert "a Discrete, the trained one a Box" in space_mismatch(
        gym.spaces.Discrete(3), PENDULUM_ACT, "action")
    assert "3 actions from 0, the trained one 2 from 0" in space_mismatch(
        gym.spaces.Discrete(3), gym.spaces.Discrete(2), "action")
    # A policy acts in its trained bounds: narrower ones (inferred from data) fit, wider not.
    narrow = gym.spaces.Box(-1.9, 1.9, (1,), np.float32)
    assert space_mismatch(PENDULUM_ACT, narrow, "action") is None
    unit = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    assert "do not hold the trained ones" in space_mismatch(unit, PENDULUM_ACT, "action")
    assert space_mismatch(PENDULUM_ACT, PENDULUM_ACT, "action") is None


def test_require_spaces_names_the_env_the_source_and_both_spaces():
    with pytest.raises(SpaceMismatchError) as err:
        require_spaces("MountainCarContinuous-v0", PENDULUM_OBS, PENDULUM_ACT,
                       "checkpoint runs/x/checkpoint.pt", hint=". hint")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("'MountainCarContinuous-v0'", "checkpoint runs/x/checkpoint.pt",
                 "observation space has shape (2,), the trained one (3,)",
                 "do not hold the trained ones", str(PENDULUM_OBS), str(PENDULUM_ACT),
                 "(2,), float32)", ". hint"):
        assert part in msg, part
    obs, act = require_spaces("Pendulum-v1", PENDULUM_OBS, PENDULUM_ACT, "checkpoint y")
    assert obs.shape == (3,) and act == PENDULUM_ACT


# ---------------------------------------------------------------------------------- making envs
def test_a_missing_extra_names_the_env_and_the_install_command():
    for make in (make_env, lambda env_id: make_vec_env(env_id, 2)):
        with pytest.raises(EnvDependencyError, match=r'pip install "gymnasium\[mujoco\]"') as e:
            make(NEEDS_MUJOCO)
        assert f"env_id {NEEDS_MUJOCO!r}" in str(e.value)
        with pytest.raises(EnvDependencyError,
                           match=r'pip install swig && pip install "gymnasium\[box2d\]"'):
            make(NEEDS_BOX2D)
    # judged from the registered entry point too, without an error message
    assert missing_extra("LunarLanderContinuous-v3") == "box2d"
    assert missing_extra("Hopper-v5") == "mujoco"
    assert missing_extra("Pendulum-v1") is None


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="Box2D is installed")
def test_lunar_lander_without_box2d():
    with pytest.raises(EnvDependencyError, match=r'gymnasium\[box2d\]') as err:
        make_env("LunarLanderContinuous-v3")
    assert "LunarLanderContinuous-v3" in str(err.value)


@pytest.mark.skipif("FetchReach-v4" in gym.registry, reason="gymnasium_robotics is imported")
def test_a_robotics_env_without_its_package_says_how_to_get_it(monkeypatch):
    import offline_dt.envs.make as make

    real = make.importlib.import_module

    def absent(name, *a, **kw):
        if name == "gymnasium_robotics":
            raise ImportError("No module named 'gymnasium_robotics'")
        return real(name, *a, **kw)

    monkeypatch.setattr(make.importlib, "import_module", absent)  # as if not installed
    with pytest.raises(EnvDependencyError, match="pip install gymnasium-robotics") as err:
        make_env("FetchReach-v4")
    assert "--env-id gymnasium_robotics:FetchReach-v4" in str(err.value)


def test_a_plugin_env_is_made_by_its_plain_id_in_a_fresh_process():
    """PointMaze and MiniGrid ids need no ``module:`` part: their package is imported first
    (offline_dt.envs.make.PLUGINS), in every command."""
    import subprocess
    import sys

    code = ("from offline_dt.envs.make import make_env, registered_id; "
            "print(make_env('PointMaze_UMaze-v3').spec.id, "
            "registered_id('MiniGrid-FourRooms-v0', 'test'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["PointMaze_UMaze-v3", "MiniGrid-FourRooms-v0"]


def test_an_unknown_id_is_a_value_error_naming_it():
    with pytest.raises(EnvNotFoundError, match="'NoSuchEnvAtAll-v0'"):
        make_env("NoSuchEnvAtAll-v0")
    with pytest.raises(ValueError, match="Pendulum"):
        make_vec_env("pendulum-v1", 1)  # gymnasium's "Did you mean" is kept


# ---------------------------------------------------------------------------------- checkpoints
def test_evaluate_refuses_an_env_with_other_spaces_before_stepping(pendulum_run, tmp_path,
                                                                   monkeypatch):
    def no_step(*args, **kwargs):
        raise AssertionError("stepped an env before checking its spaces")

    monkeypatch.setattr(rollout_engine, "step_policy", no_step)
    out = tmp_path / "eval.json"
    with pytest.raises(SpaceMismatchError) as err:
        evaluate_checkpoint(EvalConfig(checkpoint=pendulum_run, env_id="MountainCarContinuous-v0",
                                       episodes=1, device="cpu", out=out))
    msg = str(err.value)
    assert f"checkpoint {pendulum_run}" in msg and "'MountainCarContinuous-v0'" in msg
    assert "It was trained on 'Pendulum-v1'" in msg and "--env-id" in msg
    assert not out.exists()


def test_cli_evaluate_on_the_wrong_env_is_one_line_exit_2(pendulum_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(pendulum_run), "--env-id",
                 "MountainCarContinuous-v0", "--episodes", "1", "--device", "cpu",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    errors = [ln for ln in captured.err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("offline-dt evaluate: error: env_id "
                                                     "'MountainCarContinuous-v0' does not fit "
                                                     f"checkpoint {pendulum_run}")
    assert "shape (2,), the trained one (3,)" in errors[0]
    assert "Traceback" not in captured.err + captured.out
    assert "broadcast" not in captured.err
    assert not out.exists()


@pytest.mark.parametrize(("env_id", "needle"), [
    (NEEDS_BOX2D, 'pip install swig && pip install "gymnasium[box2d]"'),
    (NEEDS_MUJOCO, 'pip install "gymnasium[mujoco]"'),
    ("NoSuchEnvAtAll-v0", "no such Gymnasium environment"),
])
def test_cli_evaluate_on_an_env_that_cannot_be_made_is_one_line_exit_2(pendulum_run, env_id,
                                                                       needle, capsys):
    code = main(["evaluate", "--checkpoint", str(pendulum_run), "--env-id", env_id,
                 "--episodes", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    errors = [ln for ln in captured.err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith(f"offline-dt evaluate: error: env_id "
                                                     f"{env_id!r}")
    assert needle in errors[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (pendulum_run / "eval.json").exists()


def test_the_checkpoint_records_the_spaces_it_is_checked_against(pendulum_run):
    info = load_checkpoint(pendulum_run).dataset_info
    assert info["observation_space"] == json.loads(space_to_json(PENDULUM_OBS))
    assert info["action_space"] == json.loads(space_to_json(PENDULUM_ACT))


def test_eval_hook_checks_the_env_before_its_first_rollout(monkeypatch):
    def no_rollout(*args, **kwargs):
        raise AssertionError("rolled out before checking the spaces")

    monkeypatch.setattr(curves, "evaluate_policy", no_rollout)
    net = DecisionTransformer(DTConfig(obs_dim=3, act_dim=1, context_length=2, embed_dim=8,
                                       n_layer=1, max_timestep=300))
    info = {"env_id": "Pendulum-v1", "best_return": -300.0,
            "observation_space": json.loads(space_to_json(PENDULUM_OBS)),
            "action_space": json.loads(space_to_json(PENDULUM_ACT))}
    cfg = TrainConfig(dataset="tiny", env_id="MountainCarContinuous-v0", eval_episodes=1)
    run = TrainingRun(cfg, get_method("dt"), net, None, info)
    with pytest.raises(SpaceMismatchError, match="does not fit the run in "):
        make_eval_hook()(run, 0)
