"""Reliability of training (issue 15): overwrite never loses a good run before the new one has
a checkpoint, checkpoints are integrity-checked, sizes are bounded by the data and memory,
the default warmup fits the budget, one writer per run directory, and a SIGKILL between
checkpoints resumes bit-exactly leaving no temporaries."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import offline_dt.training.memory as memory
from offline_dt.data import write_hdf5
from offline_dt.data.lock import LockedError, exclusive_lock, lock_file
from offline_dt.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, train
from offline_dt.training.run_dir import PreviousRun

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conftest():
    """This directory's conftest as a module (tests here are not a package)."""
    spec = importlib.util.spec_from_file_location("_offline_dt_conftest",
                                                  Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_C = _conftest()
TINY_TRAIN, make_box_dataset = _C.TINY_TRAIN, _C.make_box_dataset


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file under ``run_dir`` (relative path → bytes)."""
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _params(path) -> dict[str, torch.Tensor]:
    return dict(load_checkpoint(path).model.named_parameters())


def _leftovers(run_dir: Path) -> list[str]:
    """Temporaries in or beside ``run_dir`` (atomic-write .tmp, set-aside run, lock file)."""
    inside = [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    beside = [p.name for p in run_dir.parent.iterdir()
              if p.name.startswith(f".{run_dir.name}.")]
    return inside + beside


# ---------------------------------------------------------------------------------- overwrite
def test_overwrite_with_a_missing_dataset_keeps_the_old_run(box_hdf5, tiny_config, tmp_path):
    cfg = tiny_config(box_hdf5, steps=10)
    train(cfg)
    before = _snapshot(cfg.run_dir)
    assert {"checkpoint.pt", "metrics.csv", "config.json"} <= before.keys()
    assert any(k.startswith("tb/") for k in before)
    typo = dataclasses.replace(cfg, dataset=str(tmp_path / "typo.hdf5"), overwrite=True)
    with pytest.raises(FileNotFoundError, match="typo.hdf5"):
        train(typo)
    assert _snapshot(cfg.run_dir) == before
    assert load_checkpoint(cfg.run_dir).step == 10
    assert _leftovers(cfg.run_dir) == []


def test_overwrite_failing_before_its_first_checkpoint_restores_the_old_run(
        box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, steps=10)
    train(cfg)
    before = _snapshot(cfg.run_dir)

    def broken_hook(run, step):
        raise RuntimeError("evaluation crashed")

    new = dataclasses.replace(cfg, overwrite=True, steps=6, checkpoint_every=100, eval_every=3)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        train(new, eval_hook=broken_hook)
    assert _snapshot(cfg.run_dir) == before
    assert _leftovers(cfg.run_dir) == []
    # A successful overwrite replaces it, and nothing of the old run is left aside.
    train(dataclasses.replace(cfg, overwrite=True, steps=4))
    assert load_checkpoint(cfg.run_dir).step == 4
    assert _leftovers(cfg.run_dir) == []


def test_an_overwrite_killed_before_its_checkpoint_is_undone_by_the_next_run(
        box_hdf5, tiny_config):
    """State after a SIGKILL between setting the old run aside and the new checkpoint: the
    old files in the hidden sibling, the new run's config.json and tb/ in run_dir."""
    cfg = tiny_config(box_hdf5, steps=8, checkpoint_every=4)
    train(cfg)
    before = _snapshot(cfg.run_dir)
    PreviousRun(cfg.run_dir).set_aside()
    (cfg.run_dir / "tb").mkdir()
    (cfg.run_dir / "config.json").write_text("{}")
    assert not (cfg.run_dir / CHECKPOINT_NAME).exists()
    res = train(dataclasses.replace(cfg, steps=12, resume=True))  # resumes the old run
    assert res.steps == 12 and load_checkpoint(cfg.run_dir).step == 12
    assert "config.json" in before and _leftovers(cfg.run_dir) == []


# ---------------------------------------------------------------------------------- integrity
def _largest_record(path: Path) -> tuple[int, int]:
    """(file offset, size) of the largest tensor record stored in a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    with path.open("rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_flipped_bytes_in_a_weight_tensor_are_refused(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, steps=4, max_timestep=200)  # timestep table: 200 x 16 fp32
    train(cfg)
    path = cfg.run_dir / CHECKPOINT_NAME
    offset, size = _largest_record(path)
    assert size >= 4096
    data = bytearray(path.read_bytes())
    data[offset:offset + 4096] = bytes(b ^ 0xFF for b in data[offset:offset + 4096])
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # still a readable file: only the digest can tell
    with pytest.raises(ValueError, match=r"checkpoint.pt: checkpoint is corrupt.*digest"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"checkpoint.pt: checkpoint is corrupt"):
        train(dataclasses.replace(cfg, steps=8, resume=True))


def test_checkpoint_without_a_digest_loads_with_a_warning(box_hdf5, tiny_config, tmp_path,
                                                          caplog):
    cfg = tiny_config(box_hdf5, steps=4)
    train(cfg)
    payload = torch.load(cfg.run_dir / CHECKPOINT_NAME, weights_only=True)
    assert payload["version"] == 2 and payload["digest"].startswith("sha256:")
    del payload["digest"]
    payload["version"] = 1
    old = tmp_path / "v1.pt"
    torch.save(payload, old)
    with caplog.at_level(logging.WARNING, logger="offline_dt.training.checkpoint"):
        ck = load_checkpoint(old)
    assert ck.step == 4
    assert "v1.pt: checkpoint version 1 has no digest" in caplog.text


def test_random_bytes_never_advise_unsafe_loading(tmp_path):
    junk = tmp_path / "random.pt"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(ValueError, match="random.pt: not a readable offline-dt checkpoint") as e:
        load_checkpoint(junk)
    assert "weights_only" not in str(e.value) and "False" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


# ---------------------------------------------------------------------------------- sizes
def test_huge_context_length_fails_fast_leaving_nothing(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, context_length=100_000)
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"context_length=100000 exceeds the longest episode "
                                         r".*\(40 steps\)"):
        train(cfg)
    assert time.perf_counter() - t < 30
    assert not cfg.run_dir.exists()
    assert list(cfg.run_dir.parent.glob(f".{cfg.run_dir.name}*")) == []
    train(dataclasses.replace(cfg, context_length=40, steps=1))  # the longest episode fits


def test_step_memory_beyond_what_is_available_names_the_arguments(box_hdf5, tiny_config,
                                                                  monkeypatch):
    cfg = tiny_config(box_hdf5)
    monkeypatch.setattr(memory, "available_memory", lambda device: 2**16)
    with pytest.raises(ValueError, match=r"needs about 0.\d MiB \(batch_size=8, context_length="
                                         r"5.*embed_dim=16.* but 0.1 MiB is available on cpu"):
        train(cfg)
    assert not cfg.run_dir.exists()
    monkeypatch.undo()
    with pytest.raises(ValueError, match="batch_size=100000000"):  # real memory: terabytes
        train(dataclasses.replace(cfg, batch_size=10**8))
    assert not cfg.run_dir.exists()


def test_estimate_grows_with_every_size_argument():
    base = TrainConfig(batch_size=8, context_length=5, embed_dim=16, n_layer=1)
    est = memory.estimate_step_bytes(base, 3, 1)
    for change in ({"batch_size": 16}, {"context_length": 10}, {"embed_dim": 32},
                   {"n_layer": 2}, {"n_head": 2}, {"max_timestep": 5000}):
        assert memory.estimate_step_bytes(dataclasses.replace(base, **change), 3, 1) > est
    assert memory.available_memory(torch.device("cpu")) > 0


def test_default_timestep_table_grows_to_the_longest_episode(tiny_config, tmp_path):
    path = write_hdf5(make_box_dataset(lengths=(1005, 20)), tmp_path / "long.hdf5")
    res = train(tiny_config(path, steps=1, max_timestep=1000))  # 1000 is the default
    assert load_checkpoint(res.checkpoint).model_config.max_timestep == 1005
    with pytest.raises(ValueError, match="longest episode has 1005 steps.*holds 999"):
        train(tiny_config(path, steps=1, max_timestep=999, run_dir=tmp_path / "chosen"))


# ---------------------------------------------------------------------------------- warmup
def test_default_warmup_reaches_the_peak_learning_rate(box_hdf5, tiny_config, tmp_path):
    default = TrainConfig().warmup_steps  # what a user who sets none gets
    cfg = tiny_config(box_hdf5, steps=40, warmup_steps=default, log_every=10)
    train(cfg)
    ck = load_checkpoint(cfg.run_dir)
    assert ck.train_config.warmup_steps == 4  # min(10000, 40 // 10), saved resolved
    lrs = [float(r.split(",")[2]) for r in
           (cfg.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert lrs[-1] == pytest.approx(1e-3)
    # Resuming with the default keeps the run's own warmup although steps grew.
    part = dataclasses.replace(cfg, steps=20, run_dir=tmp_path / "part")
    train(part)
    train(dataclasses.replace(part, steps=40, resume=True))
    assert load_checkpoint(part.run_dir).train_config.warmup_steps == 2


def test_metrics_steps_stay_integers_after_resume(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, steps=6, log_every=2, checkpoint_every=3, eval_every=3)
    hook = lambda run, step: {"eval_return_mean": 1.5}  # noqa: E731
    train(cfg, eval_hook=hook)
    train(dataclasses.replace(cfg, steps=10, resume=True), eval_hook=hook)
    steps = [line.split(",")[0] for line in
             (cfg.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["2", "3", "4", "6", "8", "9", "10"]


# ---------------------------------------------------------------------------------- lock
def test_a_second_writer_of_the_run_dir_fails_in_process(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, steps=4)
    train(cfg)
    before = _snapshot(cfg.run_dir)
    with exclusive_lock(cfg.run_dir, "run directory"):
        with pytest.raises(LockedError, match=rf"run directory {cfg.run_dir} is being written "
                                              rf"by process {os.getpid()}"):
            train(dataclasses.replace(cfg, overwrite=True))
        with pytest.raises(LockedError):
            train(dataclasses.replace(cfg, steps=8, resume=True))
    assert _snapshot(cfg.run_dir) == before
    assert not lock_file(cfg.run_dir).exists()


def _cli_args(dataset: Path, run_dir: Path, **overrides) -> list[str]:
    args = ["train", "--dataset", str(dataset), "--run-dir", str(run_dir)]
    for key, value in {**TINY_TRAIN, **overrides}.items():
        args += ["--" + key.replace("_", "-"),
                 str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def _child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_a_second_writer_process_fails_and_the_first_run_is_kept(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, steps=4)
    train(cfg)
    before = _snapshot(cfg.run_dir)
    with exclusive_lock(cfg.run_dir, "run directory"):
        child = subprocess.run(
            [sys.executable, "-m", "offline_dt.cli",
             *_cli_args(box_hdf5, cfg.run_dir, overwrite=True)],
            capture_output=True, text=True, timeout=300, env=_child_env())
    assert child.returncode == 2, child.stderr
    assert (f"offline-dt train: error: run directory {cfg.run_dir} is being written by "
            f"process {os.getpid()}") in child.stderr
    assert _snapshot(cfg.run_dir) == before


def test_the_lock_dies_with_its_holder(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom offline_dt.data.lock import exclusive_lock\n"
         f"with exclusive_lock({str(target)!r}, 'dataset'):\n"
         "    print('held', flush=True)\n    time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"dataset {target} is being written by process "
                                              rf"{holder.pid}"):
            with exclusive_lock(target, "dataset"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    with exclusive_lock(target, "dataset"):  # a killed holder never blocks the next writer
        assert lock_file(target).exists()
    assert not lock_file(target).exists()


# ---------------------------------------------------------------------------------- SIGKILL
def _kill_after_first_checkpoint(args: list[str], run_dir: Path, log: Path) -> int | None:
    """Start ``offline-dt train`` and SIGKILL it once ``checkpoint.pt`` exists. Returns the
    killed run's checkpoint step, or None when it finished before the kill landed."""
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "offline_dt.cli", *args],
                                 stdout=out, stderr=subprocess.STDOUT, env=_child_env())
    deadline = time.monotonic() + 300
    try:
        while not (run_dir / CHECKPOINT_NAME).exists():
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        rc = child.wait(timeout=60)
    return load_checkpoint(run_dir).step if rc == -signal.SIGKILL else None


