"""Online RL with a transformer policy (``offline-dt online``) beside Stable-Baselines3.

    python -m benchmarks.online                 # 200,000 env steps, seeds 0 1 2, 2 workers
    python -m benchmarks.online --smoke         # a minute: tiny budgets, into a temp dir
    python -m benchmarks.online --envs CartPole-v1 --env-steps 50000 \
        --agents transformer-reinforce transformer-a2c sb3-a2c \
        --out benchmarks/results/online-pg      # the policy-gradient page

Runs (:data:`JOBS`): transformer PPO (``--method ppo``) and SB3's PPO (MLP policy) on
CartPole-v1 and Pendulum-v1, transformer DQN (``--method dqn``) and SB3's DQN on CartPole-v1,
transformer A2C (``--method a2c``) and SB3's A2C on CartPole-v1, and transformer REINFORCE
with a value baseline (``--method reinforce``; SB3 has none, so no peer of its own: SB3's A2C
is the one beside it), each for ``--env-steps`` env steps and every seed of ``--seeds``, with
matched hyperparameters (:data:`CONFIGS`): rl-zoo's PPO for CartPole (8 envs x 32 steps, one
minibatch of 256, 20 epochs, γ 0.98, λ 0.8, no entropy bonus, lr 1e-3 and clip range 0.2
both annealed linearly to 0, value loss unclipped as SB3's default); for Pendulum the rl-zoo
shape of PPO (4 envs x 1024 steps, γ 0.9, 10 epochs, constant lr 1e-3, rewards x 0.1 on both
sides; no gSDE; our value loss clipped as CleanRL's, SB3's not); rl-zoo's DQN for CartPole
(lr 2.3e-3, batch 64, learning starts at 1000, ε to 0.04 over 16% of the budget, target
copied every 10 env steps; SB3 takes 128 updates per 256 env steps, ours one per 2); SB3's
A2C defaults for A2C (8 envs x 5 steps as rl-zoo's CartPole, γ 0.99, λ 1, no entropy bonus,
``vf_coef`` 0.5, gradient clip 0.5, lr 7e-4 constant; SB3 steps RMSprop, ours AdamW at the same
lr: our loop has no RMSprop); REINFORCE with its defaults (4 envs x 128 steps a rollout, one
update per rollout, γ 0.99, lr 7e-4 constant, AdamW).
Our transformer is :data:`NETWORK`, a small DT trunk (K 8, width 64, one block: at the
paper's K 20 / d 128 / 3 blocks a CartPole run of 200k steps takes about an hour of one CPU
core, 17x longer), with PPO's critic a second trunk of that shape (``critic separate``); SB3
uses its default MLPs (separate actor and critic).

Every policy is scored by the one rollout engine
(``offline_dt.evaluation.episodes.evaluate_policy``) on the same episodes: learning-curve points
every ``--eval-interval`` env steps on ``--curve-episodes`` validation episodes of the training seed
(reset seeds ``2·10^12 + seed·10^5 + 50000 + i``, the training loop's curve episodes), and the final
policy on ``--episodes`` test episodes (``10^12 + seed·10^5 + i``). Both act deterministically (the
argmax or the Gaussian mean; SB3's ``predict(deterministic=True)``).

Writes ``<out>/online.md``, ``online.csv`` (one row per run: final test return, training
seconds), ``online-curves.csv`` and ``online.png`` (mean evaluation return against env steps,
one line per agent, shaded between the seeds' min and max), with the machine, versions and
command. Runs live under ``--root`` (default ``data/benchmarks/online``); a run with a
``result.json`` is reused. ``--smoke`` writes into a temporary directory, never into
``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import json
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

from offline_dt.envs.policies import CallablePolicy
from offline_dt.evaluation.curves import make_eval_hook
from offline_dt.evaluation.episodes import CURVE_EPISODE_OFFSET, evaluate_policy
from offline_dt.methods.a2c import A2COptions
from offline_dt.methods.base import METHODS
from offline_dt.methods.dqn import DQNOptions
from offline_dt.methods.options import make_options
from offline_dt.methods.ppo import PPOOptions
from offline_dt.methods.reinforce import ReinforceOptions
from offline_dt.training.checkpoint import load_checkpoint
from offline_dt.training.device import resolve_device
from offline_dt.training.online import OnlineConfig, train_online

RESULTS = Path(__file__).resolve().parent / "results"

#: Our transformer's shape (``OnlineConfig`` fields) in every run but ``--smoke``'s.
NETWORK = {"context_length": 8, "embed_dim": 64, "n_layer": 1}


def linear_schedule(peak: float) -> Any:
    """An SB3 schedule from ``peak`` linearly to 0 (its argument is the remaining progress,
    1 → 0; rl-zoo's ``lin_``): for the learning rate as our ``lr_decay linear``, for the
    clip range as our ``clip_decay linear``."""
    return lambda remaining: peak * remaining


#: (algorithm, env) -> our method options, learning rate and its decay (``OnlineConfig``'s
#: ``lr_decay``), SB3's keyword arguments (with ``n_envs`` and ``reward_scale`` taken out
#: before the constructor).
CONFIGS: dict[tuple[str, str], dict[str, Any]] = {
    ("ppo", "CartPole-v1"): {
        "ours": {"n_envs": 8, "n_steps": 32, "minibatches": 1, "epochs": 20,
                 "gamma": 0.98, "gae_lambda": 0.8, "ent_coef": 0,
                 "clip_decay": "linear", "clip_vloss": "false"},
        "lr": 1e-3, "lr_decay": "linear",
        "sb3": dict(n_envs=8, n_steps=32, batch_size=256, n_epochs=20,
                    learning_rate=linear_schedule(1e-3), gamma=0.98, gae_lambda=0.8,
                    clip_range=linear_schedule(0.2), ent_coef=0.0, vf_coef=0.5,
                    max_grad_norm=0.5)},
    ("ppo", "Pendulum-v1"): {
        "ours": {"n_envs": 4, "n_steps": 1024, "gamma": 0.9, "epochs": 10,
                 "minibatches": 32, "reward_scale": 0.1}, "lr": 1e-3, "lr_decay": "none",
        "sb3": dict(n_envs=4, n_steps=1024, batch_size=128, n_epochs=10, learning_rate=1e-3,
                    gamma=0.9, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5,
                    max_grad_norm=0.5, reward_scale=0.1)},
    ("dqn", "CartPole-v1"): {
        # rl-zoo's: 128 updates per 256 env steps on SB3's side, one per 2 on ours; target
        # copy every 10 env steps (5 of our updates); SB3's Q-network 2 x 256 wide
        "ours": {"buffer_size": 100000, "learning_starts": 1000, "train_frequency": 2,
                 "target_every": 5, "exploration_fraction": 0.16, "end_e": 0.04},
        "lr": 2.3e-3, "lr_decay": "none", "batch": 64,
        "sb3": dict(n_envs=1, learning_rate=2.3e-3, buffer_size=100_000, learning_starts=1000,
                    batch_size=64, tau=1.0, gamma=0.99, train_freq=256, gradient_steps=128,
                    target_update_interval=10, exploration_fraction=0.16,
                    exploration_final_eps=0.04, policy_kwargs={"net_arch": [256, 256]})},
    ("a2c", "CartPole-v1"): {
        # SB3's A2C defaults, 8 envs (rl-zoo); SB3 steps RMSprop, ours AdamW, both lr 7e-4
        "ours": {"n_envs": 8, "n_steps": 5, "gamma": 0.99, "gae_lambda": 1.0,
                 "ent_coef": 0, "vf_coef": 0.5}, "lr": 7e-4, "lr_decay": "none",
        "sb3": dict(n_envs=8, n_steps=5, learning_rate=7e-4, gamma=0.99, gae_lambda=1.0,
                    ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5)},
    ("reinforce", "CartPole-v1"): {  # SB3 has no REINFORCE: no sb3 run
        "ours": {"n_envs": 4, "n_steps": 128, "gamma": 0.99, "vf_coef": 0.5},
        "lr": 7e-4, "lr_decay": "none", "sb3": None},
}
#: (agent, algorithm, env): every run of a seed (an sb3 run where SB3 has the algorithm).
JOBS = [(agent, algo, env) for (algo, env), c in CONFIGS.items()
        for agent in ("transformer", "sb3") if agent == "transformer" or c["sb3"] is not None]
#: Each algorithm's options dataclass (ours).
OPTIONS = {"ppo": PPOOptions, "dqn": DQNOptions, "a2c": A2COptions,
           "reinforce": ReinforceOptions}
#: Smaller settings for ``--smoke`` (tiny network, short rollouts).
SMOKE_OURS = {"ppo": {"n_steps": 32, "epochs": 2, "minibatches": 4},
              "dqn": {"learning_starts": 200}, "a2c": {}, "reinforce": {"n_steps": 32}}
SMOKE_SB3 = {"ppo": {"n_steps": 32, "batch_size": 32, "n_epochs": 2},
             "dqn": {"learning_starts": 200}, "a2c": {}}


def _curve_seeds(seed: int, episodes: int) -> dict[str, Any]:
    return {"seed": seed, "split": "validation", "first": CURVE_EPISODE_OFFSET,
            "episodes": episodes}


def run_transformer(job: dict[str, Any]) -> dict[str, Any]:
    """Train ``offline-dt online`` with a periodic evaluation hook on the curve episodes;
    then score the final checkpoint on the test episodes."""
    cfg = CONFIGS[(job["algo"], job["env"])]
    opts = {**cfg["ours"], **(SMOKE_OURS[job["algo"]] if job["smoke"] else {})}
    o = make_options(OPTIONS[job["algo"]], job["algo"], opts)
    per_update = (o.train_frequency if job["algo"] == "dqn"  # env steps per update
                  else o.n_envs * o.n_steps / o.updates_per_rollout)
    shape = dict(context_length=4, embed_dim=16, n_layer=1) if job["smoke"] else NETWORK
    online = OnlineConfig(
        method=job["algo"], env_id=job["env"], env_steps=job["env_steps"],
        run_dir=Path(job["dir"]), seed=job["seed"], method_options=opts,
        learning_rate=cfg["lr"], lr_decay=cfg["lr_decay"], device=job["device"],
        progress=False, overwrite=True, batch_size=cfg.get("batch"),
        eval_every=max(1, round(job["eval_interval"] / per_update)),
        eval_episodes=job["curve_episodes"], log_every=50, **shape)
    t0 = time.perf_counter()
    train_online(online, make_eval_hook())
    seconds = time.perf_counter() - t0
    rows = pd.read_csv(Path(job["dir"]) / "metrics.csv")
    rows = rows.dropna(subset=["eval_return_mean"])
    curve = [(int(s), float(r)) for s, r in zip(rows["env_steps"], rows["eval_return_mean"],
                                                  strict=True)]
    device = resolve_device(job["device"])
    ckpt = load_checkpoint(job["dir"], device)
    policy = ckpt.method.policy(ckpt.model, ckpt.normalizer, None)
    final = evaluate_policy(job["env"], policy, job["episodes"], job["seed"])
    return {"curve": curve, "final_mean": final.mean, "final_ci95": final.ci95,
            "train_seconds": seconds, "device": str(device)}


def _sb3_callback(job: dict[str, Any], curve: list[tuple[int, float]]) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class Curve(BaseCallback):
        """Every ``eval_interval`` env steps: the deterministic policy on the curve
        episodes, through our rollout engine."""

        def __init__(self) -> None:
            super().__init__()
            self.next = job["eval_interval"]

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += job["eval_interval"]
                curve.append((self.num_timesteps, _score_sb3(self.model, job, curve=True)))
            return True

    return Curve()


def _score_sb3(model: Any, job: dict[str, Any], curve: bool) -> float | tuple[float, float]:
    policy = CallablePolicy(lambda obs: model.predict(obs, deterministic=True)[0])
    if curve:
        kw = _curve_seeds(job["seed"], job["curve_episodes"])
        return evaluate_policy(job["env"], policy, kw.pop("episodes"), **kw).mean
    res = evaluate_policy(job["env"], policy, job["episodes"], job["seed"])
    return res.mean, res.ci95


def run_sb3(job: dict[str, Any]) -> dict[str, Any]:
    """SB3's PPO, DQN or A2C (MLP) with :data:`CONFIGS`' settings, evaluated as ours."""
    import gymnasium as gym
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    kw = dict(CONFIGS[(job["algo"], job["env"])]["sb3"])
    if job["smoke"]:
        kw.update(SMOKE_SB3[job["algo"]])
    n_envs, scale = kw.pop("n_envs"), kw.pop("reward_scale", 1.0)

    def wrap(env: gym.Env) -> gym.Env:
        return gym.wrappers.TransformReward(env, lambda r: scale * r) if scale != 1.0 else env

    env = make_vec_env(job["env"], n_envs=n_envs, seed=job["seed"], wrapper_class=wrap)
    algo = {"ppo": PPO, "dqn": DQN, "a2c": A2C}[job["algo"]]
    model = algo("MlpPolicy", env, seed=job["seed"], device="cpu", verbose=0, **kw)
    curve: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    model.learn(job["env_steps"], callback=_sb3_callback(job, curve))
    seconds = time.perf_counter() - t0
    mean, ci95 = _score_sb3(model, job, curve=False)
    return {"curve": curve, "final_mean": mean, "final_ci95": ci95, "train_seconds": seconds,
            "device": "cpu"}


def machine(device: str) -> str:
    """Where a run trained: CPU architecture and cores, and the GPU's name on CUDA (runs
    reused from another machine keep theirs)."""
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return f"{platform.machine()}, {multiprocessing.cpu_count()} cores{gpu}"


def cached_run(job: dict[str, Any], run: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """``run(job)`` on one torch thread, its result (with ``job``'s ``keys`` first and the
    machine last) written to ``<job dir>/result.json``; reused when that file exists."""
    out = Path(job["dir"]) / "result.json"
    if out.is_file():
        return {**json.loads(out.read_text()), "reused": True}
    torch.set_num_threads(1)
    Path(job["dir"]).mkdir(parents=True, exist_ok=True)
    result = run(job)
    result = {**{k: job[k] for k in keys}, **result,
              "machine": machine(str(resolve_device(result["device"])))}
    out.write_text(json.dumps(result))
    return result


def run_table(results: list[dict[str, Any]]) -> tuple[pd.DataFrame, int]:
    """One row per run (curves left out) and how many of them :func:`cached_run` reused."""
    runs = pd.DataFrame([{k: v for k, v in r.items() if k not in ("curve", "reused")}
                         for r in results])
    return runs, sum(bool(r.get("reused")) for r in results)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One run (reused when its ``result.json`` exists), one torch thread."""
    run = run_transformer if job["agent"] == "transformer" else run_sb3
    return cached_run(job, run, ("agent", "algo", "env", "seed", "env_steps"))


