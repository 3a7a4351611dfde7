"""Reproduce presets: named budgets, each a set of overrides of the stage dataclasses.

A preset (:class:`Preset`) overrides fields of ``GenerateConfig`` (datagen), ``TrainConfig``
(the one training loop) and ``EvalConfig`` (evaluation), and sets the reference rows' updates,
the seeds and the eval-hook size; :func:`apply_overrides` applies one set and refuses a field
the dataclass does not have.

* ``smoke``: seconds-sized everything (tiny datasets and SAC run, tiny model, a few hundred
  training steps, 40 reference updates, 1 seed, 10 test episodes). Exercises every stage; used
  by the tests.
* ``quick``: the Quickstart, sized for 10 minutes on 2 cores: its own datasets from a 5k-step
  SAC agent (``data/quick``), the rows dt, bc, random and behaviour (``Preset.methods``), the
  small DT for 1000 steps, 1 seed, 50 test episodes.
* ``paper``: the D4RL-sized default datasets (shared with ``offline-dt generate``), every
  row, 3 training seeds, 200 test episodes, a model and
  step budget shrunk from the paper's (Chen et al. 2021 gym config: embed 128, 3 layers,
  100k steps) to fit this 2-core CPU; see ``PRESETS["paper"].description``.
* ``hopper``, ``paper-band``, ``paper-long``, ``paper-gpu``: variants of ``paper`` (their
  ``description``).
* ``pointmaze``, ``minigrid``: the result pages of the scripted recipes' datasets (PointMaze
  umaze / medium / large, MiniGrid FourRooms; ``benchmarks/goal_pages.py``), ``paper``'s small
  DT and seeds with their own rows; ``pointmaze-tiny``, ``minigrid-tiny``: the same pages at
  toy size, seconds per run (a test runs them end to end).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A named budget: overrides of each stage's config dataclass.

    Attributes:
        name: preset name.
        description: what it is for and how long it takes here.
        generate: ``GenerateConfig`` field overrides.
        train: ``TrainConfig`` field overrides of every method of the training loop (dt, bc
            and qt alike; bc = same network, returns-to-go zeroed).
        method_train: per method, ``TrainConfig`` overrides on top of ``train`` (e.g. a
            method's ``method_options``).
        method_candidates: per method, named alternatives to its ``method_options`` (typed
            values of its options dataclass, changed over the run's: e.g. qt's η and β),
            each trained as a run of its own under ``<run dir>/candidates/<name>``; the
            method's evaluation chooses among its own checkpoint and these (with their
            targets and inference settings) on validation episodes
            (``EvalConfig.candidate_checkpoints``), so a training hyperparameter is tuned
            per dataset and seed the way a target return is, never on test episodes.
        evaluate: ``EvalConfig`` field overrides (test episodes, validation episodes, ...);
            the reference rows and baselines use its ``episodes``.
        reference_steps: gradient updates of each d3rlpy reference row (iql, mlp-bc,
            pct-bc; ``offline_dt.study.reference``).
        seeds: training seeds; seed k is also the evaluation seed of every method.
        hook_episodes: episodes per learning-curve evaluation (TrainConfig.eval_every).
        data_dir: sub-directory of ``root`` for datasets and agents (None: ``root`` itself,
            i.e. the standard ``data/d4rl``, ``data/minari``, ``data/agents``).
        methods: the rows ``reproduce`` runs when its caller names none (``--methods``
            overrides them); None: every method the registry puts in reproduce
            (``offline_dt.study.jobs.reproduce_methods``). A reference row listed here is left
            out with a warning without d3rlpy, as in the default set.
    """

    name: str
    description: str
    generate: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    method_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_candidates: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    reference_steps: dict[str, int] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    hook_episodes: int = 10
    data_dir: str | None = None
    methods: tuple[str, ...] | None = None


#: The small DT of the quick and paper presets (embed 64, 2 layers, K=20, no dropout, lr 3e-4,
#: warmup 500, batch 64): in short sweeps on our Pendulum expert data it was the cheapest
#: setting that reached the expert agent's level; dropout 0.1, one layer and K=10 were worse
#: or less stable. Measured returns belong in benchmarks/results, produced by benchmarks/.
_SMALL_DT: dict[str, Any] = {
    "embed_dim": 64, "n_layer": 2, "n_head": 1, "context_length": 20, "dropout": 0.0,
    "learning_rate": 3e-4, "warmup_steps": 500, "batch_size": 64, "log_every": 100,
}

