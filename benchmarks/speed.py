"""Ours against the implementations a user would pick instead, side by side in one process.

    pip install -e ".[bench]"      # HF transformers; d3rlpy: see README (it pins gymnasium 1.0)
    python -m benchmarks.speed [--sections train floor eval memory] [--threads N]
    python -m benchmarks.speed --sections train --device cuda --out-name speed-cuda

Sections (each interleaves the contenders round by round, so machine noise hits all alike, and
reports whole-block medians):

* ``train``: one training step (sample a batch of windows + forward + loss + backward +
  gradient-norm clip 0.25 + AdamW) at the paper's gym config (batch 64, K=20, embed 128,
  3 layers, 1 head, dropout 0.1, ReLU) on a Pendulum-shaped dataset: ours as shipped
  (``precision="auto"``: bf16 autocast where the CPU computes bf16 natively, else fp32; on
  CUDA fp32, this step being launch-bound, with the loss captured as CUDA graphs; dropout 0.1),
  ours with dropout 0 (the reproduce presets' setting), ours with
  ``--compile true``, ours at the precision ``auto`` did not pick, HF transformers
  ``DecisionTransformerModel`` (GPT-2 encoder, SDPA attention, fed by our window sampler, loss on
  its action head), and d3rlpy ``DecisionTransformer.update`` on a batch from its own
  ``ReplayBuffer.sample_trajectory_batch`` (state encoder: one linear layer of 128, as the
  paper's; AdamW, weight decay 1e-4, clip 0.25). All on ``--device``: on CUDA ours as shipped
  captures its loss as CUDA graphs (``--cuda-graph auto``), and ours with ``--cuda-graph
  false`` (eager) is timed beside it. Beside them, the floor (``gemm_floor``): the shipped
  step's own matrix products (every mm/addmm/bmm of its forward and backward, recorded under a
  ``TorchDispatchMode``) replayed alone on operands of the same shapes. No step running them
  through the same kernels goes under it; the rate of one large product on the device says
  how far faster kernels could lower it.
* ``floor``: the ``paper`` reproduce preset's small DT step on one torch thread (as each of
  its 2 workers runs it on 2 cores) beside its own floor: the share of the preset's training
  that is matrix products.
* ``eval``: 200 Pendulum episodes of a paper-config DT conditioned on a target return: our
  batched vector-env evaluator against the reference implementation's one-episode-at-a-time
  loop (``offline_dt.evaluation.episodes.evaluate_sequential``), on the same seeds (the returns must
  agree); the same weights as a band network (``--attention band``) acting from its key/value
  cache, with the largest |return difference| to its full recomputation on the same 200
  episodes (``benchmarks/exact_cache.py``'s check); and d3rlpy's stateful wrapper
  (``as_stateful_wrapper``, one ``predict`` per env step; timed on fewer episodes and
  compared per episode).
* ``generate``: random 1M Pendulum steps and a 200k-step rollout of the trained SAC agent
  (``data/agents/pendulum/seed0``), each written to HDF5 and Minari.
* ``memory``: peak resident memory of ``offline-dt train`` on the 1M-step pendulum-random
  dataset (needs ``data/d4rl/pendulum-random-v0.hdf5``: ``offline-dt generate``).
* ``pipeline``: stage wall times of the last ``benchmarks/pendulum.py`` run of a preset
  (``--pipeline-timings``: its ``timings.json``; default the paper preset's).

Writes ``benchmarks/results/speed.md`` and ``speed.csv`` (columns ``machine, benchmark,
ours, peer, ours_seconds, peer_seconds, ratio``; ratio = ours / peer, below 1 means ours is
faster). The page keeps one section per machine kind (``benchmarks.machine.cpu_features``:
the CPU's vendor, torch's CPU capability and its native bf16 flags, e.g.
``AuthenticAMD/AVX512/avx512_bf16``; on CUDA the GPU): a run replaces its own kind's section
and CSV rows and keeps the others. Each section names the CPU's features (AVX2, AVX512F,
AVX512-BF16, AMX, from ``/proc/cpuinfo``; torch's CPU capability) and what ``--precision
auto`` resolves to beside its ratios. The train section also reports the time the
``--compile true`` step took to build and compile, apart from its per-step time. A section
whose peer is not installed is skipped and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.exact_cache import exactness
from benchmarks.machine import (
    cpu_features,
    cpu_model,
    features_line,
    gpu_model,
    machine_kind,
    page_sections,
    versions,
    write_page,
)
from benchmarks.workload import PAPER, pendulum_like
from offline_dt.data.windows import Normalizer, WindowSampler
from offline_dt.methods import get_method
from offline_dt.nn.transformer import DecisionTransformer
from offline_dt.training.cuda_graph import GraphedLoss
from offline_dt.training.distributed import Ranks
from offline_dt.training.step import loss_function, make_optimizer, train_step
from offline_dt.training.train_config import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"


def interleave(contenders: dict[str, Callable[[], None]], rounds: int, block: int,
               warmup: int, sync: Callable[[], None] = lambda: None
               ) -> dict[str, list[float]]:
    """Seconds per call of each contender: ``rounds`` rounds, each timing a block of ``block``
    calls of every contender in turn (after ``warmup`` untimed calls each); ``sync`` waits for
    queued device work (``torch.cuda.synchronize``) before each clock read."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            sync()
            t = time.perf_counter()
            for _ in range(block):
                fn()
            sync()
            out[name].append((time.perf_counter() - t) / block)
    return out


