"""The Pendulum-v1 study end to end, with the reference study's numbers beside ours.

    python -m benchmarks.pendulum                    # preset paper (about 45 minutes here)
    python -m benchmarks.pendulum --preset smoke     # plumbing check, ~2 minutes

Runs ``offline_dt.study.pipeline.reproduce(env_id="Pendulum-v1", preset=...)`` and writes
``benchmarks/results/pendulum.{md,csv}`` (``pendulum-<preset>.{md,csv}`` for presets other
than ``paper``): the CSV is the report's long table (one row per dataset × method, see
``offline_dt.study.tables``) plus the published reference numbers; the Markdown holds the wide table
(datasets × methods, intervals over training runs), the aggregates over datasets (IQM,
probability of improvement over dt), the reference numbers beside ours, wall seconds per
stage, machine, versions and the command.

Reference numbers (200 episodes each): random agent -1228.31, SAC -138.44; Decision
Transformer trained on pendulum-random -1235.27, pendulum-medium-replay -1025.76,
pendulum-medium -607.84. The study's "medium" data came from its fully trained SAC agent,
which is our ``expert`` level, so that number sits beside our expert row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from offline_dt.study.pipeline import reproduce
from offline_dt.study.presets import PRESETS
from offline_dt.study.runs import dataset_level, find_runs, run_scores
from offline_dt.study.statistics import aggregate_table
from offline_dt.study.tables import env_markdown, to_markdown

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "Pendulum-v1"

#: (method, our level) -> (published mean return, what it is)
REFERENCE = {
    ("random", None): (-1228.31, "random agent"),
    ("behaviour", "expert"): (-138.44, "SAC agent (fully trained)"),
    ("dt", "random"): (-1235.27, "DT on pendulum-random"),
    ("dt", "medium-replay"): (-1025.76, "DT on pendulum-medium-replay"),
    ("dt", "expert"): (-607.84, "DT on the study's pendulum-medium = fully trained SAC data"),
}


def reference_for(method: str, dataset: str) -> tuple[float | None, str]:
    level = dataset_level(dataset)
    for key in ((method, level), (method, None)):
        if key in REFERENCE:
            return REFERENCE[key]
    return None, ""


def versions() -> dict[str, str]:
    import gymnasium
    import minari
    import numpy
    import stable_baselines3
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "gymnasium": gymnasium.__version__, "stable-baselines3": stable_baselines3.__version__,
            "minari": minari.__version__, "numpy": numpy.__version__, "pandas": pd.__version__,
            **_d3rlpy_version()}


def _d3rlpy_version() -> dict[str, str]:
    """d3rlpy's version when installed (it trains the reference rows)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"d3rlpy": version("d3rlpy")}
    except PackageNotFoundError:
        return {}


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores, {platform.platform()}"


def reference_table(table: pd.DataFrame) -> pd.DataFrame:
    """Our rows that have a published counterpart: run-level interval beside the reference
    (the random agent once: the same policy on the same episodes for every dataset)."""
    rows, seen = [], set()
    for r in table.itertuples(index=False):
        ref, what = reference_for(r.method, r.dataset)
        if ref is None or (r.method == "random" and "random" in seen):
            continue
        seen.add(r.method)
        ours = (f"{r.mean_return:.1f} [{r.run_ci95_low:.1f}, {r.run_ci95_high:.1f}]"
                if pd.notna(r.run_ci95_low) else f"{r.mean_return:.1f}")
        rows.append({"dataset": r.dataset, "method": r.method, "ours [95% CI over runs]": ours,
                     "reference_return": ref, "reference": what})
    return pd.DataFrame(rows, columns=["dataset", "method", "ours [95% CI over runs]",
                                       "reference_return", "reference"])


def restrict(table: pd.DataFrame, runs_root: Path, levels: list[str] | None, env: str = ENV
             ) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """The table's rows of ``env`` and ``levels`` (all when None: the runs root may hold levels
    of earlier calls), the aggregates over those levels' runs, and the runs."""
    keep = (lambda ds: True) if levels is None else (lambda ds: dataset_level(ds) in levels)
    runs = [r for r in find_runs(runs_root) if r["env"] == env and keep(r["dataset"])]
    table = table[(table["env"] == env) & table["dataset"].map(keep)].reset_index(drop=True)
    return table, aggregate_table(run_scores(runs)), runs


def reused_note(timings: dict) -> str:
    """How many of the call's run stages were reused from earlier calls (``timings.json``):
    a wall time of a call that reused runs is not the cost of the table."""
    runs = timings.get("runs", [])
    reused = sum(bool(r.get("reused")) for r in runs)
    return f"{reused} of {len(runs)} run stages reused from earlier calls under the same root"


def stages_section(timings: dict, report_dir: Path, note: bool = True) -> str:
    """The page's "Seconds per stage" section (``timings.json``) and where the report is;
    ``note``: say that stage seconds are summed over workers."""
    summed = ("With several workers, stage seconds are summed over the worker processes (so "
              "they can exceed\nthe wall time); `total` is wall time.\n\n") if note else ""
    return f"""## Seconds per stage

{summed}| stage | seconds |
|---|---:|
{stage_rows(timings)}
| total | {timings['total']:.1f} |

Report, plots (learning curves, dataset returns, performance profile) and per-run timings:
`{report_dir}`.
"""


