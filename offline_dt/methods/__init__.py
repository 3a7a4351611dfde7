"""Training methods, one module each, registered by name (``offline-dt train --method``).

- ``dt``: Decision Transformer (``offline_dt.methods.dt``).
- ``bc``: the same network with returns-to-go zeroed (``offline_dt.methods.bc``).
- ``qt``: Q-value regularized DT with an in-sample IQL critic, MLP or transformer
  (``offline_dt.methods.qt``).
- ``odt``: Online Decision Transformer, a stochastic policy with an entropy constraint, for
  ``offline-dt finetune`` (``offline_dt.methods.odt``).
- ``ppo``, ``dqn``: PPO and DQN on a causal-transformer policy acting from its recent
  history, trained online by ``offline-dt online`` (``offline_dt.methods.ppo``,
  ``offline_dt.methods.dqn``, ``offline_dt.training.online``).

See ``offline_dt.methods.base.Method`` for what a method provides, and README "Adding a
method".
"""

from offline_dt.methods import bc, dqn, dt, odt, ppo, qt  # noqa: F401  (each module registers its method)
from offline_dt.methods.base import METHODS, Method, get_method, register

__all__ = ["METHODS", "Method", "get_method", "register"]
