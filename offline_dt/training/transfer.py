"""Few-shot transfer of a multi-task checkpoint to a task it was not trained on:
``offline-dt train --method mgdt --init-from RUN --dataset SMALL`` (``TrainConfig.init_from``).

The Multi-Game Decision Transformer is fine-tuned on a small share of a held-out game's data
(Lee et al. 2022, "Multi-Game Decision Transformers": 1% of the data of each held-out game),
and GATO on a few demonstrations of a held-out task (Reed et al. 2022, "A Generalist Agent");
both start from the multi-task weights. Here a transfer run is an ordinary training run
(the one loop, its logs, checkpoints and exact resume) whose start is the checkpoint's:

- The datasets of ``--dataset`` (one, or several comma-separated, each of one env) are the
  new task's. Each env is one the checkpoint knows (its ``dataset_info["suite"]``) or a new
  one, added after the checkpoint's envs.
- The network is the checkpoint's: its method, shape and method options (:data:`SOURCE_FIELDS`
  replace the config's own), its envs and the new ones (``DTConfig.tasks``). Every weight is
  the checkpoint's (:func:`load_source`). A per-env table, a tensor whose first dimension is
  the env (an env embedding, per-env buffers), gains a row per new env: a learned
  parameter's new row is the mean of the known envs' rows, a buffer's is what the method fits
  on the new data (``Method.fit``: mgdt's return range, gato's prompt).
- An env the checkpoint knows keeps its normaliser, return range and prompt (what the
  network's inputs meant when it was trained); a new env's are fitted on its data.
- The optimizer and schedule start fresh (warmup included), as for a run from scratch, and
  the run counts its own ``steps``; every batch comes from the new datasets.
- A new env must fit the checkpoint's tables: observations no wider than the widest it knows,
  Box actions no wider than its widest, no more Discrete actions than its most
  (``offline_dt.data.suite.widths``; mgdt's padded embedding and heads and gato's vocabulary
  and local positions are sized by them), and episodes no longer than its ``max_timestep``.
  Otherwise the run is refused before anything is written, naming the sizes; growing the
  tables is not built. Dict and image observations are refused as for any run of the method.

The run's checkpoint knows every env, the checkpoint's and the new ones, so ``offline-dt
evaluate --checkpoint RUN --env-id ENV`` acts in the new env, and in the old ones (what the
fine-tune kept of them). On resume the run's own checkpoint is read (the source is not needed)
and each dataset is checked against the checksum it recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from offline_dt.data.suite import Suite, normalizer_from_json, suite_members, widths
from offline_dt.data.windows import Normalizer
from offline_dt.methods import METHODS
from offline_dt.training.checkpoint import CHECKPOINT_NAME, read_checkpoint
from offline_dt.training.configs import from_dict
from offline_dt.training.run_data import suite_datasets, suite_member
from offline_dt.training.train_config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["SOURCE_FIELDS", "load_source", "source_config", "transfer_data"]

#: The config fields a transfer run takes from its checkpoint (the network's shape and the
#: method's options); the method must be the checkpoint's.
SOURCE_FIELDS = ("context_length", "embed_dim", "n_layer", "n_head", "activation",
                 "max_timestep", "attention", "band_tokens", "segment_length", "method_options")


def _start_path(cfg: TrainConfig) -> Path | str:
    """The checkpoint that fixes the run: its own on resume, else ``cfg.init_from``."""
    own = Path(cfg.run_dir) / CHECKPOINT_NAME
    return own if cfg.resume and own.is_file() else str(cfg.init_from)


def source_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with :data:`SOURCE_FIELDS` taken from the checkpoint ``cfg.init_from`` (on
    resume, from the run's own; the differences from ``cfg`` are logged).

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: the checkpoint is not a multi-task one (trained on one dataset, or by a
            method that is not multi-task), or was trained with another method than
            ``cfg.method``.
    """
    path, payload = read_checkpoint(_start_path(cfg), "cpu")
    base = from_dict(TrainConfig, json.loads(payload["train_config"]))
    info = json.loads(payload["dataset_info"])
    cls = METHODS.get(base.method)
    if cls is None or not cls.multi_task or "suite" not in info:
        multi = [m for m, c in METHODS.items() if c.multi_task]
        raise ValueError(f"TrainConfig.init_from: {path} was trained with method "
                         f"{base.method!r} on {info.get('source', 'one dataset')}, not a "
                         f"multi-task checkpoint; transfer starts from a checkpoint of a "
                         f"multi-task method ({multi}), whose network has room for more envs")
    if base.method != cfg.method:
        raise ValueError(f"TrainConfig.init_from: {path} is a {base.method} checkpoint and "
                         f"transfer trains its method; pass --method {base.method} (found "
                         f"{cfg.method!r})")
    fixed = {k: getattr(base, k) for k in SOURCE_FIELDS}
    changed = {k: v for k, v in fixed.items() if getattr(cfg, k) != v}
    if changed:
        log.info("init_from %s: the network's shape and options are the checkpoint's: %s",
                 path, ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    return dataclasses.replace(cfg, **fixed)


def _check_fits(tasks: list[dict[str, Any]], source_tasks: list[dict[str, Any]],
                where: Path | str) -> None:
    """Raises ValueError: the widths of ``tasks`` exceed those of ``source_tasks`` (module
    docstring), naming every env's sizes and the checkpoint's."""
    have, need = widths(source_tasks), widths(tasks)
    if need == have:
        return

    def sizes(t: dict[str, Any]) -> str:
        act = f"Discrete({t['act_dim']})" if t["discrete"] else f"Box({t['act_dim']})"
        return f"{t['env_id']} (observation {t['obs_dim']}, action {act})"
    new = [sizes(t) for t in tasks[len(source_tasks):]]
    raise ValueError(
        f"TrainConfig.init_from: {where}: the new env(s) {'; '.join(new)} do not fit the "
        f"checkpoint's tables, sized for its envs {[sizes(t) for t in source_tasks]}: widest "
        f"observation {have[0]}, widest Box action {have[1]}, most Discrete actions {have[2]} "
        f"(needed: {need[0]}, {need[1]}, {need[2]}); a new env must fit them (growing the "
        f"tables is not built): train the multi-task checkpoint on a suite with an env this "
        f"wide")


def transfer_data(cfg: TrainConfig, payload: dict[str, Any], new_run: bool,
                  where: Path | str) -> tuple[Suite, Normalizer, dict[str, Any]]:
    """The transfer run's data: a :class:`~offline_dt.data.suite.Suite` of the datasets of
    ``cfg.dataset`` whose network envs (``Suite.network_tasks``) are those of ``payload`` (the
    source checkpoint's for a new run, ``new_run``; the run's own on resume) with the new envs
    appended; each known env's normaliser is the checkpoint's, a new one's fitted. Returns
    (suite, its first dataset's normaliser, the run's facts: every env's entry in ``suite``,
    the datasets' in place of the checkpoint's for the envs they hold, and ``transfer``:
    ``source``, ``source_env_ids``, ``new_env_ids``, ``trained_env_ids``).

    Raises:
        ValueError: the new envs do not fit the checkpoint (:func:`_check_fits`); an episode
            longer than ``cfg.max_timestep``; on resume, a dataset whose checksum differs from
            the run's or whose env the run does not know.
        DatasetError: a dataset that does not fit its env.
    """
    info = json.loads(payload["dataset_info"])
    members = [dict(m) for m in info["suite"]]
    source_tasks = [dict(t) for t in json.loads(payload["model_config"])["tasks"]]
    tasks = [dict(t) for t in source_tasks]
    names = suite_members(cfg.dataset) or [cfg.dataset]
    known = [m["env_id"] for m in members]
    loaded = suite_datasets(cfg, names)
    norms, indices = [], []
    for name, env, ds in loaded:
        if env not in known and not new_run:
            raise ValueError(f"{where}: dataset {name} is of env {env}; the run was trained "
                             f"on {known}")
        if env in known:
            i = known.index(env)
            if not new_run and members[i].get("checksum") != ds.checksum():
                raise ValueError(f"{where}: dataset {name} has checksum {ds.checksum()[:12]}…, "
                                 f"the checkpoint was trained on "
                                 f"{str(members[i].get('checksum'))[:12]}…")
            norm = normalizer_from_json(members[i]["normalizer"])
        else:
            i, norm = len(tasks), Normalizer.fit(ds, cfg.rtg_scale)
            known.append(env)
            members.append({})
            tasks.append({"env_id": env, "obs_dim": int(ds.obs_dim),
                          "act_dim": int(ds.act_dim), "discrete": bool(ds.discrete)})
        if new_run:
            members[i] = suite_member(cfg, name, env, ds, norm, i)
        norms.append(norm)
        indices.append(i)
    _check_fits(tasks, source_tasks, where)
    longest = max(int(ds.episode_lengths.max()) for *_, ds in loaded)
    if longest > cfg.max_timestep:
        raise ValueError(f"TrainConfig.init_from: {where}: an episode of {longest} steps is "
                         f"longer than the checkpoint's timestep table (max_timestep "
                         f"{cfg.max_timestep})")
    suite = Suite(tuple(ds for *_, ds in loaded), tuple(env for _, env, _ in loaded),
                  tuple(norms), tuple(tasks), tuple(indices))
    if not new_run:
        return suite, norms[0], info
    return suite, norms[0], _run_info(cfg, suite, members, len(source_tasks), where, longest)


def _run_info(cfg: TrainConfig, suite: Suite, members: list[dict[str, Any]], n_source: int,
              where: Path | str, longest: int) -> dict[str, Any]:
    """A new transfer run's facts (:func:`transfer_data`)."""
    obs_w, box_w, _ = widths(suite.tasks())
    env_ids = [m["env_id"] for m in members]
    joined = "".join(members[suite.index(i)]["checksum"]
                     for i in range(len(suite.datasets))).encode()
    return {"suite": members, "env_ids": env_ids, "dataset": cfg.dataset, "dataset_id": "",
            "source": suite.source, "obs_dim": obs_w, "act_dim": box_w,
            "checksum": hashlib.sha256(joined).hexdigest(), "longest_episode": longest,
            "transfer": {"source": str(where), "source_env_ids": env_ids[:n_source],
                         "new_env_ids": env_ids[n_source:],
                         "trained_env_ids": list(suite.env_ids)}}


@torch.no_grad()
def load_source(net: nn.Module, payload: dict[str, Any]) -> None:
    """Load the checkpoint ``payload``'s networks into ``net``, a network of its envs and
    ``k`` new ones after them (module docstring): a tensor of the same shape is copied; a
    per-env table (first dimension the checkpoint's env count in ``payload``, ``net``'s env
    count in ``net``, every other dimension at least the checkpoint's) gets the checkpoint's
    rows in its leading corner, and its new rows are the mean of the checkpoint's for a
    parameter and left as they are (built, or fitted by ``Method.fit``) for a buffer.

    Raises:
        ValueError: a tensor missing on either side or of another shape (names the key).
    """
    src = payload["model"]
    own = net.state_dict()
    params = {k for k, _ in net.named_parameters()}
    e_src = len(json.loads(payload["model_config"])["tasks"])
    e_net = len(net.cfg.tasks)
    if set(src) != set(own):
        raise ValueError(f"TrainConfig.init_from: the checkpoint's networks do not fit: keys "
                         f"{sorted(set(src) ^ set(own))} are on one side only")
    for key, dst in own.items():
        s = src[key].to(dst.device)
        if s.shape == dst.shape:
            dst.copy_(s)
            continue
        if not (e_net > e_src and s.dim() == dst.dim() and s.shape[0] == e_src
                and dst.shape[0] == e_net
                and all(a <= b for a, b in zip(s.shape[1:], dst.shape[1:], strict=True))):
            raise ValueError(f"TrainConfig.init_from: {key} has shape {tuple(s.shape)} in the "
                             f"checkpoint, {tuple(dst.shape)} in this run's network")
        if key in params:  # a learned per-env row (an env embedding): the known envs' mean
            if s.shape[1:] != dst.shape[1:]:
                raise ValueError(f"TrainConfig.init_from: parameter {key} has shape "
                                 f"{tuple(s.shape)} in the checkpoint, {tuple(dst.shape)} here")
            dst[e_src:] = s.float().mean(0).to(dst.dtype)
        dst[(slice(0, e_src), *(slice(0, n) for n in s.shape[1:]))] = s
