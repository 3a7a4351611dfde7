"""The evaluation layer: checkpoints acting on the live env, targets and settings chosen on
validation episodes, scored on test episodes."""
