"""offline-dt: train and evaluate Decision Transformers (Chen et al. 2021) on offline RL data."""

__version__ = "0.1.0"
