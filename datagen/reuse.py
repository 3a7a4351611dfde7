"""Reuse or regenerate: whether an existing output was made with this configuration.

Every dataset stores a fingerprint of the settings that shape it (:func:`fingerprint`); a
level whose HDF5 file and Minari dataset both match is reused, a missing one is written, and
one written with another configuration is refused unless ``overwrite`` covers its level
(:func:`preflight`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datagen.config import GenerateConfig, level_steps, overwritten_levels
from datagen.recipes import Recipe
from offline_dt.data.d4rl import check_hdf5_target, d4rl_filename, read_hdf5
from offline_dt.data.dataset import DatasetError
from offline_dt.data.minari_io import check_minari_target, minari_dataset_id, minari_root

__all__ = ["existing_state", "fingerprint", "preflight"]


def fingerprint(cfg: GenerateConfig, level: str, agent_steps: int,
                recipe: Recipe | None = None) -> str:
    """Hash of every setting that shapes the level's data and metadata: for a scripted
    ``recipe`` its name, version and settings instead of the behaviour agent's."""
    if recipe is not None:
        key: dict = {"env_id": cfg.env_id, "level": level, "seed": cfg.seed,
                     "steps": level_steps(cfg, level), "ref_episodes": cfg.ref_episodes,
                     "num_envs": cfg.num_envs, "recipe": recipe.name,
                     "recipe_version": recipe.version, "settings": recipe.settings()}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    key = {"env_id": cfg.env_id, "level": level, "seed": cfg.seed,
           "steps": level_steps(cfg, level), "agent_steps": agent_steps,
           "checkpoint_every": cfg.checkpoint_every, "eval_episodes": cfg.eval_episodes,
           "ref_episodes": cfg.ref_episodes, "medium_target_score": cfg.medium_target_score,
           "num_envs": cfg.num_envs}
    if level == "random":
        key["random_actions"] = "default_rng([seed, env_index]) per sub-env"
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def existing_state(hdf5: Path, mdir: Path, fp: str) -> tuple[str, str]:
    """(hdf5 state, minari state), each "missing", "match" or a mismatch description."""
    if not hdf5.exists():
        h = "missing"
    else:
        try:
            ds = read_hdf5(hdf5)
            found = ds.metadata.get("fingerprint")
            h = "match" if found == fp else f"config fingerprint {found!r} != {fp!r}"
        except (DatasetError, OSError) as e:
            h = f"unreadable ({e})"
    meta = mdir / "data" / "metadata.json"
    if not mdir.exists():
        m = "missing"
    elif not meta.is_file():
        m = "incomplete (no data/metadata.json)"
    else:
        try:
            desc = json.loads(meta.read_text()).get("description", "")
        except (OSError, ValueError) as e:
            desc = f"unreadable ({e})"
        m = "match" if f"fingerprint={fp}" in desc else "written with another config"
    return h, m


def preflight(cfg: GenerateConfig, levels: list[str], ns: str, agent_steps: int,
              paths: dict[str, dict[str, Path]], recipe: Recipe | None = None
              ) -> dict[str, tuple[bool, bool]]:
    """level → (write hdf5, write minari); fills ``paths`` (level → {"hdf5", "minari"}).

    Raises:
        FileExistsError: an output exists with another config and ``overwrite`` does not
            name its level, or an output path to be written holds something offline-dt did
            not write (a directory, a foreign file or Minari dataset).
    """
    mroot = minari_root(cfg.minari_root)
    todo: dict[str, tuple[bool, bool]] = {}
    rewrite = overwritten_levels(cfg)
    for level in levels:
        fp = fingerprint(cfg, level, agent_steps, recipe)
        hdf5 = Path(cfg.out_dir) / d4rl_filename(ns, level)
        mdir = mroot / minari_dataset_id(ns, level)
        paths[level] = {"hdf5": hdf5, "minari": mdir}
        if level in rewrite:
            todo[level] = (True, True)
            continue
        h, m = existing_state(hdf5, mdir, fp)
        for path, state in ((hdf5, h), (mdir, m)):
            if state not in ("missing", "match"):
                raise FileExistsError(
                    f"{path} exists but does not match this configuration ({state}); "
                    f"pass --overwrite {level} (overwrite=[{level!r}]) to regenerate it"
                )
        todo[level] = (h != "match", m != "match")
    for level, (write_h, write_m) in todo.items():  # nothing to be replaced but our own
        if write_h:
            check_hdf5_target(paths[level]["hdf5"])
        if write_m:
            check_minari_target(paths[level]["minari"])
    return todo
