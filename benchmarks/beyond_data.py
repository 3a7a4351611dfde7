"""Learning above the data: value-guided DT designs against DT on poor Pendulum data.

    python -m benchmarks.beyond_data                           # the sweep below, 1 seed
    python -m benchmarks.beyond_data --seeds 0 1 2 --variants dt qt

Trains every variant of :data:`VARIANTS` on each level (the paper preset's network and
budget: ``offline_dt.study.presets.PRESETS["paper"].train``) with
``offline_dt.training.loop.train``, evaluates each with
``offline_dt.evaluation.evaluate.evaluate_checkpoint`` (targets chosen as the evaluator chooses
them; see the eval.json ``headline_rule`` quoted in the output), and writes
``benchmarks/results/beyond_data.{md,csv}``: mean test return per variant, level and seed, the
training seconds per update (the critic's cost) and the command. Runs live under
``data/runs/beyond_data/<level>/<variant>/seed<k>``; a run with an ``eval.json`` is reused. Needs
the Pendulum datasets (``offline-dt generate``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from offline_dt.evaluation.evaluate import EvalConfig
from offline_dt.methods import get_method
from offline_dt.study.presets import PRESETS
from offline_dt.study.reuse import train_and_evaluate
from offline_dt.study.tables import to_markdown
from offline_dt.training import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (method, method_options, what it is)
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "dt": ("dt", {}, "Decision Transformer (reference)"),
    "qt": ("qt", {}, "qt as shipped: QT's Q term + advantage weights (eta 1, beta 10), MLP "
                     "IQL critic"),
    "qt-beta3": ("qt", {"beta": 3}, "qt with IQL's beta 3"),
    "qt-transformer-beta3": ("qt", {"critic": "transformer", "beta": 3},
                             "qt-beta3 with the transformer critic"),
    "qt-transformer": ("qt", {"critic": "transformer"}, "qt with the transformer critic"),
    "qt-no-weights": ("qt", {"beta": 0}, "QT as published: Q term only (beta 0), MLP critic"),
    # weaker terms, for a per-dataset choice on validation episodes
    "qt-eta0.1": ("qt", {"eta": 0.1}, "qt with a weaker Q term (eta 0.1)"),
    "qt-gentle": ("qt", {"eta": 0.1, "beta": 1}, "qt with both terms weak (eta 0.1, beta 1)"),
    "qt-off": ("qt", {"eta": 0, "beta": 0}, "check: qt with both terms off (the actor is "
                                                "a plain DT beside a critic it never uses)"),
    "aw-dt": ("qt", {"eta": 0}, "advantage-weighted DT at qt's beta 10: weights only (eta 0), "
                                  "MLP critic"),
    "aw-dt-beta3": ("qt", {"eta": 0, "beta": 3},
                    "advantage-weighted DT: weights only (eta 0, beta 3), MLP critic"),
    "qt-beta3-rate0.02": ("qt", {"beta": 3, "target_rate": 0.02},
                          "qt-beta3 with a faster target critic (target_rate 0.02)"),
    # tried on medium-replay (2,500 transitions): a smaller critic, weaker weights, a higher
    # expectile
    "qt-small-critic": ("qt", {"hidden": 64}, "qt with a 2 x 64 MLP critic"),
    "qt-beta1": ("qt", {"beta": 1}, "qt with beta 1 (weaker advantage weights)"),
    "qt-expectile0.9": ("qt", {"expectile": 0.9}, "qt with expectile 0.9"),
    # QDT (Yamagata et al. 2023): a plain DT on returns-to-go relabelled with learned values
    "qdt-iql": ("dt", {}, "QDT-style: dt on returns-to-go relabelled with the values of the "
                          "paper preset's d3rlpy IQL run of the same level and seed "
                          "(offline_dt.data.relabel)"),
}

#: variant -> the reference row whose values relabel its dataset (:func:`relabelled_dataset`)
RELABELLED: dict[str, str] = {"qdt-iql": "iql"}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse, or resume) and evaluate one variant × level × seed with the pipeline's
    own rules (``offline_dt.study.reuse.train_and_evaluate``: a run is reused when its config,
    method options included, matches and its eval.json chose on validation episodes); its
    result row. A fresh training records its wall seconds per update in ``timing.json``."""
    torch.set_num_threads(job["threads"])
    method, options, _ = VARIANTS[job["variant"]]
    run_dir = Path(job["root"]) / job["level"] / job["variant"] / f"seed{job['seed']}"
    dataset = (relabelled_dataset(job) if job["variant"] in RELABELLED else job["dataset"])
    tcfg = TrainConfig(dataset=dataset, env_id="Pendulum-v1", method=method,
                       method_options=options, seed=job["seed"], device="cpu",
                       run_dir=run_dir, progress=False,
                       **{**PRESETS["paper"].train, "eval_every": 0, "steps": job["steps"]})
    ecfg = EvalConfig(checkpoint=run_dir, env_id="Pendulum-v1", seed=job["seed"],
                      device="cpu", episodes=job["episodes"])
    _, seconds = train_and_evaluate(tcfg, ecfg, None)
    if seconds["train"] > 0:
        (run_dir / "timing.json").write_text(json.dumps(
            {"train_seconds": seconds["train"],
             "ms_per_update": 1000.0 * seconds["train"] / job["steps"]}))
    return read_row(job)