def test_sigkill_between_checkpoints_then_resume_is_bit_exact(box_hdf5, tiny_config, tmp_path):
    from offline_dt.cli import main

    steps, every = 200, 20
    for attempt in range(3):  # a busy machine may let the child finish before the kill
        run_dir = tmp_path / f"killed{attempt}"
        args = _cli_args(box_hdf5, run_dir, steps=steps, checkpoint_every=every, log_every=10)
        killed_at = _kill_after_first_checkpoint(args, run_dir, tmp_path / f"{attempt}.log")
        if killed_at is not None and killed_at < steps:
            break
    else:
        pytest.skip("the training child finished before every SIGKILL landed")
    assert killed_at % every == 0
    # What a kill during a checkpoint write leaves: a temporary of the atomic write.
    (run_dir / f".{CHECKPOINT_NAME}.999999.tmp").write_bytes(b"half a checkpoint")
    assert main([*args, "--resume", "true"]) == 0
    reference = tiny_config(box_hdf5, steps=steps, checkpoint_every=every, log_every=10,
                            run_dir=tmp_path / "uninterrupted")
    train(reference)
    a, b = _params(reference.run_dir), _params(run_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = [[line.split(",")[:2] for line in (d / "metrics.csv").read_text().splitlines()]
              for d in (reference.run_dir, run_dir)]
    assert losses[0] == losses[1]
    assert _leftovers(run_dir) == []
