"""benchmarks/goal_pages.py: the PointMaze and MiniGrid result pages' presets, and each page's
``--tiny`` run end to end (slow): every row of the page, scored on the same test episodes,
run-level intervals over the two seeds, the behaviour row above the random agent."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.goal_pages import PAGES, main
from offline_dt.study.presets import PRESETS

pytest.importorskip("d3rlpy")
pytest.importorskip("gymnasium_robotics")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_pages_presets_run_their_rows_with_three_seeds(page):
    real, tiny = PRESETS[PAGES[page].preset], PRESETS[f"{PAGES[page].preset}-tiny"]
    assert real.seeds == (0, 1, 2) and tiny.methods == real.methods
    assert real.evaluate["validation_episodes"] >= 30 and real.evaluate["episodes"] >= 100
    assert "CPU" in real.description  # the measured-based estimate is stated
    if page == "minigrid":  # Discrete actions: no iql, qt without its Q term
        assert "iql" not in real.methods
        assert real.method_train["qt"]["method_options"]["eta"] == 0.0
    else:
        assert {"iql", "mlp-bc", "pct-bc"} <= set(real.methods)


def _evals(root: Path) -> dict[tuple[str, str], dict]:
    return {(p.parent.parent.name, p.parent.name): json.loads(p.read_text())
            for p in root.glob("runs/*/*/*/*/seed*/eval.json")}


@pytest.mark.slow
@pytest.mark.parametrize("page", ["minigrid", "pointmaze"])
def test_a_tiny_page_end_to_end(page, tmp_path):
    out = tmp_path / "out"
    assert main(["--page", page, "--tiny", "--levels", "expert", "--root", str(tmp_path),
                 "--out", str(out), "--workers", "1"]) == 0
    table = pd.read_csv(out / f"{page}-tiny.csv")
    rows = set(PRESETS[f"{page}-tiny"].methods)
    assert set(table["method"]) == rows | {"data"} and table["dataset"].nunique() == 1
    trained = table[table["method"].isin(rows - {"random", "behaviour"})]
    assert trained["run_ci95_low"].notna().all()  # two seeds: a run-level interval
    evals = _evals(tmp_path)
    assert {m for m, _ in evals} == rows and len(evals) == 2 * len(rows)
    for seed in ("seed0", "seed1"):  # every row on the same test episodes of its seed
        seeds = {json.dumps(ev["targets"][0]["episode_seeds"])
                 for (m, s), ev in evals.items() if s == seed and "targets" in ev}
        assert len(seeds) == 1
    by = table.set_index("method")["mean_return"]
    assert by["behaviour"] > by["random"]  # the scripted expert, through the mirror envs
    md = (out / f"{page}-tiny.md").read_text()
    assert (out / f"{page}-tiny" / f"performance_profile_{PAGES[page].envs[0]}.png").is_file()
    assert f"preset `{page}-tiny`" in md and all(f"| {m}" in md or f" {m} " in md
                                                 for m in rows)


def test_reproduce_defaults_to_a_recipes_levels_and_refuses_others(tmp_path):
    from offline_dt.study.pipeline import plan

    def levels(env: str, chosen=None) -> list[str]:
        return plan(env, "smoke", tmp_path, "cpu", chosen, None, 1, ["random"], ()).levels

    assert levels("PointMaze_UMaze-v3") == ["random", "expert"]
    assert levels("MiniGrid-FourRooms-v0") == ["random", "medium", "expert"]
    assert len(levels("Pendulum-v1")) == 6  # the SB3 agent's six
    with pytest.raises(ValueError, match=r"levels: unknown \['medium'\]; recipe "
                                         r"pointmaze-waypoint of PointMaze_UMaze-v3 builds"):
        levels("PointMaze_UMaze-v3", ["medium"])


def test_the_behaviour_row_of_a_recipe_level_is_its_scripted_policy():
    from datagen.scripted_policy import MirroredScripted
    from offline_dt.study.behaviour import behaviour_policy

    meta = {"expert": {"recipe": "minigrid-bfs", "dataset_id": "minigrid-fourrooms/expert-v0"}}
    policy, desc = behaviour_policy("expert", meta, "MiniGrid-FourRooms-v0", "cpu", 3)
    assert isinstance(policy, MirroredScripted) and (policy.level, policy.seed) == ("expert", 3)
    assert desc["behaviour"] == "bfs(eps=0.1)" and not policy.expert  # noisy, as it wrote
    with pytest.raises(ValueError, match="metadata names recipe 'minigrid-bfs', env "
                                         "PointMaze_UMaze-v3 has pointmaze-waypoint"):
        behaviour_policy("expert", meta, "PointMaze_UMaze-v3", "cpu", 0)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_run_of_the_real_pages_builds_its_config(page, tmp_path):
    """The presets' overrides name real fields (a typo would surface hours into a page)."""
    from datagen.config import GenerateConfig
    from offline_dt.study.jobs import preset_reference_config, preset_train_config
    from offline_dt.study.pipeline import job_specs, plan
    from offline_dt.study.presets import apply_overrides
    from offline_dt.study.reference import REFERENCE_METHODS

    spec, env = PAGES[page], PAGES[page].envs[-1]
    pl = plan(env, spec.preset, tmp_path, "cpu", list(spec.levels), None, 2, None, ())
    assert pl.methods == list(PRESETS[spec.preset].methods) and pl.seeds == [0, 1, 2]
    jobs = job_specs(pl, {lv: tmp_path / f"{lv}.hdf5" for lv in spec.levels}, {})
    assert len(jobs) == len(spec.levels) * 3 * len(pl.methods)  # behaviour on every level
    apply_overrides(GenerateConfig(env_id=env), pl.preset.generate, "preset generate")
    for m in pl.methods:
        if m in REFERENCE_METHODS:
            preset_reference_config(pl.preset, "d.hdf5", env, m, 0, "cpu", tmp_path)
        elif m not in ("random", "behaviour"):
            cfg = preset_train_config(pl.preset, "d.hdf5", env, m, 0, "cpu", tmp_path)
            assert cfg.steps == (1000 if page == "minigrid" else 2500)