def relabelled_dataset(job: dict[str, Any]) -> str:
    """The QDT-relabelled copy of the job's dataset (written once, atomically, under
    ``<root>/relabelled/``): values ``V(s') = mean Q(s', a ~ pi)`` of the reference run
    ``<critic_root>/pendulum-<level>-v0/<RELABELLED[variant]>/seed<k>``, which must exist
    (``python -m benchmarks.pendulum --preset paper`` trains it)."""
    from offline_dt.data import load_dataset, write_hdf5
    from offline_dt.data.relabel import qdt_relabel
    from offline_dt.study.reference import load_reference, policy_values

    critic = (Path(job["critic_root"]) / Path(job["dataset"]).stem
              / RELABELLED[job["variant"]] / f"seed{job['seed']}")
    out = (Path(job["root"]) / "relabelled"
           / f"{Path(job['dataset']).stem}-{job['variant']}-seed{job['seed']}.hdf5")
    if not out.is_file():
        data = load_dataset(job["dataset"])
        values = policy_values(load_reference(critic), data.next_observations, seed=job["seed"])
        out.parent.mkdir(parents=True, exist_ok=True)
        write_hdf5(qdt_relabel(data, values, {"critic": str(critic)}), out)
    return str(out)


def read_row(job: dict[str, Any]) -> dict[str, Any]:
    """One finished run's result row (its eval.json and timing.json)."""
    run_dir = Path(job["root"]) / job["level"] / job["variant"] / f"seed{job['seed']}"
    ev = json.loads((run_dir / "eval.json").read_text())
    timing = json.loads((run_dir / "timing.json").read_text())
    sel = ev["selection"]
    val = sel["validation"][sel["chosen_index"]]["mean"] if sel["validation"] else None
    return {"level": job["level"], "variant": job["variant"], "seed": job["seed"],
            "validation_return": val, "mean_return": ev["mean_return"], "ci95_episodes": ev["ci95"],
            "episodes": ev["episodes"], "headline_target": ev.get("headline_target"),
            "headline_settings": json.dumps(ev.get("headline_settings") or {}),
            "headline_rule": ev.get("headline_rule"),
            "ms_per_update": round(timing["ms_per_update"], 2),
            "train_seconds": round(timing["train_seconds"], 1)}


def collect(args: argparse.Namespace) -> pd.DataFrame:
    """Rows of every finished run under ``args.root`` (this call's and earlier calls'), for
    the variants of :data:`VARIANTS`, in their order: the results page holds all of them."""
    jobs = []
    for level_dir in sorted(Path(args.root).iterdir()) if Path(args.root).is_dir() else []:
        for variant in VARIANTS:
            for run in sorted((level_dir / variant).glob("seed*")):
                ev = run / "eval.json"
                if ev.is_file() and "selection" in json.loads(ev.read_text()):
                    jobs.append({"level": level_dir.name, "variant": variant,
                                 "seed": int(run.name[4:]), "root": str(args.root),
                                 "threads": 1, "steps": 0, "episodes": None})
    return pd.DataFrame([read_row(j) for j in jobs])


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Variant × level: mean over seeds of the mean test return (± seed-level 95% CI when
    several seeds), and the median ms per update."""
    rows = []
    for (variant, level), g in df.groupby(["variant", "level"], sort=False):
        m = g["mean_return"]
        ci = 1.96 * m.std(ddof=1) / len(m) ** 0.5 if len(m) > 1 else float("nan")
        rows.append({"variant": variant, "level": level, "seeds": len(m),
                     "validation_return": round(g["validation_return"].mean(), 1),
                     "mean_return": round(m.mean(), 1), "ci95_seeds": round(ci, 1),
                     "ms_per_update": g["ms_per_update"].median()})
    return pd.DataFrame(rows)


NOTES = """## Notes

