"""``offline-dt search``: a method's hyperparameters chosen per dataset on validation episodes,
by Optuna (Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter Optimization
Framework"), resumable and parallel.

One study per (dataset, method): TPE sampling (Bergstra et al. 2011) over the method's
declared search space (``Method.search_space``: ``TrainConfig`` fields and options as
``"options.<name>"``, e.g. qt's ``options.expectile``), or the part of it named by
``--params``. A trial is an ordinary training run in ``<study dir>/trials/<key>`` (config,
metrics, checkpoint; ``<key>`` a digest of its parameters), scored by
``offline_dt.evaluation.evaluate.validation_score``: the best mean return over the
checkpoint's targets and inference settings on validation episodes, which has no way to roll
out a test episode. Its learning curve (``--curve-points`` points, each on validation
episodes of its own) feeds the pruner (median or successive halving), which stops a poor trial
early.

Storage is a SQLite file in the study directory by default, with Optuna's heartbeat: a trial
whose process was killed is marked failed after ``--heartbeat`` seconds without a beat and
retried with the same parameters, i.e. in the same run directory, where training resumes from
its last checkpoint. Any Optuna storage URL works (``--storage postgresql://...``, or
``journal:PATH`` for Optuna's journal file on a shared filesystem, which has no heartbeat),
so several processes or machines work on one study; ``--workers N`` starts N processes on
this machine. The study's trials table, best trial and Optuna's optimisation-history and
parameter-importance plots are written to the study directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tyro

from offline_dt.methods import get_method
from offline_dt.methods.options import Choice, Range, option_values
from offline_dt.study.search_report import SearchResult, write_outputs
from offline_dt.training.configs import save_json, to_jsonable
from offline_dt.training.train_config import TrainConfig

log = logging.getLogger(__name__)

PRUNERS = ("median", "halving", "none")


class MissingSearchDependency(ImportError):
    """Optuna is not installed."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - optuna is a dependency
        raise MissingSearchDependency(
            "offline-dt search needs Optuna: pip install optuna") from e
    return optuna


@dataclass
class SearchConfig:
    """A hyperparameter search: the base training run (``train``: every ``offline-dt train``
    flag; its ``run_dir`` is replaced by each trial's) and how the study runs."""

    train: Annotated[TrainConfig, tyro.conf.arg(name="")] = field(
        default_factory=TrainConfig)
    trials: int = field(default=16, metadata={
        "help": "trials of the study in total (complete or pruned; failed ones are retried), "
                "across every process working on it (a process that started a trial before "
                "the total was reached finishes it: up to workers - 1 more)"})
    params: list[str] | None = field(default=None, metadata={
        "help": "the names of the method's search space to tune (default: all of it; "
                "offline-dt search --list-params shows them)"})
    list_params: bool = field(default=False, metadata={
        "help": "print the method's search space and exit"})
    study_dir: Path | None = field(default=None, metadata={
        "help": "the study's directory (default data/search/<dataset>/<method>): study.db, "
                "trials/ (one run directory per trial), trials.csv, best.json, plots"})
    storage: str | None = field(default=None, metadata={
        "help": "Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or "
                "journal:PATH (a journal file); default sqlite:///<study dir>/study.db"})
    study_name: str | None = field(default=None, metadata={
        "help": "the study's name in the storage (default <dataset>/<method>)"})
    workers: int = field(default=1, metadata={
        "help": "processes on this machine working on the study at once, each with "
                "cpu_count/workers torch threads"})
    pruner: str = field(default="median", metadata={
        "help": "median: stop a trial whose learning-curve point is below the median of "
                "earlier trials' at the same step (after 2 trials); halving: successive "
                "halving; none", "choices": list(PRUNERS)})
    curve_points: int = field(default=4, metadata={
        "help": "learning-curve points per trial (each TrainConfig.eval_episodes validation "
                "episodes of its own), what the pruner reads; 0: no curve, no pruning"})
    validation_episodes: int = field(default=20, metadata={
        "help": "validation episodes per candidate target/setting of a trial's checkpoint; "
                "the trial's value is the best candidate's mean return"})
    sampler_seed: int = field(default=0, metadata={
        "help": "TPE sampler seed (worker k uses sampler_seed + k)"})
    heartbeat: int = field(default=60, metadata={
        "help": "seconds between a running trial's heartbeats (RDB storage); a trial without "
                "one for twice as long is failed and retried"})

    def validate(self) -> None:
        """Raises ValueError naming the argument, what is expected and the value found."""
        if not self.train.dataset:
            raise ValueError("--dataset ID_OR_PATH is required (the dataset to search on)")
        self.train.validate()
        for name in ("trials", "workers", "validation_episodes", "heartbeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchConfig.{name} must be >= 1, found "
                                 f"{getattr(self, name)}")
        if self.curve_points < 0 or self.curve_points > self.train.steps:
            raise ValueError(f"SearchConfig.curve_points must be in [0, steps="
                             f"{self.train.steps}], found {self.curve_points}")
        space = search_space(self.train.method)
        unknown = sorted(set(self.params or ()) - set(space))
        if unknown or (self.params is not None and not self.params):
            raise ValueError(f"SearchConfig.params: {self.train.method} can tune "
                             f"{sorted(space)}, found {self.params}")

    def resolved_study_dir(self) -> Path:
        if self.study_dir is not None:
            return Path(self.study_dir)
        name = Path(self.train.dataset).stem if self.train.dataset.endswith(".hdf5") \
            else self.train.dataset.replace("/", "_")
        return Path("data/search") / name / self.train.method

    def resolved_storage(self) -> str:
        if self.storage:
            return self.storage
        return f"sqlite:///{(self.resolved_study_dir() / 'study.db').resolve()}"

    def resolved_study_name(self) -> str:
        return self.study_name or f"{self.train.dataset}/{self.train.method}"


