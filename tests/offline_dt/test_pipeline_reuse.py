"""Reuse rules of ``offline_dt.pipeline`` (end to end: tests/test_pipeline_smoke.py)."""

from __future__ import annotations

import json

from offline_dt.config import to_jsonable
from offline_dt.evaluate import EvalConfig
from offline_dt.pipeline import _same_eval_config


def _saved(cfg: EvalConfig) -> dict:
    return json.loads(json.dumps(to_jsonable(cfg)))


def test_eval_config_reuse_tolerates_fields_added_at_their_default():
    cfg = EvalConfig(checkpoint="run", episodes=200, seed=1)
    saved = _saved(cfg)
    assert _same_eval_config(saved, cfg)
    older = {k: v for k, v in saved.items() if k != "kv_cache"}  # written before the field
    assert _same_eval_config(older, cfg)
    assert not _same_eval_config(older, EvalConfig(checkpoint="run", episodes=200, seed=1,
                                                   kv_cache=True))
    assert not _same_eval_config({**saved, "episodes": 50}, cfg)
    assert not _same_eval_config(None, cfg)
