"""What a training method is, the batch sources its runs draw from, and the registry.

A method is one file: the networks it trains (``build``), its loss on a batch (``loss``), how
it acts in an environment (``policy``) and, for a method that collects its own data, how its
batches are made (``make_source``). The one training loop (``offline_dt.training.loop``), its
entry points (``offline-dt train``, ``online``, ``finetune``) and the one evaluator
(``offline_dt.evaluation.evaluate``) know only this contract: :class:`Method` (and its
:class:`OnlineMethod` and :class:`FinetuneMethod` kinds) and :class:`BatchSource`, abstract
bases whose optional hooks are no-ops, the way d3rlpy keeps its algorithms apart and CORL keeps
each algorithm's math in one file. A method declares its kind (:data:`Kind`: which command
trains it), whether it conditions on returns, a one-line description and the attentions it
supports; the CLI, the presets and the reports read those from :data:`METHODS`. Registering a
subclass with :func:`register` is all it takes to add one (docs/adding-a-method.md): in a
module of ``offline_dt.methods``, which :func:`discover` imports, or in any module imported
before the run.
"""

from __future__ import annotations

import abc
import importlib
import inspect
import json
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from offline_dt.data.dataset import OfflineDataset
from offline_dt.data.windows import Batch, Normalizer, WindowSampler
from offline_dt.methods.options import TRANSFORMER_SPACE, SearchSpace, make_options
from offline_dt.nn.config import DTConfig
from offline_dt.nn.transformer import DecisionTransformer

if TYPE_CHECKING:
    from offline_dt.envs.policies import Policy

#: How a method is trained: ``offline`` on a dataset's windows (``offline-dt train``);
#: ``online`` on the data its own batch source collects in an env, no dataset (``offline-dt
#: online``); ``finetune`` pretrained on a dataset like ``offline``, then fine-tuned on the
#: data its batch source collects (``offline-dt finetune``).
Kind = Literal["offline", "online", "finetune"]
#: The kinds each command trains.
COMMAND_KINDS: dict[str, tuple[Kind, ...]] = {
    "train": ("offline", "finetune"), "online": ("online",), "finetune": ("finetune",)}


# ---------------------------------------------------------------------------- what sources read
class RunConfig(Protocol):
    """The run-config fields a batch source reads (``offline_dt.training``'s ``TrainConfig``,
    resolved: ``method_options`` is the method's options instance, or None)."""

    seed: int
    batch_size: int
    context_length: int
    max_timestep: int
    method_options: Any


class Run(Protocol):
    """What the loop hands to :meth:`BatchSource.collect` and to its eval hook (the training
    layer's ``TrainingRun``): the trainer's own objects, never refitted."""

    config: RunConfig
    method: Method
    net: nn.Module  # in train mode; a hook that changes the mode restores it
    normalizer: Normalizer
    dataset_info: dict[str, Any]


@dataclass(frozen=True)
class ResumeSettings:
    """The settings of the command that runs a batch source which a resumed run must share:
    the source saves them in its state and refuses a checkpoint whose differ.

    Attributes:
        what: the run in messages ("an online run", "a fine-tune").
        values: the settings, JSON values (what may change left out).
        resumable: the command's settings that may change on resume (named in the error).
    """

    what: str
    values: Mapping[str, Any]
    resumable: frozenset[str]

    def dumps(self) -> str:
        """The settings as the state holds them (JSON, keys sorted)."""
        return json.dumps(dict(self.values), sort_keys=True)

    def check(self, saved: str) -> None:
        """Raises ValueError: ``saved`` (:meth:`dumps` of the checkpoint's) differs; the
        message names each differing setting with both values."""
        old = json.loads(saved)
        diff = {k: (old.get(k), v) for k, v in self.values.items() if old.get(k) != v}
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume {self.what} with different settings ({lines}); "
                             f"only {sorted(self.resumable)} may change")