def stage_rows(timings: dict) -> str:
    order = ["generate", "train", "evaluate", "reference_train", "reference_evaluate",
             "baselines", "report"]
    names = [k for k in order if k in timings["stages"]]
    names += [k for k in timings["stages"] if k not in order]
    return "\n".join(f"| {k} | {timings['stages'][k]:.1f} |" for k in names)


def markdown(args: argparse.Namespace, command: str, wall: float, table: pd.DataFrame,
             aggregates: pd.DataFrame, timings: dict, report_dir: Path,
             runs: list[dict] | None = None) -> str:
    """The results page: command, machine, versions, the wide table, the aggregates, the
    reference study beside ours and the seconds per stage."""
    preset = PRESETS[args.preset]
    profile = report_dir / f"performance_profile_{ENV}.png"
    return f"""# Pendulum-v1: Decision Transformer vs baselines (preset `{args.preset}`)

Command: `{command}` (wall time {wall / 60:.1f} min, {args.workers} worker process(es);
{reused_note(timings)})

Machine: {machine()}. Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.

Preset: {preset.description}
Training seeds {list(preset.seeds)}; {preset.evaluate.get('episodes')} test episodes per
seed, the same episodes for every method (reset seeds: `episode_seeds` in each eval.json).
Train overrides: `{json.dumps(preset.train)}`; reference rows' updates:
`{json.dumps(preset.reference_steps)}`.

A run is one training seed (for the baselines, one evaluation seed); its score is the mean
return of its test episodes. Each cell is the mean over runs with a 95% bootstrap interval over
runs and the D4RL normalized score `100 (R - ref_min) / (ref_max - ref_min)` with our
reference scores (random agent, trained SAC). A DT run chooses its target return (the
dataset's best episode return or the expert reference score; with qt's inference settings too)
on validation episodes and reports the test episodes of that choice only (see "How targets
were chosen" below); `bc` is the same network trained with returns-to-go zeroed; `iql`,
`mlp-bc` and `pct-bc` are d3rlpy's IQL, MLP BC and %BC; `behaviour` is the policy that wrote
the level (none for the replay levels). The CSV beside this file keeps one row per dataset
and method, with the episode-level `ci95`, the IQM and the run-level interval.

{env_markdown(table, aggregates, ENV, profile=str(profile), runs=runs)}
Reference study numbers (200 episodes each) beside ours; the study's "medium" data came from
its fully trained SAC agent, which is our `expert` level, so that number sits beside our
expert row:

{to_markdown(reference_table(table))}
{stages_section(timings, report_dir)}"""


def characteristics_section(args: argparse.Namespace, stem: str, table: pd.DataFrame,
                            command: str) -> None:
    """The page's TQ/SACo section (``benchmarks.page_characteristics``) from the datasets
    the run used under ``args.root``."""
    from benchmarks.page_characteristics import Page, update_page
    from offline_dt.study.pipeline import preset_datasets

    t = time.perf_counter()
    levels = tuple(args.levels) if args.levels else None
    paths = preset_datasets(ENV, args.preset, args.root, args.device, levels)
    update_page(Page(ENV, args.preset, stem, stem, levels), paths, table, args.out, command,
                time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--root", type=Path, default=Path("data"), help="reproduce output root")
    p.add_argument("--device", default="auto")
    p.add_argument("--levels", nargs="+", default=None,
                   help="dataset levels (default: all six); the table holds only these")
    p.add_argument("--methods", nargs="+", default=None,
                   help="rows to train or evaluate (default all); runs of the others already "
                        "under --root are reused and reported")
    p.add_argument("--workers", type=int, default=2,
                   help="runs at once, one process each (reproduce(workers=...))")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the .md/.csv go")
    p.add_argument("--stem", default=None,
                   help="file name stem (default pendulum for paper, else pendulum-<preset>)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")

    t = time.perf_counter()
    table = reproduce(env_id=ENV, preset=args.preset, root=args.root, device=args.device,
                      workers=args.workers, levels=args.levels, methods=args.methods)
    wall = time.perf_counter() - t
    report_dir = args.root / "reports" / ENV / args.preset
    timings = json.loads((report_dir / "timings.json").read_text())
    table, aggregates, runs = restrict(table, args.root / "runs" / args.preset, args.levels)

    refs = [reference_for(r.method, r.dataset) for r in table.itertuples()]
    out = table.copy()
    out["reference_return"] = [r[0] for r in refs]
    out["reference"] = [r[1] for r in refs]
    stem = args.stem or ("pendulum" if args.preset == "paper" else f"pendulum-{args.preset}")
    args.out.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out / f"{stem}.csv", index=False)

    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["-m", "benchmarks.pendulum", *(argv or sys.argv[1:])])
    md = markdown(args, command, wall, table, aggregates, timings, report_dir, runs)
    (args.out / f"{stem}.md").write_text(md)
    characteristics_section(args, stem, out, command)
    print((args.out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
