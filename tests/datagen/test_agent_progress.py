"""Agent training says its budget up front and logs progress lines (not only a TTY bar)."""

from __future__ import annotations

import logging

from datagen.agents import train_agent


def test_train_agent_logs_budget_and_progress(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="datagen.agents"):
        train_agent("Pendulum-v1", tmp_path / "agent", seed=1, total_steps=120,
                    checkpoint_every=40, eval_episodes=1, num_envs=1, device="cpu")
    text = caplog.text
    assert "for 120 env steps" in text
    progress = [r.getMessage() for r in caplog.records if "step " in r.getMessage()
                and "/120" in r.getMessage()]
    assert [m.split(" step ")[1].split(" ")[0] for m in progress] == ["40/120", "80/120",
                                                                      "120/120"]
