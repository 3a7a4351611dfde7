"""The Trajectory Transformer's beam-search planner (Janner, Li and Levine 2021, Section 3.3
and Algorithm 1; reference ``trajectory/search/core.py`` ``beam_plan``), for every env of a
batched vector env at once, from an exact key/value cache.

Per env step, every env's beams (``beam_width`` of them, all envs in one batch of rows)
start from the episode so far. For each of ``horizon`` transitions: every beam is copied
``expansions`` times (at the first, the episode itself ``beam_width * expansions`` times);
the action tokens are sampled one by one from the smallest set of tokens holding
``action_top_p`` of the probability (TT's ``cdf_act`` 0.6); the reward and the value are read
as expectations over their predicted bins (TT's ``value_fn``, "mean") and their most likely
tokens are fed on; each candidate is scored ``sum_{h'<=h} gamma^h' r_h' + gamma^(h+1) V_h``,
the best ``beam_width`` per env are kept; then the next observation's tokens are the most
likely ones (TT's ``k_obs`` 1). The first action of the best beam is taken
(with ``plan_every`` > 1 the plan's next actions are taken until the next plan). Stop tokens
are never planned.

The network (``offline_dt.methods.tt.TTNetwork``) attends within a band, so pushing a token
through a :class:`CachedStepper` (one token's attention over the held keys and values,
through ``offline_dt.nn.decoding.cached_forward``: the episode's in
``offline_dt.nn.cache.KVCache``, a plan's in ``offline_dt.nn.beam_cache``, where a beam's
copies share its keys and values and a prune moves the kept rows into a preallocated buffer;
a value token is a query only, never held, as no token attends to it) equals recomputing the
whole sequence (:class:`RecomputeStepper`) up to float rounding. Both take the same random
draws in the same order (a generator seeded by the episodes' reset seeds; tokens drawn by
``offline_dt.nn.decoding.top_p_sample``); in float64 they take the same actions
(``tests/offline_dt/test_tt_planner.py``). In float32 their logits differ by rounding, which
can flip a near tie of a network whose logits are nearly uniform (an untrained one) and then
the plans part (``benchmarks/results/tt/cost.md``). Planning runs in the network's dtype,
never under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from offline_dt.data.discretise import decode, encode
from offline_dt.nn.beam_cache import BeamKVCache
from offline_dt.nn.cache import KVCache
from offline_dt.nn.decoding import cached_forward, top_p_sample

#: The planner settings evaluation may choose among (``TT.inference_candidates``).
PLANNER_SETTINGS = ("horizon", "beam_width", "plan_every")


class CachedStepper:
    """``R`` token sequences extended a few tokens at a time from a key/value cache of the
    network's band: the episodes' own (a :class:`KVCache`, ``keep`` = band - 1 + the longest
    push, D - 1 tokens) or, once forked into beams by :meth:`select`, a plan's
    (:class:`BeamKVCache`, which :meth:`expand` and later selects update in place)."""

    def __init__(self, net: Any, cache: KVCache | BeamKVCache | None = None) -> None:
        self.net, self.cache = net, cache

    def push(self, tokens: torch.Tensor, dims: torch.Tensor, timesteps: torch.Tensor,
             commit: bool = True) -> torch.Tensor:
        """Feed ``(R, n)`` tokens at dimensions ``dims`` ``(n,)`` and ``timesteps`` ``(R, n)``;
        the ``(R, vocab)`` logits of the values of the token after the last
        (``TTNetwork.next_logits``). ``commit`` False: a query only (a value token),
        forgotten by the next push."""
        net = self.net
        x = net.embed(tokens, dims, timesteps)
        if self.cache is None:
            c = net.cfg
            self.cache = KVCache(c.n_layer, x.shape[0], c.n_head, c.embed_dim // c.n_head,
                                 c.band + net.dim - 2, x)
        x = cached_forward(net.blocks, x, self.cache, commit)
        return net.next_logits(x[:, -1], int(dims[-1]))

    def select(self, rows: torch.Tensor) -> CachedStepper:
        """A stepper of the sequences ``rows``: from the episodes' stepper a new one (which is
        unchanged); from a plan's, this one, updated in place."""
        if isinstance(self.cache, BeamKVCache):
            self.cache.select(rows)
            return self
        fork = BeamKVCache.fork(self.cache, rows, keep=self.net.cfg.band - 1, room=self.net.dim)
        return CachedStepper(self.net, fork)

    def expand(self, e: int) -> CachedStepper:
        """Every sequence copied ``e`` times (row ``r e + i`` a copy of row ``r``): a plan's
        stepper, in place, its copies sharing their keys and values
        (:meth:`BeamKVCache.expand`)."""
        if not isinstance(self.cache, BeamKVCache):
            return self.select(torch.arange(self.cache.k.shape[1]).repeat_interleave(e))
        self.cache.expand(e)
        return self


