"""Reproduce presets: the ``paper-gpu`` preset trains the DT paper's own gym config."""

from __future__ import annotations

from offline_dt.study.presets import PRESETS, apply_overrides
from offline_dt.training import TrainConfig

#: TrainConfig fields that make the network and its optimisation (the DT paper's Table 8).
SHAPE = ("embed_dim", "n_layer", "n_head", "context_length", "dropout", "activation",
         "learning_rate", "weight_decay", "batch_size", "grad_clip", "warmup_steps")


def preset_config(preset: str, method: str = "dt") -> TrainConfig:
    """The TrainConfig a preset's run of ``method`` starts from, as ``reproduce`` builds it."""
    p = PRESETS[preset]
    return apply_overrides(TrainConfig(dataset="data.hdf5", method=method),
                    {**p.train, **p.method_train.get(method, {})}, "preset train")


def test_paper_gpu_trains_train_defaults_the_papers_config() -> None:
    defaults = TrainConfig(dataset="data.hdf5")
    for method in ("dt", "bc"):
        cfg = preset_config("paper-gpu", method)
        assert {k: getattr(cfg, k) for k in SHAPE} == {k: getattr(defaults, k) for k in SHAPE}
        assert (cfg.steps, cfg.checkpoint_every, cfg.keep_checkpoints) == (15_000, 3_000, True)
        assert cfg.resolved(200).warmup_steps == 1_500  # min(10k, steps / 10)
    # what the paper preset shrinks, this one does not
    small = preset_config("paper")
    assert (small.embed_dim, small.n_layer, small.dropout) != (
        defaults.embed_dim, defaults.n_layer, defaults.dropout)


def test_paper_gpu_keeps_the_paper_presets_evaluation() -> None:
    gpu, paper = PRESETS["paper-gpu"], PRESETS["paper"]
    same = ("evaluate", "reference_steps", "seeds", "method_train", "method_candidates",
            "generate", "data_dir", "hook_episodes")
    assert {f: getattr(gpu, f) for f in same} == {f: getattr(paper, f) for f in same}
