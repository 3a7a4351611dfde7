"""Same steps, same data, same return? Ours (as shipped and at its fastest setting) against HF
transformers ``DecisionTransformerModel``, trained side by side on a Pendulum dataset.

    python -m benchmarks.train_quality [--dataset data/d4rl/pendulum-medium-v0.hdf5]
                                       [--steps 1500 --episodes 100]

Each contender trains for ``--steps`` updates on batches drawn by the same seeded window
sampler (batch 64, K=20), AdamW lr 3e-4 with 500 warmup steps, weight decay 1e-4, clip 0.25,
then is evaluated by the same batched evaluator on the same ``--episodes`` episodes (seed 0),
conditioned on the dataset's expert reference score. Contenders: ours at the paper config
(embed 128, 3 layers, dropout 0.1, fp32), ours at its fastest setting (bf16 autocast, dropout
0), HF at the paper config (dropout 0.1, loss on its action head). Training steps are
interleaved in blocks so machine noise hits all alike.

Writes ``benchmarks/results/train_quality.{md,csv}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from benchmarks.machine import cpu_model, versions
from benchmarks.speed import hf_model
from benchmarks.workload import PAPER
from offline_dt.data import load_dataset
from offline_dt.data.windows import Normalizer, WindowSampler
from offline_dt.evaluation.episodes import evaluate_policy
from offline_dt.methods.dt import DTPolicy
from offline_dt.nn.config import DTConfig
from offline_dt.nn.transformer import DecisionTransformer
from offline_dt.study.tables import to_markdown
from offline_dt.training.step import make_optimizer, train_step
from offline_dt.training.train_config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
SCHEDULE = {"learning_rate": 3e-4, "warmup_steps": 500}


class HFAdapter(torch.nn.Module):
    """Gives an HF ``DecisionTransformerModel`` our model's call signature, so the same
    ``DTPolicy`` and evaluator drive it."""

    def __init__(self, hf: torch.nn.Module, cfg: DTConfig) -> None:
        super().__init__()
        self.hf = hf
        self.cfg = cfg

    def forward(self, returns_to_go, observations, actions, timesteps, mask=None,
                last_only=False):
        attention = (torch.ones(timesteps.shape, dtype=torch.long) if mask is None
                     else mask.long())
        _, action_preds, _ = self.hf(states=observations, actions=actions, rewards=None,
                                     returns_to_go=returns_to_go, timesteps=timesteps,
                                     attention_mask=attention, return_dict=False)
        return action_preds[:, -1:] if last_only else action_preds


def make_ours(ds, precision: str, dropout: float):
    cfg = TrainConfig(dataset="x", precision=precision,
                      **{**PAPER, **SCHEDULE, "dropout": dropout})
    torch.manual_seed(0)
    model = DecisionTransformer(cfg.model_config(ds.obs_dim, ds.act_dim, ds.discrete))
    optimizer, scheduler = make_optimizer(model, cfg)

    def step(batch):
        train_step(model, optimizer, scheduler, batch, cfg)

    return model, step


def make_hf(ds):
    torch.manual_seed(0)
    hf = hf_model(ds.obs_dim, ds.act_dim)
    cfg = TrainConfig(dataset="x", **{**PAPER, **SCHEDULE})
    optimizer, scheduler = make_optimizer(hf, cfg)
    model = HFAdapter(hf, DTConfig(obs_dim=ds.obs_dim, act_dim=ds.act_dim,
                                   context_length=PAPER["context_length"]))

    def step(b):
        hf.train()
        pred = model(b.returns_to_go, b.observations, b.actions, b.timesteps, b.mask)
        loss = F.mse_loss(pred[b.mask], b.actions[b.mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), PAPER["grad_clip"])
        optimizer.step()
        scheduler.step()

    return model, step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="data/d4rl/pendulum-medium-v0.hdf5")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--block", type=int, default=50, help="steps per interleaved block")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    ds = load_dataset(args.dataset)
    norm = Normalizer.fit(ds)
    target = float(ds.metadata.get("ref_max_score", ds.episode_returns.max()))
    contenders = {
        "ours (paper config, fp32)": make_ours(ds, "fp32", 0.1),
        "ours (fastest: bf16, dropout 0)": make_ours(ds, "bf16", 0.0),
        "HF DecisionTransformerModel (paper config)": make_hf(ds),
    }
    samplers = {k: WindowSampler(ds, norm, PAPER["context_length"], 1000, seed=0)
                for k in contenders}
    seconds = dict.fromkeys(contenders, 0.0)
    for _ in range(0, args.steps, args.block):
        for name, (model, step) in contenders.items():
            model.train()
            t = time.perf_counter()
            for _ in range(args.block):
                step(samplers[name].sample(PAPER["batch_size"]))
            seconds[name] += time.perf_counter() - t
    rows = []
    for name, (model, _) in contenders.items():
        res = evaluate_policy("Pendulum-v1", DTPolicy(model, norm, target), args.episodes,
                              seed=0, ref_min_score=ds.metadata.get("ref_min_score"),
                              ref_max_score=ds.metadata.get("ref_max_score"))
        rows.append({"contender": name, "steps": args.steps,
                     "train_seconds": round(seconds[name], 1),
                     "ms_per_step": round(1e3 * seconds[name] / args.steps, 1),
                     "episodes": res.episodes, "mean_return": round(res.mean, 1),
                     "ci95": round(res.ci95, 1),
                     "normalized_score": (None if res.normalized_score is None
                                          else round(res.normalized_score, 1))})
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "train_quality.csv", index=False)
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["-m", "benchmarks.train_quality", *(argv or sys.argv[1:])])
    md = f"""# Same steps, same return? Ours vs HF DecisionTransformerModel

Command: `{command}` ({(time.perf_counter() - t_start) / 60:.1f} min)

Machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads},
{platform.platform()}. Versions: {versions()}.

Dataset `{args.dataset}`; {args.steps} updates each (batch 64, K=20, AdamW lr 3e-4, 500
warmup steps, clip 0.25), interleaved in blocks of {args.block}; evaluated on the same
{args.episodes} episodes (seed 0) conditioned on the expert reference score {target:.1f}.

{to_markdown(table, digits=1)}
"""
    (args.out / "train_quality.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
