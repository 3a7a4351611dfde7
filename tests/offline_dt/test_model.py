"""Decision Transformer network: causality, padding, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from offline_dt.nn.config import DTConfig
from offline_dt.nn.transformer import DecisionTransformer

B, K, OBS, ACT = 3, 6, 4, 2


def _model(discrete: bool = False, n_head: int = 2) -> DecisionTransformer:
    torch.manual_seed(0)
    model = DecisionTransformer(DTConfig(OBS, ACT if not discrete else 5, discrete=discrete,
                                         context_length=K, max_timestep=50, embed_dim=32,
                                         n_layer=2, n_head=n_head, dropout=0.1))
    # Larger weights than the GPT init so every input visibly moves the outputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


def _inputs(discrete: bool = False, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    rtg = torch.randn(B, K, 1, generator=g)
    obs = torch.randn(B, K, OBS, generator=g)
    if discrete:
        act = torch.randint(0, 5, (B, K), generator=g)
    else:
        act = torch.rand(B, K, ACT, generator=g) * 2 - 1
    ts = torch.arange(K).repeat(B, 1) + 3
    return rtg, obs, act, ts


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("t", [0, 2, K - 2])
@pytest.mark.parametrize("token", ["rtg", "obs", "act"])
def test_future_tokens_do_not_change_past_predictions(discrete, t, token):
    model = _model(discrete)
    rtg, obs, act, ts = _inputs(discrete)
    base = model(rtg, obs, act, ts)
    rtg2, obs2, act2 = rtg.clone(), obs.clone(), act.clone()
    if token == "rtg":
        rtg2[:, t + 1] += 5.0
    elif token == "obs":
        obs2[:, t + 1] += 5.0
    elif discrete:
        act2[:, t + 1] = (act2[:, t + 1] + 1) % 5
    else:
        act2[:, t + 1] = -act2[:, t + 1]
    out = model(rtg2, obs2, act2, ts)
    torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
    # ...but they do change later predictions (the test can fail); an action only reaches
    # the predictions after its own step, so a change of the last action changes nothing.
    first_affected = t + 2 if token == "act" else t + 1
    if first_affected < K:
        assert (out[:, first_affected:] - base[:, first_affected:]).abs().max() > 1e-4
    else:
        torch.testing.assert_close(out, base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("discrete", [False, True])
def test_action_at_t_does_not_affect_prediction_at_t(discrete):
    model = _model(discrete)
    rtg, obs, act, ts = _inputs(discrete)
    base = model(rtg, obs, act, ts)
    t = 3
    act2 = act.clone()
    act2[:, t] = (act2[:, t] + 2) % 5 if discrete else -act2[:, t]
    out = model(rtg, obs, act2, ts)
    torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
    assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4


def test_state_and_rtg_at_t_do_affect_prediction_at_t():
    model = _model()
    rtg, obs, act, ts = _inputs()
    base = model(rtg, obs, act, ts)
    obs2 = obs.clone()
    obs2[:, 2] += 3.0
    rtg2 = rtg.clone()
    rtg2[:, 2] += 3.0
    assert (model(rtg, obs2, act, ts)[:, 2] - base[:, 2]).abs().max() > 1e-4
    assert (model(rtg2, obs, act, ts)[:, 2] - base[:, 2]).abs().max() > 1e-4


@pytest.mark.parametrize("discrete", [False, True])
def test_padding_content_does_not_change_real_predictions(discrete):
    model = _model(discrete)
    rtg, obs, act, ts = _inputs(discrete)
    pad = torch.tensor([0, 2, 5])  # left padding per row
    mask = torch.arange(K)[None, :] >= pad[:, None]
    base = model(rtg, obs, act, ts, mask)
    g = torch.Generator().manual_seed(9)
    rtg2, obs2, act2, ts2 = rtg.clone(), obs.clone(), act.clone(), ts.clone()
    rtg2[~mask] = torch.randn(int((~mask).sum()), 1, generator=g) * 10
    obs2[~mask] = torch.randn(int((~mask).sum()), OBS, generator=g) * 10
    if discrete:
        act2[~mask] = torch.randint(0, 5, (int((~mask).sum()),), generator=g)
    else:
        act2[~mask] = torch.rand(int((~mask).sum()), ACT, generator=g)
    ts2[~mask] = 40
    out = model(rtg2, obs2, act2, ts2, mask)
    torch.testing.assert_close(out[mask], base[mask], rtol=0, atol=1e-5)
    assert torch.isfinite(out).all()
    # A padded row equals the same real steps given alone (shorter context).
    row = 1
    alone = model(rtg[row:row + 1, 2:], obs[row:row + 1, 2:], act[row:row + 1, 2:],
                  ts[row:row + 1, 2:])
    torch.testing.assert_close(base[row, 2:], alone[0], rtol=0, atol=1e-5)
    # Without the mask the padding would leak (so the mask is what protects them).
    leaky = model(rtg2, obs2, act2, ts2)
    assert (leaky[1, 2:] - base[1, 2:]).abs().max() > 1e-4


def test_all_true_mask_builds_the_causal_mask():
    """An all-valid window takes the unmasked (``is_causal``) path; that is only right if the
    mask it stands for is exactly the causal one, and a padded row's mask differs from it."""
    k = 4
    mask = torch.ones(2, k, dtype=torch.bool)
    mask[1, 0] = False
    built = DecisionTransformer._attention_mask(mask)
    causal = torch.ones(3 * k, 3 * k, dtype=torch.bool).tril()
    assert built.shape == (2, 1, 3 * k, 3 * k)
    assert torch.equal(built[0, 0], causal)
    # Row 1: the first step's three tokens are hidden from every later query.
    assert not built[1, 0, 3:, :3].any() and torch.equal(built[1, 0, :, 3:], causal[:, 3:])


