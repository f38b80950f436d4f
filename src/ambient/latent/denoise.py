"""The denoising table of a latent model (the paper's Table 1): one-step denoising of held-out
images at several timesteps, error in latent space and after decoding in pixel space.

For each timestep ``t`` (with ``v = sqrt(1 - a_t)``) and image ``x`` with latent ``z0 = E(x)``:

    x_t        = sqrt(1 - v^2) z0 + v eps            (eps from a fixed seed per (t, image))
    latent MSE = mean((D(x_t, v) - z0)^2)
    pixel MSE  = mean((Dec(D(x_t, v)) - x)^2 / 4)   (pixels in [0, 1])

reported as the mean and standard deviation over images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ambient.latent.model import LatentModel, sdxl_time_ids
from ambient.noise import add_noise_vp

PAPER_TIMESTEPS = (900, 800, 500, 100)


@torch.no_grad()
def latent_denoising_table(
    model: LatentModel,
    images: Tensor,
    timesteps: tuple[int, ...] = PAPER_TIMESTEPS,
    prompt: str = "",
    batch_size: int = 4,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Rows ``{t, latent_mse, latent_mse_std, pixel_mse, pixel_mse_std}`` for ``images``
    ``[N, 3, H, W]`` in ``[-1, 1]`` (module docstring)."""
    res = images.shape[-1]
    time_ids = sdxl_time_ids((res, res), (0, 0), (res, res))[None]
    rows = []
    for t in timesteps:
        v = model.data_level(t)
        generator = torch.Generator().manual_seed(seed * 100_003 + t)
        latent_err, pixel_err = [], []
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size]
            z0 = model.encode(batch)
            eps = torch.randn(z0.shape, generator=generator).to(z0)
            cond, _ = model.conditioning([prompt] * len(batch), time_ids)
            denoised = model.denoiser(cond)(add_noise_vp(z0, 0.0, v, eps), v)
            latent_err.append((denoised - z0).pow(2).flatten(1).mean(1).cpu())
            decoded = model.decode(denoised)
            pixel_err.append(((decoded - batch.cpu()) / 2).pow(2).flatten(1).mean(1))
        lat, pix = torch.cat(latent_err), torch.cat(pixel_err)
        rows.append({"t": t,
                     "latent_mse": float(lat.mean()), "latent_mse_std": float(lat.std(correction=0)),
                     "pixel_mse": float(pix.mean()), "pixel_mse_std": float(pix.std(correction=0))})
    return rows


def format_latent_table(rows: list[dict[str, float]]) -> str:
    """Markdown table of :func:`latent_denoising_table` rows, ``mean (std)`` as in the paper."""
    lines = ["| t | latent MSE | pixel MSE |", "|---|---|---|"]
    lines += [f"| {r['t']} | {r['latent_mse']:.4f} ({r['latent_mse_std']:.4f}) | "
              f"{r['pixel_mse']:.4f} ({r['pixel_mse_std']:.4f}) |" for r in rows]
    return "\n".join(lines)
