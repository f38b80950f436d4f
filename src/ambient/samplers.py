"""Samplers driven by any denoiser ``D(x, sigma)`` (VE convention, k-diffusion style).

A sampler is a plain function ``sample_x(denoiser, x, sigmas)``: ``x`` is the state at
``sigmas[0]`` and ``sigmas`` is a decreasing schedule, shared by the batch (``[n]``) or one per
sample (``[n, N]``, see :func:`edm_sigmas`). Every step
uses the one reverse-step formula :func:`reverse_step` (DDIM with stochasticity ``eta``),
which the consistency loss reuses for its draws:

    mean = D + sqrt(sigma'^2 - c^2) * (x - D) / sigma,       c = eta * sigma' * sqrt(1 - sigma'^2 / sigma^2)
    x'   = mean + c * z

``eta = 0`` is DDIM, i.e. an Euler step of the probability-flow ODE ``dx/dsigma = (x - D)/sigma``;
``eta = 1`` is the ancestral step (Euler-Maruyama / DDPM posterior with ``D`` in place of x0),
``mean = x - (sigma^2 - sigma'^2)/sigma^2 * (x - D)``, ``std = sigma' * sqrt(sigma^2 - sigma'^2) / sigma``.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ambient.noise import add_noise_ve, bcast

Denoiser = Callable[[Tensor, Tensor], Tensor]
SamplerName = Literal["heun", "euler", "ddim", "multistep"]
EDM_RHO = 7.0  # the EDM schedule's default curvature


def edm_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float | Tensor = 80.0,
    rho: float = EDM_RHO,
    device: torch.device | str | None = None,
) -> Tensor:
    """EDM (Karras et al.) schedule with a final 0:
    ``sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``, i = 0..n-1;
    ``rho = inf`` is its limit, the geometric schedule ``sigma_i = smax (smin/smax)^(i/(n-1))``.

    ``sigma_max`` may be per-sample levels ``[N]``: the result is then one schedule per sample,
    shape ``[n + 1, N]`` (every sampler here accepts such a schedule)."""
    top = torch.as_tensor(sigma_max, dtype=torch.float64, device=device)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not sigma_min > 0 or bool((top < sigma_min).any()):
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(num_steps, dtype=torch.float64, device=top.device)
    frac = (i / max(num_steps - 1, 1)).reshape(-1, *([1] * top.ndim))
    if math.isinf(rho):
        levels = top * (sigma_min / top) ** frac
    else:
        levels = (top ** (1 / rho) + frac * (sigma_min ** (1 / rho) - top ** (1 / rho))) ** rho
    return torch.cat([levels, torch.zeros((1, *top.shape), dtype=torch.float64,
                                          device=top.device)])


def reverse_step(
    x: Tensor,
    denoised: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    eta: float,
    noise: Tensor | None = None,
) -> Tensor:
    """One DDIM(eta) step from level ``sigma`` to ``sigma_next < sigma`` given ``denoised = D(x, sigma)``
    (formula in the module docstring). Levels may be scalars or per-sample ``[N]``."""
    s = bcast(sigma, x)
    s_next = bcast(sigma_next, x)
    c = eta * s_next * torch.sqrt((1.0 - (s_next / s) ** 2).clamp_min(0.0))
    mean = denoised + torch.sqrt((s_next**2 - c**2).clamp_min(0.0)) * (x - denoised) / s
    if eta == 0.0:
        return mean
    if noise is None:
        noise = torch.randn_like(x)
    return mean + c * noise


def _levels(sigma: Tensor, x: Tensor) -> Tensor:
    """One level (scalar) or per-sample levels ``[N]`` of a schedule row, as ``[N]``."""
    return sigma.to(x.dtype).expand(x.shape[0])


def _positive(sigmas: Tensor) -> list[bool]:
    """Whether each row of a schedule is above 0 for every sample, read in one device sync
    (not one per step: a sync per step would stall a GPU between the steps' launches)."""
    return (sigmas.reshape(len(sigmas), -1) > 0).all(1).tolist()


def _step_noise(x: Tensor, eta: float, generator: torch.Generator | None) -> Tensor | None:
    """The fresh noise of a DDIM(eta) step (None for the deterministic ``eta = 0``)."""
    if eta == 0:
        return None
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _progress(n: int, progress: bool, desc: str) -> range | tqdm:
    return tqdm(range(n), desc=desc, leave=False) if progress else range(n)


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM(eta) along ``sigmas``: ``eta=0`` deterministic, ``eta=1`` ancestral (Euler-Maruyama)."""
    sigmas = sigmas.to(x.device)
    for i in _progress(len(sigmas) - 1, progress, "ddim"):
        denoised = denoiser(x, _levels(sigmas[i], x))
        noise = _step_noise(x, eta, generator)
        x = reverse_step(x, denoised, sigmas[i].to(x.dtype), sigmas[i + 1].to(x.dtype), eta, noise)
    return x


def sample_euler_maruyama(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Stochastic sampler: the ancestral (Euler-Maruyama) discretisation of the reverse SDE,
    i.e. :func:`sample_ddim` with ``eta = 1``."""
    return sample_ddim(denoiser, x, sigmas, eta=1.0, generator=generator, progress=progress)


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    progress: bool = False,
) -> Tensor:
    """EDM deterministic 2nd-order sampler on ``dx/dsigma = (x - D(x, sigma)) / sigma``:
    Euler predictor, trapezoidal corrector (skipped on the last step when ``sigma' = 0``)."""
    sigmas = sigmas.to(device=x.device, dtype=x.dtype)
    positive = _positive(sigmas)
    for i in _progress(len(sigmas) - 1, progress, "heun"):
        s, s_next = _levels(sigmas[i], x), _levels(sigmas[i + 1], x)
        h = bcast(s_next - s, x)
        d = (x - denoiser(x, s)) / bcast(s, x)
        x_next = x + h * d
        if positive[i + 1]:
            d_next = (x_next - denoiser(x_next, s_next)) / bcast(s_next, x)
            x_next = x + h * 0.5 * (d + d_next)
        x = x_next
    return x