# ---------------------------------------------------------------------------------- train
def ours_step(precision: str, dropout: float = PAPER["dropout"], compile: bool = False,
              cuda_graph: bool | None = None, device: str = "cpu",
              config: dict[str, Any] | None = None) -> Callable[[], None]:
    """One training step of ours (``train_step``: the loop's own update, with the loss the
    loop builds, ``loss_function``) at the paper config (``config``: other ``TrainConfig``
    fields, e.g. a preset's); ``compile``: the loss under ``torch.compile`` as
    ``--compile true`` runs it; ``cuda_graph``: as ``--cuda-graph`` (``auto`` captures the
    loss as CUDA graphs on a GPU). Compiled or captured here, before the timing."""
    ds = pendulum_like()
    dev = torch.device(device)
    fields = {**PAPER, "dropout": dropout} if config is None else dict(config)
    cfg = TrainConfig(dataset="pendulum-like", precision=precision, compile=compile,
                      cuda_graph=cuda_graph, **fields
                      ).resolved(int(ds.episode_lengths.max()), dev)
    sampler = WindowSampler(ds, Normalizer.fit(ds), cfg.context_length, cfg.max_timestep, 0,
                            device=dev)
    torch.manual_seed(0)
    model = DecisionTransformer(cfg.model_config(ds.obs_dim, ds.act_dim, ds.discrete))
    model = model.to(dev).train()
    optimizer, scheduler = make_optimizer(model, cfg)
    method = get_method(cfg.method)
    loss_fn = loss_function(cfg, method, model, Ranks(device=dev))

    def step() -> None:
        train_step(model, optimizer, scheduler, sampler.sample(cfg.batch_size), cfg, method,
                   loss_fn=loss_fn)

    step()
    # what the loop resolved to, for the row labels
    step.precision = cfg.precision  # type: ignore[attr-defined]
    step.graphed = isinstance(loss_fn, GraphedLoss)  # type: ignore[attr-defined]
    step.setting = cfg.precision + (", CUDA graphs" if step.graphed else "")  # type: ignore
    return step


#: The matrix-product ops that :func:`gemm_floor` replays.
GEMM_OPS = frozenset((torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                      torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default))


class _GemmRecorder(TorchDispatchMode):
    """Records the matrix products run under it (forward and autograd's backward alike):
    the op, and per tensor operand its shape, strides, dtype and device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, list[Any], dict[str, Any]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in GEMM_OPS:
            spec = [("tensor", a.shape, a.stride(), a.dtype, a.device)
                    if isinstance(a, torch.Tensor) else a for a in args]
            self.calls.append((func, spec, kwargs))
        return func(*args, **kwargs)


def _operand(spec: Any) -> Any:
    """A fresh tensor with the recorded shape, strides, dtype and device (else the value)."""
    if not (isinstance(spec, tuple) and spec and spec[0] == "tensor"):
        return spec
    _, shape, stride, dtype, device = spec
    size = 1 + sum((n - 1) * st for n, st in zip(shape, stride, strict=True)) if all(shape) else 0
    base = torch.empty(size, dtype=dtype, device=device).normal_()
    return base.as_strided(shape, stride)


def gemm_floor(step: Callable[[], None]) -> Callable[[], None]:
    """The matrix products of one call of ``step`` alone: every ``mm``, ``addmm``, ``bmm``
    and ``baddbmm`` it runs, forward and backward (recorded under a ``TorchDispatchMode``),
    replayed on fresh operands of the same shapes, strides and dtypes. No step that runs
    these products through the same kernels can take less time: it is the floor under the
    step (:func:`big_product_rate` says how far faster kernels could lower it). Its ``gflop``
    attribute is those products' work (10^9 multiply-adds x 2)."""
    rec = _GemmRecorder()
    with rec:
        step()
    calls = [(f, [_operand(a) for a in spec], kw) for f, spec, kw in rec.calls]
    counter = FlopCounterMode(display=False)
    with counter:
        for f, args, kw in calls:
            f(*args, **kw)

    def replay() -> None:
        for f, args, kw in calls:
            f(*args, **kw)

    replay.gflop = counter.get_total_flops() / 1e9  # type: ignore[attr-defined]
    replay.calls = len(calls)  # type: ignore[attr-defined]
    return replay


