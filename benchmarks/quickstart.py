"""A newcomer's Quickstart, timed: clone this checkout, run README's main-job command there.

    python -m benchmarks.quickstart                # writes benchmarks/results/quickstart.md
    python -m benchmarks.quickstart --keep /tmp/qs # keep the clone (its data/ holds the runs)

The command is read from the clone's README.md (the Quickstart's first line), never typed
here, so the two cannot drift. The script clones the checkout's committed HEAD (``git clone``)
into a fresh temporary directory and runs that line's commands in the clone as a new user
would, with one exception: the ``pip install`` commands are not run (installing would re-point
this environment's package at a temporary directory that is removed afterwards).
Instead the script checks that every requirement those commands install (the clone's
``pyproject.toml`` dependencies and the named extras, and each pinned package such as
``d3rlpy==2.8.1``) is installed at a satisfying version, refuses to time anything when one is
not, and runs the remaining commands with ``PYTHONPATH`` set to the clone, so the clone's code
runs (checked before timing). The page says which commands were skipped.

The page (``benchmarks/results/quickstart.md``) gives the machine (CPU, cores, load average
before and after), the versions, the commit, the README line, the commands run, their wall
time against the 10-minute goal, and the seconds per stage from the run's ``timings.json``
when the command was ``offline-dt reproduce``. Its first table (one row: the command and its
wall time) is what docs copy via ``benchmarks/sync_readme.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

from benchmarks.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: The goal of issue 35: the main job on 2 cores in at most this many seconds.
GOAL_SECONDS = 600.0
#: A 1-minute load average from which the page says the machine was busy.
BUSY_LOAD = 0.5


def quickstart_line(readme: str) -> str:
    """The first non-empty line of the first ``bash`` block under README's ``## Quickstart``.

    Raises:
        ValueError: no Quickstart section, or no bash block in it.
    """
    m = re.search(r"^## Quickstart\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    if m is None:
        raise ValueError("README.md has no '## Quickstart' section")
    block = re.search(r"```bash\n(.*?)```", m.group(1), re.S)
    if block is None:
        raise ValueError("README.md's Quickstart has no ```bash block")
    lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]
    return lines[0]


def split_commands(line: str) -> list[list[str]]:
    """The ``&&``-joined commands of ``line``, each as shell words.

    Raises:
        ValueError: other shell operators (``;``, ``|``, ``||``, redirections), which this
            runner does not emulate.
    """
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    if any(w and set(w) <= set("();<>|&") and w != "&&" for w in words):
        raise ValueError(f"only '&&' joins are supported: {line!r}")
    out: list[list[str]] = [[]]
    for w in words:
        if w == "&&":
            out.append([])
        else:
            out[-1].append(w)
    return [c for c in out if c]


def is_pip_install(cmd: list[str]) -> bool:
    """``pip install ...`` or ``python -m pip install ...``."""
    if cmd[:2] == ["pip", "install"]:
        return True
    return len(cmd) >= 4 and cmd[1:4] == ["-m", "pip", "install"]


def _project_requirements(clone: Path, spec: str, seen: set[str]) -> list[Requirement]:
    """The requirements ``pip install -e SPEC`` installs: the clone's ``[project]``
    dependencies and those of the extras in ``SPEC`` (``.[a,b]``), self-references expanded."""
    path, _, extras = spec.partition("[")
    project = tomllib.loads((clone / path / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in (e.strip() for e in extras.rstrip("]").split(",") if e.strip()):
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, optional.get(extra, [])):
            if r.name == project["name"]:
                inner = f"{path}[{','.join(sorted(r.extras))}]"
                reqs += [q for q in _project_requirements(clone, inner, seen)
                         if q.name != project["name"]]
            else:
                reqs.append(r)
    return reqs


def pip_requirements(cmd: list[str], clone: Path) -> list[Requirement]:
    """What a ``pip install`` command installs (``-e PATH[extras]``: the clone's project;
    other arguments: requirement specifiers; options such as ``--no-deps`` ignored)."""
    args = cmd[cmd.index("install") + 1:]
    reqs: list[Requirement] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-e", "--editable"):
            reqs += _project_requirements(clone, args[i + 1], set())
            i += 2
            continue
        if not a.startswith("-"):
            reqs.append(Requirement(a))
        i += 1
    return reqs


def unmet(reqs: list[Requirement]) -> list[str]:
    """The requirements not installed at a satisfying version (marker-excluded ones skipped),
    each as ``"spec (found X)"``."""
    out = []
    for r in reqs:
        if r.marker is not None and not r.marker.evaluate():
            continue
        try:
            found = version(r.name)
        except PackageNotFoundError:
            out.append(f"{r} (not installed)")
            continue
        if r.specifier and not r.specifier.contains(found, prereleases=True):
            out.append(f"{r} (found {found})")
    return out


@dataclass
class Run:
    """What one timing did: the clone, the commands and their wall seconds."""

    line: str
    commit: str
    dirty: bool
    clone: Path
    skipped: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    seconds: float = 0.0
    returncode: int = 0
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()
    timings: dict | None = None


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def clone_checkout(dest: Path, source: Path = ROOT) -> tuple[str, bool]:
    """``git clone`` ``source``'s committed HEAD into ``dest``; returns (commit, whether
    ``source`` had uncommitted changes, which the clone does not have)."""
    commit = _git("rev-parse", "HEAD", cwd=source)
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=source))
    subprocess.run(["git", "clone", "--quiet", str(source), str(dest)], check=True)
    return commit, dirty


def clone_env(clone: Path) -> dict[str, str]:
    """This environment with ``PYTHONPATH`` the clone alone (its packages win over an
    installed copy)."""
    return {**os.environ, "PYTHONPATH": str(clone)}


def clone_packages(clone: Path) -> tuple[str, ...]:
    """The clone's top-level packages (directories holding an ``__init__.py``)."""
    return tuple(sorted(p.parent.name for p in clone.glob("*/__init__.py")))


