"""A method's typed options: one dataclass per method, checked, recorded and shown as flags.

A method with hyperparameters of its own declares them as a dataclass (``Method.options_class``,
e.g. :class:`offline_dt.methods.qt.QTOptions`): one typed field per option with the paper's
default, documented in the class docstring's ``Attributes:`` section (the flag's help,
:func:`field_help`), a ``Literal`` type where the option is a choice, and a ``validate()``
for the ranges. ``TrainConfig.method_options`` holds an instance; the command line shows one
typed flag per field (``offline-dt train --method qt --qt.expectile 0.8``); a run's
``config.json`` records every field (:func:`option_values`), so a later change of a default
reads as a different config.

Values are checked, never parsed: :func:`make_options` takes an instance or a mapping of
typed values (an ``int`` stands for a ``float``) and refuses a value of another type. Only
:func:`upgrade_strings` converts strings, for the ``config.json`` files written before options
were typed (they recorded every value as a string).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

#: The values a pre-typed ``config.json`` recorded for booleans.
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value: Any, tp: Any) -> bool:
    """``value`` is of type ``tp`` (``float``, ``int``, ``bool``, ``str``, ``Literal``, a
    union of them, ``None``, or ``tuple[T, ...]`` of them, given as a tuple or a list); an
    ``int`` fits a ``float``, a ``bool`` fits only ``bool``."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item, _) = typing.get_args(tp)
        return isinstance(value, tuple | list) and all(_fits(v, item) for v in value)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _as_float(value: Any, tp: Any) -> Any:
    """An ``int`` given for a field that takes a ``float`` (and no ``int``) as that float,
    so a run records ``3.0`` for ``beta`` whether it was given as 3 or 3.0; a list for a
    ``tuple[T, ...]`` field as a tuple (JSON has no tuples)."""
    if typing.get_origin(tp) is tuple:
        (item, _) = typing.get_args(tp)
        return tuple(_as_float(v, item) for v in value)
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) \
        else (tp,)
    if type(value) is int and float in args and int not in args:
        return float(value)
    return value


def type_name(tp: Any) -> str:
    """``tp`` as a reader writes it: ``float``, ``'mlp' or 'transformer'``, ``float or
    'auto'``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a tuple of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def make_options(cls: type, method: str, values: Any) -> Any:
    """The validated options instance of ``cls`` for ``method`` from ``values``: None (the
    defaults), an instance of ``cls``, or a mapping of field name to typed value (the other
    fields keep their defaults).

    Raises:
        ValueError: an unknown key, a value of the wrong type (naming ``method``, the key, the
            expected type and the value found), an instance of another options class, or a
            value ``cls.validate()`` refuses.
    """
    if values is None:
        values = {}
    names = [f.name for f in dataclasses.fields(cls)]
    if isinstance(values, cls):
        opts, values = values, option_values(values)
    elif isinstance(values, Mapping):
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"method_options: {method} has no option {unknown[0]!r}; its "
                             f"options are {sorted(names)}")
        opts = None
    else:
        raise ValueError(f"method_options: {method} takes {cls.__name__} (or a mapping of its "
                         f"fields), found {type(values).__name__}")
    hints = _hints(cls)
    for key, value in values.items():
        if not _fits(value, hints[key]):
            raise ValueError(f"method_options: {method} option {key!r} must be "
                             f"{type_name(hints[key])}, found {value!r}")
    if opts is None:
        opts = cls(**{k: _as_float(v, hints[k]) for k, v in values.items()})
    validate = getattr(opts, "validate", None)
    if validate is not None:
        validate()
    return opts


def option_values(opts: Any) -> dict[str, Any]:
    """Every field of an options instance with its value (what ``config.json`` records)."""
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}


def _from_string(text: str, tp: Any) -> Any:
    """``text`` as a value of ``tp``, trying a union's members in order; ValueError if none
    reads it."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _from_string(text, arg)
            except ValueError:
                continue
        raise ValueError(text)
    if origin is Literal:
        if text in typing.get_args(tp):
            return text
        raise ValueError(text)
    if tp is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(text)
        return text.lower() in _TRUE
    if tp in (int, float, str):
        return tp(text)
    raise ValueError(text)


