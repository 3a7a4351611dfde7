"""Hugging Face ``transformers.DecisionTransformerModel`` checkpoints in and out
(``offline-dt convert``).

- :func:`import_hf`: an HF checkpoint (a local directory in the hub's layout, ``config.json``
  and ``model.safetensors`` or ``pytorch_model.bin``, or a hub id when the network allows) →
  an ordinary offline-dt run directory (``checkpoint.pt`` of method ``dt``) that ``offline-dt
  evaluate`` runs. HF checkpoints hold neither the observation statistics nor the
  returns-to-go scale (HF's example script ``run_decision_transformer.py`` normalises states
  by the dataset's mean and std and divides returns by 1000), nor the context length K (20
  there): the caller gives them, unless the directory holds an ``offline-dt.json`` (what
  :func:`export_hf` writes).
- :func:`export_hf`: an offline-dt ``dt``/``bc`` checkpoint → a directory that
  ``DecisionTransformerModel.from_pretrained(DIR)`` loads (``save_pretrained``), with
  ``offline-dt.json`` (normaliser, returns scale, K, env, action bounds) and a model card.

The weights map one to one (``offline_dt.training.hf_weights``); what cannot be carried exactly
is refused with the reason. ``transformers`` is the optional ``hf`` extra and is imported here
only, when a conversion runs.

Actions: HF's example trains on the dataset's raw actions (MuJoCo's bounds are [-1, 1]), so an
imported model's outputs are env actions (``action_units="env"``: the normaliser's bounds are
[-1, 1], the identity); ours scales Box actions to [-1, 1] from the env's bounds
(``"scaled"``), which is what an exported ``offline-dt.json`` records.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import torch

from offline_dt.data.atomic import check_writable
from offline_dt.data.space_codec import space_to_json
from offline_dt.data.windows import Normalizer
from offline_dt.envs.make import env_spaces
from offline_dt.methods import get_method
from offline_dt.nn.config import DTConfig
from offline_dt.training.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_payload,
    load_checkpoint,
    save_checkpoint,
)
from offline_dt.training.hf_weights import (
    HF_ACTIVATIONS,
    OUR_ACTIVATIONS,
    hf_config_problems,
    hf_to_ours,
    our_config_problems,
    ours_to_hf,
)
from offline_dt.training.step import make_optimizer
from offline_dt.training.train_config import TrainConfig

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[hf]" (transformers>=4.40)'
#: What :func:`export_hf` writes beside HF's files, and :func:`import_hf` reads when present.
FACTS_NAME = "offline-dt.json"


class HFDependencyError(ImportError):
    """``transformers`` is not installed; the message says how to install it."""


def import_transformers() -> Any:
    """``import transformers``.

    Raises:
        HFDependencyError: it is not installed (naming :data:`INSTALL_HINT`).
    """
    try:
        import transformers
    except ImportError as e:
        raise HFDependencyError(f"offline-dt convert needs transformers, which is not "
                                f"installed ({e}); install it with {INSTALL_HINT}") from e
    return transformers


@dataclass
class ConvertConfig:
    """Convert a checkpoint between Hugging Face and offline-dt (``offline-dt convert``):
    ``--from-hf SRC --to RUN_DIR`` imports, ``--checkpoint RUN --to-hf DIR`` exports."""

    from_hf: str | None = field(default=None, metadata={
        "help": "HF DecisionTransformerModel to import: a local directory (config.json + "
                "model.safetensors or pytorch_model.bin) or a hub id (needs the network)"})
    to: Path | None = field(default=None, metadata={
        "help": "run directory the imported checkpoint is written to (with --from-hf)"})
    checkpoint: Path | None = field(default=None, metadata={
        "help": "offline-dt checkpoint file or run directory to export (dt or bc)"})
    to_hf: Path | None = field(default=None, metadata={
        "help": "directory the HF model is written to (with --checkpoint)"})
    env_id: str | None = field(default=None, metadata={
        "help": "import: the Gymnasium env the model acts in; unset: the directory's "
                f"{FACTS_NAME}"})
    state_mean: list[float] | None = field(default=None, metadata={
        "help": "import: observation mean the model's states were normalised with (HF's "
                f"model card); unset: {FACTS_NAME}'s, else zeros"})
    state_std: list[float] | None = field(default=None, metadata={
        "help": f"import: observation std (divides); unset: {FACTS_NAME}'s, else ones"})
    returns_scale: float | None = field(default=None, metadata={
        "help": "import: returns-to-go are divided by this (HF's example: 1000); required "
                f"unless {FACTS_NAME} holds it"})
    context_length: int | None = field(default=None, metadata={
        "help": f"import: K, timesteps per window (HF's example: 20); unset: {FACTS_NAME}'s, "
                "else 20"})
    action_units: Literal["env", "scaled"] | None = field(default=None, metadata={
        "help": "import: the model's actions are env actions ('env', HF's example) or [-1, 1] "
                f"scaled from the env's bounds ('scaled', offline-dt's); unset: {FACTS_NAME}'s, "
                "else env"})
    ref_min_score: float | None = field(default=None, metadata={
        "help": "import: random-agent reference return (normalized scores)"})
    ref_max_score: float | None = field(default=None, metadata={
        "help": "import: expert reference return (normalized scores; a default target)"})
    dropout: float | None = field(default=None, metadata={
        "help": "import: our single dropout rate when HF's resid/embd/attn_pdrop differ "
                "(evaluation never uses it)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output"})

    def validate(self) -> None:
        """Raises ValueError: not exactly one direction is given, or a bad returns scale."""
        imports = self.from_hf is not None or self.to is not None
        exports = self.checkpoint is not None or self.to_hf is not None
        if imports == exports or (imports and (self.from_hf is None or self.to is None)) or (
                exports and (self.checkpoint is None or self.to_hf is None)):
            raise ValueError("ConvertConfig: give either --from-hf SRC --to RUN_DIR (import) or "
                             "--checkpoint RUN --to-hf DIR (export)")
        if self.returns_scale is not None and not self.returns_scale > 0:
            raise ValueError(f"ConvertConfig.returns_scale must be > 0, found "
                             f"{self.returns_scale}")


def convert(cfg: ConvertConfig) -> Path:
    """Run the conversion ``cfg`` asks for; returns what was written (the run directory or the
    HF directory). Raises as :meth:`ConvertConfig.validate`, :func:`import_hf` and
    :func:`export_hf`."""
    cfg.validate()
    if cfg.from_hf is not None:
        return import_hf(cfg)
    return export_hf(Path(cfg.checkpoint), Path(cfg.to_hf), overwrite=cfg.overwrite)


# ------------------------------------------------------------------------------------ import
def _hf_files(src: str) -> Path:
    """The local directory of ``src``: itself, or a hub id's snapshot (config and weights).

    Raises:
        FileNotFoundError: ``src`` is neither a directory nor a downloadable hub id.
    """
    path = Path(src)
    if path.is_dir():
        return path
    import_transformers()
    from huggingface_hub import snapshot_download

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:  # the hub client retries for about 30 s without network; one 5 s try instead
        socket.create_connection((host, 443), timeout=5.0).close()
    except OSError as e:
        raise FileNotFoundError(f"--from-hf {src}: not a local directory, and the Hugging Face "
                                f"hub ({host}:443) is unreachable ({e}); pass a directory "
                                f"save_pretrained wrote") from None
    try:
        return Path(snapshot_download(src, allow_patterns=[
            "config.json", "model.safetensors", "pytorch_model.bin", FACTS_NAME]))
    except Exception as e:  # offline, unknown repo, auth: the hub raises many types
        raise FileNotFoundError(f"--from-hf {src}: not a local directory, and downloading it "
                                f"from the Hugging Face hub failed ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}); pass a "
                                f"directory save_pretrained wrote") from None


def read_hf_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` (preferred) or ``pytorch_model.bin`` in
    ``directory``, loaded safely (safetensors, or ``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: neither file is there (a sharded checkpoint is named as such).
        ValueError: the file is unreadable.
    """
    st, binary = directory / "model.safetensors", directory / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
        if binary.is_file():
            return torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors' and torch's errors for a damaged file
        raise ValueError(f"{directory}: its weights are unreadable ({type(e).__name__}: {e})"
                         ) from None
    sharded = sorted(p.name for p in directory.glob("*.index.json"))
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin"
                            + (f" (sharded checkpoints, {sharded}, are not read)" if sharded
                               else ""))


