"""Sampling a (fine-tuned) latent model with the project's samplers through the VE view.

Schedule: ``num_steps`` integer timesteps evenly spaced from ``T - 1`` down to ``t_stop``,
``sigma_i = sqrt((1 - a_{t_i}) / a_{t_i})``. Start: the VP prior ``x_vp ~ N(0, I)``, i.e.
``x = sqrt(1 + sigma_0^2) z`` in VE coordinates. Then:

* full sampling (``t_stop = 0``): the schedule followed by ``sigma = 0``; with ``sampler="ddim"``
  every step is the deterministic DDIM update (the VE Euler step of the probability-flow ODE is
  exactly DDIM), so 25 steps is the paper's sampler;
* truncated sampling at ``t_n`` (the no-consistency baseline): the schedule down to
  ``sigma_n = sigma(t_n)``, then output ``D(x, sigma_n)``.

Text prompts with classifier-free guidance (scale ``w``: ``D_u + w (D_c - D_u)``), SDXL
micro-conditioning ``(H, W, 0, 0, H, W)``, decoding with the VAE, PNG files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ambient.images import to_uint8
from ambient.latent.adapter import ve_view
from ambient.latent.model import LatentModel, sdxl_time_ids
from ambient.noise import ve_sigma_from_timestep
from ambient.samplers import SamplerName, run_sampler


def timestep_sigmas(alphas_cumprod: Tensor, num_steps: int, t_stop: int = 0) -> Tensor:
    """VE levels of ``num_steps`` integer timesteps evenly spaced from ``T - 1`` to ``t_stop``
    (decreasing, float64)."""
    top = alphas_cumprod.numel() - 1
    if not 0 <= t_stop < top:
        raise ValueError(f"t_stop must lie in [0, {top - 1}], got {t_stop}")
    if not 1 <= num_steps <= top - t_stop + 1:
        raise ValueError(f"num_steps must lie in [1, {top - t_stop + 1}], got {num_steps}")
    t = torch.linspace(top, t_stop, num_steps, dtype=torch.float64).round().long()
    return ve_sigma_from_timestep(t, alphas_cumprod)


@torch.no_grad()
def generate_latents(
    model: LatentModel,
    prompts: list[str],
    num_steps: int = 25,
    guidance_scale: float = 5.0,
    truncate_t_n: int | None = None,
    resolution: int = 1024,
    sampler: SamplerName = "ddim",
    negative_prompt: str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One latent per prompt ``[N, C, R/f, R/f]`` (module docstring); ``truncate_t_n`` switches
    to truncated sampling at that timestep. ``generator`` (CPU) fixes the starting noise."""
    time_ids = sdxl_time_ids((resolution, resolution), (0, 0), (resolution, resolution))[None]
    cond, uncond = model.conditioning(prompts, time_ids, negative_prompt,
                                      with_uncond=guidance_scale != 1.0)
    denoiser = ve_view(model.denoiser(cond, uncond, guidance_scale))
    sigmas = timestep_sigmas(model.alphas_cumprod, num_steps, truncate_t_n or 0).to(model.device)
    size = resolution // model.pipe.vae_scale_factor
    shape = (len(prompts), model.pipe.unet.config.in_channels, size, size)
    x = torch.randn(shape, generator=generator).to(model.device) * float(1 + sigmas[0] ** 2) ** 0.5
    steps_gen = None  # stochastic samplers draw on the model's device
    if generator is not None:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        steps_gen = torch.Generator(model.device).manual_seed(seed)
    if truncate_t_n:
        x = run_sampler(denoiser, x, sigmas, sampler, steps_gen)
        return denoiser(x, sigmas[-1].float().expand(len(x)))
    return run_sampler(denoiser, x, torch.cat([sigmas, sigmas.new_zeros(1)]), sampler, steps_gen)


def generate_images(
    model: LatentModel,
    prompts: list[str],
    batch_size: int = 4,
    seed: int = 0,
    **kwargs,
) -> Tensor:
    """Images ``[N, 3, R, R]`` in ``[-1, 1]`` for ``prompts``, ``batch_size`` at a time, starting
    noise from ``seed``; ``kwargs`` go to :func:`generate_latents`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([model.decode(generate_latents(model, prompts[i:i + batch_size],
                                                    generator=generator, **kwargs))
                      for i in range(0, len(prompts), batch_size)])


def write_pngs(images: Tensor, out_dir: str | Path, prefix: str = "sample") -> list[Path]:
    """Write ``images`` ``[N, 3, H, W]`` in ``[-1, 1]`` as ``out_dir/{prefix}_{i:05d}.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images)):
        path = out / f"{prefix}_{i:05d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths
