"""Honest target selection (issue 18 part 4): candidates are chosen on validation episodes,
whose reset seeds can never be test seeds, and only the chosen candidate meets the test
episodes; the learning-curve hook has episodes of its own."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from offline_dt.cli import eval_summary
from offline_dt.envs.seeds import (
    EVALUATION_SEED_BASE,
    SEED_LIMIT,
    SEED_RANGE,
    SEED_RULES,
    SEED_STRIDE,
    VALIDATION_SEED_BASE,
    episode_seed,
    evaluation_seed,
    validation_seed,
)
from offline_dt.evaluation import selection
from offline_dt.evaluation.episodes import CURVE_EPISODE_OFFSET, episode_seeds
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint

seeds = st.integers(0, SEED_LIMIT - 1)
indices = st.integers(0, SEED_STRIDE - 1)


# ---------------------------------------------------------------------------------- seed ranges
def test_the_three_seed_rules_fill_disjoint_blocks():
    lo, hi = (0, 0), (SEED_LIMIT - 1, SEED_STRIDE - 1)
    assert episode_seed(*lo) == 0 and episode_seed(*hi) == SEED_RANGE - 1
    assert evaluation_seed(*lo) == EVALUATION_SEED_BASE == SEED_RANGE
    assert evaluation_seed(*hi) == VALIDATION_SEED_BASE - 1
    assert validation_seed(*lo) == VALIDATION_SEED_BASE == 2 * SEED_RANGE
    assert validation_seed(*hi) == 3 * SEED_RANGE - 1
    assert SEED_RANGE == 10**12 and validation_seed(3, 7) == 2 * 10**12 + 300_007
    assert SEED_RULES == {"test": "1000000000000 + seed * 100000 + i",
                          "validation": "2000000000000 + seed * 100000 + i"}
    for fn in (episode_seed, evaluation_seed, validation_seed):
        for bad in ((SEED_LIMIT, 0), (-1, 0), (0, SEED_STRIDE), (0, -1)):
            with pytest.raises(ValueError, match="must be in"):
                fn(*bad)


@given(seeds, indices, seeds, indices)
def test_no_validation_episode_is_ever_a_test_episode(a, i, b, j):
    assert validation_seed(a, i) != evaluation_seed(b, j)
    assert evaluation_seed(a, i) != episode_seed(b, j)
    assert validation_seed(a, i) != episode_seed(b, j)


@given(seeds, st.integers(0, CURVE_EPISODE_OFFSET - 1), seeds,
       st.integers(0, SEED_STRIDE - CURVE_EPISODE_OFFSET - 1))
def test_learning_curve_episodes_never_choose_targets(a, i, b, j):
    # Target choice uses validation indices below CURVE_EPISODE_OFFSET (EvalConfig caps
    # validation_episodes there); the hook uses the indices from it on.
    assert episode_seeds("validation", a, 1, i) != episode_seeds(
        "validation", b, 1, CURVE_EPISODE_OFFSET + j)


def test_validation_episodes_are_capped_below_the_curve_episodes():
    EvalConfig(validation_episodes=CURVE_EPISODE_OFFSET)
    with pytest.raises(ValueError, match="validation_episodes"):
        EvalConfig(validation_episodes=CURVE_EPISODE_OFFSET + 1)
    with pytest.raises(ValueError, match="split"):
        episode_seeds("train", 0, 1)


# ---------------------------------------------------------------------------------- selection
class Echo(gym.Env):
    """One-step episodes whose reward is the action: the policy alone decides the return."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1e3, 1e3, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(np.asarray(action).reshape(-1)[0]), True, False, {}


ECHO = "EchoSelection-v0"
if ECHO not in gym.registry:
    gym.register(ECHO, entry_point=Echo)


def is_test(seed: int) -> bool:
    return EVALUATION_SEED_BASE <= seed < VALIDATION_SEED_BASE


