"""What a search writes beside its trials (``offline_dt.study.search``): the trials table
(CSV and Markdown), the best trial (``best.json``) and Optuna's standard plots (optimisation
history, parameter importances), each written atomically."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_dt.data.atomic import atomic_path
from offline_dt.training.configs import save_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """A finished (or stopped) search: the best trial and what the study holds."""

    best_value: float | None
    best_params: dict[str, Any]
    best_run_dir: Path | None
    complete: int
    pruned: int
    failed: int
    study_dir: Path


def trials_table(study: Any) -> Any:
    """The study's trials as a DataFrame: number, state, value (validation mean return),
    every parameter, the trial's run directory and its seconds; by trial number."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs",
                                       "duration"))
    if df.empty:
        return df
    df = df.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    if "duration" in df:
        df["seconds"] = df.pop("duration").dt.total_seconds().round(1)
    return df.drop(columns=[c for c in ("chosen",) if c in df]).sort_values("number")


def _plots(study: Any, out: Path) -> list[Path]:
    """Optuna's optimisation history and (with 2+ complete trials) parameter importances,
    as PNGs; a plot Optuna cannot draw for this study is skipped with a logged note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    written = []
    complete = [t for t in study.trials if t.value is not None]
    for name, draw, needed in (("history.png", vis.plot_optimization_history, 1),
                               ("importances.png", vis.plot_param_importances, 2)):
        if len(complete) < needed:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's "experimental" warnings
                ax = draw(study)
            fig = ax.figure
            fig.tight_layout()
            with atomic_path(out / name, overwrite=True) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
            plt.close(fig)
            written.append(out / name)
        except (ValueError, RuntimeError) as e:
            log.info("search: %s not drawn (%s)", name, e)
    return written


def write_outputs(cfg: Any, study: Any, title: str) -> Any:
    """Write ``trials.csv``, ``trials.md`` (headed ``Search: <title>``), ``best.json`` and
    the plots into ``cfg.resolved_study_dir()``; the :class:`SearchResult`."""
    out = cfg.resolved_study_dir()
    df = trials_table(study)
    with atomic_path(out / "trials.csv", overwrite=True) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out / "trials.md", overwrite=True) as tmp:
        tmp.write_text(f"# Search: {title}\n\n"
                       f"Value: the best mean return over the checkpoint's candidates on "
                       f"{cfg.validation_episodes} validation episodes (never a test "
                       f"episode).\n\n" + (df.to_markdown(index=False) if not df.empty
                                           else "(no trials)") + "\n")
    states = [t.state.name for t in study.trials]
    done = [t for t in study.trials if t.value is not None and math.isfinite(t.value)]
    best = max(done, key=lambda t: t.value) if done else None
    result = SearchResult(
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
        best_run_dir=None if best is None else Path(best.user_attrs["run_dir"]),
        complete=states.count("COMPLETE"), pruned=states.count("PRUNED"),
        failed=states.count("FAIL"), study_dir=out)
    save_json({"best_value": result.best_value, "best_params": result.best_params,
               "best_trial": None if best is None else best.number,
               "best_run_dir": result.best_run_dir,
               "best_chosen": None if best is None else best.user_attrs.get("chosen"),
               "complete": result.complete, "pruned": result.pruned, "failed": result.failed,
               "trials": cfg.trials, "study_name": cfg.resolved_study_name(),
               "storage": cfg.resolved_storage()}, out / "best.json")
    _plots(study, out)
    return result
