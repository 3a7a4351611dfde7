"""Issue 30: no writer deletes what it did not write, and a full disk ends in one message with
the previous output intact and no half file left."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest

from offline_dt.cli import main
from offline_dt.data import read_hdf5, read_minari, write_hdf5, write_minari
from offline_dt.data.atomic import DiskFullError, atomic_path, is_disk_full
from offline_dt.training.configs import save_json


def _precious_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "precious.txt").write_text("months of results")
    return path


def _leftovers(directory: Path) -> list[str]:
    """Hidden temporaries of atomic writes left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


# ------------------------------------------------------------------ kinds: files
def test_a_file_is_never_written_over_a_directory(tmp_path):
    target = _precious_dir(tmp_path / "results dir")
    with pytest.raises(FileExistsError, match=r"results dir is a directory \(holding 1 "
                                              r"entry\); the output to be written is a file "
                                              "and is never written over a directory"):
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_text("{}")
    assert (target / "precious.txt").read_text() == "months of results"
    assert _leftovers(tmp_path) == []


def test_evaluate_out_naming_a_directory_is_refused_and_the_directory_kept(tmp_path, capsys):
    """The issue's data loss: ``evaluate --out "T/results dir"`` deleted the directory. It is
    refused before the checkpoint is even opened."""
    target = _precious_dir(tmp_path / "results dir")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"offline-dt evaluate: error: {target} is a directory" in err
    assert "pass the path of a file" in err and "left untouched" in err
    assert (target / "precious.txt").read_text() == "months of results"


def test_evaluate_out_with_a_trailing_slash_is_refused_before_any_write(tmp_path, capsys):
    """``--out results/`` where ``results`` does not exist yet: refused (a file named
    ``results`` would surprise), nothing written, one line naming a file to pass instead."""
    out = f"{tmp_path}/results/"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--out {out}: names a directory" in err and f"--out {out}eval.json" in err
    assert not (tmp_path / "results").exists()


def test_a_path_ending_in_a_slash_is_refused_for_a_file(tmp_path):
    with pytest.raises(ValueError, match=r"results/ ends with '/', a directory.*path of a file"):
        with atomic_path(f"{tmp_path}/results/", overwrite=True):
            pass
    assert not (tmp_path / "results").exists()


def test_json_replaces_only_json(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 not json at all")
    with pytest.raises(FileExistsError, match=r"checkpoint\.pt is a file that is not a JSON "
                                              "file offline-dt wrote"):
        save_json({"a": 1}, ckpt)
    assert ckpt.read_bytes() == b"PK\x03\x04 not json at all"
    old = tmp_path / "eval.json"
    old.write_text('{"old": true}')
    save_json({"new": True}, old)
    assert json.loads(old.read_text()) == {"new": True}
    empty = tmp_path / "empty.json"
    empty.touch()  # nothing to lose
    save_json([1], empty)
    assert json.loads(empty.read_text()) == [1]
    assert _leftovers(tmp_path) == []


def test_hdf5_replaces_only_hdf5(box_dataset, tmp_path):
    notes = tmp_path / "notes.hdf5"
    notes.write_text("my notes, not a dataset")
    with pytest.raises(FileExistsError, match=r"notes\.hdf5 is a file that is not a HDF5 "
                                              "dataset offline-dt wrote"):
        write_hdf5(box_dataset, notes, overwrite=True)
    assert notes.read_text() == "my notes, not a dataset"
    folder = _precious_dir(tmp_path / "folder.hdf5")
    with pytest.raises(FileExistsError, match="folder.hdf5 is a directory"):
        write_hdf5(box_dataset, folder, overwrite=True)
    assert (folder / "precious.txt").exists()
    ours = write_hdf5(box_dataset, tmp_path / "ours.hdf5")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_hdf5(box_dataset, ours)
    write_hdf5(box_dataset, ours, overwrite=True)
    assert read_hdf5(ours).checksum() == box_dataset.checksum()


# ------------------------------------------------------------------ kinds: directories
def test_minari_replaces_only_a_dataset_offline_dt_wrote(box_dataset, discrete_dataset, tmp_path):
    root = tmp_path / "minari"
    ds_dir = write_minari(box_dataset, "tiny/box-v0", root=root)
    (ds_dir / "my-notes.txt").write_text("analysis")  # a user's file inside our dataset
    with pytest.raises(FileExistsError, match=r"box-v0 is a directory offline-dt did not write "
                                              r"as a Minari dataset \(holding 2 entries\)"):
        write_minari(discrete_dataset, "tiny/box-v0", root=root, overwrite=True)
    assert (ds_dir / "my-notes.txt").read_text() == "analysis"
    assert read_minari(ds_dir).checksum() == box_dataset.checksum()

    (ds_dir / "my-notes.txt").unlink()
    meta_path = ds_dir / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["author"] = ["Farama"]  # e.g. a dataset downloaded with `minari download`
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FileExistsError, match="did not write as a Minari dataset"):
        write_minari(discrete_dataset, "tiny/box-v0", root=root, overwrite=True)
    assert json.loads(meta_path.read_text())["author"] == ["Farama"]

    meta["author"] = ["offline-dt"]
    meta_path.write_text(json.dumps(meta))
    write_minari(discrete_dataset, "tiny/box-v0", root=root, overwrite=True)
    assert read_minari(ds_dir).checksum() == discrete_dataset.checksum()
    assert _leftovers(root / "tiny") == []


