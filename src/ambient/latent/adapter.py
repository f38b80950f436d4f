"""A diffusers UNet as a VP denoiser ``D(x, v) = E[x0 | x_v = x]``, and its VE view.

A DDPM/Stable Diffusion UNet ``F(x_t, t, cond)`` is trained on ``x_t = sqrt(1 - v^2) x0 + v eps``
with ``v = sqrt(1 - alphas_cumprod[t])`` and predicts, by its ``prediction_type``:

    epsilon:       F = eps                          ->  D = (x - v F) / sqrt(1 - v^2)
    v_prediction:  F = sqrt(1 - v^2) eps - v x0     ->  D = sqrt(1 - v^2) x - v F
    sample:        F = x0                           ->  D = F

The level ``v`` is turned into a *continuous* timestep by :func:`ambient.noise.timestep_from_vp`
(linear interpolation between integer timesteps of the scheduler's ``alphas_cumprod``), so the
UNet sees fractional timesteps between the integer ones it was trained on (diffusers UNets embed
float timesteps sinusoidally, so this is a smooth interpolation); levels below timestep 0 are
clamped to timestep 0. The VE view ``D_ve(x, sigma) = D(x / sqrt(1 + sigma^2), v(sigma))`` lets
the core VE samplers and the consistency loss drive the UNet unchanged.

Classifier-free guidance with scale ``w`` is ``D_u + w (D_c - D_u)``; since ``D`` is affine in
``F`` this equals guidance on ``F`` (the diffusers pipelines' convention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor, nn

from ambient.graphs import GraphedInference
from ambient.losses import Denoiser
from ambient.noise import as_levels, bcast, timestep_from_vp, ve_to_vp

PredictionType = Literal["epsilon", "v_prediction", "sample"]


@dataclass
class UNetConditioning:
    """What a diffusers UNet takes besides ``(x, t)``, one row per sample; a batch of ``N``
    samples may use ``N / k`` rows, which are then tiled ``k`` times (``k = N`` for one row)."""

    encoder_hidden_states: Tensor | None = None  # [N, L, C] text token embeddings (cross-attention)
    text_embeds: Tensor | None = None  # [N, P] SDXL pooled text embedding
    time_ids: Tensor | None = None  # [N, 6] SDXL micro-conditioning: original size, crop, target size

    def _map(self, fn: Callable[[Tensor], Tensor]) -> UNetConditioning:
        return UNetConditioning(**{f.name: None if getattr(self, f.name) is None
                                   else fn(getattr(self, f.name)) for f in fields(self)})

    @property
    def rows(self) -> int:
        """Number of rows (0 when empty)."""
        present = [t for t in (self.encoder_hidden_states, self.text_embeds, self.time_ids)
                   if t is not None]
        return len(present[0]) if present else 0

    def select(self, index: Tensor) -> UNetConditioning:
        """Rows ``index`` (a long tensor)."""
        return self._map(lambda t: t[index.to(t.device)])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> UNetConditioning:
        """Move to ``device``; floating tensors are cast to ``dtype`` if given."""
        return self._map(lambda t: t.to(device, dtype if dtype and t.is_floating_point() else None))

    def tiled(self, n: int) -> UNetConditioning:
        """Rows tiled to a batch of ``n`` (``n`` must be a multiple of :attr:`rows`)."""
        rows = self.rows
        if rows == 0 or rows == n:
            return self
        if n % rows:
            raise ValueError(f"conditioning has {rows} rows, cannot serve a batch of {n}")
        return self._map(lambda t: t.repeat(n // rows, *([1] * (t.ndim - 1))))

    def cat(self, other: UNetConditioning) -> UNetConditioning:
        """Rows of ``self`` then rows of ``other`` (both must have the same fields)."""
        return UNetConditioning(**{
            f.name: None if getattr(self, f.name) is None
            else torch.cat([getattr(self, f.name), getattr(other, f.name)])
            for f in fields(self)})

    def tensors(self) -> dict[str, Tensor]:
        """The fields that are set, by name (``UNetConditioning(**c.tensors())`` rebuilds ``c``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def unet_kwargs(self) -> dict:
        """Keyword arguments of ``UNet2DConditionModel.forward`` (empty for ``UNet2DModel``)."""
        kwargs: dict = {}
        if self.encoder_hidden_states is not None:
            kwargs["encoder_hidden_states"] = self.encoder_hidden_states
        if self.text_embeds is not None or self.time_ids is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.text_embeds,
                                           "time_ids": self.time_ids}
        return kwargs


def x0_from_prediction(
    output: Tensor,
    x: Tensor,
    v: Tensor,
    prediction_type: PredictionType,
) -> Tensor:
    """The x0 estimate of a network output at VP level ``v`` (formulas in the module docstring)."""
    vb = bcast(v, x)
    alpha = torch.sqrt(1.0 - vb * vb)
    if prediction_type == "epsilon":
        return (x - vb * output) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - vb * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction_type {prediction_type!r}: "
                     "expected 'epsilon', 'v_prediction' or 'sample'")


