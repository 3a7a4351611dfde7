"""Training-step throughput at the paper's gym configuration (Chen et al. 2021, Table 8).

B=64 windows of K=20 steps, d=128, 3 layers, 1 head, dropout 0.1, on a Pendulum-shaped random
dataset (obs 3, Box action 1, 200 episodes of 200 steps; no generation needed). Times the exact
step ``offline_dt.train`` runs (sample → loss → backward → clip → AdamW → LambdaLR): warmup,
then the median of several timed blocks. The sampling share is the median time of
``WindowSampler.sample`` alone divided by the whole step.

    python benchmarks/train_throughput.py [--blocks 5 --block-steps 20 --threads N]

Writes ``benchmarks/results/train_throughput.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.windows import Normalizer, WindowSampler
from offline_dt.model import DecisionTransformer
from offline_dt.train import TrainConfig, make_optimizer, train_step

RESULTS = Path(__file__).parent / "results"


def pendulum_like(episodes: int = 200, length: int = 200, seed: int = 0) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    n = episodes * length
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    obs[:, 2] *= 8
    timeouts = np.zeros(n, bool)
    timeouts[length - 1 :: length] = True
    return OfflineDataset.from_flat(
        observations=obs,
        actions=rng.uniform(-2, 2, (n, 1)).astype(np.float32),
        rewards=-rng.uniform(0, 16, n).astype(np.float32),
        terminals=np.zeros(n, bool),
        timeouts=timeouts,
        observation_space=gym.spaces.Box(np.array([-1, -1, -8], np.float32),
                                         np.array([1, 1, 8], np.float32), (3,), np.float32),
        action_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
        metadata={"env_id": "Pendulum-v1"},
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_blocks(fn, blocks: int, block_steps: int, warmup: int) -> list[float]:
    """Seconds per call: median-able list, one entry per block."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(block_steps):
            fn()
        out.append((time.perf_counter() - t) / block_steps)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--block-steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = TrainConfig(device="cpu", warmup_steps=10_000)  # paper defaults
    ds = pendulum_like()
    torch.manual_seed(0)
    sampler = WindowSampler(ds, Normalizer.fit(ds), cfg.context_length, cfg.max_timestep, 0)
    model = DecisionTransformer(cfg.model_config(ds.obs_dim, ds.act_dim, ds.discrete))
    model.train()
    optimizer, scheduler = make_optimizer(model, cfg)

    def step() -> None:
        train_step(model, optimizer, scheduler, sampler.sample(cfg.batch_size), cfg)

    def sample() -> None:
        sampler.sample(cfg.batch_size)

    step_s = time_blocks(step, args.blocks, args.block_steps, args.warmup)
    sample_s = time_blocks(sample, args.blocks, args.block_steps * 4, args.warmup)
    ms_step = statistics.median(step_s) * 1000
    ms_sample = statistics.median(sample_s) * 1000
    result = {
        "config": {"batch_size": cfg.batch_size, "context_length": cfg.context_length,
                   "embed_dim": cfg.embed_dim, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                   "dropout": cfg.dropout, "activation": cfg.activation,
                   "parameters": model.num_parameters(),
                   "dataset": f"pendulum-like random, {ds.num_episodes} episodes x 200 steps"},
        "ms_per_step_median": ms_step,
        "ms_per_step_blocks": [s * 1000 for s in step_s],
        "steps_per_second": 1000 / ms_step,
        "ms_per_sample_median": ms_sample,
        "sampling_share": ms_sample / ms_step,
        "timing": {"blocks": args.blocks, "block_steps": args.block_steps,
                   "warmup_steps": args.warmup},
        "machine": {"platform": platform.platform(), "cpu": cpu_model(),
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1m": os.getloadavg()[0]},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__},
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    m, v = result["machine"], result["versions"]
    md = f"""# Training throughput (paper gym config)

B={cfg.batch_size}, K={cfg.context_length}, d={cfg.embed_dim}, {cfg.n_layer} layers,
{cfg.n_head} head, dropout {cfg.dropout}, {model.num_parameters():,} parameters; Pendulum-shaped
random dataset. One step = sample + forward + backward + clip + AdamW + LambdaLR
(`offline_dt.train.train_step`). Median of {args.blocks} blocks of {args.block_steps} steps
after {args.warmup} warmup steps.

| metric | value |
|---|---|
| ms / step (median) | {ms_step:.2f} |
| steps / s | {1000 / ms_step:.1f} |
| ms / sample (median) | {ms_sample:.3f} |
| sampling share of step | {100 * ms_sample / ms_step:.1f} % |
| per-block ms / step | {", ".join(f"{s * 1000:.1f}" for s in step_s)} |

Machine: {m["platform"]}; CPU {m["cpu"]}; {m["cores"]} cores; torch threads
{m["torch_threads"]}; 1-min load average at the end {m["load_average_1m"]:.2f}.
Versions: Python {v["python"]}, torch {v["torch"]}, numpy {v["numpy"]}.

Command: `{result["command"]}`
"""
    (args.out / "train_throughput.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
