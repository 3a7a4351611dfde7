"""benchmarks/gpu.py: on a CPU-only machine it says it needs a GPU and exits 0; its sections
run end to end at toy size on the CPU (``--device cpu --tiny``), so a GPU machine runs code
that has run before."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "RESULTS", tmp_path)
    assert gpu.main([]) == 0
    assert "needs a CUDA GPU and found none" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing written


def test_every_section_runs_at_toy_size_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    n = torch.get_num_threads()
    try:
        assert gpu.main(["--device", "cpu", "--tiny", "--no-compile", "--steps", "2",
                         "--warmup", "1", "--max-ranks", "1", "--threads", "1",
                         "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    text = out.read_text()
    for heading in ("## Training", "## Evaluation", "## DDP"):
        assert heading in text
    assert "| tiny (d16, 1 layer, K5, batch 8) | fp32 | no |" in text
    assert "| dt, kv cache | 8 | 1600 |" in text


def test_model_flops_of_the_paper_config():
    # 3 layers x 12 d^2 (d=128) matmul parameters dominate; 64 windows x 60 tokens.
    flops = gpu.step_flops(gpu.PAPER, obs_dim=3, act_dim=1)
    n = 3 * 12 * 128 * 128 + 5 * 128 + 128
    assert flops == pytest.approx(64 * 60 * (6 * n + 12 * 3 * 60 * 128))