#: Updates of the d3rlpy reference rows in the quick and paper presets. IQL: 10k updates,
#: the budget the issue measured (d3rlpy IQL defaults on 1000 random Pendulum episodes: -230.9
#: on our pendulum-random; 108 s on 2 cores unloaded, 27 s per 1k updates on one thread of
#: this 2-core machine while another job ran). BC (mlp-bc, pct-bc): 5k updates of batch 100
#: (3.4 s per 1k here under the same load): 2.5 passes over the 200k-step expert data, 25 over
#: %BC's 20k steps of pendulum-random, where a plain MLP BC has converged.
_REFERENCE_STEPS = {"iql": 10_000, "mlp-bc": 5_000, "pct-bc": 5_000}

#: qt's η and β, chosen per dataset and seed on validation episodes from its defaults (η 1,
#: β 10) and both terms off (η 0, β 0: the DT action loss, the critic still trained and its
#: candidate-return choice still offered at inference). The QT paper (Hu et al. 2024) sets η
#: per dataset; on our expert data every setting with a term on fell far below dt while
#: the terms-off run matched it (benchmarks/results/beyond_data.md), and on random data the
#: terms are what lifts qt above the data, so no single setting serves every level.
_QT_CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "qt": {"eta0-beta0": {"eta": 0.0, "beta": 0.0}}}

#: dt and bc keep their checkpoints (every 500 steps in the paper preset) and their evaluation
#: chooses one on validation episodes with the target: their validation returns swing by
#: hundreds between checkpoints 500 steps apart (the learning curves in
#: benchmarks/results/pendulum.md), so the last one is often not the best.
_CHOOSE_CHECKPOINT = {"dt": {"keep_checkpoints": True}, "bc": {"keep_checkpoints": True}}

