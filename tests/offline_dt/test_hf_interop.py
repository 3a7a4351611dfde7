"""Hugging Face DecisionTransformerModel checkpoints in and out (offline_dt.training.hf_interop):
both directions predict the same actions as the source network on the same windows (to
1e-5, left padding included), an imported checkpoint evaluates on Pendulum, and what cannot be
carried exactly is refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch

from offline_dt.cli import main
from offline_dt.nn.config import DTConfig
from offline_dt.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from offline_dt.training.hf_interop import ConvertConfig, convert
from offline_dt.training.hf_weights import hf_config_problems, hf_to_ours, our_config_problems

transformers = pytest.importorskip("transformers")

PENDULUM_MEAN = [0.1, -0.2, 0.3]
PENDULUM_STD = [0.5, 0.6, 2.0]


def _random_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn from N(0, 0.3²): no part left at its (often zero) init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _hf_model(tmp_path, **overrides):
    """A tiny random HF DT (Pendulum's widths), saved with save_pretrained."""
    kw = dict(state_dim=3, act_dim=1, hidden_size=16, n_layer=2, n_head=2, max_ep_len=256,
              bos_token_id=None, eos_token_id=None, **overrides)
    model = transformers.DecisionTransformerModel(transformers.DecisionTransformerConfig(**kw))
    _random_(model, 0)  # wpe[0] non-zero too: import must fold it into embed_ln.bias
    model.eval()
    model.save_pretrained(str(tmp_path / "hf"))
    return model, tmp_path / "hf"


def _windows(k: int = 6, b: int = 4, seed: int = 1):
    """(rtg, states, actions, timesteps, mask) with rows 0 and 1 left-padded."""
    g = torch.Generator().manual_seed(seed)
    rtg = torch.randn(b, k, 1, generator=g)
    states = torch.randn(b, k, 3, generator=g)
    actions = torch.rand(b, k, 1, generator=g) * 2 - 1
    timesteps = torch.randint(0, 200, (b, 1), generator=g) + torch.arange(k)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[0, :2] = False
    mask[1, :5] = False
    return rtg, states, actions, timesteps, mask


def _hf_actions(model, rtg, states, actions, timesteps, mask):
    with torch.no_grad():
        return model(states=states, actions=actions, rewards=torch.zeros_like(rtg),
                     returns_to_go=rtg, timesteps=timesteps, attention_mask=mask.long(),
                     return_dict=True).action_preds


def _ours_actions(net, rtg, states, actions, timesteps, mask):
    with torch.no_grad():
        return net(rtg, states, actions, timesteps, mask)


def _import(hf_dir, run, **kw):
    return convert(ConvertConfig(from_hf=str(hf_dir), to=run, env_id="Pendulum-v1",
                                 state_mean=PENDULUM_MEAN, state_std=PENDULUM_STD,
                                 returns_scale=1000.0, context_length=6, **kw))


@pytest.mark.parametrize("activation", ["relu", "gelu_new"])
def test_imported_hf_model_predicts_hfs_actions(tmp_path, activation):
    model, hf_dir = _hf_model(tmp_path, activation_function=activation)
    run = _import(hf_dir, tmp_path / "run")
    ckpt = load_checkpoint(run)
    assert ckpt.model_config.activation == {"relu": "relu", "gelu_new": "gelu"}[activation]
    assert ckpt.model_config.max_timestep == 256 and ckpt.model_config.context_length == 6
    assert ckpt.normalizer.rtg_scale == 1000.0
    assert ckpt.normalizer.state_std.tolist() == pytest.approx(PENDULUM_STD)
    # action_units "env": the model's outputs are env actions (identity bounds)
    assert ckpt.normalizer.action_low.tolist() == [-1.0]
    w = _windows()
    hf, ours = _hf_actions(model, *w), _ours_actions(ckpt.model, *w)
    mask = w[-1]
    assert hf[mask].abs().max() > 0.1  # not a trivially zero head
    torch.testing.assert_close(ours[mask], hf[mask], atol=1e-5, rtol=0)
    # the last step alone (how the evaluator acts)
    with torch.no_grad():
        last = ckpt.model(*w[:4], w[-1], last_only=True)[:, -1]
    torch.testing.assert_close(last, hf[:, -1], atol=1e-5, rtol=0)


def test_exported_checkpoint_loads_in_hf_and_predicts_ours(tmp_path, tiny_config, box_hdf5):
    from offline_dt.training import train

    train(tiny_config(box_hdf5, steps=2, n_layer=2, n_head=2, activation="gelu",
                      context_length=6, max_timestep=256))
    path, payload = read_checkpoint(tmp_path / "run")
    g = torch.Generator().manual_seed(2)
    payload["model"] = {k: torch.randn(v.shape, generator=g) * 0.3
                        for k, v in payload["model"].items()}
    payload.pop("digest")
    save_checkpoint(path, payload)
    out = convert(ConvertConfig(checkpoint=tmp_path / "run", to_hf=tmp_path / "hf"))
    model = transformers.DecisionTransformerModel.from_pretrained(str(out)).eval()
    assert model.config.activation_function == "gelu_new"
    assert model.encoder.wpe.weight.abs().max() == 0
    facts = json.loads((out / "offline-dt.json").read_text())
    assert facts["context_length"] == 6 and facts["action_units"] == "scaled"
    assert facts["action_low"] == [-2.0] and (out / "README.md").is_file()
    net = load_checkpoint(tmp_path / "run").model
    w = _windows()
    mask = w[-1]
    hf, ours = _hf_actions(model, *w), _ours_actions(net, *w)
    assert ours[mask].abs().max() > 0.1
    torch.testing.assert_close(hf[mask], ours[mask], atol=1e-5, rtol=0)
    # and back: the directory's offline-dt.json supplies what HF's files lack
    back = load_checkpoint(convert(ConvertConfig(from_hf=str(out), to=tmp_path / "back")))
    assert back.normalizer.action_high.tolist() == [2.0] and back.normalizer.rtg_scale == \
        load_checkpoint(tmp_path / "run").normalizer.rtg_scale
    torch.testing.assert_close(_ours_actions(back.model, *w)[mask], ours[mask], atol=1e-5,
                               rtol=0)


def test_imported_hf_checkpoint_evaluates_on_pendulum(tmp_path):
    from offline_dt.evaluation import EvalConfig, evaluate_checkpoint

    _, hf_dir = _hf_model(tmp_path)
    run = _import(hf_dir, tmp_path / "run", ref_min_score=-1200.0, ref_max_score=-150.0)
    out = evaluate_checkpoint(EvalConfig(checkpoint=run, episodes=2, validation_episodes=1,
                                         device="cpu"))
    assert out["env_id"] == "Pendulum-v1" and out["method"] == "dt"
    headline = out["targets"][out["headline_index"]]
    assert headline["episodes"] == 2 and headline["target_return"] == -150.0
    assert -2000 < headline["mean"] < 0 and (run / "eval.json").is_file()


def test_cli_converts_both_ways_and_refuses_with_status_2(tmp_path, capsys):
    _, hf_dir = _hf_model(tmp_path)
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["convert", "--from-hf", str(hf_dir), "--to", str(run), "--env-id",
                 "Pendulum-v1", "--state-mean", "0", "0", "0", "--state-std", "1", "1", "1",
                 "--returns-scale", "1000"]) == 0
    assert main(["convert", "--checkpoint", str(run), "--to-hf", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert main(["convert", "--from-hf", str(hf_dir), "--to", str(run), "--env-id",
                 "Pendulum-v1", "--returns-scale", "1000"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["convert", "--from-hf", str(hf_dir), "--to", str(tmp_path / "run2"),
                 "--env-id", "Pendulum-v1"]) == 2
    assert "--returns-scale is required" in capsys.readouterr().err
    assert main(["convert", "--from-hf", str(hf_dir), "--to-hf", str(out)]) == 2
    assert "give either --from-hf SRC --to RUN_DIR" in capsys.readouterr().err


def test_hf_configs_we_cannot_reproduce_are_refused_with_reasons(tmp_path):
    base = transformers.DecisionTransformerConfig(state_dim=3, act_dim=1).to_dict()
    assert hf_config_problems(base) == []
    bad = {**base, "activation_function": "gelu", "n_inner": 100, "layer_norm_epsilon": 1e-6,
           "scale_attn_by_inverse_layer_idx": True}
    text = "; ".join(hf_config_problems(bad))
    for needle in ("exact erf GELU", "n_inner=100", "layer_norm_epsilon=1e-06",
                   "per-layer scale"):
        assert needle in text
    _, hf_dir = _hf_model(tmp_path, activation_function="gelu", resid_pdrop=0.2)
    with pytest.raises(ValueError, match="exact erf GELU.*pass --dropout"):
        _import(hf_dir, tmp_path / "run")
    with pytest.raises(ValueError, match="observation width 2"):
        convert(ConvertConfig(from_hf=str(hf_dir), to=tmp_path / "r2", returns_scale=1.0,
                              env_id="MountainCarContinuous-v0", dropout=0.1))
    with pytest.raises(ValueError, match="a Box action space, found .*Discrete"):
        convert(ConvertConfig(from_hf=str(hf_dir), to=tmp_path / "r3", env_id="CartPole-v1",
                              returns_scale=1.0))


def test_ours_that_hf_cannot_express_is_refused():
    cfg = DTConfig(obs_dim=3, act_dim=2, discrete=True, attention="band")
    text = "; ".join(our_config_problems(cfg, "qt"))
    for needle in ("method 'qt'", "banded attention", "Discrete actions"):
        assert needle in text
    assert our_config_problems(DTConfig(obs_dim=3, act_dim=1), "dt") == []


def test_unknown_hf_weights_are_named():
    hf = transformers.DecisionTransformerModel(transformers.DecisionTransformerConfig(
        state_dim=3, act_dim=1, hidden_size=8, n_layer=1, bos_token_id=None,
        eos_token_id=None))
    sd = dict(hf.state_dict())
    assert set(hf_to_ours(sd, 1)) >= {"blocks.0.attn.qkv.weight", "predict_action.weight"}
    sd["encoder.h.0.crossattention.c_attn.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown key.*crossattention"):
        hf_to_ours(sd, 1)


def test_a_hub_id_without_network_fails_fast_with_one_message(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    t = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"not a local directory, and the Hugging "
                                                r"Face hub \(hub.invalid:443\) is unreachable"):
        convert(ConvertConfig(from_hf="edbeeching/decision-transformer-gym-hopper-medium",
                              to=tmp_path / "run", env_id="Hopper-v5", returns_scale=1000.0))
    assert time.perf_counter() - t < 10
