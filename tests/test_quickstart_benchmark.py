"""benchmarks/quickstart.py, the newcomer timing of README's main-job command: the line it reads
is README's, the pip installs it skips are checked, and end to end on a tiny git checkout it
clones, runs the line in the clone (its code, not this one's), times it and writes the page."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from benchmarks import quickstart as qs
from benchmarks.sync_readme import tables

ROOT = Path(__file__).resolve().parent.parent


def test_it_reads_the_readmes_main_job_line():
    line = qs.quickstart_line((ROOT / "README.md").read_text())
    cmds = qs.split_commands(line)
    assert cmds[-1][:2] == ["offline-dt", "reproduce"] and "quick" in cmds[-1]
    assert all(qs.is_pip_install(c) for c in cmds[:-1])
    with pytest.raises(ValueError, match="Quickstart"):
        qs.quickstart_line("# x\n\n## Install\n")
    with pytest.raises(ValueError, match="only '&&'"):
        qs.split_commands("pip install x; offline-dt reproduce")


def test_the_skipped_installs_requirements_are_checked():
    reqs = qs.pip_requirements(["pip", "install", "-e", ".[reference]"], ROOT)
    names = {r.name for r in reqs}
    assert {"torch", "gymnasium", "scikit-learn"} <= names  # dependencies and the extra's
    assert qs.pip_requirements(["pip", "install", "--no-deps", "d3rlpy==2.8.1"], ROOT) == [
        Requirement("d3rlpy==2.8.1")]
    assert qs.unmet([Requirement("numpy")]) == []
    assert qs.unmet([Requirement("numpy<1")])[0].startswith("numpy<1 (found ")
    assert qs.unmet([Requirement("no-such-package-xyz")]) == [
        "no-such-package-xyz (not installed)"]


def _checkout(path: Path, line: str, deps: list[str]) -> Path:
    """A git checkout with a README Quickstart ``line``, a pyproject and package ``tinypkg``."""
    path.mkdir()
    (path / "README.md").write_text(f"# tiny\n\n## Quickstart\n\n```bash\n{line}\n```\n\n"
                                    "## More\n")
    (path / "pyproject.toml").write_text(
        f'[project]\nname = "tiny"\nversion = "0"\ndependencies = {deps!r}\n'
        '[project.optional-dependencies]\nextra = ["numpy>=1"]\n')
    (path / "tinypkg").mkdir()
    (path / "tinypkg" / "__init__.py").write_text("")
    for cmd in (["init", "-q"], ["add", "."],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        subprocess.run(["git", *cmd], cwd=path, check=True)
    return path


def test_end_to_end_on_a_tiny_checkout(tmp_path):
    py = shlex.quote(sys.executable)
    write = "import pathlib, tinypkg; pathlib.Path('ran.txt').write_text(tinypkg.__file__)"
    src = _checkout(tmp_path / "src", f'pip install -e ".[extra]" && {py} -c "{write}"',
                    ["numpy"])
    out = tmp_path / "page.md"
    assert qs.main(["--source", str(src), "--keep", str(tmp_path / "clone"), "--out",
                    str(out)]) == 0
    ran = (tmp_path / "clone" / "ran.txt").read_text()
    assert Path(ran).is_relative_to(tmp_path / "clone")  # the clone's package ran
    assert not (src / "ran.txt").exists()
    page = out.read_text()
    assert "`pip install -e '.[extra]'`" in page  # skipped, and said so
    assert tables(page)[0].count("\n") == 3  # header, rule, the one timing row
    assert "| yes |" in page


def test_an_unmet_requirement_or_a_timeout_times_nothing(tmp_path):
    src = _checkout(tmp_path / "a", "pip install -e . && true", ["no-such-package-xyz"])
    with pytest.raises(RuntimeError, match="no-such-package-xyz"):
        qs.run_quickstart(tmp_path / "a-clone", source=src)
    slow = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(60)'"
    src = _checkout(tmp_path / "b", slow, [])
    run = qs.run_quickstart(tmp_path / "b-clone", timeout=1.0, source=src)
    assert run.returncode == 124 and run.seconds < 30
    out = tmp_path / "page.md"
    out.write_text("committed page")
    assert qs.main(["--source", str(src), "--timeout", "1", "--out", str(out)]) == 1
    assert out.read_text() == "committed page"  # a failed run leaves the page alone


def test_a_reproduce_commands_timings_are_found_where_it_writes_them(tmp_path):
    """timings_of reads <root>/reports/<env>/<preset>/timings.json as the CLI resolves them."""
    import json

    cmd = ["offline-dt", "reproduce", "--env", "Pendulum-v1", "--preset", "quick"]
    assert qs.timings_of(cmd, tmp_path) is None  # not written (a failed run)
    report = tmp_path / "data" / "reports" / "Pendulum-v1" / "quick"
    report.mkdir(parents=True)
    (report / "timings.json").write_text(json.dumps({
        "stages": {"generate": 80.0, "train": 300.5}, "total": 400.25,
        "generate_stages": {"train_agent": 60.0, "total": 80.0}}))
    found = qs.timings_of(cmd, tmp_path)
    assert found["total"] == 400.25
    assert qs.timings_of(["python", "-c", "1"], tmp_path) is None
    table = qs.stage_table(found)
    assert "| train | 300.5 |" in table and "| generate: train_agent | 60.0 |" in table
    assert "| total (wall) | 400.2 |" in table and "generate: total" not in table