@dataclass(frozen=True)
class Rounds:
    """A fine-tune's schedule (``offline-dt finetune``): each round collects
    ``episodes_per_round`` episodes toward ``target_return`` (env reward units) into a buffer
    of ``buffer_size`` trajectories, then the loop takes ``updates_per_round`` updates."""

    updates_per_round: int
    episodes_per_round: int
    buffer_size: int
    target_return: float


@dataclass(frozen=True)
class SourceSpec:
    """What a method's batch source is made from (:meth:`OnlineMethod.make_source`): the
    facts of the run, built by the command's entry point when the loop asks for the source.

    Attributes:
        config: the run's resolved config (:class:`RunConfig`).
        device: where batches go.
        normalizer: the run's (observation statistics, returns-to-go scale, action bounds).
        dataset: the offline dataset, checked against ``env_id`` (None for an online run).
        env_id: the Gymnasium env to collect in.
        env_steps: the env-step budget of the run.
        settings: what a resumed run must share (:class:`ResumeSettings`).
        rounds: a fine-tune's schedule (:class:`Rounds`); None for an online run.
    """

    config: RunConfig
    device: torch.device
    normalizer: Normalizer
    dataset: OfflineDataset | None
    env_id: str
    env_steps: int
    settings: ResumeSettings
    rounds: Rounds | None = None


@dataclass(frozen=True)
class Budget:
    """An online run's loop settings: ``steps`` (the update cap; the source may finish
    earlier) and ``batch_size`` (samples per update)."""

    steps: int
    batch_size: int


# ---------------------------------------------------------------------------------- batch sources
class BatchSource(abc.ABC):
    """What the training loop samples batches from: the windows of a dataset
    (:class:`WindowSource`, the default) or the source a method makes
    (:meth:`OnlineMethod.make_source`). The loop calls every hook; the defaults do nothing.

    Attributes:
        generator: the ``torch.Generator`` batches are drawn with (checkpointed with the
            loop's RNGs, and held still across the eval hook).
        collects: the source acts in an environment (:meth:`collect`); its run trains in one
            process (the loop refuses it under torchrun).
    """

    generator: torch.Generator
    collects: ClassVar[bool] = False

    @abc.abstractmethod
    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[Batch, float]:
        """This rank's shard of the next global batch of ``batch_size`` and its share of the
        batch (``WindowSampler.sample_shard``'s contract)."""

    def collect(self, run: Run, step: int) -> None:  # noqa: B027 (a no-op hook)
        """Before every update (``step`` updates done), with the trainer's :class:`Run`: e.g.
        act in the environment and add to a buffer (then, for a source that ``collects``,
        the loop puts the networks back in train mode). Nothing by default."""

    def finished(self, step: int) -> bool:
        """True ends the run after ``step`` updates (before the config's ``steps``, then a
        cap), with the final log row and checkpoint. False by default."""
        return False

    def log_values(self) -> dict[str, float]:
        """Columns added to every ``metrics.csv`` row; none by default."""
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        """Tensors and plain values saved as the checkpoint's ``source`` (never pickled
        objects); None (the default): nothing to save."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (a no-op hook)
        """Restore :meth:`state_dict`'s state on resume; nothing by default."""


class WindowSource(BatchSource):
    """The windows (or band-attention segments) of a dataset: a
    :class:`~offline_dt.data.windows.WindowSampler` as a :class:`BatchSource`."""

    def __init__(self, sampler: WindowSampler) -> None:
        self.sampler = sampler

    @property
    def generator(self) -> torch.Generator:  # type: ignore[override]
        return self.sampler.generator

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[Batch, float]:
        return self.sampler.sample_shard(batch_size, rank, world_size)


