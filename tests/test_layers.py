"""Folders are layers: the import-linter contracts of pyproject.toml hold (cli > study >
datagen > evaluation > training > methods > nn | envs > data; datagen never imports networks,
methods, training or evaluation; no import circle inside any package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_layer_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' installs import-linter")
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout and out.stdout.count("KEPT") == 3


def test_a_broken_layer_is_reported(tmp_path):
    """The contract check can fail: a data module importing the training layer breaks it."""
    pkg = tmp_path / "offline_dt"
    shutil.copytree(ROOT / "offline_dt", pkg)
    shutil.copytree(ROOT / "datagen", tmp_path / "datagen")
    (pkg / "data" / "bad.py").write_text("from offline_dt.training import loop  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                          " lint_imports_command()", "--config", "pyproject.toml", "--no-cache"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0
    assert "offline_dt.data.bad -> offline_dt.training.loop" in out.stdout, out.stdout[-3000:]