def test_minari_never_replaces_a_file_and_fills_an_empty_directory(box_dataset, tmp_path):
    root = tmp_path / "minari"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "file-v0").write_text("a file")
    with pytest.raises(FileExistsError, match=r"file-v0 is a file; the Minari dataset to be "
                                              "written is a directory and is never written "
                                              "over a file"):
        write_minari(box_dataset, "tiny/file-v0", root=root, overwrite=True)
    assert (root / "tiny" / "file-v0").read_text() == "a file"
    (root / "tiny" / "empty-v0").mkdir()
    write_minari(box_dataset, "tiny/empty-v0", root=root, overwrite=True)
    assert read_minari(root / "tiny" / "empty-v0").checksum() == box_dataset.checksum()


def test_a_failed_directory_write_keeps_the_previous_one(box_dataset, discrete_dataset,
                                                         tmp_path, monkeypatch):
    import minari

    root = tmp_path / "minari"
    ds_dir = write_minari(box_dataset, "tiny/box-v0", root=root)

    def half_then_fail(**kwargs):
        import os

        partial = Path(os.environ["MINARI_DATASETS_PATH"]) / "tiny" / "box-v0" / "data"
        partial.mkdir(parents=True)
        (partial / "main_data.hdf5").write_bytes(b"half")
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", half_then_fail)
    with pytest.raises(RuntimeError, match="killed halfway"):
        write_minari(discrete_dataset, "tiny/box-v0", root=root, overwrite=True)
    assert read_minari(ds_dir).checksum() == box_dataset.checksum()
    assert sorted(p.name for p in (root / "tiny").iterdir()) == ["box-v0",
                                                                  "namespace_metadata.json"]


# ------------------------------------------------------------------ full disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_writing_hdf5_keeps_the_previous_file(box_dataset, discrete_dataset,
                                                              tmp_path, monkeypatch):
    path = write_hdf5(box_dataset, tmp_path / "ds.hdf5")
    before = path.read_bytes()
    calls = []
    real = h5py.Group.create_dataset

    def second_fails(self, *args, **kwargs):
        calls.append(args[0] if args else kwargs.get("name"))
        if len(calls) == 2:
            _enospc()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", second_fails)
    with pytest.raises(DiskFullError, match=rf"disk full: no space left on the filesystem "
                                            rf"holding {path} while writing the HDF5 dataset "
                                            r".*previous one is unchanged") as e:
        write_hdf5(discrete_dataset, path, overwrite=True)
    assert e.value.errno == errno.ENOSPC and is_disk_full(e.value)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_full_disk_while_writing_json_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    save_json({"old": 1}, path)
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(DiskFullError, match=rf"holding {path} while writing the JSON file"):
        save_json({"new": 2}, path)
    assert json.loads(path.read_bytes()) == {"old": 1} and _leftovers(tmp_path) == []