def budgets(args: argparse.Namespace) -> dict[tuple[str, str], int]:
    """Env steps per (algorithm, env): ``--env-steps``, or a ``--budget ALGO:ENV=STEPS``
    override (the same for both agents of that pair).

    Raises:
        SystemExit: a malformed ``--budget`` or one naming no algorithm/env pair of
            :data:`CONFIGS`.
    """
    out = {pair: args.env_steps for pair in CONFIGS}
    for item in args.budget:
        try:
            pair, steps = item.split("=")
            algo, env = pair.split(":")
            key, n = (algo, env), int(steps)
        except ValueError:
            raise SystemExit(f"--budget: expected ALGO:ENV=STEPS (e.g. dqn:CartPole-v1=50000), "
                             f"found {item!r}") from None
        if key not in CONFIGS:
            raise SystemExit(f"--budget {item!r}: no such algorithm/env pair; choose from "
                             f"{[f'{a}:{e}' for a, e in CONFIGS]}")
        out[key] = n
    return out


def jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    steps = budgets(args)
    return [{"agent": agent, "algo": algo, "env": env, "seed": seed,
             "env_steps": steps[(algo, env)], "eval_interval": args.eval_interval,
             "curve_episodes": args.curve_episodes, "episodes": args.episodes,
             "smoke": args.smoke, "device": args.device,
             "dir": str(Path(args.root) / env / f"{agent}-{algo}" / f"seed{seed}")}
            for agent, algo, env in JOBS for seed in args.seeds
            if f"{agent}-{algo}" in args.agents and env in args.envs]


