"""``offline-dt search`` (offline_dt.study.search): Optuna trials as ordinary runs, scored on
validation episodes only, resumable after a kill, and two workers on one SQLite study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_TRAIN

import offline_dt.evaluation.curves as curves
import offline_dt.evaluation.evaluate as evaluate
from offline_dt.cli import parse
from offline_dt.methods.options import Choice, Range
from offline_dt.study.search import SearchConfig, load_study, search, search_space, trial_key
from offline_dt.training import TrainConfig, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

optuna = pytest.importorskip("optuna")


def _cfg(box_hdf5: Path, study: Path, **kw) -> SearchConfig:
    train = TrainConfig(dataset=str(box_hdf5), env_id="Pendulum-v1",
                        **{**TINY_TRAIN, "eval_episodes": 1, **kw.pop("train", {})})
    return SearchConfig(train=train, study_dir=study, validation_episodes=1,
                        **{"trials": 3, "params": ["learning_rate", "embed_dim"],
                           "curve_points": 2, **kw})


def test_a_search_trains_trials_scored_on_validation_episodes_only(box_hdf5, tmp_path,
                                                                   monkeypatch):
    splits: list[str] = []
    for module in (evaluate, curves):
        real = module.evaluate_policy

        def spy(*args, _real=real, **kw):
            splits.append(kw.get("split", "test"))
            return _real(*args, **kw)

        monkeypatch.setattr(module, "evaluate_policy", spy)
    cfg = _cfg(box_hdf5, tmp_path / "study")
    res = search(cfg)
    assert res.complete + res.pruned == 3 and res.failed == 0
    assert splits and set(splits) == {"validation"}  # curve points and scores; no test episode
    table = pd.read_csv(tmp_path / "study" / "trials.csv")
    assert len(table) == 3 and {"learning_rate", "embed_dim", "value", "run_dir"} <= set(table)
    best = json.loads((tmp_path / "study" / "best.json").read_text())
    assert best["best_value"] == pytest.approx(table["value"].max())
    assert set(best["best_params"]) == {"learning_rate", "embed_dim"}
    for _, row in table[table["state"] == "COMPLETE"].iterrows():
        ckpt = load_checkpoint(row["run_dir"])  # every trial is an ordinary run directory
        assert ckpt.train_config.embed_dim == row["embed_dim"]
        assert ckpt.train_config.learning_rate == pytest.approx(row["learning_rate"])
    assert (tmp_path / "study" / "history.png").is_file()
    # run again: the study continues (already complete: nothing more is trained)
    again = search(cfg)
    assert (again.complete, again.pruned) == (res.complete, res.pruned)


def test_options_are_searched_through_the_methods_options(box_hdf5, tmp_path):
    space = search_space("qt")
    assert isinstance(space["options.expectile"], Range)
    assert isinstance(space["options.beta"], Choice) and "learning_rate" in space
    cfg = _cfg(box_hdf5, tmp_path / "qt", trials=1, params=["options.expectile"],
               curve_points=0, train={"method": "qt"})
    res = search(cfg)
    ckpt = load_checkpoint(res.best_run_dir)
    assert ckpt.train_config.method_options.expectile == pytest.approx(
        res.best_params["options.expectile"])
    assert 0.5 <= res.best_params["options.expectile"] <= 0.95


@pytest.mark.parametrize(("kw", "message"), [
    ({"params": ["learning_rate", "width"]}, "params: dt can tune"),
    ({"trials": 0}, "trials must be >= 1"),
    ({"curve_points": 500}, "curve_points must be in"),
])
def test_bad_search_configs_are_refused(box_hdf5, tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        search(_cfg(box_hdf5, tmp_path / "bad", **kw))
    assert not (tmp_path / "bad").exists()


def test_the_cli_mirrors_the_config_and_lists_the_space(capsys):
    cfg = parse(["search", "--dataset", "d.hdf5", "--method", "qt", "--qt.beta", "3",
                 "--trials", "5", "--params", "learning_rate", "options.eta",
                 "--workers", "2", "--study-dir", "s"]).config
    assert (cfg.trials, cfg.workers, cfg.params) == (5, 2, ["learning_rate", "options.eta"])
    assert cfg.train.method == "qt" and cfg.train.method_options.beta == 3.0
    assert cfg.resolved_storage() == f"sqlite:///{Path('s/study.db').resolve()}"
    from offline_dt.cli import main

    assert main(["search", "--dataset", "d", "--method", "qt", "--list-params"]) == 0
    assert "options.expectile: Range(low=0.5, high=0.95" in capsys.readouterr().out


_SCRIPT = """
import sys, logging
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from offline_dt.study.search import SearchConfig, search
from offline_dt.training import TrainConfig
train = TrainConfig(dataset=sys.argv[1], env_id="Pendulum-v1", steps=400, batch_size=8,
                    context_length=5, embed_dim=16, n_layer=1, warmup_steps=5, max_timestep=64,
                    checkpoint_every=20, log_every=20, progress=False, device="cpu",
                    eval_episodes=1)
search(SearchConfig(train=train, study_dir=Path(sys.argv[2]), trials=1,
                    params=["learning_rate"], validation_episodes=1, curve_points=0,
                    heartbeat=1, workers=int(sys.argv[3])))
"""


def _start(box_hdf5: Path, study: Path, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(box_hdf5), str(study),
                             str(workers)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_killed_search_resumes_its_trial_from_the_checkpoint(box_hdf5, tmp_path):
    study = tmp_path / "study"
    proc = _start(box_hdf5, study)
    deadline = time.time() + 120
    while not list(study.glob("trials/*/checkpoint.pt")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-trial: the trial stays RUNNING in the study
    proc.wait()
    (killed_dir,) = (p for p in study.glob("trials/*") if p.is_dir())
    step_at_kill = json.loads((killed_dir / "config.json").read_text())["train_config"]["steps"]
    time.sleep(2.5)  # longer than the grace period (2 heartbeats): the trial is stale
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(box_hdf5), str(study), "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = SearchConfig(train=TrainConfig(dataset=str(box_hdf5)), study_dir=study)
    trials = load_study(cfg).trials
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "FAIL"], states
    done = next(t for t in trials if t.state.name == "COMPLETE")
    assert Path(done.user_attrs["run_dir"]) == killed_dir  # same parameters, same directory
    assert done.params == next(t for t in trials if t.state.name == "FAIL").params
    assert killed_dir.name == trial_key(done.params) and step_at_kill == 400
    assert "resum" in (out.stdout + out.stderr).lower()  # the loop resumed the checkpoint
    assert load_checkpoint(killed_dir).step == 400


def test_two_workers_share_one_sqlite_study(box_hdf5, tmp_path):
    study = tmp_path / "two"
    script = _SCRIPT.replace("trials=1", "trials=2").replace("steps=400", "steps=20")
    out = subprocess.run([sys.executable, "-c", script, str(box_hdf5), str(study), "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    trials = load_study(SearchConfig(train=TrainConfig(dataset=str(box_hdf5)),
                                     study_dir=study)).trials
    states = [t.state.name for t in trials]
    # each worker stops once the study holds 2 finished trials; one that started its next
    # trial before the other's finished completes it (Optuna's MaxTrialsCallback)
    assert set(states) == {"COMPLETE"} and 2 <= len(states) <= 3, states
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(states)
