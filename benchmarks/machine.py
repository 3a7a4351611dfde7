"""The machine a results page was measured on: CPU and GPU model, package versions.

``speed.py``, ``exact_cache.py``, ``paper_budget.py`` and ``train_quality.py`` print these on
each page's ``Machine:`` and ``Versions:`` lines.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch


def cpu_model() -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``,
    else ``"unknown"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_model() -> str:
    """`` GPU: <name> (CUDA <version>)`` where CUDA is available, else empty."""
    if not torch.cuda.is_available():
        return ""
    return f" GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda}),"


def versions() -> dict[str, str]:
    """Versions of python, torch, numpy and of the packages the peers come from (gymnasium,
    transformers, d3rlpy; ``"not installed"`` where absent)."""
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__}
    for name in ("gymnasium", "transformers", "d3rlpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out
