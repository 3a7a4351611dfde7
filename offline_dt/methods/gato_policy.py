"""How ``gato`` acts (Reed et al. 2022, "A Generalist Agent", Section 2.4): :class:`GatoPolicy`
in one env of its suite, decoding every action token by token from a key/value cache.

At each env step the tokens of the new observation and the separator (led by the return token
with ``return_tokens``) are pushed through the network after the context, then each action
dimension is sampled (``offline_dt.nn.decoding.top_p_sample``) from the logits of the tokens
the env's actions can take and pushed in turn (``offline_dt.nn.decoding.cached_forward``), so
an action of ``m`` dimensions costs one pass over the context and ``m - 1`` one-token steps.

The context is what a training window holds: the prompt (the env's stored prompt, with the
``prompt`` setting) and the last ``context_length`` timesteps, the newest the current one.
By default it is pushed into a fresh cache at every step (exact: the network sees what it was
trained on). With ``cached`` one cache is kept over the whole episode, each step pushing only
its new tokens; once the episode outgrows the context the cache keeps the last
``(prompt_steps + context_length)`` timesteps' tokens, whose keys were computed with the
longer history they were pushed after (the window-attention approximation of
``offline_dt.nn.transformer.DecisionTransformer.step_cached``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from offline_dt.data.discretise import mu_law_decode
from offline_dt.data.windows import Normalizer
from offline_dt.nn.cache import KVCache
from offline_dt.nn.decoding import cached_forward, top_p_sample


class GatoPolicy:
    """``gato``'s network acting in ``N`` copies of one env of its suite (all envs start
    together; module docstring). Box actions are the decoded bins in env units, Discrete the
    sampled action; the draws come from a generator seeded by the episodes' reset seeds.

    Args:
        env_net: an ``offline_dt.methods.mgdt.EnvNet`` of an
            ``offline_dt.methods.gato.GatoNetwork`` (network and env index).
        normalizer: the env's normaliser (the checkpoint's suite entry).
        target_return: env reward units, for a network with return tokens (decremented by
            each reward, as the Decision Transformer's); None otherwise.
        prompt: prepend the env's stored prompt.
        cached: one key/value cache over the episode (else one per step).
        top_p: action tokens are drawn from the smallest set of this probability mass.
    """

    def __init__(self, env_net: Any, normalizer: Normalizer, target_return: float | None, *,
                 prompt: bool = True, cached: bool = False, top_p: float = 1.0) -> None:
        net = self.net = env_net.net
        self.index, self.cfg, self.normalizer = env_net.index, net.cfg, normalizer
        self.discrete = bool(env_net.task["discrete"])
        self.target_return = None if target_return is None else float(target_return)
        self.use_prompt, self.cached, self.top_p = bool(prompt), bool(cached), float(top_p)
        self.device = next(net.parameters()).device
        lay = net.layout
        self.length = lay.lengths[self.index]  # tokens per timestep
        self.a = lay.act_tokens[self.index]
        self.head = self.length - self.a  # [R] o^1 .. o^n |
        self.positions = lay.positions[self.index, :self.length].to(self.device)
        self.k = int(self.cfg.context_length)
        self.num_envs = 0

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        n, dev, net, i = int(num_envs), self.device, self.net, self.index
        net.eval()
        self.num_envs, self.t = n, 0
        seed = np.random.SeedSequence([int(s) for s in seeds] if seeds else [0])
        self.generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
        self.history = torch.zeros(n, 0, self.length, dtype=torch.long, device=dev)
        self.history_ts = torch.zeros(n, 0, dtype=torch.long, device=dev)
        m = int(net.prompt_length[i]) if self.use_prompt else 0
        p = net.prompt_tokens.shape[1]
        self.prompt = (net.prompt_tokens[i, p - m:, :self.length].reshape(1, -1).expand(n, -1),
                       self.positions.repeat(m)[None].expand(n, -1),
                       net.prompt_timesteps[i, p - m:].repeat_interleave(self.length)[
                           None].expand(n, -1))
        self.cache: KVCache | None = None
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.returns_to_go = np.full(n, self.target_return or 0.0, np.float64)

    def _push(self, tokens: torch.Tensor, positions: torch.Tensor, timesteps: torch.Tensor,
              fresh: bool) -> torch.Tensor:
        """Push ``(N, n)`` tokens (a ``fresh`` cache first, sized for them and the action
        tokens); the ``(N, vocab)`` logits of the next token, the env's action tokens only."""
        net, n = self.net, self.num_envs
        env = torch.full((n,), self.index, dtype=torch.long, device=self.device)
        x = net.embed(tokens, positions, timesteps, env)
        if fresh or self.cache is None:
            c = self.cfg
            keep = tokens.shape[1] + self.a if fresh else (
                (net.options.prompt_steps + self.k) * self.length)
            self.cache = KVCache(c.n_layer, n, c.n_head, c.embed_dim // c.n_head, keep, x)
        h = cached_forward(net.blocks, x, self.cache)
        return net.action_logits(h[:, -1], env)

    def _context(self, head: torch.Tensor, ts: int) -> tuple[torch.Tensor, ...]:
        """What to push for the current step's ``head`` tokens: the whole context (prompt,
        the last ``K - 1`` timesteps, the head) into a fresh cache; with ``cached`` only the
        new tokens (the prompt at the first step, then the previous step's last action)."""
        dev = self.device
        now = (head, self.positions[:self.head].expand_as(head),
               torch.full_like(head, ts))
        if self.cached:
            before = self.prompt if self.pending is None else self.pending
        else:
            h, hts = self.history, self.history_ts
            before = tuple(torch.cat(x, 1) for x in zip(self.prompt, (
                h.reshape(self.num_envs, -1), self.positions.repeat(h.shape[1])[None].expand(
                    self.num_envs, -1), hts.repeat_interleave(self.length, 1)), strict=True))
        return tuple(torch.cat((b.to(dev), x), 1) for b, x in zip(before, now, strict=True))

    @torch.inference_mode()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """``(N, obs_dim)`` observations → ``(N,) int64`` (Discrete) or ``(N, act_dim)
        float32`` (Box, env units) actions."""
        net, n, dev = self.net, self.num_envs, self.device
        obs = np.asarray(observations, np.float32).reshape(n, -1)
        obs_t = torch.from_numpy(self.normalizer.observations(obs)).to(dev)
        rtg = torch.from_numpy((self.returns_to_go / self.normalizer.rtg_scale).astype(
            np.float32)).to(dev)
        blank = torch.zeros(n, dtype=torch.long, device=dev) if self.discrete else torch.zeros(
            n, self.a, device=dev)
        head = net.timestep_tokens(self.index, obs_t, blank, rtg)[:, :self.head]
        ts = min(self.t, self.cfg.max_timestep - 1)
        logits = self._push(*self._context(head, ts), fresh=not self.cached)
        tokens = []
        for j in range(self.a):
            u = torch.rand(n, generator=self.generator).to(dev)
            tok = top_p_sample(logits, self.top_p, u)[:, None]
            tokens.append(tok)
            pos = self.positions[self.head + j].expand(n, 1)
            if j < self.a - 1:
                logits = self._push(tok, pos, torch.full_like(tok, ts), fresh=False)
            elif self.cached:  # pushed with the next step's tokens
                self.pending = (tok, pos, torch.full_like(tok, ts))
        acts = torch.cat(tokens, 1)  # (N, m)
        held = torch.cat((self.history, torch.cat((head, acts), 1)[:, None]), 1)
        cut = max(0, held.shape[1] - (self.k - 1))  # the last K - 1 timesteps
        self.history = held[:, cut:]
        self.history_ts = torch.cat((self.history_ts, torch.full((n, 1), ts, device=dev)),
                                    1)[:, cut:]
        if self.discrete:
            return (acts[:, 0] - net.layout.n_bins).cpu().numpy().astype(np.int64)
        o = net.options
        model = mu_law_decode(acts, o.n_bins, o.mu, o.max_value).clamp(-1.0, 1.0)
        return self.normalizer.actions_from_model(model.cpu().numpy())

    def observe(self, rewards: np.ndarray) -> None:
        """Subtract the ``(N,)`` rewards of the step just taken from the target's remainder."""
        self.returns_to_go -= np.asarray(rewards, np.float64).reshape(self.num_envs)
        self.t += 1
