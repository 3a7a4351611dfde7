"""The scripted recipes' policies through the rollout engine (``datagen.scripted_policy``):
mirror envs in step with the engine's, so the behaviour row of a PointMaze or MiniGrid level
is scored on the same test episodes as every other row."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.maze import PointMazeRecipe
from datagen.minigrid import FourRoomsRecipe
from datagen.scripted import reference_returns
from datagen.scripted_policy import MirrorDivergedError, MirroredScripted
from offline_dt.envs.rollout import run_episodes
from offline_dt.envs.seeds import episode_seed

FOURROOMS = "MiniGrid-FourRooms-v0"


@pytest.mark.parametrize("recipe, env_id, episodes", [
    (FourRoomsRecipe(), FOURROOMS, 6), (PointMazeRecipe(), "PointMaze_UMaze-v3", 2)])
def test_the_noise_free_expert_scores_its_reference_returns_through_the_engine(
        recipe, env_id, episodes):
    recipe.register()
    # reference_returns plays episode i from episode_seed(seed + 20_000, i), one env at a time
    seeds = [episode_seed(5 + 20_000, i) for i in range(episodes)]
    policy = MirroredScripted(recipe, env_id, "expert", expert=True)
    returns, lengths = run_episodes(env_id, policy, seeds, max_envs=4)  # waves of at most 4
    np.testing.assert_allclose(returns, reference_returns(recipe, env_id, True, episodes, 5))
    assert (lengths > 0).all()


def test_the_noisy_levels_draw_their_noise_per_episode_and_score_below_the_expert():
    recipe = FourRoomsRecipe()
    recipe.register()
    seeds = [episode_seed(7, i) for i in range(8)]

    def score(level: str, expert: bool = False, seed: int = 0) -> np.ndarray:
        return run_episodes(FOURROOMS, MirroredScripted(recipe, FOURROOMS, level, seed,
                                                        expert), seeds)[0]

    expert, medium = score("expert", expert=True), score("medium")
    np.testing.assert_array_equal(medium, score("medium"))  # seeded: the same again
    assert not np.array_equal(medium, score("medium", seed=1))  # another seed, other noise
    assert medium.mean() < expert.mean()


def test_a_mirror_that_sees_another_episode_raises():
    recipe = FourRoomsRecipe()
    recipe.register()
    policy = MirroredScripted(recipe, FOURROOMS, "expert")
    policy.reset(2, seeds=[1, 2])
    with pytest.raises(MirrorDivergedError, match="mirror env of episode 0"):
        policy.act(np.zeros((2, policy.layout[0].width + policy.layout[1].width), np.float32))
    with pytest.raises(ValueError, match="reset seeds"):
        policy.reset(2, seeds=None)
    with pytest.raises(ValueError, match="builds \\['random', 'medium', 'expert'\\]"):
        MirroredScripted(recipe, FOURROOMS, "medium-replay")
