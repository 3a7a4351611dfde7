"""``offline-dt`` command line: README command lines parse into the exact configs, help texts,
choice errors, the error convention of ``main`` and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from datagen.config import GenerateConfig
from offline_dt.cli import (
    DatasetsConfig,
    GenerateCommand,
    ReportConfig,
    ReproduceConfig,
    main,
    parse,
)
from offline_dt.data.d4rl import LEVELS
from offline_dt.evaluation.evaluate import EvalConfig
from offline_dt.methods import METHODS, methods_for
from offline_dt.methods.options import field_help
from offline_dt.methods.qt import QTOptions
from offline_dt.study.presets import PRESETS
from offline_dt.training import TrainConfig
from offline_dt.training.configs import parse_bool, parse_config


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    """Help in one column (tyro sets groups side by side on a wide terminal), so a help
    text is one run of words once whitespace is collapsed."""
    monkeypatch.setenv("COLUMNS", "100")


def _plain(text: str) -> str:
    """Help output without box drawing and with whitespace collapsed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------------- parsing
def test_readme_train_line_gives_the_exact_config():
    inv = parse(["train", "--dataset", "data/d4rl/pendulum-expert-v0.hdf5", "--method", "bc",
                 "--resume", "true", "--overwrite", "false", "--precision", "bf16",
                 "--env", "Pendulum-v1", "--steps", "5", "--rtg-scale", "2.5",
                 "--run-dir", "out", "--progress", "false"])
    assert inv.command.name == "train" and inv.verbose == 0
    assert inv.config == TrainConfig(
        dataset="data/d4rl/pendulum-expert-v0.hdf5", method="bc", resume=True, overwrite=False,
        precision="bf16", env_id="Pendulum-v1", steps=5, rtg_scale=2.5, run_dir=Path("out"),
        progress=False)


def test_flags_not_given_keep_the_defaults():
    assert parse(["train", "--dataset", "x"]).config == TrainConfig(dataset="x")
    assert parse(["evaluate", "--checkpoint", "run"]).config == EvalConfig(checkpoint=Path("run"))
    assert parse(["generate"]).config == GenerateCommand(GenerateConfig(), list=False)
    assert parse(["datasets"]).config == DatasetsConfig()
    assert parse(["report"]).config == ReportConfig()
    assert parse(["reproduce"]).config == ReproduceConfig()


@pytest.mark.parametrize(("words", "value"), [
    (["true"], True), (["false"], False), (["True"], True), (["FALSE"], False),
    (["yes"], True), (["0"], False), ([], True),
])
def test_bool_flags_take_true_false_or_nothing(words, value):
    assert parse(["evaluate", "--checkpoint", "r", "--kv-cache", *words]).config.kv_cache is value
    # A bare flag followed by another flag must not swallow it.
    cfg = parse(["train", "--overwrite", *words, "--dataset", "d"]).config
    assert (cfg.overwrite, cfg.dataset) == (value, "d")


@pytest.mark.parametrize("command", ["train", "evaluate", "generate", "reproduce"])
@pytest.mark.parametrize("flag", ["--env", "--env-id"])
def test_env_is_an_alias_of_env_id(command, flag):
    cfg = parse([command, flag, "CartPole-v1"]).config
    cfg = cfg.config if isinstance(cfg, GenerateCommand) else cfg
    assert cfg.env_id == "CartPole-v1"


def test_negative_numbers_in_a_list():
    cfg = parse(["evaluate", "--checkpoint", "runs/a", "--kv-cache", "true",
                 "--target-returns", "-150", "-200", "--episodes", "3"]).config
    assert cfg == EvalConfig(checkpoint=Path("runs/a"), kv_cache=True,
                             target_returns=[-150.0, -200.0], episodes=3)


def test_generate_levels_and_list():
    cmd = parse(["generate", "--env", "Pendulum-v1", "--levels", "random", "expert"]).config
    assert cmd == GenerateCommand(GenerateConfig(env_id="Pendulum-v1",
                                                 levels=["random", "expert"]), list=False)
    assert parse(["generate", "--list"]).config.list is True


def test_readme_reproduce_line_and_global_verbose():
    inv = parse(["-v", "reproduce", "--env", "Pendulum-v1", "--preset", "quick", "--workers", "2",
                 "--levels", "expert", "full-replay", "--root", "data", "--device", "auto"])
    assert inv.command.name == "reproduce" and inv.verbose == 1
    assert inv.config == ReproduceConfig(env_id="Pendulum-v1", preset="quick", workers=2,
                                         levels=["expert", "full-replay"], root=Path("data"),
                                         device="auto")
    assert parse(["datasets", "--out-dir", "d", "--minari-root", "m"]).config == DatasetsConfig(
        Path("d"), Path("m"))
    assert parse(["report", "--runs", "r", "--out", "o"]).config == ReportConfig(Path("r"),
                                                                                Path("o"))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_reproduce_accepts_every_preset(preset):
    assert parse(["reproduce", "--preset", preset]).config.preset == preset