class SeedPolicy:
    """Scores ``on_test`` on test episodes and ``on_validation`` on validation episodes, so a
    candidate's rank depends on which episodes it is rolled out on; records its reset seeds."""

    def __init__(self, name, on_validation, on_test, log):
        self.name, self.values, self.log = name, (on_validation, on_test), log

    def reset(self, num_envs, seeds=None):
        self.seeds = list(seeds)
        self.log.extend((self.name, s) for s in self.seeds)

    def act(self, observations):
        return np.array([[self.values[is_test(s)]] for s in self.seeds], np.float32)

    def observe(self, rewards):
        pass


class FakeMethod:
    """Two targets x two settings. On validation episodes (target -1, gain 2) is best; on test
    episodes (target -2, gain 1) would be."""

    conditions_on_return = True
    SCORES = {(-1.0, 1): (1.0, 5.0), (-1.0, 2): (4.0, 2.0),
              (-2.0, 1): (2.0, 9.0), (-2.0, 2): (3.0, 0.0)}

    def __init__(self, settings=({"gain": 1}, {"gain": 2})):
        self.settings = list(settings)
        self.log: list[tuple[tuple[float, int], int]] = []

    def inference_candidates(self, net):
        return self.settings

    def policy(self, net, normalizer, target, *, kv_cache=False, gain=1):
        key = (target, gain)
        return SeedPolicy(key, *self.SCORES[key], self.log)


def fake_checkpoint(monkeypatch, method):
    ckpt = SimpleNamespace(
        dataset_info={"env_id": ECHO, "best_return": -1.0, "ref_max_score": -2.0,
                      "ref_min_score": -10.0},
        train_config=SimpleNamespace(method="fake", dataset="fake.hdf5"),
        method=method, model=None, normalizer=None, step=7)
    monkeypatch.setattr(selection, "load_checkpoint", lambda path, device, env_id=None: ckpt)
    return ckpt


def test_targets_are_chosen_on_validation_episodes_never_on_test_ones(monkeypatch, tmp_path):
    method = FakeMethod()
    fake_checkpoint(monkeypatch, method)
    cfg = EvalConfig(checkpoint=tmp_path, episodes=3, validation_episodes=4, seed=2,
                     device="cpu")
    payload = evaluate_checkpoint(cfg)
    sel = payload["selection"]
    # Every candidate met the validation episodes; the best there is (-1, gain 2), although
    # (-2, gain 1) would have won on the test episodes.
    assert [(c["target_return"], c["settings"]) for c in sel["candidates"]] == [
        (-1.0, {"gain": 1}), (-1.0, {"gain": 2}), (-2.0, {"gain": 1}), (-2.0, {"gain": 2})]
    assert [v["mean"] for v in sel["validation"]] == [1.0, 4.0, 2.0, 3.0]
    assert sel["chosen_index"] == 1 and sel["chosen"] == {"target_return": -1.0,
                                                          "settings": {"gain": 2}}
    assert all(v["episode_seeds"] == [validation_seed(2, i) for i in range(4)]
               and v["split"] == "validation" for v in sel["validation"])
    assert sel["validation_episodes"] == 4
    assert sel["validation_episode_seeds"] == SEED_RULES["validation"]
    # The test seeds were used for the chosen candidate only, once each.
    tested = [(key, s) for key, s in method.log if is_test(s)]
    assert tested == [((-1.0, 2), evaluation_seed(2, i)) for i in range(3)]
    assert all(not is_test(s) for key, s in method.log if key != (-1.0, 2))
    # The headline is that candidate's test evaluation, and nothing else is in `targets`.
    assert payload["mean_return"] == 2.0 and payload["headline_target"] == -1.0
    assert payload["headline_settings"] == {"gain": 2}
    assert len(payload["targets"]) == 1 and payload["targets"][0]["split"] == "test"
    assert payload["episode_seeds"] == SEED_RULES["test"]
    assert "validation episodes" in payload["headline_rule"]
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads(json.dumps(payload))
    text = eval_summary(payload, tmp_path / "eval.json")
    assert text.count("(chosen)") == 1 and "target -1, gain=2: validation mean 4.00" in text
    assert "target -1, gain=2: return mean 2.00" in text and text.count("(headline)") == 1


