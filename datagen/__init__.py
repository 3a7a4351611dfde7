"""datagen: roll out agents in Gymnasium environments and write offline RL datasets."""