def big_product_rate(device: str = "cpu", n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of one ``(n, n) @ (n, n)`` fp32 product on ``device`` (median of ``rounds``):
    the rate a large, well-shaped product reaches there, against which the small products of
    a DT step (:func:`gemm_floor`) can be read."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = interleave({"product": lambda: a @ b}, rounds, 3, warmup=2, sync=sync)["product"]
    return 2 * n ** 3 / statistics.median(times) / 1e9


def hf_model(obs_dim: int, act_dim: int) -> torch.nn.Module:
    """HF transformers ``DecisionTransformerModel`` at the paper config (GPT-2, SDPA; eager
    attention on transformers releases without SDPA for this model, e.g. 5.17)."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    def config(attn: str) -> DecisionTransformerConfig:
        return DecisionTransformerConfig(
            state_dim=obs_dim, act_dim=act_dim, hidden_size=PAPER["embed_dim"],
            n_layer=PAPER["n_layer"], n_head=PAPER["n_head"], n_inner=4 * PAPER["embed_dim"],
            activation_function="relu", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
            max_ep_len=1000, n_positions=1024, action_tanh=True, attn_implementation=attn)

    try:
        return DecisionTransformerModel(config("sdpa"))
    except ValueError:  # transformers releases before SDPA support for this model
        return DecisionTransformerModel(config("eager"))


def hf_step(device: str = "cpu") -> Callable[[], None]:
    ds = pendulum_like()
    sampler = WindowSampler(ds, Normalizer.fit(ds), PAPER["context_length"], 1000, 0,
                            device=device)
    torch.manual_seed(0)
    model = hf_model(ds.obs_dim, ds.act_dim).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=PAPER["learning_rate"],
                                  weight_decay=PAPER["weight_decay"])

    def step() -> None:
        b = sampler.sample(PAPER["batch_size"])
        _, action_preds, _ = model(states=b.observations, actions=b.actions, rewards=None,
                                   returns_to_go=b.returns_to_go, timesteps=b.timesteps,
                                   attention_mask=b.mask.long(), return_dict=False)
        loss = F.mse_loss(action_preds[b.mask], b.actions[b.mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), PAPER["grad_clip"])
        optimizer.step()

    step.attention = model.config._attn_implementation  # type: ignore[attr-defined]
    return step


def d3rlpy_algo(ds: Any, device: str = "cpu") -> tuple[Any, Any]:
    """A d3rlpy DecisionTransformer at the paper config and the ReplayBuffer it samples."""
    import d3rlpy

    buffer = d3rlpy.dataset.MDPDataset(
        observations=ds.observations, actions=ds.actions, rewards=ds.rewards,
        terminals=ds.terminals.astype(np.float32), timeouts=ds.timeouts.astype(np.float32),
        action_space=d3rlpy.ActionSpace.CONTINUOUS)
    algo = d3rlpy.algos.DecisionTransformerConfig(
        batch_size=PAPER["batch_size"], context_size=PAPER["context_length"],
        learning_rate=PAPER["learning_rate"], num_heads=PAPER["n_head"],
        num_layers=PAPER["n_layer"], attn_dropout=0.1, resid_dropout=0.1, embed_dropout=0.1,
        activation_type="relu", max_timestep=1000,
        encoder_factory=d3rlpy.models.VectorEncoderFactory(
            hidden_units=[PAPER["embed_dim"]], exclude_last_activation=True),
        optim_factory=d3rlpy.optimizers.AdamWFactory(
            weight_decay=PAPER["weight_decay"], clip_grad_norm=PAPER["grad_clip"]),
    ).create(device="cuda:0" if device.startswith("cuda") else "cpu:0")
    algo.build_with_dataset(buffer)
    return algo, buffer


def d3rlpy_step(device: str = "cpu") -> Callable[[], None]:
    torch.manual_seed(0)
    algo, buffer = d3rlpy_algo(pendulum_like(), device)

    def step() -> None:
        algo.update(buffer.sample_trajectory_batch(PAPER["batch_size"],
                                                   length=PAPER["context_length"]))

    return step


def train_contenders(dev: str, notes: list[str]) -> dict[str, Callable[[], None]]:
    """The train section's contenders on ``dev``: ours as shipped and its variants, the floor
    under the shipped step (:func:`gemm_floor`, labelled :data:`FLOOR_LABEL`) and the peers
    that are installed (``notes`` says which are not)."""
    shipped = ours_step("auto", device=dev)
    dropout0 = ours_step("auto", dropout=0.0, device=dev)
    auto = shipped.precision
    t = time.perf_counter()
    compiled = ours_step("auto", compile=True, device=dev)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    ours_step("auto", device=dev)
    eager_s = time.perf_counter() - t
    notes.append(f"Compile time: building the `--compile true` step and its first call (where "
                 f"torch.compile compiles the loss, forward and backward) took {compile_s:.1f} s "
                 f"against {eager_s:.1f} s for the eager step's; the compiled row below times "
                 "only the calls after it.")
    contenders: dict[str, Callable[[], None]] = {
        f"ours (as shipped: precision auto = {shipped.setting} here, dropout 0.1)": shipped,
        f"ours (dropout 0, precision auto = {dropout0.setting})": dropout0,
        f"ours (--compile true, {auto})": compiled,
    }
    if shipped.graphed:
        contenders[f"ours (--cuda-graph false: eager, {auto})"] = ours_step(
            "auto", cuda_graph=False, device=dev)
    for prec in {"fp32", "bf16"} - {auto}:
        other = ours_step(prec, device=dev)
        contenders[f"ours ({other.setting}, not the default here)"] = other
    # a CUDA-graph replay hides its products from the recorder: take them from the eager step
    contenders[FLOOR_LABEL] = gemm_floor(
        contenders[f"ours (--cuda-graph false: eager, {auto})"] if shipped.graphed else shipped)
    for name, make in (("HF transformers DecisionTransformerModel", hf_step),
                       ("d3rlpy DecisionTransformer", d3rlpy_step)):
        try:
            contenders[name] = make(dev)
        except ImportError as e:
            notes.append(f"train: {name} skipped ({e}); install the bench extra")
        if hasattr(contenders.get(name), "attention"):
            notes.append(f"{name}: attention implementation "
                         f"{contenders[name].attention!r} (this transformers release)")
    return contenders


def floor_note(floor: Callable[[], None], med: dict[str, float], dev: str) -> str:
    """What the floor says: its products' work and rate, and beside it the rate of one large
    fp32 product on ``dev`` (:func:`big_product_rate`) as a fraction of the faster peer's
    step (``med``: median seconds per contender)."""
    rate = big_product_rate(dev)
    fastest_peer = min((v for k, v in med.items() if not is_ours(k)), default=float("nan"))
    ideal = floor.gflop / rate  # type: ignore[attr-defined]
    return (f"Floor: the shipped step runs {floor.calls} matrix products "  # type: ignore
            f"({floor.gflop:.2f} GFLOP); replayed alone on the same shapes they are the "
            "time no step running them through the same kernels can go under: "
            f"{floor.gflop / med[FLOOR_LABEL]:.0f} GFLOP/s. For scale, one 2048 x 2048 x "
            f"2048 fp32 product runs at {rate:.0f} GFLOP/s on this device (median of 5); at "
            f"that rate the step's products would take {ideal * 1e3:.1f} ms, "
            f"{ideal / fastest_peer:.3f} of the faster peer's whole step.")


def section_train(args: argparse.Namespace, rows: list[dict], notes: list[str]) -> None:
    dev = args.device
    contenders = train_contenders(dev, notes)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    times = interleave(contenders, args.rounds, args.block, warmup=3, sync=sync)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = ["| implementation | ms / step (median) | per-round ms |", "|---|---:|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k] * 1e3:.1f} | "
                     f"{', '.join(f'{x * 1e3:.0f}' for x in v)} |")
    notes.append(f"### Train step (paper gym config, on {dev})\n\n" + "\n".join(lines))
    notes.append(floor_note(contenders[FLOOR_LABEL], med, dev))
    ours_rows = [k for k in contenders if is_ours(k)]
    for ours in ours_rows:
        for peer in contenders:
            if peer in ours_rows:
                continue
            rows.append({"benchmark": "train_step", "ours": ours, "peer": peer,
                         "ours_seconds": med[ours], "peer_seconds": med[peer],
                         "ratio": med[ours] / med[peer]})


#: The train section's row for :func:`gemm_floor` of the shipped step.
FLOOR_LABEL = "floor: the shipped step's matrix products alone (not a training step)"


def is_ours(label: str) -> bool:
    """A train-section contender of ours (a step or the floor under one), not a peer."""
    return label.startswith("ours") or label == FLOOR_LABEL


def section_floor(args: argparse.Namespace, rows: list[dict], notes: list[str]) -> None:
    """The ``paper`` reproduce preset's DT step as a preset worker runs it (one torch thread,
    ``reproduce`` giving each of 2 workers one of 2 cores) beside :func:`gemm_floor` of it:
    how much of the preset's training is matrix products."""
    from offline_dt.study.presets import PRESETS

    shape = ("embed_dim", "n_layer", "n_head", "context_length", "dropout", "learning_rate",
             "warmup_steps", "batch_size")
    config = {**PAPER, **{k: v for k, v in PRESETS["paper"].train.items() if k in shape}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step = ours_step("auto", device=args.device, config=config)
        floor = gemm_floor(step)
        times = interleave({"step": step, "floor": floor}, args.rounds, args.block, warmup=3)
    finally:
        torch.set_num_threads(threads)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows.append({"benchmark": "preset_step_floor",
                 "ours": "floor: the paper preset's DT step, matrix products alone",
                 "peer": "ours: the paper preset's DT step (1 thread)",
                 "ours_seconds": med["floor"], "peer_seconds": med["step"],
                 "ratio": med["floor"] / med["step"]})
    notes.append(
        f"### Floor of the `paper` preset's DT step (1 torch thread, as each of its workers)\n\n"
        f"Config {json.dumps(config)}. Step {med['step'] * 1e3:.1f} ms (rounds: "
        f"{', '.join(f'{x * 1e3:.0f}' for x in times['step'])}); its {floor.calls} matrix "
        f"products ({floor.gflop:.2f} GFLOP) alone {med['floor'] * 1e3:.1f} ms (rounds: "
        f"{', '.join(f'{x * 1e3:.0f}' for x in times['floor'])}), "
        f"{floor.gflop / med['floor']:.0f} GFLOP/s: {med['floor'] / med['step']:.0%} of the "
        f"step. A step that ran nothing but its matrix products would be "
        f"{med['step'] / med['floor']:.2f}x faster.")


# ---------------------------------------------------------------------------------- eval
def section_eval(args: argparse.Namespace, rows: list[dict], notes: list[str]) -> None:
    from offline_dt.evaluation.episodes import evaluate_policy, evaluate_sequential
    from offline_dt.methods.dt import DTPolicy

    ds = pendulum_like()
    cfg = TrainConfig(dataset="pendulum-like", **PAPER)
    torch.manual_seed(0)
    model = DecisionTransformer(cfg.model_config(ds.obs_dim, ds.act_dim, ds.discrete)).eval()
    norm = Normalizer.fit(ds)
    band = DecisionTransformer(dataclasses.replace(model.cfg, attention="band")).eval()
    band.load_state_dict(model.state_dict())
    policy = DTPolicy(model, norm, target_return=-150.0)
    cached = DTPolicy(model, norm, target_return=-150.0, kv_cache=True)
    band_cached = DTPolicy(band, norm, target_return=-150.0, kv_cache=True)
    n = args.eval_episodes
    batched_s, cache_s, band_s, seq_s, diffs = [], [], [], [], []
    for _ in range(args.eval_rounds):
        b = evaluate_policy("Pendulum-v1", policy, n, seed=0)
        c = evaluate_policy("Pendulum-v1", cached, n, seed=0)
        bc = evaluate_policy("Pendulum-v1", band_cached, n, seed=0)
        s = evaluate_sequential("Pendulum-v1", policy, n, seed=0)
        batched_s.append(b.wall_seconds)
        cache_s.append(c.wall_seconds)
        band_s.append(bc.wall_seconds)
        seq_s.append(s.wall_seconds)
        diffs.append(float(np.abs(np.asarray(b.returns) - np.asarray(s.returns)).max()))
    mb, mc, mband, ms = (statistics.median(x) for x in (batched_s, cache_s, band_s, seq_s))
    band_diff, band_full_s, _ = exactness(band, norm, -150.0, n, np.asarray(bc.returns))
    loop = "one-episode-at-a-time loop (reference implementation)"
    for ours, sec in (("batched vector-env evaluator (window DT, recomputed: exact)", mb),
                      ("band DT, key/value cache (exact by construction)", mband),
                      ("window DT, kv_cache=True (approximate after K steps)", mc)):
        rows.append({"benchmark": f"eval_{n}_episodes", "ours": ours, "peer": loop,
                     "ours_seconds": sec, "peer_seconds": ms, "ratio": sec / ms})
    text = (f"### Evaluation ({n} Pendulum episodes, untrained paper-config DT, target -150)"
            f"\n\nWindow DT recomputed (exact; the default for window checkpoints): "
            f"{', '.join(f'{x:.1f}' for x in batched_s)} s; the same weights as a band DT "
            f"acting from its key/value cache (exact; the default for band checkpoints): "
            f"{', '.join(f'{x:.1f}' for x in band_s)} s; window DT with the key/value cache "
            f"(approximate): {', '.join(f'{x:.1f}' for x in cache_s)} s; one episode at a "
            f"time: {', '.join(f'{x:.1f}' for x in seq_s)} s. Median ratios to the loop: window "
            f"recomputed {mb / ms:.3f} ({ms / mb:.1f}x faster), band cached {mband / ms:.3f} "
            f"({ms / mband:.1f}x faster), window cached {mc / ms:.3f}. Largest |return "
            f"difference| between exact batched and the loop on the same seeds: "
            f"{max(diffs):.2e}. **Largest |return difference| between the band DT's cache and "
            f"its full recomputation** (the banded forward over the whole episode so far at "
            f"every step, {band_full_s:.0f} s) on the same {n} episodes: **{band_diff:.2e}**.")
    try:
        import d3rlpy  # noqa: F401

        algo, _ = d3rlpy_algo(ds)
        k = args.d3rlpy_episodes
        per_ep = []
        for _ in range(args.eval_rounds):
            env = gym.make("Pendulum-v1")
            t = time.perf_counter()
            for i in range(k):
                wrapper = algo.as_stateful_wrapper(target_return=-150.0)
                obs, _ = env.reset(seed=i)
                reward, done = 0.0, False
                while not done:
                    obs, reward, term, trunc, _ = env.step(wrapper.predict(obs, float(reward)))
                    done = term or trunc
            per_ep.append((time.perf_counter() - t) / k)
        md3 = statistics.median(per_ep)
        rows.append({"benchmark": "eval_per_episode", "ours": "batched vector-env evaluator",
                     "peer": "d3rlpy as_stateful_wrapper loop", "ours_seconds": mb / n,
                     "peer_seconds": md3, "ratio": (mb / n) / md3})
        text += (f" d3rlpy's stateful wrapper: {md3:.3f} s per episode (median of "
                 f"{args.eval_rounds} runs of {k} episodes), i.e. {md3 * 200:.0f} s per 200.")
    except ImportError as e:
        text += f" d3rlpy skipped ({e})."
    notes.append(text + "\n\n" + kv_cache_drift(args))


def kv_cache_drift(args: argparse.Namespace) -> str:
    """Returns of trained checkpoints with exact recomputation vs the key/value cache, same
    episodes (the cache is exact for the first K steps only)."""
    from offline_dt.evaluation.episodes import evaluate_policy
    from offline_dt.methods.dt import DTPolicy
    from offline_dt.training.checkpoint import load_checkpoint

    lines = ["Drift of the key/value cache on trained checkpoints (same "
             f"{args.eval_episodes} episodes, seed 0, conditioned on the expert reference "
             "score):", "", "| checkpoint | exact mean return | cached mean return | "
             "mean abs per-episode difference | max abs difference |", "|---|---:|---:|---:|---:|"]
    found = False
    for path in args.drift_checkpoints:
        if not Path(path).exists():
            continue
        found = True
        ckpt = load_checkpoint(path, "cpu")
        target = float((ckpt.dataset_info.get("metadata") or {}).get("ref_max_score", -150.0))
        res = []
        for kv in (False, True):
            pol = DTPolicy(ckpt.model, ckpt.normalizer, target, kv_cache=kv)
            res.append(np.asarray(evaluate_policy("Pendulum-v1", pol, args.eval_episodes,
                                                  seed=0).returns))
        d = np.abs(res[0] - res[1])
        lines.append(f"| `{path}` | {res[0].mean():.1f} | {res[1].mean():.1f} | "
                     f"{d.mean():.1f} | {d.max():.1f} |")
    if not found:
        return "Key/value-cache drift: skipped (no trained checkpoint among --drift-checkpoints)."
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- generate
def section_generate(args: argparse.Namespace, rows: list[dict], notes: list[str]) -> None:
    """Random 1M steps and a 200k-step SAC rollout, each written to both formats."""
    from datagen.behaviour import load_behaviour_policy
    from datagen.rollout import rollout
    from offline_dt.data.d4rl import write_hdf5
    from offline_dt.data.minari_io import write_minari

    agent = Path(args.agent)
    jobs = {"random 1M steps": (1_000_000, None)}
    if (agent / "policy.safetensors").is_file():
        jobs["SAC 200k steps"] = (200_000, agent)
    else:
        notes.append(f"generate: SAC rollout skipped, no trained agent at {agent}")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in jobs}
    for _ in range(args.gen_rounds):
        for name, (steps, path) in jobs.items():
            with tempfile.TemporaryDirectory() as tmp:
                torch.manual_seed(0)
                policy = None
                t = time.perf_counter()
                if path is not None:
                    policy = load_behaviour_policy(path, "Pendulum-v1", "cpu",
                                                   deterministic=False, seed=0)
                ds = rollout("Pendulum-v1", steps, policy, seed=0, num_envs=50,
                             processes=os.cpu_count() or 1).dataset
                t_roll = time.perf_counter() - t
                write_hdf5(ds, Path(tmp) / "d.hdf5")
                write_minari(ds, "pendulum/bench-v0", Path(tmp) / "minari")
                times[name].append((t_roll, time.perf_counter() - t))
    lines = ["| rollout | rollout s (median) | rollout + HDF5 + Minari s (median) | runs |",
             "|---|---:|---:|---|"]
    for name, ts in times.items():
        roll = statistics.median(x[0] for x in ts)
        total = statistics.median(x[1] for x in ts)
        lines.append(f"| {name} | {roll:.1f} | {total:.1f} | "
                     f"{', '.join(f'{x[1]:.1f}' for x in ts)} |")
    notes.append("### Generation (Pendulum-v1, `datagen.rollout.rollout` with 50 sub-envs, "
                 f"random rollouts split over {os.cpu_count()} processes, then "
                 "`write_hdf5` and `write_minari`)\n\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------- pipeline
def section_pipeline(args: argparse.Namespace, rows: list[dict], notes: list[str]) -> None:
    """Stage wall times of the last ``reproduce`` of a preset (from its timings.json)."""
    path = Path(args.pipeline_timings)
    if not path.is_file():
        notes.append(f"pipeline: skipped, {path} missing (python -m benchmarks.pendulum "
                     "--preset PRESET)")
        return
    t = json.loads(path.read_text())
    gen = t.get("generate_stages", {})
    lines = ["| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t["stages"].items()]
    lines.append(f"| total (wall) | {t['total']:.1f} |")
    notes.append(f"### Pipeline: `reproduce --preset {path.parent.name}` "
                 f"({t.get('workers', 1)} worker(s); from `{path}`)\n\nStage seconds are "
                 "summed over workers; "
                 "`generate` covers only what was not reused (its own stages: "
                 f"{json.dumps({k: round(v, 1) for k, v in gen.items()})}).\n\n"
                 + "\n".join(lines))


# ---------------------------------------------------------------------------------- memory
def section_memory(args: argparse.Namespace, rows: list[dict], notes: list[str]) -> None:
    data = Path(args.memory_dataset)
    if not data.is_file():
        notes.append(f"memory: skipped, {data} missing (run `offline-dt generate`)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "offline_dt.cli", "train", "--dataset", str(data),
               "--steps", str(args.memory_steps), "--device", "cpu", "--run-dir", tmp,
               "--overwrite", "true", "--progress", "false", "--checkpoint-every",
               str(args.memory_steps)]
        # A fresh parent whose only child is the run: RUSAGE_CHILDREN of this process would
        # report the largest child of any earlier section (generate's rollout workers).
        probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                 "capture_output=True); print(resource.getrusage("
                 "resource.RUSAGE_CHILDREN).ru_maxrss)")
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True,
                             capture_output=True, text=True).stdout
        secs = time.perf_counter() - t
    peak_mb = int(out.split()[-1]) / 1024  # Linux: KiB
    notes.append(f"### Memory\n\nPeak RSS of `{' '.join(shlex.quote(c) for c in cmd[1:])}` "
                 f"(paper config, {args.memory_steps} steps, whole process including the "
                 f"dataset load): **{peak_mb:.0f} MiB** ({secs:.0f} s).")


