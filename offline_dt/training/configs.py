"""Stage configs as dataclasses: one source for CLI flags, Python defaults and run JSON.

Each stage (generation, training, evaluation) defines a dataclass whose field defaults are
the paper's settings. The command line is generated from those dataclasses by `tyro
<https://brentyi.github.io/tyro/>`_: one flag per field (``snake_case`` → ``--kebab-case``),
so a flag and a field can never disagree. :data:`REGISTRY` holds the project's conventions,
read from each field's ``field(metadata=...)``:

* ``"help"``: the flag's help text (shown with the default); without it, the field's entry
  in the class docstring's ``Attributes:`` section;
* ``"choices"``: the values the flag accepts (a ``str`` field becomes a ``Literal``); both
  may be functions, called when the parser is built (e.g. the methods registered by then);
* ``"aliases"``: extra flag names; every ``env_id`` field also answers to ``--env``;
* ``"cli": False``: the field is not a flag (it keeps its default).

Booleans are given as ``--flag true`` / ``--flag false`` (also ``yes/no``, ``1/0``, ``on/off``);
a bare ``--flag`` means true.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro
from tyro.constructors import (
    MISSING_NONPROP,
    ConstructorRegistry,
    PrimitiveConstructorSpec,
    PrimitiveTypeInfo,
    StructConstructorSpec,
    StructFieldSpec,
    StructTypeInfo,
)

from offline_dt.data.atomic import atomic_path, is_json_file
from offline_dt.methods.base import METHODS, methods_for
from offline_dt.methods.options import changed_values, field_help, option_values, overrides_class

T = TypeVar("T")

#: Extra flag names by field name, for every config that has the field.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {"env_id": ("--env",)}
#: tyro markers of every command line: ``--flag true/false`` booleans, subcommands named
#: ``train`` (not ``command:train``), and a field with a default never turned into a
#: subcommand (an optional nested type such as ``dict[str, Any] | None`` stays at its default
#: instead). A nested config's flags carry its field's name (``--qt.expectile``), unless the
#: field is ``Annotated[..., tyro.conf.arg(name="")]`` (the stage config of a command).
CLI_MARKERS = (tyro.conf.FlagConversionOff, tyro.conf.OmitSubcommandPrefixes,
               tyro.conf.AvoidSubcommands)
REGISTRY = ConstructorRegistry()

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """``true/yes/on/1`` → True, ``false/no/off/0`` → False (any case); else ValueError."""
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected true or false, found {text!r}")


@REGISTRY.primitive_rule
def _bool_rule(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """``--flag true|false``, or a bare ``--flag`` for true."""
    if info.type is not bool:
        return None
    return PrimitiveConstructorSpec(
        nargs=(0, 1),
        metavar="{true,false}",
        instance_from_str=lambda args: True if not args else parse_bool(args[0]),
        is_instance=lambda x: isinstance(x, bool),
        str_from_instance=lambda b: ["true" if b else "false"],
    )


@REGISTRY.primitive_rule
def _auto_bool_rule(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """``bool | None`` (None: decide automatically) as ``--flag auto|true|false``."""
    if info.type != (bool | None) and info.type != typing.Optional[bool]:  # noqa: UP045
        return None
    return PrimitiveConstructorSpec(
        nargs=1,
        metavar="{auto,true,false}",
        instance_from_str=lambda args: None if args[0].lower() == "auto" else
        parse_bool(args[0]),
        is_instance=lambda x: x is None or isinstance(x, bool),
        str_from_instance=lambda b: ["auto" if b is None else "true" if b else "false"],
        choices=("auto", "true", "false"),
    )


def _with_choices(tp: Any, choices: Sequence[Any]) -> Any:
    """``tp`` with its ``str`` leaves (``str``, ``str | None``, ``list[str]``) turned into
    ``Literal[*choices]``."""
    origin = typing.get_origin(tp)
    if tp is str:
        return Literal[tuple(choices)]
    if origin in (typing.Union, types.UnionType):
        args = tuple(_with_choices(a, choices) for a in typing.get_args(tp))
        return typing.Union[args]  # noqa: UP007 (built at runtime)
    if origin in (list, tuple, set):
        args = typing.get_args(tp)
        return origin[(_with_choices(args[0], choices), *args[1:])]
    return tp


def _field_type(f: dataclasses.Field, tp: Any) -> Any:
    """The annotation tyro sees for field ``f``: choices, aliases and ``cli: False`` applied."""
    meta = f.metadata
    if "choices" in meta:
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        tp = _with_choices(tp, list(choices))
    aliases = tuple(meta.get("aliases", ())) + FIELD_ALIASES.get(f.name, ())
    if aliases:
        tp = Annotated[tp, tyro.conf.arg(aliases=aliases)]
    if meta.get("cli") is False:
        tp = Annotated[tp, tyro.conf.Suppress]
    return tp


def _field_default(f: dataclasses.Field, parent: Any) -> Any:
    """The parent instance's value (tyro's ``default=``), else the field's default; a field
    that is not a flag (``cli: False``) always gets the field's default, which a config may
    complete from its other fields (``TrainConfig.method_options`` from ``method``)."""
    if parent is not None and f.metadata.get("cli") is not False:
        return getattr(parent, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING_NONPROP


def _help(f: dataclasses.Field, cls: type) -> str | None:
    """A field's help: ``metadata["help"]`` (called when it is a function, so that it can
    list what is registered when the parser is built), else its docstring entry."""
    text = f.metadata.get("help")
    if callable(text):
        text = text()
    return text or field_help(cls, f.name)


@REGISTRY.struct_rule
def _dataclass_rule(info: StructTypeInfo) -> StructConstructorSpec | None:
    """One flag per ``init`` field of a dataclass, configured by its metadata."""
    cls = info.type
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        return None
    parent = info.default if isinstance(info.default, cls) else None
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = tuple(
        StructFieldSpec(name=f.name, type=_field_type(f, hints[f.name]),
                        default=_field_default(f, parent),
                        helptext=_help(f, cls))
        for f in dataclasses.fields(cls) if f.init
    )
    return StructConstructorSpec(instantiate=cls, fields=specs)


def same_as(cls: type, name: str, **changes: Any) -> Any:
    """A ``dataclasses.field`` declared as ``cls``'s field ``name`` (its default and
    metadata), with ``changes``: ``default`` and ``help``. How one config takes another's
    field instead of declaring it again (``OnlineConfig``'s network fields are
    ``TrainConfig``'s)."""
    f = cls.__dataclass_fields__[name]
    meta = {**f.metadata, **({"help": changes["help"]} if "help" in changes else {})}
    if "default" in changes:
        return field(default=changes["default"], metadata=meta)
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=meta)
    return field(default=f.default, metadata=meta)


