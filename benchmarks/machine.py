"""The machine a results page was measured on: CPU and GPU model, CPU features, package
versions, and a page that keeps one section per machine kind.

``speed.py``, ``exact_cache.py``, ``paper_budget.py`` and ``train_quality.py`` print these on
each page's ``Machine:`` and ``Versions:`` lines; ``speed.py`` also reports
:func:`cpu_features` beside its ratios and writes its page with :func:`merge_page`.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

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


#: ``/proc/cpuinfo`` flags a page reports (the kernels a CPU offers torch), with their names.
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512_bf16": "AVX512-BF16",
                "amx_bf16": "AMX-BF16", "amx_tile": "AMX-TILE"}


def cpu_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """(vendor, flags) from the text of ``/proc/cpuinfo`` (read when ``cpuinfo`` is None):
    the first processor's ``vendor_id`` and ``flags`` lines; ``("unknown", set())`` where the
    file cannot be read or lacks them."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    vendor, flags = "unknown", None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id" and vendor == "unknown":
            vendor = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    return vendor, flags or set()


def cpu_features(cpuinfo: str | None = None, capability: str | None = None) -> dict[str, Any]:
    """What the CPU offers the step: ``vendor``, ``capability`` (torch's CPU kernels,
    ``torch.backends.cpu.get_cpu_capability()`` unless given: ``DEFAULT``, ``AVX2``,
    ``AVX512``...), one bool per :data:`CPU_FEATURES` name, and ``kind``: the machine kind a
    page keeps one section for, ``vendor/capability/native bf16 flags`` (``no-bf16`` where
    neither AVX512-BF16 nor AMX-BF16 is present), e.g. ``AuthenticAMD/AVX512/avx512_bf16``."""
    vendor, flags = cpu_flags(cpuinfo)
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    out: dict[str, Any] = {"vendor": vendor, "capability": capability}
    out.update({name: flag in flags for flag, name in CPU_FEATURES.items()})
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    out["kind"] = f"{vendor}/{capability}/{'+'.join(bf16) or 'no-bf16'}"
    return out


def features_line(features: dict[str, Any]) -> str:
    """``CPU features: AVX2 yes, AVX512F no, ...; torch CPU capability AVX2`` for a page."""
    have = ", ".join(f"{name} {'yes' if features[name] else 'no'}"
                     for name in CPU_FEATURES.values())
    return (f"CPU features (`/proc/cpuinfo` flags): {have}; torch CPU capability "
            f"{features['capability']}.")


#: Marks a page's section for one machine kind: ``<!-- machine: KIND -->`` ... end marker.
SECTION = re.compile(r"<!-- machine: (.+?) -->\n(.*?)<!-- end machine -->\n?", re.S)
#: The key a page written before sections existed is kept under.
UNRECORDED = "unrecorded"


def page_sections(text: str) -> tuple[str, dict[str, str]]:
    """(the page's head, its sections by machine kind in page order) of a page written by
    :func:`merge_page`; a page without section markers is one section, :data:`UNRECORDED`,
    after its title line (the head)."""
    found = {m.group(1): m.group(2) for m in SECTION.finditer(text)}
    if found:
        return text[:text.find("<!-- machine: ")], found
    if not text.strip():
        return "", {}
    title, _, body = text.partition("\n")
    return title + "\n", {UNRECORDED: body.lstrip("\n")}


def merge_page(old: str, head: str, kind: str, section: str) -> str:
    """The page ``old`` with ``kind``'s section replaced by ``section`` (in its place; a new
    kind goes last) under ``head``: every other machine kind's section is kept as it was.

    Raises:
        ValueError: ``section`` holds a section marker (it would split the page).
    """
    if "<!-- machine: " in section or "<!-- end machine -->" in section:
        raise ValueError("a page section may not hold section markers")
    _, sections = page_sections(old)
    sections[kind] = section.rstrip("\n") + "\n"
    body = "".join(f"<!-- machine: {k} -->\n{v}<!-- end machine -->\n\n"
                   for k, v in sections.items())
    return head.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"


def machine_kind(device: str, features: dict[str, Any]) -> str:
    """The machine kind of a run on ``device``: ``GPU <name>`` on CUDA, else the CPU's
    :func:`cpu_features` kind (``vendor/capability/bf16 flags``)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(torch.device(device))}"
    return features["kind"]


def write_page(stem: Path, head: str, kind: str, section: str, table: Any) -> None:
    """Write ``stem.md`` under ``head`` with ``kind``'s section replaced by ``section`` (the
    other machine kinds' sections kept, :func:`merge_page`) and ``stem.csv`` with ``kind``'s
    rows replaced by ``table``'s (a ``pandas.DataFrame``; the CSV's first column is
    ``machine``, and the rows of a CSV written before that column are kept under
    :data:`UNRECORDED`, as its page is). Each file is written to a temporary path and
    renamed."""
    import pandas as pd

    md, csv = stem.parent / f"{stem.name}.md", stem.parent / f"{stem.name}.csv"
    old_md = md.read_text() if md.is_file() else ""
    old_csv = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    if len(old_csv) and "machine" not in old_csv.columns:
        old_csv.insert(0, "machine", UNRECORDED)
    new = table.copy()
    new.insert(0, "machine", kind)
    kept = old_csv[old_csv["machine"] != kind] if len(old_csv) else old_csv
    merged = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(merge_page(old_md, head, kind, section))
    tmp.replace(md)
    tmp = csv.with_name(csv.name + ".tmp")
    merged.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(csv)
