"""The checkpoint file: what it holds, how it is written and how it is read back safely.

A checkpoint is one ``torch.save`` dict of tensors and primitive containers only, so it loads
with ``torch.load(weights_only=True)`` (nothing else is ever unpickled)::

    format, version     "offline-dt-checkpoint", 2
    step                updates done
    model               the method's network state_dict
    optimizer, scheduler
    rng                 torch / numpy / window-sampler (and CUDA) RNG states, for exact resume
    normalizer          Normalizer.state_dict() as tensors
    train_config, model_config, dataset_info   JSON strings
    digest              "sha256:<hex>" over everything above (version 2; see below)

Writes go to a temporary sibling and are renamed into place (``atomic_path``): a killed run
never leaves a half-written checkpoint.

Integrity: :func:`payload_digest` hashes every value of the keys in ``DIGEST_KEYS`` in a fixed
order (dict keys sorted): each tensor's dtype, shape and raw bytes, and the ``repr`` of every
other leaf, each prefixed by its key path. :func:`read_checkpoint` recomputes it and refuses a
file whose tensors changed after writing (flipped bytes, a truncated or edited tensor). Version
1 files (no digest) still load, with a warning that they cannot be verified.

A full disk: a write that fails for want of space raises
:class:`offline_dt.data.atomic.DiskFullError` naming the file (the temporary is removed, the
file that was there before is left as it was); torch's own writer reports a full disk only as
``unexpected pos``, so the free space is checked when it fails.

Reading for evaluation: :func:`load_checkpoint` gives a :class:`LoadedCheckpoint` (the
method's networks built and loaded, the configs, the normaliser, the dataset facts).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offline_dt.data.atomic import atomic_path
from offline_dt.data.suite import normalizer_from_json
from offline_dt.data.windows import Normalizer, WindowSampler
from offline_dt.methods import Method, get_method
from offline_dt.nn.config import DTConfig
from offline_dt.training.configs import from_dict, to_jsonable
from offline_dt.training.train_config import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
#: Sub-directory of a run holding its intermediate checkpoints (``TrainConfig.keep_checkpoints``).
KEPT_DIR = "checkpoints"
CHECKPOINT_FORMAT = "offline-dt-checkpoint"
CHECKPOINT_VERSION = 2
REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "rng", "step", "normalizer",
                 "train_config", "model_config", "dataset_info")
#: What the digest covers, in this order.
DIGEST_KEYS = ("model", "optimizer", "scheduler", "rng", "normalizer", "step",
               "train_config", "model_config", "dataset_info")
#: Covered by the digest too when present (after ``DIGEST_KEYS``): a batch source's state
#: (``offline_dt.methods.base.BatchSource``, e.g. an online replay buffer).
OPTIONAL_DIGEST_KEYS = ("source",)

log = logging.getLogger(__name__)


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or ``<run dir>/checkpoint.pt`` when ``path`` is a directory."""
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


def save_checkpoint(path: Path, payload: dict[str, Any], keep: Path | None = None) -> None:
    """Add ``digest`` (:func:`payload_digest`) to ``payload`` and ``torch.save`` it to a
    temporary sibling, then rename: never a half-written file. With ``keep``, the file is
    written there first and then copied (atomically) to ``path``: a kill in between leaves
    ``path`` at the previous checkpoint, whose resume writes ``keep`` again.

    Raises:
        offline_dt.data.atomic.DiskFullError: the filesystem has no room for the file
            (``path`` and the file that was there before are left as they were; the
            temporary is removed).
    """
    payload = {**payload, "digest": payload_digest(payload)}
    with atomic_path(keep or path, overwrite=True, what="checkpoint") as tmp:
        _torch_save(payload, tmp)
    if keep is not None:
        with atomic_path(path, overwrite=True, what="checkpoint") as tmp:
            shutil.copyfile(keep, tmp)


