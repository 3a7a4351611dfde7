"""Reproduce presets: the ``paper-gpu`` preset trains the DT paper's own gym config; the
``quick`` preset's rows (``Preset.methods``) and datasets of its own."""

from __future__ import annotations

import pytest

from offline_dt.study import d3rlpy_io
from offline_dt.study.d3rlpy_io import MissingDependencyError
from offline_dt.study.jobs import all_methods, reproduce_methods
from offline_dt.study.pipeline import job_specs, plan
from offline_dt.study.presets import PRESETS, apply_overrides
from offline_dt.study.reference import REFERENCE_METHODS
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


def _plan(tmp_path, preset: str, methods=None):
    return plan("Pendulum-v1", preset, tmp_path, "cpu", None, None, 2, methods, ())


def test_quick_runs_its_own_rows_and_methods_overrides_them(tmp_path) -> None:
    assert _plan(tmp_path, "quick").methods == ["dt", "bc", "random", "behaviour"]
    assert _plan(tmp_path, "quick", ["qt", "random"]).methods == ["qt", "random"]
    # a preset without rows of its own runs every method reproduce runs by default
    assert PRESETS["paper"].methods is None
    assert _plan(tmp_path, "paper").methods == reproduce_methods(None, "Pendulum-v1")
    specs = job_specs(_plan(tmp_path, "quick"), {lv: tmp_path / f"{lv}.hdf5" for lv in
                                                 ("random", "medium", "medium-replay",
                                                  "full-replay", "expert", "medium-expert")},
                      {})
    trained = [s for s in specs if s.method in ("dt", "bc")]
    assert {s.method for s in specs} == {"dt", "bc", "random", "behaviour"}
    assert len(trained) == 12  # dt and bc on each of the six levels, one seed


def test_every_presets_rows_are_known_methods() -> None:
    for p in PRESETS.values():
        assert p.methods is None or set(p.methods) <= set(all_methods()), p.name


def test_preset_rows_are_checked_and_lose_reference_rows_without_d3rlpy(monkeypatch) -> None:
    with pytest.raises(ValueError, match="preset methods: unknown \\['cql'\\]"):
        reproduce_methods(None, "Pendulum-v1", ("dt", "cql"))

    def missing():
        raise MissingDependencyError("no d3rlpy")

    monkeypatch.setattr(d3rlpy_io, "import_d3rlpy", missing)
    # from a preset's rows as from the default set: left out with a warning, not refused
    assert reproduce_methods(None, "Pendulum-v1", ("dt", "iql", "random")) == ["dt", "random"]
    assert not set(REFERENCE_METHODS) & set(reproduce_methods(None, "Pendulum-v1"))
    with pytest.raises(MissingDependencyError):
        reproduce_methods(["iql"], "Pendulum-v1", ("dt",))


def test_quick_generates_datasets_of_its_own() -> None:
    """quick's smaller behaviour agent and datasets live in a data_dir no other preset uses, so
    they never meet (and are never refused by) the default datasets of `offline-dt generate`
    and the paper preset."""
    from datagen.agents import zoo_hyperparams
    from datagen.config import GenerateConfig

    quick, paper = PRESETS["quick"], PRESETS["paper"]
    cfg = apply_overrides(GenerateConfig(), quick.generate, "preset generate")
    assert cfg != apply_overrides(GenerateConfig(), paper.generate, "preset generate")
    assert quick.data_dir is not None
    assert quick.data_dir not in {p.data_dir for p in PRESETS.values() if p is not quick}
    zoo_steps, _ = zoo_hyperparams("SAC", "Pendulum-v1")  # paper's agent: the zoo budget
    assert paper.generate.get("agent_steps") is None and cfg.agent_steps < zoo_steps