def check_choices(config: Any, skip: Sequence[str] = ()) -> None:
    """Refuse a field of dataclass instance ``config`` whose value is not among its
    ``metadata["choices"]`` (every value of a list field), except the fields in ``skip``.

    Raises:
        ValueError: names the class, the field, the choices and the value found.
    """
    for f in dataclasses.fields(config):
        if "choices" not in f.metadata or f.name in skip:
            continue
        choices = f.metadata["choices"]
        choices = list(choices() if callable(choices) else choices)
        value = getattr(config, f.name)
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and v not in choices:
                raise ValueError(f"{type(config).__name__}.{f.name} must be one of {choices}, "
                                 f"found {v!r}")


def parse_config(cls: type[T], args: Sequence[str] | None = None, *, prog: str | None = None,
                 default: T | None = None) -> T:
    """Parse command-line ``args`` (``sys.argv[1:]`` when None) into dataclass ``cls``.

    Flags not given keep ``default``'s values (the field defaults when None). ``--help`` and
    invalid flags or values print a message and raise ``SystemExit`` (status 0 or 2).
    """
    kwargs: dict[str, Any] = {} if default is None else {"default": default}
    return tyro.cli(cls, args=args, prog=prog, registry=REGISTRY, config=CLI_MARKERS, **kwargs)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and numpy scalars to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically, replacing ``path`` only if it is a JSON
    file (or empty).

    Raises:
        FileExistsError: ``path`` is a directory or a file that is not JSON (left untouched).
        offline_dt.data.atomic.DiskFullError: the disk filled up (the old file stays).
    """
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    with atomic_path(path, overwrite=True, ours=is_json_file, what="JSON file") as tmp:
        tmp.write_text(text)


def _is_path(tp: Any) -> bool:
    """``Path`` or ``Path | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_path(a) for a in typing.get_args(tp) if a is not type(None))
    return tp is Path


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (flat) config dataclass from its JSON dict; unknown keys raise ValueError.
    A class with an ``upgrade_json`` classmethod first brings an older file's values to
    today's types with it (``TrainConfig.upgrade_json``)."""
    if hasattr(cls, "upgrade_json"):
        data = cls.upgrade_json(data)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config key(s) {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: Path(v) if v is not None and _is_path(hints[k]) else v for k, v in data.items()}
    return cls(**kwargs)