def _facts(directory: Path, cfg: ConvertConfig) -> dict[str, Any]:
    """The normaliser and run facts of an import: ``cfg``'s, else the directory's
    :data:`FACTS_NAME`, else the defaults of :class:`ConvertConfig`'s help.

    Raises:
        ValueError: no env id or no returns scale is known.
    """
    saved: dict[str, Any] = {}
    if (directory / FACTS_NAME).is_file():
        saved = json.loads((directory / FACTS_NAME).read_text())
    names = ("env_id", "state_mean", "state_std", "returns_scale", "context_length",
             "action_units", "ref_min_score", "ref_max_score")
    facts = {k: getattr(cfg, k) if getattr(cfg, k) is not None else saved.get(k) for k in names}
    for key, flag in (("env_id", "--env-id"), ("returns_scale", "--returns-scale")):
        if facts[key] is None:
            raise ValueError(f"--from-hf {cfg.from_hf}: {flag} is required (HF checkpoints do "
                             f"not store it and {directory / FACTS_NAME} does not exist or "
                             f"lacks {key!r})")
    facts["context_length"] = int(facts["context_length"] or 20)
    facts["action_units"] = facts["action_units"] or "env"
    return facts


def _our_config(hf: dict[str, Any], obs_dim: int, act_dim: int, facts: dict[str, Any],
                dropout: float | None, source: str) -> DTConfig:
    """Our ``DTConfig`` of an HF config (its ``to_dict()``).

    Raises:
        ValueError: what :func:`hf_config_problems` finds, the env's spaces do not fit, or
            HF's dropout rates differ and ``dropout`` is None.
    """
    problems = hf_config_problems(hf)
    if (int(hf["state_dim"]), int(hf["act_dim"])) != (obs_dim, act_dim):
        problems.append(f"state_dim={hf['state_dim']}, act_dim={hf['act_dim']} do not fit env "
                        f"{facts['env_id']}'s observation width {obs_dim} and action width "
                        f"{act_dim}")
    rates = {float(hf.get(k, 0.1)) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if dropout is None and len(rates) > 1:
        problems.append(f"resid_pdrop, embd_pdrop, attn_pdrop differ ({sorted(rates)}); ours "
                        f"has one rate: pass --dropout")
    if problems:
        raise ValueError(f"{source}: cannot be reproduced exactly by offline-dt's Decision "
                         f"Transformer: " + "; ".join(problems))
    return DTConfig(obs_dim=obs_dim, act_dim=act_dim, context_length=facts["context_length"],
                    max_timestep=int(hf["max_ep_len"]), embed_dim=int(hf["hidden_size"]),
                    n_layer=int(hf["n_layer"]), n_head=int(hf["n_head"]),
                    dropout=rates.pop() if dropout is None else float(dropout),
                    activation=HF_ACTIVATIONS[hf["activation_function"]],
                    action_tanh=bool(hf.get("action_tanh", True)))


def _normalizer(facts: dict[str, Any], obs_dim: int, action_space: Any) -> Normalizer:
    """The imported run's normaliser (``facts`` of :func:`_facts`).

    Raises:
        ValueError: a state mean/std of the wrong width, or a std not > 0.
    """
    mean = np.zeros(obs_dim) if facts["state_mean"] is None else np.asarray(facts["state_mean"])
    std = np.ones(obs_dim) if facts["state_std"] is None else np.asarray(facts["state_std"])
    for name, v in (("--state-mean", mean), ("--state-std", std)):
        if v.shape != (obs_dim,):
            raise ValueError(f"{name}: expected {obs_dim} values (the env's observation "
                             f"width), found {v.size}")
    if not (std > 0).all():
        raise ValueError(f"--state-std: every value must be > 0, found {std.tolist()}")
    if facts["action_units"] == "env":
        low, high = -np.ones(action_space.shape), np.ones(action_space.shape)
    else:
        low, high = action_space.low, action_space.high
    return Normalizer(mean.astype(np.float32), std.astype(np.float32),
                      float(facts["returns_scale"]), np.asarray(low, np.float32).ravel(),
                      np.asarray(high, np.float32).ravel())


def import_hf(cfg: ConvertConfig) -> Path:
    """Write an HF ``DecisionTransformerModel`` as an offline-dt run directory ``cfg.to``
    (``checkpoint.pt``, method ``dt``, step 0, a fresh optimizer) that ``offline-dt evaluate``
    accepts; module docstring.

    Raises:
        HFDependencyError: transformers is not installed.
        FileNotFoundError: no HF checkpoint at ``cfg.from_hf``.
        FileExistsError: ``cfg.to`` holds a checkpoint and ``cfg.overwrite`` is False.
        ValueError: the config cannot be reproduced exactly (every reason named), the weights
            do not fit, the env's spaces do not fit, a normaliser value is missing or bad.
    """
    tf = import_transformers()
    directory = _hf_files(str(cfg.from_hf))
    out = Path(cfg.to) / CHECKPOINT_NAME
    check_writable(out, cfg.overwrite, "checkpoint")
    hf = tf.DecisionTransformerConfig.from_pretrained(str(directory)).to_dict()
    facts = _facts(directory, cfg)
    obs_space, act_space = env_spaces(facts["env_id"])
    if not (hasattr(act_space, "low") and len(obs_space.shape or ()) == 1):
        raise ValueError(f"--env-id {facts['env_id']}: HF's model needs a flat Box observation "
                         f"and a Box action space, found {obs_space} and {act_space}")
    obs_dim, act_dim = int(obs_space.shape[0]), int(np.prod(act_space.shape))
    model_cfg = _our_config(hf, obs_dim, act_dim, facts, cfg.dropout, str(directory))
    net = get_method("dt").build(model_cfg)
    net.load_state_dict(hf_to_ours(read_hf_state_dict(directory), model_cfg.n_layer))
    normalizer = _normalizer(facts, obs_dim, act_space)
    train_cfg = TrainConfig(env_id=facts["env_id"], method="dt", run_dir=out.parent,
                            context_length=model_cfg.context_length,
                            embed_dim=model_cfg.embed_dim, n_layer=model_cfg.n_layer,
                            n_head=model_cfg.n_head, dropout=model_cfg.dropout,
                            activation=model_cfg.activation, max_timestep=model_cfg.max_timestep,
                            rtg_scale=normalizer.rtg_scale, steps=1)
    optimizer, scheduler = make_optimizer(net, train_cfg)
    info = {"env_id": facts["env_id"], "dataset": "", "dataset_id": "",
            "source": f"huggingface {cfg.from_hf}", "checksum": None, "best_return": None,
            "ref_min_score": facts["ref_min_score"], "ref_max_score": facts["ref_max_score"],
            "obs_dim": obs_dim, "act_dim": act_dim, "discrete": False,
            "observation_space": json.loads(space_to_json(obs_space)),
            "action_space": json.loads(space_to_json(act_space)),
            "longest_episode": model_cfg.max_timestep, "rtg_scale": normalizer.rtg_scale,
            "action_units": facts["action_units"],
            "hf_config": {k: v for k, v in hf.items() if isinstance(v, int | float | str | bool)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, checkpoint_payload(
        step=0, model=net, optimizer=optimizer, scheduler=scheduler,
        rng={"torch": torch.get_rng_state()}, normalizer=normalizer, train_config=train_cfg,
        model_config=model_cfg, dataset_info=info))
    log.info("imported %s into %s", cfg.from_hf, out)
    return out.parent


# ------------------------------------------------------------------------------------ export
def export_hf(checkpoint: Path, out: Path, overwrite: bool = False) -> Path:
    """Write the ``dt``/``bc`` checkpoint ``checkpoint`` as an HF model directory ``out``
    (``save_pretrained``: ``config.json`` + ``model.safetensors``), with :data:`FACTS_NAME`
    and a model card (``README.md``).

    Raises:
        HFDependencyError: transformers is not installed.
        FileExistsError: ``out`` exists and is not empty, and ``overwrite`` is False.
        ValueError: what HF's model cannot express (:func:`our_config_problems`, every
            reason named), or the checkpoint's network has other parts than the DT's.
    """
    tf = import_transformers()
    ckpt = load_checkpoint(checkpoint)
    mc, method = ckpt.model_config, ckpt.train_config.method
    problems = our_config_problems(mc, method)
    if problems:
        raise ValueError(f"{checkpoint}: HF's DecisionTransformerModel cannot express it: "
                         + "; ".join(problems))
    check_writable(Path(out), overwrite, "HF model directory", kind="dir",
                   ours=lambda p: (p / "config.json").is_file())
    hf_cfg = tf.DecisionTransformerConfig(
        state_dim=mc.obs_dim, act_dim=mc.act_dim, hidden_size=mc.embed_dim,
        max_ep_len=mc.max_timestep, action_tanh=mc.action_tanh, n_layer=mc.n_layer,
        n_head=mc.n_head, n_inner=None, activation_function=OUR_ACTIVATIONS[mc.activation],
        resid_pdrop=mc.dropout, embd_pdrop=mc.dropout, attn_pdrop=mc.dropout,
        n_positions=max(1024, 3 * mc.context_length), bos_token_id=None, eos_token_id=None)
    model = tf.DecisionTransformerModel(hf_cfg)
    model.load_state_dict(ours_to_hf(ckpt.model.state_dict(), model.state_dict(), mc.n_layer))
    model.save_pretrained(str(out))
    norm, info = ckpt.normalizer, ckpt.dataset_info
    facts = {"env_id": info.get("env_id"), "state_mean": norm.state_mean.tolist(),
             "state_std": norm.state_std.tolist(), "returns_scale": norm.rtg_scale,
             "context_length": mc.context_length, "action_units": "scaled",
             "action_low": norm.action_low.tolist(), "action_high": norm.action_high.tolist(),
             "ref_min_score": info.get("ref_min_score"),
             "ref_max_score": info.get("ref_max_score"), "method": method,
             "dataset": info.get("dataset") or info.get("source"), "step": ckpt.step}
    (Path(out) / FACTS_NAME).write_text(json.dumps(facts, indent=2) + "\n")
    (Path(out) / "README.md").write_text(model_card(facts))
    return Path(out)


def model_card(facts: dict[str, Any]) -> str:
    """The exported directory's ``README.md``: what the model was trained on and how to feed
    it (``facts`` as :data:`FACTS_NAME` holds them)."""
    bc = facts["method"] == "bc"
    return "\n".join([
        "---", "library_name: transformers", "tags: [decision-transformer, offline-rl, "
        "offline-dt]", "---", "",
        f"# Decision Transformer ({facts['method']}) for {facts['env_id']}", "",
        f"Exported by offline-dt (`offline-dt convert --to-hf`) from a checkpoint trained "
        f"{facts['step']} steps on `{facts['dataset']}`.", "",
        "Load it with `transformers.DecisionTransformerModel.from_pretrained(DIR)`. Feed it, as "
        "offline-dt does:", "",
        "- states: `(s - state_mean) / state_std` (`offline-dt.json`);",
        "- returns-to-go: " + ("zeros (a `bc` network is trained without them);" if bc else
                               f"in reward units divided by `returns_scale` = "
                               f"{facts['returns_scale']:g};"),
        f"- the last K = {facts['context_length']} timesteps (timesteps from 0);",
        "- actions: scaled to [-1, 1] from the env's bounds, `a = 2 (a_env - low) / (high - "
        "low) - 1` (`action_low`, `action_high`); the model's action predictions are on that "
        "scale too.", "",
        "Its `predict_state` and `predict_return` heads are zero (offline-dt predicts actions "
        "only) and its position table `wpe` is zero (the DT feeds position 0).", ""])
