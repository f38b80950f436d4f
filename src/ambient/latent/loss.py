"""The latent training loss: ambient VP loss above ``t_n`` plus the consistency loss below it.

With noisy latents ``y = sqrt(1 - s^2) z0 + s eps`` (``s`` the VP level of ``t_n``):

* ambient (Theorem A.5, :func:`ambient.losses.ambient_loss_vp`): integer timesteps
  ``t ~ U{t_n + 1, ..., T - 1}`` (the paper's ``t ~ U(t_n, T)``), ``v = sqrt(1 - a_t)``,
  unweighted ``|| y_hat - y ||^2`` with ``y_hat`` the model's estimate of ``E[y | x_v]``;
* consistency (:func:`ambient.losses.consistency_loss`) in the VE view
  ``x_ve = y / sqrt(1 - s^2)``, ``sigma_n = s / sqrt(1 - s^2)``, on a sub-batch, drawn exactly as
  :func:`ambient.objective.consistency_term` draws it (same :class:`ConsistencyConfig` fields), but
  with each row keeping its own text conditioning; levels below the schedule's lowest
  (timestep 0) are not trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ambient.latent.adapter import UNetConditioning, ve_view
from ambient.losses import Denoiser, ambient_loss_vp, consistency_loss
from ambient.noise import ve_sigma_from_timestep, vp_from_timestep, vp_to_ve
from ambient.objective import ConsistencyConfig, run_chain

DenoiserFactory = Callable[[UNetConditioning], Denoiser]


def data_level(t_n: int, alphas_cumprod: Tensor) -> float:
    """VP level ``s`` of data noised at timestep ``t_n``: ``sqrt(1 - alphas_cumprod[t_n])``, and 0
    for ``t_n = 0`` (clean data, the paper's ``t_n = 0``)."""
    return 0.0 if t_n == 0 else float(vp_from_timestep(t_n, alphas_cumprod))


def _log_uniform(lo: Tensor, hi: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(lo.shape, generator=generator, device=lo.device, dtype=lo.dtype)
    return torch.exp(torch.log(lo) + u * (torch.log(hi) - torch.log(lo)))


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
    """Per-sample consistency loss on ``ceil(cfg.fraction * B)`` random rows of the batch.

    ``make_denoiser(cond_rows)`` gives the VP denoiser for those rows; ``s`` ``[B]`` are the VP
    levels of ``y`` (all > 0); ``ambient`` is the ambient loss's ``(x, v, D(x, v))`` (needed for
    ``cfg.start == "ambient"``). Levels are VE; ``sigma_floor`` replaces ``cfg.sigma_min`` when
    larger (the VE level of timestep 0)."""
    count = math.ceil(cfg.fraction * y.shape[0])
    pick = torch.randperm(y.shape[0], generator=generator, device=y.device)[:count]
    denoiser = ve_view(make_denoiser(cond.select(pick)))
    y_ve, s_ve = vp_to_ve(y[pick], s[pick])
    floor = torch.full_like(s_ve, max(cfg.sigma_min, sigma_floor))
    teacher = None
    if cfg.start == "data":
        sigma = _log_uniform(floor, s_ve, generator)
        x = run_chain(denoiser, y_ve, s_ve, sigma, cfg.chain_steps, generator)
    elif ambient is None:
        raise ValueError("consistency start='ambient' needs the ambient loss's x, v, denoised")
    else:
        x, sigma = vp_to_ve(ambient[0][pick], ambient[1][pick])
        teacher = ambient[2][pick]
    if cfg.target == "step":
        sigma_next = sigma * (1 - cfg.step)
    else:
        sigma_next = _log_uniform(floor, torch.minimum(sigma, s_ve), generator)
    noise = tuple(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                  for _ in range(2))
    return consistency_loss(denoiser, x, sigma, sigma_next, teacher=teacher,
                            teacher_grad=cfg.teacher_grad, single_backward=cfg.single_backward,
                            noise=noise).loss


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

