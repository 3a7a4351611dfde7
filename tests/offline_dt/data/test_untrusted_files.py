"""Issue 15: what a dataset file holds may not run code, pass as one episode, or crash with a
bare numpy error; killed writers' temporaries are cleaned up (defects 2, 5, 7, 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from offline_dt.data import (
    DatasetError,
    load_dataset,
    read_hdf5,
    read_minari,
    registered_env_id,
    write_hdf5,
    write_minari,
)
from offline_dt.data.atomic import atomic_path, remove_stale_temporaries

MARKER_MODULE = "odt_import_marker"


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """A module of our own on sys.path that records being imported by creating a file."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    marker = tmp_path / "imported"
    (mod_dir / f"{MARKER_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    monkeypatch.delitem(sys.modules, MARKER_MODULE, raising=False)
    return marker


def _hdf5_with_env_id(ds, path, env_id):
    path = write_hdf5(ds, path)
    with h5py.File(path, "a") as f:
        del f["metadata/env_id"]
        f["metadata/env_id"] = env_id
    return path


# ------------------------------------------------------------------ defect 2: env ids in files
def test_hdf5_env_id_with_module_part_is_refused_and_never_imported(box_dataset, tmp_path,
                                                                    marker_module):
    path = _hdf5_with_env_id(box_dataset, tmp_path / "evil.hdf5", f"{MARKER_MODULE}:Pendulum-v1")
    with pytest.raises(DatasetError, match=r"evil\.hdf5: key 'metadata/env_id' must be a plain "
                                           rf"Gymnasium id.*'{MARKER_MODULE}:Pendulum-v1'"):
        load_dataset(path)
    assert not marker_module.exists() and MARKER_MODULE not in sys.modules


def test_this_is_not_imported_in_a_fresh_process(box_dataset, tmp_path):
    """The issue's example: ``this:Pendulum-v1`` would print the Zen of Python on import."""
    path = _hdf5_with_env_id(box_dataset, tmp_path / "this.hdf5", "this:Pendulum-v1")
    code = ("import sys\nfrom offline_dt.data import load_dataset, DatasetError\n"
            f"try:\n    load_dataset({str(path)!r})\nexcept DatasetError as e:\n"
            "    print('refused:', e)\n"
            "print('this imported:', 'this' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "refused:" in out and "metadata/env_id" in out
    assert "this imported: False" in out
    assert "Beautiful is better than ugly" not in out


def test_plain_unregistered_env_id_loads_but_is_not_registered(box_dataset, tmp_path):
    """A foreign file may name an env not installed here: it loads (training does not need
    the env); the caller of gym.make checks registration."""
    path = _hdf5_with_env_id(box_dataset, tmp_path / "foreign.hdf5", "SomeoneElses-v3")
    ds = load_dataset(path)
    assert ds.metadata["env_id"] == "SomeoneElses-v3"
    with pytest.raises(DatasetError, match=r"foreign\.hdf5: key 'metadata/env_id' names env "
                                           r"'SomeoneElses-v3', which is not registered"):
        registered_env_id(ds.metadata["env_id"], ds.source)
    assert registered_env_id("Pendulum-v1", "x") == "Pendulum-v1"
    with pytest.raises(DatasetError, match="plain Gymnasium id"):
        registered_env_id("os:Pendulum-v1", "x")


def _edit_minari_env_spec(ds_dir, **spec_changes):
    """Rewrite a written Minari dataset's ``env_spec`` with ``spec_changes``; returns the
    metadata dict written (callers may edit and write it again)."""
    meta_path = ds_dir / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    spec = json.loads(meta["env_spec"])
    spec.update(spec_changes)
    meta["env_spec"] = json.dumps(spec)
    meta_path.write_text(json.dumps(meta))
    return meta


def test_minari_env_id_with_module_part_is_refused(box_dataset, tmp_path, marker_module):
    ds_dir = write_minari(box_dataset, "tiny/evil-v0", root=tmp_path / "minari")
    _edit_minari_env_spec(ds_dir, id=f"{MARKER_MODULE}:Pendulum-v1")
    with pytest.raises(DatasetError, match=r"evil-v0.*key 'env_spec.id' must be a plain"):
        read_minari(ds_dir)
    assert not marker_module.exists()


def test_minari_without_spaces_is_refused_before_minari_builds_the_env(box_dataset, tmp_path,
                                                                      marker_module):
    """Without stored spaces Minari would ``gym.make`` the file's env spec, importing the
    module its entry point names."""
    ds_dir = write_minari(box_dataset, "tiny/nospace-v0", root=tmp_path / "minari")
    meta = _edit_minari_env_spec(ds_dir, entry_point=f"{MARKER_MODULE}:Env")
    del meta["observation_space"]
    (ds_dir / "data" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"nospace-v0.*lacks key\(s\) \['observation_space'\]"):
        read_minari(ds_dir)
    assert not marker_module.exists()


# ------------------------------------------------------------------ defect 5: missing timeouts
def _no_timeouts_file(path, n=450, next_obs=None, env_id=None, terminal_at=()):
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    term = np.zeros(n, bool)
    term[list(terminal_at)] = True
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = term
        if next_obs is not None:
            f["next_observations"] = next_obs(obs)
        if env_id is not None:
            f["metadata/env_id"] = env_id
    return path


def test_missing_timeouts_split_at_the_env_time_limit(tmp_path):
    """D4RL's sequence_dataset rule: Pendulum-v1's TimeLimit is 200 steps."""
    path = _no_timeouts_file(tmp_path / "old.hdf5", env_id="Pendulum-v1")
    ds = read_hdf5(path)
    np.testing.assert_array_equal(ds.episode_starts, [0, 200, 400, 450])
    assert ds.timeouts.sum() == 2 and ds.timeouts[[199, 399]].all()
    # the step counter restarts after a terminal
    path = _no_timeouts_file(tmp_path / "term.hdf5", env_id="Pendulum-v1", terminal_at=[49])
    np.testing.assert_array_equal(read_hdf5(path).episode_starts, [0, 50, 250, 450])
    # the caller may name the env when the file does not
    path = _no_timeouts_file(tmp_path / "anon.hdf5")
    np.testing.assert_array_equal(load_dataset(path, env_id="Pendulum-v1").episode_starts,
                                  [0, 200, 400, 450])


def test_missing_timeouts_found_from_next_observation_breaks(tmp_path):
    def with_breaks(obs):
        nxt = np.roll(obs, -1, axis=0)
        nxt[[99, 249, 449]] = 0.5  # the true last observation, not the next episode's first
        return nxt

    path = _no_timeouts_file(tmp_path / "nxt.hdf5", next_obs=with_breaks)
    ds = read_hdf5(path)
    np.testing.assert_array_equal(ds.episode_starts, [0, 100, 250, 450])
    assert not ds.terminals.any()


def test_missing_timeouts_without_a_way_to_recover_them_is_an_error(tmp_path):
    for name, env_id in (("bare.hdf5", None), ("unknown.hdf5", "NotInstalled-v0")):
        path = _no_timeouts_file(tmp_path / name, env_id=env_id)
        with pytest.raises(DatasetError, match=rf"{name}: key 'timeouts' is missing") as e:
            read_hdf5(path)
        assert "max_timestep" not in str(e.value)


# ------------------------------------------------------------------ defect 7: shapes
def test_actions_of_the_wrong_width_name_file_key_and_shapes(box_dataset, tmp_path):
    path = write_hdf5(box_dataset, tmp_path / "wide-act.hdf5")  # stores Box(-2, 2, (1,))
    n = box_dataset.num_transitions
    with h5py.File(path, "a") as f:
        del f["actions"]
        f["actions"] = np.zeros((n, 2), np.float32)
    with pytest.raises(DatasetError, match=rf"wide-act\.hdf5: key 'actions' has shape "
                                           rf"\({n}, 2\), expected \({n}, 1\)"):
        read_hdf5(path)


def test_discrete_actions_of_the_wrong_width(discrete_dataset, tmp_path):
    path = write_hdf5(discrete_dataset, tmp_path / "disc.hdf5")
    n = discrete_dataset.num_transitions
    with h5py.File(path, "a") as f:
        del f["actions"]
        f["actions"] = np.zeros((n, 3), np.int64)
    with pytest.raises(DatasetError, match=rf"disc\.hdf5: key 'actions' has shape \({n}, 3\), "
                                           rf"expected \({n},\)"):
        read_hdf5(path)


# ------------------------------------------------------------------ defect 8: leftovers
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "ds-v0"
    dead = _dead_pid()
    stale_file = tmp_path / f".ds-v0.{dead}.tmp"
    stale_file.write_text("half")
    stale_root = tmp_path / f".ds-v0.{dead}.tmp-root"  # write_minari's temporary root
    (stale_root / "ns").mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_tmp = tmp_path / f".ds-v0.{live.pid}.tmp"
        live_tmp.mkdir()
        other = tmp_path / f".other-v0.{dead}.tmp"  # another target's: not ours to judge
        other.write_text("x")
        with atomic_path(target) as tmp:
            tmp.write_text("whole")
        assert target.read_text() == "whole"
        assert not stale_file.exists() and not stale_root.exists()
        assert live_tmp.is_dir() and other.exists()
        assert remove_stale_temporaries(target) == []
    finally:
        live.kill()
        live.wait()


def test_killed_minari_write_is_cleaned_by_the_next_write(box_dataset, tmp_path):
    root = tmp_path / "minari"
    dead = _dead_pid()
    ns = root / "tiny"
    (ns / f".box-v0.{dead}.tmp-root" / "tiny" / "box-v0" / "data").mkdir(parents=True)
    (ns / f".box-v0.{dead}.tmp").mkdir()
    write_minari(box_dataset, "tiny/box-v0", root=root)
    assert sorted(p.name for p in ns.iterdir()) == ["box-v0", "namespace_metadata.json"]
    assert read_minari(ns / "box-v0").checksum() == box_dataset.checksum()
    assert os.listdir(ns / "box-v0")  # complete
