"""The result pages of the scripted recipes' datasets (issue 31): PointMaze (Dict observations,
the field's stitching test) and MiniGrid FourRooms (image observations, Discrete actions).

    pip install -e ".[robotics,reference]"
    python -m benchmarks.goal_pages --page pointmaze     # preset pointmaze (its description)
    python -m benchmarks.goal_pages --page minigrid      # preset minigrid
    python -m benchmarks.goal_pages --page minigrid --tiny --out /tmp/pages   # toy, seconds

For each env of the page, ``offline_dt.study.pipeline.reproduce(env_id, preset, levels,
methods=the preset's rows)``, then ``benchmarks/results/<page>.{md,csv}`` (``<page>-tiny``
with ``--tiny``): per env the wide table (datasets x methods, the mean over runs with a 95%
bootstrap interval over runs and the D4RL normalized score against the recipe's reference
scores: the uniform random agent and the noise-free scripted expert), how targets were
chosen, the aggregates, the reference scores, seconds per stage; machine, versions and the
command; the plots (learning curves, dataset returns, performance profile) go into
``benchmarks/results/<page>/``. Rows: PointMaze ``dt bc qt iql mlp-bc pct-bc random
behaviour`` (the reference rows on the flat view of the Dict observation: ``achieved_goal``,
``desired_goal``, ``observation``), MiniGrid ``dt bc qt random behaviour`` (``qt`` with
``eta 0``: its Q term needs Box actions; no ``iql``, which needs Box actions too).
``behaviour`` is the scripted policy that wrote the level, noise included (PointMaze: the
planner-controller with action noise 0.5; MiniGrid: the BFS expert with epsilon 0.1 at
``expert``, 0.7 at ``medium``), played on the same test episodes through mirror envs
(``datagen.scripted_policy``).
``--tiny`` runs the ``<page>-tiny`` preset on the page's first env only.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.pendulum import machine, restrict, reused_note, stages_section, versions
from offline_dt.data.d4rl import read_hdf5
from offline_dt.study.pipeline import preset_datasets, reproduce
from offline_dt.study.presets import PRESETS
from offline_dt.study.tables import env_markdown

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class GoalPage:
    """A page: its envs, default levels, preset and title."""

    envs: tuple[str, ...]
    levels: tuple[str, ...]
    preset: str
    title: str


PAGES = {
    "pointmaze": GoalPage(("PointMaze_UMaze-v3", "PointMaze_Medium-v3", "PointMaze_Large-v3"),
                          ("expert",), "pointmaze",
                          "PointMaze umaze / medium / large: can a DT stitch?"),
    "minigrid": GoalPage(("MiniGrid-FourRooms-v0",), ("random", "medium", "expert"),
                         "minigrid", "MiniGrid FourRooms: image observations"),
}

ROWS_NOTE = """`behaviour` is the scripted policy that wrote the level, with its noise (PointMaze:
the waypoint planner driving the PD controller, action noise 0.5; MiniGrid: the BFS expert,
epsilon 0.1 at `expert`, 0.7 at `medium`; uniform random at `random`), played on the same test
episodes as every other row through mirror envs (`datagen.scripted_policy`). The normalized
score's 100 is the noise-free expert (`ref_max_score`), its 0 the uniform random agent
(`ref_min_score`), both measured at generation. `iql`, `mlp-bc` and `pct-bc` (d3rlpy) read the
flat view of the Dict observation: the leaves in sorted key order, concatenated (PointMaze:
`achieved_goal` 2, `desired_goal` 2, `observation` 4). MiniGrid has Discrete actions: no
`iql` (Box actions only), and `qt` trains with `--qt.eta 0` (its Q term differentiates Q
through the action), keeping its advantage weighting (beta) and its critic's choice at
inference; its candidate run (`eta0-beta0`) turns the weighting off too."""


def references(paths: dict[str, Path]) -> str:
    """The reference scores and recipe of each level's dataset (its metadata)."""
    lines = []
    for path in paths.values():
        meta = read_hdf5(path).metadata
        keys = ("ref_min_score", "ref_max_score", "ref_episodes", "agent", "recipe")
        lines.append(f"- `{path.stem}`: " + ", ".join(f"{k} {meta[k]}" for k in keys
                                                     if k in meta))
    return "\n".join(lines)


