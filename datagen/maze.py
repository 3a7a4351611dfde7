"""PointMaze's recipe (D4RL maze2d, Minari ``D4RL/pointmaze/*``): a waypoint planner over the
maze's cell grid driving a PD controller, with Gaussian action noise.

Source: Fu et al. 2020, "D4RL", section 5 (maze2d: "a planner ... generates waypoints which
are followed by a PD controller", ``d4rl/pointmaze/waypoint_controller.py``) and Minari's
re-creation on Gymnasium-Robotics (``docs/tutorials/dataset_creation/point_maze_dataset.py``),
whose constants this recipe takes:

- planner: shortest paths over the maze map's free cells (4-connected), found by
  breadth-first search from the goal cell (D4RL and Minari run Q-iteration with reward 1 at
  the goal; on a deterministic grid its greedy policy follows the same shortest paths);
- controller: ``a = clip(KP (w - x) + KD v, -1, 1)`` with ``KP = 10``, ``KD = -1``, ``x`` the
  ball's position (``achieved_goal``), ``v`` its velocity (``observation[2:]``), ``w`` the
  current waypoint: the centre of the next cell on the path, offset by ``-U(0, 0.2)`` per
  axis (Minari's waypoint noise), or the goal itself in the goal's cell; the next waypoint is
  taken once the ball is within ``WAYPOINT_THRESHOLD = 0.1`` of this one;
- data collection: ``a + N(0, ACTION_NOISE^2)``, ``ACTION_NOISE = 0.5``, clipped to [-1, 1],
  in ``continuing_task=True, reset_target=True`` mode (a reached goal is replaced by a new
  one, the run goes on without a reset).

Levels: ``expert``, the noisy planner-controller (what D4RL calls ``maze2d-umaze-v1`` and
Minari ``D4RL/pointmaze/umaze-v2``; here ``pointmaze-umaze/expert-v0``), and ``random``
(uniform actions in the same continuing run). The run is cut every ``max_episode_steps`` of
the env (UMaze 300, Medium 600, Large 800) into episodes marked ``timeouts`` (D4RL's maze2d
``timeouts``), the next one going on from where the ball is. Reference scores: the random
agent and the noise-free controller on evaluation episodes of the env as registered
(``continuing_task=True, reset_target=False``, sparse reward: the return is the number of
steps spent within 0.45 of the goal), the env ``offline-dt evaluate`` makes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from datagen.recipes import Recipe, ScriptedPolicy, UniformRandom

__all__ = ["ACTION_NOISE", "KD", "KP", "PointMazeRecipe", "WaypointController",
           "cell_distances"]

#: Proportional gain on the waypoint error (Minari, D4RL ``p_gain``).
KP = 10.0
#: Derivative gain on the ball's velocity (Minari, D4RL ``d_gain``).
KD = -1.0
#: Distance (maze units) at which a waypoint counts as reached.
WAYPOINT_THRESHOLD = 0.1
#: Largest offset subtracted from an intermediate waypoint per axis, ``U(0, 0.2)`` (Minari).
WAYPOINT_NOISE = 0.2
#: Standard deviation of the Gaussian noise added to each collected action (Minari).
ACTION_NOISE = 0.5
#: The four moves of the cell graph, as (row, column) steps.
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _is_wall(cell: Any) -> bool:
    return cell == 1 or cell == "1"


def cell_distances(maze_map: list[list[Any]], goal: tuple[int, int]) -> np.ndarray:
    """``(rows, cols) float64`` moves from every free cell to ``goal`` over the 4-connected
    free cells of ``maze_map`` (1 marks a wall), ``inf`` for walls and cut-off cells
    (breadth-first search from ``goal``).

    Raises:
        ValueError: ``goal`` is a wall or outside the map.
    """
    grid = np.array([[_is_wall(c) for c in row] for row in maze_map], bool)
    rows, cols = grid.shape
    if not (0 <= goal[0] < rows and 0 <= goal[1] < cols) or grid[goal]:
        raise ValueError(f"goal cell {goal} is a wall or outside the {rows}x{cols} maze map")
    dist = np.full(grid.shape, np.inf)
    dist[goal] = 0
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES:
            nr, nc = r + dr, c + dc
            if 0 <= nr < rows and 0 <= nc < cols and not grid[nr, nc] \
                    and dist[nr, nc] == np.inf:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


class WaypointController:
    """The planner-controller (module docstring) as a :class:`~datagen.recipes.ScriptedPolicy`.

    Args:
        rng: draws the waypoint offsets and the action noise.
        action_noise: std of the Gaussian action noise (0: the reference controller).
        waypoint_noise: largest waypoint offset per axis (0: waypoints at cell centres).
    """

    def __init__(self, rng: np.random.Generator, action_noise: float = ACTION_NOISE,
                 waypoint_noise: float = WAYPOINT_NOISE) -> None:
        self.rng = rng
        self.action_noise = action_noise
        self.waypoint_noise = waypoint_noise
        self.goal_xy = np.full(2, np.inf)

    def reset(self, env: gym.Env, obs: Any) -> None:
        self.goal_xy = np.full(2, np.inf)  # replan at the first act

    def _plan(self, maze: Any, obs: dict[str, np.ndarray]) -> None:
        """A new goal: distances to its cell, and the first waypoint from the ball's cell."""
        self.goal_xy = np.array(obs["desired_goal"], np.float64)
        self.goal_cell = tuple(int(x) for x in maze.cell_xy_to_rowcol(self.goal_xy))
        self.dist = cell_distances(maze.maze_map, self.goal_cell)
        self._next_waypoint(maze, tuple(int(x) for x in maze.cell_xy_to_rowcol(
            np.asarray(obs["achieved_goal"]))), noise=False)

    def _next_waypoint(self, maze: Any, cell: tuple[int, int], noise: bool = True) -> None:
        """Aim at the free neighbour of ``cell`` nearest the goal (the goal in its cell)."""
        rows, cols = self.dist.shape
        steps = [(cell[0] + dr, cell[1] + dc) for dr, dc in MOVES]
        steps = [s for s in steps if 0 <= s[0] < rows and 0 <= s[1] < cols]
        self.cell = min(steps, key=lambda s: self.dist[s]) if steps else self.goal_cell
        if cell == self.goal_cell or not np.isfinite(self.dist[self.cell]):
            self.cell = self.goal_cell  # in the goal's cell (or lost): straight to the goal
        if self.cell == self.goal_cell:
            self.target = self.goal_xy
            return
        offset = self.rng.uniform(0, self.waypoint_noise, 2) if noise else np.zeros(2)
        self.target = maze.cell_rowcol_to_xy(np.array(self.cell)) - offset

    def act(self, env: gym.Env, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``(2,) float32`` force in [-1, 1]: the PD law toward the waypoint, plus noise."""
        maze = env.unwrapped.maze
        if np.linalg.norm(self.goal_xy - obs["desired_goal"]) > 1e-3:
            self._plan(maze, obs)
        pos = np.asarray(obs["achieved_goal"], np.float64)
        if self.cell != self.goal_cell and np.linalg.norm(self.target - pos) \
                <= WAYPOINT_THRESHOLD:
            self._next_waypoint(maze, self.cell)
        action = KP * (self.target - pos) + KD * np.asarray(obs["observation"][2:])
        action = np.clip(action, -1.0, 1.0)
        if self.action_noise > 0:
            action = np.clip(action + self.rng.normal(0, self.action_noise, 2), -1.0, 1.0)
        return action.astype(np.float32)


class PointMazeRecipe(Recipe):
    """``PointMaze_*`` of Gymnasium-Robotics: levels ``random`` and ``expert`` (module
    docstring)."""

    name = "pointmaze-waypoint"
    levels = ("random", "expert")
    version = 1

    def matches(self, env_id: str) -> bool:
        return env_id.startswith("PointMaze_")

    def register(self) -> None:
        import gymnasium_robotics

        gym.register_envs(gymnasium_robotics)

    def collection_env(self, env_id: str, steps: int) -> gym.Env:
        """``env_id`` with ``continuing_task=True, reset_target=True`` and no time limit
        before ``steps`` (the run is cut by :meth:`episode_cut`)."""
        return gym.make(env_id, continuing_task=True, reset_target=True,
                        max_episode_steps=steps + 1)

    def episode_cut(self, env_id: str) -> int | None:
        return int(gym.spec(env_id).max_episode_steps)

    def policy(self, level: str, rng: np.random.Generator) -> ScriptedPolicy:
        if level == "random":
            return UniformRandom(rng)
        return WaypointController(rng)

    def reference_policy(self, rng: np.random.Generator) -> ScriptedPolicy:
        return WaypointController(rng, action_noise=0.0, waypoint_noise=0.0)

    def agent_name(self, level: str) -> str:
        return "random" if level == "random" else f"waypoint-pd(noise={ACTION_NOISE})"

    def settings(self) -> dict[str, Any]:
        return {"planner": "bfs over the maze cells", "kp": KP, "kd": KD,
                "waypoint_threshold": WAYPOINT_THRESHOLD, "waypoint_noise": WAYPOINT_NOISE,
                "action_noise": ACTION_NOISE,
                "collection_env": {"continuing_task": True, "reset_target": True},
                "episodes": "cut every max_episode_steps, no reset"}
