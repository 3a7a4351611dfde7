"""Episode reset seeds: which seed starts which episode, by kind of episode.

Three rules fill three disjoint blocks of ``SEED_RANGE = 10**12`` reset seeds, so an episode
of one kind never starts where an episode of another kind did:

* :func:`episode_seed` ``seed * SEED_STRIDE + i``: datagen's reference scores and agent
  learning curves (``datagen.rollout.policy_returns``);
* :func:`evaluation_seed` ``10**12 + seed * SEED_STRIDE + i``: test episodes, the ones that
  score a policy (``offline_dt.evaluation``);
* :func:`validation_seed` ``2 * 10**12 + seed * SEED_STRIDE + i``: validation episodes, the
  ones a target return or inference setting is chosen on, and learning curves.

:data:`SEED_RULES` is how ``eval.json`` records the last two.
"""

from __future__ import annotations

#: Episode ``i`` of an evaluation with seed ``s`` resets its env with ``s * SEED_STRIDE + i``.
SEED_STRIDE = 100_000
#: Seeds of :func:`episode_seed`, :func:`evaluation_seed` and :func:`validation_seed` lie in
#: ``[0, SEED_LIMIT)``, so ``seed * SEED_STRIDE + i < SEED_RANGE``: each rule below fills its own
#: block of ``SEED_RANGE`` reset seeds and no two blocks meet.
SEED_LIMIT = 10**7
SEED_RANGE = SEED_LIMIT * SEED_STRIDE  # 10**12


def episode_seed(seed: int, i: int) -> int:
    """Reset seed of episode ``i`` (0-based) of an evaluation with seed ``seed``:
    ``seed * SEED_STRIDE + i``, in ``[0, SEED_RANGE)`` (datagen's reference scores and agent
    learning curves).

    Raises:
        ValueError: ``i`` outside ``[0, SEED_STRIDE)`` or ``seed`` outside ``[0, SEED_LIMIT)``.
    """
    if not 0 <= int(i) < SEED_STRIDE:
        raise ValueError(f"episode index must be in [0, {SEED_STRIDE}), found {i}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, {SEED_LIMIT}), found {seed}")
    return int(seed) * SEED_STRIDE + int(i)


#: Evaluation (test) episodes reset with seeds in ``[EVALUATION_SEED_BASE, VALIDATION_SEED_BASE)``:
#: a block that no dataset of ``datagen`` is collected from (its rollouts reset sub-env ``j``
#: with ``seed + j`` for its small generation seeds; its agent learning curves and reference
#: scores use :func:`episode_seed`, below ``SEED_RANGE``), so a test episode never starts where
#: a dataset episode did.
EVALUATION_SEED_BASE = SEED_RANGE
#: Validation episodes (choosing a target return or inference setting, learning curves) reset
#: with seeds in ``[VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + SEED_RANGE)``: never a test
#: episode, whatever the two seeds are.
VALIDATION_SEED_BASE = 2 * SEED_RANGE


def evaluation_seed(seed: int, i: int) -> int:
    """Reset seed of test episode ``i`` of an evaluation with seed ``seed``:
    ``EVALUATION_SEED_BASE + seed * SEED_STRIDE + i``, in ``[10**12, 2 * 10**12)``.

    Raises:
        ValueError: ``i`` outside ``[0, SEED_STRIDE)`` or ``seed`` outside ``[0, SEED_LIMIT)``.
    """
    return EVALUATION_SEED_BASE + episode_seed(seed, i)


def validation_seed(seed: int, i: int) -> int:
    """Reset seed of validation episode ``i`` of an evaluation with seed ``seed``:
    ``VALIDATION_SEED_BASE + seed * SEED_STRIDE + i``, in ``[2 * 10**12, 3 * 10**12)``, so no
    validation episode is a test episode (:func:`evaluation_seed`) for any pair of seeds.

    Raises:
        ValueError: ``i`` outside ``[0, SEED_STRIDE)`` or ``seed`` outside ``[0, SEED_LIMIT)``.
    """
    return VALIDATION_SEED_BASE + episode_seed(seed, i)


#: The reset-seed rule of each kind of episode, as eval.json records it.
SEED_RULES = {"test": f"{EVALUATION_SEED_BASE} + seed * {SEED_STRIDE} + i",
              "validation": f"{VALIDATION_SEED_BASE} + seed * {SEED_STRIDE} + i"}