# ---------------------------------------------------------------------------------- method options
def options_command(config: type, command: str) -> type:
    """The dataclass tyro parses for ``offline-dt <command>``: ``config``'s flags as they are,
    then one group per method the command trains that has options (``Method.options_class``),
    its flags ``--<method>.<option>`` typed and with their defaults, built from the methods
    registered when the parser is built (so a method registered outside the package shows
    too). For ``finetune`` each option defaults to None: keep the checkpoint's."""
    groups = []
    for name in methods_for(command):
        cls = METHODS[name].options_class
        if cls is None:
            continue
        if command == "finetune":
            cls = overrides_class(cls)
        what = "changes over the checkpoint's" if command == "finetune" else "options"
        groups.append((_group(name), Annotated[cls, tyro.conf.arg(
            help=f"--method {name} {what} ({METHODS[name].description})")],
            field(default_factory=cls)))
    return dataclasses.make_dataclass(f"{config.__name__}Flags", [
        ("config", Annotated[config, tyro.conf.arg(name="")], field(default_factory=config)),
        *groups])


def _group(method: str) -> str:
    """The field of a method's option group: its name as an identifier (``toy-bc`` →
    ``toy_bc``, whose flags tyro spells ``--toy-bc.<option>``)."""
    return method.replace("-", "_").replace(".", "_")


def with_method_options(flags: Any, command: str) -> Any:
    """The stage config of a parsed :func:`options_command`, its ``method_options`` the
    chosen method's group (for ``finetune``: the options that were set). A stage config
    holding its training run as ``train`` (``offline-dt search``) gets them there.

    Raises:
        ValueError: an option of another method than ``--method`` was set (names the flag).
    """
    if hasattr(flags.config, "train"):
        inner = type("Flags", (), {**vars(flags), "config": flags.config.train})
        return dataclasses.replace(flags.config, train=with_method_options(inner, command))
    cfg = flags.config
    method = getattr(cfg, "method", None)
    groups = {_group(m): m for m in methods_for(command) if hasattr(flags, _group(m))}
    for field_name, name in groups.items():
        given = getattr(flags, field_name)
        changed = [k for k, v in option_values(given).items()
                   if v != getattr(type(given)(), k)]
        if changed and method is not None and name != method:
            raise ValueError(f"--{name}.{changed[0].replace('_', '-')} is an option of "
                             f"--method {name}, but --method is {method}")
    if command == "finetune":
        chosen: dict[str, Any] = {}
        for field_name in groups:
            chosen.update(changed_values(getattr(flags, field_name)))
        return dataclasses.replace(cfg, method_options=chosen)
    if method is not None and hasattr(flags, _group(method)):
        return dataclasses.replace(cfg, method_options=getattr(flags, _group(method)))
    return cfg


@dataclass
class RunControls:
    """How an online run (``offline-dt finetune``, ``offline-dt online``) is driven, not what
    it learns: device, checkpoints, periodic evaluation, resume, progress. Their configs
    inherit these fields (the CLI lists them first); ``TrainConfig`` has its own, with the
    offline loop's defaults."""

    device: str = field(default="auto", metadata={
        "help": "torch device; auto picks CUDA when available", "choices": ["auto", "cpu", "cuda"]})
    checkpoint_every: int = field(default=1000, metadata={
        "help": "save checkpoint.pt every this many updates (and at the end)"})
    eval_every: int = field(default=0, metadata={
        "help": "evaluate the deterministic policy every this many updates (0: never)"})
    eval_episodes: int = field(default=20, metadata={"help": "episodes per periodic evaluation"})
    resume: bool = field(default=False, metadata={
        "help": "continue exactly from run_dir/checkpoint.pt"})
    overwrite: bool = field(default=False, metadata={
        "help": "start afresh even if run_dir already holds a checkpoint"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar (TTY only)"})
