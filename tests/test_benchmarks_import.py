"""benchmarks/ is a package of scripts over the installed library: each module imports (so a
module moved in offline_dt breaks a test here, not a later measurement), none edits sys.path,
and the documented spelling ``python -m benchmarks.<name>`` starts one from the repo root."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
SCRIPTS = [m for m in MODULES if m not in ("machine", "workload", "multitask_page")]
# (those serve the scripts and have no main)


def test_the_benchmark_modules_are_found():
    assert {"speed", "exact_cache", "machine", "workload", "pendulum"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_each_benchmark_module_imports_without_editing_sys_path(name):
    source = (ROOT / "benchmarks" / f"{name}.py").read_text()
    assert not re.search(r"sys\.path\.(insert|append)", source), name
    module = importlib.import_module(f"benchmarks.{name}")
    if name in SCRIPTS:
        assert callable(module.main), f"benchmarks/{name}.py has no main()"


def test_a_script_importing_its_siblings_starts_as_a_module_from_the_repo_root():
    """speed imports exact_cache, machine and workload as ``benchmarks.<name>``: run with
    ``-m`` from the repo root, the working directory makes the package importable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--help"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--sections" in out.stdout
