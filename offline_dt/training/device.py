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


#: Matmul FLOPs of one training step (:func:`step_flops`) under which a CUDA step is bound by
#: kernel launches rather than arithmetic. There ``auto`` keeps fp32, whose loss the loop
#: captures as CUDA graphs (``offline_dt.training.cuda_graph``; the bf16 backward pass does not
#: capture). On an H200 the paper config (1.4e10) stepped about 3x faster in fp32 with graphs
#: than in bf16 eager (benchmarks/results/speed-cuda.md), while at embed 512, 6 layers, batch
#: 512 (3.5e12) bf16 was about 4x fp32 (benchmarks/results/gpu.md).
LAUNCH_BOUND_FLOPS = 1e11


def step_flops(embed_dim: int, n_layer: int, tokens: int) -> float:
    """Approximate matmul FLOPs of one training step of a transformer with ``n_layer`` blocks
    of width ``embed_dim`` over ``tokens`` tokens: 6 x (12 d^2 L parameters) x tokens
    (forward 2, backward 4; Kaplan et al. 2020, Eq. 2.1)."""
    return 6.0 * 12 * n_layer * embed_dim ** 2 * tokens


def resolve_precision(precision: str, device: torch.device, flops: float | None = None) -> str:
    """``auto`` → ``bf16`` on a CUDA device with bf16 support (``fp32`` there when the step's
    ``flops`` are under :data:`LAUNCH_BOUND_FLOPS`) or a CPU with AMX/AVX512-BF16
    (:func:`cpu_has_bf16`), else ``fp32``; ``fp32``/``bf16`` as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        if flops is not None and flops < LAUNCH_BOUND_FLOPS:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
