"""The Decision Transformer's shape: :class:`DTConfig` (Chen et al. 2021, Table 8 defaults) and
the attention kinds (:data:`ATTENTION_KINDS`, see ``offline_dt.nn.transformer``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class DTConfig:
    """Network shape. Defaults are the paper's OpenAI-gym settings (Chen et al. 2021, Table 8).

    Attributes:
        obs_dim: observation width.
        act_dim: action width for Box actions; number of actions for Discrete.
        discrete: True for a Discrete action space (logits + cross-entropy).
        context_length: K, timesteps per window (3K tokens).
        max_timestep: size of the timestep embedding table; episodes must be shorter.
        embed_dim: token width d.
        n_layer: transformer blocks.
        n_head: attention heads.
        dropout: dropout on embeddings, attention weights and residual branches.
        activation: MLP nonlinearity, ``relu`` as in the reference implementation or ``gelu``.
        action_tanh: squash Box action predictions with tanh.
        attention: ``"window"`` (classic DT: causal attention over a window of K steps) or
            ``"band"`` (causal attention to the last ``band_tokens`` tokens at every layer,
            for sequences of any length; the key/value cache is then exact).
        band_tokens: W, tokens each token sees in ``band`` mode (itself and the W - 1 before
            it); None: ``3 * context_length``. Must be None in ``window`` mode.
        obs_layout: the leaves of a Dict or image observation space
            (``offline_dt.data.layout.Leaf.to_json`` dicts), whose flat view of ``obs_dim``
            columns the state encoder splits (``offline_dt.nn.encoders``); None for a flat
            Box (a Linear state embedding).
        tasks: the envs of a multi-task network (``offline_dt.methods.mgdt``,
            ``offline_dt.methods.gato``), in suite order: one ``{"env_id", "obs_dim",
            "act_dim", "discrete"}`` dict each (``act_dim`` the number of actions for
            Discrete); ``obs_dim`` and ``act_dim`` above are then the widest observation and
            Box action. None for one env.
    """

    obs_dim: int
    act_dim: int
    discrete: bool = False
    context_length: int = 20
    max_timestep: int = 1000
    embed_dim: int = 128
    n_layer: int = 3
    n_head: int = 1
    dropout: float = 0.1
    activation: str = "relu"
    action_tanh: bool = True
    attention: str = "window"
    band_tokens: int | None = None
    obs_layout: list[dict[str, Any]] | None = None
    tasks: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"DTConfig.attention must be one of {ATTENTION_KINDS}, found "
                             f"{self.attention!r}")
        if self.attention == "window" and self.band_tokens is not None:
            raise ValueError(f"DTConfig.band_tokens={self.band_tokens} needs attention='band'")
        if self.band_tokens is not None and self.band_tokens < 1:
            raise ValueError(f"DTConfig.band_tokens must be >= 1, found {self.band_tokens}")

    @property
    def band(self) -> int | None:
        """W, the tokens each token attends to, in ``band`` mode (None in ``window`` mode)."""
        if self.attention != "band":
            return None
        return self.band_tokens if self.band_tokens is not None else 3 * self.context_length


#: ``DTConfig.attention`` values: the classic window, the sliding band.
ATTENTION_KINDS = ("window", "band")
