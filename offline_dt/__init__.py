"""offline-dt: make offline RL datasets and train Decision Transformers (Chen et al. 2021) and
their relatives on them, evaluated on the live environment.

The public API, one name per step of the loop (each the same function the CLI calls)::

    import offline_dt as odt

    odt.generate(odt.GenerateConfig(env_id="Pendulum-v1"))        # offline-dt generate
    data = odt.load_dataset("pendulum/medium-v0")                  # an OfflineDataset
    result = odt.train(odt.TrainConfig(dataset="pendulum/medium-v0", method="dt"))
    scores = odt.evaluate_checkpoint(odt.EvalConfig(checkpoint=result.run_dir))
    odt.reproduce(preset="quick")                                  # offline-dt reproduce

Names are imported from the layer that owns them on first use (PEP 562), so ``import
offline_dt`` is cheap and imports neither torch nor a layer you do not use:

- data: :func:`load_dataset`, :class:`OfflineDataset` (``offline_dt.data``);
- datagen: :class:`GenerateConfig`, :func:`generate` (``datagen``);
- methods: :data:`METHODS` (the registry), :class:`Method`, :func:`register`;
- training: :class:`TrainConfig`, :func:`train`, :func:`load_checkpoint`, and the online
  entry points :class:`OnlineConfig` / :func:`train_online`, :class:`FinetuneConfig` /
  :func:`finetune` (``offline_dt.training``);
- evaluation: :class:`EvalConfig`, :func:`evaluate_checkpoint` (``offline_dt.evaluation``);
- study: :func:`reproduce`, :func:`report`, :class:`SearchConfig` / :func:`search`
  (``offline_dt.study``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name → the module that owns it.
_OWNERS = {
    "load_dataset": "offline_dt.data",
    "OfflineDataset": "offline_dt.data",
    "GenerateConfig": "datagen.config",
    "generate": "datagen.generate",
    "METHODS": "offline_dt.methods",
    "Method": "offline_dt.methods",
    "register": "offline_dt.methods",
    "TrainConfig": "offline_dt.training",
    "train": "offline_dt.training",
    "load_checkpoint": "offline_dt.training",
    "OnlineConfig": "offline_dt.training.online",
    "train_online": "offline_dt.training.online",
    "FinetuneConfig": "offline_dt.training.finetune",
    "finetune": "offline_dt.training.finetune",
    "EvalConfig": "offline_dt.evaluation",
    "evaluate_checkpoint": "offline_dt.evaluation",
    "reproduce": "offline_dt.study.pipeline",
    "SearchConfig": "offline_dt.study.search",
    "search": "offline_dt.study.search",
    "report": "offline_dt.study.report",
}
__all__ = sorted(_OWNERS)


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its owner on first use.

    Raises:
        AttributeError: ``name`` is not in :data:`__all__`.
    """
    if name not in _OWNERS:
        raise AttributeError(f"module 'offline_dt' has no attribute {name!r}; the public API "
                             f"is {__all__}")
    value = getattr(importlib.import_module(_OWNERS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