- Designs tried (rows above): QT's Q term alone (`qt-no-weights`, QT as published but with the
  in-sample IQL critic), advantage weights alone (`aw-dt-beta3`, AWR/IQL policy extraction on
  the DT's action loss), both (`qt`, `qt-beta3`), the transformer critic against the MLP
  critic (`qt-transformer*`), a faster target critic (`qt-beta3-rate0.02`), and QDT
  (`qdt-iql`, Yamagata et al. 2023): a plain DT trained on returns-to-go relabelled backwards
  with `g_t = r_t + max(g_{t+1}, V(s_{t+1}))` (`offline_dt/data/relabel.py`), `V` the mean Q
  of d3rlpy's IQL policy (the paper preset's `iql` run of the same level and seed, the best
  row on random in `pendulum.md`) over 10 sampled actions, as d3rlpy's QDT reproduction
  computes it. QDT does not help here: as in the paper, a discounted value (gamma 0.99, a
  horizon of about 100 steps) is compared with an undiscounted 200-step return-to-go, so on
  Pendulum's all-negative rewards `V` wins at almost every step (the relabelled files'
  metadata count the episodes raised: all of them on both levels), every episode's
  returns-to-go become a short-horizon value, and at evaluation the target no longer falls
  the way the labels did.
- The transformer critic reads the same window as the actor with the return-to-go tokens
  zeroed (the realised return would let it regress to the behaviour's Monte Carlo return).
  The cost of each critic per update, measured side by side in one process:
  `benchmarks/results/beyond_data_cost.md`. The `ms_per_update` column here was measured
  while other jobs shared the machine and is not a speed figure.
- pendulum-medium-replay holds 2,500 transitions in 13 episodes. The rows above on it are the
  designs (weights, Q term, critic type, beta); the regularisation variants defined in the
  script (`qt-small-critic`, `qt-beta1`, `qt-expectile0.9`) had not run when this page was
  written unless they appear above. The paper-preset rows with 3 seeds are in
  `benchmarks/results/pendulum-beyond-data.md`.
- Good data (expert, one seed): every variant that uses the critic falls well below `dt` --
  advantage weights alone (`aw-dt`, `aw-dt-beta3`'s beta raised to qt's), the Q term alone
  (`qt-no-weights`), both (`qt`, `qt-beta3`) -- while `qt-off` (both terms off, the critic
  trained beside the actor but never used) matches `dt`: the two terms themselves, not the
  machinery, hurt on narrow expert data, where the critic's advantages and its Q gradient
  are extrapolation noise. Their strength has to depend on the dataset (QT tunes eta per
  dataset). No single weaker setting serves both ends: `qt-eta0.1` keeps qt's gain on random
  but is still far below `dt` on expert, and `qt-gentle` (eta 0.1, beta 1) comes closer to
  `dt` on expert yet loses most of the gain on random (rows above; random seed 0, expert
  seed 1).
- What shipped: a per-dataset choice among candidates that include `qt-off`. The presets
  train, beside each qt run (eta 1, beta 10), a terms-off run (eta 0, beta 0) of the same
  seed (`Preset.method_candidates`), and the evaluation chooses among both checkpoints'
  targets and inference settings on validation episodes (`EvalConfig.candidate_checkpoints`).
  With it the paper table (`pendulum.md`, 3 seeds, all six levels) has qt at or above dt on
  every level; its note counts which checkpoint each run chose (the terms-on run on random and
  medium-replay, mostly the terms-off run where the data is good).
- QT's inference (the critic picks among the actions for 5 returns-to-go, `q_candidates`) is
  one of the candidates each checkpoint chooses among on validation episodes
  (`headline_settings`).
"""


def write(df: pd.DataFrame, args: argparse.Namespace, command: str, wall: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / "beyond_data.csv", index=False)
    lines = ["# Beyond the data: value-guided DT designs on Pendulum", "",
             f"Command (the last call; the page collects every run under `{args.root}`, each "
             f"made by a call of this script naming its level and variant): `{command}`  ",
             f"Machine: {platform.machine()}, "
             f"{multiprocessing.cpu_count()} CPU cores; python {platform.python_version()}, "
             f"torch {torch.__version__}; wall {wall:.0f} s  ",
             f"Budget: the paper preset's network, {args.steps} updates per run, "
             f"{args.episodes} test episodes per run.", "", "## Variants", ""]
    lines += [f"- `{k}`: {v[2]} (`--method {v[0]}` "
              f"{' '.join(f'{a} {b}' for a, b in v[1].items()) or 'defaults'})"
              for k, v in VARIANTS.items() if k in set(df["variant"])]
    rules = sorted({str(r) for r in df["headline_rule"].dropna()})
    lines += ["", "Target choice (eval.json headline_rule): " + "; ".join(rules), "",
              "Designs are compared on `validation_return` (the chosen candidate's mean on "
              "the validation episodes); `mean_return` is on the test episodes.", "",
              "## Mean return (mean over seeds)", "", to_markdown(summary(df)), "",
              "## Every run", "", to_markdown(df.drop(columns=["headline_rule"])), "", NOTES]
    (RESULTS / "beyond_data.md").write_text("\n".join(lines))


def update_cost(dataset: str, variants: list[str], rounds: int = 5, steps: int = 20
                ) -> pd.DataFrame:
    """Median ms per update of each variant at the paper preset's size, measured in one process
    in interleaved blocks (the same machine state for all), and the ratio to ``dt``'s."""
    from offline_dt.data import load_dataset
    from offline_dt.data.windows import Normalizer, WindowSampler
    from offline_dt.training.step import make_optimizer, train_step

    torch.set_num_threads(1)
    data = load_dataset(dataset)
    norm = Normalizer.fit(data)
    setups = {}
    for name in variants:
        method, options, _ = VARIANTS[name]
        cfg = TrainConfig(method=method, method_options=options, device="cpu",
                          **{**PRESETS["paper"].train, "eval_every": 0})
        m = get_method(method)
        net = m.build(cfg.model_config(data.obs_dim, data.act_dim, data.discrete), options)
        opt, sched = make_optimizer(net, cfg)
        sampler = WindowSampler(data, norm, cfg.context_length, 1000, seed=0)
        setups[name] = (m, net, opt, sched, sampler, cfg)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (m, net, opt, sched, sampler, cfg) in setups.items():
            t = time.perf_counter()
            for _ in range(steps):
                train_step(net, opt, sched, sampler.sample(cfg.batch_size), cfg, m)
            times[name].append(1000 * (time.perf_counter() - t) / steps)
    med = {k: float(pd.Series(v).median()) for k, v in times.items()}
    return pd.DataFrame([{"variant": k, "ms_per_update": round(v, 1),
                          "ratio_to_dt": round(v / med["dt"], 2) if "dt" in med else None}
                         for k, v in med.items()])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", nargs="+", default=["random", "medium-replay"])
    ap.add_argument("--variants", nargs="+", default=["dt", "qt", "qt-transformer"],
                    choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=PRESETS["paper"].train["steps"])
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--data-dir", type=Path, default=Path("data/d4rl"))
    ap.add_argument("--root", type=Path, default=Path("data/runs/beyond_data"))
    ap.add_argument("--critic-root", type=Path, default=Path("data/runs/paper/Pendulum-v1"),
                    help="where the reference runs that relabel QDT variants live")
    ap.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    ap.add_argument("--cost", action="store_true",
                    help="only measure ms per update of --variants on the first level "
                         "(one process, interleaved) into results/beyond_data_cost.md")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.beyond_data " + shlex.join(argv or sys.argv[1:])
    if args.cost:
        cost = update_cost(str(args.data_dir / f"pendulum-{args.levels[0]}-v0.hdf5"),
                           args.variants)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "beyond_data_cost.md").write_text("\n".join([
            "# Cost of the critic per update", "", f"Command: `{command}`  ",
            f"Machine: {platform.machine()}, {multiprocessing.cpu_count()} CPU cores, one "
            f"thread; python {platform.python_version()}, torch {torch.__version__}  ",
            "The paper preset's network and batch; median of 5 interleaved blocks of 20 "
            "updates.", "", to_markdown(cost), ""]))
        print((RESULTS / "beyond_data_cost.md").read_text())
        return 0
    jobs = [{"level": lv, "variant": v, "seed": s, "steps": args.steps,
             "episodes": args.episodes, "root": str(args.root), "threads": 1,
             "critic_root": str(args.critic_root),
             "dataset": str(args.data_dir / f"pendulum-{lv}-v0.hdf5")}
            for lv in args.levels for s in args.seeds for v in args.variants]
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        list(pool.map(run_one, jobs))
    write(collect(args), args, command, time.perf_counter() - t0)
    print((RESULTS / "beyond_data.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
