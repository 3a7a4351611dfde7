"""``offline-dt`` command line: one subcommand per stage, flags built from the stage configs.

    offline-dt generate   --env Pendulum-v1            datasets (D4RL HDF5 + Minari)
    offline-dt datasets                                 list what exists
    offline-dt train      --dataset ID_OR_PATH         train a Decision Transformer
    offline-dt evaluate   --checkpoint PATH            return-conditioned rollouts
    offline-dt report     --runs data/runs             average-reward table and plots
    offline-dt reproduce  --env Pendulum-v1 --preset quick   the whole study

Each flag is a field of the stage's dataclass (``GenerateConfig``, ``TrainConfig``,
``EvalConfig``), so the CLI mirrors the Python API.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from offline_dt.config import add_arguments, from_arguments


def _generate(args: argparse.Namespace) -> int:
    from datagen.generate import GenerateConfig, generate

    if args.list:
        return _datasets(args)
    cfg = from_arguments(GenerateConfig, args)
    result = generate(cfg)
    print(result)
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from offline_dt.data.catalog import list_datasets

    out_dir = getattr(args, "out_dir", None) or Path("data/d4rl")
    table = list_datasets(out_dir, getattr(args, "minari_root", None))
    if table.empty:
        print(f"no datasets under {out_dir} or the Minari root")
    else:
        print(table.to_string(index=False))
    return 0


def _train(args: argparse.Namespace) -> int:
    from offline_dt.train import TrainConfig, train

    cfg = from_arguments(TrainConfig, args)
    if not cfg.dataset:
        raise SystemExit("offline-dt train: --dataset ID_OR_PATH is required")
    hook = None
    if cfg.eval_every > 0:
        from offline_dt.evaluate import make_eval_hook_for_training

        hook = make_eval_hook_for_training(cfg)
    result = train(cfg, eval_hook=hook)
    print(result)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from offline_dt.evaluate import EvalConfig, evaluate_checkpoint

    cfg = from_arguments(EvalConfig, args)
    if not cfg.checkpoint:
        raise SystemExit("offline-dt evaluate: --checkpoint PATH is required")
    result = evaluate_checkpoint(cfg)
    print(result)
    return 0


def _report(args: argparse.Namespace) -> int:
    from offline_dt.report import report

    table = report(args.runs, args.out)
    print(table.to_string(index=False))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from offline_dt.pipeline import reproduce

    reproduce(env_id=args.env, preset=args.preset, root=args.root, device=args.device,
              workers=args.workers, levels=args.levels)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offline-dt",
        description="Offline RL datasets and Decision Transformers, end to end.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="roll out agents and write D4RL HDF5 + Minari datasets")
    from datagen.generate import GenerateConfig

    add_arguments(p, GenerateConfig)
    p.add_argument("--env", dest="env_id", default=None, help="alias of --env-id")
    p.add_argument("--list", action="store_true", help="list existing datasets and exit")
    p.set_defaults(func=_generate)

    p = sub.add_parser("datasets", help="list generated datasets (id, steps, episodes, returns)")
    p.add_argument("--out-dir", type=Path, default=Path("data/d4rl"), help="HDF5 directory")
    p.add_argument("--minari-root", type=Path, default=None,
                   help="Minari datasets root (default data/minari or $MINARI_DATASETS_PATH)")
    p.set_defaults(func=_datasets)

    from offline_dt.train import TrainConfig

    p = sub.add_parser("train", help="train a Decision Transformer (or BC) on a dataset")
    add_arguments(p, TrainConfig)
    p.add_argument("--env", dest="env_id", default=None, help="alias of --env-id")
    p.set_defaults(func=_train)

    from offline_dt.evaluate import EvalConfig

    p = sub.add_parser("evaluate", help="roll out a trained checkpoint on the live env")
    add_arguments(p, EvalConfig)
    p.add_argument("--env", dest="env_id", default=None, help="alias of --env-id")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("report", help="average-reward table (CSV, Markdown) and plots")
    p.add_argument("--runs", type=Path, default=Path("data/runs/quick"),
                   help="run directories root: data/runs/<preset> for reproduce runs")
    p.add_argument("--out", type=Path, default=Path("data/reports"), help="output directory")
    p.set_defaults(func=_report)

    from offline_dt.pipeline import PRESETS
    from offline_dt.report import LEVELS

    p = sub.add_parser("reproduce", help="generate → train → evaluate → report, one command")
    p.add_argument("--env", default="Pendulum-v1", help="Gymnasium env id")
    p.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help="budget preset (default: quick)")
    p.add_argument("--levels", nargs="+", default=None, choices=list(LEVELS),
                   help="dataset levels (default: all six)")
    p.add_argument("--root", type=Path, default=Path("data"), help="output root")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once, one process each with cpu_count/workers torch "
                        "threads (default 1; 2 is faster on a 2-core CPU for small presets)")
    p.set_defaults(func=_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"offline-dt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