#: The quick preset's datasets (its own, under ``data/quick``). The SAC agent's first 5k env
#: steps are those of the paper preset's 20k-step run with the same seed (SB3 does not look at
#: the budget), which by then has passed its medium checkpoint (the first at a normalized score
#: of 50, at 2.5k steps: the medium and medium-replay levels are the paper preset's policies)
#: and come close to its final return; the expert is the 5k-step agent, or its best checkpoint
#: where that is clearly better (``datagen.selection.select_expert``). A run's training cost is
#: its steps, not the dataset's size; smaller datasets only generate and load sooner.
_QUICK_DATA: dict[str, Any] = {"agent_steps": 5_000, "random_steps": 100_000,
                               "medium_steps": 50_000, "expert_steps": 50_000}

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        description="every stage at toy size (about 2 minutes on 2 CPU cores): tiny datasets "
                    "from a 400-step SAC run, a 1-layer 32-wide DT trained 150 steps, the "
                    "d3rlpy reference rows 40 updates, 1 seed, 5 validation and 10 test "
                    "episodes. Numbers are meaningless; it checks the plumbing.",
        generate={"random_steps": 2_000, "expert_steps": 1_000, "medium_steps": 1_000,
                  "agent_steps": 400, "checkpoint_every": 100, "ref_episodes": 4,
                  "eval_episodes": 2, "num_envs": 4},
        train={"steps": 150, "warmup_steps": 30, "learning_rate": 1e-3, "batch_size": 32,
               "context_length": 10, "embed_dim": 32, "n_layer": 1, "n_head": 1,
               "dropout": 0.0, "eval_every": 75, "log_every": 25, "checkpoint_every": 150},
        evaluate={"episodes": 10, "validation_episodes": 5},
        reference_steps={"iql": 40, "mlp-bc": 40, "pct-bc": 40},
        seeds=(0,),
        hook_episodes=3,
        method_candidates=_QT_CANDIDATES,
        data_dir="smoke",
    ),
    "quick": Preset(
        name="quick",
        description="the Quickstart, sized for at most 10 minutes on 2 CPU cores (measured: "
                    "benchmarks/results/quickstart.md): datasets of its own (data/quick: a "
                    "SAC behaviour agent trained 5k env steps instead of 20k, random 100k, "
                    "medium and expert 50k steps each), the rows dt, bc, random and behaviour "
                    "(--methods names others: qt, the reference rows), DT embed 64, 2 "
                    "layers, K=20, no dropout, 1000 steps (lr 3e-4, warmup 500), 1 seed, "
                    "targets chosen on 50 validation episodes, 50 test episodes.",
        generate=dict(_QUICK_DATA),
        train=dict(_SMALL_DT, steps=1000, eval_every=500, checkpoint_every=500),
        evaluate={"episodes": 50},
        reference_steps={"iql": 5_000, "mlp-bc": 2_000, "pct-bc": 2_000},
        seeds=(0,),
        hook_episodes=10,
        method_candidates=_QT_CANDIDATES,
        data_dir="quick",
        methods=("dt", "bc", "random", "behaviour"),
    ),
    "paper": Preset(
        name="paper",
        description="D4RL-sized datasets (random 1M, medium/expert 200k steps), 3 training "
                    "seeds, targets chosen on 50 validation episodes (dt and bc: with the "
                    "checkpoint, among those kept every 500 steps), 200 test episodes. The "
                    "paper's gym config (embed 128, 3 layers, K=20, 100k steps) would take "
                    "days on this 2-core CPU, so the DT is shrunk to embed 64, 2 layers, K=20, "
                    "no dropout, 2500 steps (lr 3e-4, warmup 500); see "
                    "benchmarks/results/pendulum.md for wall time. Reference rows (d3rlpy "
                    "defaults): IQL 10k updates, the budget the issue measured (-230.9 on "
                    "pendulum-random; 27 s per 1k updates on one loaded core here), MLP BC and "
                    "%BC 5k updates (3.4 s per 1k; 2.5 passes over the expert data).",
        generate={},
        train=dict(_SMALL_DT, steps=2500, eval_every=500, checkpoint_every=500),
        method_train=_CHOOSE_CHECKPOINT,
        evaluate={"episodes": 200},
        reference_steps=dict(_REFERENCE_STEPS),
        seeds=(0, 1, 2),
        hook_episodes=10,
        method_candidates=_QT_CANDIDATES,
    ),
}
PRESETS["hopper"] = dataclasses.replace(
    PRESETS["paper"], name="hopper",
    description="Hopper-v5 (MuJoCo; pip install -e '.[mujoco]'): the behaviour agent is SAC "
                "with rl-zoo's MuJoCo settings (learning_starts 10k, SB3 defaults otherwise) "
                "for 100k env steps instead of the zoo's 1M, which does not fit a 2-core CPU "
                "in a few hours (the score it reached is the expert row); random, medium and "
                "expert 200k steps each, medium-replay its replay buffer up to the medium "
                "checkpoint (checkpoints every 5k steps), the medium checkpoint the first to "
                "reach a normalized score of 30 (D4RL's hopper-medium scores about a third "
                "of its expert; at 50, this agent's first such checkpoint was its expert). "
                "The paper preset's small DT (embed "
                "64, 2 layers, K=20, 2500 steps), 3 training seeds, targets chosen on 50 "
                "validation episodes, 100 test episodes (up to 1000 steps each); the last "
                "checkpoint is evaluated (none kept).",
    generate={"agent_steps": 100_000, "checkpoint_every": 5_000, "random_steps": 200_000,
              "medium_target_score": 30.0},
    evaluate={"episodes": 100},
    hook_episodes=5,
    method_train={},
)
PRESETS["paper-band"] = dataclasses.replace(
    PRESETS["paper"], name="paper-band",
    description="the paper preset with a band-attention DT (--attention band: every token sees "
                "the last 60 tokens at every layer; the key/value cache it acts from is exact) "
                "trained on whole 200-step episodes, 8 per update (1600 predicted actions per "
                "update against the window DT's 1280), 2500 steps, its last checkpoint "
                "evaluated; the rest as in paper.",
    train=dict(_SMALL_DT, steps=2500, eval_every=500, checkpoint_every=500, attention="band",
               batch_size=8),
    method_train={})
PRESETS["paper-long"] = dataclasses.replace(
    PRESETS["paper"], name="paper-long",
    description="the paper preset with twice the training (5000 DT steps): the learning curves "
                "of the paper preset are still rising at 2500 steps; reference rows as in "
                "paper.",
    train=dict(_SMALL_DT, steps=5000, eval_every=1000, checkpoint_every=1000))

