"""The field's reference rows: IQL, MLP BC and %BC, trained by d3rlpy, scored by our evaluator.

Three rows of the comparison table that are not Decision Transformers, each trained by
`d3rlpy <https://github.com/takuseno/d3rlpy>`_ 2.8.1 (a well-kept implementation; nothing of
the algorithms is rewritten here) on the same dataset file as ``dt`` and ``bc``, and rolled out
by the one rollout engine (:func:`offline_dt.envs.rollout.run_episodes`, through
:func:`offline_dt.evaluation.evaluate.write_baseline_eval`) on the same test episodes: for training
seed ``k``, evaluation seed ``k`` (test episode ``i`` resets with ``10**12 + k * 100000 + i``).

* ``iql``: Implicit Q-Learning (Kostrikov et al. 2021), ``d3rlpy.algos.IQLConfig`` defaults
  (expectile 0.7, inverse temperature ``weight_temp`` 3, ``max_weight`` 100, two critics,
  gamma 0.99, tau 0.005, Adam 3e-4, batch 256, MLP 256-256). Box actions only.
* ``mlp-bc``: behaviour cloning by a plain MLP on single states (``d3rlpy.algos.BCConfig``
  defaults: deterministic policy, MLP 256-256, Adam 1e-3, batch 100; ``DiscreteBCConfig`` for
  Discrete actions), the standard BC baseline of the offline RL literature.
* ``pct-bc``: %BC (Chen et al. 2021, Table 3; CORL ``any_percent_bc``): the same MLP BC on the
  top ``top_fraction`` (10%) of the episodes by return, at least one (:func:`top_episodes`). On
  datasets whose episodes are equally long (Pendulum: 200 steps) this is also the top 10% of
  timesteps ordered by episode return, the DT paper's wording.

One setting is added to d3rlpy's defaults, for every row: a ``MinMaxActionScaler`` with the
action space's bounds (the data's where a bound is infinite), because d3rlpy's policies act in
``[-1, 1]`` (tanh) and Pendulum's torque is in ``[-2, 2]``. ``ReferenceConfig.learning_rate``,
``expectile`` and ``weight_temp`` (IQL's τ and inverse temperature β) replace d3rlpy's
defaults where set; :data:`REFERENCE_SPACES` is what a hyperparameter search may set
(``offline_dt.study.reference_search``).

Dict and image observations (PointMaze, MiniGrid) are trained on and acted from their flat
view: the leaves in sorted key order, each flattened and concatenated
(``offline_dt.data.layout.flat_view``; see ``offline_dt.study.d3rlpy_io``), the vectors the
rollout engine gives every policy.

Data and weights cross into d3rlpy through :mod:`offline_dt.study.d3rlpy_io` (the replay
buffer of episodes, the safetensors weights, the import and its install hint).

A run directory holds ``config.json`` (this module's :class:`ReferenceConfig`, d3rlpy's own
algorithm config, versions, the dataset and the episodes trained on), ``metrics.csv`` (mean
losses per logging interval), ``weights.safetensors`` (every network's ``state_dict``, no
optimiser state: enough to act again with :func:`load_reference`; never a pickle, so d3rlpy's
own ``save_model`` is not used) and ``eval.json`` (the same schema as every row). Training is
not resumable: an interrupted run trains again from the start. d3rlpy is imported only when a
reference row is trained (:func:`offline_dt.study.d3rlpy_io.import_d3rlpy`); without it the
error (``MissingDependencyError``) names the install command
(:data:`offline_dt.study.d3rlpy_io.INSTALL_HINT`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from offline_dt.data import OfflineDataset, load_dataset
from offline_dt.data.atomic import atomic_path
from offline_dt.envs.make import registered_id
from offline_dt.envs.policies import CallablePolicy
from offline_dt.envs.rollout import DEFAULT_MAX_ENVS
from offline_dt.envs.seeds import SEED_RULES
from offline_dt.envs.spaces import require_spaces
from offline_dt.evaluation.evaluate import write_baseline_eval
from offline_dt.methods.options import Choice, Range
from offline_dt.study.d3rlpy_io import (
    D3RLPY_VERSION,
    action_bounds,
    import_d3rlpy,
    load_weights,
    save_weights,
    to_replay_buffer,
)
from offline_dt.training.configs import save_json, to_jsonable
from offline_dt.training.device import resolve_device

log = logging.getLogger(__name__)

REFERENCE_METHODS = ("iql", "mlp-bc", "pct-bc")
WEIGHTS_NAME = "weights.safetensors"
#: The d3rlpy losses summed into metrics.csv's ``loss`` column (IQL's critic and actor are
#: separate optimisers; ``critic_loss`` is d3rlpy's ``q_loss + v_loss``).
LOSS_TERMS = {"iql": ("critic_loss", "actor_loss"), "mlp-bc": ("loss",), "pct-bc": ("loss",)}
#: ReferenceConfig fields that decide what is trained (a run with the same ones is reused; a
#: config.json written before the hyperparameter fields existed reads them as None, d3rlpy's
#: defaults, which they were).
TRAIN_FIELDS = ("dataset", "minari_root", "env_id", "method", "seed", "steps", "top_fraction",
                "learning_rate", "expectile", "weight_temp")
#: The hyperparameters a search may set per reference row (ReferenceConfig fields), the way
#: ``Method.search_space`` declares a method's: IQL's expectile τ over qt's range (IQL used 0.7
#: and 0.9), its inverse temperature β over qt's choices (0: plain BC on the data), and one
#: learning rate for its actor and critics a decade either side of d3rlpy's 3e-4; the BC rows'
#: learning rate a decade either side of d3rlpy's 1e-3, and %BC's kept fraction over the DT
#: paper's 5%, 10% and 25% (Chen et al. 2021, Table 3) and a half.
REFERENCE_SPACES: dict[str, dict[str, Range | Choice]] = {
    "iql": {"learning_rate": Range(3e-5, 3e-3, log=True), "expectile": Range(0.5, 0.95),
            "weight_temp": Choice((0.0, 1.0, 3.0, 10.0))},
    "mlp-bc": {"learning_rate": Range(1e-4, 1e-2, log=True)},
    "pct-bc": {"learning_rate": Range(1e-4, 1e-2, log=True),
               "top_fraction": Choice((0.05, 0.1, 0.25, 0.5))},
}


@dataclass
class ReferenceConfig:
    """Train one reference row with d3rlpy and evaluate it (``offline-dt reference``)."""

    dataset: str = field(default="", metadata={
        "help": "D4RL HDF5 file, Minari dataset directory or Minari id (required)"})
    method: str = field(default="iql", metadata={
        "help": "iql (d3rlpy IQL defaults), mlp-bc (MLP BC on single states) or pct-bc "
                "(the MLP BC on the top_fraction best episodes)",
        "choices": list(REFERENCE_METHODS)})
    minari_root: Path | None = field(default=None, metadata={
        "help": "Minari datasets root for a Minari id"})
    download: bool = field(default=False, metadata={
        "help": "fetch a Minari id found nowhere on disk from the Minari remote "
                "($MINARI_REMOTE) into minari_root first"})
    env_id: str | None = field(default=None, metadata={
        "help": "Gymnasium env id; unset: the dataset's"})
    seed: int = field(default=0, metadata={
        "help": "training seed (d3rlpy.seed: Python, NumPy and torch) and evaluation seed: "
                "test episode i resets with 10**12 + seed * 100000 + i"})
    steps: int = field(default=10_000, metadata={"help": "gradient updates"})
    top_fraction: float = field(default=0.1, metadata={
        "help": "pct-bc: fraction of episodes kept, best returns first (at least one)"})
    learning_rate: float | None = field(default=None, metadata={
        "help": "Adam learning rate (iql: actor and critics alike); unset: d3rlpy's default "
                "(iql 3e-4, mlp-bc and pct-bc 1e-3)"})
    expectile: float | None = field(default=None, metadata={
        "help": "iql: the value function's expectile tau in (0, 1); unset: d3rlpy's 0.7"})
    weight_temp: float | None = field(default=None, metadata={
        "help": "iql: the actor's inverse temperature beta >= 0 (advantage weight "
                "exp(beta A), at most 100); unset: d3rlpy's 3"})
    log_every: int = field(default=0, metadata={
        "help": "updates per metrics.csv row; 0: steps // 10"})
    episodes: int = field(default=200, metadata={"help": "test episodes"})
    device: str = field(default="auto", metadata={
        "help": "torch device", "choices": ["auto", "cpu", "cuda"]})
    max_envs: int = field(default=DEFAULT_MAX_ENVS, metadata={
        "help": "most envs stepped at once (more episodes run in waves)"})
    run_dir: Path | None = field(default=None, metadata={
        "help": "output directory; unset: data/runs/reference/<dataset>/<method>/seed<k>"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace a run directory that holds a different run"})

    def __post_init__(self) -> None:
        if self.method not in REFERENCE_METHODS:
            raise ValueError(f"ReferenceConfig.method must be one of {list(REFERENCE_METHODS)}, "
                             f"found {self.method!r}")
        if self.steps < 1 or self.episodes < 1 or self.log_every < 0:
            raise ValueError(f"ReferenceConfig: steps and episodes must be >= 1 and log_every "
                             f">= 0, found steps={self.steps}, episodes={self.episodes}, "
                             f"log_every={self.log_every}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"ReferenceConfig.top_fraction must be in (0, 1], found "
                             f"{self.top_fraction}")
        self._validate_hyperparameters()

    def _validate_hyperparameters(self) -> None:
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"ReferenceConfig.learning_rate must be > 0, found "
                             f"{self.learning_rate}")
        for name, ok in (("expectile", lambda v: 0.0 < v < 1.0),
                         ("weight_temp", lambda v: v >= 0.0)):
            value = getattr(self, name)
            if value is None:
                continue
            if self.method != "iql":
                raise ValueError(f"ReferenceConfig.{name} is an iql hyperparameter; method "
                                 f"{self.method!r} has none")
            if not ok(value):
                raise ValueError(f"ReferenceConfig.{name}: {value} is out of range "
                                 f"(expectile in (0, 1), weight_temp >= 0)")

    def hyperparameters(self) -> dict[str, float]:
        """The d3rlpy config fields this config sets over d3rlpy's defaults."""
        lr = {} if self.learning_rate is None else (
            {"actor_learning_rate": self.learning_rate,
             "critic_learning_rate": self.learning_rate} if self.method == "iql"
            else {"learning_rate": self.learning_rate})
        return {**lr, **{k: getattr(self, k) for k in ("expectile", "weight_temp")
                         if getattr(self, k) is not None}}

    def resolved_run_dir(self) -> Path:
        """``run_dir``, or ``data/runs/reference/<dataset name>/<method>/seed<k>``."""
        if self.run_dir is not None:
            return Path(self.run_dir)
        name = Path(self.dataset).stem if self.dataset.endswith((".hdf5", ".h5")) else (
            self.dataset.replace("/", "-"))
        return Path("data/runs/reference") / name / self.method / f"seed{self.seed}"


