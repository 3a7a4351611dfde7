"""The search stage of ``reproduce --search`` alone, timed: what a study of a preset's rows
costs on this machine, and what it chose (issue 34's "a search of 16 trials on one level fits
in one hour on 2 cores at the paper preset's size").

    python -m benchmarks.search_cost --preset paper --levels random --methods qt --trials 16 \\
        --workers 2 --root data
    python -m benchmarks.search_cost --preset smoke --levels expert --methods dt --trials 2 \\
        --root /tmp/s --out /tmp/s        # toy: seconds

The preset's datasets are generated under ``--root`` as ``reproduce`` generates them
(``offline_dt.study.pipeline.preset_datasets``), then every (level, method) study runs as
``reproduce --search TRIALS`` runs it (``offline_dt.study.tuning.search_stage``: the preset's
budget, the method's whole search space, TPE, median pruning, validation episodes only, seed
``SEARCH_SEED``), in the same place: ``<root>/runs/<preset>/<env>/<dataset>/<method>-tuned/
search/``. So ``offline-dt reproduce --preset P --root ROOT --search TRIALS`` afterwards finds
these studies complete and goes straight to the tuned rows; a killed run of this script
continues its studies where they stopped (SQLite storage).

It writes ``<out>/search-cost-<preset>.md``: per study its trials (complete, pruned, failed),
the study's wall time, the sum of its trials' seconds, the best validation return and the
parameters chosen; the machine, cores, workers, versions and the command. A study that was
already complete when the script started is marked reused (its wall time is not a cost).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.machine import cpu_model, versions

RESULTS = Path(__file__).resolve().parent / "results"


def run_studies(preset: str, env_id: str, root: Path, device: str, paths: dict[str, Path],
                methods: list[str], trials: int, workers: int) -> None:
    """Run (or continue) the study of every (level, method), timed; each study's ``cost.json``
    (beside its ``study.db``) adds this run's wall time to the earlier runs' (a study
    continued after a kill, or in a later session, sums its runs), unless the study was
    complete before (then nothing is added: its wall time here is no cost)."""
    from offline_dt.study.presets import PRESETS
    from offline_dt.study.tuning import run_study_of, study_config, study_dir
    from offline_dt.training.configs import save_json

    p = PRESETS[preset]
    for dataset in paths.values():
        for method in methods:
            out = study_dir(root, preset, env_id, dataset, method)
            complete_before = _finished(out) >= trials
            t = time.perf_counter()
            run_study_of(study_config(p, method, str(dataset), env_id, device, out, trials,
                                      workers))
            cost = _cost(out)
            if not complete_before:
                cost["wall_s"] = round(cost.get("wall_s", 0.0) + time.perf_counter() - t, 1)
                cost["runs"] = cost.get("runs", 0) + 1
                cost["machine"] = (f"{cpu_model()}, {os.cpu_count()} cores, "
                                   f"{workers} workers")
                save_json(cost, out / "cost.json")  # a study complete before (say made by
                # reproduce --search) gets none: the page lists only studies it has timed


def _cost(out: Path) -> dict:
    f = out / "cost.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _finished(out: Path) -> int:
    """Complete + pruned trials already in the study at ``out`` (0 when there is none)."""
    csv = out / "trials.csv"
    if not csv.is_file():
        return 0
    return int(pd.read_csv(csv)["state"].isin(["COMPLETE", "PRUNED"]).sum())


def study_rows(root: Path, preset: str, env_id: str) -> pd.DataFrame:
    """One row per study under ``<root>/runs/<preset>/<env_id>`` that has a ``cost.json``:
    its dataset, method, trials by state, wall time (``cost.json``), the sum of its trials'
    seconds, the best validation return and the chosen parameters (``best.json``)."""
    rows = []
    base = Path(root) / "runs" / preset / env_id
    for cost_file in sorted(base.glob("*/*-tuned/search/cost.json")):
        out = cost_file.parent
        best, cost = json.loads((out / "best.json").read_text()), _cost(out)
        trials = pd.read_csv(out / "trials.csv")
        rows.append({
            "dataset": out.parent.parent.name,
            "method": out.parent.name.removesuffix("-tuned"),
            "complete": best["complete"], "pruned": best["pruned"], "failed": best["failed"],
            "wall_min": round(cost["wall_s"] / 60, 1), "runs": cost["runs"],
            "trials_min": round(float(trials["seconds"].fillna(0).sum()) / 60, 1),
            "best_validation_return": round(float(best["best_value"]), 2),
            "best_params": ", ".join(f"{k}={_fmt(v)}"
                                     for k, v in best["best_params"].items()),
            "machine": cost["machine"],
        })
    return pd.DataFrame(rows)


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def page(df: pd.DataFrame, args: argparse.Namespace, command: str, wall: float) -> str:
    """The page's markdown."""
    return "\n".join([
        f"# Search cost: preset `{args.preset}`, {args.env_id}", "",
        f"Command (the last run): `{command}` (`benchmarks/search_cost.py`; wall "
        f"{wall / 60:.1f} min, datasets included).  ",
        f"Machine of the last run: {cpu_model()}, {os.cpu_count()} cores, {args.workers} "
        f"worker processes on each study ({max(1, (os.cpu_count() or 1) // args.workers)} "
        f"torch thread(s) each); 1-min load average at the end {os.getloadavg()[0]:.2f}.  ",
        f"Versions: {versions()}.", "",
        "Each study is the one `offline-dt reproduce --preset "
        f"{args.preset} --search TRIALS` runs (`offline_dt.study.tuning`): the preset's "
        "budget per trial, the method's whole search space, TPE sampling, median pruning on "
        "learning-curve points of validation episodes, each trial scored on the preset's "
        "validation episodes (never a test episode), training seed `SEARCH_SEED`. Every "
        "study under the root is listed, whichever run of this script made it. `wall_min` is "
        "the study's wall time summed over the `runs` of this script that worked on it "
        "(a run that found it complete adds nothing), on the `machine` of its last run; "
        "`trials_min` is the sum of its trials' own durations (over the workers). "
        "`best_validation_return` is the best trial's validation mean return, not a test "
        "result: the tuned rows' test returns come from the preset's seeds trained at these "
        "parameters (`reproduce --search`).", "",
        df.to_markdown(index=False) if not df.empty else "(no study)", "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--env-id", default="Pendulum-v1")
    ap.add_argument("--levels", nargs="+", default=["random"])
    ap.add_argument("--methods", nargs="+", default=["qt"],
                    help="searched rows (a transformer method or a d3rlpy reference row)")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", type=Path, default=Path("data"), help="reproduce output root")
    ap.add_argument("--out", type=Path, default=RESULTS, help="the page's directory")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    from offline_dt.study.pipeline import preset_datasets

    command = "python " + shlex.join(["-m", "benchmarks.search_cost",
                                      *(argv if argv is not None else sys.argv[1:])])
    t = time.perf_counter()
    paths = preset_datasets(args.env_id, args.preset, args.root, args.device, args.levels)
    run_studies(args.preset, args.env_id, args.root, args.device, paths, args.methods,
                args.trials, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"search-cost-{args.preset}.md"
    out.write_text(page(study_rows(args.root, args.preset, args.env_id), args, command,
                        time.perf_counter() - t))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
