"""How ``mgdt`` acts (Lee et al. 2022, "Multi-Game Decision Transformers", Section 3.4):
:class:`MGDTPolicy` in one env of its suite, sampling each step's return token from the
expert-reweighted return distribution (:func:`expert_return_probs`) or binning a target
return decremented by the rewards, as the Decision Transformer does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from offline_dt.data.windows import Normalizer


def expert_return_probs(logits: torch.Tensor, kappa: float) -> torch.Tensor:
    """MGDT's expert-return distribution (Lee et al. 2022, Section 3.4: ``P(R_t | expert,
    ...) ∝ exp(kappa · R_t) P(R_t | ...)``, R normalised to [0, 1]): ``softmax(logits +
    kappa · z)`` over the last axis, ``z_b = b / (n - 1)`` the position of bin ``b`` in its
    env's return range; ``kappa = 0`` is the predicted distribution itself.

    Args:
        logits: ``(..., n_bins)`` return logits.

    Returns:
        ``(..., n_bins) float32`` probabilities, each row summing to 1.
    """
    n = logits.shape[-1]
    z = torch.linspace(0.0, 1.0, n, device=logits.device, dtype=torch.float32)
    return torch.softmax(logits.float() + float(kappa) * z, dim=-1)


class MGDTPolicy:
    """``mgdt``'s network acting in ``N`` copies of one env of its suite from a rolling
    context of the last K steps (all envs start together, as ``DTPolicy``'s).

    At each step the newest normalised (zero-padded) observation is appended; then its return
    token: with ``target_return`` None, sampled from :func:`expert_return_probs` of the return
    logits the network predicts from that observation (one forward pass), on a generator
    seeded from the episodes' reset seeds; else the bin of the remaining target (``R̂_{t+1} =
    R̂_t - r_t``, scaled by the env's ``rtg_scale``). A second forward pass predicts the
    action from the return token: the argmax of the env's Discrete logits, or its Box columns
    in env units.

    Args:
        env_net: an ``offline_dt.methods.mgdt.EnvNet`` (network and env index).
        normalizer: the env's normaliser (the checkpoint's suite entry).
        target_return: env reward units; None: expert-return inference.
        kappa: the expert weighting's inverse temperature.
    """

    def __init__(self, env_net: Any, normalizer: Normalizer, target_return: float | None,
                 kappa: float = 10.0) -> None:
        self.net, self.index, self.task = env_net.net, env_net.index, env_net.task
        self.cfg, self.normalizer, self.kappa = env_net.cfg, normalizer, float(kappa)
        self.target_return = None if target_return is None else float(target_return)
        self.device = next(self.net.parameters()).device
        self.k = int(self.cfg.context_length)
        self.num_envs = 0

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        n, k, dev, net = int(num_envs), self.k, self.device, self.net
        net.eval()
        self.num_envs, self.t, self.length = n, 0, 0
        self.obs = torch.zeros(n, k, net.embed_state.in_features, device=dev)
        self.box = torch.zeros(n, k, net.embed_box.in_features, device=dev)
        self.disc = torch.zeros(n, k, dtype=torch.long, device=dev)
        self.bins = torch.zeros(n, k, dtype=torch.long, device=dev)
        self.ts = torch.zeros(n, k, dtype=torch.long, device=dev)
        self.env = torch.full((n,), self.index, dtype=torch.long, device=dev)
        seed = np.random.SeedSequence([int(s) for s in seeds] if seeds else [0])
        self.generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
        self.returns_to_go = np.full(n, self.target_return or 0.0, np.float64)

    def _push(self) -> int:
        """Room for one more step; its context slot."""
        if self.length < self.k:
            self.length += 1
        else:
            for buf in (self.obs, self.box, self.disc, self.bins, self.ts):
                buf[:, :-1] = buf[:, 1:].clone()
        return self.length - 1

    def _forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.length
        ret, box, disc = self.net(self.obs[:, :n], self.box[:, :n], self.disc[:, :n],
                                  self.bins[:, :n], self.ts[:, :n], self.env)
        return ret[:, -1], box[:, -1], disc[:, -1]

    @torch.inference_mode()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """``(N, obs_dim)`` observations → ``(N,) int64`` (Discrete) or ``(N, act_dim)
        float32`` (Box, env units) actions."""
        obs = np.asarray(observations, np.float32).reshape(self.num_envs, -1)
        i, w = self._push(), obs.shape[1]
        self.obs[:, i] = 0.0
        self.obs[:, i, :w] = torch.from_numpy(self.normalizer.observations(obs)).to(self.device)
        self.box[:, i], self.disc[:, i], self.bins[:, i] = 0.0, 0, 0
        self.ts[:, i] = min(self.t, self.cfg.max_timestep - 1)
        if self.target_return is None:
            probs = expert_return_probs(self._forward()[0], self.kappa).cpu()
            bins = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        else:
            rtg = torch.from_numpy(self.returns_to_go / self.normalizer.rtg_scale).float()
            bins = self.net.return_bins(rtg.to(self.device), self.env)
        self.bins[:, i] = bins.to(self.device)
        _, box, disc = self._forward()
        width = int(self.task["act_dim"])
        if self.task["discrete"]:
            action = disc[:, :width].argmax(-1)
            self.disc[:, i] = action
            return action.cpu().numpy().astype(np.int64)
        self.box[:, i, :width] = box[:, :width]
        return self.normalizer.actions_from_model(box[:, :width].float().cpu().numpy())

    def observe(self, rewards: np.ndarray) -> None:
        """Subtract the ``(N,)`` rewards of the step just taken from the target's remainder."""
        self.returns_to_go -= np.asarray(rewards, np.float64).reshape(self.num_envs)
        self.t += 1
