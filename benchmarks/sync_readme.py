"""Copy result tables from ``benchmarks/results/`` into README.md, so no figure there is typed
by hand.

    python -m benchmarks.sync_readme [--check]

README.md marks each copied table with a pair of comments::

    <!-- copy: benchmarks/results/pendulum.md table 1 -->
    ...replaced by the 1st Markdown table of that file...
    <!-- end copy -->

``--check`` exits 1 (and changes nothing) when a copy is out of date.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- copy: (\S+) table (\d+) -->\n)(.*?)(<!-- end copy -->)", re.S)


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


def sync(readme: str) -> str:
    def replace(m: re.Match) -> str:
        path, n = ROOT / m.group(2), int(m.group(3))
        if not path.is_file():
            raise SystemExit(f"README.md copies from {m.group(2)}, which does not exist; run "
                             "the benchmark that writes it")
        found = tables(path.read_text())
        if not 1 <= n <= len(found):
            raise SystemExit(f"README.md: {m.group(2)} has {len(found)} tables, asked for {n}")
        return m.group(1) + found[n - 1] + m.group(5)

    return BLOCK.sub(replace, readme)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text()
    new = sync(old)
    if args.check:
        if new != old:
            print("README.md: copied tables are out of date; run python -m benchmarks.sync_readme")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
