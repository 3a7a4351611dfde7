"""The scripted recipes through ``generate``: PointMaze (waypoint planner + PD controller) and
MiniGrid FourRooms (BFS expert) write HDF5 and Minari datasets that load back, with their
levels and reference scores; the experts score far above random; ``dt`` trains on them."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from datagen.config import GenerateConfig
from datagen.generate import generate
from datagen.maze import PointMazeRecipe, cell_distances
from datagen.minigrid import BFSExpert, FourRoomsRecipe, goal_distances
from datagen.scripted import recipe_for, reference_returns
from offline_dt.cli import main
from offline_dt.data import load_dataset

POINTMAZE = "PointMaze_UMaze-v3"
FOURROOMS = "MiniGrid-FourRooms-v0"


def _config(root, env_id, **kw) -> GenerateConfig:
    return GenerateConfig(env_id=env_id, seed=0, random_steps=700, expert_steps=700,
                          medium_steps=700, ref_episodes=4, num_envs=2, out_dir=root / "d4rl",
                          minari_root=root / "minari", agents_dir=root / "agents", **kw)


@pytest.fixture(scope="module")
def maze(tmp_path_factory):
    root = tmp_path_factory.mktemp("maze")
    return root, generate(_config(root, POINTMAZE))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    return root, generate(_config(root, FOURROOMS))


def test_recipes_are_chosen_from_the_env_id():
    assert isinstance(recipe_for("PointMaze_Large-v3"), PointMazeRecipe)
    assert isinstance(recipe_for("gymnasium_robotics:PointMaze_Medium-v3"), PointMazeRecipe)
    assert isinstance(recipe_for(FOURROOMS), FourRoomsRecipe)
    assert recipe_for("Pendulum-v1") is None


def test_cell_distances_on_the_umaze_map():
    umaze = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1],
             [1, 1, 1, 1, 1]]
    d = cell_distances(umaze, (3, 1))  # bottom-left arm; the path goes round the U
    assert [d[3, 1], d[3, 2], d[3, 3], d[2, 3], d[1, 3], d[1, 2], d[1, 1]] == [0, 1, 2, 3, 4,
                                                                             5, 6]
    assert np.isinf(d[2, 1]) and np.isinf(d[0, 0])
    with pytest.raises(ValueError, match=r"goal cell \(2, 1\) is a wall"):
        cell_distances(umaze, (2, 1))


def test_bfs_expert_solves_empty_5x5_in_five_actions():
    # 3x3 room, agent at (1, 1) facing +x, goal at (3, 3): forward, forward, right, forward,
    # forward; MiniGrid's reward 1 - 0.9 * 5 / 100
    env = gym.make("MiniGrid-Empty-5x5-v0")
    obs, _ = env.reset(seed=0)
    assert goal_distances(env.unwrapped.grid)[1, 1, 0] == 5
    expert = BFSExpert(np.random.default_rng(0))
    expert.reset(env, obs)
    actions, ret, done = [], 0.0, False
    while not done:
        actions.append(expert.act(env, obs))
        obs, r, term, trunc, _ = env.step(actions[-1])
        ret += r
        done = term or trunc
    assert actions == [2, 2, 1, 2, 2] and term
    assert ret == pytest.approx(1 - 0.9 * 5 / 100)


def test_pointmaze_levels_load_by_path_and_id_with_reference_scores(maze):
    root, res = maze
    assert list(res.summaries) == ["random", "expert"]
    for level in ("random", "expert"):
        h5 = load_dataset(res.paths[level]["hdf5"])
        by_id = load_dataset(f"pointmaze-umaze/{level}-v0", root / "minari")
        by_dir = load_dataset(res.paths[level]["minari"])
        assert h5.checksum() == by_id.checksum() == by_dir.checksum()
        assert sorted(h5.observations) == ["achieved_goal", "desired_goal", "observation"]
        assert h5.num_transitions == 700 and h5.metadata["level"] == level
        assert by_id.metadata["ref_min_score"] == pytest.approx(res.ref_min_score)
        assert by_id.metadata["ref_max_score"] == pytest.approx(res.ref_max_score)
        # two streams of 350 steps, each cut at max_episode_steps (300) without a reset
        assert h5.episode_lengths.tolist() == [300, 50, 300, 50]
        assert h5.timeouts[h5.episode_starts[1:] - 1].all() and not h5.terminals.any()
    assert json.loads(h5.metadata["recipe_settings"])["kp"] == 10.0


def test_pointmaze_minari_dataset_passes_minaris_own_loading(maze):
    import minari

    root, res = maze
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
    try:
        theirs = minari.load_dataset("pointmaze-umaze/expert-v0")
        env = theirs.recover_environment()
        assert minari.get_normalized_score(theirs, np.array([res.ref_max_score])) \
            == pytest.approx(1.0)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    assert theirs.total_steps == 700 and env.spec.id == POINTMAZE
    env.close()


def test_pointmaze_planner_reaches_the_goal_far_above_random(maze):
    _, res = maze
    recipe = PointMazeRecipe()
    planner = reference_returns(recipe, POINTMAZE, True, 8, seed=5)
    random = reference_returns(recipe, POINTMAZE, False, 8, seed=5)
    # return: steps within 0.45 of the goal out of 300; the planner arrives and stays
    assert (planner > 0).sum() >= 7 and planner.mean() > 150
    assert random.mean() < 60
    assert res.ref_max_score > 150 > 60 > res.ref_min_score


def test_fourrooms_levels_images_and_expert_far_above_random(grid):
    root, res = grid
    assert list(res.summaries) == ["random", "medium", "expert"]
    ds = load_dataset("minigrid-fourrooms/expert-v0", root / "minari")
    assert sorted(ds.observations) == ["direction", "image"]  # mission dropped
    assert ds.observations["image"].dtype == np.uint8
    assert ds.observations["image"].shape == (700, 7, 7, 3)
    assert load_dataset(res.paths["expert"]["hdf5"]).checksum() == ds.checksum()
    recipe = FourRoomsRecipe()
    expert = reference_returns(recipe, FOURROOMS, True, 10, seed=5)
    assert (expert > 0).all() and expert.mean() > 0.6  # eps 0: every episode solved
    assert reference_returns(recipe, FOURROOMS, False, 10, seed=5).mean() < 0.2
    means = {lv: s["return_mean"] for lv, s in res.summaries.items()}
    assert means["random"] < means["medium"] < means["expert"]


def test_regenerate_reuses_and_unknown_level_is_refused(grid, maze, tmp_path):
    again = generate(_config(grid[0], FOURROOMS))
    assert all(s["reused"] for s in again.summaries.values())
    # a module-qualified id is the same env: stored plain, so the datasets are reused
    again = generate(_config(maze[0], f"gymnasium_robotics:{POINTMAZE}"))
    assert again.env_id == POINTMAZE and all(s["reused"] for s in again.summaries.values())
    with pytest.raises(ValueError, match=r"recipe \(pointmaze-waypoint\) builds "
                                         r"\['random', 'expert'\], not \['medium'\]"):
        generate(_config(tmp_path, POINTMAZE, levels=["medium"]))


TINY = ["--steps", "16", "--batch-size", "4", "--context-length", "4", "--embed-dim", "16",
        "--n-layer", "1", "--device", "cpu", "--log-every", "8", "--checkpoint-every", "16"]


@pytest.mark.parametrize("which", ["maze", "grid"])
def test_dt_trains_and_evaluates_on_a_generated_dataset(which, request, tmp_path):
    root, res = request.getfixturevalue(which)
    run = tmp_path / "run"
    main(["train", "--method", "dt", "--dataset", str(res.paths["expert"]["hdf5"]),
          "--run-dir", str(run), *TINY])
    layout = json.loads(torch.load(run / "checkpoint.pt", weights_only=False)
                        ["model_config"])["obs_layout"]
    assert {leaf["kind"] for leaf in layout} == ({"vector"} if which == "maze"
                                                 else {"image", "discrete"})
    main(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "1",
          "--target-returns", "1", "--device", "cpu"])
    assert (run / "eval.json").is_file()
