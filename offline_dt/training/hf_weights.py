"""The weight map between our Decision Transformer (``offline_dt.nn.transformer``) and Hugging
Face's ``transformers.DecisionTransformerModel``, and which configurations it can carry exactly.

Both are the network of Chen et al. 2021 ("Decision Transformer", Section 3, Figure 1; HF's
port of the authors' ``gym/decision_transformer/models/decision_transformer.py``):
per-modality linear embeddings plus a learned timestep embedding added to all three tokens of
a step, ``embed_ln``, a pre-LayerNorm GPT-2 stack over the ``3K`` interleaved tokens, the final
LayerNorm, and the action predicted from the state token through ``Linear`` (+ tanh). Every
weight maps one to one (:func:`weight_pairs`), with three differences of form, none of value:

- **Conv1D layout.** HF's GPT-2 stores ``c_attn``, ``c_proj``, ``mlp.c_fc`` and
  ``mlp.c_proj`` as ``Conv1D`` (``y = x W + b``, ``W`` of shape ``(in, out)``); ours are
  ``nn.Linear`` (``W`` of shape ``(out, in)``): these weights are transposed. ``c_attn`` holds
  query, key and value in that order along its output columns, as our ``attn.qkv`` does, and
  both split heads the same way (head ``j`` owns columns ``j*d_h:(j+1)*d_h`` of each).
- **Position table.** HF's GPT-2 keeps a position-embedding table ``encoder.wpe`` that the DT
  feeds ``position_ids`` of zero, so row 0 is one constant vector added to every token after
  ``embed_ln`` (and before dropout); ours has no table. Import folds ``wpe[0]`` into
  ``embed_ln.bias`` (``LN(x) w + b + p = LN(x) w + (b + p)``, exact); export writes a zero
  table. The other rows are never read. ``encoder.wte`` (a 1-token vocabulary, unused: the DT
  passes ``inputs_embeds``) is dropped on import and zero on export.
- **Extra heads.** HF also has ``predict_state`` and ``predict_return`` (unused by the DT
  paper and by HF's example); ours predicts actions alone, so import drops them and export
  writes zeros (an exported model's state and return predictions are 0).

Configurations that cannot be carried exactly are refused (:func:`hf_config_problems`,
:func:`our_config_problems`): HF's exact-erf ``gelu`` or other activations (ours has ReLU and
the tanh-approximated GELU, HF's ``gelu_new``), ``n_inner`` other than ``4 d``, a LayerNorm
epsilon other than torch's 1e-5 (ours), ``scale_attn_weights=False``,
``scale_attn_by_inverse_layer_idx``, cross-attention; and from ours: band attention, Discrete
actions, Dict or image observations, or a network with other parts than the DT's (another
method's heads).
"""

from __future__ import annotations

from typing import Any

import torch

