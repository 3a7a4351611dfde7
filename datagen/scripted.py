"""The engine of the scripted recipes (``datagen.recipes``): collect a level's transitions
with the recipe's policy, measure the reference scores, build the levels with metadata.

Collection (:func:`collect`): ``num_envs`` streams, each one env (the recipe's
``collection_env``) stepped by one policy; stream ``i`` is reset once with ``seed + i`` and
then after every episode the env ends (no seed), its policy's noise drawn from
``default_rng([seed, i])``. A recipe with an ``episode_cut`` (PointMaze's continuing run) has
its run cut into episodes of that many steps, marked ``timeouts``, without a reset. The
``n_steps`` transitions are split as evenly as possible over the streams, laid end to end in
stream order; a stream's last episode, cut by its budget, is marked ``timeouts``.
Observations are kept as the env gives them (a Dict's leaves, images ``uint8``), text leaves
(MiniGrid's ``mission``) left out.

Reference scores (:func:`reference_returns`): undiscounted returns of ``ref_episodes``
episodes of the recipe's ``evaluation_env`` (the registered env, the one ``offline-dt
evaluate`` makes), episode ``i`` reset with ``episode_seed(seed + 20_000, i)`` as for the SB3
agent's (``datagen.selection.reference_returns``): D4RL's ``ref_min_score`` (uniform random
actions) and ``ref_max_score`` (the recipe's noise-free expert).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import gymnasium as gym
import numpy as np

from datagen.config import GenerateConfig, level_steps
from datagen.maze import PointMazeRecipe
from datagen.minigrid import FourRoomsRecipe
from datagen.recipes import Recipe, ScriptedPolicy, UniformRandom, env_name
from datagen.reuse import fingerprint
from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.layout import flatten_keys, observation_layout, pruned_space
from offline_dt.data.minari_io import minari_dataset_id
from offline_dt.envs.seeds import episode_seed

__all__ = ["RECIPES", "collect", "level_seed", "recipe_for", "recipe_levels",
           "reference_returns"]

log = logging.getLogger(__name__)

#: Every scripted recipe, one per env family (``datagen.recipes``).
RECIPES: tuple[Recipe, ...] = (PointMazeRecipe(), FourRoomsRecipe())


def recipe_for(env_id: str) -> Recipe | None:
    """The recipe whose family ``env_id`` (without a ``module:`` part) belongs to, its envs
    registered with Gymnasium; None for an env the SB3 behaviour agent generates (Pendulum,
    Hopper, CartPole, ...)."""
    for recipe in RECIPES:
        if recipe.matches(env_name(env_id)):
            recipe.register()
            return recipe
    return None


def _keep(obs: Any, keys: list[str] | None) -> Any:
    """The observation's leaves ``keys`` (a dict keyed by path), or ``obs`` for a Box."""
    if keys is None:
        return np.asarray(obs)
    flat = flatten_keys(obs)
    return {k: np.asarray(flat[k]) for k in keys}


class _Episodes:
    """Episodes of one stream, in Minari's layout (T + 1 observations, T actions)."""

    def __init__(self, keys: list[str] | None) -> None:
        self.keys = keys
        self.done: list[dict[str, Any]] = []

    def start(self, obs: Any) -> None:
        self.obs, self.actions, self.rewards = [_keep(obs, self.keys)], [], []
        self.terms: list[bool] = []
        self.truncs: list[bool] = []

    def add(self, action: Any, reward: float, next_obs: Any, term: bool, trunc: bool) -> None:
        self.obs.append(_keep(next_obs, self.keys))
        self.actions.append(np.asarray(action))
        self.rewards.append(float(reward))
        self.terms.append(bool(term))
        self.truncs.append(bool(trunc))

    def close(self) -> None:
        if not self.actions:
            return
        self.truncs[-1] = self.truncs[-1] or not self.terms[-1]
        obs = ({k: np.stack([o[k] for o in self.obs]) for k in self.keys}
               if self.keys is not None else np.stack(self.obs))
        self.done.append({"observations": obs, "actions": np.stack(self.actions),
                          "rewards": np.asarray(self.rewards), "terminations": self.terms,
                          "truncations": self.truncs})


def _stream(recipe: Recipe, env_id: str, policy: ScriptedPolicy, steps: int, seed: int,
            episodes: _Episodes) -> None:
    """Step one env ``steps`` times with ``policy`` into ``episodes`` (module docstring)."""
    env = recipe.collection_env(env_id, steps)
    cut = recipe.episode_cut(env_id)
    try:
        obs, _ = env.reset(seed=seed)
        policy.reset(env, obs)
        episodes.start(obs)
        for _ in range(steps):
            action = policy.act(env, obs)
            obs, reward, term, trunc, _ = env.step(action)
            at_cut = cut is not None and len(episodes.actions) + 1 >= cut
            episodes.add(action, reward, obs, term, trunc or at_cut)
            if term or trunc:
                episodes.close()
                obs, _ = env.reset()
                policy.reset(env, obs)
                episodes.start(obs)
            elif at_cut:
                episodes.close()
                episodes.start(obs)
        episodes.close()
    finally:
        env.close()


