"""Decision Transformer (Chen et al. 2021, "Decision Transformer: Reinforcement Learning via
Sequence Modeling"): the whole method in one file.

- Network: ``offline_dt.nn.transformer.DecisionTransformer`` over ``(R̂_t, s_t, a_t)`` tokens.
- Loss (Section 3, "Training"): the action predicted from the state token ``s_t`` against the
  dataset's ``a_t``, over the real (non-padding) steps of each window: MSE on Box actions
  scaled to [-1, 1], cross-entropy on Discrete actions.
- Acting (Algorithm 1): condition on a target return, keep the last K steps per env, and
  decrement the return-to-go by every reward received. A band-attention network
  (``DTConfig.attention == "band"``) is the banded forward over the whole episode so far;
  it acts from its rolling key/value cache (exact) or recomputes that whole context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.methods.base import Method, register
from offline_dt.nn.cache import KVCache, cache_is_exact


def action_loss(net: nn.Module, batch: Batch, returns_to_go: torch.Tensor) -> torch.Tensor:
    """Action-prediction loss of ``net`` on ``batch`` fed ``returns_to_go`` ``(B, K, 1)``.

    Returns:
        scalar: MSE between the tanh outputs and the [-1, 1]-scaled Box actions, or the
        cross-entropy of the logits for Discrete actions, over ``batch.mask`` positions.
    """
    pred = net(returns_to_go, batch.observations, batch.actions, batch.timesteps,
               batch.mask).float()
    return masked_action_loss(pred, batch.actions, batch.mask, net.cfg.discrete)


def masked_action_loss(pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor,
                       discrete: bool) -> torch.Tensor:
    """Mean MSE (Box) or cross-entropy (Discrete) of ``pred`` ``(B, K, act_dim)`` against
    ``actions`` over the ``mask`` ``(B, K) bool`` positions: a masked mean of fixed-shape
    tensors (no boolean indexing, so ``torch.compile`` traces it whole); equal to the loss over
    ``pred[mask]`` up to float summation order."""
    m = mask.to(pred.dtype)
    if discrete:
        ce = F.cross_entropy(pred.flatten(0, 1), actions.flatten(), reduction="none")
        return (ce * m.flatten()).sum() / m.sum()
    return ((pred - actions).square() * m[..., None]).sum() / (m.sum() * pred.shape[-1])


@register
class DT(Method):
    """Return-conditioned behaviour cloning of the action (Chen et al. 2021)."""

    name = "dt"
    description = "Decision Transformer (Chen et al. 2021)"
    graph_safe = True
    conditions_on_return = True
    attentions = ("window", "band")

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return action_loss(net, batch, batch.returns_to_go), {}

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False) -> DTPolicy:
        if target_return is None:
            raise ValueError("method 'dt' acts toward a target return; pass target_return")
        return DTPolicy(net, normalizer, target_return, kv_cache=kv_cache)


class DTPolicy:
    """A Decision Transformer acting in ``N`` envs at once from a rolling context.

    Per env it holds the last ``K`` steps of scaled return-to-go, normalised observation,
    model-space action and timestep. At every step the newest observation is appended with the
    current return-to-go and a zero action placeholder, the model predicts the action of the
    last step, and that prediction replaces the placeholder. A band-attention network
    (``cfg.attention == "band"``) sees the whole episode: without the cache its context holds
    every step so far (up to ``max_timestep`` steps, and never fewer than the output of the
    newest token depends on) and is recomputed at each step, the reference that its cache
    equals. After the step
    :meth:`observe` subtracts the reward from the return-to-go: ``R̂_{t+1} = R̂_t - r_t``,
    starting from ``target_return`` (Chen et al. 2021, Algorithm 1). All envs start together
    (``offline_dt.envs.rollout.run_episodes`` runs episodes in waves), so the context holds
    ``min(t + 1, K)`` steps for every env and needs no padding or mask.

    Args:
        model: a ``DecisionTransformer`` (put in eval mode by :meth:`reset`).
        normalizer: the checkpoint's :class:`Normalizer` (observation statistics, return-to-go
            scale, action bounds).
        target_return: return to condition on, in env reward units; None feeds zeros as
            returns-to-go (how ``bc`` was trained).
        device: where the context lives; defaults to the model's device.
        kv_cache: act from a key/value cache (``DecisionTransformer.step_cached``): three
            new tokens per step instead of recomputing the context. Exact for a band network
            (``offline_dt.nn.cache.cache_is_exact``); for a window network exact for the first
            K steps and an approximation after (see ``benchmarks/results/speed.md`` for the
            drift).
    """

    def __init__(self, model: nn.Module, normalizer: Normalizer, target_return: float | None,
                 device: str | torch.device | None = None, kv_cache: bool = False) -> None:
        self.model = model
        self.cfg = model.cfg
        self.normalizer = normalizer
        self.target_return = None if target_return is None else float(target_return)
        self.device = (torch.device(device) if device is not None
                       else next(model.parameters()).device)
        self.kv_cache = bool(kv_cache)
        self.k = int(self.cfg.context_length)  # steps of context: the window
        if cache_is_exact(self.cfg) and not self.kv_cache:
            # band, recomputed: the whole episode (the timestep table's length), and at least
            # the n_layer * (W - 1) tokens before the newest that its output depends on
            reach = self.cfg.n_layer * self.cfg.band // 3 + 2
            self.k = max(int(self.cfg.max_timestep), reach)
        self.num_envs = 0
        self.cache: KVCache | None = None

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        n, k, dev = num_envs, self.k, self.device
        self.model.eval()
        self.num_envs = n
        self.t = 0  # episode timestep of the next observation
        self.length = 0  # steps held in the context, <= K
        self.rtg_buf = torch.zeros(n, k, 1, device=dev)
        self.obs_buf = torch.zeros(n, k, self.cfg.obs_dim, device=dev)
        if self.cfg.discrete:
            self.act_buf = torch.zeros(n, k, dtype=torch.long, device=dev)
        else:
            self.act_buf = torch.zeros(n, k, self.cfg.act_dim, device=dev)
        self.ts_buf = torch.zeros(n, k, dtype=torch.long, device=dev)
        self.cache = None
        self.prev_action: torch.Tensor | None = None
        # Unscaled return-to-go per env (float64 on the host, so the decrement is exact).
        self.returns_to_go = np.full(n, self.target_return or 0.0, np.float64)

    def _push(self) -> int:
        """Make room for one more step; return its context slot."""
        if self.length < self.k:
            self.length += 1
        else:
            for buf in (self.rtg_buf, self.obs_buf, self.act_buf, self.ts_buf):
                buf[:, :-1] = buf[:, 1:].clone()
        return self.length - 1

    def _predict(self, i: int) -> torch.Tensor:
        """The model's output for the newest step (context slot ``i``)."""
        if self.kv_cache:
            ts = self.ts_buf[:, i]
            # the previous step's own (clamped) timestep, as the recomputed context holds it
            prev_ts = torch.full_like(ts, min(self.t - 1, self.cfg.max_timestep - 1))
            out, self.cache = self.model.step_cached(
                self.cache, self.rtg_buf[:, i], self.obs_buf[:, i], ts, self.prev_action,
                prev_ts)
            return out
        n = self.length
        return self.model(self.rtg_buf[:, :n], self.obs_buf[:, :n], self.act_buf[:, :n],
                          self.ts_buf[:, :n], last_only=True)[:, -1]

    @torch.inference_mode()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """``(N, obs_dim)`` observations → ``(N, act_dim) float32`` (Box, env units) or
        ``(N,) int64`` (Discrete) actions."""
        obs = np.asarray(observations, np.float32).reshape(self.num_envs, -1)
        i = self._push()
        self.obs_buf[:, i] = torch.from_numpy(self.normalizer.observations(obs)).to(self.device)
        if self.target_return is not None:
            rtg = self.returns_to_go / self.normalizer.rtg_scale
            self.rtg_buf[:, i, 0] = torch.from_numpy(rtg.astype(np.float32)).to(self.device)
        else:
            self.rtg_buf[:, i, 0] = 0.0
        self.act_buf[:, i] = 0
        self.ts_buf[:, i] = min(self.t, self.cfg.max_timestep - 1)
        out = self._predict(i)
        if self.cfg.discrete:
            action = out.argmax(-1)
            self.act_buf[:, i] = action
            self.prev_action = action
            return action.cpu().numpy().astype(np.int64)
        self.act_buf[:, i] = out
        self.prev_action = out
        return self.normalizer.actions_from_model(out.float().cpu().numpy())

    def observe(self, rewards: np.ndarray) -> None:
        """Subtract the ``(N,)`` rewards of the step just taken from the returns-to-go."""
        self.returns_to_go -= np.asarray(rewards, np.float64).reshape(self.num_envs)
        self.t += 1
