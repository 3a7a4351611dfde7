"""Report: exact CSV columns, run-level statistics (IQM, bootstrap intervals, probability of
improvement) against hand computations, the data and behaviour rows, the wide table read back
against the CSV, plots from fabricated run dirs."""

from __future__ import annotations

import io
import itertools
import math
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

from offline_dt.data import OfflineDataset, write_hdf5
from offline_dt.evaluation.results import build_eval_payload, summarize_returns
from offline_dt.study.notes import selection_note
from offline_dt.study.report import report
from offline_dt.study.runs import RUN_COLUMNS, dataset_level
from offline_dt.study.statistics import (
    AGGREGATE_COLUMNS,
    RUN_STAT_COLUMNS,
    aggregate_table,
    iqm,
    pool,
    probability_of_improvement,
    run_interval,
    run_statistics,
)
from offline_dt.study.tables import COLUMNS, best_method, to_markdown
from offline_dt.training.configs import save_json

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


DATA_RETURNS = {"pendulum-medium-v0": [-900.0, -700.0, -650.0, -800.0],
                "pendulum-full-replay-v0": [-1000.0, -300.0],
                "pendulum-expert-v0": [-150.0, -140.0, -160.0]}
DATASETS = ["pendulum-medium-v0", "pendulum-full-replay-v0", "pendulum-expert-v0"]


@pytest.fixture
def runs(tmp_path):
    """Three datasets, two seeds of every method; behaviour runs on the replay dataset too
    (as an older reproduce wrote them): the report must skip those."""
    root = tmp_path / "runs"
    data = tmp_path / "ds"
    data.mkdir()
    for ds, returns in DATA_RETURNS.items():
        path = str(data / f"{ds}.hdf5")
        fake_dataset(path, returns)
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
            make_run(root, ds, "random", seed,
                     fake_eval("random", [[-1200.0 - seed, -1300.0, -1100.0]]),
                     {"dataset": path, "method": "random"})
            make_run(root, ds, "behaviour", seed, fake_eval("behaviour", [[-150.0 + seed, -140.0]]),
                     {"dataset": path, "method": "behaviour"})
    return root


def row(csv, dataset, method):
    found = csv[(csv.dataset == dataset) & (csv.method == method)]
    assert len(found) == 1, (dataset, method, len(found))
    return found.iloc[0]


def test_report_columns_and_seed_aggregation(runs, tmp_path):
    out = tmp_path / "report"
    table = report(runs, out)
    assert list(table.columns) == COLUMNS
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns) == COLUMNS
    pd.testing.assert_frame_equal(csv, table, check_dtype=False)
    # Levels in study order, methods in table order; no behaviour on the replay dataset.
    assert list(csv["dataset"]) == (["pendulum-medium-v0"] * 5 + ["pendulum-full-replay-v0"] * 4
                                    + ["pendulum-expert-v0"] * 5)
    assert list(csv["method"][:9]) == ["data", "random", "behaviour", "bc", "dt",
                                       "data", "random", "bc", "dt"]
    dt = row(csv, "pendulum-medium-v0", "dt")
    pooled = np.array([-600.0, -400.0, -500.0, -300.0])  # headline episodes of both seeds
    assert dt.seeds == 2 and dt.runs == 2 and dt.episodes == 4
    assert dt.mean_return == pytest.approx(pooled.mean())
    assert dt.std_return == pytest.approx(pooled.std())
    assert dt.max_return == pytest.approx(-300.0)
    assert dt.ci95 == pytest.approx(1.96 * pooled.std() / 2.0)  # episode-level
    assert dt.normalized_score == pytest.approx(
        100 * (pooled.mean() - REF_MIN) / (REF_MAX - REF_MIN))
    # Run scores -500 and -400: IQM of two runs is their mean; the percentile bootstrap of
    # two values puts a quarter of its mass on each of them, so the interval is [min, max].
    assert dt.iqm_return == pytest.approx(-450.0)
    assert (dt.run_ci95_low, dt.run_ci95_high) == pytest.approx((-500.0, -400.0))
    norm = lambda r: 100 * (r - REF_MIN) / (REF_MAX - REF_MIN)  # noqa: E731
    assert dt.iqm_normalized_score == pytest.approx(norm(-450.0))
    assert (dt.run_ci95_low_normalized, dt.run_ci95_high_normalized) == pytest.approx(
        (norm(-500.0), norm(-400.0)))
    rnd = row(csv, "pendulum-expert-v0", "random")
    assert rnd.seeds == 2 and rnd.episodes == 6
    assert rnd.mean_return == pytest.approx((-3600.0 - 3601.0) / 6)
    scores = pd.read_csv(out / "run_scores.csv")
    assert list(scores.columns) == RUN_COLUMNS
    assert len(scores) == 3 * 3 * 2 + 2 * 2  # dt, bc, random everywhere; behaviour twice
    assert list(pd.read_csv(out / "aggregates.csv").columns) == AGGREGATE_COLUMNS
    for name in ("learning_curves_Pendulum-v1.png", "dataset_returns_Pendulum-v1.png",
                 "performance_profile_Pendulum-v1.png"):
        assert (out / name).stat().st_size > 10_000


