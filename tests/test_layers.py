"""Folders are layers: the import-linter contracts of pyproject.toml hold (cli > study >
datagen > evaluation > training > methods > nn | envs > data; datagen never imports networks,
methods, training or evaluation; no import circle inside any package, benchmarks included;
offline_dt and datagen never import benchmarks)."""

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
    assert "BROKEN" not in out.stdout and out.stdout.count("KEPT") == 4


def _lint_a_copy(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    """lint-imports on a copy of the tree whose ``module`` (a path under the root) ends with
    ``line``."""
    for pkg in ("offline_dt", "datagen", "benchmarks"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("results"))
    target = tmp_path / module
    target.write_text((target.read_text() if target.exists() else "") + line + "  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", lint, "--config", "pyproject.toml", "--no-cache"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})


def test_a_broken_layer_is_reported(tmp_path):
    """The contract check can fail: a data module importing the training layer breaks it."""
    out = _lint_a_copy(tmp_path, "offline_dt/data/bad.py", "from offline_dt.training import loop")
    assert out.returncode != 0
    assert "offline_dt.data.bad -> offline_dt.training.loop" in out.stdout, out.stdout[-3000:]


def test_an_import_circle_between_benchmarks_is_reported(tmp_path):
    """The acyclic contract covers benchmarks/: two scripts importing each other break it."""
    out = _lint_a_copy(tmp_path, "benchmarks/machine.py", "from benchmarks import speed")
    assert out.returncode != 0
    assert "No cycles are allowed in benchmarks" in out.stdout, out.stdout[-3000:]


def test_the_library_importing_a_benchmark_is_reported(tmp_path):
    """offline_dt never imports benchmarks (they measure it; they are not shipped)."""
    out = _lint_a_copy(tmp_path, "offline_dt/study/bad.py", "from benchmarks import machine")
    assert out.returncode != 0
    assert "offline_dt.study.bad -> benchmarks.machine" in out.stdout, out.stdout[-3000:]
