"""Issue 30: a file without ``timeouts`` whose ``next_observations`` run on across episode
boundaries is split at the env's time limit when the env is known (D4RL's
``sequence_dataset`` rule); episodes longer than the limit are warned about; files with
``timeouts`` load exactly as stored."""

from __future__ import annotations

import logging

import h5py
import numpy as np

from offline_dt.data import load_dataset, read_hdf5, read_minari, write_hdf5, write_minari
from tests.offline_dt.conftest import make_box_dataset


def _run_on_file(path, n=6000, env_id=None, breaks=(), terminal_at=()):
    """Pendulum-shaped rows whose next_observations are the next row's observation everywhere
    (they run on across every boundary) except at ``breaks``; no ``timeouts`` key."""
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    nxt = np.roll(obs, -1, axis=0)
    nxt[list(breaks)] = 0.25
    term = np.zeros(n, bool)
    term[list(terminal_at)] = True
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["next_observations"] = nxt
        f["actions"] = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = term
        if env_id is not None:
            f["metadata/env_id"] = env_id
    return path


def test_run_on_next_observations_split_at_the_callers_env_time_limit(tmp_path, caplog):
    """The issue's case: 6,000 steps were one episode even with Pendulum-v1 (limit 200)."""
    path = _run_on_file(tmp_path / "run-on.hdf5")
    assert read_hdf5(path).num_episodes == 1  # no env: nothing tells where episodes end
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(path, env_id="Pendulum-v1")
    np.testing.assert_array_equal(ds.episode_lengths, [200] * 30)
    assert ds.timeouts.sum() == 30 and not ds.terminals.any()  # the last row ends at 200 too
    assert "run-on.hdf5 (no 'timeouts'; split at the limit" in caplog.text
    assert "1 episode(s) are longer than Pendulum-v1's time limit of 200 steps (longest 6000)" \
        in caplog.text


def test_the_files_own_env_gives_the_limit(tmp_path):
    path = _run_on_file(tmp_path / "own.hdf5", n=450, env_id="Pendulum-v1")
    np.testing.assert_array_equal(read_hdf5(path).episode_starts, [0, 200, 400, 450])


def test_breaks_and_terminals_restart_the_count(tmp_path):
    """Ends found in next_observations (row 99) and terminals (row 349) start a new count;
    only the stretches longer than 200 steps are cut."""
    path = _run_on_file(tmp_path / "mixed.hdf5", n=800, breaks=[99], terminal_at=[349])
    ds = read_hdf5(path, env_id="Pendulum-v1")
    np.testing.assert_array_equal(ds.episode_starts, [0, 100, 300, 350, 550, 750, 800])
    assert ds.terminals[349] and not ds.timeouts[349]
    assert read_hdf5(path).episode_starts.tolist() == [0, 100, 350, 800]  # no env: as before


def test_files_with_timeouts_load_as_stored_and_long_episodes_are_warned(tmp_path, caplog):
    long = make_box_dataset(lengths=(250, 30, 240))  # collected without Pendulum's TimeLimit
    path = write_hdf5(long, tmp_path / "long.hdf5")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(path)
        again = load_dataset(path, env_id="Pendulum-v1")
    assert ds.checksum() == again.checksum() == long.checksum()
    assert caplog.text.count("2 episode(s) are longer than Pendulum-v1's time limit of 200 "
                             "steps (longest 250)") == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ds_dir = write_minari(long, "tiny/long-v0", root=tmp_path / "minari")
        assert read_minari(ds_dir).checksum() == long.checksum()
    assert "2 episode(s) are longer than Pendulum-v1's time limit" in caplog.text


def test_no_warning_within_the_limit_or_without_an_env(box_dataset, tmp_path, caplog):
    path = write_hdf5(box_dataset, tmp_path / "box.hdf5")
    long = write_hdf5(make_box_dataset(lengths=(300,), env_id=""), tmp_path / "anon.hdf5")
    with caplog.at_level(logging.WARNING):
        assert read_hdf5(path).checksum() == box_dataset.checksum()
        assert read_hdf5(long).num_episodes == 1
    assert "longer than" not in caplog.text
