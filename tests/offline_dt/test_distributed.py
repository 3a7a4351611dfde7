"""DDP training (offline_dt.training.distributed): 2 gloo ranks on CPU reproduce the
single-process run with the same global batch, resume works under DDP, and a rank that dies or hangs
ends the job with an error in bounded time.

Ranks are spawned processes (torch.multiprocessing's spawn context) that open a gloo group
themselves, so ``train`` joins it; ``test_torchrun_cli`` goes through torchrun and the CLI.
Tiny model, a handful of steps, one thread per rank."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from offline_dt.data.windows import Normalizer, WindowSampler
from offline_dt.methods import get_method
from offline_dt.training import TrainConfig, load_checkpoint, train
from offline_dt.training.distributed import loss_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Sensitive to gradient errors: full learning rate from the first step (warmup 1), lr 3e-3,
#: windows of K=8 (shards with different numbers of padded steps), no dropout (dropout
#: masks are drawn per rank, so only a dropout-free run can equal the single-process one),
#: fp32 (``auto`` is bf16 on a CPU with AMX/AVX512-BF16, whose rounding of a rank's half batch
#: differs from the whole batch's by about 1e-3 after 6 steps).
DDP_TRAIN = dict(steps=6, batch_size=8, context_length=8, embed_dim=16, n_layer=1, n_head=1,
                 dropout=0.0, warmup_steps=1, learning_rate=3e-3, max_timestep=64,
                 checkpoint_every=3, log_every=1, progress=False, device="cpu", precision="fp32")
#: qt with the options under which it is exact under DDP: the MLP critic (its TD mean runs over
#: the real steps) and eta 0 (the Q term's normaliser E|Q| is a per-shard statistic).
QT_EXACT = {"critic": "mlp", "eta": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, configs: list[TrainConfig],
               error_dir: str, join: bool) -> None:
    """A rank: train every config, reporting an exception to a file. ``join``: open a gloo
    group here and let ``train`` join it; else set torchrun's variables and let ``train``
    open the group itself (with ``dist_timeout``)."""
    torch.set_num_threads(1)
    try:
        if not join:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                              LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
            for cfg in configs:
                train(cfg)
            return
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        try:
            for cfg in configs:
                train(cfg)
        finally:
            dist.destroy_process_group()
    except BaseException as e:
        Path(error_dir, f"rank{rank}.err").write_text(
            f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise


def _spawn(configs: list[TrainConfig], tmp_path: Path, join: bool = True, world: int = 2
           ) -> mp.ProcessContext:
    return mp.start_processes(
        _rank_main, args=(world, _free_port(), configs, str(tmp_path), join), nprocs=world,
        join=False, start_method="spawn")


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir).model.state_dict()


def _max_diff(a: Path, b: Path) -> float:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    return max(float((pa[k] - pb[k]).abs().max()) for k in pa)


def _losses(run_dir: Path) -> list[float]:
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("loss")
    return [float(r.split(",")[col]) for r in rows[1:]]


def test_share_weighted_shard_gradients_equal_the_global_batch_gradient(box_dataset):
    """The loss scaling, without processes: the average over 2 shards of each shard's gradient
    times loss_scale is the global batch's gradient; the plain average of shard means is not."""
    norm = Normalizer.fit(box_dataset)
    cfg = TrainConfig(context_length=8, embed_dim=16, n_layer=1, dropout=0.0, max_timestep=64)
    for name, options in (("dt", {}), ("bc", {}), ("qt", QT_EXACT)):
        method = get_method(name)
        torch.manual_seed(0)
        net = method.build(cfg.model_config(3, 1, False), options)

        def grad(loss: torch.Tensor, net=net) -> torch.Tensor:
            net.zero_grad()
            loss.backward()
            return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])

        full = grad(method.loss(net, WindowSampler(box_dataset, norm, 8, 64, seed=1)
                                .sample(16))[0])
        weighted = naive = torch.zeros_like(full)
        for rank in range(2):
            batch, share = WindowSampler(box_dataset, norm, 8, 64, seed=1).sample_shard(
                16, rank, 2)
            g = grad(method.loss(net, batch)[0])
            weighted = weighted + g * loss_scale(share, 2) / 2
            naive = naive + g / 2
        tol = 1e-6 * float(full.abs().max())
        assert float((weighted - full).abs().max()) <= tol, name
        assert float((naive - full).abs().max()) > 100 * tol, name  # the scaling matters


