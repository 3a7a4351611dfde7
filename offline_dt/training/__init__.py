"""The training layer: configs, the one loop, checkpoints and exact resume, run directories
and logs, devices, DDP and CUDA graphs; the online and fine-tune entry points."""
