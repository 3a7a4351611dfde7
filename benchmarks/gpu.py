"""GPU throughput of training and evaluation, and DDP scaling over the GPUs present.

    python -m benchmarks.gpu                      # on a CUDA machine: writes results/gpu.md
    python -m benchmarks.gpu --device cpu --tiny  # every section at toy size on the CPU
    python -m benchmarks.gpu --compile-cpu        # torch.compile against eager on this CPU

Without a CUDA device (and without ``--device cpu``) it says so and exits 0: nothing here is
measured on a CPU-only machine except ``--compile-cpu``.

Sections:

* ``train``: one training step of ``dt`` as the training loop runs it (``train_step``: a
  batch from the window sampler, whose arrays live on the device, forward and loss under the
  run's precision, backward, clip, AdamW, fused on CUDA) at the paper config (embed 128,
  3 layers, 1 head, K=20, batch 64) and a larger one (embed 512, 6 layers, 8 heads, K=20,
  batch 512), in bf16 (``precision="auto"`` on a bf16 GPU) and fp32, eager and compiled
  (``torch.compile``). Reported: steps/s, tokens/s (batch x 3K tokens per step) and model
  FLOP utilisation: ``6 N`` FLOPs per token for the matmul parameters ``N`` plus
  ``12 L T d`` per token for attention scores and values (full, not causal-halved), forward
  and backward, over the device's dense bf16 peak (:data:`PEAK_BF16_TFLOPS`).
* ``eval``: env steps per second of a paper-config DT acting in 1000 Pendulum-v1 envs at once
  (one vector env, one batched model call per step on the device; ``evaluate_policy``),
  with the full window and with the key/value cache, beside the random policy (the envs'
  own cost).
* ``ddp``: ``offline_dt.training.loop.train`` under ``torchrun --nproc-per-node n`` for n = 1, 2, 4,
  ... up to the GPUs present, at the larger config with batch 512 per GPU (the global batch
  grows with n: weak scaling); steps/s of rank 0 and samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offline_dt.data import write_hdf5
from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.windows import Normalizer, WindowSampler
from offline_dt.methods import get_method
from offline_dt.training.device import resolve_precision
from offline_dt.training.step import MethodLoss, make_optimizer, train_step
from offline_dt.training.train_config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched
#: against ``torch.cuda.get_device_name()`` (first match wins; ``--peak-tflops`` overrides).
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10G", 70.0),
                    ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0))


@dataclass(frozen=True)
class Shape:
    """A model and batch size to time."""

    name: str
    embed_dim: int
    n_layer: int
    n_head: int
    context_length: int
    batch_size: int


PAPER = Shape("paper (d128, 3 layers, K20, batch 64)", 128, 3, 1, 20, 64)
LARGE = Shape("large (d512, 6 layers, 8 heads, K20, batch 512)", 512, 6, 8, 20, 512)
TINY = Shape("tiny (d16, 1 layer, K5, batch 8)", 16, 1, 1, 5, 8)


def pendulum_like(episodes: int = 200, length: int = 200, seed: int = 0) -> OfflineDataset:
    """A Pendulum-shaped random dataset (obs 3, Box action 1): timing needs no generated
    data."""
    rng = np.random.default_rng(seed)
    n = episodes * length
    timeouts = np.zeros(n, bool)
    timeouts[length - 1:: length] = True
    return OfflineDataset.from_flat(
        observations=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        actions=rng.uniform(-2, 2, (n, 1)).astype(np.float32),
        rewards=-rng.uniform(0, 16, n).astype(np.float32),
        terminals=np.zeros(n, bool), timeouts=timeouts,
        observation_space=gym.spaces.Box(-8.0, 8.0, (3,), np.float32),
        action_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
        metadata={"env_id": "Pendulum-v1"})


def config(shape: Shape, **kw: Any) -> TrainConfig:
    return TrainConfig(embed_dim=shape.embed_dim, n_layer=shape.n_layer, n_head=shape.n_head,
                       context_length=shape.context_length, batch_size=shape.batch_size,
                       dropout=0.1, max_timestep=1000, **kw)


def step_flops(shape: Shape, obs_dim: int, act_dim: int) -> float:
    """Model FLOPs of one training step (forward + backward): ``6 N`` per token for the
    ``N`` matmul parameters, ``12 L T d`` per token for attention (T = 3K tokens)."""
    d, layers, t = shape.embed_dim, shape.n_layer, 3 * shape.context_length
    n_matmul = layers * 12 * d * d + (obs_dim + act_dim + 1) * d + d * act_dim
    tokens = shape.batch_size * t
    return tokens * (6 * n_matmul + 12 * layers * t * d)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(shape: Shape, device: torch.device, precision: str, compile_: bool
              ) -> tuple[Callable[[], None], TrainConfig]:
    """One training step of ``dt`` at ``shape`` as the loop runs it (``train_step`` on a batch
    of the device-resident sampler), and its config."""
    ds = pendulum_like()
    cfg = config(shape, precision=precision, compile=compile_, device=str(device))
    method = get_method("dt")
    torch.manual_seed(0)
    net = method.build(cfg.model_config(ds.obs_dim, ds.act_dim, ds.discrete)).to(device)
    optimizer, scheduler = make_optimizer(net, cfg)
    sampler = WindowSampler(ds, Normalizer.fit(ds), cfg.context_length, cfg.max_timestep,
                            seed=0, device=device)
    loss_fn = torch.compile(MethodLoss(method, net)) if compile_ else None

    def step() -> None:
        train_step(net, optimizer, scheduler, sampler.sample(cfg.batch_size), cfg, method,
                   loss_fn=loss_fn)

    return step, cfg


def timed(step: Callable[[], None], n: int, device: torch.device) -> float:
    """Seconds per call of ``step`` over ``n`` calls (the device synchronised around them)."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t) / n