# ---------------------------------------------------------------------------------- methods
class Method(abc.ABC):
    """A training method (kind ``offline`` unless a subclass says otherwise); subclasses set
    ``name`` and ``description`` and register themselves (:func:`register`).

    Attributes:
        name: the ``--method`` value and the method's name in results tables.
        kind: which command trains it (:data:`Kind`).
        description: one line saying what it is (``--help``, the reports' notes).
        conditions_on_return: the policy takes a target return; evaluation then tries the
            default targets (the dataset's best return, the expert score) or the user's.
        attentions: the ``TrainConfig.attention`` values it supports (``"band"`` needs a
            policy that acts from the band network's cache).
        graph_safe: the loss has fixed shapes and never reads a value back to the host, so
            the loop may capture it as CUDA graphs (``offline_dt.training.cuda_graph``).
        options_class: the dataclass of its own hyperparameters (``TrainConfig.method_options``
            holds an instance; the CLI shows each field as ``--<name>.<field>``), or None.
        in_reproduce: ``offline-dt reproduce`` runs it by default (else only when named).
        search_space: the hyperparameters ``offline-dt search`` may tune, with their ranges
            (``offline_dt.methods.options.SearchSpace``; a transformer's by default).
        multi_task: it trains on a suite of datasets of several envs
            (``offline_dt.data.suite``): its offline source and ``fit`` get a ``Suite``, its
            network's ``DTConfig.tasks`` lists the envs, and evaluation acts through
            :meth:`for_env`. Other methods refuse a suite.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind] = "offline"
    description: ClassVar[str] = ""
    conditions_on_return: ClassVar[bool] = True
    attentions: ClassVar[tuple[str, ...]] = ("window",)
    graph_safe: ClassVar[bool] = False
    #: The method's options dataclass (:mod:`offline_dt.methods.options`); None: it has none.
    options_class: ClassVar[type | None] = None
    #: Whether ``offline-dt reproduce`` runs it when no ``--methods`` are named (a method
    #: too slow for a preset's budget on a CPU, such as ``tt``'s planner, says False).
    in_reproduce: ClassVar[bool] = True
    #: What ``offline-dt search`` may tune (:data:`offline_dt.methods.options.SearchSpace`):
    #: ``TrainConfig`` fields, and options as ``"options.<name>"``.
    search_space: ClassVar[SearchSpace] = TRANSFORMER_SPACE
    #: Trains on a suite of envs (``offline_dt.data.suite``), e.g. ``mgdt``.
    multi_task: ClassVar[bool] = False

    def build(self, cfg: DTConfig, options: Any = None) -> nn.Module:
        """The networks to train, as one module (its ``state_dict`` is the checkpoint's
        ``model``); a Decision Transformer by default. ``options`` are the method's own
        hyperparameters (``TrainConfig.method_options``), for methods that have any."""
        return DecisionTransformer(cfg)

    @abc.abstractmethod
    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss to minimise, extra scalars to log as ``metrics.csv`` columns)."""

    @abc.abstractmethod
    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, **settings: Any) -> Policy:
        """A batched :class:`~offline_dt.envs.policies.Policy` acting with ``net`` in env units.
        ``settings`` is one entry of :meth:`inference_candidates`."""

    def offline_source(self, dataset: OfflineDataset, normalizer: Normalizer,
                       config: RunConfig, device: torch.device) -> BatchSource | None:
        """The batch source an offline run of this method draws from (e.g. ``tt``'s windows
        of whole transitions with discounted values, ``offline_dt.methods.tt``); None (the
        default): the dataset's windows (:class:`WindowSource`)."""
        return None

    def fit(self, net: nn.Module, dataset: OfflineDataset,  # noqa: B027 (a no-op hook)
            normalizer: Normalizer) -> None:
        """Fit what the networks take from the dataset before a new run trains (``tt``'s
        discretiser), into buffers of ``net`` so that its checkpoint carries them and
        evaluation never refits. Called once per new run, after :meth:`build` and before
        :meth:`warm_start`; never on resume (the checkpoint holds it). Nothing by default."""

    def options(self, values: Any = None) -> Any:
        """The method's validated options (an instance of :attr:`options_class`) from
        ``values``: None (the defaults), an instance, or a mapping of typed values
        (:func:`offline_dt.methods.options.make_options`); None for a method without options,
        which accepts none.

        Raises:
            ValueError: an unknown option, a value of the wrong type or range (names the
                method and the key), or options given to a method that takes none.
        """
        if self.options_class is None:
            if values:
                raise ValueError(f"method_options: method {self.name!r} takes no options, "
                                 f"found {values!r}")
            return None
        return make_options(self.options_class, self.name, values)

    def for_env(self, net: nn.Module, index: int) -> nn.Module:
        """The network acting in env ``index`` of a multi-task method's suite (what
        :meth:`policy` and :meth:`inference_candidates` are then given); ``net`` itself for a
        method of one env."""
        return net

    def inference_candidates(self, net: nn.Module) -> list[dict[str, Any]]:
        """The inference settings evaluation may choose among on validation episodes (each
        passed to :meth:`policy` as keyword arguments, crossed with the target returns); one
        empty setting by default."""
        return [{}]

    def uses_target(self, settings: Mapping[str, Any]) -> bool:
        """Whether the policy of the inference setting ``settings`` (an entry of
        :meth:`inference_candidates`) acts toward a target return; True by default. Evaluation
        tries a setting that does not once, with ``target_return`` None, instead of once per
        target."""
        return True

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

    def after_step(self, net: nn.Module) -> None:  # noqa: B027 (a no-op hook)
        """Called by the training loop after every optimizer step (e.g. a target network's
        Polyak update); nothing by default."""

    def clip_gradients(self, net: nn.Module, max_norm: float) -> None:
        """Clip gradients before the optimizer step: one global norm over all parameters by
        default; a method with several networks may clip each on its own."""
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)


