"""What a training method is, and the registry that names them.

A method is one small unit: the networks it trains (``build``), its loss on a batch of
windows (``loss``) and how it acts in an environment (``policy``). The one training loop
(``offline_dt.training.loop``) and the one evaluator (``offline_dt.evaluation.evaluate``) call these
three and know nothing else about a method, the way d3rlpy keeps its algorithms apart and CORL keeps
each algorithm's math in one file. README "Adding a method" walks through ``bc``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.nn.transformer import DecisionTransformer, DTConfig

if TYPE_CHECKING:
    from offline_dt.envs.rollout import Policy


class Method:
    """Base class of a training method; subclasses set ``name`` and register themselves.

    Attributes:
        name: the ``--method`` value and the method's name in results tables.
        conditions_on_return: the policy takes a target return; evaluation then tries the
            default targets (the dataset's best return, the expert score) or the user's.
        graph_safe: the loss has fixed shapes and never reads a value back to the host, so
            the loop may capture it as CUDA graphs (``offline_dt.training.cuda_graph``).
    """

    name: ClassVar[str] = ""
    conditions_on_return: ClassVar[bool] = True
    graph_safe: ClassVar[bool] = False

    def build(self, cfg: DTConfig, options: dict[str, Any] | None = None) -> nn.Module:
        """The networks to train, as one module (its ``state_dict`` is the checkpoint's
        ``model``); a Decision Transformer by default. ``options`` are the method's own
        hyperparameters (``TrainConfig.method_options``), for methods that have any."""
        return DecisionTransformer(cfg)

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss to minimise, extra scalars to log as ``metrics.csv`` columns)."""
        raise NotImplementedError

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, **settings: Any) -> Policy:
        """A batched :class:`~offline_dt.envs.rollout.Policy` acting with ``net`` in env units.
        ``settings`` is one entry of :meth:`inference_candidates`."""
        raise NotImplementedError

    def resolve_options(self, options: dict[str, Any] | None) -> dict[str, str]:
        """Every option of the method with its value, defaults filled in, as strings: what a
        run's ``config.json`` records, so a later change of a default is seen as a different
        config. A method without options accepts none.

        Raises:
            ValueError: an unknown option or a bad value (names the method and the key).
        """
        if options:
            raise ValueError(f"method_options: method {self.name!r} takes no options, found "
                             f"{sorted(options)}")
        return {}

    def inference_candidates(self, net: nn.Module) -> list[dict[str, Any]]:
        """The inference settings evaluation may choose among on validation episodes (each
        passed to :meth:`policy` as keyword arguments, crossed with the target returns); one
        empty setting by default."""
        return [{}]

    def warm_start(self, net: nn.Module, payload: dict[str, Any]) -> bool:
        """Load a checkpoint's networks (``payload["model"]``, a state dict) into ``net`` for
        a new run (``train(init=...)``); True when all of ``net`` was loaded, so the
        checkpoint's optimizer and schedule states continue too. By default the whole
        network, strictly; a method may load a part (e.g. a pretrained trunk under fresh
        heads) and return False.

        Raises:
            ValueError: the checkpoint's networks do not fit ``net``.
        """
        try:
            net.load_state_dict(payload["model"])
        except RuntimeError as e:
            raise ValueError(f"init checkpoint: its networks do not fit this run's config "
                             f"({e})") from e
        return True

    def after_step(self, net: nn.Module) -> None:
        """Called by the training loop after every optimizer step (e.g. a target network's
        Polyak update); nothing by default."""

    def clip_gradients(self, net: nn.Module, max_norm: float) -> None:
        """Clip gradients before the optimizer step: one global norm over all parameters by
        default; a method with several networks may clip each on its own."""
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_options(cls: type, method: str, options: dict[str, Any] | None) -> Any:
    """An options dataclass ``cls`` from ``TrainConfig.method_options`` (strings from the CLI
    converted to each field's type; booleans from true/false/1/0/yes/no), then its
    ``validate()``.

    Raises:
        ValueError: an unknown key or a value of the wrong type, naming ``method``, the key,
            the expected type and the value found.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in (options or {}).items():
        if key not in fields:
            raise ValueError(f"method_options: {method} has no option {key!r}; its options "
                             f"are {sorted(fields)}")
        kind = type(fields[key].default)
        try:
            if kind is bool and not isinstance(raw, bool):
                text = str(raw).lower()
                if text not in _TRUE + _FALSE:
                    raise ValueError(raw)
                values[key] = text in _TRUE
            else:
                values[key] = kind(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"method_options: {method} option {key!r} must be "
                             f"{kind.__name__}, found {raw!r}") from e
    opts = cls(**values)
    opts.validate()
    return opts


def option_strings(opts: Any) -> dict[str, str]:
    """Every field of an options dataclass as a string (what ``config.json`` records)."""
    return {f.name: str(getattr(opts, f.name)).lower() if isinstance(getattr(opts, f.name), bool)
            else str(getattr(opts, f.name)) for f in dataclasses.fields(opts)}


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` selectable as ``--method <cls.name>``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    """An instance of the method registered as ``name``.

    Raises:
        ValueError: unknown name; the message lists the registered ones.
    """
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, found {name!r}")
    return METHODS[name]()