def test_reproduce_accepts_every_level():
    assert parse(["reproduce", "--levels", *LEVELS]).config.levels == list(LEVELS)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("argv", "flag", "bad"), [
    (["train", "--method", "cql"], "--method", "cql"),
    (["train", "--precision", "fp16"], "--precision", "fp16"),
    (["evaluate", "--device", "tpu"], "--device", "tpu"),
    (["reproduce", "--preset", "huge"], "--preset", "huge"),
    (["reproduce", "--device", "tpu"], "--device", "tpu"),
    (["generate", "--levels", "random", "bogus"], "--levels", "bogus"),
    (["train", "--resume", "maybe"], "--resume", "maybe"),
    (["train", "--steps", "many"], "--steps", "many"),
])
def test_invalid_value_exits_naming_the_flag(argv, flag, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    err = _plain(capsys.readouterr().err)
    assert flag in err and bad in err


def test_unknown_flag_and_missing_subcommand_exit_2(capsys):
    for argv in (["train", "--no-such-flag", "1"], []):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["train"], "offline-dt train: error: --dataset ID_OR_PATH is required"),
    (["evaluate"], "offline-dt evaluate: error: --checkpoint PATH is required"),
])
def test_missing_required_input_is_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_stage_errors_are_printed_with_status_2(tmp_path, capsys):
    assert main(["report", "--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("offline-dt report: error: ")


# ---------------------------------------------------------------------------------- help
@pytest.mark.parametrize(("command", "cls"), [
    ("train", TrainConfig), ("evaluate", EvalConfig), ("generate", GenerateConfig),
    ("reproduce", ReproduceConfig), ("datasets", DatasetsConfig), ("report", ReportConfig),
])
def test_help_lists_every_field_with_its_help_and_default(command, cls, capsys):
    with pytest.raises(SystemExit) as exc:
        parse([command, "--help"])
    assert exc.value.code == 0
    text = _plain(capsys.readouterr().out)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        assert _flag(f.name) in text, f.name
        help_text, choices = f.metadata["help"], f.metadata.get("choices")
        help_text = help_text() if callable(help_text) else help_text
        assert " ".join(help_text.split()) in text, f.name
        if choices is not None:
            choices = choices() if callable(choices) else choices
            # a long choice list wraps after a comma: compare it without those spaces
            unwrapped = text.replace(", ", ",")
            assert "{" + ",".join(map(str, choices)) + "}" in unwrapped, f.name
    if cls is TrainConfig:
        assert "windows per update (default: 64)" in text
        assert "--resume {true,false}" in text
        assert "--cuda-graph {auto,true,false}" in text


@pytest.mark.parametrize("command", ["train", "online", "finetune"])
def test_help_lists_every_method_option_typed_with_its_help_and_default(command, capsys):
    """Every option of every method the command trains is a flag ``--<method>.<option>``,
    with its docstring help and its default (finetune: none, the checkpoint's is kept)."""
    with pytest.raises(SystemExit):
        parse([command, "--help"])
    text = _plain(capsys.readouterr().out)
    shown = 0
    for name in methods_for(command):
        cls = METHODS[name].options_class
        for f in dataclasses.fields(cls or object) if cls else ():
            flag = f"--{name}.{f.name.replace('_', '-')}"
            assert flag in text, flag
            entry = text[text.index(flag):].split(" --", 1)[0]
            assert field_help(cls, f.name), f"{flag} has no help in {cls.__name__}'s docstring"
            value = getattr(cls(), f.name)
            default = "None" if command == "finetune" else str(value).lower() \
                if isinstance(value, bool) else "''" if value == "" else \
                " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
            assert f"(default: {default})" in entry, (flag, entry)
            shown += 1
    assert shown >= {"train": 20, "online": 40, "finetune": 10}[command]
    assert "--method-options" not in text


def test_method_options_are_typed_flags_and_land_in_the_config():
    cfg = parse(["train", "--dataset", "d", "--method", "qt", "--qt.expectile", "0.8",
                 "--qt.critic", "transformer"]).config
    assert cfg.method_options == QTOptions(expectile=0.8, critic="transformer")
    assert parse(["train", "--dataset", "d", "--method", "qt"]).config.method_options == \
        QTOptions()
    assert parse(["train", "--dataset", "d"]).config.method_options is None  # dt has none
    cfg = parse(["online", "--method", "ppo", "--ppo.ent-coef", "0.01", "--ppo.clip-vloss",
                 "false"]).config
    assert (cfg.method_options.ent_coef, cfg.method_options.clip_vloss) == (0.01, False)


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--dataset", "d", "--qt.expectile", "0.8"],
     "--qt.expectile is an option of --method qt, but --method is dt"),
    (["online", "--method", "dqn", "--ppo.n-envs", "2"],
     "--ppo.n-envs is an option of --method ppo, but --method is dqn"),
])
def test_an_option_of_another_method_is_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_option_value_is_refused_by_type(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["train", "--dataset", "d", "--method", "qt", "--qt.critic", "cnn"])
    assert exc.value.code == 2 and "--qt.critic" in _plain(capsys.readouterr().err)