def _torch_save(payload: dict[str, Any], tmp: Path) -> None:
    """``torch.save(payload, tmp)``; its writer's failure for want of space (a RuntimeError
    such as ``unexpected pos``, while less room is free than the tensors need) as an OSError
    with ``errno.ENOSPC`` (which ``atomic_path`` reports as a full disk)."""
    try:
        torch.save(payload, tmp)
    except RuntimeError as e:
        need, free = _tensor_bytes(payload), shutil.disk_usage(tmp.parent).free
        if free >= need:
            raise
        raise OSError(errno.ENOSPC, f"it needs about {need / 2**20:.1f} MiB, "
                                    f"{free / 2**20:.1f} MiB are free; torch: "
                                    f"{str(e).splitlines()[0]}") from e


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (dicts, lists and tuples walked)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def kept_checkpoint_path(run_dir: Path, step: int) -> Path:
    """``<run_dir>/checkpoints/step-<step, 7 digits>.pt``: the checkpoint kept at ``step``."""
    return Path(run_dir) / KEPT_DIR / f"step-{step:07d}.pt"


def kept_checkpoints(run_dir: Path) -> list[Path]:
    """The intermediate checkpoints kept in ``run_dir`` (:func:`kept_checkpoint_path`), in
    step order; empty when there are none."""
    return sorted((Path(run_dir) / KEPT_DIR).glob("step-*.pt"))


def checkpoint_step(path: Path) -> int | None:
    """The ``step`` of the checkpoint file ``path``, its tensors left unread (memory-mapped,
    ``weights_only``, digest not checked); None when there is no readable file."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(payload["step"])
    except Exception:  # a damaged or foreign file: no step to report
        return None


def payload_digest(payload: dict[str, Any]) -> str:
    """``"sha256:<64 hex>"`` over the values of ``DIGEST_KEYS`` (and of
    ``OPTIONAL_DIGEST_KEYS`` present) in ``payload``.

    Tensors contribute their key path, dtype, shape and bytes (CPU copy, any device); other
    leaves (numbers, strings, None) their key path, type and ``repr``; dicts are walked in
    sorted key order, lists and tuples in order. Independent of the device it was loaded to.

    Raises:
        KeyError: a key of ``DIGEST_KEYS`` is missing.
    """
    h = hashlib.sha256()
    for key in DIGEST_KEYS:
        _feed(h, key, payload[key])
    for key in OPTIONAL_DIGEST_KEYS:
        if key in payload:
            _feed(h, key, payload[key])
    return "sha256:" + h.hexdigest()


def _feed(h: Any, path: str, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().reshape(-1).clone()  # 1-D with stride 1
        h.update(f"{path}:tensor:{t.dtype}:{tuple(obj.shape)}\n".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"{path}:dict:{len(obj)}\n".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, f"{path}.{k}", obj[k])
    elif isinstance(obj, list | tuple):
        h.update(f"{path}:{type(obj).__name__}:{len(obj)}\n".encode())
        for i, v in enumerate(obj):
            _feed(h, f"{path}[{i}]", v)
    else:
        h.update(f"{path}:{type(obj).__name__}:{obj!r}\n".encode())


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
        raise ValueError(
            f"{p}: not a readable offline-dt checkpoint ({type(e).__name__}: "
            f"{_torch_reason(e)}); a checkpoint holds tensors and plain containers only and is "
            f"never unpickled in full, so a corrupt or foreign file cannot be loaded") from None
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
    verify_digest(p, payload)
    return p, payload


def verify_digest(p: Path, payload: dict[str, Any]) -> None:
    """Check ``payload["digest"]`` against :func:`payload_digest`; warn if there is none.

    Raises:
        ValueError: the digest does not match (names the file: its contents changed after
            it was written).
    """
    stored = payload.get("digest")
    if stored is None:
        log.warning("%s: checkpoint version %s has no digest; its integrity cannot be "
                    "verified (re-save it with a current offline-dt to add one)", p,
                    payload.get("version", 1))
        return
    found = payload_digest(payload)
    if stored != found:
        raise ValueError(
            f"{p}: checkpoint is corrupt: its tensors do not match the digest stored when it "
            f"was written (expected {stored}, found {found}); restore it from a copy or "
            f"retrain")


#: Sentences of torch's error text that advise unsafe loading or allow-listing globals.
_UNSAFE_ADVICE = re.compile(r"weights_only|safe_globals|trust", re.IGNORECASE)


def _torch_reason(e: Exception) -> str:
    """The reason ``torch.load`` failed, without its advice to load unsafely.

    torch's ``weights_only`` errors suggest re-running with ``weights_only=False`` (arbitrary
    code execution) or allow-listing globals; only the ``WeightsUnpickler error`` itself is
    kept, and any other sentence mentioning ``weights_only`` or trust is dropped.
    """
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text)
    kept = [s.strip() for s in sentences if s.strip() and not _UNSAFE_ADVICE.search(s)
            and not s.strip().startswith(("Check the documentation", "Please "))]
    return " ".join(kept) or "unreadable"


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


def checkpoint_payload(*, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler, rng: dict[str, Any],
                       normalizer: Normalizer, train_config: TrainConfig, model_config: Any,
                       dataset_info: dict[str, Any], source: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """The checkpoint dict of the module docstring (what :func:`save_checkpoint` writes):
    ``model`` the networks (their ``state_dict``), ``rng`` from :func:`rng_state`, ``source``
    a batch source's state (left out when None), the configs and facts as JSON strings."""
    return {
        **({} if source is None else {"source": source}),
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "normalizer": normalizer_to_tensors(normalizer),
        "train_config": json.dumps(to_jsonable(train_config), sort_keys=True),
        "model_config": json.dumps(to_jsonable(model_config), sort_keys=True),
        "dataset_info": json.dumps(to_jsonable(dataset_info), sort_keys=True),
    }


