"""``benchmarks/results/multitask.md``: the tables of ``benchmarks.multitask`` from its runs'
results (run-level statistics of ``offline_dt.study.statistics``; nothing recomputed from the
runs' files)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.machine import cpu_model, versions
from offline_dt.study.statistics import aggregate_table, iqm, run_interval

#: The main table's columns: (label, run name pattern), ``{env}`` for dt's per-env runs.
COLUMNS = [("dt", "dt-{env}"), ("mgdt", "mgdt-per-env"), ("gato", "gato-per-env"),
           ("mgdt (total)", "mgdt-total"), ("gato (total)", "gato-total")]
#: The transfer table's rows: (label, run name).
TRANSFER = [("dt from scratch", "dt-scratch"), ("mgdt from scratch", "mgdt-scratch"),
            ("mgdt transferred", "mgdt-transfer"), ("gato from scratch", "gato-scratch"),
            ("gato transferred", "gato-transfer")]


def frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run and env it was evaluated in."""
    rows = []
    for r in results:
        job = r["job"]
        for env, ev in r["evals"].items():
            rows.append({"name": job["name"], "method": job["method"], "seed": job["seed"],
                         "env": env, "updates": r["updates"],
                         "mean_return": ev["mean_return"],
                         "normalized_score": ev["normalized_score"],
                         "episodes": ev["episodes"], "ms_per_update": r["ms_per_update"],
                         "parameters": r["parameters"], "train_seconds": r["train_seconds"],
                         "eval_seconds": r["eval_seconds"],
                         "reused": bool(r.get("reused"))})
    return pd.DataFrame(rows)


def _fmt(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.1f}"


def cell(values: np.ndarray) -> str:
    """``IQM [low, high]``: the IQM over runs and the run-level 95% interval of the mean."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return "–"
    lo, hi = run_interval(v)
    return f"{_fmt(iqm(v))} [{_fmt(lo)}, {_fmt(hi)}]"


def _runs(df: pd.DataFrame, pattern: str, env: str) -> pd.DataFrame:
    return df[(df["name"] == pattern.format(env=env)) & (df["env"] == env)]


def main_table(df: pd.DataFrame, envs: list[str]) -> list[str]:
    """Per env and column the normalized score's cell, then the IQM over every (env, seed)
    with its stratified interval, its ratio to dt's, and P(column > dt) (``aggregate_table``
    over the envs as strata)."""
    lines = ["| env | " + " | ".join(c for c, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    pooled = []
    for env in envs:
        cells = []
        for label, pattern in COLUMNS:
            runs = _runs(df, pattern, env)
            cells.append(cell(runs["normalized_score"].to_numpy()))
            pooled += [{"env": "suite", "dataset": env, "method": label, **row}
                       for row in runs[["normalized_score", "mean_return"]].to_dict("records")]
        lines.append(f"| {env} | " + " | ".join(cells) + " |")
    agg = aggregate_table(pd.DataFrame(pooled)).set_index("method")
    ref = float(agg.loc["dt", "iqm_normalized_score"]) if "dt" in agg.index else math.nan
    rows = {"IQM over envs": [], "ratio to dt's IQM": [], "P(> dt)": []}
    for label, _ in COLUMNS:
        a = agg.loc[label] if label in agg.index else None
        if a is None:
            rows["IQM over envs"].append("–")
            rows["ratio to dt's IQM"].append("–")
            rows["P(> dt)"].append("–")
            continue
        rows["IQM over envs"].append(f"{_fmt(a['iqm_normalized_score'])} "
                                     f"[{_fmt(a['iqm_ci95_low'])}, {_fmt(a['iqm_ci95_high'])}]")
        ratio = a["iqm_normalized_score"] / ref if ref and math.isfinite(ref) else math.nan
        rows["ratio to dt's IQM"].append("–" if not math.isfinite(ratio) else f"{ratio:.2f}")
        p = a["prob_improvement_over_dt"]
        rows["P(> dt)"].append("–" if label == "dt" or not math.isfinite(p) else (
            f"{p:.2f} [{a['prob_improvement_ci95_low']:.2f}, "
            f"{a['prob_improvement_ci95_high']:.2f}]"))
    for name, cells in rows.items():
        lines.append(f"| **{name}** | " + " | ".join(cells) + " |")
    return lines


def transfer_table(df: pd.DataFrame, held_out: str, pretrain_updates: int) -> list[str]:
    """The transfer rows (normalized score and return cells); a row whose interval lies
    above dt-from-scratch's is marked."""
    lines = ["| row | pretraining updates (other envs) | updates on the small data | "
             "normalized score | return | above dt from scratch beyond the intervals |",
             "|---|---|---|---|---|---|"]
    base = _runs(df, "dt-scratch", held_out)["normalized_score"].to_numpy(np.float64)
    base_hi = run_interval(base)[1] if base.size else math.nan
    for label, name in TRANSFER:
        runs = _runs(df, name, held_out)
        v = runs["normalized_score"].to_numpy(np.float64)
        lo = run_interval(v)[0] if v.size else math.nan
        above = "–" if name == "dt-scratch" or not (math.isfinite(lo) and math.isfinite(
            base_hi)) else ("yes" if lo > base_hi else "no")
        pre = pretrain_updates if name.endswith("transfer") else 0
        steps = int(runs["updates"].iloc[0]) if len(runs) else 0
        lines.append(f"| {label} | {pre} | {steps} | {cell(v)} | "
                     f"{cell(runs['mean_return'].to_numpy())} | {above} |")
    return lines


