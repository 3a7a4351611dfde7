"""Training methods, one module each (a method may own a second file for how its batches are
made), registered by name (``--method``), each of a kind that says which command trains it:

- ``dt``: Decision Transformer (``offline_dt.methods.dt``); offline, ``offline-dt train``.
- ``bc``: the same network with returns-to-go zeroed (``offline_dt.methods.bc``); offline.
- ``qt``: Q-value regularized DT with an in-sample IQL critic, MLP or transformer
  (``offline_dt.methods.qt``); offline.
- ``odt``: Online Decision Transformer, a stochastic policy with an entropy constraint,
  pretrained by ``offline-dt train`` and fine-tuned by ``offline-dt finetune``
  (``offline_dt.methods.odt``, its replay buffer ``offline_dt.methods.odt_replay``).
- ``ppo``, ``dqn``, ``reinforce``, ``a2c``: PPO, DQN, REINFORCE with a value baseline and
  synchronous advantage actor-critic on a causal-transformer policy acting from its recent
  history, trained online by ``offline-dt online`` (``offline_dt.methods.ppo`` with its
  rollout source ``offline_dt.methods.ppo_rollout``, ``offline_dt.methods.dqn``,
  ``offline_dt.methods.reinforce``, ``offline_dt.methods.a2c``; their shared env source
  ``offline_dt.methods.env_source``).

Every module of this package is imported when it is (:func:`~offline_dt.methods.base.discover`),
so a method's module registers itself with no import line here. See
``offline_dt.methods.base`` for the contract (``Method``, ``OnlineMethod``, ``FinetuneMethod``,
``BatchSource``), and docs/adding-a-method.md.
"""

from offline_dt.methods.base import (
    METHODS,
    BatchSource,
    FinetuneMethod,
    Method,
    OnlineMethod,
    check_command,
    discover,
    get_method,
    method_names,
    methods_for,
    register,
)

discover(__name__, __path__)

__all__ = ["METHODS", "BatchSource", "FinetuneMethod", "Method", "OnlineMethod",
           "check_command", "get_method", "method_names", "methods_for", "register"]
