"""The scripted recipes' reference scores (``datagen/maze.py``, ``datagen/minigrid.py``): the
noise-free expert against the uniform random agent on evaluation episodes of each env, the
``ref_max_score`` / ``ref_min_score`` that ``offline-dt generate`` records.

    python -m benchmarks.recipes --out benchmarks/results/recipes.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_model, versions
from datagen.scripted import recipe_for, reference_returns

#: (env id, evaluation episodes per agent).
ENVS = (("PointMaze_UMaze-v3", 50), ("PointMaze_Medium-v3", 30), ("PointMaze_Large-v3", 30),
        ("MiniGrid-FourRooms-v0", 100))


def _cell(returns: np.ndarray) -> str:
    sem = returns.std(ddof=1) / np.sqrt(len(returns))
    return f"{returns.mean():.3g} ± {sem:.2g} (success {np.mean(returns > 0):.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/recipes.md"))
    args = p.parse_args(argv)
    rows = ["| env | episodes | expert | random |", "|---|---|---|---|"]
    for env_id, n in ENVS:
        recipe = recipe_for(env_id)
        expert = reference_returns(recipe, env_id, True, n, args.seed)
        random = reference_returns(recipe, env_id, False, n, args.seed)
        rows.append(f"| {env_id} | {n} | {_cell(expert)} | {_cell(random)} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "# Scripted recipes: reference scores", "",
        f"Command: `python -m benchmarks.recipes --seed {args.seed} --out {args.out}`", "",
        f"Machine: {cpu_model()}; versions: {json.dumps(versions())}", "",
        "Mean return ± standard error over evaluation episodes of the env as registered "
        "(`datagen.scripted.reference_returns`, seed "
        f"{args.seed}); success: return > 0. Expert: the recipe's noise-free expert (the "
        "PointMaze waypoint planner and PD controller, the MiniGrid BFS expert at epsilon 0); "
        "random: the uniform random agent.", "", *rows, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