def test_a_single_candidate_is_tested_without_validation(monkeypatch, tmp_path):
    method = FakeMethod(settings=[{"gain": 1}])
    fake_checkpoint(monkeypatch, method)
    payload = evaluate_checkpoint(EvalConfig(checkpoint=tmp_path, episodes=2, device="cpu",
                                             target_returns=[-2.0]))
    assert method.log == [((-2.0, 1), evaluation_seed(0, i)) for i in range(2)]
    assert payload["selection"]["validation"] == [] and payload["mean_return"] == 9.0
    assert payload["selection"]["validation_episodes"] == 0
    assert payload["headline_rule"].startswith("test episodes of the chosen candidate only")


# ------------------------------------------------------------------- candidate checkpoints
class ScaledMethod(FakeMethod):
    """FakeMethod whose scores are shifted by ``offset``: another checkpoint of the same
    method (trained with other options) that is better on validation and worse on test."""

    def __init__(self, offset):
        super().__init__(settings=[{"gain": 1}])
        self.offset = offset

    def policy(self, net, normalizer, target, *, kv_cache=False, gain=1):
        on_validation, on_test = self.SCORES[(target, gain)]
        return SeedPolicy((self.offset, target), on_validation + self.offset,
                          on_test - self.offset, self.log)


def two_checkpoints(monkeypatch, tmp_path, other_dataset="fake.hdf5"):
    main, alt = tmp_path / "run", tmp_path / "run" / "candidates" / "alt"
    alt.mkdir(parents=True)
    methods = {str(main): ScaledMethod(0.0), str(alt): ScaledMethod(10.0)}
    datasets = {str(main): "fake.hdf5", str(alt): other_dataset}

    def load(path, device, env_id=None):
        return SimpleNamespace(
            dataset_info={"env_id": ECHO, "best_return": -1.0, "ref_max_score": -2.0,
                          "ref_min_score": -10.0},
            train_config=SimpleNamespace(method="fake", dataset=datasets[str(path)]),
            method=methods[str(path)], model=None, normalizer=None,
            step=5 if path == main else 9)

    monkeypatch.setattr(selection, "load_checkpoint", load)
    return main, alt, methods


def test_candidate_checkpoints_compete_on_validation_and_the_choice_is_recorded(
        monkeypatch, tmp_path):
    main, alt, methods = two_checkpoints(monkeypatch, tmp_path)
    payload = evaluate_checkpoint(EvalConfig(checkpoint=main, candidate_checkpoints=[alt],
                                             episodes=3, validation_episodes=2, device="cpu"))
    sel = payload["selection"]
    # Two targets for each checkpoint, every candidate naming its checkpoint.
    assert [(c["checkpoint"], c["target_return"]) for c in sel["candidates"]] == [
        (str(main), -1.0), (str(main), -2.0), (str(alt), -1.0), (str(alt), -2.0)]
    assert [v["mean"] for v in sel["validation"]] == [1.0, 2.0, 11.0, 12.0]
    # The alternative wins on validation although it is worse on the test episodes (9 - 10).
    assert sel["chosen"] == {"target_return": -2.0, "settings": {"gain": 1},
                             "checkpoint": str(alt)}
    assert payload["checkpoint"] == str(alt) and payload["step"] == 9
    assert payload["mean_return"] == -1.0
    # Only the chosen one met the test episodes; the headline lands in the main run.
    assert not any(is_test(s) for _, s in methods[str(main)].log)
    assert [s for _, s in methods[str(alt)].log if is_test(s)] == [
        evaluation_seed(0, i) for i in range(3)]
    assert json.loads((main / "eval.json").read_text())["checkpoint"] == str(alt)


def test_a_candidate_checkpoint_of_another_dataset_is_refused(monkeypatch, tmp_path):
    main, alt, _ = two_checkpoints(monkeypatch, tmp_path, other_dataset="other.hdf5")
    with pytest.raises(ValueError, match=r"candidate_checkpoints: .*alt has dataset "
                                         r"'other.hdf5', expected 'fake.hdf5'"):
        evaluate_checkpoint(EvalConfig(checkpoint=main, candidate_checkpoints=[alt],
                                       device="cpu"))