class OnlineMethod(Method):
    """A method trained online by ``offline-dt online``: no dataset; its batch source
    (:meth:`make_source`) collects in the env.

    Attributes:
        learning_rate: the AdamW learning rate when ``OnlineConfig.learning_rate`` is not
            given.
        lr_decay: the learning-rate schedule under ``OnlineConfig.lr_decay`` ``auto``.
        grad_clip: the gradient-norm clip when ``OnlineConfig.grad_clip`` is not given.
    """

    kind: ClassVar[Kind] = "online"
    conditions_on_return: ClassVar[bool] = False
    learning_rate: ClassVar[float] = 2.5e-4
    lr_decay: ClassVar[str] = "none"
    grad_clip: ClassVar[float] = 0.5

    def check_env(self, env_id: str) -> None:
        """Refuse an env the method cannot act in (before anything is written); nothing by
        default. Raises ValueError naming the env and what is expected."""

    @abc.abstractmethod
    def budget(self, options: Any, env_steps: int, batch_size: int | None
               ) -> Budget:
        """The loop's update cap and batch size for ``env_steps`` env steps with the method's
        ``options`` and the requested ``batch_size`` (None: the method's default).

        Raises:
            ValueError: bad options, or a batch size the method fixes otherwise.
        """

    @abc.abstractmethod
    def make_source(self, spec: SourceSpec) -> BatchSource:
        """The run's batch source (it collects, so ``collects`` is True)."""


class FinetuneMethod(Method):
    """A method pretrained on a dataset by ``offline-dt train`` and fine-tuned online by
    ``offline-dt finetune``, whose batch source (:meth:`make_source`) collects episodes
    toward a target return (``spec.rounds``)."""

    kind: ClassVar[Kind] = "finetune"

    @abc.abstractmethod
    def exploration_target(self, dataset_info: Mapping[str, Any]) -> float:
        """The target return a fine-tune collects toward when none is given, from the
        pretrained run's dataset facts. Raises ValueError when they do not tell it."""

    @abc.abstractmethod
    def make_source(self, spec: SourceSpec) -> BatchSource:
        """The fine-tune's batch source (``spec.rounds`` set; ``spec.dataset`` the offline
        data it starts from)."""