class UNetDenoiser:
    """``D(x, v)``: a diffusers ``UNet2DConditionModel`` / ``UNet2DModel`` as a VP denoiser.

    ``x`` is ``[N, C, H, W]`` (VP latents), ``v`` the per-sample VP level ``[N]``; the UNet is
    called with ``t = timestep_from_vp(v, alphas_cumprod)`` (fractional), the conditioning
    bound here (tiled to the batch) and inputs cast to ``dtype``; the output comes back in
    ``x``'s dtype. With ``uncond`` and ``guidance_scale != 1`` each call evaluates the batch
    twice (unconditional, conditional, in one UNet call) and returns ``D_u + w (D_c - D_u)``."""

    def __init__(
        self,
        unet: nn.Module,  # diffusers UNet (possibly wrapped, e.g. by DDP or peft)
        alphas_cumprod: Tensor,  # [T] the training scheduler's cumulative alphas
        prediction_type: PredictionType,  # the scheduler's prediction_type
        cond: UNetConditioning | None = None,  # conditioning of the samples (None: unconditional)
        uncond: UNetConditioning | None = None,  # negative/empty-prompt conditioning for guidance
        guidance_scale: float = 1.0,  # classifier-free guidance scale w
        dtype: torch.dtype | None = None,  # UNet input dtype (default: its first parameter's)
    ) -> None:
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod
        self.prediction_type = prediction_type
        self.cond = cond or UNetConditioning()
        self.uncond = uncond
        self.guidance_scale = guidance_scale
        self.dtype = dtype or next(unet.parameters()).dtype

    @property
    def guided(self) -> bool:
        return self.uncond is not None and self.guidance_scale != 1.0

    def __call__(self, x: Tensor, v: Tensor | float) -> Tensor:
        v = as_levels(v, x)
        n = x.shape[0]
        cond = self.cond.tiled(n)
        uncond = self.uncond if self.guided else None
        if uncond is not None:
            x, v = torch.cat([x, x]), torch.cat([v, v])
            cond = uncond.tiled(n).cat(cond)
        t = timestep_from_vp(v, self.alphas_cumprod)
        cond = cond.to(x.device, self.dtype)
        out = self.unet(x.to(self.dtype), t, **cond.unet_kwargs()).sample
        denoised = x0_from_prediction(out.to(x.dtype), x, v, self.prediction_type)
        if uncond is not None:
            uncond_d, cond_d = denoised.chunk(2)
            return uncond_d + self.guidance_scale * (cond_d - uncond_d)
        return denoised


class GraphedUNetDenoisers:
    """``make(unet, cond)``: the :class:`UNetDenoiser` of the UNet being trained, whose calls
    without autograd on a GPU replay CUDA graphs (:class:`ambient.graphs.GraphedInference` of the
    unwrapped UNet, the conditioning among the graph's inputs): the consistency term's own draws
    are several no-grad calls on a sub-batch, each launch-bound at SDXL's size (module
    :mod:`ambient.graphs`). One instance serves every step of a run; calls with autograd go to
    the UNet (or its DDP wrapper) as they are."""

    def __init__(self, alphas_cumprod: Tensor, prediction_type: PredictionType,
                 dtype: torch.dtype | None, enabled: bool = True) -> None:
        self.alphas_cumprod, self.prediction_type = alphas_cumprod, prediction_type
        self.dtype, self.enabled = dtype, enabled
        self.unet: nn.Module | None = None
        self.graphs: GraphedInference | None = None
        self.fields: list[str] | None = None
        self.on_device: dict[torch.device, Tensor] = {}  # alphas_cumprod, copied outside graphs

    def make(self, unet: nn.Module, cond: UNetConditioning) -> Denoiser:
        eager = UNetDenoiser(unet, self.alphas_cumprod, self.prediction_type, cond, dtype=self.dtype)
        if not self.enabled:
            return eager
        if self.unet is not unet or self.graphs is None:
            self.unet, self.fields = unet, list(cond.tensors())
            self.graphs = GraphedInference(self._inference(getattr(unet, "module", unet)))
        graphs = self.graphs
        if list(cond.tensors()) != self.fields:
            raise ValueError(f"conditioning fields {list(cond.tensors())} differ from the run's "
                             f"first {self.fields}")

        def denoiser(x: Tensor, v: Tensor | float) -> Tensor:
            if torch.is_grad_enabled() or x.device.type != "cuda":
                return eager(x, v)
            if x.device not in self.on_device:
                self.on_device[x.device] = self.alphas_cumprod.to(x.device)
            v = as_levels(v, x)
            return graphs(x, v, *cond.tiled(x.shape[0]).to(x.device).tensors().values())

        return denoiser

    def _inference(self, unet: nn.Module) -> Callable[..., Tensor]:
        fields = self.fields or []

        def call(x: Tensor, v: Tensor, *tensors: Tensor) -> Tensor:
            cond = UNetConditioning(**dict(zip(fields, tensors, strict=True)))
            return UNetDenoiser(unet, self.on_device[x.device], self.prediction_type, cond,
                                dtype=self.dtype)(x, v)

        return call


def ve_view(vp_denoiser: Denoiser) -> Denoiser:
    """The VE denoiser ``D_ve(x, sigma) = D_vp(x / sqrt(1 + sigma^2), sigma / sqrt(1 + sigma^2))``
    (:func:`ambient.noise.ve_to_vp`); both estimate the same clean ``x0``."""

    def denoiser(x: Tensor, sigma: Tensor | float) -> Tensor:
        x_vp, v = ve_to_vp(x, sigma)
        return vp_denoiser(x_vp, v)

    return denoiser
