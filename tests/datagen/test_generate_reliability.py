"""Issue 15 for generate: degenerate behaviour agents are flagged, the expert is the best
checkpoint when the final agent collapsed, concurrent writers are refused, no leaked
semaphores, and a SIGKILL during the write is repaired by the rerun (defects 6, 8, 11)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from datagen.agents import AgentArtifacts, Checkpoint
from datagen.config import config_dict
from datagen.generate import generate
from datagen.selection import ExpertChoice, behaviour_check, select_expert
from offline_dt.data.atomic import DiskFullError
from offline_dt.data.d4rl import LEVELS, read_hdf5
from offline_dt.data.lock import LockedError, exclusive_lock
from offline_dt.data.minari_io import read_minari


def _agent(curve: list[tuple[int, float, float]]) -> AgentArtifacts:
    cps = [Checkpoint(s, m, sd, Path(f"/agent/checkpoints/step_{s:07d}.safetensors"))
           for s, m, sd in curve]
    return AgentArtifacts(dir=Path("/agent"), algo="DQN", env_id="CartPole-v1", seed=0,
                          total_steps=curve[-1][0], hyperparams={}, checkpoints=cps)


# ------------------------------------------------------------------ defect 6: expert choice
def test_expert_is_the_best_checkpoint_when_the_final_agent_collapsed():
    """The issue's CartPole: the step-2000 checkpoint scored 500, the final DQN 119."""
    agent = _agent([(1000, 150.0, 20.0), (2000, 500.0, 0.0), (3000, 119.0, 8.0)])
    ex = select_expert(agent, ref_min=22.0, eval_episodes=10)
    assert not ex.final and ex.step == 2000 and ex.name == "dqn@step2000"
    assert ex.path.name == "step_0002000.safetensors" and ex.eval_return == 500.0


@pytest.mark.parametrize("curve", [
    # the smoke preset's 400-step SAC: a noisy curve, no checkpoint clearly better
    [(100, -1579.26, 245.9), (200, -1502.01, 311.1), (300, -1538.81, 312.2),
     (400, -1579.34, 309.0)],
    # a learned agent a little below its luckiest checkpoint (within 10 % of its lead)
    [(1000, -900.0, 100.0), (2000, -140.0, 5.0), (3000, -150.0, 5.0)],
    # the best checkpoint is no better than random
    [(100, -1300.0, 1.0), (200, -1250.0, 1.0), (300, -1400.0, 1.0)],
])
def test_expert_stays_the_final_agent_unless_clearly_worse(curve):
    ex = select_expert(_agent(curve), ref_min=-1230.0, eval_episodes=2)
    assert ex.final and ex.path == Path("/agent/policy.safetensors")
    assert ex.step == curve[-1][0] and ex.name == "dqn"


def _final(step=400) -> ExpertChoice:
    return ExpertChoice(Path("/agent/policy.safetensors"), step, "sac", True, "final agent",
                        -150.0)


def test_behaviour_check_flags_an_agent_that_did_not_learn(caplog):
    """The issue's short-budget Pendulum: ref_max -1699 below ref_min -1236."""
    rng = np.random.default_rng(0)
    random_r = rng.normal(-1236, 290, 100)
    expert_r = rng.normal(-1699, 300, 100)
    out = behaviour_check("Pendulum-v1", random_r, expert_r, _final(),
                          {"eval_return": -1600.0})
    assert out["behaviour_learned"] is False and out["behaviour_effect_size"] < 0
    warnings = json.loads(out["behaviour_warnings"])
    assert len(warnings) == 1 and "did not learn" in warnings[0]
    assert "did not learn" in caplog.text
    ok = behaviour_check("Pendulum-v1", random_r, rng.normal(-145, 80, 100), _final(),
                         {"eval_return": -300.0})
    assert ok["behaviour_learned"] is True and json.loads(ok["behaviour_warnings"]) == []
    assert "behaviour_reward_threshold" not in ok  # Pendulum-v1 has none


def test_behaviour_check_flags_an_expert_below_the_reward_threshold():
    """MountainCarContinuous' SAC that learned to stand still beats random (-33) by far but
    never reaches the goal (threshold 90)."""
    rng = np.random.default_rng(1)
    out = behaviour_check("MountainCarContinuous-v0", rng.normal(-33, 1, 50),
                          rng.normal(-0.007, 0.001, 50), _final(), {"eval_return": -0.01})
    assert out["behaviour_learned"] is True
    assert out["behaviour_reward_threshold"] == 90.0
    warnings = json.loads(out["behaviour_warnings"])
    assert len(warnings) == 1 and "reward_threshold 90" in warnings[0]


def test_generated_datasets_record_the_behaviour_check(tiny_run):
    res = tiny_run.result
    assert set(res.behaviour) >= {"behaviour_learned", "behaviour_effect_size",
                                  "behaviour_warnings", "expert_choice", "expert_step"}
    for level in LEVELS:
        md = read_hdf5(res.paths[level]["hdf5"]).metadata
        assert md["behaviour_learned"] == res.behaviour["behaviour_learned"]
        assert md["behaviour_warnings"] == res.behaviour["behaviour_warnings"]
    # a 300-step SAC is not an expert: the tiny run says so, loudly
    assert res.behaviour["behaviour_learned"] is False
    assert "WARNING: behaviour agent did not learn" in str(res)