def test_minari_checks_free_space_before_writing(box_dataset, discrete_dataset, tmp_path,
                                                 monkeypatch):
    """h5py can crash the whole process when the disk fills in the middle of Minari's write,
    so the space is checked first."""
    import offline_dt.data.atomic as atomic

    root = tmp_path / "minari"
    ds_dir = write_minari(box_dataset, "tiny/box-v0", root=root)
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 50_000)
    with pytest.raises(DiskFullError, match=r"disk full: writing the Minari dataset .*box-v0 "
                                            r"needs about .* KiB but its filesystem has 48\.8 "
                                            "KiB free; nothing was written"):
        write_minari(discrete_dataset, "tiny/box-v0", root=root, overwrite=True)
    assert read_minari(ds_dir).checksum() == box_dataset.checksum()
    assert _leftovers(root / "tiny") == []


def test_full_disk_inside_minari_is_translated(box_dataset, tmp_path, monkeypatch):
    import minari

    def partial_then_full(**kwargs):
        raise OSError(28, "Can't synchronously write data (file write failed: errno = 28, "
                          "error message = 'No space left on device')")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", partial_then_full)
    root = tmp_path / "minari"
    with pytest.raises(DiskFullError, match="nothing was written"):
        write_minari(box_dataset, "tiny/box-v0", root=root)
    assert not (root / "tiny" / "box-v0").exists() and _leftovers(root / "tiny") == []


def test_disk_full_is_one_line_and_status_1_on_the_cli(tmp_path, monkeypatch, capsys):
    import offline_dt.evaluation.evaluate as evaluate

    def full(cfg):
        raise DiskFullError(tmp_path / "eval.json", f"disk full: ... {tmp_path / 'eval.json'}")

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", full)
    assert main(["evaluate", "--checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"offline-dt evaluate: error: disk full: ... {tmp_path / 'eval.json'}\n"


def _tmpfs_available() -> bool:
    if not shutil.which("unshare") or not hasattr(sys, "executable"):
        return False
    probe = "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _tmpfs_available(), reason="needs root and unshare -m (a private tmpfs)")
def test_a_real_full_tmpfs(tmp_path):
    """A 192 KiB tmpfs in a private mount namespace. The HDF5 and Minari writes are refused
    up front; with that check off, h5py's own ENOSPC (and the JSON writer's) are translated;
    the previous file stays and no temporary is left."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    tests_dir = Path(__file__).resolve().parents[1]
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(tests_dir)!r})
        from conftest import make_box_dataset
        import offline_dt.data.d4rl as d4rl
        from offline_dt.data import read_hdf5, write_hdf5, write_minari
        from offline_dt.data.atomic import DiskFullError
        from offline_dt.training.configs import save_json
        small, big = make_box_dataset(), make_box_dataset(lengths=(2000,) * 3)
        path = write_hdf5(small, {str(mnt / "ds.hdf5")!r})

        def unchecked(*args):
            d4rl.check_free_space = lambda *a: None
            write_hdf5(big, path, overwrite=True)

        for write in (lambda: write_hdf5(big, path, overwrite=True),
                      lambda: write_minari(big, "tiny/big-v0", root={str(mnt / "m")!r}),
                      unchecked,
                      lambda: save_json(["x" * 1000] * 1000, {str(mnt / "eval.json")!r})):
            try:
                write()
                print("written")
            except DiskFullError as e:
                print("refused:", e)
        assert read_hdf5(path).checksum() == small.checksum()
        print("left:", sorted(os.listdir({str(mnt)!r})))
    """)
    script = f"mount -t tmpfs -o size=192k tmpfs '{mnt}' && exec {sys.executable} -c \"$0\""
    out = subprocess.run(["unshare", "-m", "sh", "-c", script, code], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 5, out.stdout
    for line, what in zip(lines[:2], ("HDF5 dataset", "Minari dataset"), strict=True):
        assert line.startswith(f"refused: disk full: writing the {what} "), line
        assert "nothing was written" in line
    for line, name, what in ((lines[2], "ds.hdf5", "HDF5 dataset"),
                             (lines[3], "eval.json", "JSON file")):
        assert line.startswith(f"refused: disk full: no space left on the filesystem holding "
                               f"{mnt / name} while writing the {what}"), line
    assert "previous one is unchanged" in lines[2] and "nothing was written" in lines[3]
    assert lines[4] == "left: ['ds.hdf5', 'm']"


def test_a_large_json_file_of_ours_is_still_replaceable(tmp_path):
    big = tmp_path / "big.json"
    big.write_text("[" + ",".join(["1"] * (9 * 2**20)) + "]")  # 18 MiB
    save_json({"small": True}, big)
    assert json.loads(big.read_text()) == {"small": True}
