"""README.md: short, and every command in it works.

Every command of README.md's fenced ``bash`` blocks, its commands table and its inline
``python -m benchmarks...`` mentions is checked: short ones (``--help``, ``offline-dt datasets``)
run through the CLI's entry point, long ones are parsed with all their flags by the real
parsers (``offline_dt.cli.parse``; torchrun's own parser for a torchrun line; a benchmark's
argparse parser), so a flag that no longer exists fails here. ``pip`` lines are checked
against ``.ci/run`` and ``pyproject.toml`` instead of run, and the Python API example runs on
a tiny dataset. The helpers here are shared with ``tests/test_docs.py``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import math
import re
import runpy
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
MAX_README_LINES = 250
#: How a benchmark command starts (the file form is caught and refused with the module form).
BENCH = ("python -m benchmarks.", "python benchmarks/")

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")


# --- extracting commands ---------------------------------------------------------------------

def fenced(text: str, lang: str) -> list[str]:
    """The bodies of the ```lang fenced blocks of a Markdown text, in order."""
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == lang]


def without_fences(text: str) -> str:
    """``text`` with every fenced block removed (its lines are code, not prose)."""
    return FENCE.sub("", text)


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a bash block as token lists: continuation lines joined, comments
    dropped, ``a && b`` split into two commands."""
    out: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        cmd: list[str] = []
        for tok in tokens:
            if tok == "&&":
                out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        if cmd:
            out.append(cmd)
    return [c for c in out if c]


def section(text: str, heading: str) -> str:
    """The text under the ``## heading`` line up to the next heading of level 1 or 2."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert m, f"README.md has no '## {heading}' section"
    return m.group(1)


def table_commands(text: str) -> list[list[str]]:
    """The commands in the first column of a Markdown table (a code span each)."""
    return [shlex.split(m.group(1)) for m in re.finditer(r"^\| `([^`]+)` \|", text, re.M)]


def inline_commands(text: str, prefix: str) -> list[list[str]]:
    """The commands of the prose's inline code spans that start with ``prefix`` (a span may
    wrap lines and hold ``a && b``), less those with a ``<placeholder>``."""
    spans = (" ".join(m.group(1).split()) for m in INLINE.finditer(without_fences(text)))
    cmds = [c for s in spans if s.startswith(prefix) for c in shell_commands(s)]
    return [c for c in cmds if not any(re.search(r"<\w+>", tok) for tok in c)]  # <placeholder>


def readme_commands() -> list[list[str]]:
    text = README.read_text()
    cmds = [c for block in fenced(text, "bash") for c in shell_commands(block)]
    cmds += table_commands(section(text, "Commands"))
    cmds += inline_commands(text, BENCH)
    cmds += inline_commands(text, "pip install")
    return cmds


# --- checking one command --------------------------------------------------------------------

def load_module(name: str, path: Path) -> ModuleType:
    """Import a file that is not on the import path (a benchmark script, a conftest)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_cli(argv: list[str]):
    """``offline-dt argv`` through the real parser; the parsed subcommand must be argv[0].
    A flag that does not exist, or a bad value, fails the calling test."""
    from offline_dt.cli import parse

    try:
        inv = parse(argv)
    except SystemExit as e:
        pytest.fail(f"`offline-dt {shlex.join(argv)}` does not parse (exit {e.code})")
    assert inv.command.name == argv[0], (argv, inv.command.name)
    return inv


def run_cli(argv: list[str], cwd: Path, monkeypatch) -> str:
    """Run ``offline-dt argv`` through ``offline_dt.cli.main`` (the console script's entry
    point) in ``cwd``; returns its stdout. ``--help`` exits 0; anything else returns 0."""
    from offline_dt.cli import main

    monkeypatch.chdir(cwd)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    assert rc in (0, None), f"`offline-dt {shlex.join(argv)}` exited {rc}:\n{out.getvalue()}"
    return out.getvalue()


class _Parsed(Exception):
    """Raised by the patched ``ArgumentParser.parse_args`` once the real one succeeded."""


@contextlib.contextmanager
def _restored_imports() -> Iterator[None]:
    """Undo a script's ``sys.path`` edits and forget the benchmark modules it imported (as
    top-level names such as ``speed``); the package's own modules stay imported."""
    path, modules = list(sys.path), set(sys.modules)
    bench = ROOT / "benchmarks"
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if Path(file).resolve().is_relative_to(bench):
                del sys.modules[name]


def parse_benchmark(argv: list[str]) -> argparse.Namespace:
    """``python -m benchmarks.X args`` (``argv`` from ``-m`` on) up to and including its
    argparse parse, run as ``__main__`` from the repo root; nothing after the parse runs. A
    flag the script does not define, or a bad value, fails the calling test."""
    assert argv[0] == "-m", argv
    module, args = argv[1], argv[2:]
    script = ROOT / (module.replace(".", "/") + ".py")
    assert script.is_file(), f"{module}: {script.relative_to(ROOT)} does not exist"
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    with pytest.MonkeyPatch.context() as patch, _restored_imports():
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        patch.setattr(sys, "argv", [str(script), *args])
        sys.path.insert(0, str(ROOT))  # `python -m` from the repo root
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except _Parsed as parsed:
            return parsed.args[0]
        except SystemExit as e:
            pytest.fail(f"`python {shlex.join(argv)}` does not parse (exit {e.code})")
    pytest.fail(f"`python {shlex.join(argv)}` finished without parsing arguments")


def ci_pins() -> dict[str, str]:
    """``name==version`` pins that ``.ci/run`` installs."""
    return dict(re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][\w.]*)", CI_RUN.read_text()))