# ---------------------------------------------------------------------------------- conventions
@dataclass
class _Toy:
    two_words: int = field(default=1, metadata={"help": "a number"})
    hidden: int = field(default=3, metadata={"cli": False})
    mode: str | None = field(default=None, metadata={"choices": ["a", "b"]})
    name: str = field(default="x", metadata={"aliases": ("-n",)})


def test_parse_config_conventions(capsys):
    assert parse_config(_Toy, ["--two-words", "5", "--mode", "b", "-n", "y"]) == _Toy(
        two_words=5, mode="b", name="y")
    assert parse_config(_Toy, [], default=_Toy(two_words=7)) == _Toy(two_words=7)
    for argv in (["--hidden", "4"], ["--two_words_typo", "5"], ["--mode", "c"]):
        with pytest.raises(SystemExit):
            parse_config(_Toy, argv)


@pytest.mark.parametrize("text", ["maybe", "", "2", "truthy"])
def test_parse_bool_rejects_other_words(text):
    with pytest.raises(ValueError, match="true or false"):
        parse_bool(text)


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("command", [["datasets"], ["generate", "--list"]])
def test_listing_an_empty_directory(command, tmp_path, capsys, monkeypatch):
    def no_generation(cfg):
        raise AssertionError("generate --list must not generate")

    monkeypatch.setattr("datagen.generate.generate", no_generation)
    out_dir = tmp_path / "d4rl"
    out_dir.mkdir()
    argv = [*command, "--out-dir", str(out_dir), "--minari-root", str(tmp_path / "minari")]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"no datasets under {out_dir} or the Minari root"


def test_train_and_evaluate_print_readable_summaries(box_hdf5, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", str(box_hdf5), "--run-dir", str(run_dir), "--steps", "6",
                 "--batch-size", "4", "--context-length", "3", "--embed-dim", "8",
                 "--n-layer", "1", "--max-timestep", "64", "--log-every", "3",
                 "--progress", "false", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "TrainResult(" not in out and "PosixPath" not in out
    assert f"trained dt on {box_hdf5}: 6 steps in total" in out
    assert f"run dir      {run_dir}\n" in out
    assert re.search(r"final loss   \d\.\d+ \(mean over the last logged interval\)", out)
    assert re.search(r"speed        \d+\.\d steps/s, \d+\.\d s for this call", out)
    assert main(["evaluate", "--checkpoint", str(run_dir), "--episodes", "2", "--device", "cpu",
                 "--target-returns", "-150"]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "'mean'" not in out
    assert out.startswith(f"evaluated {run_dir} (dt, step 6) on Pendulum-v1\n")
    pattern = (r"  target {t}: return mean (-?\d+\.\d\d) ± std (\d+\.\d\d) over 2 episodes, "
               r"95% CI of the mean \[(-?\d+\.\d\d), (-?\d+\.\d\d)\], normalized score -?\d+\.\d")
    m = re.search(pattern.format(t="-150"), out)
    assert m, out
    assert float(m[3]) <= float(m[1]) <= float(m[4])
    assert out.count("(headline)") == 1
    assert out.rstrip().endswith(f"written to {run_dir / 'eval.json'}")


def test_reproduce_workers_default_to_the_core_count_and_overwrite_takes_levels(capsys):
    import os

    cfg = parse(["reproduce"]).config
    assert cfg.workers == (os.cpu_count() or 1) and cfg.overwrite is None
    assert parse(["reproduce", "--overwrite", "random"]).config.overwrite == ["random"]
    with pytest.raises(SystemExit):
        parse(["reproduce", "--help"])
    assert f"(default: {os.cpu_count() or 1})" in capsys.readouterr().out
