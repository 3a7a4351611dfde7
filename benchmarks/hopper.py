"""Hopper-v5 (MuJoCo): Decision Transformer, BC, the behaviour agent and the random agent on
four generated levels.

    pip install -e ".[mujoco]"
    python -m benchmarks.hopper                 # preset hopper (about 35 minutes on 2 cores)

Runs ``offline_dt.study.pipeline.reproduce(env_id="Hopper-v5", preset="hopper",
levels=random medium medium-replay expert, methods=dt bc random behaviour)`` and writes
``benchmarks/results/hopper.{md,csv}`` (plots in ``hopper/``): the wide table (datasets ×
methods, intervals over training runs, D4RL normalized scores against our reference scores:
the random agent and the trained SAC agent), the aggregates, the reference scores, the
behaviour agent's training budget, wall seconds per stage, machine, versions and the
command. Hopper episodes end when the hopper falls (``terminals``) or at 1000 steps
(``timeouts``); the evaluator stops each
episode at its fall.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path

from benchmarks.page_characteristics import PAGES, page_datasets, update_page
from benchmarks.pendulum import machine, restrict, reused_note, stages_section, versions
from offline_dt.data.d4rl import read_hdf5
from offline_dt.study.pipeline import reproduce
from offline_dt.study.presets import PRESETS
from offline_dt.study.tables import env_markdown

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "Hopper-v5"
LEVELS = list(PAGES["hopper"].levels)  # one list: the page's rows and its TQ/SACo section
METHODS = ["dt", "bc", "random", "behaviour"]


def references(root: Path) -> str:
    """The reference scores and behaviour agent of the generated data (expert's metadata)."""
    meta = read_hdf5(root / "d4rl" / "hopper-expert-v0.hdf5").metadata
    keys = ("ref_min_score", "ref_max_score", "agent", "agent_steps", "expert_step",
            "medium_step")
    return ", ".join(f"{k} {meta[k]}" for k in keys if k in meta)


def plots(report_dir: Path, out: Path) -> str:
    """Copy the report's plots (learning curves, dataset returns, performance profile) into
    ``out/hopper/`` and return the page's section linking them."""
    (out / "hopper").mkdir(parents=True, exist_ok=True)
    lines = ["", "## Plots", ""]
    for stem in ("learning_curves", "dataset_returns", "performance_profile"):
        src = report_dir / f"{stem}_{ENV}.png"
        if src.is_file():
            shutil.copyfile(src, out / "hopper" / src.name)
            lines.append(f"![{stem.replace('_', ' ')}](hopper/{src.name})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="hopper", choices=sorted(PRESETS))
    p.add_argument("--root", type=Path, default=Path("data"), help="reproduce output root")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS, help="where the .md/.csv go")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    t = time.perf_counter()
    table = reproduce(env_id=ENV, preset=args.preset, root=args.root, device=args.device,
                      workers=args.workers, levels=LEVELS, methods=METHODS)
    wall = time.perf_counter() - t
    report_dir = args.root / "reports" / ENV / args.preset
    timings = json.loads((report_dir / "timings.json").read_text())
    table, aggregates, runs = restrict(table, args.root / "runs" / args.preset, LEVELS, ENV)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "hopper.csv", index=False)
    command = "python " + shlex.join(["-m", "benchmarks.hopper", *(argv or sys.argv[1:])])
    preset = PRESETS[args.preset]
    profile = report_dir / f"performance_profile_{ENV}.png"
    md = f"""# Hopper-v5: Decision Transformer vs baselines (preset `{args.preset}`)

Command: `{command}` (wall time {wall / 60:.1f} min, {args.workers} worker process(es);
{reused_note(timings)})

Machine: {machine()}. Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.

Preset: {preset.description}
Training seeds {list(preset.seeds)}. Train overrides: `{json.dumps(preset.train)}`.
Generated data: {references(args.root)}.

Cells as in benchmarks/results/pendulum.md: the mean over runs (training seeds; for the
baselines, evaluation seeds) with a 95% bootstrap interval over runs and the D4RL normalized
score `100 (R - ref_min) / (ref_max - ref_min)` against our reference scores (random agent,
the trained SAC agent). `dt` chooses its target return on validation episodes; `bc` is the
same network with returns-to-go zeroed; `behaviour` is the policy that wrote the level (none
for medium-replay).

{env_markdown(table, aggregates, ENV, profile=str(profile), runs=runs)}
{stages_section(timings, report_dir, note=False)}"""
    (args.out / "hopper.md").write_text(md + plots(report_dir, args.out))
    t = time.perf_counter()
    paths = page_datasets(PAGES["hopper"], args.root, args.device)
    update_page(PAGES["hopper"], paths, table, args.out, command, time.perf_counter() - t)
    print((args.out / "hopper.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
