"""The memorisation attack of the paper (Sections 4.1, 4.4) on any SD/SDXL pipeline.

Noise attack: encode each training image, ``z0 = E(x)``, noise it to timestep ``t_start`` (900 in
the paper), ``x = z0 + sigma(t_start) z`` in the VE view (the VP latent
``sqrt(1 - v^2) z0 + v z``), run the model's reverse process from there
(:func:`ambient.samplers.posterior_sample`), decode, and measure how close each posterior sample
is to its nearest training image in a feature space (DINOv2 in the paper; any callable
``images [-1, 1] -> features``). Similarities above 0.95 are near-copies, above 0.9 close matches.

Masked attack: hide a box of each image and fill it in with the model by replacement sampling
(Song et al. 2021): the hidden latents start from the prior, and after every reverse step the
visible latents are reset to ``z0 + sigma' z'``. Only the box is embedded (as the paper does for
its inpainting attack), so similarities compare the filled-in content with the hidden content.
The attack uses null prompts by default, as the paper's noise attack.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ambient.evaluate.memorization import MemorizationResult, nearest_neighbour_similarity
from ambient.latent.adapter import ve_view
from ambient.latent.model import LatentModel, sdxl_time_ids
from ambient.losses import Denoiser
from ambient.samplers import SamplerName, edm_sigmas, posterior_sample, reverse_step

Embedder = Callable[[Tensor], Tensor]
Box = tuple[int, int, int, int]  # top, left, height, width in pixels


def _null_conditioning(model: LatentModel, n: int, resolution: int, prompts: list[str] | None,
                       guidance_scale: float) -> Denoiser:
    time_ids = sdxl_time_ids((resolution, resolution), (0, 0), (resolution, resolution))[None]
    cond, uncond = model.conditioning(prompts or [""] * n, time_ids,
                                      with_uncond=guidance_scale != 1.0)
    return ve_view(model.denoiser(cond, uncond, guidance_scale))


@torch.no_grad()
def noise_attack(
    model: LatentModel,
    images: Tensor,
    t_start: int = 900,
    num_steps: int = 25,
    sampler: SamplerName = "ddim",
    prompts: list[str] | None = None,
    guidance_scale: float = 1.0,
    batch_size: int = 4,
    seed: int = 0,
) -> Tensor:
    """Posterior samples ``[N, 3, H, W]`` from training ``images`` ``[N, 3, H, W]`` in ``[-1, 1]``
    noised to timestep ``t_start`` (EDM spacing of ``num_steps`` levels down to timestep 0)."""
    generator = torch.Generator(model.device).manual_seed(seed)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        denoiser = _null_conditioning(model, len(batch), batch.shape[-1],
                                      prompts and prompts[i:i + batch_size], guidance_scale)
        z = posterior_sample(denoiser, model.encode(batch), model.ve_sigma(t_start), num_steps,
                             sampler, sigma_min=model.ve_sigma(0), generator=generator)
        out.append(model.decode(z))
    return torch.cat(out)


def center_box(resolution: int, fraction: float = 0.5, multiple: int = 8) -> Box:
    """A centred square box whose side is ``fraction`` of the image side, aligned to ``multiple``
    pixels (the VAE's downsampling factor, so it covers whole latent cells)."""
    side = max(multiple, round(resolution * fraction / multiple) * multiple)
    corner = (resolution - side) // 2 // multiple * multiple
    return corner, corner, side, side


def _latent_mask(box: Box, latent_size: int, factor: int) -> Tensor:
    """``[1, 1, h, w]``: 1 on latent cells that overlap the pixel box, 0 elsewhere."""
    top, left, height, width = box
    mask = torch.zeros(1, 1, latent_size, latent_size)
    mask[..., top // factor:math.ceil((top + height) / factor),
         left // factor:math.ceil((left + width) / factor)] = 1.0
    return mask


@torch.no_grad()
def inpaint_replacement(
    denoiser: Denoiser,
    z0: Tensor,
    mask: Tensor,
    sigmas: Tensor,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill in ``mask == 1`` of ``z0`` (VE): start from the VP prior there and from
    ``z0 + sigma_0 z`` elsewhere, take DDIM(``eta``) steps along ``sigmas`` (ending at 0), and after
    each step reset the visible part to ``z0 + sigma' z'``."""

    def noise() -> Tensor:
        return torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)

    mask = mask.to(z0)
    sigmas = sigmas.to(z0)
    prior = math.sqrt(1 + float(sigmas[0]) ** 2) * noise()
    x = mask * prior + (1 - mask) * (z0 + sigmas[0] * noise())
    for s, s_next in itertools.pairwise(sigmas):
        x = reverse_step(x, denoiser(x, s.expand(len(x))), s, s_next, eta, noise())
        x = mask * x + (1 - mask) * (z0 + s_next * noise())
    return x


@torch.no_grad()
def masked_attack(
    model: LatentModel,
    images: Tensor,
    box: Box,
    t_start: int | None = None,
    num_steps: int = 50,
    eta: float = 1.0,
    prompts: list[str] | None = None,
    guidance_scale: float = 1.0,
    batch_size: int = 4,
    seed: int = 0,
) -> Tensor:
    """Samples ``[N, 3, H, W]`` with ``box`` of each training image filled in by
    :func:`inpaint_replacement` from timestep ``t_start`` (default the top, ``T - 1``)."""
    generator = torch.Generator(model.device).manual_seed(seed)
    factor = model.pipe.vae_scale_factor
    mask = _latent_mask(box, images.shape[-1] // factor, factor)
    top = model.ve_sigma(model.num_timesteps - 1 if t_start is None else t_start)
    sigmas = edm_sigmas(num_steps, model.ve_sigma(0), top, device=model.device)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        denoiser = _null_conditioning(model, len(batch), batch.shape[-1],
                                      prompts and prompts[i:i + batch_size], guidance_scale)
        z = inpaint_replacement(denoiser, model.encode(batch), mask, sigmas, eta, generator)
        out.append(model.decode(z))
    return torch.cat(out)


def crop(images: Tensor, box: Box) -> Tensor:
    """The ``box`` region of ``images`` ``[N, C, H, W]``."""
    top, left, height, width = box
    return images[..., top:top + height, left:left + width]


def score(samples: Tensor, images: Tensor, embedder: Embedder, box: Box | None = None
          ) -> MemorizationResult:
    """Embed the samples and the training images (only ``box`` if given) and find each sample's
    nearest training image (:func:`ambient.evaluate.memorization.nearest_neighbour_similarity`);
    sample ``i`` came from training image ``i``."""
    if box is not None:
        samples_in, images_in = crop(samples, box), crop(images, box)
    else:
        samples_in, images_in = samples, images
    sims, nearest = nearest_neighbour_similarity(embedder(samples_in), embedder(images_in))
    return MemorizationResult(samples=samples, sims=sims, nearest=nearest,
                              sources=torch.arange(len(samples)))
