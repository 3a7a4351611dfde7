"""Few-shot transfer of a multi-task checkpoint (``offline_dt.training.transfer``,
``offline-dt train --method M --init-from RUN``) through the real CLI: the transfer run
starts from the source's weights (a new env's row of a per-env table added), trains on the
new env's small dataset, acts in it through ``offline-dt evaluate --env-id``, resumes
exactly, and is refused where the new env does not fit the checkpoint."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import interrupted_and_full, make_box_dataset, make_discrete_dataset

from offline_dt.cli import main
from offline_dt.data import OfflineDataset, write_hdf5
from offline_dt.data.windows import returns_to_go
from offline_dt.training import load_checkpoint
from offline_dt.training.checkpoint import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The tiny network and budget of every run here (the CLI's flags).
TINY = ["--batch-size", "8", "--context-length", "4", "--embed-dim", "16", "--n-layer", "1",
        "--n-head", "1", "--dropout", "0.0", "--max-timestep", "64", "--warmup-steps", "2",
        "--learning-rate", "1e-3", "--checkpoint-every", "50", "--log-every", "2",
        "--progress", "false", "--device", "cpu"]
OPTIONS = {"mgdt": ["--mgdt.n-bins", "16"], "gato": ["--gato.n-bins", "64"]}


def _flat(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, lengths: list[int],
          obs_space: gym.Space, act_space: gym.Space, env_id: str) -> OfflineDataset:
    timeouts = np.zeros(len(rewards), bool)
    timeouts[np.cumsum(lengths) - 1] = True
    return OfflineDataset.from_flat(
        observations=obs, actions=actions, rewards=rewards, terminals=np.zeros_like(timeouts),
        timeouts=timeouts, observation_space=obs_space, action_space=act_space,
        metadata={"env_id": env_id, "ref_min_score": -100.0, "ref_max_score": 100.0},
        source=env_id.lower())


def mountain_car(lengths=(20, 14, 25, 9)) -> OfflineDataset:
    """MountainCarContinuous-shaped: obs (2,), action = tanh(obs·w) in [-1, 1]."""
    rng = np.random.default_rng(4)
    n = sum(lengths)
    obs = np.stack((rng.uniform(-1.2, 0.6, n), rng.uniform(-0.07, 0.07, n)), 1)
    act = np.tanh(obs @ np.array([1.0, 10.0]))[:, None]
    space = gym.spaces.Box(np.array([-1.2, -0.07], np.float32), np.array([0.6, 0.07],
                                                                         np.float32))
    return _flat(obs.astype(np.float32), act.astype(np.float32),
                 -(act[:, 0] ** 2).astype(np.float32), list(lengths), space,
                 gym.spaces.Box(-1.0, 1.0, (1,), np.float32), "MountainCarContinuous-v0")


def acrobot(lengths=(12, 18)) -> OfflineDataset:
    """Acrobot-shaped: obs (6,), Discrete(3): wider than the source suite's tables."""
    rng = np.random.default_rng(5)
    n = sum(lengths)
    obs = rng.uniform(-1, 1, (n, 6)).astype(np.float32)
    hi = np.array([1, 1, 1, 1, 4 * np.pi, 9 * np.pi], np.float32)
    return _flat(obs, rng.integers(0, 3, n), -np.ones(n, np.float32), list(lengths),
                 gym.spaces.Box(-hi, hi), gym.spaces.Discrete(3), "Acrobot-v1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """HDF5 files: the source suite's (MountainCarContinuous, CartPole), the held-out env's
    small dataset (Pendulum, 3 episodes) and a wider env's (Acrobot)."""
    root = tmp_path_factory.mktemp("transfer-data")
    return {"mcc": write_hdf5(mountain_car(), root / "mcc.hdf5"),
            "cartpole": write_hdf5(make_discrete_dataset(), root / "cartpole.hdf5"),
            "pendulum": write_hdf5(make_box_dataset(lengths=(30, 25, 40)),
                                   root / "pendulum.hdf5"),
            "acrobot": write_hdf5(acrobot(), root / "acrobot.hdf5")}


def _train(*args: str) -> int:
    return main(["train", *args])


@pytest.fixture(scope="module")
def sources(data, tmp_path_factory):
    """One mgdt and one gato checkpoint of the two-env source suite (6 updates each)."""
    root = tmp_path_factory.mktemp("sources")
    out = {}
    for method in ("mgdt", "gato"):
        run = root / method
        assert _train("--method", method, "--dataset", f"{data['mcc']},{data['cartpole']}",
                      "--steps", "6", "--run-dir", str(run), *TINY, *OPTIONS[method]) == 0
        out[method] = run
    return out


def _state(run) -> dict[str, torch.Tensor]:
    return read_checkpoint(run)[1]["model"]


@pytest.mark.parametrize("method", ["mgdt", "gato"])
def test_transfer_starts_from_the_source_weights(method, sources, data, tmp_path):
    """After one update at a learning rate of 1e-9 every tensor of the transfer run equals
    the source's (a new env's row of a per-env table: the known rows' mean for a parameter,
    fitted on the new data for a buffer); a run from scratch on the same data does not. The
    network's shape is the source's even where the command line says otherwise."""
    run = tmp_path / "t"
    assert _train("--method", method, "--init-from", str(sources[method]),
                  "--dataset", str(data["pendulum"]), "--steps", "1", "--run-dir", str(run),
                  *TINY, "--embed-dim", "32", "--learning-rate", "1e-9", "--warmup-steps",
                  "0") == 0
    src, got = _state(sources[method]), _state(run)
    assert set(src) == set(got)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train_config"]["embed_dim"] == 16  # the source's, not --embed-dim 32
    assert cfg["dataset"]["env_ids"] == ["MountainCarContinuous-v0", "CartPole-v1",
                                         "Pendulum-v1"]
    assert cfg["dataset"]["transfer"]["new_env_ids"] == ["Pendulum-v1"]
    for key, s in src.items():
        g = got[key]
        if s.shape == g.shape:
            assert torch.allclose(g.float(), s.float(), atol=1e-6), key
        else:  # a per-env table: the source's 2 envs first, Pendulum's row added
            assert g.shape[0] == 3 and s.shape[0] == 2, key
            corner = (slice(0, 2), *(slice(0, n) for n in s.shape[1:]))
            assert torch.equal(g[corner], s), key
    if method == "mgdt":
        row = got["embed_env.weight"][2]
        assert torch.allclose(row, src["embed_env.weight"].mean(0), atol=1e-6)
        ds = make_box_dataset(lengths=(30, 25, 40))
        rtg = returns_to_go(ds.rewards, ds.episode_starts)
        scale = float(np.abs(ds.episode_returns).max())
        assert float(got["return_low"][2]) == pytest.approx(rtg.min() / scale, rel=1e-5)
        assert float(got["return_high"][2]) == pytest.approx(rtg.max() / scale, rel=1e-5)
    else:
        assert int(got["prompt_length"][2]) == 5  # Pendulum's prompt, fitted on the new data
    scratch = tmp_path / "scratch"
    assert _train("--method", method, "--dataset", str(data["pendulum"]), "--steps", "1",
                  "--run-dir", str(scratch), *TINY, *OPTIONS[method]) == 0
    block = next(k for k in src if ".attn." in k and k.endswith("weight"))
    assert not torch.allclose(_state(scratch)[block].float(), src[block].float(), atol=1e-3)


@pytest.mark.parametrize("method", ["mgdt", "gato"])
def test_transfer_trains_on_the_small_data_and_acts_in_the_held_out_env(
        method, sources, data, tmp_path, capsys):
    run = tmp_path / "t"
    assert _train("--method", method, "--init-from", str(sources[method]),
                  "--dataset", str(data["pendulum"]), "--steps", "8", "--run-dir", str(run),
                  *TINY) == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5  # header + a row every 2 of 8 updates
    src, got = _state(sources[method]), _state(run)
    moved = [k for k in src if src[k].shape == got[k].shape and src[k].is_floating_point()
             and not torch.allclose(src[k], got[k])]
    assert moved  # it trained
    for env, low, high in (("Pendulum-v1", -2000, 0), ("CartPole-v1", 1, 500)):
        out = tmp_path / f"{env}.json"
        assert main(["evaluate", "--checkpoint", str(run), "--env-id", env, "--episodes", "2",
                     "--validation-episodes", "1", "--device", "cpu", "--out", str(out)]) == 0
        ev = json.loads(out.read_text())
        assert ev["env_id"] == env and low <= ev["mean_return"] <= high
    assert main(["evaluate", "--checkpoint", str(run), "--env-id", "Acrobot-v1",
                 "--episodes", "1", "--device", "cpu"]) == 2
    assert "'MountainCarContinuous-v0', 'CartPole-v1', 'Pendulum-v1'" in capsys.readouterr().err


def test_refusals_name_what_does_not_fit(sources, data, tmp_path, capsys):
    run = tmp_path / "t"
    common = ["--run-dir", str(run), "--steps", "2", *TINY]
    assert _train("--method", "mgdt", "--init-from", str(sources["mgdt"]), "--dataset",
                  str(data["acrobot"]), *common) == 2
    err = capsys.readouterr().err
    assert "Acrobot-v1 (observation 6, action Discrete(3)) do not fit" in err
    assert "widest observation 4, widest Box action 1, most Discrete actions 2" in err
    assert not run.exists()  # refused before anything was written
    assert _train("--method", "gato", "--init-from", str(sources["mgdt"]), "--dataset",
                  str(data["pendulum"]), *common) == 2
    assert "is a mgdt checkpoint and transfer trains its method; pass --method mgdt" in \
        capsys.readouterr().err
    assert _train("--method", "dt", "--init-from", str(sources["mgdt"]), "--dataset",
                  str(data["pendulum"]), *common) == 2
    assert "transfer starts from a multi-task checkpoint" in capsys.readouterr().err
    dt = tmp_path / "dt"
    assert _train("--method", "dt", "--dataset", str(data["pendulum"]), "--run-dir", str(dt),
                  "--steps", "2", *TINY) == 0
    assert _train("--method", "mgdt", "--init-from", str(dt), "--dataset",
                  str(data["pendulum"]), *common) == 2
    assert "not a multi-task checkpoint" in capsys.readouterr().err
    assert not run.exists()


def test_resume_of_a_transfer_run_is_exact(sources, data, tiny_config, tmp_path):
    full = tiny_config(data["pendulum"], method="mgdt", init_from=str(sources["mgdt"]),
                       steps=10, checkpoint_every=5, run_dir=tmp_path / "full")
    a, b = interrupted_and_full(full, tmp_path, env_id="Pendulum-v1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ck = load_checkpoint(full.run_dir, env_id="Pendulum-v1")
    assert ck.model.index == 2 and ck.dataset_info["suite_env_ids"][2] == "Pendulum-v1"
