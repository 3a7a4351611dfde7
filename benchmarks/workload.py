"""What the timing pages time: the paper's gym training config and a Pendulum-shaped dataset.

``speed.py``, ``exact_cache.py`` and ``train_quality.py`` share these, so their pages time the
same step on the same data.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from offline_dt.data.dataset import OfflineDataset

#: The Decision Transformer paper's gym hyperparameters (Chen et al. 2021, appendix), in
#: ``TrainConfig`` field names.
PAPER = {"batch_size": 64, "context_length": 20, "embed_dim": 128, "n_layer": 3, "n_head": 1,
         "dropout": 0.1, "learning_rate": 1e-4, "weight_decay": 1e-4, "grad_clip": 0.25}


def pendulum_like(episodes: int = 200, length: int = 200, seed: int = 0) -> OfflineDataset:
    """A Pendulum-shaped random dataset (obs 3, Box action 1, 200-step episodes): timing
    needs no generated data."""
    rng = np.random.default_rng(seed)
    n = episodes * length
    obs = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    obs[:, 2] *= 8
    timeouts = np.zeros(n, bool)
    timeouts[length - 1 :: length] = True
    return OfflineDataset.from_flat(
        observations=obs,
        actions=rng.uniform(-2, 2, (n, 1)).astype(np.float32),
        rewards=-rng.uniform(0, 16, n).astype(np.float32),
        terminals=np.zeros(n, bool),
        timeouts=timeouts,
        observation_space=gym.spaces.Box(np.array([-1, -1, -8], np.float32),
                                         np.array([1, 1, 8], np.float32), (3,), np.float32),
        action_space=gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
        metadata={"env_id": "Pendulum-v1"},
    )
