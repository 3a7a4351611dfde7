"""The notes under the wide table: what each row is, how each run chose its target and
checkpoint, and what the cells and aggregates mean.

Every cell reports test episodes only; how each run chose its target return and inference
settings (on validation episodes since issue 18) is read from its ``eval.json``
(:func:`selection_rule`) and said under the table (:func:`selection_note`), with the
checkpoints chosen where a run chose among several (:func:`checkpoint_choices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offline_dt.methods import METHODS as REGISTERED
from offline_dt.study.runs import TUNED_LABEL, base_method, dataset_level, method_key
from offline_dt.training.checkpoint import KEPT_DIR

#: What each row that is no registered method is, for the notes under the wide table (methods
#: present only); a registered method's note is its ``description`` (:func:`methods_note`).
METHOD_NOTES = {
    "random": "uniform random actions",
    "behaviour": "the policy that wrote the data, acting as it did when collecting",
    "mlp-bc": "behaviour cloning by an MLP on single states (d3rlpy BC defaults)",
    "pct-bc": "%BC: the same MLP BC on the top 10% of episodes by return (Chen et al. 2021, "
              "Table 3)",
    "iql": "Implicit Q-Learning (Kostrikov et al. 2021; d3rlpy IQL defaults)",
}

TABLE_NOTES = """\
Cells: mean return over training runs [95% bootstrap interval over runs] (D4RL normalized \
score); the interval is run-level (training seeds resampled, percentile bootstrap as in \
rliable, Agarwal et al. 2021) and is left out with a single run, where it is undefined. \
`data`: the episode returns stored in the dataset file, mean ± std over its episodes \
(normalized score) and its best episode; it is a reference, not a competitor. Bold: the \
method whose interval lies entirely above every other method's interval on that dataset \
(none when intervals overlap or are undefined). `results.csv` also keeps the episode-level \
`ci95` (1.96 std / √episodes, evaluation noise only) and the IQM of the runs."""

REPLAY_NOTE = """\
`behaviour` is n/a on {levels}: those datasets were written by the sequence of policies of a \
SAC training run (its replay buffer), not by one behaviour agent; compare with the `data` \
column instead."""

BUDGET_NOTE = """\
Training budget per run: gradient updates / transitions seen, from each run's `config.json` \
(`offline_dt.study.budget`): a DT-style update sees batch × K transitions (band attention: \
batch × segment), a d3rlpy update its batch (IQL 256, BC 100); `n/a`: nothing is trained on \
the data. Not counted here: a row's candidate runs (qt's terms-off alternative, each as large \
as the row's run) and a tuned row's search trials (see the chosen parameters)."""

AGGREGATE_NOTES = """\
Aggregates over the datasets of the environment (rliable's definitions, computed with \
scipy.stats): IQM = interquartile mean of the normalized scores of all runs, interval from a \
stratified bootstrap (runs resampled within each dataset); P(method > {ref}) = probability \
that a run of the method scores a higher return than a run of `{ref}` on the same dataset \
(ties ½), averaged over the datasets both have. Methods evaluated on fewer datasets (see \
`datasets`) are aggregated over those only."""


def selection_rule(ev: dict[str, Any]) -> str:
    """How one ``eval.json`` chose what its headline reports, in words: among its candidates
    on validation episodes (``selection``, written since issue 18), nothing (one candidate),
    or, in an older file with several targets, on the test episodes themselves."""
    sel = ev.get("selection")
    if isinstance(sel, dict):
        cands = sel.get("candidates") or []
        what = "target return × inference setting"
        paths = [str(c["checkpoint"]) for c in cands if "checkpoint" in c]
        if paths:
            kept = any(Path(p).parent.name == KEPT_DIR for p in paths)
            other = any("candidates" in Path(p).parts for p in paths)
            whose = "the run's" + (" or a `candidates/` run's, trained with other options"
                                   if other else "")
            when = ", its last or one kept along the way" if kept else ""
            what = f"checkpoint ({whose}{when}) × {what}"
        if sel.get("validation"):
            return (f"the best mean return of {len(cands)} candidates ({what}) on "
                    f"{sel.get('validation_episodes')} validation episodes "
                    f"(reset seeds {sel.get('validation_episode_seeds')}, never a test "
                    "episode), then that candidate alone on the test episodes")
        return "one candidate, nothing chosen"
    n = len(ev.get("targets") or [])
    if n > 1:
        return (f"the best of {n} target returns on the test episodes themselves (an older "
                "eval.json, before targets were chosen on validation episodes: optimistic)")
    return "one candidate, nothing chosen"


