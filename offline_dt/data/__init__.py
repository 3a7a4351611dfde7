"""Datasets: the in-memory container, the D4RL HDF5 and Minari formats, and a loader."""

from __future__ import annotations

import os
from pathlib import Path

from offline_dt.data.d4rl import d4rl_filename, read_hdf5, write_hdf5
from offline_dt.data.dataset import (
    OfflineDataset,
    check_plain_env_id,
    concatenate,
    registered_env_id,
)
from offline_dt.data.minari_io import (
    minari_dataset_id,
    minari_root,
    read_minari,
    resolve_minari_path,
    write_minari,
)
from offline_dt.data.validate import DatasetError

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "check_plain_env_id",
    "concatenate",
    "d4rl_filename",
    "load_dataset",
    "minari_dataset_id",
    "minari_root",
    "read_hdf5",
    "read_minari",
    "registered_env_id",
    "write_hdf5",
    "write_minari",
]


def load_dataset(id_or_path: str | os.PathLike, minari_root: str | os.PathLike | None = None,
                 env_id: str | None = None, download: bool = False) -> OfflineDataset:
    """Open a dataset in either format.

    ``id_or_path`` is a D4RL-style ``.hdf5``/``.h5`` file, a Minari dataset directory, or a
    Minari dataset id (``pendulum/medium-v0``) under ``minari_root``. ``env_id`` (the user's
    choice) gives an HDF5 file without ``timeouts`` its time limit (see ``read_hdf5``). An env
    id read from the file is only checked to be plain (no ``module:`` part); check it with
    ``registered_env_id`` before ``gym.make``. With ``download``, a Minari id found nowhere
    on disk is fetched from the Minari remote into ``minari_root`` first
    (``offline_dt.data.minari_remote.download_minari``).

    Raises:
        FileNotFoundError: nothing found under that name; the message lists where it looked.
        offline_dt.data.minari_remote.DatasetDownloadError (a FileNotFoundError): with
            ``download``, the fetch failed (naming the id, the remote and why).
        DatasetError: the file is malformed (see ``OfflineDataset.validate``).
    """
    p = Path(id_or_path)
    if p.suffix in (".hdf5", ".h5") or p.is_file():
        return read_hdf5(p, env_id=env_id)
    if resolve_minari_path(id_or_path, minari_root) is not None:
        return read_minari(id_or_path, minari_root)
    if download:
        from offline_dt.data.minari_remote import download_minari

        download_minari(str(id_or_path), minari_root)
        return read_minari(id_or_path, minari_root)
    raise FileNotFoundError(
        f"dataset {id_or_path!s} not found: not an HDF5 file and no Minari dataset at that path "
        f"or under {minari_root or 'the Minari root (data/minari or $MINARI_DATASETS_PATH)'} "
        f"(a Minari id on the remote: pass --download true)"
    )
