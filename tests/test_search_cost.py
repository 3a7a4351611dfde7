"""benchmarks/search_cost.py: each study's wall time adds up over the runs that worked on it
(a run that finds the study complete adds nothing), and the page lists every study under the
root from its own files (the study itself is replaced by a stand-in that writes what
``offline_dt.study.search`` writes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

import benchmarks.search_cost as sc
from offline_dt.study.search_report import SearchResult
from offline_dt.study.tuning import study_dir


def _fake_study(trials_done: list[int], seconds: float = 0.05, recorded: float = 40.0):
    """A stand-in for ``run_study_of``: completes the study's trials up to ``cfg.trials``
    (recording how many it ran in ``trials_done``), sleeping ``seconds`` per trial, and
    writes ``trials.csv`` (each trial ``recorded`` seconds long) and ``best.json`` as the real
    study does."""

    def run(cfg):
        out = Path(cfg.study_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv = out / "trials.csv"
        old = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(
            columns=["number", "state", "value", "seconds"])
        new = range(len(old), cfg.trials)
        trials_done.append(len(new))
        for _ in new:
            time.sleep(seconds)
        df = pd.concat([old, pd.DataFrame({"number": list(new), "state": "COMPLETE",
                                           "value": [-100.0 - n for n in new],
                                           "seconds": recorded})], ignore_index=True)
        df.to_csv(csv, index=False)
        (out / "best.json").write_text(json.dumps({
            "best_value": -100.0, "best_params": {"learning_rate": 0.000312, "n_layer": 2},
            "complete": len(df), "pruned": 0, "failed": 0}))
        return SearchResult(-100.0, {}, None, len(df), 0, 0, out)

    return run


def test_wall_time_adds_over_runs_and_not_for_a_complete_study(tmp_path, monkeypatch):
    done: list[int] = []
    monkeypatch.setattr("offline_dt.study.tuning.run_study_of", _fake_study(done))
    paths = {"random": tmp_path / "pendulum-random-v0.hdf5"}
    args = ("paper", "Pendulum-v1", tmp_path, "cpu", paths, ["qt"])
    out = study_dir(tmp_path, "paper", "Pendulum-v1", paths["random"], "qt")

    sc.run_studies(*args, trials=2, workers=1)  # a first run (as if stopped at 2 trials)
    first = json.loads((out / "cost.json").read_text())
    sc.run_studies(*args, trials=4, workers=1)  # continued to 4
    second = json.loads((out / "cost.json").read_text())
    sc.run_studies(*args, trials=4, workers=1)  # found complete: no cost added
    third = json.loads((out / "cost.json").read_text())

    assert done == [2, 2, 0]
    assert first["runs"] == 1 and second["runs"] == 2 and third == second
    assert second["wall_s"] >= first["wall_s"] + 0.1  # two more trials of 0.05 s
    assert second["machine"].endswith("cores, 1 workers")


def test_page_lists_every_study_of_the_preset(tmp_path, monkeypatch):
    monkeypatch.setattr("offline_dt.study.tuning.run_study_of", _fake_study([]))
    for level, method in (("random", "qt"), ("expert", "dt")):
        paths = {level: tmp_path / f"pendulum-{level}-v0.hdf5"}
        sc.run_studies("paper", "Pendulum-v1", tmp_path, "cpu", paths, [method], 3, 1)
    # a study of another preset is not this page's
    other = {"random": tmp_path / "pendulum-random-v0.hdf5"}
    sc.run_studies("quick", "Pendulum-v1", tmp_path, "cpu", other, ["dt"], 1, 1)

    df = sc.study_rows(tmp_path, "paper", "Pendulum-v1").set_index(["dataset", "method"])
    assert sorted(df.index) == [("pendulum-expert-v0", "dt"), ("pendulum-random-v0", "qt")]
    row = df.loc[("pendulum-random-v0", "qt")]
    assert row["complete"] == 3 and row["runs"] == 1
    assert row["trials_min"] == pytest.approx(2.0)  # 3 trials of 40 s
    assert row["best_params"] == "learning_rate=0.000312, n_layer=2"
    assert row["best_validation_return"] == -100.0