# ---------------------------------------------------------------------------------- registry
#: Every registered method by name, in registration order (:func:`discover` puts the package's
#: own in :data:`KNOWN_ORDER`, then by name).
METHODS: dict[str, type[Method]] = {}
#: The order of the methods registered before :func:`discover` existed, kept: the order of
#: :func:`method_names` (``offline-dt reproduce``'s jobs run the offline ones in it).
KNOWN_ORDER = ("dt", "bc", "qt", "odt", "ppo", "dqn")


def discover(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (its ``__path__`` is ``path``), so each method
    module registers its methods (:func:`register`) with no import line for it; then order
    :data:`METHODS`: :data:`KNOWN_ORDER` first, every other method by name.

    Raises:
        ImportError (or what the module raises): a module of the package fails to import.
    """
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        importlib.import_module(f"{package}.{info.name}")
    order = [n for n in KNOWN_ORDER if n in METHODS] + sorted(set(METHODS) - set(KNOWN_ORDER))
    registered = dict(METHODS)
    METHODS.clear()
    METHODS.update({n: registered[n] for n in order})


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` selectable as ``--method <cls.name>``.

    Raises:
        ValueError: the name is empty or taken, the kind unknown or not its base's
            (``online``: :class:`OnlineMethod`, ``finetune``: :class:`FinetuneMethod`), the
            description empty, or ``cls`` leaves an abstract method undefined (names them).
    """
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    if cls.kind not in ("offline", "online", "finetune") or not cls.description:
        raise ValueError(f"method {cls.name!r}: kind must be 'offline', 'online' or "
                         f"'finetune' and description a line of text, found {cls.kind!r} and "
                         f"{cls.description!r}")
    base = {"online": OnlineMethod, "finetune": FinetuneMethod}.get(cls.kind, Method)
    if not issubclass(cls, base) or (base is Method and issubclass(
            cls, (OnlineMethod, FinetuneMethod))):
        raise ValueError(f"method {cls.name!r} of kind {cls.kind!r} must subclass "
                         f"{base.__name__} (and only it of the kinds' bases)")
    if inspect.isabstract(cls):
        raise ValueError(f"method {cls.name!r} does not define {sorted(cls.__abstractmethods__)}")
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


def method_names(*kinds: Kind) -> list[str]:
    """The registered methods of ``kinds`` (all when none), in registration order."""
    return [n for n, cls in METHODS.items() if not kinds or cls.kind in kinds]


def methods_for(command: str) -> list[str]:
    """The methods ``offline-dt <command>`` trains (``train``, ``online``, ``finetune``), in
    name order."""
    return sorted(method_names(*COMMAND_KINDS[command]))


def method_help(command: str) -> str:
    """``name: description`` of every method ``command`` trains, for its ``--help``."""
    return "; ".join(f"{n}: {METHODS[n].description}" for n in methods_for(command))


def how_to_train(name: str) -> str:
    """The command line that trains the registered method ``name``."""
    kind = METHODS[name].kind
    if kind == "online":
        return f"offline-dt online --method {name}"
    if kind == "finetune":
        return f"offline-dt train --method {name}, then offline-dt finetune --checkpoint RUN_DIR"
    return f"offline-dt train --method {name}"


def check_command(name: str, command: str) -> None:
    """Refuse a method that ``offline-dt <command>`` does not train.

    Raises:
        ValueError: ``name`` is not registered (lists the registered methods), or is of a
            kind the command does not train; the message names the command that trains it.
    """
    get_method(name)
    kind = METHODS[name].kind
    if kind not in COMMAND_KINDS[command]:
        raise ValueError(f"offline-dt {command} trains methods {methods_for(command)}; "
                         f"{name!r} is a method of kind {kind!r}: run `{how_to_train(name)}`")
