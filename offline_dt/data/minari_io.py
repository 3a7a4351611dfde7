"""Minari datasets, written and read through Minari's own API.

Minari layout (minari 0.5): an episode holds ``observations (T+1, obs_dim)``,
``actions (T, ...)``, ``rewards (T,)``, ``terminations (T,)``, ``truncations (T,)``. Datasets
live under a root directory (default ``data/minari``; the ``MINARI_DATASETS_PATH``
environment variable overrides it) at ``<root>/<namespace>/<name>-v<version>/data``.

Dict observations (PointMaze's ``observation``/``achieved_goal``/``desired_goal``,
MiniGrid's ``image``/``direction``/``mission``) are Minari's own layout: per episode a group
``observations/`` with one ``(T+1, ...)`` dataset per key (nested Dicts nest groups), as
``minari.DataCollector`` writes them. Text leaves (MiniGrid's ``mission``) are dropped on
reading, with a logged note: no encoder reads strings (``offline_dt.data.layout``).

Reading checks ``data/metadata.json`` and, for the ``hdf5`` data format, every episode's
arrays in ``main_data.hdf5`` (dtype real numeric or bool, row counts, memory needed) before
Minari reads anything; errors of h5py and Minari on a truncated or damaged dataset are
translated into :class:`DatasetError` naming the file. Writing replaces only a dataset
directory offline-dt wrote (:func:`written_by_offline_dt`), and refuses up front when the
filesystem lacks the space (h5py can crash the process when the disk fills mid-write).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from offline_dt.data.atomic import (
    atomic_path,
    check_free_space,
    check_writable,
    is_json_file,
    remove_stale_temporaries,
)
from offline_dt.data.dataset import OfflineDataset, check_plain_env_id
from offline_dt.data.layout import (
    flatten_keys,
    map_leaves,
    nest_keys,
    observation_layout,
    observation_nbytes,
    pruned_space,
)
from offline_dt.data.validate import (
    DatasetError,
    check_fits_in_memory,
    declared_array,
    open_hdf5,
    warn_long_episodes,
)

log = logging.getLogger(__name__)

DEFAULT_MINARI_ROOT = Path("data") / "minari"
#: The ``author`` of every Minari dataset :func:`write_minari` writes.
_AUTHOR = "offline-dt"
#: What ``write_minari`` writes, in messages.
_WHAT = "Minari dataset"


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
def minari_datasets_path(root: Path) -> Iterator[None]:
    """``$MINARI_DATASETS_PATH`` set to ``root`` (resolved) inside the block, restored after:
    where Minari's own functions read and write."""
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

    Only a dataset directory offline-dt wrote (:func:`written_by_offline_dt`) is replaced, and
    only once the new one is complete.

    Returns:
        The dataset's directory ``<root>/<dataset_id>``.

    Raises:
        FileExistsError: the dataset exists and ``overwrite`` is False, or the path holds a
            file or a directory offline-dt did not write (left untouched).
        offline_dt.data.atomic.DiskFullError: the filesystem has less free space than the
            dataset needs (checked before Minari writes), or filled up while writing.
    """
    import minari

    final = minari_root(root) / dataset_id
    remove_stale_temporaries(final.parent / "namespace_metadata.json")
    buffers = _episode_buffers(dataset)
    arguments = _minari_arguments(dataset, dataset_id, description)
    with atomic_path(final, overwrite=overwrite, kind="dir", ours=written_by_offline_dt,
                     what=_WHAT) as tmp_dir:
        check_free_space(final, _minari_bytes(dataset), _WHAT)
        tmp_root = tmp_dir.with_name(tmp_dir.name + "-root")
        shutil.rmtree(tmp_root, ignore_errors=True)
        try:
            with minari_datasets_path(tmp_root), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                minari.create_dataset_from_buffers(buffer=buffers, **arguments)
            os.replace(tmp_root / dataset_id, tmp_dir)
            ns_meta = (tmp_root / dataset_id).parent / "namespace_metadata.json"
            ns_final = final.parent / ns_meta.name
            if ns_meta.exists() and not ns_final.exists():
                with atomic_path(ns_final, ours=is_json_file) as ns_tmp:
                    shutil.copy(ns_meta, ns_tmp)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def check_minari_target(ds_dir: str | os.PathLike, overwrite: bool = True) -> None:
    """Check, before long work, that :func:`write_minari` may write the dataset directory
    ``ds_dir`` (``<root>/<dataset_id>``) with ``overwrite``.

    Raises:
        FileExistsError: as :func:`write_minari` would, naming the path.
    """
    check_writable(Path(ds_dir), overwrite, _WHAT, kind="dir", ours=written_by_offline_dt)


def written_by_offline_dt(ds_dir: Path) -> bool:
    """Whether the directory ``ds_dir`` is a Minari dataset :func:`write_minari` wrote: it
    holds only ``data/`` with ``main_data.hdf5`` and ``metadata.json``, whose ``author`` is
    offline-dt. Anything else (a downloaded dataset, files a user added) is not ours to
    delete."""
    data = ds_dir / "data"
    try:
        if {p.name for p in ds_dir.iterdir()} != {"data"} or not data.is_dir():
            return False
        if not {p.name for p in data.iterdir()} <= {"main_data.hdf5", "metadata.json"}:
            return False
        author = json.loads((data / "metadata.json").read_text()).get("author")
    except (OSError, ValueError, AttributeError):
        return False
    return author == _AUTHOR or (isinstance(author, list) and _AUTHOR in author)


#: Minari's HDF5 layout costs about 15 KiB per episode beyond the arrays (minari 0.5.4).
_EPISODE_OVERHEAD = 16 * 1024


def _minari_bytes(dataset: OfflineDataset) -> int:
    """An upper estimate of the bytes a Minari dataset of ``dataset`` takes on disk."""
    arrays = sum(observation_nbytes(getattr(dataset, k)) for k in
                 ("observations", "actions", "rewards", "terminals", "timeouts"))
    last_obs = dataset.num_episodes * observation_nbytes(
        map_leaves(lambda a: a[:1], dataset.observations))
    return int(1.1 * (arrays + last_obs)) + _EPISODE_OVERHEAD * dataset.num_episodes + 2**16


def _episode_buffers(dataset: OfflineDataset) -> list[Any]:
    """One ``minari`` ``EpisodeBuffer`` per episode, holding its T+1 observations."""
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i in range(dataset.num_episodes):
        ep = dataset.episode(i)
        obs = map_leaves(lambda o, x: np.concatenate([o, x[-1:]]), ep["observations"],
                         ep["next_observations"])
        buffers.append(EpisodeBuffer(
            id=i,
            observations=nest_keys(obs) if isinstance(obs, dict) else obs,
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
        "author": _AUTHOR,
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


def read_minari(id_or_path: str | os.PathLike, root: str | os.PathLike | None = None,
                env_id: str | None = None) -> OfflineDataset:
    """Read a Minari dataset (by id under ``root`` or by directory) into an OfflineDataset.

    Each episode's T+1 observations become ``observations`` (first T) and
    ``next_observations`` (last T).

    The metadata is checked before Minari opens the dataset: it must store both spaces
    (without them Minari calls ``gym.make`` on the file's env spec, importing whatever module
    it names) and its ``env_spec`` id must be a plain Gymnasium id (``check_plain_env_id``).
    For the ``hdf5`` data format every episode's arrays are then checked in
    ``main_data.hdf5`` without reading them (:func:`_check_minari_arrays`). Episodes longer
    than the time limit of ``env_id`` (default the file's env) are warned about.

    Raises:
        FileNotFoundError: no Minari dataset with that id or path.
        DatasetError: unsupported spaces, malformed episodes, metadata without spaces, an
            env id with a ``module:`` part, arrays of bytes/strings/objects or too large for
            the memory, or a truncated or damaged ``main_data.hdf5`` (h5py's and Minari's
            errors translated); naming the dataset and the file.
    """
    data_path = resolve_minari_path(id_or_path, root)
    if data_path is None:
        raise FileNotFoundError(
            f"Minari dataset {id_or_path} not found (looked at {id_or_path} and under "
            f"{minari_root(root)})"
        )
    src = f"minari:{id_or_path}"
    meta_json = _check_minari_metadata(data_path, src)
    if meta_json.get("data_format", "hdf5") == "hdf5":
        _check_minari_arrays(data_path / "main_data.hdf5", src, meta_json)
    episodes, ds = _minari_episodes(data_path, src)
    obs_space = pruned_space(ds.observation_space)  # text leaves dropped (logged) above
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
    eval_spec = md.get("eval_env_spec")  # Minari's published datasets: a JSON EnvSpec
    if isinstance(eval_spec, str) and eval_spec.startswith("{"):
        meta["eval_env_id"] = check_plain_env_id(json.loads(eval_spec).get("id", ""), src,
                                                 "eval_env_spec.id")
    out = OfflineDataset.from_episodes(
        episodes, obs_space, ds.action_space, metadata=meta, source=src
    )
    warn_long_episodes(out.episode_lengths, env_id or meta["env_id"], src)
    return out


def _minari_episodes(data_path: Path, src: str) -> tuple[list[dict[str, Any]], Any]:
    """Every episode's arrays in the Minari layout (a Dict's observations a dict keyed by
    the leaves' ``/``-joined paths, text leaves left out), and the ``minari.MinariDataset``.

    Raises:
        DatasetError: Tuple observations, a package the data format needs is missing, or
            Minari or h5py failed to read (translated).
    """
    import minari

    try:
        ds = minari.MinariDataset(data_path)
        keep = observation_layout(ds.observation_space, src)  # logs the text leaves dropped
        keys = None if keep is None or keep[0].key == "" else {leaf.key for leaf in keep}
        episodes = []
        for ep in ds.iterate_episodes():
            obs = ep.observations
            if keys is not None and isinstance(obs, dict):
                obs = {k: v for k, v in flatten_keys(obs).items() if k in keys}
            elif not isinstance(obs, np.ndarray):
                raise DatasetError(f"{src}: Tuple observations are unsupported")
            episodes.append({
                "observations": obs,
                "actions": ep.actions,
                "rewards": ep.rewards,
                "terminations": ep.terminations,
                "truncations": ep.truncations,
            })
    except DatasetError:
        raise
    except ImportError as e:  # e.g. the arrow data format without pyarrow
        raise DatasetError(f"{src}: reading {data_path} needs a package missing here "
                           f"({e})") from e
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise DatasetError(f"{src}: Minari could not read {data_path}; the dataset may be "
                           f"truncated or damaged ({type(e).__name__}: {e})") from e
    return episodes, ds


#: Arrays of every Minari episode group, and how many rows each has beyond the T actions.
_EPISODE_KEYS = {"observations": 1, "actions": 0, "rewards": 0, "terminations": 0,
                 "truncations": 0}


def _check_minari_arrays(main: Path, src: str, meta: dict[str, Any]) -> None:
    """Check ``main_data.hdf5`` before Minari reads it: it opens, holds the
    ``episode_<i>`` groups ``metadata.json``'s ``total_episodes`` names, each with the
    arrays of ``_EPISODE_KEYS`` of a real dtype and consistent rows (T+1 observations, T of
    the rest), all fitting in the available memory.

    Raises:
        DatasetError: naming ``src``, the file and the key (``episode_<i>/<array>``).
    """
    where = f"{src} ({main})"
    text = _text_keys(meta.get("observation_space"))
    if not main.is_file():
        raise DatasetError(f"{where}: the file is missing (metadata.json's data_format is hdf5)")
    declared: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with open_hdf5(main, where) as f:
        try:
            for i in range(int(meta.get("total_episodes", 0))):
                name = f"episode_{i}"
                if name not in f or not isinstance(f[name], h5py.Group):
                    raise DatasetError(f"{where}: group '{name}' is missing (metadata.json's "
                                       f"total_episodes is {meta.get('total_episodes')})")
                arrays = {k: declared_array(f[name], k, where, f"{name}/")
                          for k in _EPISODE_KEYS if k != "observations"}
                arrays.update(_observation_leaves(f[name], name, where, text))
                t = arrays["actions"].shape[0]
                for k in arrays:
                    extra = 1 if k.startswith("observations") else 0
                    if arrays[k].shape[0] != t + extra:
                        raise DatasetError(
                            f"{where}: key '{name}/{k}' has {arrays[k].shape[0]} rows, "
                            f"expected {t + extra} ({'T+1' if extra else 'T'} for T={t} "
                            "actions)")
                    declared[f"{name}/{k}"] = (arrays[k].shape, arrays[k].dtype)
        except (OSError, RuntimeError, KeyError, TypeError) as e:
            raise DatasetError(f"{where}: cannot be read; the file may be truncated or "
                               f"damaged ({type(e).__name__}: {e})") from e
    if declared:
        cast = ("observations", "actions", "rewards",
                *(k for k, (_, d) in declared.items() if "/observations/" in k and d.kind == "f"))
        check_fits_in_memory(where, declared, cast)


def _observation_leaves(episode: h5py.Group, name: str, where: str, text: set[str]
                        ) -> dict[str, h5py.Dataset]:
    """An episode's ``observations``: ``{"observations": dataset}``, or for a Dict's group
    ``{"observations/<path>": dataset}`` of its leaves, less the text leaves ``text``.

    Raises:
        DatasetError: a missing key or a leaf that is not a real array, naming it.
    """
    obj = episode.get("observations")
    if not isinstance(obj, h5py.Group):
        return {"observations": declared_array(episode, "observations", where, f"{name}/")}
    found: dict[str, h5py.Dataset] = {}

    def visit(path: str, o: Any) -> None:
        if isinstance(o, h5py.Dataset) and path not in text:
            found[f"observations/{path}"] = declared_array(obj, path, where,
                                                           f"{name}/observations/")
    obj.visititems(visit)
    return found


def _text_keys(space_json: Any) -> set[str]:
    """The ``/``-joined keys of the Text leaves of a Minari-serialised Dict space."""
    try:
        node = json.loads(space_json) if isinstance(space_json, str) else space_json
    except ValueError:
        return set()
    out: set[str] = set()

    def walk(d: Any, prefix: str) -> None:
        if not isinstance(d, dict):
            return
        if d.get("type") == "Text":
            out.add(prefix.rstrip("/"))
        for k, v in (d.get("subspaces") or {}).items() if d.get("type") == "Dict" else ():
            walk(v, f"{prefix}{k}/")
    walk(node, "")
    return out


def _check_minari_metadata(data_path: Path, src: str) -> dict[str, Any]:
    """The dataset's ``metadata.json`` (returned) stores both spaces and a plain env id (if
    any).

    Raises:
        DatasetError: naming ``src``, the metadata file and the key.
    """
    meta_path = data_path / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{src}: {meta_path} is not readable JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{src}: {meta_path} must hold a JSON object, found "
                           f"{type(meta).__name__}")
    missing = [k for k in ("observation_space", "action_space") if k not in meta]
    if missing:
        raise DatasetError(
            f"{src}: {meta_path} lacks key(s) {missing}; Minari would build the env from the "
            "file's env_spec to recover them, which offline-dt does not do for a file"
        )
    spec = meta.get("env_spec")
    if spec is None:
        return meta
    try:
        env_id = json.loads(spec).get("id", "")
    except (TypeError, ValueError, AttributeError) as e:
        raise DatasetError(f"{src}: {meta_path} key 'env_spec' is not JSON ({e})") from e
    check_plain_env_id(env_id, f"{src} ({meta_path})", "env_spec.id")
    return meta
