"""Bad input fails early with a message naming the argument and what was found."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from datagen.envs import check_env, env_namespace
from datagen.generate import generate


class _DictObsEnv(gym.Env):
    observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,), np.float32)})
    action_space = gym.spaces.Discrete(2)


class _ImageObsEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)


class _TupleActEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3)))


for _name, _cls in (("DictObs", _DictObsEnv), ("ImageObs", _ImageObsEnv),
                    ("TupleAct", _TupleActEnv)):
    if f"DatagenTest{_name}-v0" not in gym.registry:
        gym.register(f"DatagenTest{_name}-v0", entry_point=_cls)


def test_namespace():
    assert env_namespace("Pendulum-v1") == "pendulum"
    assert env_namespace("CartPole-v1") == "cartpole"
    assert env_namespace("MountainCarContinuous-v0") == "mountaincarcontinuous"


def test_unknown_env_lists_close_ids(tmp_path, make_config):
    with pytest.raises(ValueError, match=r"env_id.*'Pendulm-v1'.*Pendulum-v1"):
        generate(make_config(tmp_path, env_id="Pendulm-v1"))
    assert not (tmp_path / "agents").exists()


@pytest.mark.parametrize("env_id, found", [
    ("DatagenTestDictObs-v0", "Dict"),
    ("DatagenTestImageObs-v0", r"\(8, 8, 3\)"),
    ("DatagenTestTupleAct-v0", "Tuple"),
])
def test_unsupported_spaces_refused_before_work(tmp_path, env_id, found, make_config):
    with pytest.raises(ValueError, match=rf"env_id {env_id}.*{found}"):
        generate(make_config(tmp_path, env_id=env_id))
    assert not (tmp_path / "agents").exists() and not (tmp_path / "d4rl").exists()
    with pytest.raises(ValueError, match=found):
        check_env(env_id)


@pytest.mark.parametrize("name, value", [
    ("random_steps", 0), ("expert_steps", -5), ("medium_steps", 0), ("agent_steps", 0),
    ("checkpoint_every", 0), ("ref_episodes", 0), ("eval_episodes", -1), ("num_envs", 0),
])
def test_non_positive_counts(tmp_path, name, value, make_config):
    with pytest.raises(ValueError, match=rf"{name}: must be a positive integer.*{value}"):
        generate(make_config(tmp_path, **{name: value}))


def test_unknown_level(tmp_path, make_config):
    with pytest.raises(ValueError, match=r"levels: unknown level\(s\) \['mediocre'\]"):
        generate(make_config(tmp_path, levels=["random", "mediocre"]))


def test_existing_unrelated_file_refused(tmp_path, make_config):
    out = tmp_path / "d4rl" / "pendulum-random-v0.hdf5"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"not hdf5")
    with pytest.raises(FileExistsError, match=r"pendulum-random-v0\.hdf5.*--overwrite"):
        generate(make_config(tmp_path, levels=["random"]))
    assert out.read_bytes() == b"not hdf5"
    assert not (tmp_path / "agents").exists()


def test_interrupted_hdf5_write_leaves_no_file(tiny_run, tmp_path, monkeypatch, make_config):
    import h5py

    real = h5py.Group.create_dataset

    def failing(self, name, *a, **k):
        if name == "rewards":
            raise KeyboardInterrupt("killed mid-write")
        return real(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    cfg = make_config(tmp_path, levels=["random"], agents_dir=tiny_run.cfg.agents_dir)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg)
    d4rl = tmp_path / "d4rl"
    assert not (d4rl / "pendulum-random-v0.hdf5").exists()
    assert not [p for p in d4rl.iterdir()]  # no temporary left either


def test_interrupted_minari_write_leaves_no_dataset(tiny_run, tmp_path, monkeypatch, make_config):
    import minari

    def failing(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", failing)
    cfg = make_config(tmp_path, levels=["random"], agents_dir=tiny_run.cfg.agents_dir)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(cfg)
    ns_dir = tmp_path / "minari" / "pendulum"
    assert not (ns_dir / "random-v0").exists()
    assert not [p for p in ns_dir.iterdir() if "random" in p.name] if ns_dir.exists() else True


def _needs_box2d(**kwargs):
    raise gym.error.DependencyNotInstalled(
        "Box2D is not installed, you can install it by run `pip install swig` followed by "
        '`pip install "gymnasium[box2d]"`')


if "DatagenTestNeedsBox2D-v0" not in gym.registry:
    gym.register("DatagenTestNeedsBox2D-v0", entry_point=_needs_box2d)


def test_generate_with_a_missing_extra_is_one_line_with_the_install_command(tmp_path, capsys):
    """``generate`` makes its env through ``offline_dt.envs.make``: a missing Box2D ends in
    ``offline-dt generate: error: ...`` naming the install command, exit 2, before any work."""
    from offline_dt.cli import main

    code = main(["generate", "--env-id", "DatagenTestNeedsBox2D-v0", "--out-dir",
                 str(tmp_path / "d4rl"), "--agents-dir", str(tmp_path / "agents"),
                 "--minari-root", str(tmp_path / "minari")])
    captured = capsys.readouterr()
    assert code == 2
    errors = [ln for ln in captured.err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith(
        "offline-dt generate: error: env_id 'DatagenTestNeedsBox2D-v0'")
    assert 'pip install swig && pip install "gymnasium[box2d]"' in errors[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "agents").exists() and not (tmp_path / "d4rl").exists()