def plots(report_dir: Path, env: str, out: Path, folder: str) -> str:
    """Copy the report's plots of ``env`` into ``out/folder/`` (as benchmarks/hopper.py does)
    and return the lines linking them."""
    (out / folder).mkdir(parents=True, exist_ok=True)
    lines = []
    for stem in ("learning_curves", "dataset_returns", "performance_profile"):
        src = report_dir / f"{stem}_{env}.png"
        if src.is_file():
            shutil.copyfile(src, out / folder / src.name)
            lines.append(f"![{stem.replace('_', ' ')}]({folder}/{src.name})")
    return "\n".join(lines)


def env_section(env: str, preset: str, root: Path, levels: list[str], device: str,
                workers: int, out: Path, folder: str) -> tuple[pd.DataFrame, str]:
    """Reproduce one env of the page: its rows of the CSV and its Markdown section (its plots
    copied into ``out/folder``)."""
    t = time.perf_counter()
    table = reproduce(env_id=env, preset=preset, root=root, device=device, workers=workers,
                      levels=levels)
    wall = time.perf_counter() - t
    report_dir = root / "reports" / env / preset
    timings = json.loads((report_dir / "timings.json").read_text())
    table, aggregates, runs = restrict(table, root / "runs" / preset, levels, env)
    profile = report_dir / f"performance_profile_{env}.png"
    md = f"""## {env}

Wall time {wall / 60:.1f} min ({reused_note(timings)}). Reference scores and recipe:

{references(preset_datasets(env, preset, root, device, levels))}

{env_markdown(table, aggregates, env, profile=str(profile), runs=runs)}
{stages_section(timings, report_dir)}
{plots(report_dir, env, out, folder)}
"""
    return table, md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--page", required=True, choices=sorted(PAGES))
    p.add_argument("--tiny", action="store_true",
                   help="the <page>-tiny preset on the page's first env (toy sizes)")
    p.add_argument("--levels", nargs="+", default=None,
                   help="dataset levels (default: the page's: pointmaze expert, minigrid "
                        "random medium expert)")
    p.add_argument("--root", type=Path, default=Path("data"), help="reproduce output root")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS, help="where the .md/.csv go")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    page = PAGES[args.page]
    preset = f"{page.preset}-tiny" if args.tiny else page.preset
    envs = page.envs[:1] if args.tiny else page.envs
    levels = list(args.levels or page.levels)
    stem = f"{args.page}-tiny" if args.tiny else args.page
    t = time.perf_counter()
    parts = [env_section(env, preset, args.root, levels, args.device, args.workers,
                         args.out, stem) for env in envs]
    wall = time.perf_counter() - t
    args.out.mkdir(parents=True, exist_ok=True)
    pd.concat([tb for tb, _ in parts], ignore_index=True).to_csv(args.out / f"{stem}.csv",
                                                                 index=False)
    command = "python " + shlex.join(["-m", "benchmarks.goal_pages", *(argv or sys.argv[1:])])
    spec = PRESETS[preset]
    md = f"""# {page.title} (preset `{preset}`)

Command: `{command}` (wall time {wall / 60:.1f} min, {args.workers} worker process(es)).

Machine: {machine()}. Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}.

Preset: {spec.description}
Training seeds {list(spec.seeds)}; {spec.evaluate.get('episodes')} test episodes per seed, the
same episodes for every method; targets chosen on {spec.evaluate.get('validation_episodes')}
validation episodes. Train overrides: `{json.dumps(spec.train)}`; per method:
`{json.dumps(spec.method_train)}`; reference rows' updates: `{json.dumps(spec.reference_steps)}`.

Cells as in benchmarks/results/pendulum.md: the mean over runs (training seeds; for the
baselines, evaluation seeds) with a 95% bootstrap interval over runs and the D4RL normalized
score `100 (R - ref_min) / (ref_max - ref_min)`.

{ROWS_NOTE}

""" + "\n".join(md for _, md in parts)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
