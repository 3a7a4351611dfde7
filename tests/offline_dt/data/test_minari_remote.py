"""Minari's remote datasets (offline_dt.data.minari_remote): ``--download true`` fetches a
missing id into the Minari root; without network it fails fast with one message naming the id
and the remote (the host is an ``.invalid`` name, RFC 2606, so no machine reaches it)."""

from __future__ import annotations

import time

import pytest

from offline_dt.cli import main
from offline_dt.data import load_dataset, write_minari
from offline_dt.data.minari_remote import DatasetDownloadError, download_minari, remote_host


@pytest.fixture
def unreachable(monkeypatch):
    monkeypatch.setenv("MINARI_REMOTE", "hf://farama-minari")
    monkeypatch.setenv("HF_ENDPOINT", "https://minari-remote.invalid")


def test_without_network_the_download_fails_fast_naming_id_and_remote(tmp_path, unreachable):
    t = time.perf_counter()
    with pytest.raises(DatasetDownloadError) as e:
        load_dataset("mujoco/hopper/medium-v0", tmp_path / "minari", download=True)
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert "dataset mujoco/hopper/medium-v0: not under" in msg
    assert "Minari remote hf://farama-minari (MINARI_REMOTE) failed" in msg
    assert "minari-remote.invalid:443 is unreachable" in msg


def test_without_download_a_missing_id_says_how_to_fetch_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --download true"):
        load_dataset("mujoco/hopper/medium-v0", tmp_path / "minari")


def test_train_download_true_without_network_exits_2_with_one_line(tmp_path, unreachable,
                                                                   capsys):
    t = time.perf_counter()
    assert main(["train", "--dataset", "mujoco/hopper/medium-v0", "--download", "true",
                 "--minari-root", str(tmp_path / "minari"), "--run-dir",
                 str(tmp_path / "run")]) == 2
    assert time.perf_counter() - t < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "downloading it from the Minari remote" in err[0]


def test_a_dataset_on_disk_is_not_fetched(tmp_path, box_dataset, unreachable):
    write_minari(box_dataset, "tiny/box-v0", root=tmp_path)
    assert download_minari("tiny/box-v0", tmp_path) == tmp_path / "tiny/box-v0" / "data"


def test_a_fetched_dataset_is_read_from_the_root(tmp_path, box_dataset, monkeypatch):
    """The remote mocked: the host answers, minari.download_dataset writes the dataset where
    $MINARI_DATASETS_PATH points (as Minari does), and it is read from our root."""
    import socket

    import minari

    class Conn:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Conn())
    fetched = []

    def fake_download(dataset_id, force_download=False):
        import os
        from pathlib import Path

        fetched.append((dataset_id, os.environ["MINARI_DATASETS_PATH"]))
        write_minari(box_dataset, dataset_id, root=Path(os.environ["MINARI_DATASETS_PATH"]))

    monkeypatch.setattr(minari, "download_dataset", fake_download)
    ds = load_dataset("tiny/box-v0", tmp_path / "root", download=True)
    assert fetched == [("tiny/box-v0", str((tmp_path / "root").resolve()))]
    assert ds.num_transitions == box_dataset.num_transitions


def test_remote_hosts():
    assert remote_host("gcp://minari-datasets") == "storage.googleapis.com"
    with pytest.raises(ValueError, match="expected hf://<org> or gcp://<bucket>"):
        remote_host("s3://x")


def test_a_published_datasets_eval_env_spec_id_is_kept(tmp_path, box_dataset):
    import json

    from offline_dt.data import read_minari

    write_minari(box_dataset, "tiny/box-v0", root=tmp_path)
    meta_path = tmp_path / "tiny/box-v0" / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    import gymnasium as gym

    meta["eval_env_spec"] = gym.spec("Pendulum-v1").to_json()  # as Minari writes it
    meta_path.write_text(json.dumps(meta))
    assert read_minari("tiny/box-v0", tmp_path).metadata["eval_env_id"] == "Pendulum-v1"
