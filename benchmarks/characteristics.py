"""Dataset characteristics (TQ, SACo; Schweighofer et al. 2022, offline_dt.data.characteristics)
of the Pendulum-v1 datasets, as ``offline-dt datasets`` computes them.

Reads the D4RL-style files of ``--d4rl-dir`` (default: ``data/d4rl``, else ``data/smoke/d4rl``,
whichever holds Pendulum datasets); when none does, generates them into ``--scratch`` first,
in the paper's design of equal sizes: a SAC agent trained ``--steps`` env steps (its whole
replay buffer is ``full-replay``) and ``--steps`` transitions for each of random, medium and
expert (``medium-expert`` twice that; ``medium-replay`` the buffer up to the medium
checkpoint), reference scores over 20 episodes (SAC dominates: 447 s at 10k on 2 shared,
loaded cores; the characteristics themselves take under a second). Writes
``benchmarks/results/dataset-characteristics.md`` and ``dataset-characteristics.png`` (TQ
against SACo, one point per level).

    python -m benchmarks.characteristics [--d4rl-dir DIR] [--scratch DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.machine import cpu_model, versions
from datagen.config import GenerateConfig
from offline_dt.data.catalog import list_datasets

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "Pendulum-v1"
PAGE = "dataset-characteristics"


def _has_pendulum(d: Path) -> bool:
    return d.is_dir() and any(d.glob("pendulum-*.hdf5"))


def find_or_generate(d4rl_dir: Path | None, scratch: Path, steps: int
                     ) -> tuple[Path, str, float]:
    """(directory of the Pendulum HDF5 files, where they came from, generation seconds)."""
    if d4rl_dir is not None:
        return d4rl_dir, f"`{d4rl_dir}` (given)", 0.0
    for d in (Path("data/d4rl"), Path("data/smoke/d4rl")):
        if _has_pendulum(d):
            return d, f"`{d}` (found)", 0.0
    from datagen.generate import generate

    sizes = {"agent_steps": steps, "random_steps": steps, "medium_steps": steps,
             "expert_steps": steps, "ref_episodes": 20, "eval_episodes": 5}
    cfg = GenerateConfig(env_id=ENV, out_dir=scratch / "d4rl", minari_root=scratch / "minari",
                         agents_dir=scratch / "agents", overwrite=True, **sizes)
    t = time.perf_counter()
    generate(cfg)
    return (cfg.out_dir, f"`{cfg.out_dir}`, generated with `GenerateConfig({sizes})`",
            time.perf_counter() - t)


def scatter(table: pd.DataFrame, out: Path) -> None:
    """TQ (y) against SACo (x), each point labelled with its dataset id."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(table["saco"], table["tq"])
    for _, r in table.iterrows():
        ax.annotate(r["id"].removeprefix("pendulum-").removesuffix("-v0"),
                    (r["saco"], r["tq"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("SACo (unique state-action bins / full-replay's)")
    ax.set_ylabel("TQ ((mean return - random) / (expert - random))")
    ax.set_title(f"{ENV} datasets")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def page(table: pd.DataFrame, source: str, gen_s: float, char_s: float) -> str:
    cols = ["id", "steps", "episodes", "return_mean", "tq", "unique_sa", "saco"]
    return "\n".join([
        f"# Dataset characteristics of the {ENV} datasets (TQ, SACo)", "",
        "Trajectory Quality and State-Action Coverage of Schweighofer et al. 2022 (\"A Dataset "
        "Perspective on Offline Reinforcement Learning\"), as `offline-dt datasets` lists "
        "them (`offline_dt.data.characteristics`): TQ = (mean episode return - ref_min_score) "
        "/ (ref_max_score - ref_min_score); `unique_sa` = distinct (state, action) cells with "
        "every dimension cut into 100 equal-width bins between its min and max over all "
        "these datasets (one grid for all); SACo = `unique_sa` / full-replay's.", "",
        f"Command: `python -m benchmarks.characteristics {' '.join(sys.argv[1:])}`".rstrip()
        + "  ", f"Datasets: {source}  ",
        f"Machine: {cpu_model()}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items()) + "  ",
        f"Time: generation {gen_s:.1f} s, characteristics {char_s:.1f} s.", "",
        table[cols].to_markdown(index=False, floatfmt=".3f"), "",
        f"![TQ against SACo]({PAGE}.png)", "",
        "`unique_sa` cannot exceed a dataset's steps, so SACo also reflects dataset size: "
        "the paper compares datasets of equal size, as generated here (medium-expert is two "
        "datasets, medium-replay part of the buffer). TQ above 1 or below 0 means a dataset "
        "better than the expert reference or worse than random.", ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d4rl-dir", type=Path, default=None)
    p.add_argument("--scratch", type=Path, default=Path("/tmp/offline-dt-characteristics"))
    p.add_argument("--steps", type=int, default=10_000)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    d4rl_dir, source, gen_s = find_or_generate(args.d4rl_dir, args.scratch, args.steps)
    t = time.perf_counter()
    table = list_datasets(d4rl_dir, args.scratch / "no-minari")
    char_s = time.perf_counter() - t
    table = table[table["env"] == ENV].reset_index(drop=True)
    if table.empty:
        raise SystemExit(f"no {ENV} datasets under {d4rl_dir}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    scatter(table, RESULTS / f"{PAGE}.png")
    (RESULTS / f"{PAGE}.md").write_text(page(table, source, gen_s, char_s))
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
