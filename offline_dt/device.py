"""Which torch device and precision a run uses: ``auto`` picks CUDA when present, and bf16
autocast where the hardware has bf16 arithmetic; nothing assumes a GPU."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AMX tiles or AVX512-BF16.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``/``cuda[:i]`` as given.

    Raises:
        ValueError: a CUDA device was named but CUDA is not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (a flag of :data:`CPU_BF16_FLAGS` in Linux's
    ``/proc/cpuinfo``); False where that cannot be told."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return any(f in flags for f in CPU_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on a CUDA device with bf16 support or a CPU with AMX/AVX512-BF16
    (:func:`cpu_has_bf16`), else ``fp32``; ``fp32``/``bf16`` as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
