"""Online Decision Transformer fine-tuning (``offline-dt finetune``), with and without TD3
gradients, beside SB3 SAC from scratch.

    python -m benchmarks.finetune            # pendulum-medium-replay, 3 seeds, 20k online steps
    python -m benchmarks.finetune --smoke    # a minute: tiny budgets, into a temp dir

Per seed ``s`` (the issue's protocol; the same seed trains, collects and evaluates):

1. **pretrain**: ``odt`` (the DT with ODT's stochastic head) trained offline on ``--dataset``
   with the paper preset's training config (``PRESETS["paper"].train``: the shape, steps and
   schedule of the ``dt`` row of benchmarks/results/pendulum.md), seed ``s``.
2. **fine-tune**: ``FinetuneConfig`` defaults (ODT's 300 updates per collected episode, a
   buffer seeded with the dataset's best trajectories, ``g_online`` = 0 for Pendulum) for
   ``--online-steps`` env steps. Learning curve: the training loop's evaluation hook on
   ``--curve-episodes`` validation episodes every ``--curve-updates`` updates. The committed
   page ran ``--updates-per-round 60``: ODT's 300 updates per 1000-step D4RL episode, per env
   step, on Pendulum's 200-step episodes (300 per episode is 5x ODT's rate and 5x the time;
   the one-seed probes in ``results/finetune-probe`` ran it and stayed flat too).
   Agent ``odt-td3`` fine-tunes the same way with TD3 gradients (``--odt.critic-weight``,
   here ``--critic-weight``; Yan, Schwing & Wang, NeurIPS 2024; the critic starts
   fresh at the fine-tune) and ``--td3-updates-per-round`` updates per episode (200: one
   update per env step, as SAC makes).
3. **test**: ``evaluate_checkpoint`` of the pretrained and of the fine-tuned run (target
   return chosen on 50 validation episodes, then ``--episodes`` test episodes), the same
   test episodes as every row of the paper table.
4. **SAC**: Stable-Baselines3 SAC with rl-zoo's Pendulum-v1 settings (MLP, lr 1e-3, the rest
   SB3's defaults) from scratch for ``--sac-steps`` env steps, its deterministic policy scored
   through our rollout engine every ``--sac-interval`` env steps on the same validation
   episodes as the curves, and at the end on the test episodes.

The page reports each fine-tune's test return and, per SAC seed, the first curve point at
which SAC's validation mean reaches the fine-tuned ODT's mean test return (over seeds): the
env steps SAC from scratch needs for the same return. Writes ``finetune.md``, ``finetune.csv``
(one row per run), ``finetune-curves.csv`` and ``finetune.png`` into ``--out``; runs live
under ``--root`` and a run with a ``result.json`` is reused.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.online import cached_run, plot, run_table
from offline_dt.envs.policies import CallablePolicy
from offline_dt.evaluation.curves import make_eval_hook
from offline_dt.evaluation.episodes import CURVE_EPISODE_OFFSET, evaluate_policy
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint
from offline_dt.study.presets import PRESETS
from offline_dt.training import TrainConfig, train
from offline_dt.training.device import resolve_device
from offline_dt.training.finetune import FinetuneConfig, finetune

RESULTS = Path(__file__).resolve().parent / "results"
DATASET = "data/d4rl/pendulum-medium-replay-v0.hdf5"
ENV = "Pendulum-v1"
#: rl-zoo's SAC hyperparameters for Pendulum-v1 (the rest are SB3's defaults).
SAC_KWARGS = {"learning_rate": 1e-3}
TINY = {"steps": 40, "warmup_steps": 10, "batch_size": 16, "context_length": 5,
        "embed_dim": 16, "n_layer": 1, "eval_every": 0, "checkpoint_every": 40}


def run_odt(job: dict[str, Any]) -> dict[str, Any]:
    """Pretrain ``odt``, fine-tune it online, test both."""
    root = Path(job["dir"])
    overrides = {**PRESETS["paper"].train, **(TINY if job["smoke"] else {}), "eval_every": 0}
    pre = TrainConfig(dataset=job["dataset"], env_id=ENV, method="odt", seed=job["seed"],
                      device=job["device"], run_dir=root / "pretrain", progress=False,
                      overwrite=True, **overrides)
    t0 = time.perf_counter()
    train(pre)
    pretrain_seconds = time.perf_counter() - t0
    ft = FinetuneConfig(
        checkpoint=str(root / "pretrain"), run_dir=root / "finetune", seed=job["seed"],
        online_steps=job["online_steps"], device=job["device"], progress=False,
        overwrite=True, eval_episodes=job["curve_episodes"],
        target_return=job["target_return"], **finetune_settings(job))
    t0 = time.perf_counter()
    finetune(ft, make_eval_hook())
    seconds = time.perf_counter() - t0
    rows = pd.read_csv(root / "finetune" / "metrics.csv")
    rows = rows.dropna(subset=["eval_return_mean"])
    curve = [(int(s), float(r)) for s, r in zip(rows["env_steps"], rows["eval_return_mean"],
                                                  strict=True)]
    tests = {name: evaluate_checkpoint(EvalConfig(
        checkpoint=root / name, episodes=job["episodes"], seed=job["seed"],
        validation_episodes=job["validation_episodes"], device=job["device"]))
        for name in ("pretrain", "finetune")}
    return {"curve": curve, "final_mean": tests["finetune"]["mean_return"],
            "final_ci95": tests["finetune"]["ci95"],
            "pretrained_mean": tests["pretrain"]["mean_return"],
            "env_steps": int(rows["env_steps"].max()) if len(rows) else job["online_steps"],
            "pretrain_seconds": pretrain_seconds, "train_seconds": seconds,
            "device": str(resolve_device(job["device"]))}


def finetune_settings(job: dict[str, Any]) -> dict[str, Any]:
    """The ``FinetuneConfig`` fields that differ between the ``odt`` and ``odt-td3`` agents:
    updates per episode, the curve's interval in updates (``--curve-updates`` at the odt
    agent's rate, so both curves have points at the same env steps) and the method options."""
    default = FinetuneConfig.updates_per_round
    plain = 20 if job["smoke"] else (job["updates_per_round"] or default)
    if job["agent"] != "odt-td3":
        return {"updates_per_round": plain, "eval_every": job["curve_updates"]}
    updates = 20 if job["smoke"] else job["td3_updates_per_round"]
    return {"updates_per_round": updates,
            "eval_every": max(1, job["curve_updates"] * updates // plain),
            "method_options": {"critic_weight": float(job["critic_weight"])}}


def _score(model: Any, job: dict[str, Any], curve: bool) -> Any:
    policy = CallablePolicy(lambda obs: model.predict(obs, deterministic=True)[0])
    if curve:
        return evaluate_policy(ENV, policy, job["curve_episodes"], job["seed"],
                               split="validation", first=CURVE_EPISODE_OFFSET).mean
    return evaluate_policy(ENV, policy, job["episodes"], job["seed"])


def run_sac(job: dict[str, Any]) -> dict[str, Any]:
    """SB3 SAC from scratch, scored every ``sac_interval`` env steps."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    curve: list[tuple[int, float]] = []

    class Curve(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % job["sac_interval"] == 0:
                curve.append((self.num_timesteps, _score(self.model, job, curve=True)))
            return True

    kw = {**SAC_KWARGS, **({"learning_starts": 50} if job["smoke"] else {})}
    model = SAC("MlpPolicy", ENV, seed=job["seed"], device="cpu", verbose=0, **kw)
    t0 = time.perf_counter()
    model.learn(job["sac_steps"], callback=Curve())
    seconds = time.perf_counter() - t0
    final = _score(model, job, curve=False)
    return {"curve": curve, "final_mean": final.mean, "final_ci95": final.ci95,
            "env_steps": job["sac_steps"], "train_seconds": seconds, "device": "cpu"}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One run (reused when its ``result.json`` exists), one torch thread."""
    return cached_run(job, run_sac if job["agent"] == "sac" else run_odt, ("agent", "seed"))


def steps_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first env step whose curve value is at least ``level`` (None: never)."""
    return next((s for s, v in sorted(curve) if v >= level), None)


def summary(results: list[dict[str, Any]], runs: pd.DataFrame) -> pd.DataFrame:
    """Per ODT agent: the mean over seeds of the test means, each seed's, the pretrained mean,
    and per SAC seed the first curve point at which SAC reaches that mean (None: never)."""
    sac = [r for r in results if r["agent"] == "sac"]
    rows = []
    for agent, group in runs[runs["agent"] != "sac"].groupby("agent", sort=False):
        level = float(group["final_mean"].mean())
        rows.append({"agent": agent, "final_mean": level,
                     "seeds": " / ".join(f"{v:.1f}" for v in group["final_mean"]),
                     "pretrained_mean": float(group["pretrained_mean"].mean()),
                     "sac_steps_to_reach": str([steps_to_reach(r["curve"], level)
                                                for r in sac])})
    return pd.DataFrame(rows)


def write(results: list[dict[str, Any]], args: argparse.Namespace, command: str,
          wall: float) -> Path:
    """The page, CSVs and plot in ``args.out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, reused = run_table(results)
    curves = pd.DataFrame([{"env": ENV, "name": r["agent"], "seed": r["seed"],
                            "env_steps": s, "return": v} for r in results for s, v in r["curve"]])
    runs.to_csv(out / "finetune.csv", index=False)
    curves.to_csv(out / "finetune-curves.csv", index=False)
    if not curves.empty:
        plot(curves, out / "finetune.png")
    lines = [
        "# Online Decision Transformer fine-tuning, with and without TD3 gradients, beside "
        "SB3 SAC from scratch", "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {multiprocessing.cpu_count()} CPU cores, one torch "
        f"thread per run; ODT on `--device {args.device}`, SAC on the CPU; python "
        f"{platform.python_version()}, torch {torch.__version__}; wall {wall:.0f} s, "
        f"{reused} of {len(runs)} runs reused from earlier calls (`train_seconds` is each "
        "run's own)  ",
        f"Dataset `{args.dataset}`; ODT pretrained with the paper preset's config, then "
        f"{args.online_steps} online env steps (g_online "
        f"{'default' if args.target_return is None else args.target_return}; updates per "
        f"episode: odt {args.updates_per_round or 'default'}, odt-td3 "
        f"{args.td3_updates_per_round} with critic_weight {args.critic_weight}); SAC "
        f"{args.sac_steps} env steps. Test: {args.episodes} episodes per seed (target chosen "
        f"on {args.validation_episodes} validation episodes); curves on "
        f"{args.curve_episodes} validation episodes.", "",
        "Per fine-tuned agent, the mean over seeds of the test means, and the env steps SAC "
        "from scratch needed to reach it on its curve, per seed (None: not within its "
        "budget):", "", summary(results, runs).to_markdown(index=False, floatfmt=".1f"), "",
        runs.to_markdown(index=False, floatfmt=".1f"), "",
        "![learning curves](finetune.png)", ""]
    (out / "finetune.md").write_text("\n".join(lines))
    return out / "finetune.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=DATASET)
    ap.add_argument("--online-steps", type=int, default=20_000)
    ap.add_argument("--sac-steps", type=int, default=30_000)
    ap.add_argument("--sac-interval", type=int, default=1_000)
    ap.add_argument("--curve-updates", type=int, default=3_000,
                    help="fine-tune updates between curve points (300 per episode)")
    ap.add_argument("--curve-episodes", type=int, default=10)
    ap.add_argument("--target-return", type=float, default=None,
                    help="g_online (default: FinetuneConfig's, 0 for Pendulum)")
    ap.add_argument("--updates-per-round", type=int, default=None,
                    help="updates per collected episode (default: FinetuneConfig's, ODT's 300)")
    ap.add_argument("--critic-weight", type=float, default=300.0,
                    help="odt-td3: η of the TD3 term (method option critic_weight)")
    ap.add_argument("--td3-updates-per-round", type=int, default=200,
                    help="odt-td3: updates per collected episode (200: one per env step)")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--validation-episodes", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--agents", nargs="+", default=["odt", "odt-td3", "sac"],
                    choices=["odt", "odt-td3", "sac"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    ap.add_argument("--root", default="data/benchmarks/finetune")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.finetune " + shlex.join(argv or sys.argv[1:])
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="finetune-smoke-"))
        args.root, args.out, args.seeds = str(tmp / "runs"), str(tmp / "results"), [0]
        args.online_steps, args.sac_steps, args.sac_interval = 400, 300, 100
        args.curve_updates, args.curve_episodes, args.episodes = 40, 2, 3
        args.validation_episodes = 2
    todo = [{**vars(args), "agent": agent, "seed": seed,
             "dir": str(Path(args.root) / agent / f"seed{seed}")}
            for agent in args.agents for seed in args.seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.workers),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(run_one, todo))
    page = write(results, args, command, time.perf_counter() - t0)
    print(page.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