def plot(curves: pd.DataFrame, path: Path) -> None:
    """Mean evaluation return against env steps per agent, one panel per env, shaded
    between the seeds' min and max (points at the same env steps across seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted(curves["env"].unique())
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for name, g in curves[curves["env"] == env].groupby("name"):
            s = g.groupby("env_steps")["return"].agg(["mean", "min", "max"])
            ax.plot(s.index, s["mean"], label=name)
            ax.fill_between(s.index, s["min"], s["max"], alpha=0.2)
        ax.set(title=env, xlabel="env steps", ylabel="mean evaluation return")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: list[dict[str, Any]], args: argparse.Namespace, command: str,
          wall: float) -> Path:
    """The results page, the CSVs and the plot in ``args.out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, reused = run_table(results)
    runs["name"] = runs["agent"] + " " + runs["algo"]
    curves = pd.DataFrame([{"env": r["env"], "name": f"{r['agent']} {r['algo']}",
                            "seed": r["seed"], "env_steps": s, "return": v}
                           for r in results for s, v in r["curve"]])
    runs.to_csv(out / "online.csv", index=False)
    curves.to_csv(out / "online-curves.csv", index=False)
    if not curves.empty:
        plot(curves, out / "online.png")
    summary = runs.groupby(["env", "name"]).agg(
        env_steps=("env_steps", "first"), seeds=("seed", "count"),
        final_return=("final_mean", "mean"), seed_std=("final_mean", "std"),
        worst_seed=("final_mean", "min"), train_seconds=("train_seconds", "mean")).reset_index()
    algos = ", ".join(dict.fromkeys(a.upper() for a in runs["algo"]))
    lines = [f"# Online RL: a transformer policy ({algos}) beside Stable-Baselines3", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {multiprocessing.cpu_count()} CPU cores, one "
             f"torch thread per run; python {platform.python_version()}, torch "
             f"{torch.__version__}, stable-baselines3 {_sb3_version()}; wall {wall:.0f} s, "
             f"{reused} of {len(runs)} runs reused from earlier calls (`train_seconds` is each "
             "run's own)  ",
             f"Budget: env steps per run in the table ({args.env_steps} unless "
             f"`--budget` says otherwise); the transformer trains on `--device "
             f"{args.device}` with the network {NETWORK}, SB3 on the CPU; final scores on "
             f"{args.episodes} test episodes per seed, curves on {args.curve_episodes} "
             f"validation episodes every {args.eval_interval} env steps (the same episodes "
             "for every agent).", "",
             "## Final test return (mean over seeds; seed_std: std of the seed means)", "",
             summary.to_markdown(index=False, floatfmt=".1f"), "",
             "## Settings (`CONFIGS`; the transformer steps AdamW, the loop's one optimizer; "
             "SB3 its algorithm's own, RMSprop for A2C)", "",
             *settings_lines(runs), "",
             "## Every run", "",
             runs.drop(columns=["name"]).to_markdown(index=False, floatfmt=".1f"), "",
             "![learning curves](online.png)", ""]
    (out / "online.md").write_text("\n".join(lines))
    return out / "online.md"


