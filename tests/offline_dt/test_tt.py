"""tt: the discretiser, the token layout and the value tokens by hand, beam search on a
hand-made model whose best plan is known, the cached planner against recomputation, and
training, evaluation and exact resume through the real loop and evaluator."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import interrupted_and_full

from offline_dt.data import OfflineDataset, write_hdf5
from offline_dt.data.discretise import decode, encode, fit_bins
from offline_dt.data.windows import Normalizer
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint
from offline_dt.methods import get_method
from offline_dt.methods.tt import TTOptions, TTWindows, discounted_values, layout, sequence
from offline_dt.methods.tt_planner import BeamSearch
from offline_dt.nn.config import DTConfig
from offline_dt.training import load_checkpoint, train

TINY = {"n_bins": 8, "context": 2, "horizon": 2, "beam_width": 3, "expansions": 2}


# ---------------------------------------------------------------------------- discretiser
def test_quantile_edges_and_decoding_of_a_known_sample():
    x = np.arange(101, dtype=np.float64)[:, None]  # 0 .. 100
    edges, mids = fit_bins(x, 4, "quantile", "midpoint")
    assert edges.tolist() == [[0.0, 25.0, 50.0, 75.0, 100.0]]
    assert mids.tolist() == [[12.5, 37.5, 62.5, 87.5]]
    _, means = fit_bins(x, 4, "quantile", "mean")
    # bins hold 0..24, 25..49, 50..74, 75..100
    assert means.tolist() == [[12.0, 37.0, 62.0, 87.5]]
    bins = encode(torch.tensor([[0.0], [24.9], [25.0], [99.0], [100.0], [150.0], [-3.0]]), edges)
    assert bins[:, 0].tolist() == [0, 0, 1, 3, 3, 3, 0]
    uniform, _ = fit_bins(np.array([[2.0], [4.0], [10.0]]), 4, "uniform")
    assert uniform.tolist() == [[2.0, 4.0, 6.0, 8.0, 10.0]]


@pytest.mark.parametrize("kind", ["quantile", "uniform"])
@pytest.mark.parametrize("how", ["midpoint", "mean"])
def test_round_trip_is_within_one_bin_width(kind, how):
    x = np.random.default_rng(0).normal(size=(500, 3)) * [1.0, 10.0, 0.1]
    edges, centres = fit_bins(x, 20, kind, how)
    xt = torch.from_numpy(x).float()
    bins = encode(xt, edges)
    back = decode(bins, centres)
    width = (edges[:, 1:] - edges[:, :-1]).T.gather(0, bins)  # the width of each value's bin
    assert ((back - xt).abs() <= width + 1e-5).all()
    assert ((bins >= 0) & (bins < 20)).all()


def test_discretiser_refuses_bad_arguments():
    with pytest.raises(ValueError, match="kind must be"):
        fit_bins(np.zeros((3, 1)), 4, "log")
    with pytest.raises(ValueError, match="finite"):
        fit_bins(np.array([[np.nan]]), 4)


# ---------------------------------------------------------------------------- tokens
def test_value_token_is_the_discounted_return_to_go_after_the_reward():
    rewards = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 7.0])
    starts = np.array([0, 4, 6])
    # V_t = sum_{k>=1} 0.5^(k-1) r_{t+k}: 1 + 0.5*2 + 0.25*3, 2 + 0.5*3, 3, 0 | 7, 0
    assert discounted_values(rewards, starts, 0.5).tolist() == [2.75, 3.5, 3.0, 0.0, 7.0, 0.0]


def _episode(terminal: bool) -> OfflineDataset:
    """One 4-step episode: obs = action = reward = t (t = 0..3)."""
    t = np.arange(4, dtype=np.float32)
    ends = np.array([False, False, False, True])
    return OfflineDataset.from_flat(
        observations=t[:, None], actions=t[:, None], rewards=t,
        terminals=ends & terminal, timeouts=ends & (not terminal),
        observation_space=gym.spaces.Box(-10, 10, (1,), np.float32),
        action_space=gym.spaces.Box(-10, 10, (1,), np.float32),
        metadata={"env_id": "Pendulum-v1"}, source="hand")


@pytest.mark.parametrize("terminal", [True, False])
def test_token_layout_of_a_tiny_episode_by_hand(terminal):
    ds = _episode(terminal)
    method = get_method("tt")
    opts = {"n_bins": 4, "bins": "uniform", "discount": 0.5}
    net = method.build(DTConfig(obs_dim=1, act_dim=1, context_length=3, embed_dim=8,
                                n_layer=1, max_timestep=16), opts)
    method.fit(net, ds, Normalizer.fit(ds))
    assert layout(1, 1) == {"obs": slice(0, 1), "act": slice(1, 2), "reward": slice(2, 3),
                            "value": slice(3, 4)}
    # edges 0, .75, 1.5, 2.25, 3 for obs, action and reward: t -> bin t; values
    # (2.75, 3.5, 3, 0) over 0 .. 3.5 -> bins (3, 3, 3, 0)
    src = TTWindows(ds, 3, 16, 0.5)
    batch = src.windows(torch.tensor([0]), torch.tensor([2]))  # steps 2, 3, then past the end
    tok, dims, ts, in_loss = sequence(net, batch)
    stop = 4
    assert tok[0].tolist() == [2, 2, 2, 3, 3, 3, 3, 0, stop, stop, stop, stop]
    assert dims.tolist() == [0, 1, 2, 3] * 3
    assert ts[0].tolist() == [2] * 4 + [3] * 4 + [4] * 4
    # past a terminal step the stop tokens are predicted; past a time limit they are padding
    assert in_loss[0].tolist() == [True] * 8 + [terminal] * 4
    assert net.offsets.tolist() == [0, 4, 8, 12] and net.tok_emb.num_embeddings == 17
    # TT's attention: a value token is no one's key; the band holds context*(D-1) = 10 keys
    mask = net.attention_mask(dims == 3)
    assert not mask[4:, 3].any() and mask[3, 3] and mask[4, :3].all()


def test_discrete_action_is_one_token_and_observations_must_be_flat_box():
    net = get_method("tt").build(DTConfig(obs_dim=2, act_dim=3, discrete=True, embed_dim=8,
                                          n_layer=1), {"n_bins": 5})
    assert net.dim == 2 + 1 + 2 and net.slots["act"] == slice(2, 3)
    # the action head (used at the token before it) can only say 0, 1, 2 or stop
    assert net.valid_logits[2].tolist() == [True, True, True, False, False, True]
    tok = net.tokens(torch.zeros(1, 2), torch.tensor([2]), torch.zeros(1), torch.zeros(1))
    assert tok[0, 2] == 2
    stub = SimpleNamespace(observation_space=gym.spaces.Dict({"x": gym.spaces.Box(0, 1, (2,))}),
                           action_space=gym.spaces.Discrete(2), source="dict-data")
    from offline_dt.methods.tt import require_flat_box
    with pytest.raises(ValueError, match="Dict and image observations are refused"):
        require_flat_box(stub)


def test_options_and_candidates_are_checked():
    tt = get_method("tt")
    assert isinstance(tt.options(None), TTOptions)
    assert tt.options({"other_horizons": [5, 10]}).other_horizons == (5, 10)  # JSON's list
    with pytest.raises(ValueError, match="other_horizons' must be a tuple of int"):
        tt.options({"other_horizons": "5"})
    with pytest.raises(ValueError, match="integers >= 1"):
        tt.options({"other_beam_widths": (0,)})
    with pytest.raises(ValueError, match="bins"):
        tt.options({"bins": "log"})
    net = get_method("tt").build(DTConfig(obs_dim=1, act_dim=1, embed_dim=8, n_layer=1),
                                 {"other_horizons": (5,)})
    cands = get_method("tt").inference_candidates(net)
    assert cands == [{"horizon": 15, "beam_width": 128, "plan_every": 1},
                     {"horizon": 5, "beam_width": 128, "plan_every": 1}]
    with pytest.raises(ValueError, match="unknown inference settings"):
        get_method("tt").policy(net, None, None, depth=2)


# ---------------------------------------------------------------------------- planner
class _HandModel:
    """A stepper whose logits are a rule of the last token pushed (obs_dim 1, one action
    token, 4 bins): after the observation every action is equally likely; after action a the
    reward is bin a for sure; after reward bin 1 the value is bin 1, else bin 0."""

    def __init__(self, last: torch.Tensor | None = None) -> None:
        self.last = last

    def push(self, tokens, dims, timesteps, commit=True):
        self.last = tokens[:, -1].clone()
        dim = int(dims[-1])
        logits = torch.full((len(tokens), 5), -50.0)
        if dim == 0:  # next: the action
            logits[:, :4] = 0.0
        elif dim == 1:  # next: the reward, bin = action
            logits[torch.arange(len(tokens)), self.last] = 50.0
        elif dim == 2:  # next: the value
            logits[torch.arange(len(tokens)), (self.last == 1).long()] = 50.0
        else:  # next: the observation
            logits[:, 0] = 50.0
        return logits

    def select(self, rows):
        return _HandModel(self.last[rows])

    def expand(self, e):
        return self.select(torch.arange(len(self.last)).repeat_interleave(e))


def _hand_net() -> SimpleNamespace:
    centres = torch.zeros(4, 4)
    centres[2] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # rewards: bin a is worth a
    centres[3] = torch.tensor([0.0, 10.0, 0.0, 0.0])  # values: bin 1 is worth 10
    return SimpleNamespace(slots=layout(1, 1), edges=torch.zeros(4, 5), centres=centres,
                           cfg=SimpleNamespace(max_timestep=100), stop=4, obs_dim=1,
                           options=SimpleNamespace(n_bins=4))


@pytest.mark.parametrize("horizon, best", [(1, [1]), (2, [3, 1])])
def test_beam_search_picks_the_known_best_plan(horizon, best):
    """gamma 0.9. One step: action 1 scores 1 + 0.9 * 10 = 10, action 3 only 3. Two steps:
    (3, 1) scores 3 + 0.9 * 1 + 0.81 * 10 = 12, above (1, 1)'s 1 + 0.9 + 8.1 = 10: the value
    after the first action no longer counts, so the greedy first action is not the best."""
    gen = torch.Generator().manual_seed(0)
    search = BeamSearch(_hand_net(), horizon, beam_width=32, expansions=2, top_p=1.0,
                        discount=0.9, generator=gen)
    first = _HandModel()
    logits = first.push(torch.zeros(2, 1, dtype=torch.long), torch.tensor([0]), None)
    plan = search.plan(first, logits, t=0)  # two envs plan at once
    assert plan.shape == (2, horizon, 1)
    assert plan[:, :, 0].tolist() == [best, best]


def _tiny_tt(ds: OfflineDataset, **opts: int):
    torch.manual_seed(0)
    method = get_method("tt")
    net = method.build(DTConfig(obs_dim=ds.obs_dim, act_dim=ds.act_dim, discrete=ds.discrete,
                                context_length=4, embed_dim=16, n_layer=2, n_head=2,
                                dropout=0.0, max_timestep=64), {**TINY, **opts})
    method.fit(net, ds, Normalizer.fit(ds))
    return method, net.eval()


def test_cached_planner_chooses_the_recomputed_planners_actions(box_dataset, one_torch_thread):
    """12 steps of 3 envs: the episode outgrows the band (2 transitions), so the rolling
    cache and the recomputation's crop are both exercised; same seeds, same actions."""
    method, net = _tiny_tt(box_dataset, beam_width=4, horizon=3)
    obs = np.random.default_rng(1).uniform(-1, 1, (12, 3, 3)).astype(np.float32)
    acts = []
    for cached in (True, False):
        policy = method.policy(net, None, None, kv_cache=cached)
        policy.reset(3, [7, 8, 9])
        out = []
        for t in range(12):
            out.append(policy.act(obs[t]))
            policy.observe(-np.abs(obs[t, :, 0]) * 3)
        acts.append(np.stack(out))
    assert np.array_equal(acts[0], acts[1])
    assert len(np.unique(acts[0])) > 3  # the plans differ from step to step


