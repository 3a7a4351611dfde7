"""Minari's published datasets (``mujoco/hopper/medium-v0``, ``D4RL/door/human-v2``, ...):
fetched from the Minari remote into our Minari root when asked (``--download true``), then read
as any local Minari dataset (``offline_dt.data.minari_io.read_minari``, which keeps their
``ref_min_score``, ``ref_max_score`` and ``eval_env_spec`` metadata).

The remote is ``$MINARI_REMOTE`` (Minari's default ``hf://farama-minari``, the Hugging Face
hub; ``gcp://<bucket>`` for Google Cloud Storage). Before Minari is asked, its host is reached
with one TCP connection of :data:`CONNECT_TIMEOUT` seconds, so that without network the call
fails at once with one message (Minari's Hugging Face client retries for about 30 s).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from offline_dt.data.minari_io import (
    minari_datasets_path,
    minari_root,
    resolve_minari_path,
)

DEFAULT_REMOTE = "hf://farama-minari"
#: Seconds the reachability check of the remote's host waits.
CONNECT_TIMEOUT = 5.0


class DatasetDownloadError(FileNotFoundError):
    """A dataset is not on disk and fetching it from the Minari remote failed; the message
    names the id, the remote and the reason."""


def remote_host(remote: str) -> str:
    """The host a Minari remote is served from (``hf://…``: ``$HF_ENDPOINT``'s or
    huggingface.co; ``gcp://…``: storage.googleapis.com).

    Raises:
        ValueError: a remote of another kind.
    """
    kind = remote.split("://", 1)[0]
    if kind == "hf":
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    if kind == "gcp":
        return "storage.googleapis.com"
    raise ValueError(f"MINARI_REMOTE={remote!r}: expected hf://<org> or gcp://<bucket>")


def download_minari(dataset_id: str, root: str | os.PathLike | None = None) -> Path:
    """Fetch ``dataset_id`` from the Minari remote into ``root`` (default data/minari or
    ``$MINARI_DATASETS_PATH``) unless it is there already; returns its ``data`` directory.

    Raises:
        DatasetDownloadError: the remote's host cannot be reached within
            :data:`CONNECT_TIMEOUT` seconds, or Minari's download fails (no such dataset,
            refused, interrupted), naming the id, the remote and the reason.
    """
    found = resolve_minari_path(dataset_id, root)
    if found is not None:
        return found
    remote = os.environ.get("MINARI_REMOTE", DEFAULT_REMOTE)
    where = minari_root(root)

    def failed(reason: str) -> DatasetDownloadError:
        return DatasetDownloadError(
            f"dataset {dataset_id}: not under {where}, and downloading it from the Minari "
            f"remote {remote} (MINARI_REMOTE) failed: {reason}; check the network and the "
            f"id, or copy the dataset under {where}")

    host = remote_host(remote)
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise failed(f"{host}:443 is unreachable ({e})") from None
    import minari

    where.mkdir(parents=True, exist_ok=True)
    with minari_datasets_path(where):
        try:
            minari.download_dataset(dataset_id)
        except Exception as e:  # the remotes raise HTTP, storage and value errors alike
            raise failed(f"{type(e).__name__}: {e}") from None
    found = resolve_minari_path(dataset_id, root)
    if found is None:
        raise failed(f"Minari reported success but {where / dataset_id} holds no dataset")
    return found