def settings_lines(runs: pd.DataFrame) -> list[str]:
    """One line per algorithm/env pair of ``runs``: our method options, learning rate and its
    decay, and SB3's keyword arguments (a schedule shown as ``schedule``)."""
    lines = []
    for algo, env in dict.fromkeys(zip(runs["algo"], runs["env"], strict=True)):
        c = CONFIGS[(algo, env)]
        sb3 = ("none (SB3 has no such algorithm)" if c["sb3"] is None else
               {k: "schedule" if callable(v) else v for k, v in c["sb3"].items()})
        lines.append(f"- {algo} on {env}: ours `{c['ours']}`, lr {c['lr']:g} "
                     f"(decay {c['lr_decay']}), gradient clip {METHODS[algo].grad_clip:g}; "
                     f"SB3 `{sb3}`")
    return lines


def _sb3_version() -> str:
    import stable_baselines3

    return stable_baselines3.__version__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env-steps", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--envs", nargs="+", default=["CartPole-v1", "Pendulum-v1"])
    ap.add_argument("--agents", nargs="+", default=[f"{a}-{b}" for a, b, _ in JOBS])
    ap.add_argument("--budget", nargs="+", default=[], metavar="ALGO:ENV=STEPS",
                    help="env steps of one algorithm/env pair instead of --env-steps, e.g. "
                         "dqn:CartPole-v1=50000")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="torch device of the transformer runs (SB3 runs on the CPU)")
    ap.add_argument("--eval-interval", type=int, default=10_000)
    ap.add_argument("--curve-episodes", type=int, default=10)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--workers", type=int, default=multiprocessing.cpu_count())
    ap.add_argument("--root", default="data/benchmarks/online")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--smoke", action="store_true",
                    help="tiny budgets and network, one seed, into a temporary directory")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.online " + shlex.join(argv or sys.argv[1:])
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="online-smoke-"))
        args.root, args.out = str(tmp / "runs"), str(tmp / "results")
        args.env_steps, args.seeds, args.eval_interval = 1024, [0], 512
        args.curve_episodes, args.episodes = 2, 3
    t0 = time.perf_counter()
    todo = jobs(args)
    with ProcessPoolExecutor(max_workers=max(1, args.workers),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(run_one, todo))
    page = write(results, args, command, time.perf_counter() - t0)
    print(page.read_text())
    print(f"written to {page.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
