"""TQ and SACo (Schweighofer et al. 2022) of a results page's datasets, as a section of that
page, with the TQ-SACo scatter plot labelled by each dataset's best method on the page.

    python -m benchmarks.page_characteristics --page pendulum --root data
    python -m benchmarks.page_characteristics --page hopper --root data    # the mujoco extra

The page's datasets are those of its preset under ``--root``, generated as ``reproduce``
generates them (``offline_dt.study.pipeline.preset_datasets``: the same config and seeds)
when they are not there yet. The best method of each dataset comes from the page's committed
CSV (the highest mean normalized score among the trained and reference rows), so the section
does not retrain anything. That the datasets are the page's own is checked, not assumed: the
section sets each file's episode count and mean episode return beside the page's ``data``
row (same count and mean to 1e-9 relative: "same"), and gives the SHA-256 of every file.
The section goes at the end of the page, between ``<!-- characteristics -->`` markers
(replaced when present), so the page's numbered tables keep their numbers; the page's own
script (``benchmarks/pendulum.py``, ``benchmarks/hopper.py``) writes it too when rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.machine import cpu_model, versions

RESULTS = Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- characteristics -->", "<!-- end characteristics -->"


@dataclasses.dataclass(frozen=True)
class Page:
    """A results page: its env, preset, levels, file stem and plot folder (under results/)."""

    env: str
    preset: str
    stem: str
    plot_dir: str = ""
    levels: tuple[str, ...] | None = None  # None: all six
    #: Levels generated for SACo's denominator alone (full-replay, on a page without it): in
    #: the grid and the table, with no row of the page ("no data row on the page").
    saco_levels: tuple[str, ...] = ()


PAGES = {
    "pendulum": Page("Pendulum-v1", "paper", "pendulum", "pendulum"),
    "pendulum-quick": Page("Pendulum-v1", "quick", "pendulum-quick", "pendulum-quick"),
    "hopper": Page("Hopper-v5", "hopper", "hopper", "hopper",
                   ("random", "medium", "medium-replay", "expert"), ("full-replay",)),
}


def page_datasets(page: Page, root: Path, device: str = "auto") -> dict[str, Path]:
    """The page's datasets and its ``saco_levels`` under ``root`` (level → HDF5), generated
    as ``reproduce`` generates them or reused (``preset_datasets``)."""
    from offline_dt.study.pipeline import preset_datasets

    levels = None if page.levels is None else (*page.levels, *page.saco_levels)
    return preset_datasets(page.env, page.preset, root, device, levels)


def dataset_entries(env: str, paths: dict[str, Path]) -> dict[tuple[str, str], dict]:
    """(env, dataset id) → the entry ``characteristics_table`` reads (TQ against the file's
    reference scores, state-action limits, level, source), per HDF5 file of ``paths``; also
    its episode returns and SHA-256."""
    from offline_dt.data import read_hdf5
    from offline_dt.data.characteristics import (
        CharacteristicsError,
        state_action_limits,
        trajectory_quality,
    )

    out = {}
    for level, path in paths.items():
        ds = read_hdf5(path)
        lo, hi = ds.metadata.get("ref_min_score"), ds.metadata.get("ref_max_score")
        try:
            limits = state_action_limits([ds])
        except CharacteristicsError:  # a dataset SACo cannot bin: no count, TQ still
            limits = None
        out[(env, Path(path).stem)] = {
            "tq": trajectory_quality(ds, lo, hi), "level": level, "source": (str(path), None),
            "limits": limits, "returns": ds.episode_returns,
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
    return out


def same_data(entry: dict, table: pd.DataFrame, env: str, dataset: str) -> str:
    """"same" when the file's episode count and mean return equal the page's ``data`` row,
    else both figures (or "no data row")."""
    row = table[(table["env"] == env) & (table["dataset"] == dataset)
                & (table["method"] == "data")]
    if row.empty:
        return "no data row on the page"
    n, mean = len(entry["returns"]), float(entry["returns"].mean())
    page_n, page_mean = int(row["episodes"].iloc[0]), float(row["mean_return"].iloc[0])
    if n == page_n and math.isclose(mean, page_mean, rel_tol=1e-9):
        return "same"
    return f"differs: {n} episodes, mean {mean:.3f} (page: {page_n}, {page_mean:.3f})"


def section(page: Page, chars: pd.DataFrame, entries: dict, table: pd.DataFrame,
            command: str, seconds: float, plotted: bool = True) -> str:
    """The page's characteristics section (between the markers); the TQ-SACo plot's link when
    ``plotted``, else why there is none (no full-replay level: no SACo to plot)."""
    rows = chars[chars["env"] == page.env].drop(columns="env").copy()
    rows["data as the page's"] = [same_data(entries[(page.env, d)], table, page.env, d)
                                  for d in rows["dataset"]]
    shas = "; ".join(f"`{d}` {entries[(page.env, d)]['sha256'][:16]}" for d in rows["dataset"])
    plot = f"{page.plot_dir}/" if page.plot_dir else ""
    figure = (f"![TQ against SACo]({plot}characteristics_{page.env}.png)" if plotted else
              "No TQ-SACo plot: SACo needs the env's full-replay level (the whole buffer of "
              "the behaviour agent's training, Schweighofer et al.'s reference dataset), which "
              "this page does not generate; `unique_sa` is each dataset's coverage count on "
              "the page's one grid.")
    return f"""{BEGIN}
