"""benchmarks/multitask.py: the runs it plans (budgets per row), the transfer's small
dataset, the page's cells from hand-made results, and a tiny run end to end (slow)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

from benchmarks.multitask import check_held_out, episodes_of, main, parse, plan
from benchmarks.multitask_page import frame, main_table, transfer_table
from offline_dt.data import OfflineDataset
from offline_dt.study.statistics import iqm, run_interval


def test_episodes_of_keeps_the_chosen_episodes_in_order():
    ds = OfflineDataset.from_flat(
        observations=np.arange(6, dtype=np.float32)[:, None], actions=np.zeros((6, 1)),
        rewards=np.arange(6, dtype=np.float32), terminals=np.zeros(6, bool),
        timeouts=np.array([0, 1, 0, 0, 1, 1], bool),
        observation_space=gym.spaces.Box(-10, 10, (1,)), action_space=gym.spaces.Box(-1, 1, (1,)),
        metadata={"env_id": "Pendulum-v1", "ref_min_score": -1.0}, source="d")
    small = episodes_of(ds, np.array([0, 2]))  # episodes of 2, 3 and 1 steps: the 1st and 3rd
    assert small.rewards.tolist() == [0, 1, 5] and small.episode_starts.tolist() == [0, 2, 3]
    assert small.metadata["ref_min_score"] == -1.0 and small.metadata["episodes"] == [0, 2]


def test_plan_gives_each_row_its_budget(tmp_path):
    envs = ["Pendulum-v1", "CartPole-v1", "Acrobot-v1"]
    args = parse(["--envs", *envs, "--updates", "7", "--transfer-updates", "40",
                  "--seeds", "0", "1", "--root", str(tmp_path)])
    data = {e: {"path": f"/d/{e}.hdf5"} for e in envs}
    first, second = plan(args, data, "/d/small.hdf5")
    assert len(first) == 2 * (3 + 3 * 2 + 3) and len(second) == 2 * 2
    by = {(j["name"], j["seed"]): j for j in first + second}
    assert by[("dt-CartPole-v1", 1)]["updates"] == 7
    assert by[("dt-CartPole-v1", 1)]["dataset"] == "/d/CartPole-v1.hdf5"
    per_env, total = by[("gato-per-env", 0)], by[("mgdt-total", 0)]
    assert per_env["updates"] == 21 and per_env["dataset"].count(",") == 2
    assert per_env["envs"] == envs and total["updates"] == 7
    pre = by[("mgdt-pretrain", 1)]
    assert pre["updates"] == 14 and pre["envs"] == []
    assert pre["dataset"] == "/d/CartPole-v1.hdf5,/d/Acrobot-v1.hdf5"  # Pendulum held out
    for name in ("dt-scratch", "gato-scratch", "mgdt-transfer"):
        j = by[(name, 0)]
        assert j["updates"] == 40 and j["train"]["warmup_steps"] == 4
        assert j["dataset"] == "/d/small.hdf5" and j["envs"] == ["Pendulum-v1"]
    assert by[("mgdt-transfer", 1)]["init_from"] == pre["dir"]
    assert by[("dt-scratch", 0)]["init_from"] is None


def test_a_held_out_env_wider_than_the_others_is_refused_before_any_run():
    def task(env, obs, act, discrete):
        return {"task": {"env_id": env, "obs_dim": obs, "act_dim": act, "discrete": discrete}}

    data = {"Pendulum-v1": task("Pendulum-v1", 3, 1, False),
            "CartPole-v1": task("CartPole-v1", 4, 2, True),
            "Acrobot-v1": task("Acrobot-v1", 6, 3, True)}
    check_held_out(data, "Pendulum-v1")  # 3 observations, Box(1): fits (6, 1, 3)
    with pytest.raises(SystemExit, match="--held-out Acrobot-v1: .* wider"):
        check_held_out(data, "Acrobot-v1")


def _result(name: str, method: str, seed: int, scores: dict[str, float]) -> dict:
    return {"job": {"name": name, "method": method, "seed": seed}, "updates": 10,
            "ms_per_update": 1.0, "parameters": 100, "train_seconds": 1.0, "eval_seconds": 1.0,
            "evals": {e: {"mean_return": 10 * s, "normalized_score": s, "episodes": 2}
                      for e, s in scores.items()}}


def test_page_cells_are_the_run_level_statistics():
    envs = ["Pendulum-v1", "CartPole-v1"]
    res = []
    for seed, (a, b) in enumerate([(10, 50), (20, 60), (40, 70)]):
        res += [_result("dt-Pendulum-v1", "dt", seed, {"Pendulum-v1": a}),
                _result("dt-CartPole-v1", "dt", seed, {"CartPole-v1": b}),
                _result("mgdt-per-env", "mgdt", seed, {"Pendulum-v1": a + 100,
                                                       "CartPole-v1": b + 100}),
                _result("dt-scratch", "dt", seed, {"Pendulum-v1": a}),
                _result("mgdt-transfer", "mgdt", seed, {"Pendulum-v1": a + 100}),
                _result("gato-transfer", "gato", seed, {"Pendulum-v1": a + 1})]
    df = frame(res)
    lines = main_table(df, envs)
    lo, hi = run_interval([10, 20, 40])
    assert lines[2].startswith(f"| Pendulum-v1 | {iqm([10, 20, 40]):.1f} [{lo:.1f}, {hi:.1f}] | "
                               f"{iqm([110, 120, 140]):.1f} [")
    assert lines[2].endswith("| – | – | – |")  # no gato or (total) runs
    assert lines[4].startswith(f"| **IQM over envs** | {iqm([10, 20, 40, 50, 60, 70]):.1f} [")
    assert "| **P(> dt)** | – | 1.00 [1.00, 1.00] |" in lines[6]
    rows = transfer_table(df, "Pendulum-v1", 30)
    assert rows[2].startswith("| dt from scratch | 0 | 10 |") and rows[2].endswith("| – |")
    assert rows[4].startswith("| mgdt transferred | 30 | 10 |") and rows[4].endswith("| yes |")
    assert rows[6].startswith("| gato transferred | 30 | 10 |") and rows[6].endswith("| no |")


@pytest.mark.slow
def test_tiny_run_writes_every_section_and_reuses_its_runs(tmp_path):
    argv = ["--tiny", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    page = (tmp_path / "out" / "multitask.md").read_text()
    assert "**Tiny run (`--tiny`)" in page
    for section in ("## Datasets", "## Normalized score per env", "## Transfer to Pendulum-v1",
                    "## Cost per training update"):
        assert section in page
    for row in ("| Pendulum-v1 | `pendulum-medium-expert-v0.hdf5` |", "| CartPole-v1 | ",
                "| **IQM over envs** |", "| **ratio to dt's IQM** |", "| **P(> dt)** |",
                "| dt from scratch | 0 | 10 |", "| mgdt transferred | 20 | 10 |",
                "| gato transferred | 20 | 10 |", "| dt | 4 |", "| mgdt | 2 |", "| gato | 2 |"):
        assert row in page, row
    csv = pd.read_csv(tmp_path / "out" / "multitask.csv")
    # per seed: dt in 2 envs, mgdt and gato at 2 budgets in 2 envs, 3 scratch, 2 transfers
    assert len(csv) == 2 * (2 + 2 * 2 * 2 + 3 + 2)
    assert np.isfinite(csv["normalized_score"]).all()
    assert main(argv) == 0
    assert "26 of 26 runs reused" in (tmp_path / "out" / "multitask.md").read_text()
