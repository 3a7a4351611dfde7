"""Reuse rules (``offline_dt.study.reuse``), the job list and the method choice
(``offline_dt.study.jobs``) and the stages of ``offline_dt.study.pipeline`` (end to end:
tests/test_pipeline_smoke.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offline_dt.data.d4rl import LEVELS
from offline_dt.envs.seeds import SEED_RULES
from offline_dt.evaluation.evaluate import EvalConfig
from offline_dt.evaluation.results import build_eval_payload
from offline_dt.study import d3rlpy_io
from offline_dt.study.behaviour import BEHAVIOUR_LEVELS, behaviour_policy
from offline_dt.study.d3rlpy_io import INSTALL_HINT, MissingDependencyError
from offline_dt.study.jobs import all_methods, reproduce_jobs, reproduce_methods
from offline_dt.study.reference import REFERENCE_METHODS
from offline_dt.study.reuse import EPISODE_SEEDS, VALIDATION_EPISODE_SEEDS, _same_eval_config
from offline_dt.study.runs import REPLAY_LEVELS
from offline_dt.training.configs import to_jsonable


def _saved(cfg: EvalConfig) -> dict:
    return json.loads(json.dumps(to_jsonable(cfg)))


def test_eval_config_reuse_tolerates_fields_added_at_their_default():
    cfg = EvalConfig(checkpoint="run", episodes=200, seed=1)
    saved = _saved(cfg)
    assert _same_eval_config(saved, cfg)
    older = {k: v for k, v in saved.items() if k != "kv_cache"}  # written before the field
    assert _same_eval_config(older, cfg)
    assert not _same_eval_config(older, EvalConfig(checkpoint="run", episodes=200, seed=1,
                                                   kv_cache=True))
    assert not _same_eval_config({**saved, "episodes": 50}, cfg)
    assert not _same_eval_config(None, cfg)


def test_no_behaviour_job_on_the_replay_levels():
    jobs = reproduce_jobs(LEVELS, [0, 1])
    assert len(jobs) == len(set(jobs))
    by_method = {m: {(lv, s) for lv, s, mm in jobs if mm == m} for m in ("dt", "bc", "random")}
    everywhere = {(lv, s) for lv in LEVELS for s in (0, 1)}
    assert all(runs == everywhere for runs in by_method.values())
    behaviour = {(lv, s) for lv, s, m in jobs if m == "behaviour"}
    # One policy (or medium-expert's fixed mixture) wrote these; the replay levels were
    # written by a sequence of policies during SAC training.
    assert behaviour == {(lv, s) for lv in ("random", "medium", "expert", "medium-expert")
                         for s in (0, 1)}
    assert set(BEHAVIOUR_LEVELS) | set(REPLAY_LEVELS) == set(LEVELS)


@pytest.mark.parametrize("level", ["medium-replay", "full-replay"])
def test_behaviour_policy_refuses_a_replay_level(level):
    with pytest.raises(ValueError, match="no behaviour policy"):
        behaviour_policy(level, {}, "Pendulum-v1", "cpu", 0)


def test_reuse_requires_the_episode_seeds_evaluate_writes_today():
    # An eval.json is reused only when its episode_seeds is EPISODE_SEEDS (evaluations from
    # before the test episodes moved to 10**12 + ... are run again).
    ev = build_eval_payload("dt", "Pendulum-v1", [{"episodes": 1, "seed": 0, "mean": 0.0,
                                                   "std": 0.0, "ci95": 0.0, "min": 0.0,
                                                   "max": 0.0, "normalized_score": None,
                                                   "ref_min_score": None,
                                                   "ref_max_score": None}])
    assert ev["episode_seeds"] == EPISODE_SEEDS
    assert EPISODE_SEEDS != "seed * 100000 + i"


def test_methods_choose_the_jobs_and_order_them_longest_first():
    jobs = reproduce_jobs(["random", "expert"], [0], ["random", "iql", "dt", "behaviour"])
    assert jobs == [("random", 0, "dt"), ("random", 0, "iql"), ("expert", 0, "dt"),
                    ("expert", 0, "iql"), ("random", 0, "random"), ("random", 0, "behaviour"),
                    ("expert", 0, "random"), ("expert", 0, "behaviour")]
    everything = {m for _, _, m in reproduce_jobs(["expert"], [0])}
    # tt, mgdt and gato run only when named (Method.in_reproduce False)
    assert everything == set(all_methods()) - {"tt", "mgdt", "gato"}
    assert {"dt", "bc", "iql", "mlp-bc", "pct-bc", "random", "behaviour"} <= everything
    assert {m for _, _, m in reproduce_jobs(["expert"], [0], ["tt"])} == {"tt"}
    assert "tt" not in reproduce_methods(None, "Pendulum-v1")
    assert reproduce_methods(["tt"], "Pendulum-v1") == ["tt"]


def test_reproduce_methods_checks_names_d3rlpy_and_the_action_space(monkeypatch):
    with pytest.raises(ValueError, match="methods: unknown \\['cql'\\]"):
        reproduce_methods(["dt", "cql"], "Pendulum-v1")
    assert reproduce_methods(["bc", "dt", "bc"], "Pendulum-v1") == ["bc", "dt"]
    with pytest.raises(ValueError, match="'iql' needs a Box action space; CartPole-v1"):
        reproduce_methods(["iql"], "CartPole-v1")
    assert "iql" not in reproduce_methods(None, "CartPole-v1")

    def missing():
        raise MissingDependencyError(f"install it with: {INSTALL_HINT}")

    monkeypatch.setattr(d3rlpy_io, "import_d3rlpy", missing)
    # Asked for by name: refused with the install command; by default: left out.
    with pytest.raises(MissingDependencyError, match="pip install --no-deps d3rlpy"):
        reproduce_methods(["dt", "mlp-bc"], "Pendulum-v1")
    assert reproduce_methods(None, "Pendulum-v1") == [
        m for m in all_methods() if m not in (*REFERENCE_METHODS, "tt", "mgdt", "gato")]
    assert reproduce_methods(["dt", "random"], "Pendulum-v1") == ["dt", "random"]


def test_checkpoint_evals_are_reused_only_with_validation_chosen_targets():
    assert EPISODE_SEEDS == SEED_RULES["test"]
    assert VALIDATION_EPISODE_SEEDS == SEED_RULES["validation"] != EPISODE_SEEDS


def test_reproduce_methods_flag():
    from offline_dt.cli import parse

    assert parse(["reproduce"]).config.methods is None
    assert parse(["reproduce", "--methods", "dt", "iql", "pct-bc"]).config.methods == [
        "dt", "iql", "pct-bc"]
    with pytest.raises(SystemExit):
        parse(["reproduce", "--methods", "cql"])


def test_overwrite_regenerates_the_levels_and_retrains_their_runs(monkeypatch, tmp_path):
    """``reproduce(overwrite=["random"])`` asks generate to regenerate random only and marks
    the jobs on random fresh; a fresh job forgets its run's config.json and eval.json (so
    nothing of it is reused), a baseline job keeps them."""
    from offline_dt.study import jobs, pipeline

    seen: dict = {}

    def fake_generate(plan, timer):
        seen["overwrite"] = list(plan.overwrite)
        paths = {lv: tmp_path / f"pendulum-{lv}-v0.hdf5" for lv in plan.levels}
        return None, type("G", (), {"stage_seconds": {}})(), paths, {lv: {} for lv in paths}

    monkeypatch.setattr(pipeline, "_generate_stage", fake_generate)
    monkeypatch.setattr(pipeline, "_run_jobs",
                        lambda specs, *a: seen.setdefault("specs", list(specs)))
    monkeypatch.setattr(pipeline, "report", lambda *a, **k: None)
    pipeline.reproduce(preset="smoke", root=tmp_path, levels=["random", "expert"],
                       methods=["dt", "random"], overwrite=["random"], progress=False)
    assert seen["overwrite"] == ["random"]
    assert {(s.level, s.method) for s in seen["specs"] if s.fresh} == {("random", "dt"),
                                                                       ("random", "random")}
    with pytest.raises(ValueError, match="overwrite"):
        pipeline.reproduce(preset="smoke", root=tmp_path, levels=["expert"],
                           overwrite=["random"], progress=False)

    calls = []
    monkeypatch.setattr(jobs, "_train_job", lambda spec, p, run_dir: calls.append(
        sorted(x.name for x in run_dir.iterdir())) or {"eval": {}})
    monkeypatch.setattr(jobs, "_baseline_job", lambda spec, p, run_dir: calls.append(
        sorted(x.name for x in run_dir.iterdir())) or ({}, 0.0, True))
    for spec in seen["specs"]:
        if spec.level != "random":
            continue
        run_dir = (tmp_path / "runs" / "smoke" / spec.env_id / Path(spec.dataset).stem
                   / spec.method / f"seed{spec.seed}")
        run_dir.mkdir(parents=True)
        for name in ("config.json", "eval.json", "checkpoint.pt"):
            (run_dir / name).write_text("{}")
        jobs.run_job(spec)
    assert calls == [["checkpoint.pt"], ["checkpoint.pt", "config.json", "eval.json"]]


def test_method_candidates_are_trained_beside_the_run_and_compete_in_its_evaluation(
        monkeypatch, tmp_path, box_hdf5, tiny_config):
    """A preset's ``method_candidates`` train as runs of their own under
    ``<run>/candidates/<name>`` with the alternative options, and the run's evaluation gets
    their checkpoints; nothing is retrained or re-evaluated on a second call, and a candidate
    trained again makes the run's evaluation run again."""
    from offline_dt.study import reuse
    from offline_dt.study.jobs import candidate_configs
    from offline_dt.study.presets import PRESETS
    from offline_dt.study.reuse import train_and_evaluate

    tcfg = tiny_config(box_hdf5, method="qt", run_dir=tmp_path / "qt" / "seed0")
    cands = candidate_configs(tcfg, PRESETS["paper"])
    assert [Path(c.run_dir) for c in cands] == [tmp_path / "qt/seed0/candidates/eta0-beta0"]
    assert (cands[0].method_options.eta, cands[0].method_options.beta) == (0.0, 0.0)
    assert cands[0].method_options.expectile == tcfg.method_options.expectile  # the rest kept
    assert candidate_configs(tiny_config(box_hdf5, method="dt"), PRESETS["paper"]) == []

    asked: list[EvalConfig] = []

    def fake_evaluate(ecfg):
        asked.append(ecfg)
        payload = {"config": _saved(ecfg), "episode_seeds": EPISODE_SEEDS,
                   "selection": {"validation_episode_seeds": VALIDATION_EPISODE_SEEDS}}
        (Path(ecfg.checkpoint) / "eval.json").write_text(json.dumps(payload))
        return payload

    monkeypatch.setattr(reuse, "evaluate_checkpoint", fake_evaluate)
    ecfg = EvalConfig(checkpoint=tcfg.run_dir, episodes=2, device="cpu")
    _, secs = train_and_evaluate(tcfg, ecfg, None, cands)
    assert secs["train"] > 0 and len(asked) == 1
    assert asked[0].candidate_checkpoints == [Path(cands[0].run_dir)]
    saved = json.loads((Path(cands[0].run_dir) / "config.json").read_text())
    assert saved["train_config"]["method_options"]["eta"] == 0.0
    _, secs = train_and_evaluate(tcfg, ecfg, None, cands)
    assert secs == {"train": 0.0, "evaluate": 0.0} and len(asked) == 1
    (Path(cands[0].run_dir) / "config.json").unlink()  # the candidate must train again
    _, secs = train_and_evaluate(tcfg, ecfg, None, cands)
    assert secs["train"] > 0 and len(asked) == 2


