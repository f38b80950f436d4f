"""Noise-level conventions: variance exploding (VE, EDM sigma) and variance preserving (VP, DDPM).

VE:  ``x_sigma = x0 + sigma * z``                      (sigma in [0, inf))
VP:  ``x_v     = sqrt(1 - v^2) * x0 + v * z``           (v in [0, 1)), DDPM ``alphas_cumprod = 1 - v^2``

The two are one problem under the change of variables

    x_ve = x_vp / sqrt(1 - v^2),      sigma = v / sqrt(1 - v^2),      v = sigma / sqrt(1 + sigma^2).

A noise level is always a tensor of shape ``[N]`` (one level per sample) or a scalar; helpers
here broadcast it against data of shape ``[N, ...]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def as_levels(level: Tensor | float, x: Tensor) -> Tensor:
    """Return ``level`` as a float tensor of shape ``[N]`` on ``x``'s device and dtype."""
    level = torch.as_tensor(level, dtype=x.dtype, device=x.device)
    if level.ndim == 0:
        return level.expand(x.shape[0])
    if level.shape != (x.shape[0],):
        raise ValueError(
            f"noise levels must be a scalar or have shape [{x.shape[0]}] (one per sample), "
            f"got shape {list(level.shape)}"
        )
    return level


def bcast(level: Tensor | float, x: Tensor) -> Tensor:
    """Reshape per-sample levels ``[N]`` to ``[N, 1, ..., 1]`` so they broadcast against ``x``."""
    return as_levels(level, x).reshape(-1, *([1] * (x.ndim - 1)))


# ----------------------------------------------------------------------------- VE <-> VP


def ve_sigma_from_vp(v: Tensor) -> Tensor:
    """``sigma = v / sqrt(1 - v^2)``."""
    return v / torch.sqrt(1.0 - v * v)


def vp_from_ve_sigma(sigma: Tensor) -> Tensor:
    """``v = sigma / sqrt(1 + sigma^2)``."""
    return sigma / torch.sqrt(1.0 + sigma * sigma)


def vp_to_ve(x_vp: Tensor, v: Tensor | float) -> tuple[Tensor, Tensor]:
    """Map a VP state ``(x_vp, v)`` to the VE state ``(x_vp / sqrt(1 - v^2), v / sqrt(1 - v^2))``."""
    v = as_levels(v, x_vp)
    return x_vp / torch.sqrt(1.0 - bcast(v, x_vp) ** 2), ve_sigma_from_vp(v)


def ve_to_vp(x_ve: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    """Map a VE state ``(x_ve, sigma)`` to the VP state ``(x_ve / sqrt(1 + sigma^2), v)``."""
    sigma = as_levels(sigma, x_ve)
    return x_ve / torch.sqrt(1.0 + bcast(sigma, x_ve) ** 2), vp_from_ve_sigma(sigma)


# ----------------------------------------------------------------------------- DDPM schedules


def alphas_cumprod_scaled_linear(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> Tensor:
    """Stable Diffusion / SDXL schedule: ``beta_t = linspace(sqrt(b0), sqrt(b1), T)^2``,
    ``alphas_cumprod_t = prod_{i<=t} (1 - beta_i)`` (float64)."""
    betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod_linear(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
) -> Tensor:
    """Original DDPM schedule: ``beta_t = linspace(b0, b1, T)`` (float64)."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def vp_from_timestep(t: Tensor | int, alphas_cumprod: Tensor) -> Tensor:
    """VP level of integer DDPM timestep(s) ``t``: ``v = sqrt(1 - alphas_cumprod[t])``."""
    t = torch.as_tensor(t, dtype=torch.long, device=alphas_cumprod.device)
    if (t < 0).any() or (t >= alphas_cumprod.numel()).any():
        raise ValueError(f"timesteps must lie in [0, {alphas_cumprod.numel() - 1}], got {t.tolist()}")
    return torch.sqrt(1.0 - alphas_cumprod[t])


def timestep_from_vp(v: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Continuous DDPM timestep of VP level(s) ``v``, linearly interpolated in ``v`` between
    integer timesteps (``v`` increases with ``t``). Inverse of :func:`vp_from_timestep`
    on integers."""
    levels = torch.sqrt(1.0 - alphas_cumprod).to(v.device, torch.float64)
    vv = v.to(torch.float64).clamp(levels[0], levels[-1])
    hi = torch.searchsorted(levels, vv).clamp(1, levels.numel() - 1)
    lo = hi - 1
    frac = (vv - levels[lo]) / (levels[hi] - levels[lo])
    return (lo + frac).to(v.dtype)


def ve_sigma_from_timestep(t: Tensor | int, alphas_cumprod: Tensor) -> Tensor:
    """diffusers' Euler-scheduler sigma of timestep ``t``: ``sqrt((1 - a_t) / a_t)``."""
    return ve_sigma_from_vp(vp_from_timestep(t, alphas_cumprod))


# ----------------------------------------------------------------------------- adding noise


def add_noise_ve(y: Tensor, s: Tensor | float, sigma: Tensor | float, noise: Tensor) -> Tensor:
    """Take samples at VE level ``s`` to level ``sigma >= s``:
    ``x = y + sqrt(sigma^2 - s^2) * noise``; ``x`` then has exactly the law of ``x_sigma``."""
    s, sigma = as_levels(s, y), as_levels(sigma, y)
    extra = (sigma * sigma - s * s).clamp_min(0.0)
    return y + bcast(torch.sqrt(extra), y) * noise


def add_noise_vp(y: Tensor, s: Tensor | float, v: Tensor | float, noise: Tensor) -> Tensor:
    """Take samples at VP level ``s`` to level ``v >= s``:
    ``x = sqrt((1 - v^2)/(1 - s^2)) * y + sqrt((v^2 - s^2)/(1 - s^2)) * noise``."""
    s, v = as_levels(s, y), as_levels(v, y)
    one_m_s2 = 1.0 - s * s
    scale = torch.sqrt((1.0 - v * v) / one_m_s2)
    extra = torch.sqrt(((v * v - s * s) / one_m_s2).clamp_min(0.0))
    return bcast(scale, y) * y + bcast(extra, y) * noise


def corrupt(x0: Tensor, sigma_n: Tensor | float, noise: Tensor) -> Tensor:
    """Nature's corruption in VE: ``y = x0 + sigma_n * noise``."""
    return add_noise_ve(x0, 0.0, sigma_n, noise)