class RecomputeStepper:
    """The reference of :class:`CachedStepper`: every push recomputes the whole sequence (its
    last ``n_layer * (band - 1) + 1`` non-value tokens, all the newest output depends on)."""

    def __init__(self, net: Any, tokens: torch.Tensor | None = None,
                 dims: torch.Tensor | None = None, timesteps: torch.Tensor | None = None
                 ) -> None:
        self.net, self.tokens, self.dims, self.timesteps = net, tokens, dims, timesteps

    def push(self, tokens: torch.Tensor, dims: torch.Tensor, timesteps: torch.Tensor,
             commit: bool = True) -> torch.Tensor:
        """As :meth:`CachedStepper.push` (a value token stays in the sequence, unseen)."""
        if self.tokens is not None:
            tokens = torch.cat((self.tokens, tokens), 1)
            dims = torch.cat((self.dims, dims))
            timesteps = torch.cat((self.timesteps, timesteps), 1)
        net = self.net
        keys = (dims != net.dim - 1).nonzero()[:, 0]
        need = net.cfg.n_layer * (net.cfg.band - 1) + 1
        if len(keys) > need:
            cut = int(keys[-need])
            tokens, dims, timesteps = tokens[:, cut:], dims[cut:], timesteps[:, cut:]
        self.tokens, self.dims, self.timesteps = tokens, dims, timesteps
        return net.next_logits(net.hidden(tokens, dims, timesteps)[:, -1], int(dims[-1]))

    def select(self, rows: torch.Tensor) -> RecomputeStepper:
        return RecomputeStepper(self.net, self.tokens[rows], self.dims, self.timesteps[rows])

    def expand(self, e: int) -> RecomputeStepper:
        return self.select(torch.arange(len(self.tokens), device=self.tokens.device)
                           .repeat_interleave(e))