def check_clone_imports(clone: Path, packages: tuple[str, ...]) -> None:
    """Raise RuntimeError unless each of ``packages`` imports from the clone."""
    code = "; ".join(f"import {m}; print({m}.__file__)" for m in packages)
    out = subprocess.run([sys.executable, "-c", code], cwd=clone, env=clone_env(clone),
                         capture_output=True, text=True, check=True).stdout.split()
    stray = [p for p in out if not Path(p).resolve().is_relative_to(clone.resolve())]
    if stray:
        raise RuntimeError(f"the clone's packages do not win: {stray} import from outside "
                           f"{clone}")


def timings_of(cmd: list[str], clone: Path) -> dict | None:
    """The ``timings.json`` an ``offline-dt reproduce`` command wrote (its root, env and
    preset as the CLI parses them), or None for another command or a missing file."""
    if cmd[:2] != ["offline-dt", "reproduce"]:
        return None
    from offline_dt.cli import parse

    cfg = parse(cmd[1:]).config
    path = clone / cfg.root / "reports" / cfg.env_id / cfg.preset / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_quickstart(clone: Path, timeout: float | None = None, source: Path = ROOT) -> Run:
    """Clone ``source`` into ``clone`` and run the clone's README Quickstart first line there
    (pip installs checked, not run; every top-level package of the clone checked to import from
    it), its output to ``clone/quickstart.log``.

    Raises:
        ValueError: see :func:`quickstart_line`, :func:`split_commands`.
        RuntimeError: a requirement of a skipped install is unmet, or the clone's packages
            do not win.
    """
    commit, dirty = clone_checkout(clone, source)
    line = quickstart_line((clone / "README.md").read_text())
    run = Run(line=line, commit=commit, dirty=dirty, clone=clone)
    todo = []
    for cmd in split_commands(line):
        if is_pip_install(cmd):
            missing = unmet(pip_requirements(cmd, clone))
            if missing:
                raise RuntimeError(f"`{shlex.join(cmd)}` was not run, and this environment "
                                   f"lacks {missing}: install them first")
            run.skipped.append(shlex.join(cmd))
        else:
            todo.append(cmd)
    check_clone_imports(clone, clone_packages(clone))
    run.load_before = os.getloadavg()
    t0 = time.perf_counter()
    with open(clone / "quickstart.log", "w") as log:
        for cmd in todo:
            run.ran.append(shlex.join(cmd))
            left = None if timeout is None else max(1.0, timeout - (time.perf_counter() - t0))
            run.returncode = _run_logged(cmd, clone, log, left)
            if run.returncode:
                break
    run.seconds = time.perf_counter() - t0
    run.load_after = os.getloadavg()
    run.timings = timings_of(todo[-1], clone) if todo and not run.returncode else None
    return run


