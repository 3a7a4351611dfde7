"""What a run trains on: the dataset checked against the env, its normaliser and the dataset
facts saved with the run (:func:`load_data`), or a suite of datasets of several envs for a
multi-task method (:func:`load_suite`, ``offline_dt.data.suite``), or, for a run without a
dataset, the env's spaces (:func:`env_data`); :func:`data_shape` is what sizes the networks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from offline_dt.data import load_dataset
from offline_dt.data.dataset import DatasetError, OfflineDataset
from offline_dt.data.layout import (
    IMAGE_SCALE,
    Layout,
    layout_mismatch,
    layout_to_json,
    layout_width,
    pruned_space,
)
from offline_dt.data.space_codec import space_to_json
from offline_dt.data.suite import (
    Suite,
    normalizer_from_json,
    normalizer_to_json,
    suite_members,
    widths,
)
from offline_dt.data.windows import Normalizer
from offline_dt.envs.make import EnvDependencyError, make_env
from offline_dt.envs.rollout import env_layout
from offline_dt.methods import METHODS
from offline_dt.training.checkpoint import CHECKPOINT_NAME, normalizer_from_tensors
from offline_dt.training.train_config import TrainConfig

log = logging.getLogger(__name__)


def check_env_spaces(dataset: OfflineDataset, env_id: str) -> OfflineDataset:
    """Make sure ``dataset`` fits ``gym.make(env_id)``.

    Observation shape, action space type and shape (or ``n``) must match. Box bounds that
    differ (e.g. a D4RL file whose bounds were inferred from the data) are replaced by the
    env's when every action lies inside them, else rejected.

    Raises:
        DatasetError: naming the dataset, the env and expected vs found.
    """
    try:
        env = make_env(env_id)
    except EnvDependencyError:
        raise
    except Exception as e:  # gymnasium raises several types for unknown ids
        raise ValueError(f"env_id {env_id!r}: gym.make failed ({e})") from e
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    src = dataset.source
    if dataset.layout is not None or not isinstance(obs_space, gym.spaces.Box):
        why = layout_mismatch(obs_space, dataset.observation_space)
        if why:
            raise DatasetError(f"{src}: does not fit env {env_id}: {why} (the env's "
                               f"observation space {obs_space}, the dataset's "
                               f"{dataset.observation_space})")
    elif getattr(obs_space, "shape", None) != dataset.observation_space.shape:
        raise DatasetError(
            f"{src}: observation space {dataset.observation_space} does not match env "
            f"{env_id}'s {obs_space} (expected shape {getattr(obs_space, 'shape', None)}, "
            f"found {dataset.observation_space.shape})")
    mismatch = DatasetError(
        f"{src}: action space {dataset.action_space} does not match env {env_id}'s {act_space}")
    if isinstance(act_space, gym.spaces.Discrete):
        if not dataset.discrete or int(dataset.action_space.n) != int(act_space.n):
            raise mismatch
        return dataset
    if not isinstance(act_space, gym.spaces.Box) or dataset.discrete \
            or dataset.action_space.shape != act_space.shape:
        raise mismatch
    if (np.allclose(dataset.action_space.low, act_space.low)
            and np.allclose(dataset.action_space.high, act_space.high)):
        return dataset
    low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
    if (dataset.actions < low - 1e-6).any() or (dataset.actions > high + 1e-6).any():
        raise DatasetError(f"{mismatch} and the actions leave the env's bounds")
    log.info("%s: using %s's action bounds %s", src, env_id, act_space)
    return dataclasses.replace(dataset, action_space=act_space)


def dataset_info(dataset: OfflineDataset, cfg: TrainConfig, rtg_scale: float) -> dict[str, Any]:
    """Dataset facts saved with the run (what the evaluator and the report need)."""
    meta = dataset.metadata
    s = dataset.summary()
    return {
        **s,
        "env_id": cfg.env_id or meta.get("env_id") or "",
        "dataset": cfg.dataset,
        "dataset_id": meta.get("dataset_id", ""),
        "source": dataset.source,
        "checksum": dataset.checksum(),
        "best_return": s["return_max"],
        "ref_min_score": meta.get("ref_min_score"),
        "ref_max_score": meta.get("ref_max_score"),
        "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim,
        "discrete": dataset.discrete,
        "observation_space": json.loads(space_to_json(dataset.observation_space)),
        "action_space": json.loads(space_to_json(dataset.action_space)),
        "longest_episode": int(dataset.episode_lengths.max()),
        "rtg_scale": rtg_scale,
        **_layout_entry(dataset.layout),
    }


def load_data(cfg: TrainConfig, resumed: dict[str, Any] | None, origin: Path | None = None
              ) -> tuple[OfflineDataset | Suite | None, Normalizer, dict[str, Any]]:
    """The dataset (checked against ``env_id``), its normaliser and facts: refitted for a
    new run, the checkpoint's own on resume or a warm start from the checkpoint ``origin``
    (after checking the data did not change). Without ``cfg.dataset``, no dataset and the
    env's facts (:func:`env_data`). A multi-task method (``Method.multi_task``) always gets a
    :class:`~offline_dt.data.suite.Suite` (:func:`load_suite`; of one dataset when
    ``cfg.dataset`` names one)."""
    if not cfg.dataset:
        return None, *env_data(cfg, resumed, origin)
    if METHODS[cfg.method].multi_task:
        return load_suite(cfg, suite_members(cfg.dataset) or [cfg.dataset], resumed, origin)
    dataset = load_dataset(cfg.dataset, cfg.minari_root, env_id=cfg.env_id,
                           download=cfg.download)
    if cfg.env_id:
        dataset = check_env_spaces(dataset, cfg.env_id)
    if resumed is None:
        normalizer = Normalizer.fit(dataset, cfg.rtg_scale)
        return dataset, normalizer, dataset_info(dataset, cfg, normalizer.rtg_scale)
    info = json.loads(resumed["dataset_info"])
    if info.get("checksum") != dataset.checksum():
        raise ValueError(
            f"{origin or Path(cfg.run_dir) / CHECKPOINT_NAME}: dataset {cfg.dataset} has checksum "
            f"{dataset.checksum()[:12]}…, the checkpoint was trained on "
            f"{str(info.get('checksum'))[:12]}…")
    return dataset, normalizer_from_tensors(resumed["normalizer"]), info


def data_shape(dataset: OfflineDataset | Suite | None, info: dict[str, Any]
               ) -> dict[str, Any]:
    """What sizes the networks and checks the budget: ``obs_dim``, ``act_dim``, ``discrete``,
    ``longest_episode``, ``source`` and ``obs_layout`` (a Dict or image space's leaves,
    ``offline_dt.data.layout``; None for a flat Box), the dataset's (when there is one) else
    ``info``'s. A suite's: its widest observation and Box action (``discrete`` False), its
    longest episode, and ``tasks`` (``DTConfig.tasks``)."""
    if isinstance(dataset, Suite):
        obs_w, box_w, _ = widths(dataset.tasks())
        return {"obs_dim": obs_w, "act_dim": box_w, "discrete": False,
                "source": dataset.source, "obs_layout": None, "tasks": dataset.tasks(),
                "longest_episode": max(int(d.episode_lengths.max()) for d in dataset.datasets)}
    if dataset is None:
        return {**{k: info[k] for k in ("obs_dim", "act_dim", "discrete", "longest_episode",
                                        "source")}, "obs_layout": info.get("obs_layout")}
    return {"obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim,
            "discrete": dataset.discrete, "source": dataset.source,
            "longest_episode": int(dataset.episode_lengths.max()),
            "obs_layout": layout_to_json(dataset.layout)}


def suite_datasets(cfg: TrainConfig, names: list[str]
                   ) -> list[tuple[str, str, OfflineDataset]]:
    """(name, env id, dataset) of each of the datasets ``names`` of a suite, each checked
    against its env: ``cfg.env_id``'s comma-separated ids in order, else its own
    ``metadata/env_id``.

    Raises:
        ValueError: a dataset without an env id; two datasets of one env.
        DatasetError: a dataset that does not fit its env (``check_env_spaces``).
    """
    env_ids = suite_members(cfg.env_id) or ([cfg.env_id] if cfg.env_id else [None] * len(names))
    datasets: list[tuple[str, str, OfflineDataset]] = []
    for name, env in zip(names, env_ids, strict=True):
        ds = load_dataset(name, cfg.minari_root, env_id=env, download=cfg.download)
        env = env or ds.metadata.get("env_id")
        if not env:
            raise ValueError(f"{ds.source}: a dataset of a suite needs its env id: its "
                             f"metadata/env_id is empty; pass --env-id with one id per dataset")
        if env in [e for _, e, _ in datasets]:
            raise ValueError(f"TrainConfig.dataset: env {env} has two datasets in the suite "
                             f"({name} and another); a suite holds one dataset per env")
        datasets.append((name, env, check_env_spaces(ds, env)))
    return datasets


def load_suite(cfg: TrainConfig, names: list[str], resumed: dict[str, Any] | None,
               origin: Path | None = None) -> tuple[Suite, Normalizer, dict[str, Any]]:
    """The :class:`~offline_dt.data.suite.Suite` of the datasets ``names``, each checked
    against its env (``cfg.env_id``'s comma-separated ids in order, else its own
    ``metadata/env_id``), with its own normaliser: fitted for a new run, the checkpoint's on
    resume or a warm start (after checking each dataset's checksum). The facts
    (:func:`suite_info`) record every env; the returned normaliser is the first env's (what
    the checkpoint's ``normalizer`` holds; each env's own is in ``dataset_info["suite"]``).

    Raises:
        ValueError: a dataset without an env id; a dataset whose checksum differs from the
            checkpoint's; another number of datasets than the checkpoint's.
        DatasetError: a dataset that does not fit its env (``check_env_spaces``).
    """
    datasets = suite_datasets(cfg, names)
    if resumed is None:
        norms = [Normalizer.fit(ds, cfg.rtg_scale) for _, _, ds in datasets]
        suite = Suite(tuple(d for *_, d in datasets), tuple(e for _, e, _ in datasets),
                      tuple(norms))
        return suite, norms[0], suite_info(cfg, suite, names)
    info = json.loads(resumed["dataset_info"])
    saved = info.get("suite") or []
    where = origin or Path(cfg.run_dir) / CHECKPOINT_NAME
    if len(saved) != len(datasets):
        raise ValueError(f"{where}: trained on a suite of {len(saved)} datasets, "
                         f"TrainConfig.dataset names {len(datasets)}")
    for (name, _, ds), member in zip(datasets, saved, strict=True):
        if member.get("checksum") != ds.checksum():
            raise ValueError(f"{where}: dataset {name} has checksum {ds.checksum()[:12]}…, "
                             f"the checkpoint was trained on {str(member.get('checksum'))[:12]}…")
    norms = [normalizer_from_json(m["normalizer"]) for m in saved]
    suite = Suite(tuple(d for *_, d in datasets), tuple(m["env_id"] for m in saved),
                  tuple(norms))
    return suite, norms[0], info


def suite_info(cfg: TrainConfig, suite: Suite, names: list[str]) -> dict[str, Any]:
    """A suite's facts: ``suite``, one :func:`dataset_info` per env (its ``env_id``, spaces,
    reference scores, best return, checksum) with its ``normalizer``
    (``offline_dt.data.suite.normalizer_to_json``) and ``index``; ``env_ids``; and the
    suite-wide ``obs_dim``/``act_dim`` (widest), ``longest_episode``, ``source`` and
    ``checksum`` (of the members' checksums). The single-env keys that evaluation reads
    (``env_id``, spaces, reference scores) are left out: evaluation picks an env's entry
    (``offline_dt.training.checkpoint.load_checkpoint``)."""
    members = [suite_member(cfg, name, env, ds, norm, i) for i, (name, env, ds, norm) in
               enumerate(zip(names, suite.env_ids, suite.datasets, suite.normalizers,
                             strict=True))]
    obs_w, box_w, _ = widths(suite.tasks())
    joined = "".join(m["checksum"] for m in members).encode()
    return {"suite": members, "env_ids": list(suite.env_ids), "dataset": cfg.dataset,
            "dataset_id": "", "source": suite.source, "obs_dim": obs_w, "act_dim": box_w,
            "checksum": hashlib.sha256(joined).hexdigest(),
            "longest_episode": max(m["longest_episode"] for m in members)}


def suite_member(cfg: TrainConfig, name: str, env: str, ds: OfflineDataset, norm: Normalizer,
                 index: int) -> dict[str, Any]:
    """One env's entry of a suite's facts (``dataset_info["suite"]``): :func:`dataset_info`
    of its dataset ``name`` in ``env``, its ``index`` in the network's envs and its
    ``normalizer`` (``offline_dt.data.suite.normalizer_to_json``)."""
    own = dataclasses.replace(cfg, dataset=name, env_id=env)
    return {**dataset_info(ds, own, norm.rtg_scale), "index": int(index),
            "normalizer": normalizer_to_json(norm)}


def env_data(cfg: TrainConfig, resumed: dict[str, Any] | None, origin: Path | None
             ) -> tuple[Normalizer, dict[str, Any]]:
    """A run without a dataset (its batch source collects from ``cfg.env_id``): the
    normaliser and facts of the env's spaces. A new run's normaliser leaves observations as
    they are (mean 0, std 1) with the env's action bounds and ``rtg_scale`` (default 1);
    resumed, the checkpoint's; warm-started from ``origin``, that checkpoint's observation
    statistics (what its networks were trained on) with the env's action bounds.

    Raises:
        ValueError: no ``env_id``; ``gym.make`` fails; an unbounded Box action space; the
            ``origin`` checkpoint's observations have another width than the env's.
    """
    if not cfg.env_id:
        raise ValueError("TrainConfig.dataset or TrainConfig.env_id is required: a run "
                         "without a dataset takes its spaces from env_id")
    if resumed is not None and origin is None:
        return normalizer_from_tensors(resumed["normalizer"]), json.loads(
            resumed["dataset_info"])
    try:
        env = make_env(cfg.env_id)
    except EnvDependencyError:
        raise
    except Exception as e:  # gymnasium raises several types for unknown ids
        raise ValueError(f"TrainConfig.env_id {cfg.env_id!r}: gym.make failed ({e})") from e
    obs_space, act_space, spec = env.observation_space, env.action_space, env.spec
    env.close()
    discrete = isinstance(act_space, gym.spaces.Discrete)
    low = np.zeros(0, np.float32) if discrete else act_space.low.astype(np.float32).ravel()
    high = np.zeros(0, np.float32) if discrete else act_space.high.astype(np.float32).ravel()
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(f"TrainConfig.env_id {cfg.env_id!r}: Box action space must be "
                         f"bounded, found {act_space}")
    layout = env_layout(obs_space, cfg.env_id)
    obs_dim = layout_width(layout) if layout else int(np.prod(obs_space.shape))
    normalizer = Normalizer(np.zeros(obs_dim, np.float32), layout_scale(layout, obs_dim),
                            float(cfg.rtg_scale or 1.0), low, high)
    if resumed is not None:
        saved = normalizer_from_tensors(resumed["normalizer"])
        if saved.state_mean.shape != (obs_dim,):
            raise ValueError(f"{origin}: its observations have {saved.state_mean.shape[0]} "
                             f"dimensions, env {cfg.env_id}'s {obs_dim}")
        normalizer = dataclasses.replace(normalizer, state_mean=saved.state_mean,
                                         state_std=saved.state_std)
    longest = (spec.max_episode_steps if spec is not None else None) or cfg.max_timestep
    info = {"env_id": cfg.env_id, "dataset": "", "dataset_id": "",
            "source": f"env {cfg.env_id}", "checksum": None, "best_return": None,
            "ref_min_score": None, "ref_max_score": None, "obs_dim": obs_dim,
            "act_dim": int(act_space.n) if discrete else int(np.prod(act_space.shape)),
            "discrete": discrete,
            "observation_space": json.loads(space_to_json(pruned_space(obs_space))),
            **_layout_entry(layout),
            "action_space": json.loads(space_to_json(act_space)),
            "longest_episode": int(longest), "rtg_scale": normalizer.rtg_scale,
            "init_checkpoint": None if origin is None else str(origin)}
    return normalizer, info



def layout_scale(layout: Layout | None, obs_dim: int) -> np.ndarray:
    """``(obs_dim,) float32`` std of a normaliser without data: 1, but 255 for image columns
    (scaled to [0, 1], as ``Normalizer.fit`` scales them)."""
    if layout is None:
        return np.ones(obs_dim, np.float32)
    return np.concatenate([np.full(leaf.width, IMAGE_SCALE if leaf.kind == "image" else 1.0)
                           for leaf in layout]).astype(np.float32)


def _layout_entry(layout: Layout | None) -> dict[str, Any]:
    """``{"obs_layout": [...]}`` for a Dict or image space, nothing for a flat Box (whose
    runs' facts stay as they were)."""
    return {} if layout is None else {"obs_layout": layout_to_json(layout)}
