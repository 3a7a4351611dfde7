"""Adding a method is one file: an offline and an online toy method defined here, outside the
package, on the contract of ``offline_dt.methods.base`` alone, registered, trained by name
(``train``, ``train_online``), evaluated (``evaluate_checkpoint``) and tabulated (``report``)
with no edit to the package."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TRAIN
from torch import nn

from offline_dt.data.windows import Batch, Normalizer
from offline_dt.evaluation.evaluate import EvalConfig, evaluate_checkpoint
from offline_dt.methods import METHODS, Method, OnlineMethod, methods_for, register
from offline_dt.methods.base import Budget, Run, SourceSpec
from offline_dt.methods.dt import DTPolicy
from offline_dt.methods.env_source import EnvSource, stack_windows
from offline_dt.methods.history import HistoryPolicy
from offline_dt.study.report import report
from offline_dt.training import TrainConfig, load_checkpoint, train
from offline_dt.training.checkpoint import read_checkpoint
from offline_dt.training.online import OnlineConfig, train_online

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------- offline toy
@dataclasses.dataclass
class ToyOptions:
    """The toy's options.

    Attributes:
        scale: the loss is the mean squared error times this.
    """

    scale: float = 1.0

    def validate(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"method_options: toy-offline scale must be > 0, found {self.scale}")


class ToyOffline(Method):
    """Behaviour cloning of the Box action by the DT network, a loss of its own."""

    name = "toy-offline"
    description = "a toy behaviour cloner defined in a test"
    conditions_on_return = False
    options_class = ToyOptions

    def build(self, cfg: Any, options: Any = None) -> nn.Module:
        net = super().build(cfg)
        net.register_buffer("toy_scale", torch.tensor(self.options(options).scale))
        return net

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pred = net(torch.zeros_like(batch.returns_to_go), batch.observations, batch.actions,
                   batch.timesteps, batch.mask).float()
        m = batch.mask[..., None].float()
        mse = ((pred - batch.actions).square() * m).sum() / (m.sum() * pred.shape[-1])
        return mse * net.toy_scale, {"toy_mse": mse.detach()}

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, **settings: Any) -> DTPolicy:
        return DTPolicy(net, normalizer, None, kv_cache=kv_cache)


# ---------------------------------------------------------------------------------- online toy
@dataclasses.dataclass
class ToyBatch(Batch):
    """Windows of the last rollout and each step's reward."""

    weights: torch.Tensor | None = None


class ToySource(EnvSource):
    """Every update: 8 steps in 2 envs, served whole."""

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec, n_envs=2)
        self.batch: ToyBatch | None = None

    def make_policy(self, run: Run) -> HistoryPolicy:
        return run.method.policy(run.net, run.normalizer, None, generator=self.collect_rng)

    def collect(self, run: Run, step: int) -> None:
        if self.finished(step):
            return
        windows, rewards = [], []
        for tr in self.play(run, 8):
            windows.append(self.policy.last[0])
            rewards.append(torch.as_tensor(np.asarray(tr.rewards, np.float32)))
        self.batch = ToyBatch(**stack_windows(windows), weights=torch.stack(rewards).flatten())

    def sample_shard(self, batch_size: int, rank: int, world_size: int
                     ) -> tuple[ToyBatch, float]:
        return self.batch, 1.0

    def state_dict(self) -> dict[str, Any]:
        return self.base_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_base_state(state)


