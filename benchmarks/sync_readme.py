"""Copy result tables from ``benchmarks/results/`` into README.md and docs/, so no figure
there is typed by hand.

    python -m benchmarks.sync_readme [--check]

A page (README.md or any ``docs/**/*.md``) marks each copied table with a pair of comments::

    <!-- copy: benchmarks/results/pendulum.md table 1 -->
    ...replaced by the 1st Markdown table of that file...
    <!-- end copy -->

``--check`` exits 1 (and changes nothing) when a copy in any page is out of date, naming the
page; without it every page is rewritten in place where its copies differ.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- copy: (\S+) table (\d+) -->\n)(.*?)(<!-- end copy -->)", re.S)
MARKER = "<!-- copy: "


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may show copied tables: ``README.md`` and every ``docs/**/*.md``."""
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    return found + sorted((root / "docs").glob("**/*.md"))


def tables(text: str) -> list[str]:
    """The Markdown tables of ``text`` (runs of lines starting with ``|``), in order."""
    out, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append("\n".join(cur) + "\n")
            cur = []
    if cur:
        out.append("\n".join(cur) + "\n")
    return out


def sync(text: str, page: str = "README.md", root: Path = ROOT) -> str:
    """``text`` with every copy block replaced by the current table of its source.

    Raises:
        SystemExit: a block names a source file that does not exist, or a table number that
            file does not have (the message names ``page``, the source and what it holds).
    """
    def replace(m: re.Match) -> str:
        path, n = root / m.group(2), int(m.group(3))
        if not path.is_file():
            raise SystemExit(f"{page} copies from {m.group(2)}, which does not exist; run "
                             "the benchmark that writes it")
        found = tables(path.read_text())
        if not 1 <= n <= len(found):
            raise SystemExit(f"{page}: {m.group(2)} has {len(found)} tables, asked for {n}")
        return m.group(1) + found[n - 1] + m.group(5)

    return BLOCK.sub(replace, text)


def stale_pages(root: Path = ROOT, write: bool = False) -> list[Path]:
    """The pages whose copied tables differ from their sources; with ``write`` each is
    rewritten with the current tables."""
    stale = []
    for path in pages(root):
        old = path.read_text()
        new = sync(old, str(path.relative_to(root)), root)
        if new != old:
            stale.append(path)
            if write:
                path.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="exit 1 naming every page whose copies are out of date; write nothing")
    args = p.parse_args(argv)
    stale = stale_pages(ROOT, write=not args.check)
    if args.check and stale:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: copied tables are out of date; run "
                  "python -m benchmarks.sync_readme")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
