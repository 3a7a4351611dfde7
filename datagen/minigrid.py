"""MiniGrid's recipe (FourRooms): an optimal breadth-first-search expert with epsilon-random
actions, the recipe of Minari's ``D4RL/minigrid/fourrooms-v0``.

Why FourRooms (not DoorKey): it is the MiniGrid task of Minari's catalog, and reaching its
goal is navigation only, so the expert's search is over the agent's state ``(x, y,
direction)`` alone (19 x 19 x 4 states); DoorKey adds the key and the door to the state
(pick up, toggle), a larger search for the same test of image observations.

- Expert (:class:`BFSExpert`): from ``env.unwrapped``'s grid, a breadth-first search backward
  from the goal over ``(x, y, direction)`` with MiniGrid's moves (``left``: direction - 1,
  ``right``: direction + 1, ``forward``: the cell in front when it is empty or can be
  overlapped) gives every state's distance in actions to the goal, once per episode; the
  expert takes the action whose next state is nearest (ties: forward, left, right). It is
  optimal: it reaches the goal in the fewest actions, the most reward MiniGrid gives
  (``1 - 0.9 * steps / max_steps``).
- Levels: ``expert``, the expert with epsilon ``EXPERT_EPS = 0.1`` (a uniform action of the
  seven instead of the expert's, with that probability), ``medium`` with ``MEDIUM_EPS = 0.7``,
  ``random`` with uniform actions. Episodes are the env's own (the goal reached, or
  ``max_steps = 100``).
- Observations as the env gives them: ``image`` ``(7, 7, 3) uint8``, the agent's egocentric
  view, and ``direction`` ``Discrete(4)``; the ``mission`` text leaf is dropped (logged,
  ``offline_dt.data.layout``).
- Reference scores: the random agent and the expert at epsilon 0 on evaluation episodes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from datagen.recipes import Recipe, ScriptedPolicy, UniformRandom

__all__ = ["EXPERT_EPS", "MEDIUM_EPS", "BFSExpert", "FourRoomsRecipe", "goal_distances"]

#: Probability of a uniform random action at the ``expert`` level.
EXPERT_EPS = 0.1
#: ... and at the ``medium`` level.
MEDIUM_EPS = 0.7
#: MiniGrid's actions the expert uses.
LEFT, RIGHT, FORWARD = 0, 1, 2
#: MiniGrid's ``DIR_TO_VEC``: direction 0 faces +x, 1 +y, 2 -x, 3 -y.
DIR_TO_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _passable(grid: Any, x: int, y: int) -> bool:
    """The agent can stand on cell (x, y): empty, or an object it may overlap (not lava)."""
    cell = grid.get(x, y)
    return cell is None or (cell.can_overlap() and cell.type != "lava")


def goal_distances(grid: Any) -> np.ndarray:
    """``(width, height, 4) float64`` actions from every agent state ``(x, y, direction)``
    to a goal cell of the MiniGrid ``grid`` (0 on a goal, ``inf`` where none is reachable),
    by breadth-first search backward from the goals.

    Raises:
        ValueError: the grid holds no goal.
    """
    w, h = grid.width, grid.height
    dist = np.full((w, h, 4), np.inf)
    queue: deque[tuple[int, int, int]] = deque()
    for x in range(w):
        for y in range(h):
            cell = grid.get(x, y)
            if cell is not None and cell.type == "goal":
                dist[x, y, :] = 0
                queue.extend((x, y, d) for d in range(4))
    if not queue:
        raise ValueError("MiniGrid grid: no goal cell to plan to")
    while queue:
        x, y, d = queue.popleft()
        k = dist[x, y, d] + 1
        # the states one action before (x, y, d): turned left or right into d, or moved
        # forward into (x, y) facing d from the cell behind it
        dx, dy = DIR_TO_VEC[d]
        before = [(x, y, (d + 1) % 4), (x, y, (d - 1) % 4), (x - dx, y - dy, d)]
        for px, py, pd in before:
            if 0 <= px < w and 0 <= py < h and dist[px, py, pd] == np.inf \
                    and _passable(grid, px, py):
                dist[px, py, pd] = k
                queue.append((px, py, pd))
    return dist


class BFSExpert:
    """The optimal expert with epsilon-random actions (module docstring).

    Args:
        rng: draws the epsilon coin and the random actions.
        eps: probability of a uniform action of ``env.action_space`` instead of the expert's.
    """

    def __init__(self, rng: np.random.Generator, eps: float = 0.0) -> None:
        self.rng = rng
        self.eps = eps

    def reset(self, env: gym.Env, obs: Any) -> None:
        self.dist = goal_distances(env.unwrapped.grid)

    def best_action(self, env: gym.Env) -> int:
        """The expert's action in the env's current state."""
        u = env.unwrapped
        x, y = (int(v) for v in u.agent_pos)
        d = int(u.agent_dir)
        dx, dy = DIR_TO_VEC[d]
        ahead = (x + dx, y + dy, d) if _passable(u.grid, x + dx, y + dy) else (x, y, d)
        options = ((FORWARD, ahead), (LEFT, (x, y, (d - 1) % 4)), (RIGHT, (x, y, (d + 1) % 4)))
        return min(options, key=lambda o: self.dist[o[1]])[0]

    def act(self, env: gym.Env, obs: Any) -> int:
        if self.eps > 0 and self.rng.random() < self.eps:
            return int(self.rng.integers(int(env.action_space.n)))
        return self.best_action(env)


class FourRoomsRecipe(Recipe):
    """``MiniGrid-FourRooms-v0``: levels ``random``, ``medium`` and ``expert`` (module
    docstring)."""

    name = "minigrid-bfs"
    levels = ("random", "medium", "expert")
    version = 1

    def matches(self, env_id: str) -> bool:
        return env_id.startswith("MiniGrid-FourRooms")

    def register(self) -> None:
        import minigrid  # noqa: F401  (registers the MiniGrid envs on import)

    def policy(self, level: str, rng: np.random.Generator) -> ScriptedPolicy:
        if level == "random":
            return UniformRandom(rng)
        return BFSExpert(rng, EXPERT_EPS if level == "expert" else MEDIUM_EPS)

    def reference_policy(self, rng: np.random.Generator) -> ScriptedPolicy:
        return BFSExpert(rng, 0.0)

    def agent_name(self, level: str) -> str:
        if level == "random":
            return "random"
        return f"bfs(eps={EXPERT_EPS if level == 'expert' else MEDIUM_EPS})"

    def settings(self) -> dict[str, Any]:
        return {"expert": "bfs over (x, y, direction)", "expert_eps": EXPERT_EPS,
                "medium_eps": MEDIUM_EPS, "episodes": "the env's own"}