@torch.no_grad()
def sample_multistep(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    progress: bool = False,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """2nd-order multistep sampler, one evaluation per step (DPM-Solver++(2M) in the VE case).
    With ``r_i = sigma_{i+1} / sigma_i``, ``h_i = ln(sigma_i / sigma_{i+1})`` and
    ``D_i = D(x_i, sigma_i)``, ``eta = 0`` (deterministic, the probability-flow ODE):

        x_{i+1} = r_i x_i + (1 - r_i) D~_i,   D~_i = D_i + (D_i - D_{i-1}) h_i / (2 h_{i-1})

    (``D~_0 = D_0``, and the last step, to ``sigma = 0``, is ``x = D`` as in DDIM): the DDIM step
    :func:`reverse_step` with ``D`` extrapolated linearly in ``ln sigma``. ``eta > 0`` takes the
    DDIM(eta) step instead; ``eta = 1`` is the SDE solver DPM-Solver++(2M) SDE,
    ``x_{i+1} = r_i^2 x_i + (1 - r_i^2) D~_i + sigma_{i+1} sqrt(1 - r_i^2) z``."""
    sigmas = sigmas.to(device=x.device, dtype=x.dtype)
    last: tuple[Tensor, Tensor] | None = None  # the previous step's D and log-step
    positive = _positive(sigmas)
    for i in _progress(len(sigmas) - 1, progress, "multistep"):
        s, s_next = _levels(sigmas[i], x), _levels(sigmas[i + 1], x)
        denoised = denoiser(x, s)
        if not positive[i + 1]:
            return denoised
        h = torch.log(s / s_next)
        extrapolated = denoised
        if last is not None:
            previous, h_previous = last
            extrapolated = denoised + (denoised - previous) * bcast(h / (2 * h_previous), x)
        noise = _step_noise(x, eta, generator)
        x = reverse_step(x, extrapolated, s, s_next, eta, noise)
        last = denoised, h
    return x


def run_sampler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    sampler: SamplerName = "heun",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Dispatch to ``heun`` (EDM, deterministic), ``euler`` (Euler-Maruyama), ``ddim`` or
    ``multistep`` (deterministic, 2nd order, one evaluation per level)."""
    if sampler == "heun":
        return sample_heun(denoiser, x, sigmas, progress=progress)
    if sampler == "euler":
        return sample_euler_maruyama(denoiser, x, sigmas, generator=generator, progress=progress)
    if sampler == "ddim":
        return sample_ddim(denoiser, x, sigmas, eta=0.0, progress=progress)
    if sampler == "multistep":
        return sample_multistep(denoiser, x, sigmas, progress=progress)
    raise ValueError(f"unknown sampler {sampler!r}: choose {', '.join(typing.get_args(SamplerName))}")


def sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    num_steps: int = 32,
    sampler: SamplerName = "heun",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    truncate_at: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Tensor:
    """Draw ``shape[0]`` samples starting from ``N(0, sigma_max^2 I)``.

    Full sampling runs the schedule to 0 (needs a denoiser exact below the data's level).
    Truncated sampling (``truncate_at = s``) runs the same schedule down to ``s`` and outputs
    ``D(x_s, s)``: a draw from the law of ``E[x0 | x_s]`` (the no-consistency baseline)."""
    x = sigma_max * torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if truncate_at is None:
        sigmas = edm_sigmas(num_steps, sigma_min, sigma_max, device=device)
        return run_sampler(denoiser, x, sigmas, sampler, generator, progress)
    return sample_truncated(denoiser, x, num_steps, truncate_at, sigma_max, sampler, generator,
                            progress)


def sample_truncated(
    denoiser: Denoiser,
    x: Tensor,
    num_steps: int,
    sigma_stop: float,
    sigma_start: float,
    sampler: SamplerName = "heun",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Run from ``sigma_start`` down to ``sigma_stop`` (EDM spacing, ``num_steps`` levels) and
    output ``D(x_{sigma_stop}, sigma_stop)``."""
    if not 0 < sigma_stop < sigma_start:
        raise ValueError(f"need 0 < sigma_stop < sigma_start, got {sigma_stop}, {sigma_start}")
    sigmas = edm_sigmas(num_steps, sigma_stop, sigma_start, device=x.device)[:-1]
    x = run_sampler(denoiser, x, sigmas, sampler, generator, progress)
    with torch.no_grad():
        return denoiser(x, _levels(sigmas[-1], x))


def posterior_sample(
    denoiser: Denoiser,
    y: Tensor,
    sigma_start: float,
    num_steps: int = 32,
    sampler: SamplerName = "euler",
    sigma_y: float = 0.0,
    sigma_min: float = 0.002,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Posterior sampling from a corrupted input (the memorisation attack): take ``y`` (at level
    ``sigma_y``, 0 for a clean image) to ``sigma_start`` with fresh noise,
    ``x = y + sqrt(sigma_start^2 - sigma_y^2) z``, then run the reverse process from there to 0."""
    noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    x = add_noise_ve(y, sigma_y, sigma_start, noise)
    sigmas = edm_sigmas(num_steps, sigma_min, sigma_start, device=y.device)
    return run_sampler(denoiser, x, sigmas, sampler, generator, progress)
