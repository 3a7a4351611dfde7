"""Run directories read into records and frames, and the order every table and plot uses.

Layout read::

    <runs_root>/<env>/<dataset>/<method>/seed<k>/
        config.json    resolved config of the run (TrainConfig, or the baseline's settings)
        metrics.csv    training log with the eval hook's columns (dt and bc only)
        eval.json      offline_dt.evaluation.results' schema: headline return statistics and
                       the per-episode returns of every evaluated target

A *run* is one ``<method>/seed<k>`` directory (:func:`find_runs` gives one record per run:
``env``, ``dataset``, ``method``, ``seed``, ``run_dir``, ``eval``, ``config``) and its *score*
is the mean return of its headline evaluation (:func:`run_scores`). ``behaviour`` exists only
where one behaviour policy wrote the data: the replay levels (:data:`REPLAY_LEVELS`) were
written by the sequence of policies of a SAC training run, so a behaviour run found there is
skipped. The ``data`` rows' episode returns are read from the dataset file named in the runs'
``config.json`` (:func:`dataset_returns`; no rollouts).

A tuned row (``offline_dt.study.tuning``: the method trained at the parameters its search
chose on the dataset's validation episodes) lives in ``<method>-tuned/seed<k>`` beside its
study (``<method>-tuned/search/``) and is named ``<method> (tuned)`` in every table
(:func:`row_name`).

Order (:func:`method_key`, :func:`sort_key`): env, then dataset level in
:data:`~offline_dt.data.d4rl.LEVELS` order, then method in :data:`TABLE_METHODS` order (a
tuned row right after its method), other methods after them by name.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from offline_dt.data.d4rl import LEVELS, normalized_score
from offline_dt.methods import method_names

log = logging.getLogger(__name__)

RUN_COLUMNS = ["env", "dataset", "method", "seed", "episodes", "mean_return",
               "normalized_score"]
#: The methods in table order: baselines, the field's reference rows (d3rlpy), the offline
#: methods of the registry (``offline_dt.methods``) in name order; others follow by name.
METHODS = ("random", "behaviour", "mlp-bc", "pct-bc", "iql", *sorted(method_names("offline")))
#: Column order of the wide table: the dataset's own returns, then the methods.
TABLE_METHODS = ("data", *METHODS)
#: Levels written by a sequence of policies (a SAC run's replay buffer): no behaviour agent.
REPLAY_LEVELS = ("medium-replay", "full-replay")
NAN = float("nan")
#: A tuned row's method directory is ``<method>-tuned``; its tables name ``<method> (tuned)``.
TUNED_SUFFIX = "-tuned"
TUNED_LABEL = " (tuned)"


def row_name(method_dir: str) -> str:
    """The tables' name of a method directory: ``qt-tuned`` → ``qt (tuned)``, others as they
    are."""
    if method_dir.endswith(TUNED_SUFFIX):
        return method_dir.removesuffix(TUNED_SUFFIX) + TUNED_LABEL
    return method_dir


def base_method(row: str) -> str:
    """The method a table row is of: ``qt (tuned)`` → ``qt``, others as they are."""
    return row.removesuffix(TUNED_LABEL)


def dataset_level(name: str) -> str | None:
    """The level a dataset name refers to (``pendulum-medium-replay-v0`` → ``medium-replay``)."""
    for level in sorted(LEVELS, key=len, reverse=True):
        if re.search(rf"(^|[-_/]){re.escape(level)}($|[-_/])", name):
            return level
    return None


def method_key(method: str) -> tuple[int, str]:
    """Sort key of a method: its :data:`TABLE_METHODS` position (a tuned row its method's,
    after it), others after by name."""
    base = base_method(method)
    mi = TABLE_METHODS.index(base) if base in TABLE_METHODS else len(TABLE_METHODS)
    return (mi, method)


def sort_key(env: str, dataset: str, method: str) -> tuple:
    """Sort key of a results row: env, dataset level (:data:`LEVELS` order), dataset, method."""
    level = dataset_level(dataset)
    li = LEVELS.index(level) if level in LEVELS else len(LEVELS)
    return (env, li, dataset, *method_key(method))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from e


def find_runs(runs_root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run directory ``<env>/<dataset>/<method>/seed<k>`` under ``runs_root`` that holds
    an ``eval.json``, with its parsed eval and config. Behaviour runs on a replay level are
    skipped (no single policy wrote that data).

    Raises:
        ValueError: an ``eval.json`` or ``config.json`` that is not readable JSON (names it).
    """
    root = Path(runs_root)
    runs = []
    for eval_path in sorted(root.glob("*/*/*/seed*/eval.json")):
        run_dir = eval_path.parent
        env, dataset, method_dir, seed_dir = run_dir.relative_to(root).parts
        method = row_name(method_dir)
        m = re.fullmatch(r"seed(\d+)", seed_dir)
        if m is None:
            continue
        if method == "behaviour" and dataset_level(dataset) in REPLAY_LEVELS:
            log.info("%s: skipped (a replay dataset has no behaviour agent)", run_dir)
            continue
        cfg_path = run_dir / "config.json"
        runs.append({
            "env": env, "dataset": dataset, "method": method, "seed": int(m.group(1)),
            "run_dir": run_dir,
            "eval": _read_json(eval_path),
            "config": _read_json(cfg_path) if cfg_path.is_file() else {},
        })
    return runs