# ---------------------------------------------------------------------------------- space
def search_space(method: str) -> dict[str, Range | Choice]:
    """The registered method's search space (``Method.search_space``).

    Raises:
        ValueError: an unknown method, or a space naming a field neither ``TrainConfig`` nor
            the method's options have.
    """
    m = get_method(method)
    space = dict(m.search_space)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {f"options.{f.name}" for f in dataclasses.fields(m.options_class)} \
        if m.options_class else set()
    bad = sorted(set(space) - fields - options)
    if bad:
        raise ValueError(f"method {method!r}: its search_space names {bad}, which are neither "
                         f"TrainConfig fields nor options.<name> of its options")
    return space


def suggest(trial: Any, space: dict[str, Range | Choice]) -> dict[str, Any]:
    """One value per name of ``space`` from an Optuna ``trial``."""
    values = {}
    for name, p in space.items():
        if isinstance(p, Choice):
            values[name] = trial.suggest_categorical(name, list(p.values))
        elif p.integer:
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            values[name] = trial.suggest_float(name, float(p.low), float(p.high), log=p.log)
    return values


def trial_key(params: dict[str, Any]) -> str:
    """The trial's run-directory name: a digest of its parameters, so a retried trial (same
    parameters) lands in the same directory and resumes its checkpoint."""
    text = json.dumps(to_jsonable(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def with_params(base: TrainConfig, params: dict[str, Any], **changes: Any) -> TrainConfig:
    """``base`` with the search-space values ``params`` set: ``TrainConfig`` fields by name,
    ``"options.<name>"`` through the method's options (the others kept), and ``changes``."""
    fields = {k: v for k, v in params.items() if not k.startswith("options.")}
    options = {k.removeprefix("options."): v for k, v in params.items() if k.startswith("options.")}
    if options:
        fields["method_options"] = {**option_values(base.method_options), **options}
    return dataclasses.replace(base, **fields, **changes)


def trial_config(cfg: SearchConfig, params: dict[str, Any], run_dir: Path) -> TrainConfig:
    """``cfg.train`` with ``params`` set (:func:`with_params`), in ``run_dir``, its learning
    curve at ``cfg.curve_points`` points, resumed where a checkpoint is already there (a
    retried trial)."""
    eval_every = max(1, cfg.train.steps // cfg.curve_points) if cfg.curve_points else 0
    return with_params(cfg.train, params, run_dir=run_dir, eval_every=eval_every,
                       progress=False, resume=(run_dir / "checkpoint.pt").is_file(),
                       overwrite=False)


# ---------------------------------------------------------------------------------- trials
def pruning_hook(trial: Any, hook: Any) -> Any:
    """``hook`` (a learning-curve eval hook) that reports each point's validation mean to
    the ``trial`` and raises ``optuna.TrialPruned`` where the pruner says so."""
    optuna = _optuna()

    def reported(run: Any, step: int) -> dict[str, float]:
        metrics = hook(run, step)
        trial.report(float(metrics["eval_return_mean"]), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"step {step}: validation curve mean "
                                     f"{metrics['eval_return_mean']:.2f}")
        return metrics

    return reported


def objective(cfg: SearchConfig) -> Any:
    """The study's objective: train the trial's run (pruned on its learning curve) and score
    its checkpoint on validation episodes (``validation_score``)."""
    from offline_dt.evaluation.curves import make_eval_hook
    from offline_dt.evaluation.evaluate import validation_score
    from offline_dt.training.loop import train

    space = {k: v for k, v in search_space(cfg.train.method).items()
             if cfg.params is None or k in cfg.params}
    root = cfg.resolved_study_dir() / "trials"

    def run(trial: Any) -> float:
        params = suggest(trial, space)
        run_dir = root / trial_key(params)
        trial.set_user_attr("run_dir", str(run_dir))
        tcfg = trial_config(cfg, params, run_dir)
        hook = make_eval_hook() if tcfg.eval_every else None
        if hook is not None and cfg.pruner != "none":
            hook = pruning_hook(trial, hook)
        train(tcfg, eval_hook=hook)
        value, chosen = validation_score(run_dir, cfg.validation_episodes, tcfg.seed,
                                         tcfg.device, tcfg.env_id)
        trial.set_user_attr("chosen", {k: chosen.get(k) for k in ("target_return", "settings")})
        return value

    return run


# ---------------------------------------------------------------------------------- the study
def _storage(cfg: SearchConfig) -> Any:
    """The Optuna storage of ``cfg``: RDB (with heartbeats and the retry of a failed trial)
    or a journal file."""
    optuna = _optuna()
    url = cfg.resolved_storage()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback  # the name before Optuna 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = retry_class(max_retry=3)
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params \
        else "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=cfg.heartbeat,
                                          grace_period=2 * cfg.heartbeat, **{key: retry})


def load_study(cfg: SearchConfig, worker: int = 0) -> Any:
    """The study (created, or loaded where it exists: a search run again continues it)."""
    optuna = _optuna()
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=2),
              "halving": optuna.pruners.SuccessiveHalvingPruner(),
              "none": optuna.pruners.NopPruner()}[cfg.pruner]
    sampler = optuna.samplers.TPESampler(seed=cfg.sampler_seed + worker)
    return optuna.create_study(storage=_storage(cfg), study_name=cfg.resolved_study_name(),
                               direction="maximize", sampler=sampler, pruner=pruner,
                               load_if_exists=True)