def _run_logged(cmd: list[str], clone: Path, log, timeout: float | None) -> int:
    """Run ``cmd`` in ``clone`` (its own process group, output to ``log``); on ``timeout`` kill
    the whole group (the worker processes too) and return 124."""
    proc = subprocess.Popen(cmd, cwd=clone, env=clone_env(clone), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        return 124


def package_versions() -> str:
    """``name version`` of the packages the main job runs on."""
    names = ("torch", "numpy", "gymnasium", "stable-baselines3", "minari", "pandas", "d3rlpy")
    found = []
    for n in names:
        try:
            found.append(f"{n} {version(n)}")
        except PackageNotFoundError:
            found.append(f"{n} not installed")
    return f"python {platform.python_version()}, " + ", ".join(found)


def stage_table(timings: dict) -> str:
    """The seconds per stage of ``timings.json`` (stages summed over workers; generate's own
    stages; the wall total)."""
    rows = [f"| {k} | {v:.1f} |" for k, v in timings.get("stages", {}).items()]
    rows += [f"| generate: {k} | {v:.1f} |" for k, v in timings.get("generate_stages", {}).items()
             if k != "total"]
    rows.append(f"| total (wall) | {timings['total']:.1f} |")
    return "| stage | seconds |\n|---|---:|\n" + "\n".join(rows) + "\n"


def markdown(run: Run, command: str) -> str:
    """The results page of one timing."""
    cores = os.cpu_count()
    verdict = "yes" if run.seconds <= GOAL_SECONDS else "no"
    wall = f"{run.seconds / 60:.1f} min ({run.seconds:.0f} s)"
    load = "load average (1, 5, 15 min) before {} and after {}".format(
        *(", ".join(f"{x:.2f}" for x in la) for la in (run.load_before, run.load_after)))
    busy = "" if run.load_before[0] < BUSY_LOAD else (
        f"\nThe machine was busy when the timing began (1-minute load average "
        f"{run.load_before[0]:.2f}): other work shared its cores, so this wall time overstates "
        f"a quiet machine's.\n")
    skipped = "\n".join(f"- `{c}`" for c in run.skipped) or "- none"
    ran = "\n".join(f"- `{c}`" for c in run.ran)
    stages = "" if run.timings is None else f"""
## Seconds per stage (`timings.json` of the run)

With several workers, stage seconds are summed over the worker processes (so they can exceed
the wall time); `total (wall)` is the reproduce call's own wall time.

{stage_table(run.timings)}"""
    dirty = (" (the checkout had uncommitted changes; the clone has only the commit)"
             if run.dirty else "")
    return f"""# The Quickstart's main job on a fresh clone

Command: `{command}`

Machine: {cpu_model()}, {cores} cores, {platform.platform()}; {load}.
Versions: {package_versions()}.

A fresh `git clone` of commit `{run.commit[:12]}`{dirty} ran README's Quickstart first line
(read from README.md):

    {run.line}

| main-job command | cores | wall time | at most 10 min |
|:--|--:|--:|:--|
| `{run.ran[-1] if run.ran else ''}` | {cores} | {wall} | {verdict} |
{busy}
Not run (this environment already holds every requirement they install, checked at the
versions they ask for; the commands run with `PYTHONPATH` set to the clone, whose packages were
checked to be the ones imported):
{skipped}

Run in the clone, in this order, timed together ({run.seconds:.1f} s):
{ran}
{stages}"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=ROOT,
                   help="the git checkout cloned (default: this one); its README's line runs")
    p.add_argument("--keep", type=Path, default=None,
                   help="clone here (must not exist) and keep it; default: a temporary "
                        "directory, removed afterwards")
    p.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    p.add_argument("--out", type=Path, default=RESULTS / "quickstart.md")
    args = p.parse_args(argv)
    base = None if args.keep else Path(tempfile.mkdtemp(prefix="offline-dt-quickstart-"))
    clone = args.keep or base / "offline-dt"
    try:
        run = run_quickstart(clone, args.timeout, args.source)
        if run.returncode:  # a failed run leaves the committed page alone
            print((clone / "quickstart.log").read_text()[-4000:], file=sys.stderr)
            print(f"quickstart: `{run.ran[-1]}` exited {run.returncode} after "
                  f"{run.seconds:.1f} s; {args.out} not written", file=sys.stderr)
            return 1
        command = "python " + shlex.join(["-m", "benchmarks.quickstart",
                                          *(argv if argv is not None else sys.argv[1:])])
        md = markdown(run, command)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".md.tmp")
        tmp.write_text(md)
        tmp.replace(args.out)
        print(md)
        return 0
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)

if __name__ == "__main__":
    raise SystemExit(main())