#: The DT paper's gym config: ``TrainConfig``'s own defaults (Chen et al. 2021, Table 8), only
#: the step budget and what is kept along the way set here.
PRESETS["paper-gpu"] = dataclasses.replace(
    PRESETS["paper"], name="paper-gpu",
    description="the paper preset with the DT paper's own gym config (offline-dt train's "
                "defaults: embed 128, 3 layers, 1 head, K=20, dropout 0.1, lr 1e-4, batch 64, "
                "warmup min(10k, steps/10)) at 15000 steps instead of its 100k, a checkpoint "
                "kept every 3000; for a GPU (--device cuda: fp32 with the loss captured as "
                "CUDA graphs; benchmarks/results/speed-cuda.md), where a run takes minutes. "
                "On 2 CPU cores a run takes hours (benchmarks/results/paper-budget-15k-cpu.md "
                "trained this config for pendulum-full-replay). Reference rows as in paper.",
    train={"steps": 15_000, "eval_every": 3_000, "checkpoint_every": 3_000, "log_every": 500})


def get_preset(name: str) -> Preset:
    """``PRESETS[name]``.

    Raises:
        ValueError: an unknown name (the known ones listed).
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, found {name!r}")
    return PRESETS[name]


def apply_overrides(obj: Any, overrides: dict[str, Any], what: str) -> Any:
    """``obj`` (a dataclass instance) with the fields of ``overrides`` replaced.

    Raises:
        ValueError: a key of ``overrides`` is no field of ``obj``'s class (``what`` says
            which preset part it came from).
    """
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown} for {type(obj).__name__}")
    return dataclasses.replace(obj, **overrides)


# ------------------------------------------------------------- the scripted recipes' pages
#: The rows of the PointMaze page (benchmarks/goal_pages.py): every method, the reference
#: rows on the flat view of the Dict observation; ``behaviour`` is the noisy controller.
_POINTMAZE_ROWS = ("dt", "bc", "qt", "iql", "mlp-bc", "pct-bc", "random", "behaviour")
#: The MiniGrid page's rows: Discrete actions, so no iql (Box actions only); qt with
#: ``eta 0`` (its Q term differentiates Q through the action); ``behaviour`` is the BFS expert.
_MINIGRID_ROWS = ("dt", "bc", "qt", "random", "behaviour")
#: qt on Discrete actions: the Q term off (eta 0), advantage weighting (beta) kept.
_QT_DISCRETE = {"qt": {"method_options": {"eta": 0.0}}}
#: The tiny pages' training: a few updates of smoke's tiny DT, no learning-curve hook.
_TINY_TRAIN = {"steps": 20, "warmup_steps": 5, "learning_rate": 1e-3, "batch_size": 16,
               "context_length": 5, "embed_dim": 16, "n_layer": 1, "n_head": 1,
               "dropout": 0.0, "eval_every": 0, "log_every": 10, "checkpoint_every": 20}
_TINY = {"evaluate": {"episodes": 2, "validation_episodes": 1},
         "reference_steps": {"iql": 10, "mlp-bc": 10, "pct-bc": 10}, "seeds": (0, 1),
         "hook_episodes": 1, "train": _TINY_TRAIN, "method_candidates": {}}

PRESETS["pointmaze"] = Preset(
    name="pointmaze",
    description="PointMaze umaze, medium and large (pip install -e '.[robotics,reference]'; "
                "benchmarks/goal_pages.py --page pointmaze): the maze2d recipe's expert level "
                "(the noisy planner-controller, 200k steps per maze; random 200k when asked), "
                "rows dt, bc, qt, iql, mlp-bc, pct-bc, random and behaviour (the noisy "
                "controller), the paper preset's small DT (embed 64, 2 layers, K=20, 2500 "
                "steps; last checkpoint, none kept), qt with its terms-off candidate, IQL 10k "
                "and BC 5k updates, 3 training seeds, targets chosen on 30 validation "
                "episodes, 100 test episodes (300 / 600 / 800 steps each). Estimate, from "
                "short runs on this 2-core EPYC under load (one thread, CPU seconds): dt and "
                "bc 0.10 s per update, qt 0.20 (100 updates each on UMaze), evaluation 0.30 s "
                "(dt) and 0.52 s (qt) per 300-step episode, d3rlpy IQL 45 s and BC 7.5 s per "
                "1k updates (500 and 1000 updates on UMaze); scaled: about 2.1k CPU s of "
                "training and 0.3k / 0.7k / 0.9k of evaluation per maze and seed, 24k CPU s "
                "in all (about 6.6 CPU hours: about 3.3 hours with 2 workers on 2 idle "
                "cores), "
                "plus about 15 minutes of generation (2k steps took 1.5 s: 600k data steps "
                "and the reference episodes).",
    generate={"random_steps": 200_000, "expert_steps": 200_000},
    train=dict(_SMALL_DT, steps=2500, eval_every=500, checkpoint_every=500),
    evaluate={"episodes": 100, "validation_episodes": 30},
    reference_steps=dict(_REFERENCE_STEPS),
    seeds=(0, 1, 2),
    hook_episodes=5,
    method_candidates=_QT_CANDIDATES,
    data_dir="pointmaze",
    methods=_POINTMAZE_ROWS,
)
PRESETS["minigrid"] = Preset(
    name="minigrid",
    description="MiniGrid FourRooms (pip install -e '.[robotics]'; benchmarks/goal_pages.py "
                "--page minigrid): the BFS recipe's random, medium (epsilon 0.7) and expert "
                "(epsilon 0.1) levels, 100k steps each, rows dt, bc, qt (eta 0: Discrete "
                "actions; with its terms-off candidate), random and behaviour (the epsilon-BFS "
                "expert), the small DT with K=10 (embed 64, 2 layers, batch 64) for 1000 "
                "steps (last checkpoint), 3 training seeds, targets chosen on 30 validation "
                "episodes, 100 test episodes. The image encoder makes an update dear: measured "
                "on this 2-core EPYC under load (one thread, CPU seconds, 60 updates each) dt "
                "0.33 s per update at K=10 (0.62 at K=20, hence K=10 and 1000 steps), qt 0.85, "
                "evaluation 0.18 s (dt) and 0.47 s (qt) per episode; scaled: about 2.4k CPU s "
                "of training and 0.2k of evaluation per level and seed, 23k CPU s in all "
                "(about 6.5 CPU hours: about 3.3 hours with 2 workers on 2 idle cores), plus "
                "minutes of generation (1k steps per level took under 1 s).",
    generate={"random_steps": 100_000, "medium_steps": 100_000, "expert_steps": 100_000},
    train=dict(_SMALL_DT, steps=1000, context_length=10, eval_every=500,
               checkpoint_every=500),
    method_train=_QT_DISCRETE,
    evaluate={"episodes": 100, "validation_episodes": 30},
    reference_steps=dict(_REFERENCE_STEPS),
    seeds=(0, 1, 2),
    hook_episodes=5,
    method_candidates=_QT_CANDIDATES,
    data_dir="minigrid",
    methods=_MINIGRID_ROWS,
)
PRESETS["pointmaze-tiny"] = dataclasses.replace(
    PRESETS["pointmaze"], name="pointmaze-tiny",
    description="the pointmaze page at toy size (a test runs it end to end): 2k steps per "
                "level from 4 streams, 2 reference episodes, a 1-layer 16-wide DT trained 20 "
                "steps, the reference rows 10 updates, 2 seeds, qt without its candidate run, 1 "
                "validation and 2 test episodes. Numbers are meaningless; it checks the "
                "plumbing.",
    generate={"random_steps": 2_000, "expert_steps": 2_000, "ref_episodes": 2,
              "num_envs": 4},
    data_dir="pointmaze-tiny", **_TINY)
PRESETS["minigrid-tiny"] = dataclasses.replace(
    PRESETS["minigrid"], name="minigrid-tiny",
    description="the minigrid page at toy size (a test runs it end to end): 1k steps per "
                "level from 4 streams, 2 reference episodes, a 1-layer 16-wide DT trained 20 "
                "steps, 2 seeds, qt without its candidate run, 1 validation and 2 test "
                "episodes. Numbers are meaningless; it checks the plumbing.",
    generate={"random_steps": 1_000, "medium_steps": 1_000, "expert_steps": 1_000,
              "ref_episodes": 2, "num_envs": 4},
    data_dir="minigrid-tiny", **_TINY)