def check_pip(cmd: list[str]) -> None:
    """A ``pip install`` line: extras that pyproject.toml defines, pins that .ci/run uses."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    pins = ci_pins()
    assert cmd[:2] == ["pip", "install"], cmd
    for arg in cmd[2:]:
        if arg.startswith(".[") or arg == ".":
            wanted = arg[2:-1].split(",") if arg != "." else []
            missing = [e for e in wanted if e not in extras]
            assert not missing, f"{shlex.join(cmd)}: extras {missing} not in pyproject.toml"
        elif "==" in arg:
            name, version = arg.split("==")
            assert pins.get(name) == version, (
                f"{shlex.join(cmd)}: {arg} but .ci/run installs {name}=={pins.get(name)}")
        else:
            assert arg in ("-e", "--no-deps", "--quiet"), f"{shlex.join(cmd)}: unchecked {arg}"


def check_command(cmd: list[str], monkeypatch, tmp_path: Path, run: bool = True) -> str:
    """Run or parse one command (see the module docstring); returns how it was checked."""
    if cmd[0] == "offline-dt":
        argv = cmd[1:]
        if run and ("--help" in argv or argv == ["datasets"]):
            out = run_cli(argv, tmp_path, monkeypatch)
            assert out.strip(), f"`{shlex.join(cmd)}` printed nothing"
            return "run"
        parse_cli(argv)
        return "parsed"
    if cmd[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(cmd[1:])
        assert args.module and args.training_script == "offline_dt.cli", cmd
        parse_cli(args.training_script_args)
        return "parsed"
    if cmd[:3] == ["python", "-m", "pytest"]:
        ci = ci_test_command()
        last = ci[len(ci) - 1 - ci[::-1].index("&&") + 1:] if "&&" in ci else ci
        assert cmd == last, f"`{shlex.join(cmd)}` is not .ci/run's test command {last}"
        return "ci"
    if cmd[:2] == ["python", "-m"] and cmd[2].startswith("benchmarks."):
        parse_benchmark(cmd[1:])
        return "parsed"
    if cmd[0] == "python" and cmd[1].startswith("benchmarks/"):
        pytest.fail(f"`{shlex.join(cmd)}`: benchmarks are a package run from the repo root, "
                    f"`python -m benchmarks.{Path(cmd[1]).stem}`")
    if cmd[0] == "pip":
        check_pip(cmd)
        return "ci"
    pytest.fail(f"no check for the command `{shlex.join(cmd)}`: teach tests/test_readme.py")


def ci_test_command() -> list[str]:
    """The install-and-test command of .ci/run as README spells it (no ``python -m`` before
    pip, no ``--quiet``)."""
    lines = CI_RUN.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("python -m pip install ")),
                 None)
    assert start is not None, ".ci/run no longer runs `python -m pip install ...` unindented"
    end = start
    while lines[end].endswith("\\"):
        end += 1
    tokens = shlex.split(" ".join(ln.rstrip("\\") for ln in lines[start:end + 1]))
    words = [t for t in tokens if t != "--quiet"]
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i:i + 3] == ["python", "-m", "pip"]:
            out.append("pip")
            i += 3
        else:
            out.append(words[i])
            i += 1
    return out


# --- the tests -------------------------------------------------------------------------------

def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; at most {MAX_README_LINES}"


def test_quickstart_is_two_commands_and_ci_test_command():
    """Quickstart: one line sets up and runs the main job (install, reproduce), one sets up
    and runs the tests, exactly as .ci/run does (its comment names the line)."""
    lines = [ln for ln in fenced(section(README.read_text(), "Quickstart"), "bash")[0]
             .splitlines() if ln.strip()]
    assert len(lines) == 2, lines
    first, second = shell_commands(lines[0]), shell_commands(lines[1])
    assert first[-1][:2] == ["offline-dt", "reproduce"], first
    assert shlex.split(lines[1]) == ci_test_command()
    assert "README's test command (Quickstart, second line)" in CI_RUN.read_text()
    # the first line installs what the second does, less the dev and test-only extras
    assert first[1] == second[1] and first[0][:2] == second[0][:2] == ["pip", "install"]


def test_commands_table_names_every_subcommand():
    from offline_dt.cli import COMMANDS

    named = {c[1] for c in table_commands(section(README.read_text(), "Commands"))}
    assert named == set(COMMANDS), f"README commands table: {sorted(named)} vs {sorted(COMMANDS)}"


def test_every_readme_command_runs_or_parses(monkeypatch, tmp_path):
    cmds = readme_commands()
    how = [check_command(c, monkeypatch, tmp_path) for c in cmds]
    # the short ones really ran, and the long ones were parsed
    assert how.count("run") >= 3 and how.count("parsed") >= 10 and "ci" in how, how


def test_a_removed_flag_fails_the_parse(monkeypatch, tmp_path):
    """The check can fail: a flag no subcommand has, a benchmark flag the script lacks."""
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_command(["offline-dt", "train", "--dataset", "x", "--no-such-flag", "1"],
                      monkeypatch, tmp_path)
    bench = ["python", "-m", "benchmarks.sync_readme"]
    assert check_command([*bench, "--check"], monkeypatch, tmp_path) == "parsed"
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check_command([*bench, "--no-such-flag"], monkeypatch, tmp_path)
    with pytest.raises(pytest.fail.Exception, match="python -m benchmarks.pendulum"):
        check_command(["python", "benchmarks/pendulum.py"], monkeypatch, tmp_path)
    with pytest.raises(AssertionError, match="extras"):
        check_pip(["pip", "install", "-e", ".[no-such-extra]"])
    with pytest.raises(AssertionError, match="d3rlpy"):
        check_pip(["pip", "install", "--no-deps", "d3rlpy==0.0.1"])


# The Python API example, on a tiny dataset and budget: its dataset path is replaced by the
# fixture file and these keywords are set in its config calls (all else runs as written).
TINY = {
    "TrainConfig": dict(steps=4, batch_size=4, context_length=5, embed_dim=16, n_layer=1,
                        n_head=1, max_timestep=64, warmup_steps=1, log_every=2,
                        checkpoint_every=4, progress=False, device="cpu"),
    "EvalConfig": dict(episodes=2, validation_episodes=2, device="cpu"),
}


class _Tiny(ast.NodeTransformer):
    def __init__(self, dataset: str):
        self.dataset, self.changed = dataset, {"path": 0, "TrainConfig": 0, "EvalConfig": 0}

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str) and node.value.endswith(".hdf5"):
            self.changed["path"] += 1
            return ast.copy_location(ast.Constant(self.dataset), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        name = getattr(node.func, "id", getattr(node.func, "attr", None))
        if name in TINY:
            self.changed[name] += 1
            node.keywords = [k for k in node.keywords if k.arg not in TINY[name]]
            node.keywords += [ast.keyword(k, ast.Constant(v)) for k, v in TINY[name].items()]
        return node


def test_python_api_example_runs(tmp_path, monkeypatch):
    conftest = load_module("_offline_dt_fixtures", ROOT / "tests" / "offline_dt" / "conftest.py")
    from offline_dt.data import write_hdf5

    h5 = write_hdf5(conftest.make_box_dataset(), tmp_path / "tiny-box-v0.hdf5")
    (code,) = fenced(section(README.read_text(), "Python API"), "python")
    assert len(code.strip().splitlines()) <= 12, "the Python API example is about ten lines"
    tiny = _Tiny(str(h5))
    tree = ast.fix_missing_locations(tiny.visit(ast.parse(code)))
    assert all(tiny.changed.values()), f"the example no longer has {tiny.changed}"
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(tree, "README.md (Python API)", "exec"), {"__name__": "readme_example"})
    assert out.getvalue().strip(), "the example prints what it did"
    # it trained a run and evaluated its checkpoint on the test episodes
    (ev,) = tmp_path.rglob("eval.json")
    assert (ev.parent / "checkpoint.pt").is_file()
    payload = json.loads(ev.read_text())
    assert payload["episodes"] == TINY["EvalConfig"]["episodes"], payload.get("episodes")
    assert math.isfinite(payload["mean_return"]), payload["mean_return"]
