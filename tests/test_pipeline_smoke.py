"""End to end: ``reproduce(preset="smoke")`` — the slowest test of the suite (a few minutes on 2
CPU cores): generate tiny datasets, train dt, bc and qt and the d3rlpy reference rows (iql,
mlp-bc, pct-bc; d3rlpy must be installed, see README) on every level, evaluate them and the
random and behaviour baselines, write the report; then rerun and reuse everything. The first
run goes through the two-worker process pool, the rerun through the in-process path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.behaviour_fingerprint import compare, fingerprint, machine_signature
from offline_dt.data.d4rl import LEVELS
from offline_dt.envs.seeds import SEED_RULES
from offline_dt.methods import METHODS
from offline_dt.study.d3rlpy_io import INSTALL_HINT
from offline_dt.study.jobs import all_methods
from offline_dt.study.pipeline import reproduce
from offline_dt.study.presets import PRESETS
from offline_dt.study.reference import REFERENCE_METHODS
from offline_dt.study.runs import REPLAY_LEVELS
from offline_dt.study.tables import COLUMNS

pytestmark = pytest.mark.slow


def test_reproduce_smoke_end_to_end(tmp_path):
    pytest.importorskip("d3rlpy", reason=f"the reference rows need d3rlpy: {INSTALL_HINT}")
    table = reproduce(preset="smoke", root=tmp_path, progress=False, workers=2)
    report_dir = tmp_path / "reports" / "Pendulum-v1" / "smoke"
    csv = pd.read_csv(report_dir / "results.csv")
    assert list(csv.columns) == COLUMNS
    assert list(table.columns) == COLUMNS
    got = {(row.dataset, row.method) for row in csv.itertuples()}
    # A data row per dataset; behaviour only where one policy wrote the data.
    # dt, bc, qt, reference, random; not tt, which runs only when named (Method.in_reproduce)
    learned = [m for m in all_methods() if m != "behaviour" and m not in METHODS
               or m in METHODS and METHODS[m].in_reproduce]
    assert {"dt", "bc", *REFERENCE_METHODS, "random"} <= set(learned)
    want = {(f"pendulum-{lv}-v0", m) for lv in LEVELS for m in ("data", *learned)}
    want |= {(f"pendulum-{lv}-v0", "behaviour") for lv in LEVELS if lv not in REPLAY_LEVELS}
    assert got == want
    episodes = PRESETS["smoke"].evaluate["episodes"]
    runs = csv[csv.method != "data"]
    assert (runs["episodes"] == episodes).all() and (runs["seeds"] == 1).all()
    assert (runs["runs"] == 1).all() and runs["run_ci95_low"].isna().all()  # one seed
    assert (csv[csv.method == "data"]["runs"] == 0).all()
    assert csv["normalized_score"].notna().all()
    # The random baseline is the same policy on the same episodes for every level.
    assert csv[csv.method == "random"]["mean_return"].nunique() == 1
    for name in ("results.md", "aggregates.csv", "run_scores.csv",
                 "learning_curves_Pendulum-v1.png", "dataset_returns_Pendulum-v1.png",
                 "performance_profile_Pendulum-v1.png"):
        assert (report_dir / name).stat().st_size > 0
    assert "| dataset " in (report_dir / "results.md").read_text()
    timings = json.loads((report_dir / "timings.json").read_text())
    assert {"generate", "train", "evaluate", "baselines", "reference_train",
            "reference_evaluate", "report"} <= set(timings["stages"])
    assert timings["workers"] == 2 and not any(r["reused"] for r in timings["runs"])
    run = tmp_path / "runs" / "smoke" / "Pendulum-v1" / "pendulum-expert-v0" / "dt" / "seed0"
    for name in ("config.json", "eval.json", "metrics.csv", "checkpoint.pt"):
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["eval_return_mean"].notna().sum() == 2  # eval_every 75 of 150 steps
    ev = json.loads((run / "eval.json").read_text())
    assert ev["method"] == "dt" and len(ev["targets"]) == 1
    assert ev["mean_return"] == ev["targets"][0]["mean"]
    # dt's two targets were compared on validation episodes only; the test episodes of every
    # row are the same ones.
    sel = ev["selection"]
    assert len(sel["validation"]) == 2 and sel["validation_episodes"] == 5
    assert all(v["split"] == "validation" for v in sel["validation"])
    iql = json.loads((run.parent.parent / "iql" / "seed0" / "eval.json").read_text())
    assert iql["episode_seeds"] == ev["episode_seeds"] == SEED_RULES["test"]
    assert iql["targets"][0]["episode_seeds"] == ev["targets"][0]["episode_seeds"]
    assert "How targets were chosen (no choice is made" in (report_dir / "results.md"
                                                            ).read_text()

    # Same datasets (array checksums, both formats), training losses and evaluation returns
    # as the committed fingerprint of this preset.
    # The fixture keeps one fingerprint per machine signature (CPU vendor and kernels, auto
    # precision, torch minor): SAC's fp32 training already differs between CPU kinds. The
    # random level involves no network, so it must match every recorded machine's.
    fixture = json.loads((Path(__file__).parent / "fixtures" / "smoke_fingerprint.json")
                         .read_text())["fingerprints"]
    now = fingerprint(tmp_path, "smoke")
    for entry in now["datasets"].values():
        entry.pop("hdf5_sha256")
    for sig, golden in fixture.items():
        random_level = "pendulum-random-v0"
        assert golden["datasets"][random_level] == now["datasets"][random_level], sig
    golden = fixture.get(machine_signature())
    if golden is None:
        warnings.warn(f"no smoke fingerprint recorded for {machine_signature()}: only the random "
                      f"level was compared; record one with benchmarks/behaviour_fingerprint.py "
                      f"--fixture", stacklevel=1)
    else:
        assert compare(golden, now) == []

    # Rerun: datasets and every run are reused, nothing is retrained or re-evaluated.
    mtime = (run / "eval.json").stat().st_mtime_ns
    again = reproduce(preset="smoke", root=tmp_path, progress=False)
    pd.testing.assert_frame_equal(again, table)
    assert (run / "eval.json").stat().st_mtime_ns == mtime
    timings = json.loads((report_dir / "timings.json").read_text())
    assert all(r["reused"] for r in timings["runs"])
