"""Minari datasets, written and read through Minari's own API.

Minari layout (minari 0.5): an episode holds ``observations (T+1, obs_dim)``,
``actions (T, ...)``, ``rewards (T,)``, ``terminations (T,)``, ``truncations (T,)``. Datasets
live under a root directory (default ``data/minari``; the ``MINARI_DATASETS_PATH``
environment variable overrides it) at ``<root>/<namespace>/<name>-v<version>/data``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from offline_dt.data.atomic import atomic_path, remove_stale_temporaries
from offline_dt.data.dataset import DatasetError, OfflineDataset, check_plain_env_id

DEFAULT_MINARI_ROOT = Path("data") / "minari"


def minari_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets root: ``root`` if given, else ``$MINARI_DATASETS_PATH``, else data/minari."""
    if root is not None:
        return Path(root)
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else DEFAULT_MINARI_ROOT


def minari_dataset_id(env_name: str, level: str, version: int = 0) -> str:
    """Minari id for a generated dataset, e.g. ``pendulum/medium-v0``."""
    return f"{env_name}/{level}-v{version}"


@contextlib.contextmanager
def _datasets_path(root: Path) -> Iterator[None]:
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root.resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_minari(
    dataset: OfflineDataset,
    dataset_id: str,
    root: str | os.PathLike | None = None,
    overwrite: bool = False,
    description: str | None = None,
) -> Path:
    """Write ``dataset`` as the Minari dataset ``dataset_id`` under ``root``, atomically.

    Uses ``minari.create_dataset_from_buffers`` with one ``EpisodeBuffer`` per episode (no jax
    needed). ``ref_min_score``/``ref_max_score`` from ``dataset.metadata`` are stored so
    ``minari.get_normalized_score`` works. The dataset is built under a temporary root and
    moved into place when complete.

    Returns:
        The dataset's directory ``<root>/<dataset_id>``.

    Raises:
        FileExistsError: the dataset exists and ``overwrite`` is False.
    """
    import minari

    final = minari_root(root) / dataset_id
    remove_stale_temporaries(final.parent / "namespace_metadata.json")
    buffers = _episode_buffers(dataset)
    arguments = _minari_arguments(dataset, dataset_id, description)
    with atomic_path(final, overwrite=overwrite) as tmp_dir:
        tmp_root = tmp_dir.with_name(tmp_dir.name + "-root")
        shutil.rmtree(tmp_root, ignore_errors=True)
        try:
            with _datasets_path(tmp_root), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                minari.create_dataset_from_buffers(buffer=buffers, **arguments)
            os.replace(tmp_root / dataset_id, tmp_dir)
            ns_meta = (tmp_root / dataset_id).parent / "namespace_metadata.json"
            ns_final = final.parent / ns_meta.name
            if ns_meta.exists() and not ns_final.exists():
                with atomic_path(ns_final) as ns_tmp:
                    shutil.copy(ns_meta, ns_tmp)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def _episode_buffers(dataset: OfflineDataset) -> list[Any]:
    """One ``minari`` ``EpisodeBuffer`` per episode, holding its T+1 observations."""
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i in range(dataset.num_episodes):
        ep = dataset.episode(i)
        obs = np.concatenate([ep["observations"], ep["next_observations"][-1:]])
        buffers.append(EpisodeBuffer(
            id=i,
            observations=obs,
            actions=ep["actions"],
            rewards=ep["rewards"],
            terminations=ep["terminals"],
            truncations=ep["timeouts"],
            infos={},
        ))
    return buffers


def _minari_arguments(dataset: OfflineDataset, dataset_id: str, description: str | None
                      ) -> dict[str, Any]:
    """Keyword arguments of ``minari.create_dataset_from_buffers`` (all but the buffers):
    spaces, env id, agent name and reference scores from ``dataset.metadata``."""
    meta = dataset.metadata
    scores = {}
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        scores = {"ref_min_score": float(meta["ref_min_score"]),
                  "ref_max_score": float(meta["ref_max_score"])}
    env_id = meta.get("env_id")
    return {
        "dataset_id": dataset_id,
        "env": env_id if env_id else None,
        "observation_space": dataset.observation_space,
        "action_space": dataset.action_space,
        "algorithm_name": str(meta.get("agent", "unknown")),
        "author": "offline-dt",
        "author_email": "offline-dt@users.noreply.invalid",
        "code_permalink": "offline-dt datagen",
        "description": description or f"{dataset_id} generated by offline-dt",
        **scores,
    }


