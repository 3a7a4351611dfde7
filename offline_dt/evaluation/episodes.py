"""Policies rolled out on numbered test or validation episodes.

:func:`evaluate_policy` steps all episodes at once through a Gymnasium vector env (one batched
policy call per env step, the one rollout engine ``offline_dt.envs.rollout.run_episodes``);
:func:`evaluate_sequential` is the one-episode-at-a-time reference loop of the original
implementation (one model call per step per episode), kept for tests and the speed benchmark.
Both seed test episode ``i`` of an evaluation with seed ``s`` as ``10**12 + s * 100_000 + i``
(``offline_dt.envs.seeds.evaluation_seed``) and validation episode ``i`` as
``2 * 10**12 + s * 100_000 + i`` (``validation_seed``), so the same ``(split, seed, i)`` is
the same episode for every policy and both loops, a validation episode is never a test one,
and neither is ever the start of an episode of a dataset that datagen generated.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from offline_dt.envs.make import make_env
from offline_dt.envs.policies import Policy
from offline_dt.envs.rollout import DEFAULT_MAX_ENVS, run_episodes
from offline_dt.envs.seeds import SEED_STRIDE, evaluation_seed, validation_seed
from offline_dt.evaluation.results import EvalResult

#: Reset seed of episode ``i`` of each kind of episode (``EvalResult.split``): test episodes
#: score a policy, validation episodes choose among a method's candidates (and draw learning
#: curves); the two ranges never meet (``offline_dt.envs.seeds``).
SEED_FUNCTIONS = {"test": evaluation_seed, "validation": validation_seed}
#: The learning-curve hook's episodes are validation episodes from this index on: never a test
#: episode, and never one of the first ``CURVE_EPISODE_OFFSET`` validation episodes, where
#: ``offline_dt.evaluation.evaluate.evaluate_checkpoint`` chooses targets
#: (``EvalConfig.validation_episodes`` is capped there).
CURVE_EPISODE_OFFSET = SEED_STRIDE // 2


def episode_seeds(split: str, seed: int, episodes: int, first: int = 0) -> list[int]:
    """Reset seeds of episodes ``first .. first + episodes - 1`` of kind ``split``
    (``"test"`` or ``"validation"``, see :data:`SEED_FUNCTIONS`) for evaluation seed ``seed``.

    Raises:
        ValueError: unknown ``split``, ``episodes < 1``, or indices/seed outside the rule's
            range (``offline_dt.envs.seeds.episode_seed``).
    """
    if split not in SEED_FUNCTIONS:
        raise ValueError(f"split must be one of {sorted(SEED_FUNCTIONS)}, found {split!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, found {episodes}")
    return [SEED_FUNCTIONS[split](seed, first + i) for i in range(episodes)]


def evaluate_policy(
    env_id: str,
    policy: Policy,
    episodes: int = 200,
    seed: int = 0,
    *,
    split: str = "test",
    max_envs: int = DEFAULT_MAX_ENVS,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    env_kwargs: dict[str, Any] | None = None,
    first: int = 0,
) -> EvalResult:
    """Roll ``policy`` out for ``episodes`` episodes, all at once, through a vector env.

    A thin wrapper over :func:`offline_dt.envs.rollout.run_episodes`: episodes run in waves of at
    most ``max_envs`` envs in one ``SyncVectorEnv`` (same-step autoreset). Test episode ``i``
    (``split="test"``) is reset with ``offline_dt.envs.seeds.evaluation_seed(seed, i)``
    (``10**12 + seed * 100_000 + i``: never a seed a generated dataset was collected from);
    validation episode ``i`` with ``validation_seed(seed, i)`` (``2 * 10**12 + ...``: never a
    test episode). Every wave calls
    ``policy.act`` once per env step for all its envs and runs until every env has terminated
    or been truncated; an env that has finished keeps being stepped (its autoreset episode is
    ignored: its rewards are neither counted nor passed to ``policy.observe``), so each
    episode is counted exactly once.

    Args:
        env_id: Gymnasium id.
        policy: a :class:`~offline_dt.envs.policies.Policy`.
        episodes: number of episodes.
        seed: evaluation seed, in ``[0, 10**7)``.
        split: ``"test"`` or ``"validation"`` episodes.
        max_envs: most envs stepped at once.
        ref_min_score, ref_max_score: D4RL reference scores for the normalized score.
        env_kwargs: extra ``gym.make`` keyword arguments (e.g. ``max_episode_steps``).
        first: index of the first episode (the learning-curve hook's start past the
            validation episodes that choose targets).

    Raises:
        ValueError: ``episodes < 1``, unknown ``split``, seed or episode index out of range.
    """
    seeds = episode_seeds(split, seed, episodes, first)
    start = time.perf_counter()
    returns, lengths = run_episodes(env_id, policy, seeds, max_envs=max_envs,
                                    env_kwargs=env_kwargs)
    return EvalResult(env_id=env_id, seed=seed, returns=returns, lengths=lengths,
                      episode_seeds=seeds, ref_min_score=ref_min_score,
                      ref_max_score=ref_max_score, wall_seconds=time.perf_counter() - start,
                      split=split)


def evaluate_sequential(
    env_id: str,
    policy: Policy,
    episodes: int = 200,
    seed: int = 0,
    *,
    split: str = "test",
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> EvalResult:
    """The reference loop: one ``gym.make`` env, one episode at a time, one policy call (batch
    of 1) per step. Same episode seeds as :func:`evaluate_policy`, so the returns agree up to
    floating-point differences between batch sizes."""
    seeds = episode_seeds(split, seed, episodes)
    start = time.perf_counter()
    returns = np.zeros(episodes, np.float64)
    lengths = np.zeros(episodes, np.int64)
    env = make_env(env_id, **(env_kwargs or {}))
    try:
        for i, s in enumerate(seeds):
            obs, _ = env.reset(seed=s)
            policy.reset(1, seeds=[s])
            done = False
            while not done:
                action = policy.act(np.asarray(obs, np.float32)[None])[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                returns[i] += float(reward)
                lengths[i] += 1
                policy.observe(np.array([reward], np.float64))
                done = bool(terminated or truncated)
    finally:
        env.close()
    return EvalResult(env_id=env_id, seed=seed, returns=returns, lengths=lengths,
                      episode_seeds=seeds, ref_min_score=ref_min_score,
                      ref_max_score=ref_max_score, wall_seconds=time.perf_counter() - start,
                      split=split)

