"""CUDA graphs for the denoiser's calls without autograd (the consistency term's own draws).

A training step with consistency runs the model's own sampler on a sub-batch: several small
forward passes without a graph (:func:`ambient.losses.own_samples`). On a GPU each of them
costs about as much as its kernel launches, not its arithmetic, so the consistency step costs
several plain steps. :class:`GraphedInference` records each such call once per input shape as
a CUDA graph and replays it afterwards, which launches the whole forward pass at once:

    D(x, sigma) = replay of the graph recorded for (shape, dtype, mode) with x, sigma copied in

Replays read the parameters where they are stored, so in-place optimiser updates (and
``load_state_dict``, EMA swaps by ``copy_``) are seen; a model whose parameters are replaced by
new tensors needs a new :class:`GraphedInference`. Calls with autograd on, on the CPU, under an
enclosing autocast region (its weight-cast cache would outlive the recording) or beyond
``max_graphs`` shapes go to the model as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Key = tuple[tuple[int, ...], torch.dtype, tuple[int, ...], torch.dtype, bool]


@dataclass
class _Recorded:
    graph: torch.cuda.CUDAGraph
    x: Tensor  # static input buffers, copied into before each replay
    sigma: Tensor
    out: Tensor  # static output buffer, overwritten by each replay


class GraphedInference:
    """``D(x, sigma)``: ``model`` for calls with autograd, a replayed CUDA graph of ``inference``
    (default ``model``) for calls without it on a CUDA device.

    ``inference`` is for wrapped models: give the module itself when ``model`` is a
    DistributedDataParallel wrapper, whose forward may communicate (not allowed in a graph) and
    is not needed without autograd."""

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor],
                 inference: nn.Module | None = None, max_graphs: int = 8,
                 warmup_calls: int = 2) -> None:
        self.model = model
        self.inference = inference if inference is not None else model
        self.max_graphs, self.warmup_calls = max_graphs, warmup_calls
        self.recorded: dict[Key, _Recorded] = {}

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.device.type != "cuda" or torch.is_autocast_enabled("cuda"):
            return self.model(x, sigma)
        training = bool(getattr(self.inference, "training", False))
        key = (tuple(x.shape), x.dtype, tuple(sigma.shape), sigma.dtype, training)
        rec = self.recorded.get(key)
        if rec is None:
            if len(self.recorded) >= self.max_graphs:
                return self.inference(x, sigma)
            rec = self.recorded[key] = self._record(x, sigma)
        rec.x.copy_(x)
        rec.sigma.copy_(sigma)
        rec.graph.replay()
        return rec.out.clone()

    def _record(self, x: Tensor, sigma: Tensor) -> _Recorded:
        """Warm up on a side stream (as CUDA graphs require), then record one call."""
        static_x, static_sigma = x.clone(), sigma.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self.inference(static_x, static_sigma)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.inference(static_x, static_sigma)
        return _Recorded(graph, static_x, static_sigma, out)