def resolve_minari_path(id_or_path: str | os.PathLike, root: str | os.PathLike | None = None
                        ) -> Path | None:
    """The ``data`` directory of a Minari dataset given by id or path, or None if absent."""
    p = Path(id_or_path)
    for cand in (p / "data", p, minari_root(root) / str(id_or_path) / "data"):
        if (cand / "metadata.json").is_file() or (cand / "main_data.hdf5").is_file():
            return cand
    return None


def read_minari(id_or_path: str | os.PathLike, root: str | os.PathLike | None = None
                ) -> OfflineDataset:
    """Read a Minari dataset (by id under ``root`` or by directory) into an OfflineDataset.

    Each episode's T+1 observations become ``observations`` (first T) and
    ``next_observations`` (last T).

    The metadata is checked before Minari opens the dataset: it must store both spaces
    (without them Minari calls ``gym.make`` on the file's env spec, importing whatever module
    it names) and its ``env_spec`` id must be a plain Gymnasium id (``check_plain_env_id``).

    Raises:
        FileNotFoundError: no Minari dataset with that id or path.
        DatasetError: unsupported spaces, malformed episodes, metadata without spaces, or an
            env id with a ``module:`` part.
    """
    import minari

    data_path = resolve_minari_path(id_or_path, root)
    if data_path is None:
        raise FileNotFoundError(
            f"Minari dataset {id_or_path} not found (looked at {id_or_path} and under "
            f"{minari_root(root)})"
        )
    src = f"minari:{id_or_path}"
    _check_minari_metadata(data_path, src)
    ds = minari.MinariDataset(data_path)
    episodes = []
    for ep in ds.iterate_episodes():
        if not isinstance(ep.observations, np.ndarray):
            raise DatasetError(f"{src}: nested (Dict/Tuple) observations are unsupported")
        episodes.append({
            "observations": ep.observations,
            "actions": ep.actions,
            "rewards": ep.rewards,
            "terminations": ep.terminations,
            "truncations": ep.truncations,
        })
    md = dict(ds.storage.metadata)
    meta = {
        "dataset_id": md.get("dataset_id", str(id_or_path)),
        "env_id": check_plain_env_id(
            ds.spec.env_spec.id if ds.spec.env_spec is not None else "", src, "env_spec.id"),
        "agent": md.get("algorithm_name", ""),
    }
    for key in ("ref_min_score", "ref_max_score"):
        if md.get(key) is not None:
            meta[key] = float(md[key])
    return OfflineDataset.from_episodes(
        episodes, ds.observation_space, ds.action_space, metadata=meta, source=src
    )


def _check_minari_metadata(data_path: Path, src: str) -> None:
    """The dataset's ``metadata.json`` stores both spaces and a plain env id (if any).

    Raises:
        DatasetError: naming ``src``, the metadata file and the key.
    """
    meta_path = data_path / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{src}: {meta_path} is not readable JSON ({e})") from e
    missing = [k for k in ("observation_space", "action_space") if k not in meta]
    if missing:
        raise DatasetError(
            f"{src}: {meta_path} lacks key(s) {missing}; Minari would build the env from the "
            "file's env_spec to recover them, which offline-dt does not do for a file"
        )
    spec = meta.get("env_spec")
    if spec is None:
        return
    try:
        env_id = json.loads(spec).get("id", "")
    except (TypeError, ValueError, AttributeError) as e:
        raise DatasetError(f"{src}: {meta_path} key 'env_spec' is not JSON ({e})") from e
    check_plain_env_id(env_id, f"{src} ({meta_path})", "env_spec.id")
