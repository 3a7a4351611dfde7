"""docs/ and README.md stay true to the code.

- Every dotted ``offline_dt.…``/``datagen.…`` name resolves (a module imports, an attribute or
  dataclass field exists) and every ``offline_dt/…``, ``datagen/…``, ``tests/…``,
  ``benchmarks/…`` path exists, so a module that moves fails here until the docs follow it.
- Every relative link resolves, anchors included.
- Every command of docs' ``bash`` blocks parses with its flags (``offline-dt`` by the real CLI
  parser, torchrun by its own, benchmarks by their argparse parsers; pip lines against
  pyproject.toml and .ci/run), and every flag of an inline ``offline-dt <cmd> ...`` span is
  one that subcommand has.
- The copied tables are current (``benchmarks/sync_readme.py``) and docs/results.md holds
  every one; "Adding a method" shows ``bc`` as it is and names every part of the contract;
  the presets and methods pages list every preset and registered method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import io
import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
R = None  # tests/test_readme.py, loaded below (the command helpers)


def _readme_helpers():
    global R
    if R is None:
        from importlib.util import module_from_spec, spec_from_file_location

        spec = spec_from_file_location("_readme_helpers", ROOT / "tests" / "test_readme.py")
        R = module_from_spec(spec)
        spec.loader.exec_module(R)
    return R


R = _readme_helpers()
DOCS = sorted((ROOT / "docs").glob("**/*.md"))
PAGES = [ROOT / "README.md", *DOCS]
DOTTED = re.compile(r"(?<![\w.])(?:offline_dt|datagen)(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(r"(?<![\w./-])(?:offline_dt|datagen|tests|benchmarks)/[\w./-]*\w")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


# --- names and paths -------------------------------------------------------------------------

def resolve(dotted: str) -> None:
    """Import the longest module prefix of ``dotted``, then walk the rest as attributes (a
    dataclass field without a class attribute counts, and must come last). A class or function
    named through a plain module (not a package's ``__init__``) must be defined there, so a
    name that moved but is still imported by its old module is caught too.

    Raises:
        LookupError: nothing by that name, saying which part is missing.
    """
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
            break
        except ModuleNotFoundError as e:
            if e.name != name and not name.startswith(f"{e.name}."):
                raise  # the module exists but a dependency of it is missing
    else:
        raise LookupError(f"{dotted}: no module {parts[0]}")
    module = obj
    for j, attr in enumerate(parts[i:], start=i):
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
            owner = getattr(obj, "__module__", None)
            if (j == i and not hasattr(module, "__path__") and owner != module.__name__
                    and (inspect.isclass(obj) or inspect.isfunction(obj))):
                raise LookupError(f"{dotted}: {attr} is only imported by {module.__name__}; "
                                  f"it is defined in {owner}")
        elif (dataclasses.is_dataclass(obj) and j == len(parts) - 1
              and attr in {f.name for f in dataclasses.fields(obj)}):
            return
        else:
            raise LookupError(f"{dotted}: {'.'.join(parts[:j])} has no {attr!r}")


def _all(regex: re.Pattern, pages=PAGES) -> list[tuple[str, str]]:
    return sorted({(_rel(p), m.group(0)) for p in pages for m in regex.finditer(p.read_text())})


def test_every_dotted_name_exists():
    found = _all(DOTTED)
    assert len(found) > 50, found  # the pages name the code they describe
    missing = []
    for page, name in found:
        try:
            resolve(name)
        except (LookupError, ModuleNotFoundError) as e:
            missing.append(f"{page}: {e}")
    assert not missing, "names in the docs that the code does not have:\n" + "\n".join(missing)


def test_a_moved_name_is_caught():
    resolve("offline_dt.training.train_config.TrainConfig.run_dir")
    resolve("offline_dt.study.presets.Preset.method_candidates")  # a default_factory field
    resolve("offline_dt.data.load_dataset")  # a package's export
    for gone in ("offline_dt.model", "offline_dt.training.loop.NoSuchThing",
                 "offline_dt.training.distributed.global_mean", "datagen.nowhere.x",
                 "offline_dt.training.loop.Method"):  # imported there, defined in methods
        with pytest.raises((LookupError, ModuleNotFoundError)):
            resolve(gone)


def test_every_path_exists():
    found = _all(PATH)
    assert len(found) > 30, found
    missing = [f"{page}: {path}" for page, path in found if not (ROOT / path).exists()]
    assert not missing, "paths in the docs that do not exist:\n" + "\n".join(missing)
    assert (ROOT / ".ci" / "run").is_file()


# --- links -----------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    text = R.without_fences(path.read_text())
    return frozenset(slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M))


def broken_links(page: Path) -> list[str]:
    bad = []
    for m in LINK.finditer(R.without_fences(page.read_text())):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"{_rel(page)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{_rel(page)}: {target} (no heading #{anchor} in {dest.name})")
    return bad


def test_every_link_resolves():
    assert sum(len(LINK.findall(p.read_text())) for p in PAGES) > 40
    bad = [b for p in PAGES for b in broken_links(p)]
    assert not bad, "\n".join(bad)


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "b.md").write_text("# B: one, two\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text("# A title (`x`)\n\n[ok](#a-title-x) [no](#nowhere) [b](b.md#b-one-two) "
                    "[b2](b.md#not-a-heading) [gone](c.md) [web](https://example.org)\n")
    assert broken_links(page) == [f"{page}: #nowhere (no heading #nowhere in a.md)",
                                  f"{page}: b.md#not-a-heading (no heading #not-a-heading in "
                                  "b.md)", f"{page}: c.md (no such file)"]


# --- commands in docs ------------------------------------------------------------------------

@functools.cache
def subcommand_flags(name: str) -> frozenset[str]:
    """The flags ``offline-dt <name> --help`` lists (the real parser's help)."""
    from offline_dt.cli import parse

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        with pytest.raises(SystemExit):
            parse([name, "--help"])
    return frozenset(re.findall(r"--[a-z0-9][a-z0-9.-]*[a-z0-9]", out.getvalue()))


def test_every_docs_command_parses(monkeypatch, tmp_path):
    cmds = [(p, c) for p in DOCS for block in R.fenced(p.read_text(), "bash")
            for c in R.shell_commands(block)]
    cmds += [(p, c) for p in DOCS for c in R.inline_commands(p.read_text(), R.BENCH)]
    cmds += [(p, c) for p in DOCS for c in R.inline_commands(p.read_text(), "pip install")]
    assert len(cmds) > 30, len(cmds)
    for page, cmd in cmds:
        try:
            R.check_command(cmd, monkeypatch, tmp_path, run=False)
        except BaseException as e:
            raise AssertionError(f"{_rel(page)}: `{shlex.join(cmd)}`: {e}") from e


def test_every_flag_of_an_inline_command_exists():
    from offline_dt.cli import COMMANDS

    spans = [(p, c) for p in PAGES for c in R.inline_commands(p.read_text(), "offline-dt ")
             if re.fullmatch(r"[a-z]+", c[1])]  # not `offline-dt <cmd>`, not an error message
    assert len(spans) > 10, spans
    bad = []
    for page, cmd in spans:
        if cmd[1] not in COMMANDS:
            bad.append(f"{_rel(page)}: `{shlex.join(cmd)}`: no subcommand {cmd[1]}")
            continue
        unknown = [t for t in cmd[2:] if t.startswith("--") and t not in subcommand_flags(cmd[1])]
        if unknown:
            bad.append(f"{_rel(page)}: `{shlex.join(cmd)}`: {cmd[1]} has no {unknown}")
    assert not bad, "\n".join(bad)
    assert "--no-such-flag" not in subcommand_flags("train")
    assert {"--dataset", "--method", "--run-dir"} <= subcommand_flags("train")


# --- copied tables ---------------------------------------------------------------------------

def _sync():
    return R.load_module("_sync_readme", ROOT / "benchmarks" / "sync_readme.py")


def test_copied_tables_are_current_and_results_page_holds_all():
    sync = _sync()
    assert sync.stale_pages(ROOT) == [], "run python -m benchmarks.sync_readme"
    copies = {p: set(re.findall(r"<!-- copy: (\S+ table \d+) -->", p.read_text())) for p in PAGES}
    results = copies[ROOT / "docs" / "results.md"]
    assert len(results) >= 15 and copies[ROOT / "README.md"]
    for page, found in copies.items():
        assert found <= results, f"{_rel(page)} copies {found - results}, not in docs/results.md"


def test_no_copy_marker_outside_the_synced_pages():
    synced = set(_sync().pages(ROOT))
    marked = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "__")) and d != "data"
                       and not d.endswith(".egg-info")]
        for f in filenames:
            path = Path(dirpath) / f
            if f.endswith(".md") and "<!-- copy: " in path.read_text(errors="replace"):
                marked.append(path)
    assert marked and set(marked) <= synced, set(marked) - synced


