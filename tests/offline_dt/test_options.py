"""Typed method options (offline_dt.methods.options): checked, never parsed; help from the
docstring; a config.json written before options were typed still loads."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from offline_dt.methods import get_method
from offline_dt.methods.dqn import DQNOptions
from offline_dt.methods.options import (
    changed_values,
    field_help,
    make_options,
    option_values,
    overrides_class,
    upgrade_strings,
)
from offline_dt.methods.ppo import PPOOptions
from offline_dt.methods.qt import QTOptions
from offline_dt.training import TrainConfig
from offline_dt.training.configs import from_dict, to_jsonable


@dataclasses.dataclass
class _Opts:
    """Options of a test.

    Attributes:
        rate: a float
            over two lines.
        low, high: two fields, one entry.
        kind: a choice.
    """

    rate: float = 0.5
    low: int = 1
    high: int = 2
    kind: Literal["a", "b"] = "a"
    auto: float | Literal["auto"] = "auto"
    flag: bool = False


def test_values_are_checked_by_type_never_parsed():
    assert make_options(_Opts, "t", None) == _Opts()
    assert make_options(_Opts, "t", {"rate": 2, "auto": 3}) == _Opts(rate=2.0, auto=3.0)
    assert isinstance(make_options(_Opts, "t", {"rate": 2}).rate, float)  # recorded as 2.0
    for values, message in [
        ({"rate": "0.5"}, "option 'rate' must be float, found '0.5'"),
        ({"low": 1.5}, "option 'low' must be int, found 1.5"),
        ({"low": True}, "option 'low' must be int, found True"),
        ({"flag": 1}, "option 'flag' must be bool, found 1"),
        ({"kind": "c"}, "option 'kind' must be 'a' or 'b', found 'c'"),
        ({"auto": "high"}, "option 'auto' must be float or 'auto', found 'high'"),
        ({"rat": 1.0}, "t has no option 'rat'; its options are ['auto', 'flag', 'high', "),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
            make_options(_Opts, "t", values)
    with pytest.raises(ValueError, match="t takes _Opts .* found QTOptions"):
        make_options(_Opts, "t", QTOptions())


def test_help_comes_from_the_attributes_section_and_its_bases():
    assert field_help(_Opts, "rate") == "a float over two lines."
    assert field_help(_Opts, "low") == field_help(_Opts, "high") == "two fields, one entry."
    assert field_help(_Opts, "flag") is None
    # PPOOptions inherits `timesteps` and its entry from HistoryOptions
    assert field_help(PPOOptions, "timesteps").startswith("what the trunk's timestep")
    assert field_help(DQNOptions, "end_e") == "ε at the start and the end of the decay."


def test_overrides_default_to_none_and_report_what_was_set():
    over = overrides_class(QTOptions)
    assert all(v is None for v in option_values(over()).values())
    assert changed_values(over(beta=0.0)) == {"beta": 0.0}
    assert field_help(over, "expectile") == field_help(QTOptions, "expectile")


def test_a_config_written_before_options_were_typed_still_loads():
    """Stop 38's config.json recorded every option as a string and cuda_graph as a word."""
    old = to_jsonable(TrainConfig(dataset="d", method="qt"))
    old["method_options"] = {k: str(v).lower() if isinstance(v, bool) else str(v)
                             for k, v in option_values(QTOptions()).items()}
    old["method_options"]["beta"] = "3"
    old["cuda_graph"] = "auto"
    cfg = from_dict(TrainConfig, old)
    assert cfg.method_options == QTOptions(beta=3.0) and cfg.cuda_graph is None
    dt = {**to_jsonable(TrainConfig(dataset="d")), "method_options": {}, "cuda_graph": "false"}
    assert from_dict(TrainConfig, dt).method_options is None
    assert from_dict(TrainConfig, dt).cuda_graph is False
    assert upgrade_strings(PPOOptions, {"ent_coef": "auto", "clip_vloss": "false",
                                        "n_envs": "4", "x": "1"}) == {
        "ent_coef": "auto", "clip_vloss": False, "n_envs": 4, "x": "1"}


def test_configs_hold_the_methods_instance_and_json_round_trips():
    cfg = TrainConfig(dataset="d", method="qt", method_options={"expectile": 0.8})
    assert cfg.method_options == QTOptions(expectile=0.8)
    assert from_dict(TrainConfig, to_jsonable(cfg)) == cfg
    assert TrainConfig(dataset="d").method_options is None
    with pytest.raises(ValueError, match="'dt' takes no options"):
        TrainConfig(dataset="d", method_options={"beta": 1.0})
    assert get_method("dt").options(None) is None
