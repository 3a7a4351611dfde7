"""benchmarks/speed.py's floor: the matrix products it replays are exactly the step's."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import speed

TINY = {"batch_size": 4, "context_length": 5, "embed_dim": 16, "n_layer": 2, "n_head": 2,
        "dropout": 0.1, "learning_rate": 1e-4, "weight_decay": 1e-4, "grad_clip": 0.25}


def test_gemm_floor_replays_the_steps_matrix_products() -> None:
    step = speed.ours_step("fp32", config=TINY)
    floor = speed.gemm_floor(step)
    counter = FlopCounterMode(display=False)
    with counter:
        step()  # dropout > 0 on a CPU: attention is plain bmm, so every FLOP is a product
    assert floor.calls >= 2 * 3 * TINY["n_layer"]  # forward and backward of each linear
    assert floor.gflop * 1e9 == counter.get_total_flops() > 0
    floor()  # replays without the model or its data


def test_gemm_floor_records_strided_operands() -> None:
    w = torch.randn(3, 8).t()  # (8, 3), a transposed view
    x = torch.randn(5, 8)

    def step() -> None:
        x @ w
        torch.bmm(torch.randn(2, 4, 3), torch.randn(2, 6, 3).transpose(1, 2))

    floor = speed.gemm_floor(step)
    assert floor.calls == 2
    assert floor.gflop * 1e9 == 2 * 5 * 8 * 3 + 2 * 2 * 4 * 3 * 6
