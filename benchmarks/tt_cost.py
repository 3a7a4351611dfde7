"""What ``tt`` costs: planning milliseconds per env step, cached against recomputed, at 1 and
50 envs, and a training update against ``dt``'s at the same width.

The planner is TT's default search (horizon 15, beam width 128, 2 expansions, context 5
transitions; ``offline_dt.methods.tt_planner``) on a network of TT's default width (128, 4
layers, 4 heads, N = 100 bins) with Pendulum's shapes, fitted on a Pendulum-shaped sample.
Planning cost does not depend on the weights, so the network is untrained. Every env acts on
the same random observations in both modes, from the same seeds; the page says whether the
actions are equal, in float32 and on a float64 copy of the network, how far apart the two
steppers' float32 logits are when fed the same tokens, and whether the cached planner agrees
with itself at 1 thread. The first step of an episode is not timed (its history is empty).

    python -m benchmarks.tt_cost --out benchmarks/results/tt/cost.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from benchmarks.machine import cpu_model, versions
from offline_dt.data import OfflineDataset
from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods import get_method
from offline_dt.methods.tt import TTWindows
from offline_dt.methods.tt_planner import CachedStepper, RecomputeStepper
from offline_dt.nn.config import DTConfig

WIDTH = dict(embed_dim=128, n_layer=4, n_head=4, dropout=0.0, max_timestep=256)


def pendulum_sample(n: int = 4000, seed: int = 0) -> OfflineDataset:
    """Pendulum-shaped transitions (20 episodes of 200 steps) to fit the discretiser on."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-np.pi, np.pi, n)
    obs = np.stack((np.cos(theta), np.sin(theta), rng.uniform(-8, 8, n)), 1).astype(np.float32)
    act = rng.uniform(-2, 2, (n, 1)).astype(np.float32)
    rew = -(theta ** 2 + 0.1 * obs[:, 2] ** 2 + 0.001 * act[:, 0] ** 2).astype(np.float32)
    ends = (np.arange(n) % 200) == 199
    return OfflineDataset.from_flat(
        observations=obs, actions=act, rewards=rew, terminals=np.zeros(n, bool),
        timeouts=ends, observation_space=gym.spaces.Box(-8, 8, (3,), np.float32),
        action_space=gym.spaces.Box(-2, 2, (1,), np.float32),
        metadata={"env_id": "Pendulum-v1"}, source="pendulum-shaped")


def plan_cost(net, method, envs: int, steps: int, cached: bool, warm: bool = True
              ) -> tuple[float, float, np.ndarray]:
    """(wall ms and process CPU ms per env step over ``steps`` timed steps, after an untimed
    first with ``warm``; the actions of every step)."""
    policy = method.policy(net, None, None, kv_cache=cached)
    policy.reset(envs, list(range(envs)))
    rng = np.random.default_rng(1)
    actions, seconds, cpu = [], 0.0, 0.0
    for t in range(steps + int(warm)):
        obs = rng.uniform(-1, 1, (envs, 3)).astype(np.float32)
        t0, c0 = time.perf_counter(), time.process_time()
        actions.append(policy.act(obs))
        if t > 0 or not warm:
            seconds += time.perf_counter() - t0
            cpu += time.process_time() - c0
        policy.observe(-np.abs(obs[:, 0]))
    return 1000 * seconds / steps, 1000 * cpu / steps, np.stack(actions)


class TeeStepper:
    """A cached and a recomputing stepper fed the same tokens; the plan follows the cached
    one's logits and ``gap[0]`` holds the largest absolute difference of the two."""

    def __init__(self, cached, recomputed, gap: list[float]) -> None:
        self.c, self.r, self.gap = cached, recomputed, gap

    def push(self, tokens, dims, timesteps, commit=True):
        a = self.c.push(tokens, dims, timesteps, commit)
        b = self.r.push(tokens, dims, timesteps, commit)
        self.gap[0] = max(self.gap[0], float((a - b).abs().max()))
        return a

    def select(self, rows):
        return TeeStepper(self.c.select(rows), self.r.select(rows), self.gap)

    def expand(self, e: int):
        return TeeStepper(self.c.expand(e), self.r.expand(e), self.gap)


def logit_gap(net, method) -> float:
    """The largest |cached - recomputed| float32 logit over the pushes of one env's first plan
    (the two steppers fed the same tokens, the cached one's choices)."""
    policy = method.policy(net, None, None, kv_cache=True)
    policy.reset(1, [0])
    gap = [0.0]
    policy.stepper = TeeStepper(CachedStepper(net), RecomputeStepper(net), gap)
    policy.act(np.random.default_rng(1).uniform(-1, 1, (1, 3)).astype(np.float32))
    return gap[0]