def test_box_head_is_tanh_of_the_linear_head():
    model = _model()
    rtg, obs, act, ts = _inputs()
    squashed = model(rtg, obs, act, ts)
    model.cfg.action_tanh = False
    raw = model(rtg, obs, act, ts)
    assert raw.abs().max() > 1.0  # the large test weights push the head past [-1, 1]
    torch.testing.assert_close(squashed, torch.tanh(raw), rtol=0, atol=1e-6)
    d = _model(discrete=True)
    rtg, obs, act, ts = _inputs(discrete=True)
    logits = d(rtg, obs, act, ts)
    assert logits.shape == (B, K, 5) and logits.abs().max() > 1.0  # logits, not squashed


def test_paper_default_config_and_errors():
    cfg = DTConfig(obs_dim=3, act_dim=1)
    assert (cfg.context_length, cfg.embed_dim, cfg.n_layer, cfg.n_head, cfg.dropout,
            cfg.activation, cfg.max_timestep) == (20, 128, 3, 1, 0.1, "relu", 1000)
    n = DecisionTransformer(cfg).num_parameters()
    assert 500_000 < n < 1_000_000
    with pytest.raises(ValueError, match="divisible"):
        DecisionTransformer(DTConfig(3, 1, embed_dim=10, n_head=3))
    with pytest.raises(ValueError, match="activation"):
        DecisionTransformer(DTConfig(3, 1, activation="swish"))


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_state_only_last_block_equals_full_computation(discrete, padded):
    """The last block computes state-token rows only (all of them, or the last with
    ``last_only``); the predictions equal running every token through every block."""
    torch.manual_seed(0)
    cfg = DTConfig(obs_dim=3, act_dim=2, discrete=discrete, embed_dim=32, n_layer=2, n_head=2,
                   dropout=0.0)
    model = DecisionTransformer(cfg).eval()
    b, k = 4, 7
    rtg, obs, ts = torch.randn(b, k, 1), torch.randn(b, k, 3), torch.randint(0, 100, (b, k))
    act = torch.randint(0, 2, (b, k)) if discrete else torch.rand(b, k, 2) * 2 - 1
    mask = None
    if padded:
        mask = torch.ones(b, k, dtype=torch.bool)
        mask[0, :3] = False
    with torch.no_grad():
        fast = model(rtg, obs, act, ts, mask)
        last = model(rtg, obs, act, ts, mask, last_only=True)
        model.full_last_block = True
        full = model(rtg, obs, act, ts, mask)
    assert fast.shape == full.shape == (b, k, 2) and last.shape == (b, 1, 2)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ dropout path
