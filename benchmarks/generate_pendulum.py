"""Benchmark ``datagen.generate`` on its defaults (Pendulum-v1, all six D4RL levels).

Writes into a scratch directory (``--root``, default /tmp/offline-dt-gen-bench, with
overwrite) and reports per-stage wall seconds, machine and package versions to
``benchmarks/results/generate.md`` and ``.json``.

    python -m benchmarks.generate_pendulum [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

from datagen.config import GenerateConfig, config_dict, package_versions
from datagen.generate import generate

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/offline-dt-gen-bench"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = GenerateConfig(out_dir=args.root / "d4rl", minari_root=args.root / "minari",
                         agents_dir=args.root / "agents", overwrite=True)
    t0 = time.perf_counter()
    res = generate(cfg)
    wall = time.perf_counter() - t0
    out = {
        "command": "python -m benchmarks.generate_pendulum " + " ".join(sys.argv[1:]),
        "config": config_dict(cfg),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(),
                    "load_average_1_5_15_at_end": list(os.getloadavg())},
        "versions": package_versions(),
        "stage_seconds": res.stage_seconds,
        "wall_seconds": wall,
        "ref_min_score": res.ref_min_score,
        "ref_max_score": res.ref_max_score,
        "medium_checkpoint": {k: (str(v) if isinstance(v, Path) else v)
                              for k, v in (res.medium_checkpoint or {}).items()},
        "summaries": res.summaries,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generate.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    lines = [
        "# datagen.generate benchmark (Pendulum-v1 defaults, all six levels)",
        "",
        f"Command: `{out['command']}`  ",
        f"Machine: {out['machine']['platform']}, {out['machine']['cpu_count']} CPUs, load "
        f"average at end {out['machine']['load_average_1_5_15_at_end']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()),
        "",
        f"ref_min_score {res.ref_min_score:.2f}, ref_max_score {res.ref_max_score:.2f}; "
        f"medium checkpoint: {out['medium_checkpoint']}",
        "",
        "| stage | wall s |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in res.stage_seconds.items()],
        "",
        "| level | steps | episodes | return mean | std | min | max |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {lv} | {s['steps']} | {s['episodes']} | {s['return_mean']:.1f} | "
          f"{s['return_std']:.1f} | {s['return_min']:.1f} | {s['return_max']:.1f} |"
          for lv, s in res.summaries.items()],
        "",
    ]
    (RESULTS / "generate.md").write_text("\n".join(lines))
    print(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