def test_plan_every_takes_the_plans_next_actions(box_dataset, one_torch_thread):
    method, net = _tiny_tt(box_dataset, horizon=3)
    policy = method.policy(net, None, None, plan_every=3)
    policy.reset(2, [0, 1])
    plans = []
    for _ in range(4):
        policy.act(np.zeros((2, 3), np.float32))
        plans.append(policy.plan)
        policy.observe(np.zeros(2))
    assert plans[0] is plans[1] is plans[2] and plans[3] is not plans[0]


# ---------------------------------------------------------------------------- the loop
def test_train_and_evaluate_through_the_loop_and_evaluator(box_hdf5, tiny_config, tmp_path,
                                                           one_torch_thread):
    cfg = tiny_config(box_hdf5, method="tt", method_options={**TINY,
                      "other_beam_widths": (2,), "plan_every": 4},
                      steps=6, log_every=3, max_timestep=256)
    res = train(cfg)
    assert np.isfinite(res.final_loss)
    ck = load_checkpoint(cfg.run_dir)
    assert bool(ck.model.fitted) and ck.model_config.attention == "band"
    # the checkpoint carries the discretiser: the loaded network's is the one fitted
    ds_edges = ck.model.edges.clone()
    header = (cfg.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "act_ce" in header and "value_ce" in header
    out = evaluate_checkpoint(EvalConfig(checkpoint=cfg.run_dir, episodes=2,
                                         validation_episodes=1, device="cpu"))
    assert out["kv_cache"] is True and len(out["selection"]["candidates"]) == 2
    assert set(out["headline_settings"]) == {"horizon", "beam_width", "plan_every"}
    assert -2000 < out["mean_return"] <= 0  # Pendulum returns
    assert torch.equal(load_checkpoint(cfg.run_dir).model.edges, ds_edges)
    saved = json.loads((cfg.run_dir / "config.json").read_text())
    assert saved["train_config"]["method_options"]["plan_every"] == 4


def test_resume_is_exact(box_hdf5, tiny_config, tmp_path, one_torch_thread):
    full = tiny_config(box_hdf5, method="tt", method_options=TINY, steps=10,
                       run_dir=tmp_path / "full", checkpoint_every=5)
    a, b = interrupted_and_full(full, tmp_path)
    assert "edges" in a and "centres" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_discrete_actions_and_terminal_episodes(discrete_dataset, tmp_path, tiny_config,
                                                one_torch_thread):
    path = write_hdf5(discrete_dataset, tmp_path / "tiny-discrete-v0.hdf5")
    cfg = tiny_config(path, method="tt", method_options=TINY, steps=4)
    assert np.isfinite(train(cfg).final_loss)
    ck = load_checkpoint(cfg.run_dir)
    policy = ck.method.policy(ck.model, ck.normalizer, None, kv_cache=True)
    policy.reset(2, [0, 1])
    action = policy.act(np.zeros((2, 4), np.float32))
    assert action.dtype == np.int64 and set(action.tolist()) <= {0, 1}
