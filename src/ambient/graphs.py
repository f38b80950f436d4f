"""CUDA graphs for the denoiser's calls without autograd (the consistency term's own draws).

A training step with consistency runs the model's own sampler on a sub-batch: several small
forward passes without autograd (:func:`ambient.losses.own_samples`). On a GPU each of them
costs about as much as its kernel launches, not its arithmetic, so the consistency step costs
several plain steps. :class:`GraphedInference` records each such call once per input shape as
a CUDA graph and replays it afterwards, which launches the whole forward pass at once:

    D(x, sigma) = replay of the graph recorded for (shapes, dtypes, mode), x and sigma copied in

The kernels are the model's own, so replays equal eager calls (within 1e-5 in the tests; a
400-step training run on an H200 ended at the same loss to every printed digit with and without).

Replays read the parameters where they are stored, so in-place optimiser updates (and
``load_state_dict``, EMA swaps by ``copy_``) are seen; a model whose parameters are replaced by
new tensors needs a new :class:`GraphedInference`. Calls with autograd on, on the CPU, under an
enclosing autocast region (its weight-cast cache would outlive the recording) or beyond
``max_graphs`` shapes go to the model as they are. The latent path records the SDXL UNet the
same way, its conditioning among the inputs (:class:`ambient.latent.adapter.GraphedUNetDenoisers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Key = tuple[tuple[tuple[tuple[int, ...], torch.dtype], ...], bool]


@dataclass
class _Recorded:
    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor]  # static input buffers, copied into before each replay
    out: Tensor  # static output buffer, overwritten by each replay


class GraphedInference:
    """``fn(*inputs)`` of tensors (a denoiser: ``fn(x, sigma)``): ``eager(*inputs)`` (default
    ``fn``) for calls with autograd, a replayed CUDA graph of ``fn`` for calls without it on a
    CUDA device, one per list of input shapes and dtypes (and ``fn.training``, if it has one).

    ``eager`` is for wrapped models: give the module itself as ``fn`` and the
    DistributedDataParallel wrapper as ``eager``; the wrapper's forward may communicate (not
    allowed in a graph) and is not needed without autograd."""

    def __init__(self, fn: Callable[..., Tensor], eager: Callable[..., Tensor] | None = None,
                 max_graphs: int = 8, warmup_calls: int = 2) -> None:
        self.fn = fn
        self.eager = eager if eager is not None else fn
        self.max_graphs, self.warmup_calls = max_graphs, warmup_calls
        self.recorded: dict[Key, _Recorded] = {}

    def __call__(self, *inputs: Tensor) -> Tensor:
        if (torch.is_grad_enabled() or inputs[0].device.type != "cuda"
                or torch.is_autocast_enabled("cuda")):
            return self.eager(*inputs)
        key = (tuple((tuple(t.shape), t.dtype) for t in inputs),
               bool(getattr(self.fn, "training", False)))
        rec = self.recorded.get(key)
        if rec is None:
            if len(self.recorded) >= self.max_graphs:
                return self.fn(*inputs)
            rec = self.recorded[key] = self._record(inputs)
        for buffer, t in zip(rec.inputs, inputs, strict=True):
            buffer.copy_(t)
        rec.graph.replay()
        return rec.out.clone()

    def _record(self, inputs: tuple[Tensor, ...]) -> _Recorded:
        """Warm up on a side stream (as CUDA graphs require), then record one call."""
        static = [t.clone() for t in inputs]
        device = static[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self.fn(*static)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(*static)
        return _Recorded(graph, static, out)
