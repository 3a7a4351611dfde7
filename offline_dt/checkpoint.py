"""The checkpoint file: what it holds, how it is written and how it is read back safely.

A checkpoint is one ``torch.save`` dict of tensors and primitive containers only, so it loads
with ``torch.load(weights_only=True)`` (nothing else is ever unpickled)::

    format, version     "offline-dt-checkpoint", 1
    step                updates done
    model               the method's network state_dict
    optimizer, scheduler
    rng                 torch / numpy / window-sampler (and CUDA) RNG states, for exact resume
    normalizer          Normalizer.state_dict() as tensors
    train_config, model_config, dataset_info   JSON strings

Writes go to a temporary sibling and are renamed into place (``atomic_path``): a killed run
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_dt.data.atomic import atomic_path
from offline_dt.data.windows import Normalizer, WindowSampler

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "offline-dt-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "rng", "step", "normalizer",
                 "train_config", "model_config", "dataset_info")


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or ``<run dir>/checkpoint.pt`` when ``path`` is a directory."""
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary sibling, then rename: never a half-written file."""
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[Path, dict[str, Any]]:
    """(file, payload) of a checkpoint file or run directory, loaded with
    ``weights_only=True`` and checked for the keys and format above.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not a readable offline-dt checkpoint (names file and key).
    """
    p = checkpoint_path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"checkpoint {p} does not exist (pass a checkpoint file or a run directory "
            f"holding {CHECKPOINT_NAME})")
    try:
        payload = torch.load(p, map_location=device, weights_only=True)
    except Exception as e:  # pickle errors, zip errors, disallowed globals
        raise ValueError(f"{p}: not a readable offline-dt checkpoint ({type(e).__name__}: {e})"
                         ) from e
    if not isinstance(payload, dict):
        raise ValueError(f"{p}: expected a dict checkpoint, found {type(payload).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(
            f"{p}: not an offline-dt checkpoint, missing key(s) {missing} "
            f"(found {sorted(payload)})")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: key 'format' is {payload['format']!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}")
    return p, payload


def rng_state(sampler: WindowSampler, device: torch.device) -> dict[str, Any]:
    """Every RNG the training loop draws from, as tensors and numbers."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "sampler": sampler.generator.get_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gaussian": float(np_state[4]),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], sampler: WindowSampler, device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    sampler.generator.set_state(state["sampler"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_has_gauss"],
                         state["numpy_cached_gaussian"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def normalizer_to_tensors(norm: Normalizer) -> dict[str, torch.Tensor]:
    """``Normalizer.state_dict()`` as CPU tensors (what ``weights_only`` loading accepts)."""
    return {k: torch.from_numpy(np.asarray(v).copy()) for k, v in norm.state_dict().items()}


def normalizer_from_tensors(d: dict[str, torch.Tensor]) -> Normalizer:
    """Inverse of :func:`normalizer_to_tensors`."""
    return Normalizer.from_state_dict({k: v.cpu().numpy() for k, v in d.items()})