def test_dropout_keeps_1_minus_p_and_scales_to_keep_the_mean():
    from offline_dt.nn.dropout import Dropout

    drop = Dropout(0.1).train()
    torch.manual_seed(0)
    y = drop(torch.ones(1_000_000))
    kept = y > 0
    p = round(0.1 * 65536) / 65536  # the rounded probability
    assert abs(kept.float().mean().item() - (1 - p)) < 2e-3  # 4 std of 1M draws is 1.2e-3
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 3e-3
    torch.manual_seed(0)
    assert torch.equal(drop(torch.ones(1_000_000)), y)  # the seeded generator draws it
    x = torch.randn(50)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros(50))
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.1, 0.5, 1 / 65536, 65535 / 65536, 1e-6])
def test_keep_scale_is_the_thresholded_draw_in_the_tensors_dtype(dtype, p):
    """The multiplier is ``1 / (1 - p')`` where the 16-bit draw is at least ``drop - 2^15``
    (``p'`` = p rounded to 2^-16), else 0, rounded to ``like``'s dtype: bit for bit what the
    ``torch.where`` of the same draw gives, from the same generator draws."""
    from offline_dt.nn.dropout import keep_scale

    shape = (3, 41, 7)
    n = math.prod(shape)
    drop = round(p * 65536)
    torch.manual_seed(11)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2 ** 63), 2 ** 63 - 1)
    after = torch.random.get_rng_state()
    bits = bits.view(torch.int16)[:n].view(shape)
    want = torch.where(bits >= drop - 32768, 65536 / (65536 - drop), 0.0).to(dtype)
    torch.manual_seed(11)
    got = keep_scale(shape, p, torch.zeros(1, dtype=dtype))
    assert got.dtype == dtype and got.shape == shape
    assert torch.equal(got, want)
    assert torch.equal(torch.random.get_rng_state(), after)
    if 0 < drop < 65536:
        assert set(got.unique().tolist()) <= {0.0, float(want.max())}


def test_bf16_attention_takes_the_plain_products_and_stays_near_fp32():
    """In bfloat16 on a CPU :func:`attend` computes softmax(q k^T / sqrt(d)) v with plain
    products even without dropout (SDPA's bf16 CPU kernel is slower at window sizes), with
    and without a mask, within bf16 rounding of fp32 SDPA."""
    from offline_dt.nn.attention import attend

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(3, 2, 9, 8, generator=g) for _ in range(3))
    mask = torch.rand(3, 1, 9, 9, generator=g) > 0.3
    mask |= torch.eye(9, dtype=torch.bool)
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    for m, causal in ((None, True), (mask, False)):
        got = attend(qb, kb, vb, m, causal, 0.0)
        att = (qb @ kb.transpose(-2, -1)) * (1.0 / math.sqrt(8))
        allowed = torch.ones(9, 9, dtype=torch.bool).tril() if causal else m
        plain = torch.softmax(att.masked_fill(~allowed, float("-inf")), dim=-1) @ vb
        assert got.dtype == torch.bfloat16 and torch.equal(got, plain)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m,
                                                               is_causal=causal)
        torch.testing.assert_close(got.float(), ref, rtol=0.05, atol=0.05)


def test_attention_dropout_drops_attention_weights_as_sdpa_would():
    from offline_dt.nn.attention import attend
    from offline_dt.nn.dropout import keep_scale

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 7, 4, generator=g) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(attend(q, k, v, None, True, 0.0), ref, atol=1e-6)
    torch.manual_seed(5)
    got = attend(q, k, v, None, True, 0.3)
    torch.manual_seed(5)
    att = torch.softmax((q @ k.transpose(-2, -1) / 2.0).masked_fill(
        ~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf")), dim=-1)
    want = (att * keep_scale((2, 2, 7, 7), 0.3, att)) @ v
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, ref, atol=1e-3)  # weights were dropped


def test_masked_action_loss_equals_the_loss_over_real_steps():
    from offline_dt.methods.dt import masked_action_loss

    g = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, :3] = False
    mask[2, :1] = False
    pred = torch.randn(4, 6, 2, generator=g)
    act = torch.rand(4, 6, 2, generator=g) * 2 - 1
    want = torch.nn.functional.mse_loss(pred[mask], act[mask])
    assert torch.allclose(masked_action_loss(pred, act, mask, False), want, atol=1e-6)
    logits = torch.randn(4, 6, 5, generator=g)
    labels = torch.randint(0, 5, (4, 6), generator=g)
    want = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
    assert torch.allclose(masked_action_loss(logits, labels, mask, True), want, atol=1e-6)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("attention", ["window", "band"])
def test_the_dt_loss_traces_as_one_graph(attention, bf16):
    """torch.compile sees the whole loss (no data-dependent branch, no boolean indexing),
    in fp32 and under bf16 autocast (``--precision bf16``)."""
    from offline_dt.data.windows import Batch
    from offline_dt.methods.dt import action_loss

    torch.manual_seed(0)
    net = DecisionTransformer(DTConfig(OBS, ACT, context_length=K, max_timestep=50,
                                       embed_dim=16, n_layer=2, attention=attention))
    rtg, obs, act, ts = _inputs()
    mask = torch.ones(B, K, dtype=torch.bool)
    mask[0, :2] = False
    batch = Batch(returns_to_go=rtg, observations=obs, actions=act, timesteps=ts, mask=mask)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        explained = torch._dynamo.explain(lambda b: action_loss(net, b, b.returns_to_go))(batch)
    assert explained.graph_break_count == 0, explained.break_reasons
