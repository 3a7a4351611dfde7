"""The method registry's facts and what the commands do with them: each command offers only
the methods of its kinds and refuses another before anything is written, naming the command
that trains it; ``register`` refuses an incomplete method; band attention is gated by the
method's declared attentions."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

from offline_dt.cli import main, parse
from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods import (
    METHODS,
    FinetuneMethod,
    Method,
    OnlineMethod,
    check_command,
    method_names,
    methods_for,
    register,
)
from offline_dt.methods.dt import DT
from offline_dt.training import TrainConfig, train
from offline_dt.training.checkpoint import read_checkpoint
from offline_dt.training.online import OnlineConfig, train_online

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_method_declares_its_kind_description_and_attentions():
    # registration order: reproduce's jobs
    assert method_names("offline") == ["dt", "bc", "qt", "gato", "mgdt", "tt"]
    # today's order, then the methods found later by name (base.discover)
    assert list(METHODS)[:11] == ["dt", "bc", "qt", "odt", "ppo", "dqn", "a2c", "gato",
                                  "mgdt", "reinforce", "tt"]
    assert methods_for("train") == ["bc", "dt", "gato", "mgdt", "odt", "qt", "tt"]
    assert methods_for("online") == ["a2c", "dqn", "ppo", "reinforce"]
    assert methods_for("finetune") == ["odt"]
    bases = {"offline": Method, "online": OnlineMethod, "finetune": FinetuneMethod}
    for name, cls in METHODS.items():
        assert cls.name == name and cls.description and "\n" not in cls.description
        assert issubclass(cls, bases[cls.kind]), name
        assert set(cls.attentions) <= {"window", "band"} and "window" in cls.attentions
    assert [m for m, c in METHODS.items() if "band" in c.attentions] == ["dt", "bc"]
    assert not METHODS["ppo"].conditions_on_return and METHODS["odt"].conditions_on_return
    assert (METHODS["ppo"].lr_decay, METHODS["dqn"].lr_decay) == ("linear", "none")
    assert [METHODS[m].learning_rate for m in ("ppo", "dqn", "a2c", "reinforce")] == [
        2.5e-4, 2.5e-4, 7e-4, 7e-4]


@pytest.mark.parametrize(("argv", "command"), [
    (["train", "--method", "ppo"], "offline-dt online --method ppo"),
    (["train", "--method=dqn"], "offline-dt online --method dqn"),
    (["online", "--method", "dt", "--env-id", "CartPole-v1"], "offline-dt train --method dt"),
    (["online", "--method", "odt"], "offline-dt train --method odt, then offline-dt finetune"),
])
def test_a_command_refuses_another_kind_before_writing_anything(argv, command, tmp_path,
                                                                capsys, discrete_hdf5):
    run = tmp_path / "run"
    extra = ["--dataset", str(discrete_hdf5)] if argv[0] == "train" else []
    with pytest.raises(SystemExit) as exc:
        main([*argv, *extra, "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"offline-dt {argv[0]}: error: ")
    assert command in err and not run.exists()


def test_the_python_entry_points_refuse_another_kind_too(tmp_path, discrete_hdf5):
    with pytest.raises(ValueError, match=re.escape("run `offline-dt online --method dqn`")):
        train(TrainConfig(dataset=str(discrete_hdf5), method="dqn", run_dir=tmp_path / "a"))
    with pytest.raises(ValueError, match=re.escape("run `offline-dt train --method qt`")):
        train_online(OnlineConfig(method="qt", env_steps=8, run_dir=tmp_path / "b"))
    with pytest.raises(ValueError, match="must be one of"):
        check_command("nope", "train")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(("command", "choices"), [("train", "{bc,dt,gato,mgdt,odt,qt,tt}"),
                                                  ("online", "{a2c,dqn,ppo,reinforce}")])
def test_help_offers_only_the_methods_the_command_trains(command, choices, capsys):
    with pytest.raises(SystemExit):
        parse([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--method {choices}" in text
    for name in methods_for(command):
        assert " ".join(METHODS[name].description.split()) in text, name


def test_an_offline_run_checkpoints_no_source_state(tmp_path, discrete_hdf5):
    """The dataset's windows (``WindowSource``) keep the base's no-op hooks: no ``source``
    in the checkpoint, no extra metrics columns."""
    run = train(TrainConfig(dataset=str(discrete_hdf5), run_dir=tmp_path / "dt", steps=4,
                            batch_size=4, context_length=3, embed_dim=8, n_layer=1,
                            checkpoint_every=4, log_every=2, progress=False, device="cpu"))
    assert "source" not in read_checkpoint(run.run_dir, "cpu")[1]
    header = (run.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert not {"env_steps", "episodes"} & set(header)


class _Incomplete(Method):
    name = "incomplete"
    description = "no loss, no policy"


class _Banded(Method):
    name = "banded"
    description = "a method that says it acts from a band network's cache"
    attentions = ("window", "band")

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise AssertionError("not trained here")

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, **settings: Any) -> Any:
        raise AssertionError("not acted with here")


def test_register_refuses_an_incomplete_or_inconsistent_method():
    with pytest.raises(ValueError, match=r"does not define \['loss', 'policy'\]"):
        register(_Incomplete)
    wrong_kind = type("WrongKind", (_Banded,), {"name": "wrong", "kind": "online"})
    with pytest.raises(ValueError, match="kind 'online' must subclass OnlineMethod"):
        register(wrong_kind)
    with pytest.raises(ValueError, match="description"):
        register(type("Silent", (_Banded,), {"name": "silent", "description": ""}))
    with pytest.raises(ValueError, match="already registered"):
        register(DT)
    assert not {"incomplete", "wrong", "silent"} & set(METHODS)


def test_band_attention_follows_the_methods_declared_attentions():
    base = dict(dataset="x", context_length=5, attention="band")
    windowed = type("Windowed", (_Banded,), {"name": "windowed", "attentions": ("window",)})
    for cls in (_Banded, windowed):
        register(cls)
    try:
        TrainConfig(**base, method="banded").validate()  # declared: accepted
        with pytest.raises(ValueError, match=r"implemented for methods \['dt', 'bc', "
                                             r"'banded'\], found method 'windowed'"):
            TrainConfig(**base, method="windowed").validate()
    finally:
        for cls in (_Banded, windowed):
            METHODS.pop(cls.name)


_TOY_MODULE = '''
from offline_dt.methods.base import Method, register


@register
class Toy(Method):
    name = "{name}"
    description = "a method in a module no import line names"

    def loss(self, net, batch):
        raise AssertionError

    def policy(self, net, normalizer, target_return, *, kv_cache=False, **settings):
        raise AssertionError
'''


def test_discover_registers_every_module_of_a_package_in_the_kept_order(tmp_path,
                                                                        monkeypatch):
    """A method module needs no import line: ``discover`` imports every module of the
    package (helpers too) and keeps today's order first, the others by name."""
    from offline_dt.methods.base import KNOWN_ORDER, discover

    pkg = tmp_path / "toy_methods_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "zeta.py").write_text(_TOY_MODULE.format(name="zeta-toy"))
    (pkg / "alpha.py").write_text(_TOY_MODULE.format(name="alpha-toy"))
    (pkg / "helper.py").write_text("VALUE = 1\n")  # no method: imported, nothing registered
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = dict(METHODS)
    try:
        discover("toy_methods_pkg", [str(pkg)])
        names = list(METHODS)
        assert names[:len(KNOWN_ORDER)] == list(KNOWN_ORDER)
        assert names[len(KNOWN_ORDER):] == sorted(names[len(KNOWN_ORDER):])
        assert {"alpha-toy", "zeta-toy"} <= set(names)
        assert methods_for("train")[:1] == ["alpha-toy"] and "zeta-toy" in methods_for("train")
    finally:
        METHODS.clear()
        METHODS.update(saved)
    assert "alpha-toy" not in METHODS