# ------------------------------------------------------------------ defect 11: one writer
def test_second_writer_is_refused_and_the_first_ones_data_kept(tiny_run):
    cfg = tiny_run.cfg
    hdf5 = tiny_run.result.paths["medium"]["hdf5"]
    before = {lv: read_hdf5(p["hdf5"]).checksum() for lv, p in tiny_run.result.paths.items()}
    mtime = hdf5.stat().st_mtime_ns
    with exclusive_lock(hdf5, "dataset"):  # stands for a generate still writing it
        with pytest.raises(LockedError, match=rf"dataset {hdf5} is being written by process "
                                              rf"{os.getpid()}"):
            generate(cfg)
    assert hdf5.stat().st_mtime_ns == mtime
    assert {lv: read_hdf5(p["hdf5"]).checksum()
            for lv, p in tiny_run.result.paths.items()} == before


# ------------------------------------------------------------------ defect 8: semaphores
def test_random_rollout_in_processes_leaks_no_semaphore():
    code = ("from datagen.rollout import rollout\n"
            "print(rollout('Pendulum-v1', 40, seed=0, num_envs=2, processes=2)"
            ".dataset.num_transitions)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "40"
    assert "leaked semaphore" not in proc.stderr


# ------------------------------------------------------------------ fault injection
_CHILD = """
import json, time
from pathlib import Path
import minari
from datagen.config import GenerateConfig
from datagen.generate import generate

real = minari.create_dataset_from_buffers

def slow(*a, **k):  # stands for a long write: the kill lands while temporaries exist
    out = real(*a, **k)
    if k["dataset_id"] == "pendulum/expert-v0":
        print("WRITING", flush=True)
        time.sleep(120)
    return out

minari.create_dataset_from_buffers = slow
fields = json.loads({config!r})
for key in ("out_dir", "minari_root", "agents_dir"):
    fields[key] = Path(fields[key])
generate(GenerateConfig(**fields))
"""


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or p.name.endswith(".lock")]


def test_sigkill_during_write_then_rerun_gives_a_clean_run_s_datasets(tiny_run, tmp_path,
                                                                       make_config):
    root = tmp_path / "killed"
    cfg = make_config(root, agents_dir=tiny_run.cfg.agents_dir)
    code = _CHILD.format(config=json.dumps(config_dict(cfg)))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        ns_dir = root / "minari" / "pendulum"
        while time.monotonic() < deadline:
            if ns_dir.is_dir() and any(p.name.startswith(".expert-v0.")
                                       and p.name.endswith(".tmp-root")
                                       for p in ns_dir.iterdir()):
                break
            assert proc.poll() is None, "generate ended before writing"
            time.sleep(0.05)
        else:
            pytest.fail("no temporary Minari directory appeared")
        assert proc.stdout.readline().strip() == "WRITING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _leftovers(root), "the kill should have left temporaries to clean up"
    assert not (ns_dir / "expert-v0").exists()

    rerun = generate(cfg)
    assert rerun.summaries["random"]["reused"]  # finished before the kill: kept
    assert not rerun.summaries["medium"]["reused"]
    for level in LEVELS:
        clean = read_hdf5(tiny_run.result.paths[level]["hdf5"]).checksum()
        assert read_hdf5(rerun.paths[level]["hdf5"]).checksum() == clean, level
        assert read_minari(rerun.paths[level]["minari"]).checksum() == clean, level
    assert _leftovers(root) == []


# ------------------------------------------------------------------ issue 30: safe writes
def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_overwrite_never_replaces_what_generate_did_not_write(tiny_run, tmp_path, make_config):
    """``--overwrite`` over a Minari dataset holding a user's file, or over a directory where
    the HDF5 file goes, is refused before any work: nothing in the tree changes."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.root, root)
    medium = root / "minari" / "pendulum" / "medium-v0"
    (medium / "notes.txt").write_text("my analysis")
    before = _snapshot(root)
    cfg = make_config(root, agents_dir=root / "agents", overwrite=["medium"])
    with pytest.raises(FileExistsError, match=rf"{medium} is a directory offline-dt did not "
                                              r"write as a Minari dataset \(holding 2 entries\)"):
        generate(cfg)
    assert _snapshot(root) == before

    (medium / "notes.txt").unlink()
    hdf5 = root / "d4rl" / "pendulum-expert-v0.hdf5"
    hdf5.unlink()
    (hdf5 / "results").mkdir(parents=True)
    before = _snapshot(root)
    with pytest.raises(FileExistsError, match=rf"{hdf5} is a directory"):
        generate(make_config(root, agents_dir=root / "agents", overwrite=["expert"]))
    assert _snapshot(root) == before and (hdf5 / "results").is_dir()


def test_a_full_disk_during_generate_keeps_the_previous_datasets(tiny_run, tmp_path,
                                                                  make_config, monkeypatch):
    import offline_dt.data.atomic as atomic

    root = tmp_path / "copy"
    shutil.copytree(tiny_run.root, root)
    paths = {lv: {k: root / p.relative_to(tiny_run.root) for k, p in fmt.items()}
             for lv, fmt in tiny_run.result.paths.items()}
    before = read_hdf5(paths["random"]["hdf5"]).checksum()
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 4096)
    cfg = make_config(root, agents_dir=root / "agents", overwrite=["random"])
    with pytest.raises(DiskFullError, match=r"disk full: writing the HDF5 dataset .*"
                                            r"pendulum-random-v0\.hdf5 needs about"):
        generate(cfg)
    assert read_hdf5(paths["random"]["hdf5"]).checksum() == before
    assert read_minari(paths["random"]["minari"]).checksum() == before
    assert _leftovers(root) == []
