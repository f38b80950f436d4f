"""The latent training loss: ambient VP loss above ``t_n`` plus the consistency loss below it.

With noisy latents ``y = sqrt(1 - s^2) z0 + s eps`` (``s`` the VP level of ``t_n``):

* ambient (Theorem A.5, :func:`ambient.losses.ambient_loss_vp`): integer timesteps
  ``t ~ U{t_n + 1, ..., T - 1}`` (the paper's ``t ~ U(t_n, T)``), ``v = sqrt(1 - a_t)``,
  unweighted ``|| y_hat - y ||^2`` with ``y_hat`` the model's estimate of ``E[y | x_v]``;
* consistency (:func:`ambient.losses.consistency_loss`) in the VE view
  ``x_ve = y / sqrt(1 - s^2)``, ``sigma_n = s / sqrt(1 - s^2)``, on a sub-batch, drawn exactly as
  :func:`ambient.objective.consistency_term` draws it (the same functions and
  :class:`ConsistencyConfig` fields), each row keeping its own text conditioning; levels below
  the schedule's lowest (timestep 0) are not trained.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ambient.latent.adapter import UNetConditioning, ve_view
from ambient.losses import Denoiser, ambient_loss_vp
from ambient.noise import ve_sigma_from_timestep, vp_from_timestep, vp_to_ve
from ambient.objective import ConsistencyConfig, consistency_rows, pick_rows

DenoiserFactory = Callable[[UNetConditioning], Denoiser]


def data_level(t_n: int, alphas_cumprod: Tensor) -> float:
    """VP level ``s`` of data noised at timestep ``t_n``: ``sqrt(1 - alphas_cumprod[t_n])``, and 0
    for ``t_n = 0`` (clean data, the paper's ``t_n = 0``)."""
    return 0.0 if t_n == 0 else float(vp_from_timestep(t_n, alphas_cumprod))


def latent_consistency(
    make_denoiser: DenoiserFactory,
    y: Tensor,
    s: Tensor,
    cond: UNetConditioning,
    cfg: ConsistencyConfig,
    sigma_floor: float,
    ambient: tuple[Tensor, Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample consistency loss on the sub-batch :func:`ambient.objective.pick_rows` draws,
    computed by :func:`ambient.objective.consistency_rows` in the VE view, each row keeping its
    own text conditioning. ``s`` ``[B]`` are the VP levels of ``y`` (all > 0); ``ambient`` is the
    ambient loss's ``(x, v, D(x, v))``; ``sigma_floor`` is the VE level of timestep 0."""
    y_ve, s_ve = vp_to_ve(y, s)
    pick = pick_rows(s_ve, cfg.fraction, cfg.sigma_min, generator)
    denoiser = ve_view(make_denoiser(cond.select(pick)))
    rows = None
    if ambient is not None:
        x_ve, sigma = vp_to_ve(ambient[0][pick], ambient[1][pick])
        rows = (x_ve, sigma, ambient[2][pick])
    return consistency_rows(denoiser, y_ve[pick], s_ve[pick], cfg, rows, generator,
                            sigma_floor=sigma_floor)


def latent_loss(
    make_denoiser: DenoiserFactory,
    y: Tensor,
    cond: UNetConditioning,
    alphas_cumprod: Tensor,
    t_n: int,
    consistency: ConsistencyConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss of one batch ``y`` ``[B, C, h, w]`` (noisy latents at timestep ``t_n``; clean
    for ``t_n = 0``) with conditioning rows ``cond``, and its detached parts:
    ``mean(ambient) + consistency.weight * mean(consistency)`` (module docstring)."""
    n, device = y.shape[0], y.device
    num_t = alphas_cumprod.numel()
    s_level = data_level(t_n, alphas_cumprod)
    s = torch.full((n,), s_level, device=device, dtype=y.dtype)
    t = torch.randint(t_n + 1, num_t, (n,), generator=generator, device=device)
    v = vp_from_timestep(t, alphas_cumprod).to(device, y.dtype)
    noise = torch.randn(y.shape, generator=generator, device=device, dtype=y.dtype)
    amb = ambient_loss_vp(make_denoiser(cond), y, s, v, noise)
    loss = amb.loss.mean()
    stats = {"ambient": loss.detach()}
    if consistency.weight > 0 and s_level > 0:
        floor = float(ve_sigma_from_timestep(0, alphas_cumprod))
        cons = latent_consistency(make_denoiser, y, s, cond, consistency, floor,
                                  (amb.x, amb.sigma, amb.denoised), generator).mean()
        loss = loss + consistency.weight * cons
        stats["consistency"] = cons.detach()
    stats["loss"] = loss.detach()
    return loss, stats