class BeamSearch:
    """One plan for ``N`` envs (module docstring). ``net`` is a ``TTNetwork``; scores are
    computed in its dtype (float32, or float64 for a float64 network)."""

    def __init__(self, net: Any, horizon: int, beam_width: int, expansions: int,
                 top_p: float, discount: float, generator: torch.Generator) -> None:
        self.net, self.h, self.b, self.e = net, horizon, beam_width, expansions
        self.top_p, self.gen = top_p, generator
        dev = net.edges.device
        self.dtype = torch.promote_types(net.centres.dtype, torch.float32)
        self.disc = discount ** torch.arange(horizon + 1, device=dev, dtype=torch.float64)
        self.disc = self.disc.to(self.dtype)
        s = net.slots
        self.act = range(s["act"].start, s["act"].stop)
        self.r_dim, self.v_dim = s["reward"].start, s["value"].start
        self.dims = torch.arange(s["value"].stop, device=dev)[:, None]  # dims[d]: (1,) d

    def _expect(self, logits: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(expected decoded value ``(R,)``, most likely token ``(R, 1)``) over the bins."""
        logits = logits[:, :self.net.options.n_bins].to(self.dtype)
        centres = self.net.centres[dim].to(self.dtype)
        return torch.softmax(logits, -1) @ centres, logits.argmax(-1, keepdim=True)

    def plan(self, stepper: Any, logits: torch.Tensor, t: int) -> torch.Tensor:
        """``(N, horizon, act_tokens) int64`` the best plan of every env, from the stepper of
        the episodes so far (``N`` rows, the current observation fed; ``logits`` ``(N, V)``
        its last output) at episode timestep ``t``. Candidates are ordered (env, beam,
        copy); at the first transition every env's ``beam_width * expansions`` candidates
        are copies of its one history."""
        net, n, dev = self.net, logits.shape[0], logits.device
        b, e, dims = self.b, self.e, self.dims
        max_t = net.cfg.max_timestep - 1
        st, width = stepper.select(torch.arange(n, device=dev)), 1
        first = torch.arange(n, device=dev)[:, None] * (b * e)  # each env's first candidate
        rewards = torch.zeros(n, self.h + 1, dtype=self.dtype, device=dev)
        plan = torch.zeros(n, self.h, len(self.act), dtype=torch.long, device=dev)
        for h in range(self.h):
            copies = b * e // width
            rep = torch.arange(n * width, device=dev).repeat_interleave(copies)
            st, logits, rewards, plan = st.expand(copies), logits[rep], rewards[rep], plan[rep]
            ts = torch.full((len(rep), 1), min(t + h, max_t), device=dev)
            for j, dim in enumerate(self.act):
                u = torch.rand(len(rep), generator=self.gen, device=dev)
                tok = top_p_sample(logits[:, :net.stop], self.top_p, u)
                plan[:, h, j] = tok
                logits = st.push(tok[:, None], dims[dim], ts)
            r, r_tok = self._expect(logits, self.r_dim)
            logits = st.push(r_tok, dims[self.r_dim], ts)
            v, v_tok = self._expect(logits, self.v_dim)
            rewards[:, h], rewards[:, h + 1] = r, v
            score = (rewards * self.disc).sum(-1).view(n, b * e)
            rows = (first + score.topk(b, dim=1).indices).reshape(-1)
            st, rewards, plan, v_tok = st.select(rows), rewards[rows], plan[rows], v_tok[rows]
            width = b
            if h == self.h - 1:
                break
            logits = st.push(v_tok, dims[self.v_dim], ts[: n * b], commit=False)
            ts_next = torch.full_like(ts[: n * b], min(t + h + 1, max_t))
            for dim in range(net.obs_dim):
                tok = logits[:, :net.stop].argmax(-1, keepdim=True)
                logits = st.push(tok, dims[dim], ts_next)
        score = (rewards * self.disc).sum(-1).view(n, b)
        return plan.view(n, b, self.h, -1)[torch.arange(n, device=dev), score.argmax(1)]


class TTPolicy:
    """The planner acting in ``N`` envs (:class:`offline_dt.envs.policies.Policy`): the
    episode so far of every env is held in one stepper (cached or recomputed), a plan is made
    every ``plan_every`` steps (:class:`BeamSearch`) and its actions decoded to env units."""

    def __init__(self, net: Any, *, cached: bool, horizon: int, beam_width: int,
                 plan_every: int, expansions: int, action_top_p: float, discount: float
                 ) -> None:
        self.net, self.cached = net, bool(cached)
        self.horizon, self.plan_every = int(horizon), int(plan_every)
        self.device = net.edges.device
        self.gen = torch.Generator(device=self.device)
        self.search = BeamSearch(net, self.horizon, int(beam_width), int(expansions),
                                 float(action_top_p), float(discount), self.gen)

    def reset(self, num_envs: int, seeds: Sequence[int] | None = None) -> None:
        self.net.eval()
        self.num_envs, self.t = int(num_envs), 0
        seq = np.random.SeedSequence([int(s) for s in (seeds if seeds is not None else [0])])
        self.gen.manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        self.stepper: Any = CachedStepper(self.net) if self.cached else RecomputeStepper(
            self.net)
        self.plan: torch.Tensor | None = None
        self.since = 0
        self.prev: torch.Tensor | None = None  # (N, act_tokens + 1) last action and reward

    def _history(self, observations: np.ndarray) -> torch.Tensor:
        """Feed the last action and reward and the new observation; the logits after it."""
        net, n = self.net, self.num_envs
        obs = torch.as_tensor(np.asarray(observations, np.float32).reshape(n, -1),
                              device=self.device)
        tok = encode(obs, net.edges[: net.obs_dim])
        dims = torch.arange(net.obs_dim, device=self.device)
        ts = torch.full_like(tok, min(self.t, net.cfg.max_timestep - 1))
        if self.prev is not None:
            s = net.slots
            tok = torch.cat((self.prev, tok), 1)
            dims = torch.cat((torch.arange(s["act"].start, s["reward"].stop,
                                           device=self.device), dims))
            ts = torch.cat((torch.full_like(self.prev, min(self.t - 1, net.cfg.max_timestep - 1)),
                            ts), 1)
        return self.stepper.push(tok, dims, ts)

    @torch.inference_mode()
    def act(self, observations: np.ndarray) -> np.ndarray:
        """``(N, obs_dim)`` observations → ``(N, act_dim) float32`` (Box, env units: the bins'
        decoded values) or ``(N,) int64`` (Discrete) actions. Planning runs in the network's
        dtype (float32), never under a caller's autocast (bf16 would change the plans)."""
        with torch.autocast(self.device.type, enabled=False):
            return self._act(observations)

    def _act(self, observations: np.ndarray) -> np.ndarray:
        logits = self._history(observations)
        if self.plan is None or self.since >= min(self.plan_every, self.horizon):
            self.plan, self.since = self.search.plan(self.stepper, logits, self.t), 0
        tok = self.plan[:, self.since]
        self.since += 1
        self.prev = tok
        net = self.net
        if net.cfg.discrete:
            return tok[:, 0].cpu().numpy().astype(np.int64)
        return decode(tok, net.centres[net.slots["act"]]).cpu().numpy().astype(np.float32)

    def observe(self, rewards: np.ndarray) -> None:
        """Encode the ``(N,)`` rewards of the step just taken into the held episode."""
        net = self.net
        r = torch.as_tensor(np.asarray(rewards, np.float32).reshape(-1, 1), device=self.device)
        self.prev = torch.cat((self.prev, encode(r, net.edges[net.slots["reward"]])), 1)
        self.t += 1
