"""Issue 30: damaged and hostile dataset files end in one DatasetError naming the file and key,
checked before anything is read: truncated files, bytes or strings where numbers belong, and
shapes declared far beyond the memory there is."""

from __future__ import annotations

import importlib.util
import logging
import os

import h5py
import numpy as np
import pytest

import offline_dt.data.validate as validate
from offline_dt.data import DatasetError, load_dataset, read_hdf5, read_minari, write_hdf5
from offline_dt.data.catalog import list_datasets
from offline_dt.data.minari_io import write_minari


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _replace_key(path, key, data=None, **create):
    with h5py.File(path, "a") as f:
        del f[key]
        if data is not None:
            f[key] = data
        elif create:
            f.create_dataset(key, **create)


@pytest.fixture
def hdf5_copy(box_dataset, tmp_path):
    return write_hdf5(box_dataset, tmp_path / "box.hdf5")


@pytest.fixture
def minari_copy(box_dataset, tmp_path):
    return write_minari(box_dataset, "tiny/box-v0", root=tmp_path / "minari")


# ------------------------------------------------------------------ truncated files
def test_truncated_hdf5_names_the_file(hdf5_copy):
    _truncate(hdf5_copy)
    with pytest.raises(DatasetError, match=rf"^{hdf5_copy}: not a readable HDF5 file; it may "
                                           r"be truncated \(an interrupted download or copy\)"):
        load_dataset(hdf5_copy)


def test_truncated_minari_main_data_names_the_file(minari_copy, tmp_path, caplog):
    main = minari_copy / "data" / "main_data.hdf5"
    _truncate(main)
    with pytest.raises(DatasetError, match=rf"minari:{minari_copy} \({main}\): not a readable "
                                           "HDF5 file; it may be truncated"):
        read_minari(minari_copy)
    with caplog.at_level(logging.WARNING):
        assert list_datasets(None, tmp_path / "minari").empty
    assert "skipping Minari dataset tiny/box-v0" in caplog.text and str(main) in caplog.text


def test_minari_main_data_missing_or_short_of_episodes(minari_copy):
    main = minari_copy / "data" / "main_data.hdf5"
    with h5py.File(main, "a") as f:
        del f["episode_5"]
    with pytest.raises(DatasetError, match=r"main_data\.hdf5\): group 'episode_5' is missing "
                                           r"\(metadata\.json's total_episodes is 6\)"):
        read_minari(minari_copy)
    main.unlink()
    with pytest.raises(DatasetError, match=r"main_data\.hdf5\): the file is missing"):
        read_minari(minari_copy)


def test_minari_episode_without_an_array_or_with_wrong_rows(minari_copy):
    main = minari_copy / "data" / "main_data.hdf5"
    _replace_key(main, "episode_2/rewards", np.zeros(3, np.float32))  # episode 2 has T=7
    with pytest.raises(DatasetError, match=r"key 'episode_2/rewards' has 3 rows, expected 7 "
                                           r"\(T for T=7 actions\)"):
        read_minari(minari_copy)
    _replace_key(main, "episode_2/rewards")
    with pytest.raises(DatasetError, match=r"key 'episode_2/rewards' cannot be opened"):
        read_minari(minari_copy)


def test_a_dangling_link_is_reported_with_its_key(tmp_path):
    path = tmp_path / "linked.hdf5"
    with h5py.File(path, "w") as f:
        f["rewards"] = np.zeros(5, np.float32)
        f["actions"] = np.zeros((5, 1), np.float32)
        f["terminals"] = np.zeros(5, bool)
        f["timeouts"] = np.zeros(5, bool)
        f["observations"] = h5py.ExternalLink("missing.hdf5", "/x")
    with pytest.raises(DatasetError, match=r"linked\.hdf5: key 'observations' cannot be opened"):
        read_hdf5(path)


def test_minari_errors_of_its_own_are_translated(minari_copy):
    """Minari raises ImportError for the arrow format without pyarrow, ValueError for its
    own checks: each becomes a DatasetError naming the dataset."""
    import json

    meta_path = minari_copy / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["data_format"] = "no-such-format"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=rf"minari:{minari_copy}: Minari could not read "
                                           rf"{minari_copy / 'data'}.*KeyError"):
        read_minari(minari_copy)
    if importlib.util.find_spec("pyarrow") is None:
        meta["data_format"] = "arrow"
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(DatasetError, match=r"needs a package missing here \(pyarrow"):
            read_minari(minari_copy)
    meta_path.write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"metadata\.json must hold a JSON object, found list"):
        read_minari(minari_copy)