def cost_table(df: pd.DataFrame) -> list[str]:
    """Milliseconds per update (median over runs) of dt's per-env runs and the multi-task
    methods' runs on the whole suite, against dt's."""
    groups = [("dt", df["name"].str.startswith("dt-") & ~df["name"].eq("dt-scratch")),
              ("mgdt", df["name"].eq("mgdt-per-env")), ("gato", df["name"].eq("gato-per-env"))]
    runs = df.drop_duplicates(subset=["name", "seed"])
    lines = ["| method | runs | ms per update (median) | vs dt | parameters |",
             "|---|---|---|---|---|"]
    ref = math.nan
    for label, mask in groups:
        g = runs[mask.loc[runs.index]]
        ms = float(g["ms_per_update"].median()) if len(g) else math.nan
        ref = ms if label == "dt" else ref
        params = "/".join(str(int(p)) for p in sorted(g["parameters"].unique()))
        ratio = ms / ref if math.isfinite(ref) and ref > 0 else math.nan
        lines.append(f"| {label} | {len(g)} | {_fmt(ms)} | "
                     f"{'–' if not math.isfinite(ratio) else f'{ratio:.2f}x'} | {params} |")
    return lines


def dataset_table(data: dict[str, dict[str, Any]], small: str) -> list[str]:
    lines = ["| env | dataset | episodes | steps | return mean | ref min | ref max | "
             "behaviour agent learned |", "|---|---|---|---|---|---|---|---|"]
    for env, d in data.items():
        lines.append(f"| {env} | `{Path(d['path']).name}` | {d['episodes']} | {d['steps']} | "
                     f"{_fmt(d['return_mean'])} | {_fmt(d['ref_min_score'])} | "
                     f"{_fmt(d['ref_max_score'])} | {d['behaviour_learned']} |")
    return lines + ["", f"Transfer data: `{Path(small).name}`."]


def protocol(args: argparse.Namespace) -> str:
    e, u, t = len(args.envs), args.updates, args.transfer_updates
    return (f"Envs {', '.join(args.envs)}, one `{args.level}` dataset each; seeds "
            f"{args.seeds}. `dt`: {u} updates per env. `mgdt`, `gato`: {e * u} updates on the "
            f"suite (the same updates per env, balanced sampling); `(total)`: {u} updates on "
            f"the suite (the same total as one `dt` run). Transfer to {args.held_out}: "
            f"pretrained on the other envs for {(e - 1) * u} updates, then {t} updates on "
            f"{args.transfer_episodes} of its episodes; from scratch: the same {t} updates on "
            f"the same episodes. Test: {args.episodes} episodes per run and env, target and "
            f"inference setting chosen on {args.validation_episodes} validation episodes. "
            "Cells: normalized score, IQM over seeds [run-level 95% bootstrap interval of the "
            "mean]; over envs: IQM of every (env, seed) run [stratified interval], P(> dt) the "
            "probability of improvement over dt (`offline_dt.study.statistics`).")


def write_page(results: list[dict[str, Any]], data: dict[str, dict[str, Any]], small: str,
               args: argparse.Namespace, command: str, wall: float) -> Path:
    """``multitask.md`` and ``multitask.csv`` in ``args.out``; the page's path."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = frame(results)
    df.to_csv(out / "multitask.csv", index=False)
    reused = sum(bool(r.get("reused")) for r in results)
    lines = ["# One model, many envs: mgdt and gato beside single-task dt, and transfer", ""]
    if args.tiny:
        lines += ["**Tiny run (`--tiny`): toy datasets, network and budgets, a check of the "
                  "plumbing; no figure on this page is a result.**", ""]
    lines += [
        f"Command: `{command}` (`benchmarks/multitask.py`).  ",
        f"Machine: {cpu_model()}, {args.workers} run(s) at once, {args.threads} torch "
        f"thread(s) each, device {args.device}; wall {wall:.0f} s, {reused} of "
        f"{len(results)} runs reused from earlier calls.  ",
        f"Versions: {json.dumps(versions())}.", "", protocol(args), "",
        "## Datasets", "", *dataset_table(data, small), "",
        "## Normalized score per env", "", *main_table(df, args.envs), "",
        f"## Transfer to {args.held_out}", "",
        *transfer_table(df, args.held_out, (len(args.envs) - 1) * args.updates), "",
        "## Cost per training update", "",
        "The loop's own time per update (evaluation excluded), median over runs; mgdt and "
        "gato on the whole suite (gato's windows are a token per observation and action "
        "dimension, dt's and mgdt's three tokens per step).", "", *cost_table(df), ""]
    page = out / "multitask.md"
    page.write_text("\n".join(lines))
    return page