#: HF ``activation_function`` → ours (``DTConfig.activation``): HF's ``gelu`` is the exact
#: (erf) GELU, ours the tanh approximation, which HF names ``gelu_new`` / ``gelu_pytorch_tanh``.
HF_ACTIVATIONS = {"relu": "relu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}
#: Ours → what export writes.
OUR_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_new"}
#: torch's LayerNorm epsilon, which every LayerNorm of ours uses.
LAYER_NORM_EPS = 1e-5
#: HF keys that import reads and drops (see the module docstring); per-block legacy buffers
#: ``attn.bias`` / ``attn.masked_bias`` (older GPT-2 checkpoints' causal-mask constants) too.
HF_DROPPED = ("encoder.wte.weight", "predict_state.weight", "predict_state.bias",
              "predict_return.weight", "predict_return.bias")
HF_LEGACY_BUFFERS = ("attn.bias", "attn.masked_bias")
WPE = "encoder.wpe.weight"


def weight_pairs(n_layer: int) -> list[tuple[str, str, bool]]:
    """Every ``(our key, HF key, transposed)`` of an ``n_layer`` network: ``transposed`` for
    HF's Conv1D weights (module docstring)."""
    pairs = [("embed_timestep.weight", "embed_timestep.weight", False)]
    for part in ("embed_return", "embed_state", "embed_action", "embed_ln"):
        pairs += [(f"{part}.{p}", f"{part}.{p}", False) for p in ("weight", "bias")]
    for i in range(n_layer):
        ours, hf = f"blocks.{i}.", f"encoder.h.{i}."
        for a, b, conv in (("ln_1", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
                           ("attn.proj", "attn.c_proj", True), ("ln_2", "ln_2", False),
                           ("mlp.0", "mlp.c_fc", True), ("mlp.2", "mlp.c_proj", True)):
            pairs += [(ours + a + ".weight", hf + b + ".weight", conv),
                      (ours + a + ".bias", hf + b + ".bias", False)]
    pairs += [("ln_f.weight", "encoder.ln_f.weight", False),
              ("ln_f.bias", "encoder.ln_f.bias", False),
              ("predict_action.weight", "predict_action.0.weight", False),
              ("predict_action.bias", "predict_action.0.bias", False)]
    return pairs


def hf_config_problems(hf: dict[str, Any]) -> list[str]:
    """What of an HF ``DecisionTransformerConfig`` (its ``to_dict()``) our network cannot
    reproduce exactly; empty when it can."""
    problems = []
    if hf.get("model_type") != "decision_transformer":
        problems.append(f"model_type is {hf.get('model_type')!r}, expected "
                        f"'decision_transformer'")
    act = hf.get("activation_function")
    if act not in HF_ACTIVATIONS:
        problems.append(f"activation_function {act!r}: ours has {sorted(HF_ACTIVATIONS)} "
                        f"(ReLU, or the tanh-approximated GELU; HF's 'gelu' is the exact erf "
                        f"GELU)")
    d = int(hf.get("hidden_size", 0))
    if hf.get("n_inner") not in (None, 4 * d):
        problems.append(f"n_inner={hf.get('n_inner')}: our MLP is 4 * hidden_size = {4 * d} "
                        f"wide")
    if float(hf.get("layer_norm_epsilon", LAYER_NORM_EPS)) != LAYER_NORM_EPS:
        problems.append(f"layer_norm_epsilon={hf.get('layer_norm_epsilon')}: our LayerNorms "
                        f"use {LAYER_NORM_EPS}")
    if not hf.get("scale_attn_weights", True):
        problems.append("scale_attn_weights=False: our attention scales by 1/sqrt(d_head)")
    if hf.get("scale_attn_by_inverse_layer_idx"):
        problems.append("scale_attn_by_inverse_layer_idx=True: our attention has no per-layer "
                        "scale")
    if hf.get("add_cross_attention"):
        problems.append("add_cross_attention=True: our blocks have no cross-attention")
    return problems


def our_config_problems(model_cfg: Any, method: str) -> list[str]:
    """What of our ``DTConfig`` (and the checkpoint's method) HF's model cannot express;
    empty when it can."""
    problems = []
    if method not in ("dt", "bc"):
        problems.append(f"method {method!r}: HF's DecisionTransformerModel is the dt (or bc) "
                        f"network alone, without another method's heads")
    if model_cfg.attention != "window":
        problems.append(f"attention={model_cfg.attention!r}: HF's model has plain causal "
                        f"attention over the window, not banded attention")
    if model_cfg.discrete:
        problems.append("Discrete actions: HF's model embeds and predicts Box actions only")
    if model_cfg.obs_layout is not None:
        problems.append("a Dict or image observation space: HF's model has one linear state "
                        "embedding of a flat Box")
    if model_cfg.activation not in OUR_ACTIVATIONS:
        problems.append(f"activation {model_cfg.activation!r}")
    return problems


def hf_to_ours(hf_sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Our ``DecisionTransformer.state_dict()`` from an HF ``DecisionTransformerModel``'s
    (float32 copies; ``wpe[0]`` folded into ``embed_ln.bias``).

    Raises:
        ValueError: a key of :func:`weight_pairs` (or ``encoder.wpe.weight``) is missing, or
            the file holds keys this map does not know (naming them).
    """
    pairs = weight_pairs(n_layer)
    known = {h for _, h, _ in pairs} | {WPE, *HF_DROPPED}
    legacy = {f"encoder.h.{i}.{b}" for i in range(n_layer) for b in HF_LEGACY_BUFFERS}
    unknown = sorted(set(hf_sd) - known - legacy)
    missing = sorted(known - set(HF_DROPPED) - set(hf_sd))
    if unknown or missing:
        raise ValueError(f"HF state dict: unknown key(s) {unknown} (no part of our network "
                         f"holds them) and missing key(s) {missing}, for n_layer={n_layer}")
    ours = {}
    for our_key, hf_key, conv in pairs:
        w = hf_sd[hf_key].detach().to(torch.float32)
        ours[our_key] = (w.t() if conv else w).contiguous().clone()
    ours["embed_ln.bias"] = ours["embed_ln.bias"] + hf_sd[WPE][0].to(torch.float32)
    return ours


def ours_to_hf(our_sd: dict[str, torch.Tensor], hf_sd: dict[str, torch.Tensor], n_layer: int
               ) -> dict[str, torch.Tensor]:
    """HF's state dict with every tensor of ``hf_sd`` (a freshly built model's, for the key
    set and shapes) replaced: the mapped weights from ``our_sd``, zeros for ``wpe``, ``wte``
    and the state and return heads.

    Raises:
        ValueError: ``our_sd`` has keys the DT's network does not (another method's heads) or
            lacks some, or a shape differs from the HF model's (naming the key).
    """
    pairs = weight_pairs(n_layer)
    expected = {o for o, _, _ in pairs}
    if set(our_sd) != expected:
        raise ValueError(f"checkpoint 'model': keys {sorted(set(our_sd) - expected)} are not "
                         f"the Decision Transformer's and {sorted(expected - set(our_sd))} are "
                         f"missing: only the dt/bc network maps to HF's model")
    out = {k: torch.zeros_like(v) for k, v in hf_sd.items()}
    for our_key, hf_key, conv in pairs:
        w = our_sd[our_key].detach().to(torch.float32)
        w = (w.t() if conv else w).contiguous().clone()
        if w.shape != out[hf_key].shape:
            raise ValueError(f"{our_key} {tuple(w.shape)} does not fit HF's {hf_key} "
                             f"{tuple(out[hf_key].shape)}")
        out[hf_key] = w
    return out