def no_runs_error(runs_root: str | os.PathLike) -> FileNotFoundError:
    """The error for a ``runs_root`` without runs, pointing at the preset directories below it
    (``reproduce`` keeps each preset's runs apart: ``runs/<preset>/<env>/...``)."""
    nested = sorted({str(p.parents[4]) for p in Path(runs_root).glob(
        "*/*/*/*/seed*/eval.json")})
    hint = f"; runs found under {', '.join(nested)}: pass one of those" if nested else ""
    return FileNotFoundError(
        f"no run directories <env>/<dataset>/<method>/seed<k>/eval.json under "
        f"{runs_root}{hint}")


def headline(ev: dict[str, Any]) -> dict[str, Any]:
    """The headline evaluation of an ``eval.json``: its ``targets[headline_index]`` row, or the
    top-level ``mean_return``/``std_return``/``episodes``/``max_return`` of an older file."""
    targets = ev.get("targets") or []
    if targets:
        return targets[int(ev.get("headline_index", 0))]
    return {"mean": ev["mean_return"], "std": ev["std_return"], "episodes": ev["episodes"],
            "max": ev.get("max_return", NAN)}


def score(value: float, ref_min: Any, ref_max: Any) -> float:
    """D4RL normalized score of a return (``offline_dt.data.d4rl.normalized_score``); NaN
    without reference scores."""
    s = normalized_score(value, ref_min, ref_max)
    return NAN if s is None else float(s)


def run_scores(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run (:data:`RUN_COLUMNS`): its headline mean return and normalized score."""
    rows = []
    for r in runs:
        ev, h = r["eval"], headline(r["eval"])
        rows.append({"env": r["env"], "dataset": r["dataset"], "method": r["method"],
                     "seed": r["seed"], "episodes": int(h["episodes"]),
                     "mean_return": float(h["mean"]),
                     "normalized_score": score(h["mean"], ev.get("ref_min_score"),
                                               ev.get("ref_max_score"))})
    rows.sort(key=lambda row: (*sort_key(row["env"], row["dataset"], row["method"]),
                               row["seed"]))
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _dataset_source(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """(dataset id or path, Minari root) named by a run's config.json (flat or nested)."""
    # Trainer: {"train_config": {"dataset": ..., "minari_root": ...}, "dataset": {info}};
    # baselines: flat {"dataset": ..., "minari_root": ...}.
    cands = [config.get("train_config") or {}, config]
    cands += [v for v in config.values() if isinstance(v, dict)]
    for c in cands:
        if isinstance(c, dict) and isinstance(c.get("dataset"), str) and c["dataset"]:
            return c["dataset"], c.get("minari_root")
    return None, None


def _limits(ds: Any) -> Any:
    """``state_action_limits([ds])``, or None for a dataset SACo cannot bin."""
    from offline_dt.data.characteristics import CharacteristicsError, state_action_limits

    try:
        return state_action_limits([ds])
    except CharacteristicsError:
        return None


def dataset_returns(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(env, dataset) → ``{"returns": episode returns, "ref_min_score", "ref_max_score",
    "tq", "level", "source", "limits"}`` (TQ and the state-action limits of
    ``offline_dt.data.characteristics``, None where not defined), read from the dataset file
    named in the runs' config.json (the first readable one). The reference scores are those
    of the runs' eval.json (what the method rows use), else the file's metadata. Datasets
    that cannot be read are left out, with a warning."""
    from offline_dt.data import load_dataset
    from offline_dt.data.characteristics import trajectory_quality

    out: dict[tuple[str, str], dict[str, Any]] = {}
    failed: set[tuple[str, str | None]] = set()
    for r in runs:
        key = (r["env"], r["dataset"])
        source = _dataset_source(r["config"])
        if key in out or source[0] is None or source in failed:
            continue
        try:
            ds = load_dataset(*source)
        except (FileNotFoundError, ValueError, OSError) as e:
            log.warning("dataset %s of %s not readable: %s", source[0], r["run_dir"], e)
            failed.add(source)
            continue
        refs = [r2["eval"] for r2 in runs if (r2["env"], r2["dataset"]) == key]
        ref = next((e for e in refs if e.get("ref_min_score") is not None
                    and e.get("ref_max_score") is not None), ds.metadata)
        lo, hi = ref.get("ref_min_score"), ref.get("ref_max_score")
        out[key] = {"returns": ds.episode_returns, "ref_min_score": lo, "ref_max_score": hi,
                    "tq": trajectory_quality(ds, lo, hi), "level": ds.metadata.get("level"),
                    "source": source, "limits": _limits(ds)}
    return out