def test_two_gloo_ranks_equal_one_process(box_hdf5, tmp_path):
    """dt and qt trained by 2 ranks (global batch 8 = 4 + 4) equal one process with batch 8
    to 1e-5 in every weight and every logged loss (relative); so does a DDP run resumed
    under DDP."""
    def cfg(method: str, name: str, **kw: object) -> TrainConfig:
        options = QT_EXACT if method == "qt" else {}
        return TrainConfig(dataset=str(box_hdf5), method=method, method_options=options,
                           run_dir=tmp_path / name, **{**DDP_TRAIN, **kw})

    ddp = [cfg("dt", "dt-ddp"), cfg("qt", "qt-ddp"), cfg("dt", "dt-resumed", steps=3)]
    resumed = dataclasses.replace(ddp[2], steps=6, resume=True)
    t0 = time.perf_counter()
    _spawn([*ddp, resumed], tmp_path).join()
    ddp_seconds = time.perf_counter() - t0
    for method in ("dt", "qt"):
        train(cfg(method, f"{method}-one"))
        assert _max_diff(tmp_path / f"{method}-one", tmp_path / f"{method}-ddp") < 1e-5, method
        one, two = _losses(tmp_path / f"{method}-one"), _losses(tmp_path / f"{method}-ddp")
        assert len(one) == len(two) == 6
        # (qt's loss holds the critic's TD error, thousands: compared relative to its size)
        assert all(abs(a - b) <= 1e-5 * max(1.0, abs(a)) for a, b in zip(one, two, strict=True))
    assert _max_diff(tmp_path / "dt-one", tmp_path / "dt-resumed") < 1e-5
    assert load_checkpoint(tmp_path / "dt-resumed").step == 6
    import json

    saved = json.loads((tmp_path / "dt-ddp" / "config.json").read_text())
    assert saved["resolved"]["world_size"] == 2
    assert not list(tmp_path.glob("*.err"))
    print(f"2 gloo ranks: 4 runs of 3-6 steps in {ddp_seconds:.1f} s (spawn included)")


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_dead_or_hung_rank_ends_the_job_with_an_error(how, box_hdf5, tmp_path):
    """Rank 1 is SIGKILLed (dies) or SIGSTOPped (hangs) mid-training: rank 0 fails with a
    DistributedError naming the cause within seconds (the dead peer's closed connection) or
    the process-group timeout (``dist_timeout``, 3 s here; ``train`` opens the group from
    torchrun's environment variables), not a hang."""
    cfg = TrainConfig(dataset=str(box_hdf5), run_dir=tmp_path / "run",
                      **{**DDP_TRAIN, "steps": 10**6, "checkpoint_every": 10**6,
                         "log_every": 10**6, "dist_timeout": 3.0})
    ctx = _spawn([cfg], tmp_path, join=False)
    rank0, rank1 = ctx.processes
    deadline = time.monotonic() + 120
    while not (cfg.run_dir / "config.json").exists():  # rank 0 writes it before the loop
        assert rank0.is_alive() and time.monotonic() < deadline, "ranks did not start"
        time.sleep(0.2)
    time.sleep(1.0)
    t0 = time.monotonic()
    os.kill(rank1.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    try:
        rank0.join(60)
        took = time.monotonic() - t0
        assert not rank0.is_alive(), "rank 0 still running 60 s after rank 1 stopped"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(10)
    assert rank0.exitcode != 0
    err = (tmp_path / "rank0.err").read_text()
    assert err.startswith("DistributedError: rank 0 of 2:"), err
    assert "another rank died or did not answer" in err
    print(f"rank 1 {how}: rank 0 failed after {took:.1f} s")
    assert took < 60


def test_torchrun_cli(box_hdf5, tmp_path):
    """``torchrun --nproc-per-node 2 -m offline_dt.cli train`` equals ``offline-dt train``."""
    flags = ["--dataset", str(box_hdf5)]
    for key, value in DDP_TRAIN.items():
        flags += [f"--{key.replace('_', '-')}", str(value).lower()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "offline_dt.cli", "train", *flags, "--run-dir", str(tmp_path / "ddp")]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"torchrun 2 ranks, 6 steps: {time.perf_counter() - t0:.1f} s")
    from offline_dt.cli import main

    assert main(["train", *flags, "--run-dir", str(tmp_path / "one")]) == 0
    assert _max_diff(tmp_path / "one", tmp_path / "ddp") < 1e-5


def test_rank_0s_refusal_reaches_every_rank(box_hdf5, tmp_path):
    """Rank 0 refuses an existing run (no --resume/--overwrite): the other rank fails with
    rank 0's message at once instead of waiting for it."""
    cfg = TrainConfig(dataset=str(box_hdf5), run_dir=tmp_path / "run", **{**DDP_TRAIN,
                                                                          "steps": 1})
    train(cfg)
    ctx = _spawn([cfg], tmp_path)
    for p in ctx.processes:
        p.join(120)
        assert p.exitcode not in (None, 0)
    assert (tmp_path / "rank0.err").read_text().startswith("FileExistsError:")
    assert (tmp_path / "rank1.err").read_text().startswith(
        "RuntimeError: rank 1: rank 0 failed (FileExistsError:")
