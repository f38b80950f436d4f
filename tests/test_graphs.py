"""CUDA graphs for the denoiser's calls without autograd (ambient.graphs).

On the CPU the wrapper must pass every call through unchanged; the graph tests need a CUDA
device and are skipped without one (run them on a GPU machine: pytest tests/test_graphs.py)."""

from __future__ import annotations

import pytest
import torch

from ambient.graphs import GraphedInference
from ambient.losses import own_samples
from ambient.nets import build_denoiser

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cpu_calls_pass_through() -> None:
    torch.manual_seed(0)
    model = build_denoiser((1, 8, 8), kind="unet")
    graphed = GraphedInference(model)
    x, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 0.3)
    with torch.no_grad():
        assert torch.equal(graphed(x, sigma), model(x, sigma))
    assert graphed(x, sigma).grad_fn is not None  # autograd on: the model itself
    assert graphed.recorded == {}


@cuda
def test_replay_matches_the_model_and_follows_its_updates() -> None:
    torch.manual_seed(0)
    model = build_denoiser((1, 8, 8), kind="unet").cuda()
    graphed = GraphedInference(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, sigma = torch.randn(32, 1, 8, 8, device="cuda"), torch.rand(32, device="cuda") + 0.05
    for _ in range(3):  # replays after in-place optimiser updates read the new weights
        with torch.no_grad():
            got, want = graphed(x, sigma), model(x, sigma)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        loss = graphed(x, sigma).square().mean()  # autograd on: eager, with a graph
        assert loss.grad_fn is not None
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert len(graphed.recorded) == 1
    with torch.no_grad():
        first = graphed(x, sigma)
        kept = first.clone()
        graphed(2 * x, sigma)  # the next replay must not overwrite an earlier output
        assert torch.equal(first, kept)
        second = graphed(x[:8], sigma[:8])  # a new shape: a second graph
        torch.testing.assert_close(second, model(x[:8], sigma[:8]), rtol=1e-5, atol=1e-5)
        with torch.autocast("cuda", dtype=torch.bfloat16):  # enclosing autocast: eager
            graphed(x, sigma)
    assert len(graphed.recorded) == 2


@cuda
def test_own_samples_through_graphs_equal_eager_ones() -> None:
    """The consistency term's draws (7 calls of the 2nd-order ODE) replayed vs run eagerly."""
    torch.manual_seed(0)
    model = build_denoiser((1, 8, 8), kind="unet").cuda()
    graphed = GraphedInference(model)
    y = torch.randn(32, 1, 8, 8, device="cuda")
    sigma_n = torch.full((32,), 0.2, device="cuda")
    draws = [own_samples(d, y, sigma_n, 1.1, 6, 0.002, torch.Generator("cuda").manual_seed(1))
             for d in (graphed, model)]
    torch.testing.assert_close(draws[0], draws[1], rtol=1e-4, atol=1e-4)
    assert len(graphed.recorded) == 1


@cuda
def test_dataset_loss_graphs_a_cuda_model_once() -> None:
    """On a GPU the objective gets the model's GraphedInference, the same one while the engine
    passes the same model; off cuda_graphs, the model itself."""
    from ambient.data import resolve_dataset
    from ambient.objective import ObjectiveConfig
    from ambient.train import DatasetLoss

    model = build_denoiser((1, 8, 8), kind="unet").cuda()
    dataset = resolve_dataset("digits", 0.2)
    loss_fn = DatasetLoss(dataset, ObjectiveConfig(), total_steps=10)
    graphed = loss_fn.denoiser(model)
    assert isinstance(graphed, GraphedInference) and graphed.fn is model
    assert loss_fn.denoiser(model) is graphed
    plain = DatasetLoss(dataset, ObjectiveConfig(), total_steps=10, cuda_graphs=False)
    assert plain.denoiser(model) is model
