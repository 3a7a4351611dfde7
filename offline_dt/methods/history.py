"""What the online methods (``ppo``, ``dqn``) share: acting from the recent history of one's
own episode with the Decision Transformer's trunk, and their warm start.

The trunk (``offline_dt.nn.transformer.DecisionTransformer``) reads per timestep the token triple
``(R̂_t, s_t, a_t)``. An online method has no return to condition on; in the return slot of
step ``t`` it is fed the previous reward instead, ``reward_scale · r_{t-1}`` (0 at ``t = 0``),
so the tokens are ``(r_{t-1}, s_t, a_t)``: the last K (observation, action, reward) of the
episode, in the order they happened. Their order reaches the trunk through its timestep
embedding, fed by default each slot's position in the window rather than its episode
timestep (:class:`HistoryOptions`). The state token ``s_t`` sees every earlier token and
``r_{t-1}`` (causal attention, the model's mask), never ``a_t``: the policy, value and Q
heads read its hidden state.

:class:`HistoryPolicy` keeps that window for every sub-env of a vector env. The sub-envs of an
online collect are out of step (each resets when its own episode ends,
``offline_dt.envs.stream.EpisodeStream``), so windows are right-aligned and left-padded with a
mask, as ``offline_dt.data.windows.WindowSampler``'s; every env adds one step per ``act``, so
all windows shift together.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.nn.transformer import DecisionTransformer

#: What the trunk's timestep embedding reads (:class:`HistoryOptions`).
Timesteps = Literal["window", "episode"]
TIMESTEPS: tuple[str, ...] = typing.get_args(Timesteps)


@dataclasses.dataclass(frozen=True)
class HistoryOptions:
    """The option every history-acting method (``ppo``, ``dqn``) has.

    Attributes:
        timesteps: what the trunk's timestep embedding (its only position signal) is fed:
            ``window``, each slot's position in its window, ``0 .. K - 1`` with the newest step
            at ``K - 1`` (:func:`trunk_timesteps`), so the policy never sees how long its
            episode has run; or ``episode``, the step's timestep in its episode, as the
            Decision Transformer reads it. With ``episode`` a policy that starts to last
            longer meets timestep embeddings it has hardly trained: on CartPole-v1
            (rl-zoo's PPO settings, 100k env steps, seed 0) transformer PPO's evaluation
            swung between 115 and 500 and ended at 208; with ``window`` it held 500 over
            the last 20k steps. A pretrained DT (``--init``) learnt episode timesteps.
    """

    timesteps: Timesteps = "window"


def trunk_timesteps(timesteps: torch.Tensor, mode: str) -> torch.Tensor:
    """The ``(B, K)`` timesteps the trunk embeds for windows whose slots hold their episode
    timesteps ``timesteps``: those (``mode`` ``"episode"``) or the slot positions
    ``0 .. K - 1`` (``"window"``; left padding is masked anyway)."""
    if mode == "episode":
        return timesteps
    return torch.arange(timesteps.shape[1], device=timesteps.device).expand_as(timesteps)


#: ``decide(window) -> (model_actions, extras)``: the actions to take at the last step of
#: every window of the ``(N, K)`` :class:`Batch` (Discrete ``(N,) int64``; Box ``(N, act_dim)``
#: float32 in model units ``[-1, 1]``) and any per-env tensors to remember (log-probs, values).
Decide = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]

def load_trunk(trunk: DecisionTransformer, model: dict[str, torch.Tensor],
               skip: Sequence[str] = ()) -> list[str]:
    """Copy a pretrained Decision Transformer's parameters into ``trunk``: from a checkpoint's
    ``model`` state dict whose trunk sits at the root (``dt``, ``bc``) or under ``trunk.``
    (``odt``, ``ppo``, ``dqn``) or ``actor.`` (``qt``). Parameters whose name starts with one
    of ``skip`` stay as they are (fresh heads).

    Returns:
        The names loaded (of ``trunk.state_dict()``).

    Raises:
        ValueError: no trunk found in ``model``, or a parameter's shape differs (names it,
            both shapes, and the settings that fix the shapes).
    """
    own = trunk.state_dict()
    for prefix in ("", "trunk.", "actor."):
        if any(k.startswith(f"{prefix}embed_state.") for k in model):  # any state encoder
            break
    else:
        raise ValueError("init checkpoint: no Decision Transformer trunk in its model "
                         "(expected keys embed_state.weight, trunk.embed_state.weight or "
                         "actor.embed_state.weight)")
    loaded = {}
    for name, value in own.items():
        if any(name.startswith(s) for s in skip) or prefix + name not in model:
            continue
        src = model[prefix + name]
        if src.shape != value.shape:
            raise ValueError(
                f"init checkpoint: {prefix + name} has shape {tuple(src.shape)}, this run's "
                f"{name} {tuple(value.shape)}; the trunk's embed_dim, n_layer, n_head, "
                f"max_timestep, observation and action spaces must match")
        loaded[name] = src
    trunk.load_state_dict(loaded, strict=False)
    return sorted(loaded)


class HistoryPolicy:
    """A trunk-based network acting in ``N`` envs from per-env windows of its own episodes
    (module docstring): the :class:`offline_dt.envs.policies.Policy` protocol, with the optional
    ``begin_episodes`` hook of ``offline_dt.envs.stream.EpisodeStream``.

    Args:
        net: the method's network; ``net.cfg`` its ``DTConfig`` (put in eval mode by
            :meth:`reset`).
        normalizer: observation statistics and Box action bounds.
        reward_scale: the previous reward enters the return slot times this.
        decide: chooses the actions from the windows (:data:`Decide`).

    Attributes:
        last: ``(window, extras)`` of the last ``act``: the ``(N, K)`` :class:`Batch` acted
            from (its last slot holds the chosen action) and ``decide``'s extras.
    """

    def __init__(self, net: nn.Module, normalizer: Normalizer, reward_scale: float,
                 decide: Decide) -> None:
        self.net, self.cfg = net, net.cfg
        self.normalizer, self.reward_scale, self.decide = normalizer, float(reward_scale), decide
        self.device = next(net.parameters()).device
        self.k = int(self.cfg.context_length)
        self.num_envs = 0
        self.last: tuple[Batch, dict[str, torch.Tensor]] | None = None

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        """Empty windows for ``num_envs`` new episodes."""
        n, k, dev, cfg = int(num_envs), self.k, self.device, self.cfg
        self.net.eval()
        self.num_envs = n
        act_shape = (n, k) if cfg.discrete else (n, k, cfg.act_dim)
        self.window = Batch(
            returns_to_go=torch.zeros(n, k, 1, device=dev),
            observations=torch.zeros(n, k, cfg.obs_dim, device=dev),
            actions=torch.zeros(act_shape, dtype=torch.long if cfg.discrete else torch.float32,
                                device=dev),
            timesteps=torch.zeros(n, k, dtype=torch.long, device=dev),
            mask=torch.zeros(n, k, dtype=torch.bool, device=dev))
        self.t = torch.zeros(n, dtype=torch.long, device=dev)  # timestep of the next obs
        self.prev_reward = torch.zeros(n, device=dev)

    def begin_episodes(self, mask: np.ndarray, seeds: Sequence[int] | None = None) -> None:
        """The envs where ``mask`` ``(N,) bool`` is True start new episodes: their windows
        are emptied."""
        m = torch.as_tensor(np.asarray(mask, bool), device=self.device)
        # a new Batch: the old one may be held (a collect's stored window of the last step)
        self.window = dataclasses.replace(self.window, mask=self.window.mask & ~m[:, None])
        self.t = self.t.masked_fill(m, 0)
        self.prev_reward = self.prev_reward.masked_fill(m, 0.0)

    def peek(self, observations: np.ndarray) -> Batch:
        """The ``(N, K)`` windows the policy would act from on ``observations``
        ``(N, obs_dim)`` (raw env units), without changing its state: the held windows
        shifted by one step, the new last slot ``(reward_scale · r_{t-1}, s_t, 0, t)``
        (plain tensors, not inference tensors: a collect may train on them)."""
        w = self.window
        obs = self.normalizer.observations(np.asarray(observations, np.float32))
        obs = torch.from_numpy(obs.reshape(self.num_envs, -1)).to(self.device)
        ts = self.t.clamp(max=self.cfg.max_timestep - 1)

        def shift(x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            return torch.cat((x[:, 1:], new[:, None].to(x.dtype)), dim=1)

        return Batch(returns_to_go=shift(w.returns_to_go, self.prev_reward[:, None]),
                     observations=shift(w.observations, obs),
                     actions=shift(w.actions, torch.zeros_like(w.actions[:, 0])),
                     timesteps=shift(w.timesteps, ts),
                     mask=shift(w.mask, torch.ones_like(w.mask[:, 0])))

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """``(N, obs_dim)`` observations → ``(N,) int64`` (Discrete) or ``(N, act_dim)
        float32`` (Box, env units: the model action clipped to ``[-1, 1]`` and scaled to the
        bounds) actions; the window keeps the clipped model action."""
        window = self.peek(observations)
        actions, extras = self.decide(window)
        if not self.cfg.discrete:
            actions = actions.float().clamp(-1.0, 1.0)
        window.actions[:, -1] = actions
        self.window = window
        self.last = (window, extras)
        if self.cfg.discrete:
            return actions.cpu().numpy().astype(np.int64)
        return self.normalizer.actions_from_model(actions.cpu().numpy())

    def observe(self, rewards: np.ndarray) -> None:
        """The ``(N,)`` rewards of the step just taken: the next slot's previous reward."""
        r = np.asarray(rewards, np.float32).reshape(self.num_envs) * self.reward_scale
        self.prev_reward = torch.from_numpy(r).to(self.device)
        self.t += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The windows, timesteps and previous rewards, as tensors."""
        w = self.window
        return {"returns_to_go": w.returns_to_go, "observations": w.observations,
                "actions": w.actions, "timesteps": w.timesteps, "mask": w.mask,
                "t": self.t, "prev_reward": self.prev_reward}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (after :meth:`reset` with the same ``N``)."""
        dev = self.device
        self.window = Batch(**{k: state[k].to(dev) for k in (
            "returns_to_go", "observations", "actions", "timesteps", "mask")})
        self.t, self.prev_reward = state["t"].to(dev), state["prev_reward"].to(dev)