## Dataset characteristics (TQ, SACo)

Trajectory Quality and State-Action Coverage of Schweighofer et al. 2022 ("A Dataset
Perspective on Offline Reinforcement Learning"; `offline_dt.data.characteristics`, as
`offline-dt datasets` and the report compute them): TQ = (mean episode return - ref_min_score) /
(ref_max_score - ref_min_score); `unique_sa` = distinct (state, action) cells with every
dimension cut into 100 equal-width bins between its min and max over this page's datasets (one
grid); SACo = `unique_sa` / full-replay's (NaN without a full-replay level; a page without
one generates it for this alone: its row has no data row on the page). `best_method` and
`best_score`: the row of the table above with the highest mean normalized score on that dataset
(trained and reference rows; not `data`, `random`, `behaviour`). `data as the page's`: the
file's episode count and mean return against the page's `data` row ("same": the datasets the
runs above were trained on). `unique_sa` cannot exceed a dataset's steps, so SACo also reflects
size where the levels differ in size (see dataset-characteristics.md for equal sizes).

Command: `{command}` ({seconds:.0f} s for this section, generating the datasets where
they were missing). Machine: {cpu_model()}, {os.cpu_count()} cores. Versions:
{', '.join(f'{k} {v}' for k, v in versions().items())}. SHA-256 (first 16 hex digits): {shas}.

{rows.to_markdown(index=False, floatfmt='.3f')}

{figure}
{END}
"""


def write_section(md_path: Path, text: str) -> None:
    """Put ``text`` at the end of ``md_path``, replacing an earlier characteristics section."""
    old = md_path.read_text()
    kept = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", "", old, flags=re.S)
    md_path.write_text(kept.rstrip("\n") + "\n\n" + text)


def update_page(page: Page, paths: dict[str, Path], table: pd.DataFrame, out: Path,
                command: str, seconds: float) -> pd.DataFrame:
    """Compute the characteristics of ``paths`` (level → HDF5), write the plot under
    ``out/plot_dir`` and the section into ``out/<stem>.md``; return the characteristics."""
    from offline_dt.study.characteristics import characteristics_table, plot_characteristics

    entries = dataset_entries(page.env, paths)
    chars = characteristics_table(entries, table)
    (out / page.plot_dir).mkdir(parents=True, exist_ok=True)
    plotted = any(f.name == f"characteristics_{page.env}.png"
                  for f in plot_characteristics(chars, out / page.plot_dir))
    write_section(out / f"{page.stem}.md", section(page, chars, entries, table, command,
                                                   seconds, plotted))
    return chars


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--page", required=True, choices=sorted(PAGES))
    p.add_argument("--root", type=Path, default=Path("data"), help="reproduce output root")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the page is")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    page = PAGES[args.page]
    md, csv = args.out / f"{page.stem}.md", args.out / f"{page.stem}.csv"
    for f in (md, csv):
        if not f.is_file():
            raise SystemExit(f"--page {args.page}: {f} not found (the page must exist first)")
    t = time.perf_counter()
    paths = page_datasets(page, args.root, args.device)
    command = "python " + shlex.join(["-m", "benchmarks.page_characteristics",
                                      *(argv if argv is not None else sys.argv[1:])])
    chars = update_page(page, paths, pd.read_csv(csv), args.out, command,
                        time.perf_counter() - t)
    print(chars.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
