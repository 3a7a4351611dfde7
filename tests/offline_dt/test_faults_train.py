"""Fault injection on training (issue 30): a diverging run stops with one clear error and the
checkpoint on disk stays the last finite one, whatever the check found (a NaN loss, or weights
a non-finite gradient broke while the loss was finite); a full disk during a checkpoint write
is reported as such, leaves the previous checkpoint, and ``metrics.csv`` never runs ahead of
it; Ctrl-C prints one line naming the checkpoint to resume from and exits 130."""

from __future__ import annotations

import csv
import dataclasses
import errno
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import offline_dt.training.checkpoint as checkpoint
import offline_dt.training.loop as loop
import offline_dt.training.run_log as run_log
from offline_dt.data.atomic import DiskFullError
from offline_dt.training import CHECKPOINT_NAME, DivergenceError, load_checkpoint, train
from offline_dt.training.checkpoint import read_checkpoint
from offline_dt.training.divergence import FLUSH_EVERY, FiniteGuard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conftest():
    """This directory's conftest as a module (tests here are not a package)."""
    spec = importlib.util.spec_from_file_location("_offline_dt_conftest",
                                                  Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_TRAIN = _conftest().TINY_TRAIN


def _cli_args(dataset: Path, run_dir: Path, **overrides) -> list[str]:
    args = ["train", "--dataset", str(dataset), "--run-dir", str(run_dir)]
    for key, value in {**TINY_TRAIN, **overrides}.items():
        args += ["--" + key.replace("_", "-"),
                 str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def _child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _metric_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _floats(obj) -> list[torch.Tensor]:
    """Every floating-point tensor in a nested checkpoint payload."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _floats(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _floats(v)]
    return []


# ---------------------------------------------------------------------------------- divergence
# With the tiny config's 5 warmup steps, learning rate 1e6 gives finite losses at the first
# updates (here 0.584 and 1.78) and weights so large after them that the next loss is NaN.
def test_learning_rate_1e6_stops_and_keeps_the_last_finite_checkpoint(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, learning_rate=1e6, checkpoint_every=1, log_every=5,
                      precision="fp32")
    with pytest.raises(DivergenceError) as e:
        train(cfg)
    ckpt, step = cfg.run_dir / CHECKPOINT_NAME, e.value.step
    assert step >= 2 and e.value.checkpoint == ckpt and math.isnan(e.value.loss)
    message = str(e.value)
    assert message.startswith(f"training diverged: the loss of update {step} is nan; ")
    assert f"{ckpt} (update {step - 1}) holds the last finite weights" in message
    assert "--learning-rate 1e+06" in message and "data on an extreme scale" in message
    assert _metric_steps(cfg.run_dir) == []  # log_every 5: no row was due
    _, payload = read_checkpoint(ckpt)
    assert payload["step"] == step - 1  # a checkpoint every update: the one before it
    tensors = _floats({k: payload[k] for k in ("model", "optimizer")})
    assert len(tensors) > 10 and all(torch.isfinite(t).all() for t in tensors)


def test_weights_a_gradient_broke_never_reach_a_checkpoint(box_hdf5, tiny_config, monkeypatch):
    """A non-finite gradient under a finite loss (simulated: update 4 leaves a NaN weight)
    is found by the weights check before checkpoint 4 is written."""
    real = loop.train_step

    def broken(net, optimizer, *args, **kw):
        loss, extras = real(net, optimizer, *args, **kw)
        if int(optimizer.state_dict()["state"][0]["step"]) == 4:
            with torch.no_grad():
                next(net.parameters()).view(-1)[0] = math.nan
        return loss, extras

    monkeypatch.setattr(loop, "train_step", broken)
    cfg = tiny_config(box_hdf5, checkpoint_every=2, log_every=1)
    with pytest.raises(DivergenceError, match=r"the weights after update 4 are not finite "
                                              r"\(its loss was [0-9.]+, finite: a non-finite "
                                              r"gradient\); the run stopped and .*checkpoint.pt "
                                              r"\(update 2\) holds the last finite weights"):
        train(cfg)
    _, payload = read_checkpoint(cfg.run_dir)
    assert payload["step"] == 2
    assert all(torch.isfinite(t).all() for t in _floats(payload["model"]))


def _failing_update(real, at: int, poison: bool):
    """``train_step`` that raises at update ``at``, as ``torch.distributions`` does for NaN
    logits in a method's loss; with ``poison`` the update before it left a NaN weight (a
    non-finite gradient under a finite loss)."""
    def step(net, optimizer, *args, **kw):
        done = int(optimizer.state_dict()["state"][0]["step"]) if optimizer.state else 0
        if done + 1 == at:
            raise ValueError("Expected parameter logits to satisfy the constraint Real(), "
                             "but found invalid values")
        out = real(net, optimizer, *args, **kw)
        if poison and done + 2 == at:
            with torch.no_grad():
                next(net.parameters()).view(-1)[0] = math.nan
        return out
    return step


def test_an_error_inside_an_update_of_diverged_weights_is_the_divergence(
        box_hdf5, tiny_config, monkeypatch):
    cfg = tiny_config(box_hdf5, checkpoint_every=2, log_every=1)
    monkeypatch.setattr(loop, "train_step", _failing_update(loop.train_step, 4, poison=True))
    with pytest.raises(DivergenceError, match=r"the weights after update 3 are not finite.*"
                                              r"\(update 2\) holds the last finite") as e:
        train(cfg)
    assert isinstance(e.value.__cause__, ValueError)
    monkeypatch.undo()
    monkeypatch.setattr(loop, "train_step", _failing_update(loop.train_step, 4, poison=False))
    with pytest.raises(ValueError, match="found invalid values") as e:  # finite: not ours
        train(dataclasses.replace(cfg, overwrite=True))
    assert not isinstance(e.value, DivergenceError)


def test_a_nan_loss_before_the_first_checkpoint_writes_none(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, learning_rate=1e6, checkpoint_every=10, log_every=5,
                      precision="fp32")
    with pytest.raises(DivergenceError, match=r"the loss of update \d is nan; the run stopped "
                                              r"and no checkpoint was written") as e:
        train(cfg)
    assert e.value.step < 10 and e.value.checkpoint is None
    assert not (cfg.run_dir / CHECKPOINT_NAME).exists()


def test_a_diverging_overwrite_puts_the_previous_run_back(box_hdf5, tiny_config):
    cfg = tiny_config(box_hdf5, steps=10, precision="fp32")
    train(cfg)
    before = read_checkpoint(cfg.run_dir)[1]["digest"]
    with pytest.raises(DivergenceError):
        train(dataclasses.replace(cfg, learning_rate=1e6, overwrite=True))
    assert read_checkpoint(cfg.run_dir)[1]["digest"] == before


def test_offline_dt_train_exits_3_with_one_line(box_hdf5, tmp_path):
    run_dir = tmp_path / "run"
    child = subprocess.run(
        [sys.executable, "-m", "offline_dt.cli",
         *_cli_args(box_hdf5, run_dir, learning_rate=1e6, checkpoint_every=1,
                    precision="fp32")],
        capture_output=True, text=True, timeout=300, env=_child_env())
    assert child.returncode == 3, child.stderr
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1, child.stderr
    assert lines[0].startswith("offline-dt train: error: training diverged: the loss of update")
    assert "Traceback" not in child.stderr and child.stdout == ""
    assert read_checkpoint(run_dir)[1]["step"] >= 1


def test_the_guard_names_the_first_nonfinite_loss_and_flushes_on_its_own(tmp_path):
    guard = FiniteGuard(1e-4, tmp_path / CHECKPOINT_NAME)
    for step, value in enumerate([1.0, 2.0, float("inf"), float("nan")], start=11):
        guard.add(torch.tensor(value), step, 10)
    with pytest.raises(DivergenceError, match=r"the loss of update 13 is inf.*\(update 10\) "
                                              r"holds the last finite weights") as e:
        guard.check(14, 10)
    assert (e.value.step, e.value.loss) == (13, float("inf")) and guard.pending == []
    guard.check(14, 10)  # nothing pending
    with pytest.raises(DivergenceError, match=f"update {FLUSH_EVERY} is nan"):
        for step in range(1, FLUSH_EVERY + 1):
            guard.add(torch.tensor(float("nan") if step == FLUSH_EVERY else 0.5), step, None)
    guard.check_weights([torch.ones(3), torch.arange(3)], 5, None)
    with pytest.raises(DivergenceError, match="the weights after update 5 are not finite"):
        guard.check_weights([torch.ones(3), torch.tensor([0.0, float("nan")])], 5, None)


# ---------------------------------------------------------------------------------- full disk
def _full_disk_at(call: int, error: BaseException, monkeypatch) -> None:
    """``torch.save`` fails with ``error`` at its ``call``-th call (1-based), after writing
    a part of the file as a real full disk does."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kw):
        calls.append(f)
        if len(calls) == call:
            Path(f).write_bytes(b"PK\x03\x04 the first records")
            raise error
        return real(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", save)


def _leftovers(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_keeps_the_previous_checkpoint_and_cuts_the_log(box_hdf5, tiny_config,
                                                                   monkeypatch, tmp_path):
    monkeypatch.setattr(run_log, "SAVE_INTERVAL_S", 0.0)  # every log row rewrites the log
    cfg = tiny_config(box_hdf5, steps=30, checkpoint_every=10, log_every=5)
    _full_disk_at(2, OSError(errno.ENOSPC, "No space left on device"), monkeypatch)
    ckpt = cfg.run_dir / CHECKPOINT_NAME
    with pytest.raises(DiskFullError) as e:
        train(cfg)
    assert re.fullmatch(
        rf"disk full: no space left on the filesystem holding {re.escape(str(ckpt))} while "
        rf"writing it at update 20 \([^)]+ free\); the half-written temporary was removed; "
        rf"the previous checkpoint {re.escape(str(ckpt))} \(update 10\) is intact: free some "
        rf"space, then run the same command with --resume true", str(e.value)), str(e.value)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(ckpt)
    assert read_checkpoint(ckpt)[1]["step"] == 10
    assert _metric_steps(cfg.run_dir) == [5, 10]  # rows 15 and 20 were on disk: cut back
    assert _leftovers(cfg.run_dir) == []
    monkeypatch.undo()
    # Space freed: the resumed run equals an uninterrupted one.
    assert train(dataclasses.replace(cfg, resume=True)).steps == 30
    reference = dataclasses.replace(cfg, run_dir=tmp_path / "uninterrupted")
    train(reference)
    a, b = (load_checkpoint(d).model.state_dict() for d in (reference.run_dir, cfg.run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [[r.split(",")[:2] for r in (d / "metrics.csv").read_text().splitlines()]
             for d in (reference.run_dir, cfg.run_dir)]
    assert lines[0] == lines[1] and len(lines[0]) == 7


def test_torch_s_unexpected_pos_on_a_full_disk_is_reported_as_such(box_hdf5, tiny_config,
                                                                   monkeypatch):
    """torch's zip writer reports a failed write as ``unexpected pos``: with less room free
    than the tensors need, that is a full disk."""
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "78912 vs 78800")
    cfg = tiny_config(box_hdf5, steps=20, checkpoint_every=10)
    _full_disk_at(1, torch_error, monkeypatch)
    usage = shutil.disk_usage(cfg.run_dir.parent)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(DiskFullError, match=r"disk full: no space left on the filesystem "
                                            r"holding .*checkpoint\.pt while writing it at "
                                            r"update 10 .*; no checkpoint had been written yet"
                                            ) as e:
        train(cfg)
    causes = [e.value]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    assert causes[-1] is torch_error  # torch's own error, at the end of the chain
    assert any(re.match(r"it needs about 0\.\d MiB, 0\.0 MiB are free; torch: .*unexpected "
                        r"pos 78912 vs 78800", str(getattr(c, "strerror", ""))) for c in causes)
    assert not (cfg.run_dir / CHECKPOINT_NAME).exists() and _metric_steps(cfg.run_dir) == []
    # With room enough, the same error is torch's own, not a full disk.
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=2**40))
    _full_disk_at(1, torch_error, monkeypatch)
    with pytest.raises(RuntimeError, match="unexpected pos") as e:
        train(dataclasses.replace(cfg, overwrite=True))
    assert not isinstance(e.value, OSError)


def test_offline_dt_train_on_a_full_disk_exits_1_with_one_line(box_hdf5, tmp_path,
                                                               monkeypatch, capsys):
    from offline_dt.cli import main

    _full_disk_at(1, OSError(errno.ENOSPC, "No space left on device"), monkeypatch)
    run_dir = tmp_path / "run"
    assert main(_cli_args(box_hdf5, run_dir)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"offline-dt train: error: disk full: no space left on the filesystem holding {run_dir}")


def test_cutting_the_log_back_needs_no_room_when_it_is_a_prefix(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    rows = [{"step": s, "loss": 1.0 / s} for s in (5, 10, 15, 20)]
    run_log.write_metrics(path, rows)

    def full(p, r):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_log, "write_metrics", full)
    run_log.cut_metrics(path, rows[:2])
    assert path.read_bytes() == run_log.metrics_text(rows[:2]).encode()
    assert run_log.read_metrics(path, 100) == rows[:2]
    run_log.cut_metrics(path, [])
    assert not path.exists()


_FILL_AND_TRAIN = """
import csv, errno, json, os, sys
from pathlib import Path
import torch
from offline_dt.data.atomic import DiskFullError
from offline_dt.training import TrainConfig, train
from offline_dt.training.checkpoint import read_checkpoint
torch.set_num_threads(1)
root, dataset, tiny = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])

def fill(run, step):  # at update 15, leave 16 KiB: room for the log, not for a checkpoint
    fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    os.ftruncate(fd, os.fstat(fd).st_size - 16384)
    os.close(fd)
    return {}

cfg = TrainConfig(dataset=dataset, run_dir=root / "run", **{**tiny, "steps": 30,
                  "checkpoint_every": 10, "log_every": 5, "eval_every": 15})
out = {"error": None}
try:
    train(cfg, eval_hook=fill)
except DiskFullError as e:
    out["error"], cause = str(e), e
    while cause.__cause__ is not None:
        cause = cause.__cause__
    out["torch"] = str(cause)
with open(root / "run" / "metrics.csv") as f:
    out["steps"] = [int(r["step"]) for r in csv.DictReader(f)]
out["checkpoint_step"] = read_checkpoint(root / "run")[1]["step"]
out["temporaries"] = [p.name for p in (root / "run").rglob("*.tmp")]
print("RESULT " + json.dumps(out))
"""


def test_a_really_full_filesystem_during_a_checkpoint_write(box_hdf5, tmp_path):
    """A 2 MiB tmpfs in a private mount namespace (``unshare``; skipped where user
    namespaces are not allowed) filled at update 15: torch's writer fails at checkpoint 20
    (``unexpected pos``), reported as the full disk it is."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mnt, script = tmp_path / "mnt", tmp_path / "fill_and_train.py"
    mnt.mkdir()
    script.write_text(_FILL_AND_TRAIN)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs "
                            f"{mnt}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}")
    child = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$1" '
         '"$2" "$0" "$3" "$4"', str(mnt), sys.executable, str(script), str(box_hdf5),
         json.dumps(TINY_TRAIN)], capture_output=True, text=True, timeout=300,
        env=_child_env())
    result = next((json.loads(line[7:]) for line in child.stdout.splitlines()
                   if line.startswith("RESULT ")), None)
    assert result is not None, child.stdout + child.stderr
    ckpt = mnt / "run" / CHECKPOINT_NAME
    assert result["error"].startswith(f"disk full: no space left on the filesystem holding "
                                      f"{ckpt} while writing it at update 20 (")
    assert "unexpected pos" in result["torch"]  # torch's writer's words for it
    assert f"the previous checkpoint {ckpt} (update 10) is intact" in result["error"]
    assert result["checkpoint_step"] == 10 and result["steps"] == [5, 10]
    assert result["temporaries"] == []


# ---------------------------------------------------------------------------------- Ctrl-C
def _interrupt_after_first_checkpoint(args: list[str], run_dir: Path, log: Path
                                      ) -> subprocess.CompletedProcess | None:
    """Start ``offline-dt train``, send it SIGINT once ``checkpoint.pt`` exists; its exit
    status and stderr, or None when it finished before the signal landed."""
    with log.open("w") as err:
        child = subprocess.Popen(  # SIGINT as a terminal's Ctrl-C (not ignored, as under &)
            [sys.executable, "-m", "offline_dt.cli", *args], stdout=subprocess.DEVNULL,
            stderr=err, env=_child_env(),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    try:
        while not (run_dir / CHECKPOINT_NAME).exists():
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
    finally:
        rc = child.wait(timeout=120)
    return None if rc == 0 else subprocess.CompletedProcess(args, rc, "", log.read_text())


def test_ctrl_c_prints_one_line_exits_130_and_resume_finishes(box_hdf5, tmp_path):
    from offline_dt.cli import main

    steps, every = 300, 20
    for attempt in range(3):  # a busy machine may let the child finish first
        run_dir = tmp_path / f"run{attempt}"
        args = _cli_args(box_hdf5, run_dir, steps=steps, checkpoint_every=every,
                         log_every=10)
        child = _interrupt_after_first_checkpoint(args, run_dir, tmp_path / f"{attempt}.err")
        if child is not None:
            break
    else:
        pytest.skip("the training child finished before every SIGINT landed")
    assert child.returncode == 130, child.stderr
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in child.stderr, child.stderr
    saved = load_checkpoint(run_dir).step
    assert saved % every == 0 and 0 < saved < steps
    assert lines[0] == (f"offline-dt train: interrupted; {run_dir / CHECKPOINT_NAME} (update "
                        f"{saved}) is saved: run the same command with --resume true to "
                        f"continue from it")
    assert _metric_steps(run_dir) == list(range(10, saved + 1, 10))
    assert main([*args, "--resume", "true"]) == 0
    assert load_checkpoint(run_dir).step == steps
    reference = tmp_path / "uninterrupted"
    assert main(_cli_args(box_hdf5, reference, steps=steps, checkpoint_every=every,
                          log_every=10)) == 0
    rows = [[r.split(",")[:2] for r in (d / "metrics.csv").read_text().splitlines()]
            for d in (reference, run_dir)]
    assert rows[0] == rows[1]


def test_ctrl_c_before_the_first_checkpoint_and_outside_training(box_hdf5, tmp_path,
                                                                monkeypatch, capsys):
    from offline_dt.cli import main

    real = loop.train_step

    def interrupted(net, optimizer, *args, **kw):
        if optimizer.state and int(optimizer.state_dict()["state"][0]["step"]) == 3:
            raise KeyboardInterrupt
        return real(net, optimizer, *args, **kw)

    monkeypatch.setattr(loop, "train_step", interrupted)
    run_dir = tmp_path / "run"
    assert main(_cli_args(box_hdf5, run_dir, log_every=1)) == 130
    assert capsys.readouterr().err.strip() == (
        "offline-dt train: interrupted before the run's first checkpoint; nothing of it was "
        "kept: run the same command to start it again")
    assert not (run_dir / CHECKPOINT_NAME).exists() and _metric_steps(run_dir) == []

    from offline_dt.cli import COMMANDS

    def evaluating(cfg):
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, "evaluate", dataclasses.replace(COMMANDS["evaluate"],
                                                                  run=evaluating))
    assert main(["evaluate", "--checkpoint", str(run_dir)]) == 130
    assert capsys.readouterr().err.strip() == (
        "offline-dt evaluate: interrupted; its outputs are written only when complete, so "
        "nothing partial was left and earlier outputs are intact")