def _finished(study: Any) -> int:
    optuna = _optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _progress(cfg: SearchConfig) -> Any:
    """Optuna callback: one line per finished trial (n of N, its value, the best so far)."""
    def report(study: Any, trial: Any) -> None:
        best = study.best_trial if _finished(study) and any(
            t.value is not None for t in study.get_trials(deepcopy=False)) else None
        log.info("trial %d of %d (#%d): %s %s; best so far %s (#%s)", _finished(study),
                 cfg.trials, trial.number, trial.state.name.lower(),
                 "" if trial.value is None else f"{trial.value:.2f}",
                 "-" if best is None else f"{best.value:.2f}",
                 "-" if best is None else best.number)
    return report


def optimize(cfg: Any, worker: int = 0, make_objective: Callable[[Any], Any] | None = None
             ) -> None:
    """Work on the study until it holds ``cfg.trials`` complete or pruned trials (this
    process's share of a multi-process or multi-machine study). ``make_objective(cfg)`` gives
    the trial function (default :func:`objective`; the reference rows' is
    ``offline_dt.study.reference_search.objective``)."""
    optuna = _optuna()
    study = load_study(cfg, worker)
    remaining = cfg.trials - _finished(study)
    if remaining <= 0:
        return
    stop = optuna.study.MaxTrialsCallback(cfg.trials, states=(
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    study.optimize((make_objective or objective)(cfg), n_trials=remaining + 3,
                   callbacks=[stop, _progress(cfg)], catch=())


def _worker(cfg: Any, worker: int, threads: int, make_objective: Any) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    optimize(cfg, worker, make_objective)


def run_study(cfg: Any, make_objective: Callable[[Any], Any] | None = None) -> None:
    """:func:`optimize` in this process (``cfg.workers == 1``) or in ``cfg.workers`` spawned
    processes, each with ``cpu_count // workers`` torch threads (``make_objective`` must then
    be a module-level function, picklable).

    Raises:
        RuntimeError: a worker process failed (the study is left to be continued).
    """
    if cfg.workers == 1:
        optimize(cfg, 0, make_objective)
        return
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    load_study(cfg)  # created once, before the workers load it
    procs = [ctx.Process(target=_worker, args=(cfg, k, threads, make_objective))
             for k in range(cfg.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"search: a worker failed (exit codes "
                           f"{[p.exitcode for p in procs]}); run the same command to "
                           f"continue the study")


def search(cfg: SearchConfig) -> SearchResult:
    """Run (or continue) the study of ``cfg`` and write its outputs (module docstring).

    Raises:
        ValueError: a bad config (``SearchConfig.validate``), or what a trial's training
            raises for the dataset (it is not retried).
        MissingSearchDependency: Optuna is not installed.
    """
    cfg.validate()
    out = cfg.resolved_study_dir()
    out.mkdir(parents=True, exist_ok=True)
    save_json({"search_config": cfg, "space": search_space(cfg.train.method)},
              out / "search.json")
    run_study(cfg)
    return write_outputs(cfg, load_study(cfg),
                         f"{cfg.train.method} on {cfg.train.dataset}")