class ToyOnline(OnlineMethod):
    """A reward-weighted log-likelihood of the sampled Discrete actions (REINFORCE-like)."""

    name = "toy-online"
    description = "a toy online policy gradient defined in a test"

    def budget(self, options: dict[str, Any], env_steps: int, batch_size: int | None
               ) -> Budget:
        return Budget(steps=-(-env_steps // 16), batch_size=16)

    def make_source(self, spec: SourceSpec) -> ToySource:
        return ToySource(spec)

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = net(batch.returns_to_go, batch.observations, batch.actions, batch.timesteps,
                     batch.mask, last_only=True)[:, -1].float()
        logp = F.log_softmax(logits, -1).gather(-1, batch.actions[:, -1:]).squeeze(-1)
        w = batch.weights - batch.weights.mean()
        return -(logp * w).mean(), {"toy_logp": logp.detach().mean()}

    def policy(self, net: nn.Module, normalizer: Normalizer, target_return: float | None,
               *, kv_cache: bool = False, generator: torch.Generator | None = None,
               **settings: Any) -> HistoryPolicy:
        def decide(w: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logits = net(w.returns_to_go, w.observations, w.actions, w.timesteps, w.mask,
                         last_only=True)[:, -1].float()
            if generator is None:
                return logits.argmax(-1), {}
            draw = torch.multinomial(F.softmax(logits, -1).cpu(), 1, generator=generator)
            return draw.squeeze(-1).to(logits.device), {}

        return HistoryPolicy(net, normalizer, 1.0, decide)


@pytest.fixture
def toy_methods():
    """The toy methods registered for the test (loading a checkpoint needs its method
    registered), removed after it."""
    for cls in (ToyOffline, ToyOnline):
        register(cls)
    yield
    for cls in (ToyOffline, ToyOnline):
        METHODS.pop(cls.name, None)


def test_toy_methods_train_evaluate_and_report_by_name(toy_methods, box_hdf5, tmp_path):
    assert "toy-offline" in methods_for("train") and "toy-online" in methods_for("online")
    runs = tmp_path / "runs"
    off = train(TrainConfig(dataset=str(box_hdf5), method="toy-offline", env_id="Pendulum-v1",
                            run_dir=runs / "Pendulum-v1" / "tiny-box-v0" / "toy-offline" /
                            "seed0", **TINY_TRAIN))
    on = train_online(OnlineConfig(
        method="toy-online", env_id="CartPole-v1", env_steps=64, context_length=4,
        embed_dim=16, n_layer=1, log_every=2, progress=False, device="cpu",
        run_dir=runs / "CartPole-v1" / "online" / "toy-online" / "seed0"))
    assert off.steps == 20 and on.steps == 4
    rows = pd.read_csv(on.run_dir / "metrics.csv")
    assert {"toy_logp", "env_steps", "episode_return_mean"} <= set(rows.columns)
    assert rows["env_steps"].iloc[-1] == 64 and math.isfinite(rows["loss"].iloc[-1])
    assert "toy_mse" in pd.read_csv(off.run_dir / "metrics.csv").columns
    _, payload = read_checkpoint(on.run_dir, "cpu")
    assert payload["source"]["env_steps"] == 64  # the source's state, via the base's hooks
    assert load_checkpoint(on.run_dir).train_config.lr_decay == "none"  # OnlineMethod's

    for run in (off.run_dir, on.run_dir):
        ev = evaluate_checkpoint(EvalConfig(checkpoint=str(run), episodes=2,
                                            validation_episodes=1, device="cpu"))
        assert ev["method"] == run.parent.name and ev["episodes"] == 2
        assert math.isfinite(ev["mean_return"]) and (run / "eval.json").is_file()

    table = report(runs, tmp_path / "report", plots=False, quiet=True)
    found = table.set_index("method").loc[["toy-offline", "toy-online"]]
    assert (found["episodes"] == 2).all() and found["mean_return"].notna().all()
    assert found.loc["toy-online", "mean_return"] == pytest.approx(
        json.loads((on.run_dir / "eval.json").read_text())["mean_return"])
    md = (tmp_path / "report" / "results.md").read_text()
    assert "`toy-offline`: a toy behaviour cloner defined in a test" in md


def test_a_method_registered_outside_the_package_gets_typed_flags(toy_methods, box_hdf5,
                                                                  tmp_path, capsys):
    """Its options are ``--toy-offline.<option>`` flags of ``train`` with their help and
    default, land in the run's config typed, and a bad value is refused naming it."""
    from offline_dt.cli import main, parse

    with pytest.raises(SystemExit):
        parse(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--toy-offline.scale FLOAT" in help_text and "times this." in help_text
    run = tmp_path / "toy"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_TRAIN.items()]
    assert main(["train", "--dataset", str(box_hdf5), "--method", "toy-offline",
                 "--toy-offline.scale", "2", "--run-dir", str(run), *flags]) == 0
    saved = json.loads((run / "config.json").read_text())["train_config"]
    assert saved["method_options"] == {"scale": 2.0}
    assert load_checkpoint(run).train_config.method_options == ToyOptions(scale=2.0)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", str(box_hdf5), "--method", "toy-offline",
              "--toy-offline.scale", "-1", "--run-dir", str(tmp_path / "bad")])
    assert exc.value.code == 2
    assert "toy-offline scale must be > 0, found -1.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_registry_is_clean_after_the_toys():
    assert "toy-offline" not in METHODS and "toy-online" not in METHODS