def collect(recipe: Recipe, env_id: str, level: str, n_steps: int, *, seed: int,
            num_envs: int, metadata: dict[str, Any] | None = None) -> OfflineDataset:
    """Exactly ``n_steps`` transitions of ``level``'s policy (module docstring).

    Raises:
        ValueError: ``n_steps`` or ``num_envs`` not positive.
    """
    if int(n_steps) <= 0 or int(num_envs) <= 0:
        raise ValueError(f"n_steps, num_envs: must be positive, found {n_steps}, {num_envs}")
    t0 = time.perf_counter()
    spaces = gym.make(env_id)
    obs_space, act_space = pruned_space(spaces.observation_space), spaces.action_space
    spaces.close()
    layout = observation_layout(obs_space, env_id)
    keys = None if layout is None or layout[0].key == "" else [leaf.key for leaf in layout]
    episodes = _Episodes(keys)
    num_envs = min(int(num_envs), int(n_steps))
    budgets = np.diff(np.linspace(0, int(n_steps), num_envs + 1).astype(int))
    for i, steps in enumerate(budgets):
        policy = recipe.policy(level, np.random.default_rng([seed, i]))
        _stream(recipe, env_id, policy, int(steps), seed + i, episodes)
    ds = OfflineDataset.from_episodes(episodes.done, obs_space, act_space, metadata=metadata,
                                      source=f"{recipe.name} {level}")
    log.info("%s: %d steps, %d episodes of %s in %.1f s", level, ds.num_transitions,
             ds.num_episodes, env_id, time.perf_counter() - t0)
    return ds


def reference_returns(recipe: Recipe, env_id: str, expert: bool, n_episodes: int,
                      seed: int) -> np.ndarray:
    """``(n_episodes,) float64`` returns of the random agent (``expert`` False) or the
    recipe's noise-free expert on its evaluation env (module docstring)."""
    seed = seed + 20_000
    returns = np.zeros(int(n_episodes))
    env = recipe.evaluation_env(env_id)
    try:
        for i in range(int(n_episodes)):
            rng = np.random.default_rng([seed, i])
            policy = recipe.reference_policy(rng) if expert else UniformRandom(rng)
            obs, _ = env.reset(seed=episode_seed(seed, i))
            policy.reset(env, obs)
            done = False
            while not done:
                obs, reward, term, trunc, _ = env.step(policy.act(env, obs))
                returns[i] += float(reward)
                done = term or trunc
    finally:
        env.close()
    return returns


def level_seed(seed: int, recipe: Recipe, level: str) -> int:
    """The first stream's reset seed of ``level``: ``seed + 100_000 * (1 + k)``, ``k`` the
    level's index in ``recipe.levels`` (levels never share streams; regenerating one level
    alone gives the same data)."""
    return int(seed) + 100_000 * (1 + recipe.levels.index(level))


def _metadata(cfg: GenerateConfig, recipe: Recipe, ns: str, level: str, refs: dict[str, Any],
              versions: dict[str, str]) -> dict[str, Any]:
    md = {"env_id": cfg.env_id, "level": level, "agent": recipe.agent_name(level),
          "seed": cfg.seed, "steps": 0, "dataset_id": minari_dataset_id(ns, level),
          "num_envs": cfg.num_envs, "recipe": recipe.name,
          "recipe_settings": json.dumps(recipe.settings(), sort_keys=True),
          "fingerprint": fingerprint(cfg, level, 0, recipe), **refs}
    md.update({f"version_{k}": v for k, v in versions.items()})
    return md


def recipe_levels(cfg: GenerateConfig, recipe: Recipe, ns: str, needed: list[str],
                  versions: dict[str, str], stages: dict[str, float]
                  ) -> tuple[dict[str, OfflineDataset], float, float]:
    """The reference scores, then every ``needed`` level of ``recipe``: (level → dataset,
    ref_min, ref_max); ``stages`` gets each stage's wall seconds."""
    t0 = time.perf_counter()
    random_returns = reference_returns(recipe, cfg.env_id, False, cfg.ref_episodes, cfg.seed)
    expert_returns = reference_returns(recipe, cfg.env_id, True, cfg.ref_episodes, cfg.seed)
    ref_min, ref_max = float(random_returns.mean()), float(expert_returns.mean())
    stages["reference_scores"] = time.perf_counter() - t0
    log.info("stage reference_scores: %.1f s (ref_min %.3f, ref_max %.3f over %d episodes)",
             stages["reference_scores"], ref_min, ref_max, cfg.ref_episodes)
    refs = {"ref_min_score": ref_min, "ref_max_score": ref_max,
            "ref_episodes": cfg.ref_episodes,
            "ref_policies": f"random; {recipe.name} without noise"}
    datasets = {}
    for level in (lv for lv in recipe.levels if lv in needed):
        t0 = time.perf_counter()
        ds = collect(recipe, cfg.env_id, level, level_steps(cfg, level),
                     seed=level_seed(cfg.seed, recipe, level), num_envs=cfg.num_envs,
                     metadata=_metadata(cfg, recipe, ns, level, refs, versions))
        ds.metadata["steps"] = ds.num_transitions
        datasets[level] = ds
        stages[level] = time.perf_counter() - t0
    return datasets, ref_min, ref_max