def float64_same(net, method, steps: int) -> bool:
    """Whether the cached and recomputed planners take the same actions on a float64 copy of
    ``net`` for ``steps`` env steps of one env (the same seeds and observations)."""
    net64 = copy.deepcopy(net).double()
    acts = [plan_cost(net64, method, 1, steps, cached, warm=False)[2] for cached in (True, False)]
    return bool(np.array_equal(*acts))


def update_ms(net, loss_fn, batch, updates: int) -> float:
    """ms per AdamW update (forward, backward, step) on ``batch``, after one untimed."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    net.train()
    for i in range(updates + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss = loss_fn(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 1000 * (time.perf_counter() - t0) / updates


def train_costs(ds: OfflineDataset, batch_size: int, updates: int) -> dict[str, float]:
    """tt on windows of 10 transitions (TT's, 60 tokens) and dt on windows of 20 steps (the
    DT paper's, 60 tokens), the same width."""
    tt = get_method("tt")
    net = tt.build(DTConfig(obs_dim=3, act_dim=1, context_length=10, **WIDTH))
    tt.fit(net, ds, Normalizer.fit(ds))
    src = TTWindows(ds, 10, 256, 0.99)
    tt_ms = update_ms(net, lambda b: tt.loss(net, b)[0], src.sample_shard(batch_size, 0, 1)[0],
                      updates)
    dt = get_method("dt")
    dnet = dt.build(DTConfig(obs_dim=3, act_dim=1, context_length=20, **WIDTH))
    k = 20
    batch = Batch(returns_to_go=torch.randn(batch_size, k, 1),
                  observations=torch.randn(batch_size, k, 3),
                  actions=torch.rand(batch_size, k, 1) * 2 - 1,
                  timesteps=torch.arange(k).repeat(batch_size, 1),
                  mask=torch.ones(batch_size, k, dtype=torch.bool))
    dt_ms = update_ms(dnet, lambda b: dt.loss(dnet, b)[0], batch, updates)
    return {"tt": tt_ms, "dt": dt_ms, "tt_params": sum(p.numel() for p in net.parameters()),
            "dt_params": sum(p.numel() for p in dnet.parameters())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed env steps per measurement")
    p.add_argument("--steps-50", type=int, default=1,
                   help="timed env steps of the cached planner at 50 envs (no untimed first; "
                        "0: skip 50 envs)")
    p.add_argument("--uncached-steps-50", type=int, default=0,
                   help="timed steps of the recomputing planner at 50 envs (0: skip)")
    p.add_argument("--check-steps", type=int, default=2,
                   help="env steps of the float64 same-actions check (0: skip it and the "
                        "logit and thread checks)")
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tt/cost.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = pendulum_sample()
    method = get_method("tt")
    net = method.build(DTConfig(obs_dim=3, act_dim=1, context_length=10, **WIDTH))
    method.fit(net, ds, Normalizer.fit(ds))
    net.eval()
    rows, checks = [], {}
    for envs in (1, 50) if args.steps_50 else (1,):
        c_steps = args.steps if envs == 1 else args.steps_50
        c_ms, c_cpu, c_act = plan_cost(net, method, envs, c_steps, True, warm=envs == 1)
        u_steps = args.steps if envs == 1 else args.uncached_steps_50
        u_ms = u_cpu = float("nan")
        same = None
        if u_steps:
            u_ms, u_cpu, u_act = plan_cost(net, method, envs, u_steps, False, warm=envs == 1)
            n = min(len(c_act), len(u_act))
            same = bool(np.array_equal(c_act[:n], u_act[:n]))
        rows.append((envs, c_ms, u_ms, c_cpu, u_cpu, u_steps, same))
        print(rows[-1], file=sys.stderr, flush=True)
        if envs == 1 and args.check_steps:
            checks["gap"] = logit_gap(net, method)
            checks["float64"] = float64_same(net, method, args.check_steps)
            if args.threads > 1:
                torch.set_num_threads(1)
                one_ms, _, one = plan_cost(net, method, 1, args.steps, True)
                torch.set_num_threads(args.threads)
                checks["threads"] = bool(np.array_equal(one, c_act))
                checks["one_thread_ms"] = one_ms
            print(checks, file=sys.stderr, flush=True)
    train = train_costs(ds, 64, args.updates)
    print(train, file=sys.stderr, flush=True)
    write_page(args, rows, checks, train)
    return 0


def _yes(x: bool | None) -> str:
    return "yes" if x else ("no" if x is False else "-")


def _ms(x: float) -> str:
    return f"{x:.0f}" if np.isfinite(x) else "not measured"


def planning_lines(args: argparse.Namespace, rows: list, checks: dict) -> list[str]:
    """The page's planning table and checks."""
    lines = [
        "| envs | cached ms/step | recomputed ms/step | speed-up | cached CPU ms/step | "
        "recomputed CPU ms/step | timed steps (recomputed) | same actions (float32) |",
        "|---|---|---|---|---|---|---|---|"]
    for envs, c, u, c_cpu, u_cpu, n, same in rows:
        ratio = f"{u / c:.1f}x" if np.isfinite(u) else "not measured"
        lines.append(f"| {envs} | {c:.0f} | {_ms(u)} | {ratio} | {c_cpu:.0f} | {_ms(u_cpu)} "
                     f"| {n} | {_yes(same)} |")
    lines += ["", f"Per env at 50 envs (cached): {rows[1][1] / 50:.1f} ms per env step." if
              len(rows) > 1 else "50 envs: not measured (`--steps-50 0`).", ""]
    if not checks:
        return lines + ["Checks: not run (`--check-steps 0`).", ""]
    lines += [
        "Checks, 1 env. The two planners compute the same function in a different order of "
        "float operations (one token against the cache, or the whole sequence), so their "
        "float32 logits differ by rounding; on an untrained network the logits are nearly "
        "uniform and a rounding difference can flip a near tie (an arg-max, a sampled bin at "
        "the edge of its probability, a beam at the edge of the top 128), after which the "
        "plans part. Both planners take the same random draws in the same order.", "",
        f"- Largest |cached - recomputed| float32 logit over the pushes of the first plan, "
        f"the two fed the same tokens: {checks['gap']:.2g}.",
        f"- Same actions on a float64 copy of the network ({args.check_steps} env steps, the "
        f"same seeds and observations): {_yes(checks['float64'])}.",
        ""]
    if "threads" in checks:
        lines[-1:] = [f"- The float32 cached planner at 1 thread ({checks['one_thread_ms']:.0f} "
                      f"ms/step) against {args.threads} threads (the table's), same actions: "
                      f"{_yes(checks['threads'])}.", ""]
    return lines


def write_page(args: argparse.Namespace, rows: list, checks: dict,
               train: dict[str, float]) -> None:
    lines = [
        "# tt: planning and training cost", "",
        "Command: `python -m benchmarks.tt_cost --threads "
        f"{args.threads} --steps {args.steps} --steps-50 {args.steps_50} "
        f"--uncached-steps-50 {args.uncached_steps_50} --check-steps {args.check_steps} "
        f"--updates {args.updates} --out {args.out}` (`benchmarks/tt_cost.py`).", "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}.",
        f"Versions: {json.dumps(versions())}.", "",
        "TT's default planner (horizon 15, beam width 128, 2 expansions, actions from the top "
        "60% of probability, context band 5 transitions, a plan every step) on an untrained "
        "network of TT's width (embed 128, 4 layers, 4 heads, 100 bins; Pendulum's shapes, 6 "
        "tokens per transition), float32. Cached: `tt_planner.CachedStepper`, one token's "
        "attention per planned token from a beam cache (`offline_dt.nn.beam_cache`: a beam's "
        "copies share its keys and values, a prune moves the kept rows into a preallocated "
        "buffer). Recomputed: `RecomputeStepper`, the whole sequence (the last "
        "`n_layer * (band - 1) + 1` non-value tokens) per planned token. Milliseconds per env "
        "step (one plan for all envs at once), wall clock and this process's CPU time (all "
        "threads); at 1 env the first step of the episode is untimed, at 50 envs the first "
        "steps are timed (a plan costs the same at every step: the history is held in the "
        "cache or cropped).", "",
        *planning_lines(args, rows, checks),
        "Training, one AdamW update at batch 64, the same width (embed 128, 4 layers, 4 "
        "heads), 60 tokens per window each: `tt` on 10 transitions (TT's sequence length) "
        "of 6 tokens, `dt` on 20 steps of 3 tokens.", "",
        "| method | ms per update | parameters |", "|---|---|---|",
        f"| tt | {train['tt']:.0f} | {train['tt_params']:,} |",
        f"| dt | {train['dt']:.0f} | {train['dt_params']:,} |", "",
        f"tt / dt: {train['tt'] / train['dt']:.2f}x per update.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(args.out)


if __name__ == "__main__":
    raise SystemExit(main())
