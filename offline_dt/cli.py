"""``offline-dt`` command line: one subcommand per stage, flags generated from the stage configs.

    offline-dt generate   --env Pendulum-v1            datasets (D4RL HDF5 + Minari)
    offline-dt datasets                                 list what exists (with TQ, SACo)
    offline-dt train      --dataset ID_OR_PATH         train a Decision Transformer
    offline-dt finetune   --checkpoint RUN_DIR --online-steps N   online DT fine-tuning (odt)
    offline-dt online     --method ppo --env-id CartPole-v1 --env-steps N   online RL (ppo, dqn)
    offline-dt evaluate   --checkpoint PATH            return-conditioned rollouts
    offline-dt convert    --from-hf DIR --to RUN_DIR   Hugging Face DT checkpoints in and out
    offline-dt search     --dataset ID_OR_PATH --method qt   tune hyperparameters (Optuna)
    offline-dt reference  --dataset ID_OR_PATH --method iql   a d3rlpy reference row
    offline-dt report     --runs data/runs             average-reward table and plots
    offline-dt reproduce  --env Pendulum-v1 --preset quick   the whole study

Every subcommand is a dataclass (``GenerateConfig``, ``TrainConfig``, ``EvalConfig`` next to
their stage, :class:`DatasetsConfig`, :class:`ReportConfig`, :class:`ReproduceConfig` here)
turned into flags by tyro with the conventions of :mod:`offline_dt.training.configs`, so the CLI
mirrors the Python API: ``--batch-size`` is ``TrainConfig.batch_size``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import tyro

from datagen.config import GenerateConfig
from offline_dt.data.atomic import DiskFullError
from offline_dt.data.d4rl import LEVELS
from offline_dt.data.lock import LockedError
from offline_dt.envs.make import EnvDependencyError
from offline_dt.evaluation.evaluate import EvalConfig
from offline_dt.methods import METHODS, check_command, methods_for
from offline_dt.study.d3rlpy_io import MissingDependencyError
from offline_dt.study.jobs import all_methods
from offline_dt.study.presets import PRESETS
from offline_dt.study.reference import ReferenceConfig
from offline_dt.study.search import SearchConfig
from offline_dt.training.checkpoint import checkpoint_path
from offline_dt.training.configs import CLI_MARKERS, REGISTRY, options_command, with_method_options
from offline_dt.training.distributed import DistributedError
from offline_dt.training.divergence import DivergenceError
from offline_dt.training.finetune import FinetuneConfig
from offline_dt.training.hf_interop import ConvertConfig, HFDependencyError
from offline_dt.training.loop import TrainingInterrupted
from offline_dt.training.online import OnlineConfig
from offline_dt.training.train_config import TrainConfig

DEVICES = ["auto", "cpu", "cuda"]


@dataclass
class GenerateCommand:
    """``offline-dt generate``: the :class:`GenerateConfig` flags, plus ``--list``."""

    config: Annotated[GenerateConfig, tyro.conf.arg(name="")] = field(
        default_factory=GenerateConfig)
    list: bool = field(default=False, metadata={
        "help": "list the datasets under --out-dir and --minari-root and exit"})


@dataclass
class DatasetsConfig:
    """``offline-dt datasets``: where to look for generated datasets."""

    out_dir: Path = field(default=Path("data/d4rl"), metadata={
        "help": "directory of the D4RL-style HDF5 files"})
    minari_root: Path | None = field(default=None, metadata={
        "help": "Minari datasets root (default data/minari or $MINARI_DATASETS_PATH)"})
    coverage: bool = field(default=True, metadata={
        "help": "compute unique_sa and SACo (reads every dataset a second time)"})


@dataclass
class ReportConfig:
    """``offline-dt report``: which runs to tabulate and where to write the table and plots."""

    runs: Path = field(default=Path("data/runs/quick"), metadata={
        "help": "run directories root: data/runs/<preset> for reproduce runs"})
    out: Path = field(default=Path("data/reports"), metadata={"help": "output directory"})


@dataclass
class ReproduceConfig:
    """``offline-dt reproduce``: the arguments of :func:`offline_dt.study.pipeline.reproduce`."""

    env_id: str = field(default="Pendulum-v1", metadata={"help": "Gymnasium env id"})
    preset: str = field(default="quick", metadata={
        "help": "budget preset (offline_dt.study.presets.PRESETS)", "choices": list(PRESETS)})
    levels: list[str] | None = field(default=None, metadata={
        "help": "dataset levels (None: all six; for PointMaze and MiniGrid, the scripted "
                "recipe's)", "choices": list(LEVELS)})
    root: Path = field(default=Path("data"), metadata={
        "help": "output root (datasets, runs, reports)"})
    device: str = field(default="auto", metadata={
        "help": "torch device for training, evaluation and the behaviour agent",
        "choices": DEVICES})
    workers: int = field(default=os.cpu_count() or 1, metadata={
        "help": "runs trained at once, one process each with cpu_count/workers torch threads; "
                "default: the CPU core count (small DTs use a core poorly, so on 2 cores two "
                "single-threaded runs finish the quick preset about twice as fast as one)"})
    overwrite: list[str] | None = field(default=None, metadata={
        "help": "levels whose datasets are regenerated (the behaviour agent is reused, not "
                "retrained) and whose runs are trained and evaluated again, e.g. "
                "--overwrite random",
        "choices": list(LEVELS)})
    methods: list[str] | None = field(default=None, metadata={
        "help": "rows to run (None: the preset's rows, e.g. quick: dt bc random behaviour; "
                "paper: all; the d3rlpy reference rows iql, mlp-bc, pct-bc only when d3rlpy "
                "is installed, iql only with Box actions)",
        "choices": list(all_methods())})
    search: int = field(default=0, metadata={
        "help": "TRIALS: before the runs, an Optuna study of TRIALS trials per level and "
                "searched method at the preset's budget on validation episodes (resumable: "
                "its SQLite file lives under runs/<preset>/); then the preset's seeds at each "
                "study's best parameters as rows of their own ('qt (tuned)'), with the "
                "chosen parameters in the report (docs/search.md); 0: no search"})
    search_methods: list[str] | None = field(default=None, metadata={
        "help": "the methods searched with --search (None: dt, qt and the d3rlpy reference "
                "rows iql, mlp-bc, pct-bc, those among --methods)",
        "choices": [m for m in all_methods() if m not in ("random", "behaviour")]})


def _generate(cmd: GenerateCommand) -> int:
    if cmd.list:
        return _datasets(DatasetsConfig(cmd.config.out_dir, cmd.config.minari_root))
    from datagen.generate import generate

    print(generate(cmd.config))
    return 0


def _datasets(cfg: DatasetsConfig) -> int:
    from offline_dt.data.catalog import list_datasets

    table = list_datasets(cfg.out_dir, cfg.minari_root, cfg.coverage)
    if table.empty:
        print(f"no datasets under {cfg.out_dir} or the Minari root")
    else:
        print(table.to_string(index=False))
    return 0


def _train(cfg: TrainConfig) -> int:
    from offline_dt.training.loop import train

    if not cfg.dataset:
        raise ValueError("--dataset ID_OR_PATH is required (a .hdf5 file, a Minari dataset "
                         "directory or a Minari id such as pendulum/expert-v0)")
    from offline_dt.evaluation.curves import make_eval_hook

    result = train(cfg, eval_hook=make_eval_hook() if cfg.eval_every > 0 else None)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 speaks for the job
        print(train_summary(cfg, result))
    return 0


def train_summary(cfg: TrainConfig, result: Any) -> str:
    """A few readable lines about a finished ``train`` call (a :class:`TrainResult`)."""
    return "\n".join([
        f"trained {cfg.method} on {cfg.dataset}: {result.steps} steps in total",
        f"  run dir      {result.run_dir}",
        f"  checkpoint   {result.checkpoint}",
        f"  final loss   {result.final_loss:.4g} (mean over the last logged interval)",
        f"  speed        {result.steps_per_second:.1f} steps/s, {result.wall_seconds:.1f} s "
        f"for this call",
    ])


def _finetune(cfg: FinetuneConfig) -> int:
    from offline_dt.evaluation.curves import make_eval_hook
    from offline_dt.training.finetune import finetune

    result = finetune(cfg, make_eval_hook() if cfg.eval_every > 0 else None)
    print("\n".join([
        f"finetuned {cfg.checkpoint} online: {result.steps} updates in total",
        f"  run dir      {result.run_dir}",
        f"  checkpoint   {result.checkpoint}",
        f"  final loss   {result.final_loss:.4g} (mean over the last logged interval)",
        f"  time         {result.wall_seconds:.1f} s for this call (metrics.csv: env_steps, "
        f"collect_return_mean)",
    ]))
    return 0


def _online(cfg: OnlineConfig) -> int:
    from offline_dt.evaluation.curves import make_eval_hook
    from offline_dt.training.online import train_online

    result = train_online(cfg, make_eval_hook() if cfg.eval_every > 0 else None)
    print("\n".join([
        f"trained {cfg.method} online in {cfg.env_id}: {result.steps} updates in total",
        f"  run dir      {result.run_dir}",
        f"  checkpoint   {result.checkpoint}",
        f"  final loss   {result.final_loss:.4g} (mean over the last logged interval)",
        f"  time         {result.wall_seconds:.1f} s for this call (metrics.csv: env_steps, "
        f"episode_return_mean)",
    ]))
    return 0


def _evaluate(cfg: EvalConfig) -> int:
    from offline_dt.evaluation.evaluate import evaluate_checkpoint

    if not cfg.checkpoint:
        raise ValueError("--checkpoint PATH is required (a checkpoint file or run directory)")
    payload = evaluate_checkpoint(cfg)
    out = cfg.out if cfg.out is not None else checkpoint_path(cfg.checkpoint).parent / "eval.json"
    print(eval_summary(payload, out))
    return 0


def _candidate_label(cand: dict[str, Any]) -> str:
    target = cand.get("target_return")
    label = "no target" if target is None else f"target {target:g}"
    settings = cand.get("settings") or {}
    return label + "".join(f", {k}={v}" for k, v in settings.items())


def eval_summary(payload: dict[str, Any], out: Path) -> str:
    """Readable lines for an ``eval.json`` payload: the validation mean of every candidate
    (when there were several; the chosen one marked), then the test evaluation: mean ± std
    over episodes and the episode-level 95% confidence interval (mean ± 1.96 std / √n),
    labelled; the headline marked."""
    lines = [f"evaluated {payload.get('checkpoint', '')} ({payload['method']}, step "
             f"{payload.get('step')}) on {payload['env_id']}"]
    selection = payload.get("selection") or {}
    if selection.get("validation"):
        lines.append(f"  chosen on {selection['validation_episodes']} validation episodes "
                     f"per candidate (reset seeds {selection['validation_episode_seeds']}):")
        for j, v in enumerate(selection["validation"]):
            lines.append(f"    {_candidate_label(v)}: validation mean {v['mean']:.2f}"
                         + ("  (chosen)" if j == selection.get("chosen_index") else ""))
    for i, t in enumerate(payload["targets"]):
        norm = t.get("normalized_score")
        lines.append(
            f"  {_candidate_label(t)}: return mean {t['mean']:.2f} ± std {t['std']:.2f} over "
            f"{t['episodes']} episodes, 95% CI of the mean [{t['mean'] - t['ci95']:.2f}, "
            f"{t['mean'] + t['ci95']:.2f}]"
            + ("" if norm is None else f", normalized score {norm:.1f}")
            + ("  (headline)" if i == payload.get("headline_index") else ""))
    lines.append(f"  written to {out}")
    return "\n".join(lines)


def _convert(cfg: ConvertConfig) -> int:
    from offline_dt.training.hf_interop import convert

    out = convert(cfg)
    what = f"run directory {out} (offline-dt evaluate --checkpoint {out})" if cfg.from_hf \
        else f"HF model directory {out} (DecisionTransformerModel.from_pretrained)"
    print(f"converted {cfg.from_hf or cfg.checkpoint} into {what}")
    return 0


def _search(cfg: SearchConfig) -> int:
    from offline_dt.study.search import search, search_space

    if cfg.list_params:
        for name, p in search_space(cfg.train.method).items():
            print(f"{name}: {p}")
        return 0
    res = search(cfg)
    best = ", ".join(f"{k}={v}" for k, v in res.best_params.items())
    print("\n".join([
        f"searched {cfg.train.method} on {cfg.train.dataset}: {res.complete} complete, "
        f"{res.pruned} pruned, {res.failed} failed trials",
        f"  best value   {res.best_value} (validation mean return)" if res.best_value is not None
        else "  best value   none (no trial completed)",
        f"  best params  {best}", f"  best run     {res.best_run_dir}",
        f"  study        {res.study_dir} (trials.csv, best.json, history.png)"]))
    return 0


def _report(cfg: ReportConfig) -> int:
    from offline_dt.study.report import report

    print(report(cfg.runs, cfg.out).to_string(index=False))
    return 0


def _reproduce(cfg: ReproduceConfig) -> int:
    from offline_dt.study.pipeline import reproduce

    reproduce(env_id=cfg.env_id, preset=cfg.preset, root=cfg.root, device=cfg.device,
              workers=cfg.workers, levels=cfg.levels, methods=cfg.methods,
              overwrite=cfg.overwrite or (), search=cfg.search,
              search_methods=cfg.search_methods)
    return 0


def _reference(cfg: ReferenceConfig) -> int:
    from offline_dt.study.reference import run_reference

    if not cfg.dataset:
        raise ValueError("--dataset ID_OR_PATH is required (a .hdf5 file, a Minari dataset "
                         "directory or a Minari id such as pendulum/expert-v0)")
    ev, _ = run_reference(cfg)
    out = cfg.resolved_run_dir() / "eval.json"
    print(f"{cfg.method} on {cfg.dataset}: return mean {ev['mean_return']:.2f} ± std "
          f"{ev['std_return']:.2f} over {ev['episodes']} test episodes, episode-level 95% CI "
          f"± {ev['ci95']:.2f}\n  written to {out}")
    return 0


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, config dataclass (the flags), one-line help and runner.
    ``options``: the command whose methods' typed options it shows as ``--<method>.<option>``
    flags (:func:`offline_dt.training.configs.options_command`; ``finetune``: each optional,
    a change over the checkpoint's), or None."""

    name: str
    config: type
    help: str
    run: Callable[[Any], int]
    options: str | None = None


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("generate", GenerateCommand,
            "roll out agents and write D4RL HDF5 + Minari datasets", _generate),
    Command("datasets", DatasetsConfig,
            "list generated datasets (id, steps, episodes, returns, TQ, SACo)", _datasets),
    Command("train", TrainConfig,
            f"train a method on a dataset ({', '.join(methods_for('train'))})", _train,
            "train"),
    Command("finetune", FinetuneConfig,
            f"fine-tune a checkpoint online ({', '.join(methods_for('finetune'))})", _finetune,
            "finetune"),
    Command("online", OnlineConfig,
            f"train a transformer policy online, no dataset "
            f"({', '.join(methods_for('online'))})", _online, "online"),
    Command("evaluate", EvalConfig, "roll out a trained checkpoint on the live env", _evaluate),
    Command("convert", ConvertConfig, "Hugging Face DecisionTransformerModel checkpoints in "
            "(--from-hf) and out (--to-hf)", _convert),
    Command("search", SearchConfig,
            "tune a method's hyperparameters on a dataset's validation episodes (Optuna)",
            _search, "train"),
    Command("reference", ReferenceConfig,
            "train a d3rlpy reference row (iql, mlp-bc, pct-bc) and evaluate it", _reference),
    Command("report", ReportConfig, "average-reward table (CSV, Markdown) and plots", _report),
    Command("reproduce", ReproduceConfig,
            "generate → train → evaluate → report, one command", _reproduce),
)}