def time_train(shape: Shape, device: torch.device, precision: str, compile_: bool,
               steps: int, warmup: int) -> dict[str, Any]:
    """Seconds per training step after ``warmup`` untimed ones (compilation included there)."""
    step, cfg = make_step(shape, device, precision, compile_)
    warmup_s = timed(step, warmup, device) * warmup
    seconds = timed(step, steps, device)
    return {"shape": shape.name, "precision": resolve_precision(precision, device),
            "compile": compile_, "step_ms": 1000 * seconds, "steps_per_s": 1 / seconds,
            "tokens_per_s": shape.batch_size * 3 * shape.context_length / seconds,
            "flops_per_step": step_flops(shape, 3, 1), "warmup_s": warmup_s}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def train_section(shapes: list[Shape], device: torch.device, args: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    rows = []
    peak = peak_tflops(device, args.peak_tflops)
    for shape in shapes:
        precisions = dict.fromkeys((resolve_precision("auto", device), "fp32"))
        for precision in precisions:  # bf16 where the device has it, and fp32
            for compile_ in (False, True):
                if args.no_compile and compile_:
                    continue
                row = time_train(shape, device, precision, compile_, args.steps, args.warmup)
                flops = row["flops_per_step"] * row["steps_per_s"]
                row["mfu"] = flops / (peak * 1e12) if peak else None
                print(f"train {row['shape']} {row['precision']} compile={compile_}: "
                      f"{row['steps_per_s']:.1f} steps/s, {row['tokens_per_s']:.3g} tokens/s, "
                      f"MFU {row['mfu'] if row['mfu'] is None else format(row['mfu'], '.1%')}",
                      flush=True)
                rows.append(row)
    return rows


def eval_section(device: torch.device, envs: int, shape: Shape) -> list[dict[str, Any]]:
    """Env steps/s of ``envs`` Pendulum-v1 envs: random policy, DT (full window, KV cache)."""
    from offline_dt.envs.policies import RandomPolicy
    from offline_dt.evaluation.episodes import evaluate_policy

    ds = pendulum_like()
    cfg = config(shape)
    method = get_method("dt")
    torch.manual_seed(0)
    net = method.build(cfg.model_config(ds.obs_dim, ds.act_dim, ds.discrete)).to(device)
    norm = Normalizer.fit(ds)
    policies = {"random policy (env cost)": RandomPolicy(gym.make("Pendulum-v1").action_space, 0),
                "dt, full window": method.policy(net, norm, -150.0),
                "dt, kv cache": method.policy(net, norm, -150.0, kv_cache=True)}
    rows = []
    for name, policy in policies.items():
        res = evaluate_policy("Pendulum-v1", policy, envs, 0, max_envs=envs)
        steps = int(res.lengths.sum())
        rows.append({"policy": name, "envs": envs, "env_steps": steps,
                     "seconds": res.wall_seconds, "env_steps_per_s": steps / res.wall_seconds})
        print(f"eval {name}: {envs} envs, {steps / res.wall_seconds:.3g} env steps/s",
              flush=True)
    return rows


def ddp_section(device: torch.device, shape: Shape, steps: int, max_ranks: int
                ) -> list[dict[str, Any]]:
    """``train`` under torchrun for n = 1, 2, 4, ... ranks (batch per rank fixed)."""
    counts = torch.cuda.device_count() if device.type == "cuda" else max_ranks
    ranks = [n for n in (1, 2, 4, 8, 16) if n <= min(counts, max_ranks)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_hdf5(pendulum_like(), Path(tmp) / "pendulum-like-v0.hdf5")
        for n in ranks:
            run = Path(tmp) / f"ddp{n}"
            flags = {"dataset": data, "run-dir": run, "steps": steps,
                     "batch-size": shape.batch_size * n, "embed-dim": shape.embed_dim,
                     "n-layer": shape.n_layer, "n-head": shape.n_head,
                     "context-length": shape.context_length, "device": device.type,
                     "log-every": steps, "checkpoint-every": steps, "progress": "false"}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(n), "-m", "offline_dt.cli", "train",
                   *[x for k, v in flags.items() for x in (f"--{k}", str(v))]]
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode != 0:
                raise RuntimeError(f"torchrun with {n} ranks failed:\n{out.stderr[-3000:]}")
            sps = float(out.stdout.split("speed")[1].split("steps/s")[0])
            rows.append({"ranks": n, "global_batch": shape.batch_size * n,
                         "steps_per_s": sps, "samples_per_s": sps * shape.batch_size * n})
            print(f"ddp {n} rank(s): {sps:.1f} steps/s, "
                  f"{rows[-1]['samples_per_s']:.3g} samples/s", flush=True)
    for row in rows:
        row["scaling"] = row["samples_per_s"] / rows[0]["samples_per_s"]
    return rows


def table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """A Markdown table of ``rows``: ``columns`` maps key → header."""
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns.values()) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{torch.cuda.get_device_name(device)} ({props.total_memory / 2**30:.0f} GiB), "
                f"{torch.cuda.device_count()} GPU(s), CUDA {torch.version.cuda}")
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write_report(path: Path, device: torch.device, command: str, train: list[dict[str, Any]],
                 evals: list[dict[str, Any]], ddp: list[dict[str, Any]]) -> None:
    for row in train:
        row["mfu_pct"] = None if row.get("mfu") is None else 100 * row["mfu"]
    text = "\n".join([
        "# GPU throughput", "",
        f"Device: {describe(device)}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}. Command: `{command}` (benchmarks/gpu.py says how each "
        "figure is measured).", "",
        "## Training (one `train_step`: sampler on the device, forward, backward, AdamW)", "",
        table(train, {"shape": "config", "precision": "precision", "compile": "compiled",
                      "step_ms": "ms/step", "steps_per_s": "steps/s",
                      "tokens_per_s": "tokens/s", "mfu_pct": "MFU % of bf16 peak",
                      "warmup_s": "warmup s (compile)"}),
        "## Evaluation (Pendulum-v1, all envs in one vector env, one model call per step)", "",
        table(evals, {"policy": "policy", "envs": "envs", "env_steps": "env steps",
                      "seconds": "seconds", "env_steps_per_s": "env steps/s"}),
        "## DDP (torchrun, batch per GPU fixed)", "",
        table(ddp, {"ranks": "ranks", "global_batch": "global batch",
                    "steps_per_s": "steps/s", "samples_per_s": "samples/s",
                    "scaling": "samples/s vs 1 rank"}) if ddp else "not measured\n",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.with_suffix(".json").write_text(json.dumps(
        {"device": describe(device), "train": train, "eval": evals, "ddp": ddp}, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    p.add_argument("--tiny", action="store_true", help="toy sizes (checks the plumbing)")
    p.add_argument("--compile-cpu", action="store_true",
                   help="only time torch.compile against eager on this CPU (no GPU needed)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation)")
    p.add_argument("--envs", type=int, default=1000, help="envs of the eval section")
    p.add_argument("--ddp-steps", type=int, default=200)
    p.add_argument("--max-ranks", type=int, default=16, help="most DDP ranks")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled settings")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device, for MFU (default: PEAK_BF16_TFLOPS)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 suits a busy CPU)")
    p.add_argument("--out", type=Path, default=None,
                   help="report path (default results/gpu.md on CUDA; none on the CPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_cpu:
        return compile_on_cpu(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py needs a CUDA GPU and found none (torch {torch.__version__}, "
              f"torch.cuda.is_available() is False); nothing measured. Run it on a GPU "
              "machine, or pass --device cpu --tiny for a dry run of every section, or "
              "--compile-cpu to time torch.compile on this CPU.")
        return 0
    device = torch.device(args.device)
    shapes = [TINY] if args.tiny else [PAPER, LARGE]
    train = train_section(shapes, device, args)
    evals = eval_section(device, min(args.envs, 8) if args.tiny else args.envs,
                         TINY if args.tiny else PAPER)
    ddp = ddp_section(device, TINY if args.tiny else LARGE, 5 if args.tiny else args.ddp_steps,
                      args.max_ranks)
    out = args.out or (RESULTS / "gpu.md" if device.type == "cuda" and not args.tiny else None)
    if out is not None:
        write_report(out, device, "python -m benchmarks.gpu " + " ".join(argv or sys.argv[1:]),
                     train, evals, ddp)
        print(f"wrote {out}")
    return 0


def compile_on_cpu(args: argparse.Namespace) -> int:
    """Eager against compiled training steps on this CPU (fp32) at the small DT of the quick
    preset and the paper config: after ``--warmup`` steps each (compilation), blocks of
    ``--steps`` steps alternate between the two for 5 rounds (so machine noise hits both
    alike); the median block is reported."""
    small = Shape("quick preset (d64, 2 layers, K20, batch 64)", 64, 2, 1, 20, 64)
    cpu = torch.device("cpu")
    for shape in [TINY] if args.tiny else [small, PAPER]:
        steps = {c: make_step(shape, cpu, "fp32", c)[0] for c in (False, True)}
        first = {c: timed(fn, args.warmup, cpu) * args.warmup for c, fn in steps.items()}
        blocks: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(5):
            for c, fn in steps.items():
                blocks[c].append(timed(fn, args.steps, cpu))
        eager, compiled = (1000 * statistics.median(blocks[c]) for c in (False, True))
        print(f"cpu {shape.name}: eager {eager:.1f} ms/step, compiled {compiled:.1f} ms/step "
              f"({eager / compiled:.2f}x); first {args.warmup} steps {first[False]:.1f} s "
              f"eager, {first[True]:.1f} s compiled", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
