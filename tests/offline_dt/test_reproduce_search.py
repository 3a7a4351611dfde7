"""``reproduce(search=TRIALS)`` (offline_dt.study.tuning): a study per level and searched
method before the runs, tuned rows trained at each study's best parameters beside the
untuned ones, the chosen-parameters table, the study reused on rerun; and every row's
training budget (offline_dt.study.budget) in the results table.

A tiny preset (20 training steps, 8 d3rlpy updates, 1-2 episodes per evaluation) on the tiny
Pendulum-shaped dataset of conftest, named as reproduce names the expert level; datasets are
not generated (the generate stage is replaced), everything after it is the real code."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import offline_dt.evaluation.curves as curves
import offline_dt.evaluation.evaluate as evaluate
import offline_dt.study.reference_search as reference_search
from offline_dt.study import pipeline, search_report, tuning
from offline_dt.study.budget import run_budget
from offline_dt.study.presets import PRESETS
from offline_dt.training import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
pytest.importorskip("optuna")
pytest.importorskip("d3rlpy")

TINY = dataclasses.replace(
    PRESETS["smoke"], name="tiny-search", data_dir=None, method_candidates={},
    train={"steps": 20, "batch_size": 8, "context_length": 5, "embed_dim": 16, "n_layer": 1,
           "n_head": 1, "dropout": 0.0, "warmup_steps": 5, "learning_rate": 1e-3,
           "max_timestep": 64, "eval_every": 10, "log_every": 5, "checkpoint_every": 10,
           "device": "cpu"},
    evaluate={"episodes": 2, "validation_episodes": 1},
    reference_steps={"iql": 8, "mlp-bc": 8, "pct-bc": 8}, seeds=(0,), hook_episodes=1)


@pytest.fixture
def tiny_reproduce(monkeypatch, tmp_path, box_hdf5):
    """``reproduce`` on the tiny preset, its expert level the conftest dataset."""
    monkeypatch.setitem(PRESETS, TINY.name, TINY)
    data = tmp_path / "d4rl"
    data.mkdir()
    expert = shutil.copy(box_hdf5, data / "pendulum-expert-v0.hdf5")

    def fake_generate(plan, timer):
        paths = {lv: Path(expert) for lv in plan.levels}
        return None, type("G", (), {"stage_seconds": {}})(), paths, {lv: {} for lv in paths}

    monkeypatch.setattr(pipeline, "_generate_stage", fake_generate)
    # Seconds saved on 2 loaded cores: one learning-curve point per trial, and no Optuna plots
    # (tests/offline_dt/test_search.py draws them).
    monkeypatch.setattr(tuning, "CURVE_POINTS", 1)
    monkeypatch.setattr(search_report, "_plots", lambda study, out: [])

    def run(**kw):
        return pipeline.reproduce(preset=TINY.name, root=tmp_path / "root", device="cpu",
                                  levels=["expert"], progress=False, workers=1, **kw)

    return run, tmp_path / "root"


def _study_trials(study_dir: Path) -> pd.DataFrame:
    return pd.read_csv(study_dir / "trials.csv")


def test_search_adds_tuned_rows_at_the_best_parameters_and_reuses_the_study(
        tiny_reproduce, monkeypatch):
    run, root = tiny_reproduce
    splits: list[tuple[str, str]] = []
    for module in (evaluate, curves, reference_search):
        real = module.evaluate_policy

        def spy(*args, _real=real, _name=module.__name__, **kw):
            splits.append((_name, kw.get("split", "test")))
            return _real(*args, **kw)

        monkeypatch.setattr(module, "evaluate_policy", spy)
    table = run(methods=["dt", "iql"], search=2)
    rows = set(table["method"])
    assert {"dt", "dt (tuned)", "iql", "iql (tuned)"} <= rows
    # the reference row's search rolled out validation episodes only
    assert {s for m, s in splits if m.endswith("reference_search")} == {"validation"}

    runs = root / "runs" / TINY.name / "Pendulum-v1" / "pendulum-expert-v0"
    for method in ("dt", "iql"):
        study = runs / f"{method}-tuned" / "search"
        trials = _study_trials(study)
        assert len(trials) == 2 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
        best = json.loads((study / "best.json").read_text())
        assert best["best_value"] == pytest.approx(trials["value"].max())
        # every trial trains with the search seed, none of the rows' seeds
        search_cfg = json.loads((study / "search.json").read_text())["search_config"]
        base = search_cfg.get("train") or search_cfg["reference"]
        assert base["seed"] == 1000 and base["seed"] not in TINY.seeds
        # the tuned row's seeds train at the study's best parameters
        tuned = runs / f"{method}-tuned" / "seed0"
        params = best["best_params"]
        if method == "dt":
            assert set(params) == {"learning_rate", "embed_dim", "n_layer", "context_length",
                                   "dropout"}
            cfg = load_checkpoint(tuned).train_config
            for name, value in params.items():
                assert getattr(cfg, name) == pytest.approx(value), name
            assert cfg.steps == TINY.train["steps"] and cfg.seed == 0
        else:
            assert set(params) == {"learning_rate", "expectile", "weight_temp"}
            saved = json.loads((tuned / "config.json").read_text())
            for name, value in params.items():
                assert saved["reference_config"][name] == pytest.approx(value), name
            algo = saved["algorithm"]
            assert algo["expectile"] == pytest.approx(params["expectile"])
            assert algo["weight_temp"] == pytest.approx(params["weight_temp"])
            assert algo["actor_learning_rate"] == pytest.approx(params["learning_rate"])
            assert saved["reference_config"]["steps"] == TINY.reference_steps["iql"]
        ev = json.loads((tuned / "eval.json").read_text())
        assert ev["targets"][0]["episodes"] == TINY.evaluate["episodes"]  # test episodes

    # each trial reported its learning-curve point to the pruner (one point: CURVE_POINTS 1)
    optuna = pytest.importorskip("optuna")
    for method, step in (("dt", TINY.train["steps"]), ("iql", TINY.reference_steps["iql"])):
        study = optuna.load_study(
            study_name=f"Pendulum-v1/pendulum-expert-v0/{method}",
            storage=f"sqlite:///{runs / f'{method}-tuned' / 'search' / 'study.db'}")
        assert [list(t.intermediate_values) for t in study.trials] == [[step], [step]]

    report = root / "reports" / "Pendulum-v1" / TINY.name
    params_csv = pd.read_csv(report / "parameters.csv")
    assert list(params_csv["method"]) == ["iql (tuned)", "dt (tuned)"]  # table order
    md = (report / "results.md").read_text()
    assert "Chosen parameters per dataset" in md
    assert "`dt (tuned)` searched context_length one of 5, 10, 20, dropout one of 0.0" in md
    assert "learning_rate log-uniform [3e-05, 0.003], weight_temp one of 0.0, 1.0, 3.0" in md

    # Rerun: the studies are complete, no trial is trained, every run is reused.
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*-tuned/search/trials/*/*")
              if p.is_file()}
    again = run(methods=["dt", "iql"], search=2)
    for method in ("dt", "iql"):
        assert len(_study_trials(runs / f"{method}-tuned" / "search")) == 2
    assert before == {p: p.stat().st_mtime_ns for p in runs.glob(
        "*-tuned/search/trials/*/*") if p.is_file()}
    timings = json.loads((report / "timings.json").read_text())
    assert timings["search"] == 2 and timings["searched"] == ["dt", "iql"]
    assert all(r["reused"] for r in timings["runs"])
    pd.testing.assert_frame_equal(again, table)


def test_an_overwritten_level_loses_its_studies(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(tuning, "run_study_of", lambda cfg: seen.append(
        (cfg.resolved_study_dir(), cfg.resolved_study_dir().exists())) or type(
        "R", (), {"best_value": 0.0, "best_params": {"learning_rate": 1e-3}, "complete": 1,
                  "pruned": 0})())
    paths = {lv: tmp_path / f"pendulum-{lv}-v0.hdf5" for lv in ("random", "expert")}
    for lv in paths:
        old = tuning.study_dir(tmp_path, "smoke", "Pendulum-v1", paths[lv], "dt")
        old.mkdir(parents=True)
        (old / "study.db").write_text("trials of the old data")
    best = tuning.search_stage(PRESETS["smoke"], "Pendulum-v1", tmp_path, "cpu", paths,
                               ["dt"], 2, 1, fresh_levels=["random"])
    assert best == {("random", "dt"): {"learning_rate": 1e-3},
                    ("expert", "dt"): {"learning_rate": 1e-3}}
    root = tmp_path / "runs" / "smoke" / "Pendulum-v1"
    assert seen == [(root / "pendulum-random-v0" / "dt-tuned" / "search", False),
                    (root / "pendulum-expert-v0" / "dt-tuned" / "search", True)]


def test_every_row_states_its_updates_and_transitions(tiny_reproduce):
    run, root = tiny_reproduce
    table = run(methods=["dt", "iql", "random"]).set_index("method")
    steps, batch, k = (TINY.train[n] for n in ("steps", "batch_size", "context_length"))
    assert table.loc["dt", "updates"] == steps
    assert table.loc["dt", "transitions"] == batch * k * steps  # 20 * 8 * 5 = 800
    assert table.loc["iql", "updates"] == TINY.reference_steps["iql"]
    assert table.loc["iql", "transitions"] == 256 * TINY.reference_steps["iql"]  # d3rlpy's
    assert table[["updates", "transitions"]].loc[["random", "data"]].isna().all().all()
    md = (root / "reports" / "Pendulum-v1" / TINY.name / "results.md").read_text()
    assert "| 20 / 800 " in md and "| 8 / 2,048 " in md
    assert "gradient updates / transitions seen" in md


def test_run_budget_by_hand():
    train = {"train_config": {"steps": 2500, "batch_size": 64, "context_length": 20,
                              "attention": "window", "segment_length": None}}
    assert run_budget(train) == {"updates": 2500.0, "transitions_per_update": 1280.0,
                                 "transitions": 3_200_000.0}
    band = {"train_config": {**train["train_config"], "attention": "band", "batch_size": 8,
                             "segment_length": 200}}
    assert run_budget(band)["transitions"] == 2500 * 8 * 200
    iql = {"reference_config": {"steps": 10_000}, "algorithm": {"batch_size": 256}}
    assert run_budget(iql)["transitions"] == 2_560_000
    for config in ({"method": "random"}, {"reference_config": {"steps": 1}, "algorithm": {}}):
        assert all(v != v for v in run_budget(config).values())  # NaN: nothing to count


def test_search_methods_are_checked_before_any_work(tmp_path):
    kw = dict(preset="smoke", root=tmp_path, progress=False, levels=["expert"])
    with pytest.raises(ValueError, match="cannot be searched"):
        pipeline.reproduce(methods=["dt", "random"], search=2, search_methods=["random"], **kw)
    with pytest.raises(ValueError, match="not among the rows run"):
        pipeline.reproduce(methods=["dt"], search=2, search_methods=["qt"], **kw)
    with pytest.raises(ValueError, match="search must be >= 0"):
        pipeline.reproduce(methods=["dt"], search=-1, **kw)
    assert not (tmp_path / "smoke").exists()  # refused before generating anything


def test_the_cli_passes_search_and_search_methods():
    from offline_dt.cli import parse

    cfg = parse(["reproduce", "--search", "16", "--search-methods", "qt", "iql"]).config
    assert (cfg.search, cfg.search_methods) == (16, ["qt", "iql"])
    assert parse(["reproduce"]).config.search == 0
    with pytest.raises(SystemExit):
        parse(["reproduce", "--search-methods", "random"])
    ref = parse(["reference", "--dataset", "d", "--method", "iql", "--expectile", "0.8",
                 "--weight-temp", "10", "--learning-rate", "1e-4"]).config
    assert ref.hyperparameters() == {"actor_learning_rate": 1e-4, "critic_learning_rate": 1e-4,
                                     "expectile": 0.8, "weight_temp": 10.0}