@dataclass(frozen=True)
class Invocation:
    """A parsed command line: the subcommand, its config and the ``-v`` count."""

    command: Command
    config: Any
    verbose: int = 0


def _flags_type(command: Command) -> type:
    """What tyro parses for ``command``: its config, with its methods' options."""
    if command.options is None:
        return command.config
    return options_command(command.config, command.options)


def _root_type() -> type:
    """The dataclass tyro parses: global flags, then one subcommand of :data:`COMMANDS`."""
    subcommands = tuple(Annotated[_flags_type(c), tyro.conf.subcommand(c.name, description=c.help)]
                        for c in COMMANDS.values())
    verbose = field(default=0, metadata={"help": "debug logging", "aliases": ("-v",)})
    return dataclasses.make_dataclass("OfflineDt", [
        ("command", Union[subcommands]),  # noqa: UP007 (a runtime-built union)
        ("verbose", Annotated[int, tyro.conf.UseCounterAction], verbose),
    ])


def refuse_method_of_another_kind(argv: Sequence[str]) -> None:
    """Before parsing: ``train --method ppo`` (``online --method dt``), a registered method
    that the subcommand does not train, prints ``offline-dt <cmd>: error:`` naming the command
    that trains it and exits with status 2 (tyro would only list the subcommand's choices)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in ("train", "online"):
        return
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--method" and i + 1 < len(argv) else \
            arg.partition("=")[2] if arg.startswith("--method=") else None
        if value in METHODS:
            try:
                check_command(value, command)
            except ValueError as e:
                print(f"offline-dt {command}: error: {e}", file=sys.stderr)
                raise SystemExit(2) from e


def parse(argv: Sequence[str] | None = None) -> Invocation:
    """Parse ``argv`` (``sys.argv[1:]`` when None); ``--help`` and bad flags exit (0 / 2), as
    does a method of another kind than the subcommand trains
    (:func:`refuse_method_of_another_kind`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    refuse_method_of_another_kind(argv)
    root = tyro.cli(_root_type(), args=argv, prog="offline-dt", registry=REGISTRY,
                    config=CLI_MARKERS,
                    description="Offline RL datasets and Decision Transformers, end to end.")
    name = type(root.command).__name__
    command = next(c for c in COMMANDS.values() if name in (
        c.config.__name__, f"{c.config.__name__}Flags"))
    config = root.command
    if command.options is not None:
        try:
            config = with_method_options(root.command, command.options)
        except ValueError as e:
            print(f"offline-dt {command.name}: error: {e}", file=sys.stderr)
            raise SystemExit(2) from e
    return Invocation(command, config, root.verbose)


#: Exit statuses of ``offline-dt`` besides 0: bad input (as tyro for a bad command line), a
#: failure of the machine or job, a diverged training run, Ctrl-C (128 + SIGINT, as a shell).
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 3, 130


def interrupted_message(command: str, e: KeyboardInterrupt) -> str:
    """The one line of a Ctrl-C: what was saved and how to go on. A training command's
    :class:`TrainingInterrupted` names its checkpoint, which ``--resume true`` continues;
    every other write of ``offline-dt`` is replaced only when complete."""
    if isinstance(e, TrainingInterrupted) and e.checkpoint is not None:
        return (f"offline-dt {command}: interrupted; {e.checkpoint} (update {e.step}) is "
                f"saved: run the same command with --resume true to continue from it")
    if isinstance(e, TrainingInterrupted):
        return (f"offline-dt {command}: interrupted before the run's first checkpoint; "
                f"nothing of it was kept: run the same command to start it again")
    if command == "reproduce":
        return (f"offline-dt {command}: interrupted; run the same command again: it reuses the "
                f"finished runs and resumes the others from their checkpoints")
    return (f"offline-dt {command}: interrupted; its outputs are written only when complete, "
            f"so nothing partial was left and earlier outputs are intact")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``offline-dt``; a FileExistsError, FileNotFoundError, ValueError (among them an env
    whose spaces do not fit the checkpoint, or an unknown env id), LockedError (another
    process writes the same output), MissingDependencyError (d3rlpy), HFDependencyError
    (transformers) or EnvDependencyError
    (an env's optional package, e.g. Box2D) of the stage is printed as
    ``offline-dt <cmd>: error: <message>`` with exit status 2; a DistributedError (a torchrun
    job lost a rank) or DiskFullError (no space left while writing an output) likewise with
    status 1; a DivergenceError (the training loss or weights became non-finite; the
    checkpoint on disk is the last finite one) with status 3; Ctrl-C prints one line
    (:func:`interrupted_message`: what was saved, how to resume) with status 130. None of them
    prints a traceback."""
    inv = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if inv.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(inv.command.run(inv.config) or 0)
    except DivergenceError as e:
        print(f"offline-dt {inv.command.name}: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (FileExistsError, FileNotFoundError, ValueError, LockedError,
            MissingDependencyError, EnvDependencyError, HFDependencyError) as e:
        print(f"offline-dt {inv.command.name}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (DistributedError, DiskFullError) as e:
        print(f"offline-dt {inv.command.name}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:
        print(interrupted_message(inv.command.name, e), file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
