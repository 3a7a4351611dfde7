"""What each run's training cost in data: its gradient updates and the transitions they saw,
computed from the run's ``config.json`` (nothing typed, nothing measured).

* a method of the one training loop (``train_config``: dt, bc, qt, ...): ``steps`` updates,
  each of ``batch_size`` windows of ``context_length`` timesteps (with band attention
  ``segment_length``), so an update sees ``batch_size * K`` transitions (padding included: a
  window that starts near an episode's end holds fewer real steps);
* a d3rlpy reference row (``reference_config``): ``steps`` updates, each of d3rlpy's
  ``batch_size`` transitions (its ``algorithm`` config: IQL 256, BC 100);
* the baselines (``random``, ``behaviour``) and the ``data`` rows train nothing on the data:
  NaN.

The numbers are the run's training budget: a run that chose an intermediate checkpoint on
validation episodes (``TrainConfig.keep_checkpoints``) or a ``candidates/`` run trained
alongside it (qt's terms-off alternative) is not counted apart, and a search's trials
(``offline_dt.study.tuning``) are the study's cost, stated in its parameters table.
"""

from __future__ import annotations

from typing import Any

NAN = float("nan")
#: results.csv's budget columns (per run; a row's runs share one config, up to the seed).
BUDGET_COLUMNS = ["updates", "transitions_per_update", "transitions"]


def run_budget(config: dict[str, Any]) -> dict[str, float]:
    """:data:`BUDGET_COLUMNS` of one run from its ``config.json`` (parsed): the training
    loop's ``train_config`` or a reference row's ``reference_config`` with its d3rlpy
    ``algorithm``; NaN for anything else (a baseline's config, an empty one) and for a config
    that lacks a field the budget needs (a hand-made or truncated one)."""
    try:
        if isinstance(config.get("train_config"), dict):
            t = config["train_config"]
            band = t.get("attention") == "band" and t.get("segment_length")
            per = int(t["batch_size"]) * int(t["segment_length"] if band else
                                             t["context_length"])
            updates = int(t["steps"])
        elif isinstance(config.get("reference_config"), dict):
            updates = int(config["reference_config"]["steps"])
            per = int(config["algorithm"]["batch_size"])
        else:
            return dict.fromkeys(BUDGET_COLUMNS, NAN)
    except (KeyError, TypeError, ValueError):
        return dict.fromkeys(BUDGET_COLUMNS, NAN)
    return {"updates": float(updates), "transitions_per_update": float(per),
            "transitions": float(updates * per)}


def format_budget(updates: float, transitions: float) -> str:
    """``"2,500 / 3,200,000"`` (updates / transitions seen), ``n/a`` without a budget."""
    if updates != updates or transitions != transitions:  # NaN
        return "n/a"
    return f"{int(updates):,} / {int(transitions):,}"
