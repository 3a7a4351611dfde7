"""``reproduce --root`` on a place that cannot be written fails up front, before any dataset is
generated, with one message naming the path and what is wrong
(``offline_dt.data.atomic.writable_directory``, called by ``offline_dt.study.pipeline.plan``).

We run as root, where ``chmod`` stops nothing: the cases are a regular file in the way (real),
a read-only tmpfs mount (real, where this process may mount) and the probe write failing with
EROFS / EACCES (monkeypatched, everywhere)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from offline_dt.cli import main
from offline_dt.data.atomic import writable_directory


def test_a_writable_directory_is_created_and_left_clean(tmp_path):
    root = tmp_path / "a" / "b"
    assert writable_directory(root) == root
    assert root.is_dir() and list(root.iterdir()) == []  # the probe file is gone
    assert writable_directory(str(root)) == root  # an existing one is fine too


@pytest.mark.parametrize("under", ["", "x", "x/y"])
def test_a_file_where_a_directory_is_expected(tmp_path, under):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    root = blocker / under if under else blocker
    with pytest.raises(ValueError) as e:
        writable_directory(root, "reproduce root")
    assert str(e.value) == (f"reproduce root {root}: cannot be a directory: {blocker} is a "
                            "file")
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize(("code", "reason"), [(errno.EROFS, "read-only file system"),
                                              (errno.EACCES, "permission denied"),
                                              (errno.ENOSPC, os.strerror(errno.ENOSPC))])
def test_a_probe_write_that_fails(tmp_path, monkeypatch, code, reason):
    def refuse(*args, dir=None, **kwargs):
        raise OSError(code, os.strerror(code), str(Path(dir) / ".write-probe-x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError) as e:
        writable_directory(tmp_path / "root", "reproduce root")
    assert str(e.value) == (f"reproduce root {tmp_path / 'root'}: not writable: {reason} "
                            f"[{errno.errorcode[code]}]")
    assert isinstance(e.value.__cause__, OSError)


def test_a_parent_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ValueError, match=rf"not writable: permission denied \(at "
                                         rf"{tmp_path / 'locked'}\) \[EACCES\]"):
        writable_directory(tmp_path / "locked" / "deeper" / "root")


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only tmpfs at ``tmp_path / "ro"`` (skipped where this process may not mount)."""
    where = tmp_path / "ro"
    where.mkdir()
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None or subprocess.run(
            [mount, "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)],
            capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a read-only tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_read_only_file_system(read_only_mount):
    with pytest.raises(ValueError, match=rf"^reproduce root {read_only_mount}: not writable: "
                                         r"read-only file system \[EROFS\]$"):
        writable_directory(read_only_mount, "reproduce root")
    with pytest.raises(ValueError, match=r"read-only file system"):
        writable_directory(read_only_mount / "runs", "reproduce root")


def test_reproduce_refuses_the_root_before_generating(tmp_path, monkeypatch, capsys):
    def no_generation(cfg):
        raise AssertionError("reproduce generated before checking --root")

    monkeypatch.setattr("datagen.generate.generate", no_generation)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    root = blocker / "data"
    assert main(["reproduce", "--preset", "smoke", "--root", str(root), "--methods", "dt",
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"offline-dt reproduce: error: reproduce root {root}: cannot be a "
                   f"directory: {blocker} is a file")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["reproduce", "--preset", "smoke", "--root", str(tmp_path / "ro"),
                 "--methods", "dt", "--workers", "1"]) == 2
    assert "not writable: read-only file system [EROFS]" in capsys.readouterr().err