def test_sync_finds_and_fixes_a_stale_copy_in_any_page(tmp_path):
    sync = _sync()
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "x.md").write_text(
        "# x\n\n| a |\n|---|\n| 1 |\n\ntext\n\n| b |\n|---|\n| 2 |\n")
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    block = "<!-- copy: benchmarks/results/x.md table {n} -->\n{t}<!-- end copy -->\n"
    current = block.format(n=1, t="| a |\n|---|\n| 1 |\n")
    (tmp_path / "README.md").write_text("intro\n" + current)
    page = tmp_path / "docs" / "sub" / "p.md"
    page.write_text("see\n" + block.format(n=2, t="| b |\n|---|\n| typed by hand |\n"))
    assert sync.stale_pages(tmp_path) == [page]
    assert sync.stale_pages(tmp_path, write=True) == [page]
    assert "| 2 |" in page.read_text() and sync.stale_pages(tmp_path) == []
    page.write_text(block.format(n=3, t=""))
    with pytest.raises(SystemExit, match="docs/sub/p.md: benchmarks/results/x.md has 2 tables"):
        sync.stale_pages(tmp_path)


# --- pages that mirror the code --------------------------------------------------------------

def test_adding_a_method_shows_bc_as_it_is_and_names_the_whole_contract():
    """Every public attribute and method of the contract's bases is named on the page."""
    from offline_dt.methods import base

    page = (ROOT / "docs" / "adding-a-method.md").read_text()
    (code,) = R.fenced(page, "python")
    assert code.strip() in (ROOT / "offline_dt" / "methods" / "bc.py").read_text(), (
        "docs/adding-a-method.md: the bc excerpt is no longer offline_dt/methods/bc.py's class")
    bases = [getattr(base, n) for n in ("Method", "OnlineMethod", "FinetuneMethod",
                                        "BatchSource") if hasattr(base, n)]
    contract = {n for cls in bases for n in (*vars(cls), *getattr(cls, "__annotations__", {}))
                if not n.startswith("_")}
    assert {"build", "loss", "policy", "name"} <= contract
    unnamed = sorted(n for n in contract if not re.search(rf"`{n}\b", page))
    assert not unnamed, f"docs/adding-a-method.md does not say what {unnamed} are"


def test_presets_and_methods_pages_list_every_one():
    from offline_dt.methods.base import METHODS
    from offline_dt.study.presets import PRESETS
    from offline_dt.study.reference import REFERENCE_METHODS

    presets = (ROOT / "docs" / "presets.md").read_text()
    assert not [p for p in PRESETS if f"`{p}`" not in presets], "docs/presets.md misses presets"
    methods = (ROOT / "docs" / "methods.md").read_text()
    missing = [m for m in (*METHODS, *REFERENCE_METHODS) if f"`{m}`" not in methods]
    assert not missing, f"docs/methods.md does not describe {missing}"
