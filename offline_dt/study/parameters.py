"""The chosen parameters per dataset (the reference study's Table I, "Best Parameters"): what
each tuned row's search (``offline_dt.study.tuning``) chose, what it searched and at what cost.

Read from the studies beside the tuned rows, ``<runs_root>/<env>/<dataset>/<method>-tuned/
search/`` (``best.json``: the best trial's parameters, its validation mean return, the trial
counts; ``search.json``: the study's config and space; ``trials.csv``: every trial's
seconds), nothing recomputed. :func:`parameters_table` is ``parameters.csv`` (one row per env
× dataset × tuned row), :func:`parameters_markdown` the ``results.md`` section: per env and
tuned row a table (rows datasets, one column per parameter) and what was searched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from offline_dt.study.runs import TUNED_SUFFIX, row_name, sort_key
from offline_dt.study.tables import to_markdown

#: parameters.csv's leading columns; one column per parameter follows.
LEAD_COLUMNS = ["env", "dataset", "method", "trials", "complete", "pruned", "failed",
                "validation_return", "validation_episodes", "search_seed", "search_seconds"]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from e


def _search_config(saved: dict[str, Any]) -> dict[str, Any]:
    """The trials' base config (a transformer study's ``train``, a reference study's
    ``reference``) and the study's settings, from ``search.json``."""
    cfg = saved.get("search_config") or {}
    return {"base": cfg.get("train") or cfg.get("reference") or {}, **cfg}


def find_studies(runs_root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every tuned row's study under ``runs_root`` with a ``best.json``: ``env``,
    ``dataset``, ``method`` (the table's name, ``qt (tuned)``), ``best``, ``search``
    (``search.json``), ``seconds`` (its trials' summed), in table order.

    Raises:
        ValueError: a ``best.json`` or ``search.json`` that is not readable JSON.
    """
    root = Path(runs_root)
    out = []
    for best in sorted(root.glob(f"*/*/*{TUNED_SUFFIX}/search/best.json")):
        env, dataset, method_dir = best.parent.parent.relative_to(root).parts
        trials = best.parent / "trials.csv"
        seconds = float("nan")
        if trials.is_file():
            frame = pd.read_csv(trials)
            seconds = float(frame["seconds"].sum()) if "seconds" in frame else seconds
        search = best.parent / "search.json"
        out.append({"env": env, "dataset": dataset, "method": row_name(method_dir),
                    "best": _read(best), "search": _read(search) if search.is_file() else {},
                    "seconds": seconds})
    out.sort(key=lambda s: sort_key(s["env"], s["dataset"], s["method"]))
    return out


def parameters_table(studies: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per study (:func:`find_studies`): :data:`LEAD_COLUMNS`, then the chosen
    value of every parameter any study searched (NaN where that study did not)."""
    rows = []
    for s in studies:
        best, cfg = s["best"], _search_config(s["search"])
        rows.append({"env": s["env"], "dataset": s["dataset"], "method": s["method"],
                     "trials": best.get("trials"), "complete": best.get("complete"),
                     "pruned": best.get("pruned"), "failed": best.get("failed"),
                     "validation_return": best.get("best_value"),
                     "validation_episodes": cfg.get("validation_episodes"),
                     "search_seed": cfg["base"].get("seed"), "search_seconds": s["seconds"],
                     **best.get("best_params", {})})
    names = list(dict.fromkeys(k for r in rows for k in r if k not in LEAD_COLUMNS))
    return pd.DataFrame(rows, columns=[*LEAD_COLUMNS, *names])


def describe_space(space: dict[str, Any]) -> str:
    """A study's space (``search.json``'s, as JSON) in words: ``learning_rate log-uniform
    [0.0001, 0.01], embed_dim one of 32, 64, 128``."""
    parts = []
    for name, p in space.items():
        if "values" in p:
            parts.append(f"{name} one of {', '.join(str(v) for v in p['values'])}")
        else:
            kind = "log-uniform" if p.get("log") else "uniform"
            parts.append(f"{name} {kind} [{p['low']}, {p['high']}]")
    return ", ".join(parts)


def _searched_note(method: str, studies: list[dict[str, Any]]) -> str:
    s = studies[0]
    cfg = _search_config(s["search"])
    pruner = cfg.get("pruner", "median")
    curve = cfg.get("curve_points", 0)
    episodes = cfg.get("curve_episodes") or cfg["base"].get("eval_episodes")
    return (f"`{method}` searched {describe_space(s['search'].get('space', {}))}; "
            f"{s['best'].get('trials')} trials per dataset (Optuna TPE, {pruner} pruning on "
            f"{curve} learning-curve points of {episodes} validation episodes each), every "
            f"trial trained with seed {cfg['base'].get('seed')} at the preset's budget and "
            f"scored by its mean return on {cfg.get('validation_episodes')} validation "
            f"episodes (never a test episode).")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4g}"
    return str(value)


def parameters_markdown(table: pd.DataFrame, studies: list[dict[str, Any]], env: str) -> str:
    """The ``results.md`` section of ``env``: per tuned row, the chosen parameters per
    dataset with the best trial's validation return and the trial counts, and what was
    searched; empty without studies."""
    t = table[table["env"] == env]
    if t.empty:
        return ""
    parts = [f"### Chosen parameters per dataset ({env}; searched on validation episodes)"]
    for method in dict.fromkeys(t["method"]):
        sub = t[t["method"] == method].dropna(axis=1, how="all")
        names = [c for c in sub.columns if c not in LEAD_COLUMNS]
        frame = pd.DataFrame({
            "dataset": sub["dataset"],
            **{n: [_fmt(v) for v in sub[n]] for n in names},
            "validation return": [_fmt(v) for v in sub["validation_return"]],
            "trials (complete / pruned / failed)": [
                f"{int(r.complete)} / {int(r.pruned)} / {int(r.failed)}"
                for r in sub.itertuples()],
            "search seconds": [_fmt(round(v, 1)) for v in sub["search_seconds"]],
        })
        mine = [s for s in studies if s["env"] == env and s["method"] == method]
        parts += [f"`{method}`:", to_markdown(frame), _searched_note(method, mine)]
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"
