"""CUDA-graph capture of the training loss (offline_dt.training.cuda_graph): where the loop uses it,
what it computes, and how it falls back. The capture itself needs a CUDA device."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from offline_dt.data.windows import Normalizer, WindowSampler
from offline_dt.methods import get_method
from offline_dt.nn.transformer import DecisionTransformer
from offline_dt.training import TrainConfig, train
from offline_dt.training.cuda_graph import GraphedLoss, TensorLoss, batch_tensors, wants_graph

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_auto_captures_dt_and_bc_on_cuda_in_one_process_only():
    dt, bc, qt = get_method("dt"), get_method("bc"), get_method("qt")
    flags = dict(distributed=False, compile=False)
    assert wants_graph(None, CUDA, dt, **flags)
    assert wants_graph(None, CUDA, bc, **flags)
    assert not wants_graph(None, CPU, dt, **flags)
    assert not wants_graph(None, CUDA, qt, **flags)  # reads values back to the host
    assert not wants_graph(None, CUDA, dt, distributed=True, compile=False)
    assert not wants_graph(None, CUDA, dt, distributed=False, compile=True)
    assert not wants_graph(False, CUDA, dt, **flags)


def test_true_where_unsafe_names_every_reason_and_bad_values_are_refused():
    with pytest.raises(ValueError, match=r"device is cpu.*reads values back"):
        wants_graph(True, CPU, get_method("qt"), distributed=False, compile=False)
    with pytest.raises(ValueError, match=r"cuda_graph must be None \(auto\), True or False, "
                                         r"found 'true'"):
        wants_graph("true", CUDA, get_method("dt"), distributed=False, compile=False)


def test_the_loop_refuses_cuda_graph_true_on_the_cpu(box_hdf5, tiny_config):
    with pytest.raises(ValueError, match="cannot be honoured: .*the device is cpu, not CUDA"):
        train(tiny_config(box_hdf5, cuda_graph=True))
    with pytest.raises(ValueError, match=r"cuda_graph must be None \(auto\), True or False"):
        train(tiny_config(box_hdf5, cuda_graph="on"))


def _setup(dataset, device: torch.device, dropout: float = 0.0, batch_size: int = 8):
    cfg = TrainConfig(dataset="x", context_length=5, embed_dim=16, n_layer=1, dropout=dropout,
                      max_timestep=64)
    sampler = WindowSampler(dataset, Normalizer.fit(dataset), 5, 64, seed=0, device=device)
    torch.manual_seed(0)
    net = DecisionTransformer(cfg.model_config(dataset.obs_dim, dataset.act_dim,
                                               dataset.discrete)).to(device).train()
    return net, sampler, batch_size


@pytest.mark.parametrize("method_name", ["dt", "bc"])
def test_tensor_loss_is_the_methods_loss(box_dataset, method_name):
    net, sampler, b = _setup(box_dataset, CPU)
    method = get_method(method_name)
    batch = sampler.sample(b)
    names, tensors = batch_tensors(batch)
    assert "observations" in names and all(isinstance(t, torch.Tensor) for t in tensors)
    (loss,) = TensorLoss(method, net, names, bf16=False, extra_keys=())(*tensors)
    assert torch.equal(loss, method.loss(net, batch)[0])


def test_a_batch_off_cuda_is_refused_by_name(box_dataset):
    net, sampler, b = _setup(box_dataset, CPU)
    with pytest.raises(ValueError, match="CUDA graphs need a batch on a CUDA device, found cpu"):
        GraphedLoss(get_method("dt"), net, bf16=False)(sampler.sample(b))


def test_bf16_is_a_blocker_only_where_it_does_not_capture(monkeypatch):
    import offline_dt.training.cuda_graph as cg

    flags = dict(distributed=False, compile=False, precision="bf16")
    assert cg.wants_graph(None, CUDA, get_method("dt"), **flags) == cg.BF16_CAPTURES
    monkeypatch.setattr(cg, "BF16_CAPTURES", False)
    assert not cg.wants_graph(None, CUDA, get_method("dt"), **flags)
    with pytest.raises(ValueError, match="bf16 autocast is on"):
        cg.wants_graph(True, CUDA, get_method("dt"), **flags)


@needs_cuda
@pytest.mark.parametrize("method_name", ["dt", "bc"])
def test_graphed_updates_match_eager_updates_on_cuda(box_dataset, method_name):
    """Dropout 0, fp32: ten AdamW updates through the captured loss equal ten eager ones."""
    from offline_dt.training.step import make_optimizer, train_step

    method = get_method(method_name)
    cfg = TrainConfig(dataset="x", steps=10, learning_rate=1e-3, precision="fp32")
    results = []
    for graphed in (False, True):
        net, sampler, b = _setup(box_dataset, CUDA)
        optimizer, scheduler = make_optimizer(net, cfg)
        loss_fn = GraphedLoss(method, net, bf16=False) if graphed else None
        losses = [float(train_step(net, optimizer, scheduler, sampler.sample(b), cfg, method,
                                   loss_fn=loss_fn)[0]) for _ in range(10)]
        assert loss_fn is None or loss_fn.captured
        results.append((losses, torch.cat([p.detach().flatten() for p in net.parameters()])))
    (eager, p_eager), (graph, p_graph) = results
    assert graph == pytest.approx(eager, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(p_graph, p_eager, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_loop_trains_with_graphs_by_default_on_cuda(box_hdf5, tiny_config, precision):
    """Dropout on: fp32 is captured, bf16 runs eagerly (``BF16_CAPTURES``); either way the
    run ends without error and the loss falls."""
    result = train(tiny_config(box_hdf5, device="cuda", steps=60, dropout=0.1,
                               precision=precision))
    losses = pd.read_csv(result.run_dir / "metrics.csv")["loss"]
    assert losses.notna().all() and losses.iloc[-1] < losses.iloc[0]


def test_auto_precision_keeps_fp32_for_launch_bound_steps_on_cuda():
    """The paper config's step (1.4e10 FLOPs) is launch-bound: fp32, so the loss is captured."""
    from offline_dt.training.device import LAUNCH_BOUND_FLOPS, resolve_precision, step_flops

    paper = TrainConfig(dataset="x").resolved(200, "cuda")
    assert paper.precision == "fp32"
    assert step_flops(128, 3, 3 * 64 * 20) == pytest.approx(6 * 12 * 3 * 128**2 * 3840)
    assert resolve_precision("auto", CUDA, LAUNCH_BOUND_FLOPS / 2) == "fp32"
    assert resolve_precision("bf16", CUDA, LAUNCH_BOUND_FLOPS / 2) == "bf16"
    assert wants_graph(None, CUDA, get_method("dt"), distributed=False, compile=False,
                       precision=paper.precision)