def selection_note(runs: list[dict[str, Any]], env: str) -> str:
    """The note under the wide table saying, per method of ``env``, how each run's target
    return and inference settings were chosen (:func:`selection_rule`)."""
    rules: dict[str, dict[str, None]] = {}
    for r in sorted((r for r in runs if r["env"] == env),
                    key=lambda r: method_key(r["method"])):
        rules.setdefault(r["method"], {})[selection_rule(r["eval"])] = None
    by_rule: dict[str, list[str]] = {}
    for method, found in rules.items():
        by_rule.setdefault("; or ".join(found), []).append(f"`{method}`")
    honest = not any("test episodes themselves" in rule for rule in by_rule)
    head = "How targets were chosen" + (
        " (no choice is made on the test episodes the cells report)" if honest else "")
    return head + ": " + "; ".join(f"{', '.join(ms)}: {rule}"
                                   for rule, ms in by_rule.items()) + "." + \
        checkpoint_choices(runs, env)


def chosen_checkpoint(ev: dict[str, Any]) -> str | None:
    """Which checkpoint an ``eval.json`` chose when its candidates named several: ``own``
    (the run's own last checkpoint) or the name of its ``candidates/<name>`` run, followed by
    ``step N`` for an intermediate checkpoint that run kept (``checkpoints/step-N.pt``); None
    when there was no choice of checkpoint."""
    chosen = (ev.get("selection") or {}).get("chosen") or {}
    if "checkpoint" not in chosen:
        return None
    parts = Path(chosen["checkpoint"]).parts
    step = ""
    if len(parts) > 1 and parts[-2] == KEPT_DIR:  # <run>/checkpoints/step-0000500.pt
        step = f" step {int(Path(parts[-1]).stem.split('-')[-1])}"
        parts = parts[:-2]
    name = parts[-1] if len(parts) > 1 and parts[-2] == "candidates" else "own"
    return name + step


def checkpoint_choices(runs: list[dict[str, Any]], env: str) -> str:
    """A sentence per method of ``env`` whose runs chose among checkpoints: how many runs per
    dataset level chose each (e.g. qt's terms-off run); empty when none did."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for r in runs:
        name = chosen_checkpoint(r["eval"]) if r["env"] == env else None
        if name is not None:
            level = dataset_level(r["dataset"]) or r["dataset"]
            per = counts.setdefault(r["method"], {}).setdefault(level, {})
            per[name] = per.get(name, 0) + 1
    lines = []
    for method, levels in sorted(counts.items(), key=lambda kv: method_key(kv[0])):
        parts = [f"{level} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                 for level, c in levels.items()]
        lines.append(f" `{method}`'s chosen checkpoint per level (runs): " + "; ".join(parts)
                     + ".")
    return "".join(lines)


def methods_note(methods: Sequence[str]) -> str:
    """The note naming what each row of the wide table is (:data:`METHOD_NOTES`, and the
    registered methods' descriptions)."""
    notes = {**METHOD_NOTES, **{m: cls.description for m, cls in REGISTERED.items()}}
    notes |= {m: f"`{base_method(m)}` trained at the parameters its search chose on that "
                 f"dataset's validation episodes (chosen parameters below; the search's own "
                 f"training seed, none of the rows')"
              for m in methods if m.endswith(TUNED_LABEL) and base_method(m) in notes}
    known = [m for m in methods if m in notes]
    return "Rows: " + "; ".join(f"`{m}`: {notes[m]}" for m in known) + "." if known \
        else ""