def test_kept_checkpoints_of_the_run_and_its_candidates_compete_in_its_evaluation(
        monkeypatch, tmp_path, box_hdf5, tiny_config):
    from offline_dt.study import reuse
    from offline_dt.study.jobs import candidate_configs
    from offline_dt.study.presets import PRESETS
    from offline_dt.study.reuse import train_and_evaluate

    tcfg = tiny_config(box_hdf5, method="qt", run_dir=tmp_path / "qt" / "seed0", steps=8,
                       checkpoint_every=4, keep_checkpoints=True)
    cands = candidate_configs(tcfg, PRESETS["paper"])
    asked: list[EvalConfig] = []
    monkeypatch.setattr(reuse, "evaluate_checkpoint", lambda e: asked.append(e) or {})
    train_and_evaluate(tcfg, EvalConfig(checkpoint=tcfg.run_dir, device="cpu"), None, cands)
    run, alt = Path(tcfg.run_dir), Path(cands[0].run_dir)
    assert asked[0].candidate_checkpoints == [
        alt, run / "checkpoints/step-0000004.pt", alt / "checkpoints/step-0000004.pt"]


def test_the_study_package_exports_its_public_names_from_their_owners():
    import importlib

    import offline_dt.study as study

    assert sorted(study.__all__) == sorted(study._OWNERS)
    for name in study.__all__:
        owner = importlib.import_module(f"offline_dt.study.{study._OWNERS[name]}")
        assert getattr(study, name) is getattr(owner, name), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        study.nothing  # noqa: B018
