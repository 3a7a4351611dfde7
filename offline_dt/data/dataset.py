"""The one in-memory container for an offline RL dataset.

Flat arrays in the D4RL layout (Fu et al. 2020, ``d4rl.qlearning_dataset`` conventions) plus
CSR-style episode boundaries. Every stage shares it: the readers return it, the writers take it,
the window sampler indexes it. No per-episode Python objects live on a hot path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from offline_dt.data.layout import (
    Layout,
    flatten_keys,
    layout_width,
    leaf_value,
    map_leaves,
    observation_layout,
)
from offline_dt.data.validate import DatasetError, check_dataset, check_row_counts

#: Observations: ``(N, obs_dim) float32`` for a flat Box; a dict of ``(N, ...)`` leaf arrays
#: (keys the leaves' ``/``-joined paths) for a Dict; ``(N, H, W, C) uint8`` for an image Box.
Observations = np.ndarray | dict[str, np.ndarray]

#: A plain Gymnasium id: optional ``namespace/``, a name, optional ``-v<version>``; no ``:``.
_PLAIN_ENV_ID = re.compile(r"(?:[A-Za-z0-9_.-]+/)?[A-Za-z0-9_.-]+")


def check_plain_env_id(env_id: Any, source: str, key: str = "metadata/env_id") -> str:
    """``env_id`` read from a file, checked to be a plain Gymnasium id (or ``""``: unknown).

    ``gym.make("mod:Env-v0")`` imports the module ``mod`` before looking the id up
    (``gymnasium.envs.registration``), so an id with a ``:`` module part read from a dataset
    would import code the user never asked for. Only ids of the form
    ``[namespace/]name[-vN]`` pass; importing a module for an env stays the user's explicit
    choice on the command line (``--env-id mymod:MyEnv``). Registration is not checked here
    (a foreign file may name an env not installed on this machine): the code that calls
    ``gym.make`` with an id from a file checks it with :func:`registered_env_id`.

    Raises:
        DatasetError: naming ``source`` and ``key``, the form expected and the id found.
    """
    if env_id is None or env_id == "":
        return ""
    if not isinstance(env_id, str) or not _PLAIN_ENV_ID.fullmatch(env_id):
        raise DatasetError(
            f"{source}: key '{key}' must be a plain Gymnasium id like 'Pendulum-v1' or "
            f"'ns/Name-v0' (no ':' module part, which gym.make would import), found {env_id!r}; "
            "to use an env from your own module pass --env-id mymod:MyEnv-v0 explicitly"
        )
    return env_id


def registered_env_id(env_id: Any, source: str, key: str = "metadata/env_id") -> str:
    """``env_id`` read from a file, checked to be plain (:func:`check_plain_env_id`) and
    registered in this process's Gymnasium registry, so ``gym.make(env_id)`` imports nothing
    but the registered env's own entry point.

    Raises:
        DatasetError: the id is empty, not plain, or not registered; naming ``source`` and
            ``key`` (pass ``--env-id`` to name the env explicitly).
    """
    import gymnasium as gym

    plain = check_plain_env_id(env_id, source, key)
    if not plain:
        raise DatasetError(f"{source}: key '{key}' names no env; pass --env-id")
    if plain not in gym.registry:
        raise DatasetError(
            f"{source}: key '{key}' names env {plain!r}, which is not registered with "
            "Gymnasium here (is its package installed?); pass --env-id to name the env "
            "explicitly"
        )
    return plain


@dataclass
class OfflineDataset:
    """Transitions of one or more episodes, stored flat.

    Attributes:
        observations: the observation ``s_t`` the action was taken in: ``(N, obs_dim)
            float32`` for a flat Box; for any other space (``offline_dt.data.layout``) one
            array per leaf of its stored dtype, a dict keyed by the leaf's path for a Dict
            (``{"image": (N, 7, 7, 3) uint8, "direction": (N,) int64}``), an ``(N, H, W, C)
            uint8`` array for an image Box.
        actions: ``(N, act_dim) float32`` for Box action spaces, ``(N,) int64`` for Discrete.
        rewards: ``(N,) float32``, reward ``r_t`` received after ``a_t``.
        next_observations: observation ``s_{t+1}``, as ``observations``.
        terminals: ``(N,) bool``, Gymnasium ``terminated`` (MDP end, no bootstrap).
        timeouts: ``(N,) bool``, Gymnasium ``truncated`` (time limit or cut-off episode).
        episode_starts: ``(E + 1,) int64`` CSR offsets: episode ``i`` is rows
            ``episode_starts[i]:episode_starts[i + 1]``; ``episode_starts[-1] == N``.
        observation_space: a flat Box, an image Box or a Dict of Box and Discrete leaves.
        action_space: the Box or Discrete action space.
        metadata: free-form JSON-able metadata (``env_id``, ``level``, ``agent``, ``seed``,
            ``ref_min_score``, ``ref_max_score``, package versions, ...).
        infos: optional per-step arrays with leading dimension ``N`` (D4RL ``infos/*``).
    """

    observations: Observations
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: Observations
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_starts: np.ndarray
    observation_space: gym.Space
    action_space: gym.spaces.Box | gym.spaces.Discrete
    metadata: dict[str, Any] = field(default_factory=dict)
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ shape facts
    @property
    def num_transitions(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.shape[0] - 1)

    @property
    def layout(self) -> Layout | None:
        """The observation space's leaves (``offline_dt.data.layout``), None for a flat Box.

        Raises:
            DatasetError: the space is not supported, naming the key of the leaf.
        """
        return observation_layout(self.observation_space, self.source)

    @property
    def obs_dim(self) -> int:
        """Width of the observation a network reads: ``obs_dim`` of a flat Box, the flat
        view's width (``offline_dt.data.layout.layout_width``) otherwise."""
        layout = self.layout
        if layout is not None:
            return layout_width(layout)
        return int(self.observations.shape[1])

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, gym.spaces.Discrete)

    @property
    def act_dim(self) -> int:
        """Action width: ``act_dim`` for Box, the number of actions ``n`` for Discrete."""
        if isinstance(self.action_space, gym.spaces.Discrete):
            return int(self.action_space.n)
        return int(self.actions.shape[1])

    @property
    def episode_lengths(self) -> np.ndarray:
        """``(E,) int64`` number of transitions of each episode."""
        return np.diff(self.episode_starts)

    @property
    def episode_returns(self) -> np.ndarray:
        """``(E,) float64`` undiscounted sum of rewards of each episode."""
        sums = np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts[:-1])
        return sums

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Arrays of episode ``i`` (views, not copies)."""
        s, e = int(self.episode_starts[i]), int(self.episode_starts[i + 1])
        return {
            "observations": map_leaves(lambda a: a[s:e], self.observations),
            "actions": self.actions[s:e],
            "rewards": self.rewards[s:e],
            "next_observations": map_leaves(lambda a: a[s:e], self.next_observations),
            "terminals": self.terminals[s:e],
            "timeouts": self.timeouts[s:e],
        }

    def checksum(self) -> str:
        """SHA-256 over the arrays' bytes (data only, not metadata): equal data, equal digest.
        A Dict's leaves are hashed one by one, named ``observations/<key>`` in key order."""
        h = hashlib.sha256()
        arrays: list[tuple[str, np.ndarray]] = []
        for name in ("observations", "actions", "rewards", "next_observations", "terminals",
                     "timeouts", "episode_starts"):
            value = getattr(self, name)
            if isinstance(value, dict):
                arrays += [(f"{name}/{k}", value[k]) for k in sorted(value)]
            else:
                arrays.append((name, value))
        for name, value in arrays:
            arr = np.ascontiguousarray(value)
            h.update(name.encode())
            h.update(str(arr.dtype).encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and episode-return statistics, for listings and reports."""
        rets = self.episode_returns
        return {
            "env_id": self.metadata.get("env_id", ""),
            "steps": self.num_transitions,
            "episodes": self.num_episodes,
            "return_mean": float(rets.mean()) if len(rets) else float("nan"),
            "return_std": float(rets.std()) if len(rets) else float("nan"),
            "return_min": float(rets.min()) if len(rets) else float("nan"),
            "return_max": float(rets.max()) if len(rets) else float("nan"),
        }

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check spaces, array shapes and dtypes, finiteness, Discrete action range, episode
        boundaries and ``infos`` lengths (``offline_dt.data.validate.check_dataset``).

        Raises:
            DatasetError: naming ``self.source`` and the offending key.
        """
        check_dataset(self)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_flat(
        cls,
        *,
        observations: Any,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        timeouts: np.ndarray,
        observation_space: gym.Space,
        action_space: gym.spaces.Box | gym.spaces.Discrete,
        next_observations: Any = None,
        episode_starts: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
        infos: dict[str, np.ndarray] | None = None,
        source: str = "<memory>",
    ) -> OfflineDataset:
        """Build from D4RL-style flat arrays, casting to the canonical dtypes.

        Episodes are split after every step with ``terminals | timeouts`` (D4RL's
        ``sequence_dataset`` rule) unless ``episode_starts`` is given; trailing steps with
        neither flag form a last, cut-off episode. Without ``next_observations`` (old D4RL
        files) the next row's observation is used within an episode and the step's own
        observation at an episode's end.

        Observations of a Dict space are a dict (nested, or keyed by the leaves' ``/``-joined
        paths) of ``(N, ...)`` arrays, cast to each leaf's dtype
        (``offline_dt.data.layout``); those of an image Box an ``(N, H, W, C)`` array.
        """
        n = len(rewards)
        check_row_counts(source, n, actions=actions, terminals=terminals, timeouts=timeouts)
        layout = observation_layout(observation_space, source)
        obs = _canonical_observations(observations, layout, n, source, "observations")
        term = np.asarray(terminals).astype(bool).reshape(n)
        tout = np.asarray(timeouts).astype(bool).reshape(n)
        if episode_starts is None:
            episode_starts = _d4rl_episode_starts(term, tout)
        episode_starts = np.asarray(episode_starts, dtype=np.int64)
        if next_observations is None:
            next_obs = _shifted_next_observations(obs, episode_starts)
        else:
            next_obs = _canonical_observations(next_observations, layout, n, source,
                                               "next_observations")
        return cls(
            observations=obs,
            actions=_canonical_actions(actions, action_space, n, source),
            rewards=np.asarray(rewards, dtype=np.float32).reshape(n),
            next_observations=next_obs,
            terminals=term,
            timeouts=tout,
            episode_starts=episode_starts,
            observation_space=observation_space,
            action_space=action_space,
            metadata=dict(metadata or {}),
            infos={k: np.asarray(v) for k, v in (infos or {}).items()},
            source=source,
        )

    @classmethod
    def from_episodes(
        cls,
        episodes: Sequence[dict[str, Any]],
        observation_space: gym.Space,
        action_space: gym.spaces.Box | gym.spaces.Discrete,
        metadata: dict[str, Any] | None = None,
        source: str = "<memory>",
    ) -> OfflineDataset:
        """Build from per-episode arrays in the Minari layout.

        Each episode dict holds ``observations (T+1, obs_dim)``, ``actions (T, ...)``,
        ``rewards (T,)``, ``terminations (T,)`` and ``truncations (T,)`` (a Dict space's
        observations: a dict, nested or keyed by paths, of ``(T+1, ...)`` arrays). An episode that
        ends with neither flag (cut off, e.g. a replay buffer's last episode) gets
        ``timeouts=True`` on its last step unless it is the dataset's last episode, so the
        D4RL split rule ``terminals | timeouts`` recovers the same boundaries.
        """
        if not episodes:
            raise DatasetError(f"{source}: no episodes")
        lengths = []
        episodes = [{**ep, "observations": flatten_keys(ep["observations"])} for ep in episodes]
        for i, ep in enumerate(episodes):
            t = len(ep["actions"])
            rows = {len(a) for a in _leaf_list(ep["observations"])}
            if rows != {t + 1} or t == 0:
                raise DatasetError(
                    f"{source}: episode {i} must hold T+1 observations for T>0 actions, found "
                    f"{', '.join(map(str, sorted(rows)))} observations and {t} actions"
                )
            lengths.append(t)
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        timeouts = np.concatenate([np.asarray(e["truncations"], bool) for e in episodes])
        terminals = np.concatenate([np.asarray(e["terminations"], bool) for e in episodes])
        ends = starts[1:-1] - 1  # last step of every episode but the final one
        timeouts[ends] |= ~terminals[ends]
        return cls.from_flat(
            observations=map_leaves(lambda *a: np.concatenate([x[:-1] for x in a]),
                                    *(e["observations"] for e in episodes)),
            next_observations=map_leaves(lambda *a: np.concatenate([x[1:] for x in a]),
                                         *(e["observations"] for e in episodes)),
            actions=np.concatenate([e["actions"] for e in episodes]),
            rewards=np.concatenate([e["rewards"] for e in episodes]),
            terminals=terminals,
            timeouts=timeouts,
            episode_starts=starts,
            observation_space=observation_space,
            action_space=action_space,
            metadata=metadata,
            source=source,
        )


def concatenate(datasets: Sequence[OfflineDataset], metadata: dict[str, Any]) -> OfflineDataset:
    """Join datasets end to end (e.g. medium + expert = medium-expert).

    Raises:
        DatasetError: when the spaces differ.
    """
    first = datasets[0]
    for d in datasets[1:]:
        if d.observation_space != first.observation_space or d.action_space != first.action_space:
            raise DatasetError(
                f"cannot concatenate {d.source} with {first.source}: spaces differ "
                f"({d.observation_space}, {d.action_space}) vs "
                f"({first.observation_space}, {first.action_space})"
            )
    offsets = np.cumsum([0] + [d.num_transitions for d in datasets[:-1]])
    starts = np.concatenate(
        [d.episode_starts[:-1] + off for d, off in zip(datasets, offsets, strict=True)]
        + [[sum(d.num_transitions for d in datasets)]]
    ).astype(np.int64)
    timeouts = np.concatenate([d.timeouts for d in datasets])
    terminals = np.concatenate([d.terminals for d in datasets])
    ends = starts[1:-1] - 1
    timeouts[ends] |= ~terminals[ends]
    common_infos = set.intersection(*(set(d.infos) for d in datasets))
    return OfflineDataset(
        observations=map_leaves(lambda *a: np.concatenate(a),
                                *(d.observations for d in datasets)),
        actions=np.concatenate([d.actions for d in datasets]),
        rewards=np.concatenate([d.rewards for d in datasets]),
        next_observations=map_leaves(lambda *a: np.concatenate(a),
                                     *(d.next_observations for d in datasets)),
        terminals=terminals,
        timeouts=timeouts,
        episode_starts=starts,
        observation_space=first.observation_space,
        action_space=first.action_space,
        metadata=dict(metadata),
        infos={k: np.concatenate([d.infos[k] for d in datasets]) for k in sorted(common_infos)},
    )


# ---------------------------------------------------------------------- from_flat helpers
def _d4rl_episode_starts(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """CSR offsets splitting after every ``terminals | timeouts`` step; trailing unflagged steps
    form a last episode."""
    n = len(terminals)
    ends = np.flatnonzero(terminals | timeouts) + 1
    if n and (not len(ends) or ends[-1] != n):
        ends = np.append(ends, n)
    return np.concatenate([[0], ends]).astype(np.int64)


def _shifted_next_observations(obs: Observations, episode_starts: np.ndarray
                               ) -> Observations:
    """The next row's observation inside an episode, the row's own at an episode's last step
    (leaf by leaf for a Dict)."""
    last = episode_starts[1:] - 1

    def shifted(leaf: np.ndarray) -> np.ndarray:
        next_obs = np.empty_like(leaf)
        next_obs[:-1] = leaf[1:]
        next_obs[last] = leaf[last]
        return next_obs

    return map_leaves(shifted, obs)


def _leaf_list(obs: Any) -> list[Any]:
    return list(obs.values()) if isinstance(obs, dict) else [obs]


def _canonical_observations(obs: Any, layout: Layout | None, n: int, source: str, key: str
                            ) -> Observations:
    """``obs`` in the stored form of ``layout`` (``offline_dt.data.layout``): ``(N, obs_dim)
    float32`` without one; else each leaf cast to its dtype, a dict keyed by path (an array for
    a top-level image). Leaves missing or of a wrong shape are left for ``check_dataset`` to
    name; keys the layout lacks are kept, so it names them too.

    Raises:
        DatasetError: ``obs`` has other rows than ``n``, naming ``source`` and ``key``.
    """
    if layout is None:
        check_row_counts(source, n, **{key: obs})
        return np.asarray(obs, dtype=np.float32).reshape(n, -1)
    if len(layout) == 1 and layout[0].key == "":
        check_row_counts(source, n, **{key: obs})
        return np.asarray(obs).astype(layout[0].dtype, copy=False)
    if not isinstance(obs, dict):
        raise DatasetError(f"{source}: key '{key}' must be a dict of arrays for the Dict "
                           f"observation space, found {type(obs).__name__}")
    flat = flatten_keys(obs)
    out = {}
    for leaf in layout:
        try:
            value = np.asarray(leaf_value(flat, leaf.key))
        except KeyError:
            continue
        check_row_counts(source, n, **{f"{key}/{leaf.key}": value})
        out[leaf.key] = value.astype(leaf.dtype, copy=False)
    out.update({k: np.asarray(v) for k, v in flat.items() if k not in out})
    return out


def _canonical_actions(actions: Any, action_space: gym.Space, n: int, source: str
                       ) -> np.ndarray:
    """``(N,) int64`` for Discrete, ``(N, *shape) float32`` for Box.

    ``(N, 1)`` Discrete actions and ``(N,)`` actions of a one-wide Box are accepted (they hold
    the same values).

    Raises:
        DatasetError: the actions do not hold one action of the space per row; naming
            ``source``, the key ``actions``, the shape expected and the shape found.
    """
    arr = np.asarray(actions)
    if isinstance(action_space, gym.spaces.Discrete):
        expected: tuple[int, ...] = (n,)
        if arr.size == n:
            return arr.reshape(n).astype(np.int64)
    else:
        expected = (n, *action_space.shape)
        if arr.size == int(np.prod(expected)):
            return arr.astype(np.float32).reshape(expected)
    raise DatasetError(
        f"{source}: key 'actions' has shape {arr.shape}, expected {expected} for the action "
        f"space {action_space}"
    )