def upgrade_strings(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every string that stands for a value of another type (``"0.8"`` for a
    ``float`` field) converted: how a ``config.json`` written before options were typed is
    read. Unknown keys and unreadable strings are kept as found, for :func:`make_options` to
    refuse with its message."""
    hints = _hints(cls)
    out = dict(values)
    for key, value in values.items():
        if key in hints and isinstance(value, str) and not _fits(value, hints[key]):
            try:
                out[key] = _from_string(value, hints[key])
            except ValueError:
                pass
    return out


def overrides_class(cls: type) -> type:
    """A dataclass with the fields of ``cls``, each ``T | None`` with default None: the
    options a command may change over a checkpoint's (``offline-dt finetune``), None for
    "keep the checkpoint's". Its docstring is ``cls``'s (the flags' help)."""
    hints = _hints(cls)
    fields = [(f.name, hints[f.name] | None, dataclasses.field(default=None))
              for f in dataclasses.fields(cls)]
    over = dataclasses.make_dataclass(f"{cls.__name__}Changes", fields)
    over.__doc__ = cls.__doc__
    over.__module__ = cls.__module__
    _HELP_SOURCE[over] = cls
    return over


_HELP_SOURCE: dict[type, type] = {}


def changed_values(overrides: Any) -> dict[str, Any]:
    """The fields of an :func:`overrides_class` instance that were set (not None)."""
    return {k: v for k, v in option_values(overrides).items() if v is not None}


@cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """Field name → text of the Google-style ``Attributes:`` section of ``cls``'s docstring
    (continuation lines joined; an entry ``a, b: text`` documents both), merged over its
    bases' (a subclass's entry wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(inspect.getmro(_HELP_SOURCE.get(cls, cls))):
        text = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        section = re.split(r"^Attributes:\s*$", text, maxsplit=1, flags=re.M)
        if len(section) < 2:
            continue
        names: list[str] = []
        for line in section[1].splitlines():
            entry = re.match(r"^    (\w+(?:, \w+)*)(?: \([^)]*\))?: (.*)$", line)
            if entry:  # "name: text", or "a, b: text" for several fields
                names = entry.group(1).split(", ")
                docs.update(dict.fromkeys(names, entry.group(2).strip()))
            elif names and line.startswith("        "):
                docs.update({n: docs[n] + " " + line.strip() for n in names})
            elif line.strip():
                names = []
    return docs


def field_help(cls: type, name: str) -> str | None:
    """The help of field ``name`` of an options dataclass: its ``Attributes:`` entry."""
    return _attribute_docs(cls).get(name)


# ---------------------------------------------------------------------------------- search space
@dataclasses.dataclass(frozen=True)
class Range:
    """A number drawn from ``[low, high]`` by a hyperparameter search: an ``int`` when both
    bounds are ints, else a float; ``log`` draws uniformly in log space (learning rates).

    Raises:
        ValueError: ``low > high``, or ``log`` with ``low <= 0``.
    """

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if self.low > self.high or (self.log and self.low <= 0):
            raise ValueError(f"Range({self.low}, {self.high}, log={self.log}): needs low <= "
                             f"high, and low > 0 with log")

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of ``values``, drawn by a hyperparameter search (each a number, a string or a
    bool, as the field it sets takes)."""

    values: tuple[Any, ...]


#: What a search may set: a ``TrainConfig`` field by its name (``"learning_rate"``), or an
#: option of the method's options dataclass as ``"options.<name>"`` (``"options.expectile"``).
SearchSpace = Mapping[str, Range | Choice]
#: A transformer method's search space (``Method.search_space``): the reference study's
#: (seed 003, Table I, "Best Parameters": embedding 32 to 128 and learning rates 1e-4 to 1e-2
#: across its datasets), with the DT paper's depth and context (Chen et al. 2021, Table 8:
#: 3 layers, K = 20 for the gym tasks) at the top of their ranges, and its dropout 0.1 or none.
TRANSFORMER_SPACE: dict[str, Range | Choice] = {
    "learning_rate": Range(1e-4, 1e-2, log=True),
    "embed_dim": Choice((32, 64, 128)),
    "n_layer": Choice((1, 2, 3)),
    "context_length": Choice((5, 10, 20)),
    "dropout": Choice((0.0, 0.1)),
}