#: The head of a speed page, above its sections (one per machine kind).
PAGE_HEAD = """# Speed: ours vs peers, measured side by side

One section per machine kind the page was measured on (the CPU's vendor, torch's CPU kernels
and its native bf16 flags, or the GPU): a run of `benchmarks/speed.py` replaces only its own
machine kind's section and keeps the others as they were."""


def auto_precision(device: str) -> str:
    """What ``--precision auto`` resolves to for the paper config on ``device``."""
    dev = torch.device(device)
    cfg = TrainConfig(dataset="pendulum-like", **PAPER).resolved(200, dev)
    return cfg.precision


#: The heading each section's notes start with on the page (:func:`dropped_sections`).
SECTION_HEADINGS = {"train": "### Train step", "floor": "### Floor of",
                    "eval": "### Evaluation (", "generate": "### Generation (",
                    "memory": "### Memory", "pipeline": "### Pipeline:"}


def dropped_sections(page: Path, kind: str, sections: list[str]) -> list[str]:
    """The sections that ``page``'s ``kind`` section holds and a run of ``sections`` alone
    would drop (a run rewrites its machine kind's whole section)."""
    if not page.is_file():
        return []
    old = page_sections(page.read_text())[1].get(kind, "")
    return [s for s, head in SECTION_HEADINGS.items() if s not in sections and head in old]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sections = ["train", "floor", "eval", "generate", "memory", "pipeline"]
    p.add_argument("--sections", nargs="+", default=sections, choices=sections)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=7, help="train: interleaved rounds")
    p.add_argument("--block", type=int, default=10, help="train: steps per timed block")
    p.add_argument("--eval-episodes", type=int, default=200)
    p.add_argument("--eval-rounds", type=int, default=3)
    p.add_argument("--d3rlpy-episodes", type=int, default=5)
    p.add_argument("--drift-checkpoints", nargs="*", default=[
        f"data/runs/paper/Pendulum-v1/pendulum-{lv}-v0/dt/seed0/checkpoint.pt"
        for lv in ("expert", "medium", "full-replay")])
    p.add_argument("--memory-dataset", default="data/d4rl/pendulum-random-v0.hdf5")
    p.add_argument("--memory-steps", type=int, default=200)
    p.add_argument("--gen-rounds", type=int, default=3)
    p.add_argument("--agent", default="data/agents/pendulum/seed0",
                   help="trained SAC agent directory (offline-dt generate)")
    p.add_argument("--pipeline-timings",
                   default="data/reports/Pendulum-v1/paper/timings.json")
    p.add_argument("--device", default="cpu",
                   help="train: the device every contender trains on (cpu, cuda)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--out-name", default="speed",
                   help="the page's name: OUT/NAME.md and OUT/NAME.csv")
    p.add_argument("--drop-sections", action="store_true",
                   help="let a run of some --sections drop the others from its machine "
                        "kind's section of the page (refused otherwise)")
    args = p.parse_args(argv)
    kind = machine_kind(args.device, cpu_features())
    page = args.out / f"{args.out_name}.md"
    dropped = dropped_sections(page, kind, args.sections)
    if dropped and not args.drop_sections:
        p.error(f"{page}: its `{kind}` section holds {dropped}, which this run of "
                f"--sections {' '.join(args.sections)} would drop (a run rewrites its machine "
                f"kind's whole section); add them to --sections, write elsewhere with --out, "
                f"or pass --drop-sections")
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    notes: list[str] = []
    t0 = time.perf_counter()
    for name in args.sections:
        {"train": section_train, "floor": section_floor, "eval": section_eval,
         "generate": section_generate,
         "memory": section_memory, "pipeline": section_pipeline}[name](args, rows, notes)
    wall = time.perf_counter() - t0

    import pandas as pd

    cols = ["benchmark", "ours", "peer", "ours_seconds", "peer_seconds", "ratio"]
    table = pd.DataFrame(rows, columns=cols)
    args.out.mkdir(parents=True, exist_ok=True)
    features = cpu_features()
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["-m", "benchmarks.speed", *(argv or sys.argv[1:])])
    md_rows = "\n".join(
        f"| {r.benchmark} | {r.ours} | {r.peer} | {r.ours_seconds:.4g} | {r.peer_seconds:.4g} "
        f"| {r.ratio:.3f} |" for r in table.itertuples())
    section = f"""## Machine kind `{kind}`

Command: `{command}` ({wall / 60:.1f} min)

Machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads},{gpu_model()}
{platform.platform()}; 1-min load average at the end {os.getloadavg()[0]:.2f}.
{features_line(features)} `--precision auto` resolves to {auto_precision(args.device)} here.
Versions: {json.dumps(versions())}.

Ratio = ours / peer (below 1: ours is faster). Medians of interleaved rounds; see
`benchmarks/speed.py` for exactly what each contender runs.

| benchmark | ours | peer | ours s | peer s | ratio |
|---|---|---|---:|---:|---:|
{md_rows}

{chr(10).join(n + chr(10) for n in notes)}"""
    write_page(args.out / args.out_name, PAGE_HEAD, kind, section, table)
    print(section)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
