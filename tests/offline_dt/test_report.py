"""Report: exact CSV columns, seeds pooled over episodes, plots from fabricated run dirs."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.pandas import column, data_frames

from offline_dt.config import save_json
from offline_dt.data import OfflineDataset, write_hdf5
from offline_dt.evaluate import build_eval_payload, summarize_returns
from offline_dt.report import COLUMNS, LEVELS, dataset_level, pool, report, to_markdown

REF_MIN, REF_MAX = -1200.0, -150.0


def fake_eval(method: str, returns_by_target: list[list[float]], headline: int = 0) -> dict:
    rows = []
    for j, returns in enumerate(returns_by_target):
        stats = summarize_returns(np.array(returns))
        rows.append({"target_return": None if method in ("random", "behaviour", "bc")
                     else -100.0 - j, **stats, "episodes": len(returns), "seed": 0,
                     "normalized_score": None, "ref_min_score": REF_MIN,
                     "ref_max_score": REF_MAX, "returns": returns})
    return build_eval_payload(method, "Pendulum-v1", rows, headline=headline)


def fake_dataset(path, returns_per_episode: list[float]) -> None:
    n_ep, t = len(returns_per_episode), 5
    rewards = np.repeat(np.array(returns_per_episode, np.float32) / t, t)
    n = n_ep * t
    ds = OfflineDataset.from_flat(
        observations=np.zeros((n, 3), np.float32), actions=np.zeros((n, 1), np.float32),
        rewards=rewards, terminals=np.zeros(n, bool),
        timeouts=np.tile(np.arange(t) == t - 1, n_ep),
        observation_space=gym.spaces.Box(-8, 8, (3,), np.float32),
        action_space=gym.spaces.Box(-2, 2, (1,), np.float32),
        metadata={"env_id": "Pendulum-v1"})
    write_hdf5(ds, path)


def make_run(root, dataset, method, seed, ev, config=None, metrics=None):
    run = root / "Pendulum-v1" / dataset / method / f"seed{seed}"
    run.mkdir(parents=True)
    save_json(ev, run / "eval.json")
    save_json(config or {"method": method}, run / "config.json")
    if metrics is not None:
        metrics.to_csv(run / "metrics.csv", index=False)
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    data = tmp_path / "ds"
    data.mkdir()
    fake_dataset(data / "pendulum-medium-v0.hdf5", [-900.0, -700.0, -650.0, -800.0])
    fake_dataset(data / "pendulum-expert-v0.hdf5", [-150.0, -140.0, -160.0])
    for ds in ("pendulum-medium-v0", "pendulum-expert-v0"):
        path = str(data / f"{ds}.hdf5")
        # The trainer's config.json shape: the dataset path inside train_config, the
        # dataset facts (a dict) under "dataset".
        cfg = {"train_config": {"dataset": path, "method": "dt", "minari_root": None},
               "dataset": {"env_id": "Pendulum-v1", "return_max": 0.0}}
        for seed, (a, b) in enumerate([(-600.0, -400.0), (-500.0, -300.0)]):
            curve = pd.DataFrame({"step": [0, 100, 200], "loss": [1.0, 0.5, 0.2],
                                  "eval_return_mean": [-1200.0, -800.0 + seed, a]})
            # Headline is the second target for dt: its returns must be the ones pooled.
            make_run(root, ds, "dt", seed, fake_eval("dt", [[-1e4, -1e4], [a, b]], 1),
                     cfg, curve)
            make_run(root, ds, "bc", seed, fake_eval("bc", [[a - 100, b - 100]]), cfg, curve)
        make_run(root, ds, "random", 0, fake_eval("random", [[-1200.0, -1300.0, -1100.0]]),
                 {"dataset": path, "method": "random"})
        make_run(root, ds, "behaviour", 0, fake_eval("behaviour", [[-150.0, -140.0]]),
                 {"dataset": path, "method": "behaviour"})
    return root


def test_report_columns_and_seed_aggregation(runs, tmp_path):
    out = tmp_path / "report"
    table = report(runs, out)
    assert list(table.columns) == COLUMNS
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == COLUMNS
    assert len(csv) == 8  # 2 datasets x 4 methods
    # Levels in study order, methods in table order.
    assert list(csv["dataset"]) == ["pendulum-medium-v0"] * 4 + ["pendulum-expert-v0"] * 4
    assert list(csv["method"][:4]) == ["random", "behaviour", "bc", "dt"]
    dt = csv[(csv.dataset == "pendulum-medium-v0") & (csv.method == "dt")].iloc[0]
    pooled = np.array([-600.0, -400.0, -500.0, -300.0])  # headline episodes of both seeds
    assert dt.seeds == 2 and dt.episodes == 4
    assert dt.mean_return == pytest.approx(pooled.mean())
    assert dt.std_return == pytest.approx(pooled.std())
    assert dt.ci95 == pytest.approx(1.96 * pooled.std() / 2.0)
    assert dt.normalized_score == pytest.approx(
        100 * (pooled.mean() - REF_MIN) / (REF_MAX - REF_MIN))
    rnd = csv[(csv.dataset == "pendulum-expert-v0") & (csv.method == "random")].iloc[0]
    assert rnd.seeds == 1 and rnd.episodes == 3 and rnd.mean_return == pytest.approx(-1200.0)
    # results.md is the CSV's table: same cells, floats to 2 decimals, NaN as n/a.
    md = parse_markdown((out / "results.md").read_text())
    assert list(md.columns) == COLUMNS and len(md) == 8
    floats = ["mean_return", "std_return", "ci95", "normalized_score"]
    pd.testing.assert_frame_equal(md.drop(columns=floats), csv.drop(columns=floats))
    np.testing.assert_allclose(md[floats], csv[floats], rtol=0, atol=0.005 + 1e-9)
    for name in ("learning_curves_Pendulum-v1.png", "dataset_returns_Pendulum-v1.png"):
        assert (out / name).stat().st_size > 10_000


def test_pool_from_moments_equals_pool_from_episodes():
    a, b = [-1.0, -3.0, -8.0], [-2.0, -10.0]
    with_eps = [fake_eval("random", [a]), fake_eval("random", [b])]
    without = [fake_eval("random", [a]), fake_eval("random", [b])]
    for ev in without:
        for t in ev["targets"]:
            del t["returns"]
    p, q = pool(with_eps), pool(without)
    for k in ("episodes", "mean_return", "std_return", "ci95"):
        assert p[k] == pytest.approx(q[k])
    # by hand: mean -24/5 = -4.8; population variance (1+9+64+4+100)/5 - 4.8^2 = 12.56
    assert p["episodes"] == 5
    assert p["mean_return"] == pytest.approx(-4.8)
    assert p["std_return"] == pytest.approx(12.56 ** 0.5)
    assert p["ci95"] == pytest.approx(1.96 * 12.56 ** 0.5 / 5 ** 0.5)


def test_report_without_runs_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        report(tmp_path, tmp_path / "out")
    # reproduce nests runs per preset: the error names the directory to pass.
    make_run(tmp_path / "runs" / "quick", "pendulum-expert-v0", "random", 0,
             fake_eval("random", [[-1.0]]))
    with pytest.raises(FileNotFoundError, match="runs/quick"):
        report(tmp_path / "runs", tmp_path / "out")
    table = report(tmp_path / "runs" / "quick", tmp_path / "out", plots=False, quiet=True)
    assert len(table) == 1


def test_helpers():
    assert dataset_level("pendulum-medium-replay-v0") == "medium-replay"
    assert dataset_level("pendulum/medium-v0") == "medium"
    assert dataset_level("pendulum-medium-expert-v0") == "medium-expert"
    assert dataset_level("pendulum-random-v0") == "random"
    assert dataset_level("pendulum-full-replay-v0") == "full-replay"
    assert dataset_level("pendulum-v0") is None


def test_levels_are_the_d4rl_ones_and_report_does_not_import_evaluate():
    from offline_dt.data import d4rl

    assert LEVELS is d4rl.LEVELS
    code = ("import sys, offline_dt.report; "
            "print('offline_dt.evaluate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------- to_markdown
def parse_markdown(md: str) -> pd.DataFrame:
    """Read a pipe table back with pandas: ``n/a`` is NaN, the alignment row is skipped."""
    lines = md.splitlines()
    body = "\n".join(line.strip().strip("|").strip() for line in [lines[0], *lines[2:]])
    return pd.read_csv(io.StringIO(body), sep=r"\s*\|\s*", engine="python",
                       na_values=["n/a"], keep_default_na=False)


def alignments(md: str) -> list[str]:
    """"right" or "left" for each column, from the alignment row."""
    cells = md.splitlines()[1].strip().strip("|").split("|")
    return ["right" if c.endswith(":") and not c.startswith(":")
            else "left" if c.startswith(":") and not c.endswith(":") else c for c in cells]


def test_to_markdown_by_hand():
    table = pd.DataFrame({"method": ["dt", "007"], "seeds": [2, 10],
                          "mean_return": [-152.567, float("nan")],
                          "score": [float("nan"), 99.999]})
    md = to_markdown(table)
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in md.splitlines()]
    assert rows[0] == ["method", "seeds", "mean_return", "score"]
    assert rows[2:] == [["dt", "2", "-152.57", "n/a"], ["007", "10", "n/a", "100.00"]]
    assert alignments(md) == ["left", "right", "right", "right"]
    assert md.endswith("|\n")
    # a numeric column with nothing but NaN is still right-aligned
    assert alignments(to_markdown(table.assign(score=float("nan"))))[3] == "right"
    assert "-152.6 " in to_markdown(table, digits=1)


@settings(max_examples=40, deadline=None)
@given(data_frames([
    column("name", elements=st.text("abcxyz-_/0123456789.", min_size=1, max_size=12)),
    column("count", dtype=np.int64, elements=st.integers(-10**6, 10**6)),
    column("value", dtype=float, elements=st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan")))),
    column("score", dtype=float, elements=st.sampled_from(
        [float("nan"), 0.0, -0.004, 0.125, 1 / 3, 99.999, -1234.5678])),
]))
def test_to_markdown_round_trips_through_pandas(frame):
    md = to_markdown(frame)
    back = parse_markdown(md)
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    # text verbatim (even when it looks like a number), integers exact
    assert list(back["name"].astype(str)) == list(frame["name"])
    assert list(back["count"]) == list(frame["count"])
    for c in ("value", "score"):
        # n/a exactly where the frame has NaN, and every number printed with 2 decimals
        np.testing.assert_array_equal(back[c].isna(), frame[c].isna())
        np.testing.assert_allclose(back[c].astype(float), frame[c], rtol=0, atol=0.005 + 1e-9)
        cells = [r.strip().strip("|").split("|")[list(frame.columns).index(c)].strip()
                 for r in md.splitlines()[2:]]
        assert all(x == "n/a" or re.fullmatch(r"-?\d+\.\d\d", x) for x in cells), cells
    if len(frame):  # tabulate writes no alignment for a table without rows
        assert alignments(md) == ["left", "right", "right", "right"]