@dataclass
class LoadedCheckpoint:
    """A checkpoint ready for evaluation (``model`` is in eval mode on the requested device).

    ``model`` is the method's network module (a ``DecisionTransformer`` for dt and bc);
    ``method`` acts with it (``method.policy(model, normalizer, target_return)``).
    """

    model: nn.Module
    model_config: DTConfig
    train_config: TrainConfig
    normalizer: Normalizer
    dataset_info: dict[str, Any]
    step: int
    method: Method


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    env_id: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint file (or ``run_dir/checkpoint.pt``) for evaluation.

    Only tensors and primitive containers are unpickled (``weights_only=True``). A
    multi-task checkpoint (trained on a suite, ``offline_dt.data.suite``) is loaded for the
    env ``env_id`` of its suite (:func:`select_env`; None: its only env).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: the file is not an offline-dt checkpoint or its contents do not fit; a
            multi-task checkpoint and an ``env_id`` it was not trained on (or none, for a
            suite of several), naming the envs it knows.
    """
    p, payload = read_checkpoint(path, device)
    try:
        model_cfg = from_dict(DTConfig, json.loads(payload["model_config"]))
        train_cfg = from_dict(TrainConfig, json.loads(payload["train_config"]))
        info = json.loads(payload["dataset_info"])
        normalizer = normalizer_from_tensors(payload["normalizer"])
        method = get_method(train_cfg.method)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{p}: malformed checkpoint contents ({e})") from e
    net = method.build(model_cfg, train_cfg.method_options)
    try:
        net.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise ValueError(f"{p}: key 'model' does not fit its model_config ({e})") from e
    net.to(device).eval()
    return select_env(LoadedCheckpoint(model=net, model_config=model_cfg, train_config=train_cfg,
                                       normalizer=normalizer, dataset_info=info,
                                       step=int(payload["step"]), method=method), env_id, p)


def select_env(ckpt: LoadedCheckpoint, env_id: str | None, source: Path) -> LoadedCheckpoint:
    """``ckpt`` as a checkpoint of one env: unchanged unless it records a suite
    (``dataset_info["suite"]``); then the suite's entry for ``env_id`` (None: the only env of
    a suite of one), its normaliser, and the network the method acts with in that env
    (``Method.for_env``). The entry's facts gain ``suite_env_ids``, every env of the suite.

    Raises:
        ValueError: ``env_id`` is not an env of the suite, or None for a suite of several
            (names ``source`` and the envs it knows).
    """
    suite = ckpt.dataset_info.get("suite")
    if suite is None:
        return ckpt
    known = [m["env_id"] for m in suite]
    if env_id is None and len(known) == 1:
        env_id = known[0]
    if env_id not in known:
        what = "pass --env-id" if env_id is None else f"env {env_id!r} is not one of them:"
        raise ValueError(f"{source}: a multi-task checkpoint trained on the envs {known}; "
                         f"{what} choose one of {known}")
    i = known.index(env_id)
    member = suite[i]
    return dataclasses.replace(
        ckpt, model=ckpt.method.for_env(ckpt.model, i),
        normalizer=normalizer_from_json(member["normalizer"]),
        dataset_info={**member, "suite_env_ids": known})
