"""Fingerprint of what a `reproduce` preset produced: dataset checksums and training losses.

Used to show that a refactoring left behaviour unchanged: run the same preset before and after
the change and compare the two JSON files (``--compare A B``).

    python -m benchmarks.behaviour_fingerprint --root data/fp-before --preset smoke --run
    python -m benchmarks.behaviour_fingerprint --compare before.json after.json \
        --md benchmarks/results/behaviour_unchanged.md --names "before (77095f6)" "after"

The fingerprint holds, per dataset level: the SHA-256 of the HDF5 file's bytes, the array
checksum of the dataset read from HDF5 and from Minari (``OfflineDataset.checksum``); per
training run: every logged training loss (``metrics.csv``, exact float repr) and the headline
evaluation mean return.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pandas as pd


def fingerprint(root: Path, preset: str, env_id: str = "Pendulum-v1",
                finished_only: bool = False) -> dict[str, Any]:
    """Fingerprint of ``reproduce(preset=preset, root=root)``'s datasets and runs
    (``finished_only``: only the runs with an ``eval.json``, for a study still running or
    stopped part way)."""
    from offline_dt.data import read_hdf5, read_minari

    data_root = root / "smoke" if preset == "smoke" else root
    out: dict[str, Any] = {"datasets": {}, "runs": {}}
    for h5 in sorted((data_root / "d4rl").glob("*.hdf5")):
        ds = read_hdf5(h5)
        mid = ds.metadata.get("dataset_id")
        mds = read_minari(mid, data_root / "minari") if mid else None
        out["datasets"][h5.stem] = {
            "hdf5_sha256": hashlib.sha256(h5.read_bytes()).hexdigest(),
            "hdf5_arrays": ds.checksum(),
            "minari_arrays": mds.checksum() if mds is not None else None,
        }
    runs = root / "runs" / preset / env_id
    for metrics in sorted(runs.glob("*/*/seed*/metrics.csv")):
        run = metrics.parent
        if finished_only and not (run / "eval.json").is_file():
            continue
        key = str(run.relative_to(runs))
        df = pd.read_csv(metrics)
        ev = run / "eval.json"
        out["runs"][key] = {
            "loss": [repr(float(v)) for v in df["loss"]],
            "eval_mean_return": (json.loads(ev.read_text())["mean_return"]
                                 if ev.is_file() else None),
        }
    return out


def machine_signature() -> str:
    """What a bit-exact fingerprint depends on beyond the code: the CPU's vendor and the
    kernels torch picks for it (``torch.backends.cpu.get_cpu_capability``: AVX2, AVX512, ...),
    the precision ``--precision auto`` resolves to on it (bf16 on a CPU with AMX/AVX512-BF16)
    and torch's minor version. The behaviour agent's SAC training (fp32) already differs
    between an AMD AVX2 and an Intel AVX512 machine, so a fingerprint holds only for one
    signature (``tests/fixtures/smoke_fingerprint.json`` keeps one per signature)."""
    import torch

    from offline_dt.training.device import resolve_precision

    vendor = "unknown"
    if Path("/proc/cpuinfo").is_file():
        vendor = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                       .splitlines() if ln.startswith("vendor_id")), vendor)
    precision = resolve_precision("auto", torch.device("cpu"))
    minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return f"{vendor}/{torch.backends.cpu.get_cpu_capability()}/{precision}/torch-{minor}"


def add_to_fixture(fixture: Path, fp: dict[str, Any]) -> str:
    """Record ``fp`` (without HDF5 byte hashes, which hold h5py's version) in ``fixture``
    under this machine's :func:`machine_signature`; returns the signature."""
    data = json.loads(fixture.read_text()) if fixture.is_file() else {"fingerprints": {}}
    entry = {"datasets": {k: {f: v for f, v in d.items() if f != "hdf5_sha256"}
                          for k, d in fp["datasets"].items()}, "runs": fp["runs"]}
    sig = machine_signature()
    data.setdefault("fingerprints", {})[sig] = entry
    fixture.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return sig


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty: identical)."""
    diffs = []
    for section in ("datasets", "runs"):
        for key in sorted(set(a[section]) | set(b[section])):
            x, y = a[section].get(key), b[section].get(key)
            if x != y:
                fields = sorted(k for k in set(x or {}) | set(y or {})
                                if (x or {}).get(k) != (y or {}).get(k))
                diffs.append(f"{section}/{key}: differs in {fields}")
    return diffs


def markdown(a: dict[str, Any], b: dict[str, Any], names: list[str], command: str) -> str:
    """The comparison as a results file: command, machine, versions, verdict and the two
    fingerprints side by side (dataset array checksums, final loss, evaluation return)."""
    import platform

    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").is_file() else platform.processor()
    diffs = compare(a, b)
    lines = [f"# Behaviour fingerprint: {names[0]} vs {names[1]}", "",
             f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, {cpu}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, torch {torch.__version__}", "",
             "Verdict: " + ("identical" if not diffs else "DIFFERENT: " + "; ".join(diffs)),
             "", f"| dataset | {names[0]} arrays | {names[1]} arrays | HDF5 bytes equal |",
             "|---|---|---|---|"]
    for key in sorted(a["datasets"]):
        x, y = a["datasets"][key], b["datasets"].get(key, {})
        same = x.get("hdf5_sha256") == y.get("hdf5_sha256")
        lines.append(f"| {key} | {x['hdf5_arrays'][:16]} | {y.get('hdf5_arrays', '')[:16]} | "
                     f"{same} |")
    lines += ["", f"| run | logged losses | {names[0]} final loss | {names[1]} final loss | "
              f"{names[0]} eval return | {names[1]} eval return |",
              "|---|---:|---:|---:|---:|---:|"]
    for key in sorted(a["runs"]):
        x, y = a["runs"][key], b["runs"].get(key, {"loss": [""], "eval_mean_return": None})
        lines.append(f"| {key} | {len(x['loss'])} | {x['loss'][-1]} | {y['loss'][-1]} | "
                     f"{x['eval_mean_return']} | {y['eval_mean_return']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="reproduce root (datasets, runs)")
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--run", action="store_true", help="run reproduce first")
    ap.add_argument("--out", type=Path, help="write the fingerprint JSON here")
    ap.add_argument("--finished-only", action="store_true",
                    help="only the runs with an eval.json (a study stopped part way)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    ap.add_argument("--md", type=Path, help="with --compare: write the comparison here")
    ap.add_argument("--names", nargs=2, default=["A", "B"], help="labels of A and B")
    ap.add_argument("--fixture", type=Path, help="record the fingerprint in this test fixture "
                    "under this machine's signature (tests/fixtures/smoke_fingerprint.json)")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        diffs = compare(a, b)
        if args.md:
            command = "python -m benchmarks.behaviour_fingerprint " + " ".join(
                shlex.quote(x) for x in sys.argv[1:])
            args.md.write_text(markdown(a, b, args.names, command))
        print("\n".join(diffs) if diffs else
              f"identical: {len(a['datasets'])} datasets, {len(a['runs'])} runs")
        return 1 if diffs else 0
    if args.run:
        from offline_dt.study.pipeline import reproduce

        reproduce(preset=args.preset, root=args.root, workers=args.workers, progress=False)
    fp = fingerprint(args.root, args.preset, finished_only=args.finished_only)
    text = json.dumps(fp, indent=1, sort_keys=True) + "\n"
    if args.fixture:
        print(f"recorded as {add_to_fixture(args.fixture, fp)} in {args.fixture}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
