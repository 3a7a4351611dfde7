"""The environment layer: vector envs, episode seeds, policies and the one rollout engine
that datagen, the online methods and evaluation step through."""
