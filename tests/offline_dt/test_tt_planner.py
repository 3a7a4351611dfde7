"""tt's planner from the forked key/value cache against recomputation: the logits through
forks, prunes and a compaction, the same actions and random draws in float64, and planning
that ignores a caller's bf16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline_dt.data.windows import Normalizer
from offline_dt.methods import get_method
from offline_dt.methods.tt_planner import CachedStepper, RecomputeStepper
from offline_dt.nn.beam_cache import BeamKVCache
from offline_dt.nn.config import DTConfig


def _net(ds, embed_dim: int = 32, n_bins: int = 16):
    torch.manual_seed(0)
    method = get_method("tt")
    net = method.build(DTConfig(obs_dim=3, act_dim=1, context_length=4, embed_dim=embed_dim,
                                n_layer=2, n_head=2, dropout=0.0, max_timestep=64),
                       {"n_bins": n_bins, "context": 2})
    method.fit(net, ds, Normalizer.fit(ds))
    return method, net.eval()


class _Both:
    """A cached and a recomputing stepper fed alike; every push's logits compared."""

    def __init__(self, net) -> None:
        self.c, self.r, self.pushes = CachedStepper(net), RecomputeStepper(net), 0

    def push(self, tokens, dims, t, commit=True):
        dims = torch.tensor(dims)
        ts = torch.full(tokens.shape, t)
        a = self.c.push(tokens, dims, ts, commit)
        b = self.r.push(tokens, dims, ts, commit)
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        self.pushes += 1

    def select(self, rows):
        self.c, self.r = self.c.select(torch.tensor(rows)), self.r.select(torch.tensor(rows))

    def expand(self, e):
        self.c, self.r = self.c.expand(e), self.r.expand(e)


@torch.inference_mode()
def test_forked_cache_equals_recomputation_through_forks_prunes_and_compaction(
        box_dataset, one_torch_thread):
    """Two episodes of 4 transitions (the band is 2), forked, expanded into copies that
    share their keys and values, extended and pruned as a plan is (a value token as a query
    only), then more tokens than the room of 6 without a select, expanded and not: the cache
    compacts. Every push's logits equal recomputation's."""
    _, net = _net(box_dataset)
    gen = torch.Generator().manual_seed(0)

    def tok(rows, n=1):
        return torch.randint(0, 16, (rows, n), generator=gen)

    both = _Both(net)
    both.push(tok(2, 3), [0, 1, 2], 0)
    for t in range(1, 4):
        both.push(tok(2, 5), [3, 4, 0, 1, 2], t)
    both.select([0, 1, 1])
    both.expand(3)  # row 3 p + i copies row p
    assert isinstance(both.c.cache, BeamKVCache) and both.c.cache.rows == 9
    for step, keep in enumerate(([8, 2, 2, 0], [7, 1, 4, 6])):
        both.push(tok(len(both.r.tokens)), [3], 4 + step)
        both.push(tok(len(both.r.tokens)), [4], 4 + step)
        both.select(keep)
        both.push(tok(4), [5], 4 + step, commit=False)
        for dim in range(3):
            both.push(tok(4), [dim], 5 + step)
        both.expand(2)
    size = both.c.cache.kv.shape[4]
    for t in (6, 7, 8):  # 15 tokens, one at a time, copies first: past the room of 6
        for dim in range(5):
            both.push(tok(8), [(3 + dim) % 5], t)
    assert both.c.cache.branches == 1 and both.c.cache.kv.shape[4] == size
    assert both.pushes == 4 + 2 * 6 + 15
    both.expand(2)
    with pytest.raises(ValueError, match="one at a time"):
        both.push(tok(16, 2), [3, 4], 9)


def _actions(method, net, cached: bool, steps: int = 6):
    policy = method.policy(net, None, None, kv_cache=cached, horizon=4, beam_width=16)
    policy.reset(2, [3, 4])
    obs = np.random.default_rng(2).uniform(-1, 1, (steps, 2, 3)).astype(np.float32)
    out = []
    for t in range(steps):
        out.append(policy.act(obs[t]))
        policy.observe(-np.abs(obs[t, :, 0]))
    return np.stack(out), policy.gen.get_state()


def test_cached_and_recomputed_planners_take_the_same_actions_in_float64(box_dataset,
                                                                        one_torch_thread):
    """A moderate width (embed 64, 100 bins, beam 16, 2 expansions, horizon 4, 2 envs, 6
    steps: past the band). In float32 the two differ by rounding only, which can flip a near
    tie of an untrained network's near-uniform logits (benchmarks/results/tt/cost.md); in
    float64 they take the same actions from the same random draws."""
    method, net = _net(box_dataset, embed_dim=64, n_bins=100)
    net.double()
    (a, gen_a), (b, gen_b) = (_actions(method, net, cached) for cached in (True, False))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert torch.equal(gen_a, gen_b)  # the same draws, in the same order
    assert len(np.unique(a)) > 4  # the plans differ from step to step


def test_planning_ignores_a_callers_bf16_autocast(box_dataset, one_torch_thread):
    method, net = _net(box_dataset)
    plain = _actions(method, net, True, steps=3)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert np.array_equal(_actions(method, net, True, steps=3)[0], plain)