def top_episodes(returns: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``max(1, int(fraction * E))`` episodes with the highest return, best
    first (ties: the earlier episode first), as CORL's ``any_percent_bc`` keeps them.

    Args:
        returns: ``(E,)`` episode returns.
        fraction: in ``(0, 1]``.

    Returns:
        ``(k,) int64`` episode indices.
    """
    r = np.asarray(returns, np.float64)
    keep = max(1, int(fraction * r.size))
    return np.argsort(-r, kind="stable")[:keep].astype(np.int64)


def make_algo(method: str, ds: OfflineDataset, device: str = "cpu",
              hyperparameters: dict[str, float] | None = None) -> Any:
    """A d3rlpy algorithm for ``method`` (defaults plus the action scaler, see the module
    docstring, and ``hyperparameters``: d3rlpy config fields,
    :meth:`ReferenceConfig.hyperparameters`), not yet built.

    Raises:
        ValueError: unknown method, or ``iql`` on Discrete actions.
    """
    d3rlpy = import_d3rlpy()
    dev = resolve_device(device)
    d3_device = f"{dev.type}:{dev.index or 0}"
    if method not in REFERENCE_METHODS:
        raise ValueError(f"method must be one of {list(REFERENCE_METHODS)}, found {method!r}")
    if ds.discrete:
        if method == "iql":
            raise ValueError(f"method 'iql' needs a Box action space (d3rlpy's IQL is for "
                             f"continuous actions); {ds.source} has {ds.action_space}")
        return d3rlpy.algos.DiscreteBCConfig(**(hyperparameters or {})).create(
            device=d3_device)
    low, high = action_bounds(ds)
    scaler = d3rlpy.preprocessing.MinMaxActionScaler(minimum=low, maximum=high)
    config = d3rlpy.algos.IQLConfig if method == "iql" else d3rlpy.algos.BCConfig
    return config(action_scaler=scaler, **(hyperparameters or {})).create(device=d3_device)


# ---------------------------------------------------------------------------------- training
def reference_dataset(cfg: ReferenceConfig) -> tuple[OfflineDataset, str]:
    """The dataset and the (registered) env id to evaluate on. A Dict or image dataset is
    trained on its flat view (``offline_dt.study.d3rlpy_io``: the leaves in sorted key order,
    concatenated), the observations the rollout engine gives the trained policy.

    Raises:
        offline_dt.envs.spaces.SpaceMismatchError: the env's spaces do not fit the dataset's
            (a Dict's leaves compared key by key, naming the key), before any training.
    """
    ds = load_dataset(cfg.dataset, cfg.minari_root, env_id=cfg.env_id, download=cfg.download)
    env_id = cfg.env_id or registered_id(ds.metadata.get("env_id"), cfg.dataset)
    require_spaces(env_id, ds.observation_space, ds.action_space, f"dataset {cfg.dataset}")
    return ds, env_id


def training_episodes(cfg: ReferenceConfig, ds: OfflineDataset) -> np.ndarray:
    """Episode indices trained on: all, or for ``pct-bc`` :func:`top_episodes`."""
    if cfg.method == "pct-bc":
        return top_episodes(ds.episode_returns, cfg.top_fraction)
    return np.arange(ds.num_episodes, dtype=np.int64)


def fit(algo: Any, buffer: Any, method: str, steps: int, log_every: int,
        callback: Callable[[Any, int], None] | None = None) -> pd.DataFrame:
    """``steps`` d3rlpy updates on batches sampled from ``buffer`` (NumPy's global RNG, which
    ``d3rlpy.seed`` seeds); one row per ``log_every`` updates: ``step``, ``loss``
    (:data:`LOSS_TERMS`), d3rlpy's mean losses over the interval, ``seconds`` since the start.
    ``callback(algo, step)`` runs after every update (a search's learning curve; what it
    raises ends the training)."""
    algo.build_with_dataset(buffer)
    rows, acc, start = [], {}, time.perf_counter()
    for step in range(1, steps + 1):
        batch = buffer.sample_transition_batch(algo.config.batch_size)
        for k, v in algo.update(batch).items():
            acc.setdefault(k, []).append(float(v))
        if callback is not None:
            callback(algo, step)
        if step % log_every == 0 or step == steps:
            means = {k: float(np.mean(v)) for k, v in acc.items()}
            rows.append({"step": step, "loss": sum(means[k] for k in LOSS_TERMS[method]),
                         **means, "seconds": time.perf_counter() - start})
            acc = {}
    return pd.DataFrame(rows)


def train_reference(cfg: ReferenceConfig, callback: Callable[[Any, int], None] | None = None
                    ) -> Any:
    """Train ``cfg.method`` on ``cfg.dataset`` and write ``metrics.csv``,
    ``weights.safetensors`` and, last, ``config.json`` into the run directory
    (``callback``: :func:`fit`'s).

    Seeding: ``d3rlpy.seed(cfg.seed)`` (Python ``random``, NumPy's global RNG, torch) before
    the networks are built, so a run is repeated exactly on the same machine and threads.

    Returns:
        The trained d3rlpy algorithm.

    Raises:
        MissingDependencyError: d3rlpy missing. ValueError: ``iql`` on Discrete actions.
    """
    d3rlpy = import_d3rlpy()
    run_dir = cfg.resolved_run_dir()
    ds, env_id = reference_dataset(cfg)
    keep = training_episodes(cfg, ds)
    d3rlpy.seed(cfg.seed)
    algo = make_algo(cfg.method, ds, cfg.device, cfg.hyperparameters())
    buffer = to_replay_buffer(ds, keep)
    log.info("%s: training %s on %s (%d of %d episodes, %d transitions), %d updates",
             run_dir, cfg.method, cfg.dataset, len(keep), ds.num_episodes,
             buffer.transition_count, cfg.steps)
    t = time.perf_counter()
    metrics = fit(algo, buffer, cfg.method, cfg.steps, cfg.log_every or max(1, cfg.steps // 10),
                  callback)
    seconds = time.perf_counter() - t
    with atomic_path(run_dir / "metrics.csv", overwrite=True) as tmp:
        metrics.to_csv(tmp, index=False)
    save_weights(algo, run_dir / WEIGHTS_NAME)
    rets = ds.episode_returns[keep]
    save_json({"reference_config": cfg, "method": cfg.method, "env_id": env_id,
               "d3rlpy_version": d3rlpy.__version__, "torch_version": torch.__version__,
               "algorithm": json.loads(algo.config.serialize()),
               "dataset": {"dataset": cfg.dataset, "summary": ds.summary(),
                           "checksum": ds.checksum(), "episodes_trained": keep.tolist(),
                           "transitions_trained": int(buffer.transition_count),
                           "return_min_trained": float(rets.min()),
                           "return_max_trained": float(rets.max())},
               "train_seconds": seconds}, run_dir / "config.json")
    return algo


def load_reference(run_dir: str | Path, device: str = "cpu") -> Any:
    """The trained algorithm of a reference run directory, from its ``config.json`` and
    ``weights.safetensors`` (nothing is unpickled).

    Raises:
        FileNotFoundError: either file missing. ValueError: the weights do not fit.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", WEIGHTS_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: not found (no finished reference run)")
    saved = json.loads((run_dir / "config.json").read_text())["reference_config"]
    cfg = ReferenceConfig(**{k: v for k, v in saved.items() if k in TRAIN_FIELDS})
    ds, _ = reference_dataset(cfg)
    algo = make_algo(cfg.method, ds, device, cfg.hyperparameters())
    algo.create_impl((ds.obs_dim,), ds.act_dim)
    try:
        load_weights(algo, run_dir / WEIGHTS_NAME)
    except RuntimeError as e:
        raise ValueError(f"{run_dir / WEIGHTS_NAME}: weights do not fit {cfg.method} ({e})") from e
    return algo


def policy_values(algo: Any, observations: np.ndarray, samples: int = 10, seed: int = 0,
                  batch_size: int = 65536) -> np.ndarray:
    """``V(s) = mean_k Q(s, a_k)``, ``a_k ~ pi(.|s)``: the value of a trained d3rlpy
    algorithm's own policy at each observation (as d3rlpy's QDT reproduction computes it for
    relabelling, :mod:`offline_dt.data.relabel`).

    Args:
        algo: a trained algorithm with ``sample_action`` and ``predict_value`` (``iql``;
            :func:`load_reference`).
        observations: ``(N, obs_dim) float32``.
        samples: actions sampled per observation.
        seed: seeds d3rlpy's sampling (``d3rlpy.seed``).

    Returns:
        ``(N,) float64`` values in the dataset's reward units (d3rlpy's defaults scale no
        reward), discounted by the algorithm's gamma.
    """
    import_d3rlpy().seed(seed)
    obs = np.asarray(observations, dtype=np.float32)
    out = np.empty(len(obs), dtype=np.float64)
    for a in range(0, len(obs), batch_size):
        part = obs[a:a + batch_size]
        out[a:a + batch_size] = np.mean(
            [algo.predict_value(part, algo.sample_action(part)) for _ in range(samples)],
            axis=0)
    return out


# ---------------------------------------------------------------------------------- evaluation
def eval_request(cfg: ReferenceConfig, env_id: str) -> dict[str, Any]:
    """What an ``eval.json`` of this run must have been written for, to be reused."""
    return {"method": cfg.method, "env_id": env_id, "episodes": cfg.episodes, "seed": cfg.seed,
            "episode_seeds": SEED_RULES["test"]}


def _set_here(cfg: ReferenceConfig) -> str:
    """``", learning_rate 0.001, ..."``: the hyperparameters ``cfg`` sets (empty: none)."""
    return "".join(f", {k} {getattr(cfg, k)}" for k in ("learning_rate", "expectile",
                                                         "weight_temp")
                   if getattr(cfg, k) is not None)


def evaluate_reference(cfg: ReferenceConfig, algo: Any, env_id: str, ds: OfflineDataset
                       ) -> dict[str, Any]:
    """Roll ``algo.predict`` out on the ``cfg.episodes`` test episodes of evaluation seed
    ``cfg.seed`` (the episodes of ``dt`` and ``bc`` of training seed ``cfg.seed``) and write
    ``eval.json`` (the shared schema; ``config`` is :func:`eval_request`)."""
    policy = CallablePolicy(algo.predict)
    return write_baseline_eval(
        cfg.resolved_run_dir() / "eval.json", cfg.method, env_id, policy, cfg.episodes,
        cfg.seed, ref_min_score=ds.metadata.get("ref_min_score"),
        ref_max_score=ds.metadata.get("ref_max_score"), max_envs=cfg.max_envs,
        headline_rule=f"single evaluation ({cfg.method}: d3rlpy defaults{_set_here(cfg)}, "
                      "no target return or setting chosen)",
        extra={"config": eval_request(cfg, env_id), "dataset": cfg.dataset,
               "reference": "d3rlpy " + D3RLPY_VERSION})


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def same_training(saved: dict[str, Any] | None, cfg: ReferenceConfig) -> bool:
    """``saved`` (a run's ``config.json``) trained what ``cfg`` asks for
    (:data:`TRAIN_FIELDS`; a field it lacks reads as None)."""
    if not saved or not isinstance(saved.get("reference_config"), dict):
        return False
    now = to_jsonable(cfg)
    return all(saved["reference_config"].get(k) == now[k] for k in TRAIN_FIELDS)


def run_reference(cfg: ReferenceConfig) -> tuple[dict[str, Any], dict[str, float]]:
    """Train (or reuse) and evaluate (or reuse) one reference run; return (eval.json, seconds
    per stage: ``train``, ``evaluate``; 0 where reused).

    Reuse: a run directory whose ``config.json`` has the same :data:`TRAIN_FIELDS` and whose
    weights exist is not trained again; its ``eval.json`` is reused when written for
    :func:`eval_request`, else the saved weights are evaluated again.

    Raises:
        FileExistsError: the run directory holds a different run and ``overwrite`` is False.
        MissingDependencyError, ValueError: see :func:`train_reference`.
    """
    run_dir = cfg.resolved_run_dir()
    ds, env_id = reference_dataset(cfg)
    saved = _read_json(run_dir / "config.json")
    seconds = {"train": 0.0, "evaluate": 0.0}
    if same_training(saved, cfg) and (run_dir / WEIGHTS_NAME).is_file():
        ev = _read_json(run_dir / "eval.json")
        if ev is not None and ev.get("config") == eval_request(cfg, env_id):
            return ev, seconds
        algo = load_reference(run_dir, cfg.device)
    else:
        if saved is not None and not cfg.overwrite:
            raise FileExistsError(f"{run_dir} holds a different run (config.json); pass "
                                  "--overwrite (overwrite=True) to replace it")
        for name in ("config.json", "eval.json", WEIGHTS_NAME, "metrics.csv"):
            (run_dir / name).unlink(missing_ok=True)
        t = time.perf_counter()
        algo = train_reference(cfg)
        seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate_reference(cfg, algo, env_id, ds)
    seconds["evaluate"] = time.perf_counter() - t
    log.info("%s %s: mean %.2f, episode-level 95%% CI ± %.2f (%d test episodes)", run_dir,
             cfg.method, ev["mean_return"], ev["ci95"], ev["episodes"])
    return ev, seconds

