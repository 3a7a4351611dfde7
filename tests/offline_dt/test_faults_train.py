"""Fault injection on training (issue 30): a diverging run stops with one clear error and the
checkpoint on disk stays the last finite one, whatever the check found (a NaN loss, or weights
a non-finite gradient broke while the loss was finite)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import offline_dt.training.loop as loop
from offline_dt.training import CHECKPOINT_NAME, DivergenceError, train
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