# ------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("kind, data, found", [
    ("bytes", np.full((132, 3), b"0.5"), r"holds bytes \(dtype \|S3\)"),
    ("strings", np.array([["a", "b", "c"]] * 132, dtype=h5py.string_dtype()),
     r"holds Python objects \(e\.g\. variable-length strings\) \(dtype object\)"),
    ("complex", np.ones((132, 3), np.complex64), r"holds complex numbers \(dtype complex64\)"),
])
def test_observations_that_are_not_numbers_name_file_and_key(hdf5_copy, kind, data, found):
    _replace_key(hdf5_copy, "observations", data)
    with pytest.raises(DatasetError, match=rf"{hdf5_copy}: key 'observations' {found}, expected "
                                           r"a real numeric or bool array"):
        load_dataset(hdf5_copy)


def test_float_terminals_and_integer_observations_still_load(box_dataset, hdf5_copy):
    """Old D4RL files store terminals as float32; int observations are numbers too."""
    _replace_key(hdf5_copy, "terminals", box_dataset.terminals.astype(np.float32))
    _replace_key(hdf5_copy, "observations", np.zeros((132, 3), np.int16))
    ds = read_hdf5(hdf5_copy)
    assert ds.observations.dtype == np.float32 and not ds.observations.any()
    np.testing.assert_array_equal(ds.terminals, box_dataset.terminals)


def test_minari_observations_as_bytes(minari_copy):
    main = minari_copy / "data" / "main_data.hdf5"
    _replace_key(main, "episode_0/observations", np.full((13, 3), b"x"))
    with pytest.raises(DatasetError, match=rf"\({main}\): key 'episode_0/observations' holds "
                                           r"bytes \(dtype \|S1\)"):
        read_minari(minari_copy)


def test_infos_that_are_not_numbers_are_skipped_with_a_warning(box_dataset, hdf5_copy, caplog):
    with h5py.File(hdf5_copy, "a") as f:
        f["infos/note"] = np.array(["x"] * 132, dtype=h5py.string_dtype())
        f["infos/qpos"] = np.ones((132, 2), np.float64)
    with caplog.at_level(logging.WARNING):
        ds = read_hdf5(hdf5_copy)
    assert sorted(ds.infos) == ["qpos"] and ds.checksum() == box_dataset.checksum()
    assert "key 'infos/note' holds Python objects" in caplog.text


# ------------------------------------------------------------------ declared shapes
def _huge(path, rows, width, dtype):
    """A D4RL-style file whose observations are declared (rows, width) but never written:
    chunked, so the file stays small on disk."""
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", shape=(rows, width), dtype=dtype, chunks=True)
        f["actions"] = np.zeros((rows, 1), np.float32)
        f["rewards"] = np.zeros(rows, np.float32)
        f["terminals"] = np.zeros(rows, bool)
        f["timeouts"] = np.zeros(rows, bool)
    assert os.path.getsize(path) < 2**20
    return path


def test_the_issues_31_gib_observations_are_refused_before_reading(tmp_path, monkeypatch):
    path = _huge(tmp_path / "huge.hdf5", 1000, 2**25, np.int8)
    monkeypatch.setattr(validate, "available_memory", lambda: 8 * 2**30)
    with pytest.raises(DatasetError, match=(
            rf"{path}: reading it needs at least 156\.3 GiB of memory \(key 'observations' "
            r"declares shape \(1000, 33554432\) int8, 31\.2 GiB\), but 8\.0 GiB is available; "
            "nothing was read")):
        load_dataset(path)


def test_a_petabyte_declaration_fails_on_any_machine(tmp_path):
    path = _huge(tmp_path / "peta.hdf5", 2**10, 2**40, np.int8)
    with pytest.raises(DatasetError, match=r"peta\.hdf5: reading it needs at least 5120\.0 TiB "
                                           r"of memory .* is available"):
        read_hdf5(path)


def test_minari_episode_declared_too_large(minari_copy, monkeypatch):
    main = minari_copy / "data" / "main_data.hdf5"
    _replace_key(main, "episode_0/observations", shape=(13, 2**38), dtype=np.float32,
                 chunks=True)
    with pytest.raises(DatasetError, match=r"key 'episode_0/observations' declares shape "
                                           r"\(13, 274877906944\) float32, 13\.0 TiB\), "
                                           "but .* is available"):
        read_minari(minari_copy)


def test_memory_estimate_counts_the_float32_copy(tmp_path, monkeypatch):
    """int8 observations become float32: 4 bytes more per value must also fit."""
    path = _huge(tmp_path / "mid.hdf5", 1000, 2**10, np.int8)
    arrays = 1000 * (2**10 + 4 + 4 + 2)  # int8 obs, float32 actions and rewards, two bools
    monkeypatch.setattr(validate, "available_memory", lambda: arrays + 1000 * 2**10 * 4 - 1)
    with pytest.raises(DatasetError, match="nothing was read"):
        read_hdf5(path)
    monkeypatch.setattr(validate, "available_memory", lambda: arrays + 1000 * 2**10 * 4)
    assert read_hdf5(path, env_id="Pendulum-v1").num_transitions == 1000


def test_available_memory_is_positive_here():
    avail = validate.available_memory()
    assert avail is None or 0 < avail < 2**50