def test_report_is_deterministic(runs, tmp_path):
    report(runs, tmp_path / "a", plots=False, quiet=True)
    report(runs, tmp_path / "b", plots=False, quiet=True)
    for name in ("results.csv", "aggregates.csv", "results.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ----------------------------------------------------------------------------- statistics
def exact_bootstrap(samples, statistic):
    """Every equally likely bootstrap resample enumerated (each sample resampled on its own):
    the exact bootstrap distribution of ``statistic(*resamples)``, one resample per row."""
    grids = [np.array(list(itertools.product(s, repeat=len(s)))) for s in samples]
    rows = np.array(list(itertools.product(*[range(len(g)) for g in grids])))
    return statistic(*[g[rows[:, j]] for j, g in enumerate(grids)])


def iqm_rows(*parts):
    """The IQM of each row of the parts side by side, from the definition: sort, cut
    int(n / 4) values from each end, average the rest."""
    x = np.sort(np.concatenate(parts, axis=-1), axis=-1)
    cut = x.shape[-1] // 4
    return x[..., cut:x.shape[-1] - cut].mean(axis=-1)


def test_iqm_and_run_interval_by_hand():
    scores = np.array([-300.0, -250.0, -240.0, -210.0, -100.0])
    # IQM: int(0.25 * 5) = 1 run cut from each end, the mean of the middle three.
    assert iqm(scores) == (-250.0 - 240.0 - 210.0) / 3
    assert iqm([4.0, 1.0, 3.0, 2.0]) == 2.5  # unsorted; one cut from each end of four
    # Run-level interval: 2.5% and 97.5% quantiles of the mean over all 5^5 resamples.
    dist = exact_bootstrap([scores], lambda x: x.mean(axis=-1))
    want = np.percentile(dist, [2.5, 97.5])
    low, high = run_interval(scores)
    assert (low, high) == pytest.approx(tuple(want), abs=0.03 * np.ptp(scores))
    assert run_interval(scores) == (low, high)  # seeded
    stats = run_statistics(scores, 2 * scores + 10)
    assert stats["runs"] == 5 and stats["iqm_return"] == iqm(scores)
    assert stats["iqm_normalized_score"] == pytest.approx(2 * iqm(scores) + 10)
    assert (stats["run_ci95_low_normalized"], stats["run_ci95_high_normalized"]) == \
        pytest.approx((2 * low + 10, 2 * high + 10), abs=0.03 * 2 * np.ptp(scores))
    # One run: no interval (not a zero-width one).
    one = run_statistics(np.array([-5.0]), np.array([50.0]))
    assert one["iqm_return"] == -5.0
    assert all(math.isnan(one[k]) for k in ("run_ci95_low", "run_ci95_high",
                                            "run_ci95_low_normalized",
                                            "run_ci95_high_normalized"))


def test_report_iqm_of_five_runs(tmp_path):
    scores = [-300.0, -250.0, -240.0, -210.0, -100.0]
    for seed, s in enumerate(scores):
        make_run(tmp_path, "pendulum-expert-v0", "dt", seed, fake_eval("dt", [[s, s]]))
    t = report(tmp_path, tmp_path / "out", plots=False, quiet=True)
    dt = row(t, "pendulum-expert-v0", "dt")
    assert dt.runs == 5 and dt.iqm_return == pytest.approx(-700.0 / 3)
    assert dt.mean_return == pytest.approx(np.mean(scores))
    assert (dt.run_ci95_low, dt.run_ci95_high) == run_interval(scores)


def test_aggregate_iqm_interval_is_stratified_over_datasets():
    a, b = [10.0, 40.0, 45.0], [20.0, 90.0, 95.0]  # normalized scores of three runs each
    scores = pd.DataFrame({
        "env": "E", "dataset": ["d1"] * 3 + ["d2"] * 3, "method": "dt", "seed": [0, 1, 2] * 2,
        "episodes": 1, "mean_return": a + b, "normalized_score": a + b})
    agg = aggregate_table(scores).iloc[0]
    assert agg.datasets == 2 and agg.runs == 6
    # IQM of six: int(1.5) = 1 cut from each end, the mean of 20, 40, 45, 90.
    assert agg.iqm_normalized_score == (20.0 + 40.0 + 45.0 + 90.0) / 4
    # Stratified: each dataset's runs resampled on their own, 27 x 27 equally likely draws.
    want = np.percentile(exact_bootstrap([a, b], iqm_rows), [2.5, 97.5])  # 22.5, 68.75
    assert (agg.iqm_ci95_low, agg.iqm_ci95_high) == pytest.approx(tuple(want), abs=1.0)
    # What it is not: the six runs resampled together ([20, 81.25]), or the mean ([26.7, 68.3]).
    pooled = np.percentile(exact_bootstrap([a + b], iqm_rows), [2.5, 97.5])
    mean = np.percentile(exact_bootstrap([a, b], lambda x, y: (x.sum(-1) + y.sum(-1)) / 6),
                         [2.5, 97.5])
    assert abs(agg.iqm_ci95_low - pooled[0]) > 2 and abs(agg.iqm_ci95_high - pooled[1]) > 2
    assert abs(agg.iqm_ci95_low - mean[0]) > 2


def test_probability_of_improvement_by_hand():
    x = [np.array([1.0, 3.0]), np.array([5.0])]
    y = [np.array([2.0, 2.0]), np.array([5.0, 4.0])]
    # d1: 3 beats both 2s, 1 beats neither: 2/4; d2: 5 ties 5 (1/2) and beats 4: 1.5/2.
    assert probability_of_improvement(x, y) == (2 / 4 + 1.5 / 2) / 2
    assert probability_of_improvement(y, x) == 1 - (2 / 4 + 1.5 / 2) / 2


def test_probability_of_improvement_over_dt_in_the_report(runs, tmp_path):
    report(runs, tmp_path / "out", plots=False, quiet=True)
    agg = pd.read_csv(tmp_path / "out" / "aggregates.csv").set_index("method")
    # Per dataset dt runs score -500, -400 and bc runs -600, -500: of the four pairs bc wins
    # none and ties one, so 0.5 / 4 on every dataset.
    assert agg.loc["bc", "prob_improvement_over_dt"] == 0.125
    assert agg.loc["random", "prob_improvement_over_dt"] == 0.0
    assert agg.loc["behaviour", "prob_improvement_over_dt"] == 1.0
    assert agg.loc["behaviour", "datasets"] == 2 and agg.loc["bc", "datasets"] == 3
    assert math.isnan(agg.loc["dt", "prob_improvement_over_dt"])
    lo, hi = agg.loc["bc", ["prob_improvement_ci95_low", "prob_improvement_ci95_high"]]
    assert 0.0 <= lo <= 0.125 <= hi <= 1.0 and hi > lo
    assert "data" not in agg.index  # the dataset rows have no runs


# ------------------------------------------------------------------------ data, behaviour
def test_data_row_equals_the_files_episode_returns(runs, tmp_path):
    report(runs, tmp_path / "out", plots=False, quiet=True)
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    for ds, returns in DATA_RETURNS.items():
        r, d = np.array(returns), row(csv, ds, "data")
        assert d.episodes == len(r) and d.runs == 0 and d.seeds == 0
        assert d.mean_return == pytest.approx(r.mean())
        assert d.std_return == pytest.approx(r.std())
        assert d.max_return == pytest.approx(r.max())
        assert d.normalized_score == pytest.approx(
            100 * (r.mean() - REF_MIN) / (REF_MAX - REF_MIN))
        assert d[["ci95", *RUN_STAT_COLUMNS]].isna().all()


def test_unreadable_dataset_gives_no_data_row(tmp_path):
    make_run(tmp_path, "pendulum-expert-v0", "dt", 0, fake_eval("dt", [[-1.0]]),
             {"train_config": {"dataset": str(tmp_path / "gone.hdf5")}})
    t = report(tmp_path, tmp_path / "out", plots=False, quiet=True)
    assert list(t["method"]) == ["dt"]


def test_replay_dataset_gets_no_behaviour_row(runs, tmp_path):
    t = report(runs, tmp_path / "out", plots=False, quiet=True)
    assert set(t[t.dataset == "pendulum-full-replay-v0"]["method"]) == {
        "data", "random", "bc", "dt"}
    assert set(t[t.method == "behaviour"]["dataset"]) == {"pendulum-medium-v0",
                                                          "pendulum-expert-v0"}
    wide = md_tables((tmp_path / "out" / "results.md").read_text())[0]
    assert wide.set_index("dataset").loc["pendulum-full-replay-v0", "behaviour"] == "n/a"
    assert "`behaviour` is n/a on `pendulum-full-replay-v0`" in (
        tmp_path / "out" / "results.md").read_text()


# ----------------------------------------------------------------------- the wide table
NUM = r"-?\d+\.\d"
METHOD_CELL = re.compile(rf"(?P<bold>\*\*|)(?P<mean>{NUM})(?: \[(?P<low>{NUM}), "
                         rf"(?P<high>{NUM})\])? \((?P<norm>{NUM}|n/a)\)(?P=bold)")
DATA_CELL = re.compile(rf"(?P<mean>{NUM}) ± (?P<std>{NUM}) \((?P<norm>{NUM}|n/a)\), "
                       rf"max (?P<max>{NUM})")


def md_tables(text: str) -> list[pd.DataFrame]:
    """Every pipe table of a Markdown text, cells as stripped strings."""
    blocks, cur = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            blocks.append(pd.DataFrame(cur[2:], columns=cur[0]))
            cur = []
    return blocks


def test_wide_table_round_trips_from_the_csv(runs, tmp_path):
    out = tmp_path / "out"
    report(runs, out, plots=False, quiet=True)
    csv = pd.read_csv(out / "results.csv")
    wide = md_tables((out / "results.md").read_text())[0]
    assert list(wide.columns) == ["dataset", "data", "random", "behaviour", "bc", "dt"]
    assert list(wide["dataset"]) == DATASETS
    close = lambda cell, value: abs(float(cell) - value) <= 0.05 + 1e-9  # noqa: E731
    bold = set()
    for cells in wide.itertuples(index=False):
        for method in wide.columns[1:]:
            cell = getattr(cells, method)
            found = csv[(csv.dataset == cells.dataset) & (csv.method == method)]
            if found.empty:
                assert cell == "n/a"
                continue
            r = found.iloc[0]
            m = (DATA_CELL if method == "data" else METHOD_CELL).fullmatch(cell)
            assert m is not None, cell
            assert close(m["mean"], r.mean_return) and close(m["norm"], r.normalized_score)
            if method == "data":
                assert close(m["std"], r.std_return) and close(m["max"], r.max_return)
                continue
            assert close(m["low"], r.run_ci95_low) and close(m["high"], r.run_ci95_high)
            if m["bold"]:
                bold.add((cells.dataset, method))
    # behaviour's interval [-145, -144.5] lies above all others on medium and expert; on
    # full-replay dt [-500, -400] only touches bc [-600, -500]: nothing is bold there.
    assert bold == {("pendulum-medium-v0", "behaviour"), ("pendulum-expert-v0", "behaviour")}


def test_best_method_rule():
    def rows(*spec):
        return pd.DataFrame([{"method": m, "run_ci95_low": lo, "run_ci95_high": hi}
                             for m, lo, hi in spec])

    nan = float("nan")
    assert best_method(rows(("bc", 1, 2), ("dt", 3, 4))) == "dt"
    assert best_method(rows(("bc", 1, 3), ("dt", 2, 4))) is None  # overlap
    assert best_method(rows(("bc", 1, 3), ("dt", 3, 4))) is None  # touching is not above
    assert best_method(rows(("bc", 1, 2), ("dt", 3, 4), ("random", 0, 5))) is None
    assert best_method(rows(("bc", 1, 2), ("dt", 3, 4), ("data", nan, nan))) == "dt"
    assert best_method(rows(("bc", nan, nan), ("dt", 3, 4))) is None  # one run: unknown
    assert best_method(rows(("dt", 3, 4))) is None  # nothing to be above


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


def test_report_imports_neither_evaluation_nor_the_pipeline():
    """The report reads run directories only: importing it (and the package's public names
    that live in its modules) loads no evaluation, training loop or pipeline code."""
    code = ("import sys, offline_dt.study.report; from offline_dt.study import find_runs; "
            "print(sorted(m for m in ('offline_dt.evaluation.evaluate', "
            "'offline_dt.training.loop', 'offline_dt.study.pipeline', 'offline_dt.study.jobs') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------- to_markdown
def parse_markdown(md: str, text: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a pipe table back with pandas: ``n/a`` is NaN, the alignment row is skipped, the
    ``text`` columns stay strings (``"00"`` must not come back as the number 0)."""
    lines = md.splitlines()
    body = "\n".join(line.strip().strip("|").strip() for line in [lines[0], *lines[2:]])
    return pd.read_csv(io.StringIO(body), sep=r"\s*\|\s*", engine="python",
                       na_values=["n/a"], keep_default_na=False,
                       dtype={c: str for c in text})


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
    back = parse_markdown(md, text=("name",))
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


def validated_eval(method: str, returns: list[float], candidates: int) -> dict:
    """An eval.json as evaluate_checkpoint writes it since issue 18 (selection block)."""
    ev = fake_eval(method, [returns])
    cands = [{"target_return": -100.0 - j, "settings": {}} for j in range(candidates)]
    ev["selection"] = {"candidates": cands, "chosen_index": 0, "chosen": cands[0],
                       "validation_episodes": 50 if candidates > 1 else 0,
                       "validation_episode_seeds": "2000000000000 + seed * 100000 + i",
                       "validation": [{"mean": -1.0}] * candidates if candidates > 1 else []}
    return ev


def test_reference_rows_and_qt_get_columns_aggregates_and_notes(runs, tmp_path):
    ds = "pendulum-medium-v0"
    for seed, (a, b) in enumerate([(-700.0, -500.0), (-650.0, -450.0)]):
        for method in ("qt", "iql", "pct-bc", "mlp-bc"):
            ev = (validated_eval(method, [a, b], 4) if method == "qt"
                  else fake_eval("random", [[a, b]]) | {"method": method})
            curve = pd.DataFrame({"step": [0, 100], "loss": [1.0, 0.5],
                                  "eval_return_mean": [-900.0, a]}) if method == "qt" else (
                pd.DataFrame({"step": [10, 20], "loss": [3.0, 2.0]}))
            make_run(runs, ds, method, seed, ev, {"method": method}, curve)
    out = tmp_path / "out"
    report(runs, out, quiet=True)
    md = (out / "results.md").read_text()
    wide = md_tables(md)[0]
    assert list(wide.columns) == ["dataset", "data", "random", "behaviour", "mlp-bc",
                                  "pct-bc", "iql", "bc", "dt", "qt"]
    assert wide.set_index("dataset").loc["pendulum-expert-v0", "iql"] == "n/a"
    aggregates = pd.read_csv(out / "aggregates.csv")
    assert set(aggregates["method"]) == {"random", "behaviour", "mlp-bc", "pct-bc", "iql",
                                         "bc", "dt", "qt"}
    qt = aggregates.set_index("method").loc["qt"]
    assert qt["datasets"] == 1 and 0.0 <= qt["prob_improvement_over_dt"] <= 1.0
    # What each row is, and how each chose its target: the fixture's dt files predate
    # validation episodes (two targets on the test episodes), qt's chose on validation ones.
    assert "`pct-bc`: %BC" in md and "`iql`: Implicit Q-Learning" in md
    note = next(line for line in md.splitlines() if line.startswith("How targets were chosen"))
    assert "no choice is made" not in note
    assert "`qt`: the best mean return of 4 candidates" in note
    assert "on 50 validation episodes" in note
    assert "`dt`: the best of 2 target returns on the test episodes themselves" in note
    assert "`random`, `behaviour`, `mlp-bc`, `pct-bc`, `iql`, `bc`: one candidate" in note
    assert (out / "learning_curves_Pendulum-v1.png").stat().st_size > 0


def test_selection_note_of_runs_chosen_on_validation_episodes():
    runs = [{"env": "E", "method": "dt", "eval": validated_eval("dt", [-1.0], 2)},
            {"env": "E", "method": "bc", "eval": validated_eval("bc", [-1.0], 1)},
            {"env": "F", "method": "dt", "eval": fake_eval("dt", [[-1.0], [-2.0]])}]
    note = selection_note(runs, "E")
    assert note.startswith("How targets were chosen (no choice is made on the test episodes")
    assert "`dt`: the best mean return of 2 candidates" in note
    assert "`bc`: one candidate, nothing chosen" in note
    assert "themselves" in selection_note(runs, "F")


def test_the_note_counts_which_checkpoint_each_run_chose():
    """A method whose runs chose among checkpoints (a preset's method_candidates) gets a
    sentence saying, per level, how many runs chose their own checkpoint or which
    ``candidates/<name>`` run; methods without such a choice get none."""
    from offline_dt.study.notes import checkpoint_choices, chosen_checkpoint, selection_rule

    def ev(chosen):
        cands = [{"target_return": -1.0, "settings": {}, "checkpoint": "r/qt/seed0"},
                 {"target_return": -1.0, "settings": {},
                  "checkpoint": "r/qt/seed0/candidates/off"}]
        return {"selection": {"candidates": cands, "chosen": cands[chosen],
                              "validation": [{}], "validation_episodes": 5}}

    runs = [{"env": "E", "method": "qt", "dataset": f"pendulum-{lv}-v0", "eval": ev(c)}
            for lv, c in (("expert", 1), ("expert", 1), ("random", 0))]
    runs.append({"env": "E", "method": "dt", "dataset": "pendulum-random-v0",
                 "eval": {"selection": {"candidates": [{"target_return": -1.0}],
                                        "chosen": {"target_return": -1.0}}}})
    assert [chosen_checkpoint(r["eval"]) for r in runs] == ["off", "off", "own", None]
    assert checkpoint_choices(runs, "E") == (
        " `qt`'s chosen checkpoint per level (runs): expert off 2; random own 1.")
    assert checkpoint_choices(runs, "other env") == ""
    assert "checkpoint (the run's or a `candidates/` run's" in selection_rule(runs[0]["eval"])
    assert "checkpoint" not in selection_rule(runs[3]["eval"])


def test_a_kept_intermediate_checkpoint_is_named_by_its_run_and_step():
    from offline_dt.study.notes import chosen_checkpoint, selection_rule

    def ev(*paths):
        cands = [{"checkpoint": p, "target_return": -1.0, "settings": {}} for p in paths]
        return {"selection": {"candidates": cands, "chosen": cands[-1], "validation": [{}],
                              "validation_episodes": 50, "validation_episode_seeds": "s"}}

    run = "runs/Pendulum-v1/x/qt/seed0"
    own = ev(run, f"{run}/checkpoints/step-0000500.pt")
    assert chosen_checkpoint(own) == "own step 500"
    alt = ev(run, f"{run}/candidates/eta0-beta0/checkpoints/step-0001000.pt")
    assert chosen_checkpoint(alt) == "eta0-beta0 step 1000"
    assert chosen_checkpoint(ev(run, f"{run}/candidates/eta0-beta0")) == "eta0-beta0"
    assert "checkpoint (the run's, its last or one kept along the way)" in selection_rule(own)
    assert ("checkpoint (the run's or a `candidates/` run's, trained with other options, its "
            "last or one kept along the way)") in selection_rule(alt)
