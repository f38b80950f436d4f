"""Training losses as pure functions of a denoiser ``D(x, sigma)`` and a batch.

Every loss returns :class:`LossTerms`: the per-sample loss ``[N]`` (mean over the non-batch
dimensions) plus the network input and output, so a caller can reuse the evaluation
(e.g. as the consistency loss's teacher) instead of paying for it twice.

Conventions (see ``shared/MATH.md``): VE levels, data ``y = x0 + s z`` with per-sample
``s = sigma_n`` (0 = clean sample), EDM weight ``lambda(sigma) = (sigma^2 + sd^2)/(sigma sd)^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ambient.noise import add_noise_ve, add_noise_vp, as_levels, bcast
from ambient.samplers import edm_sigmas, reverse_step, sample_multistep

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass
class RefitMemory:
    """The own draws of the last :func:`own_sample_loss` call with ``extrapolate > 0`` and their
    data levels, kept between training steps: the next call pairs them with their draws one
    refit behind, taken in the same ODE solve as its new draws (one batched solve instead of two
    in a row). Only for an unconditional denoiser: the rows it keeps come from another batch."""

    draws: Tensor | None = None
    levels: Tensor | None = None


class LossTerms(NamedTuple):
    """Per-sample loss ``[N]``, the noisy input ``x`` fed to the network, its level and ``D(x, .)``."""

    loss: Tensor
    x: Tensor
    sigma: Tensor
    denoised: Tensor


def _mean_sq(t: Tensor) -> Tensor:
    return t.pow(2).flatten(1).mean(dim=1)


def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma * sd)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_log_normal(
    lo: Tensor,
    hi: Tensor | float,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Levels from EDM's log-normal ``ln sigma ~ N(p_mean, p_std^2)`` truncated to ``(lo, hi)`` per
    element (``lo = 0``: no lower bound), drawn exactly by inverse CDF, in float64:

        u ~ U(Phi(a), Phi(b)),  a = (ln lo - p_mean)/p_std,  b = (ln hi - p_mean)/p_std,
        sigma = exp(p_mean + p_std * Phi^-1(u))."""
    lo = lo.to(torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    a = torch.where(lo > 0, normal.cdf((torch.log(lo.clamp_min(1e-300)) - p_mean) / p_std),
                    torch.zeros_like(lo))
    if isinstance(hi, Tensor):
        b = normal.cdf((torch.log(hi.to(torch.float64)) - p_mean) / p_std)
    else:
        b = normal.cdf(torch.tensor((math.log(hi) - p_mean) / p_std, dtype=torch.float64))
    u = torch.rand(lo.shape, generator=generator, dtype=torch.float64, device=lo.device)
    p = (a + (b - a) * u).clamp(1e-15, 1 - 1e-15)
    return torch.exp(p_mean + p_std * torch.special.ndtri(p))


def sample_sigma_above(
    sigma_n: Tensor,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_max: float = 80.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training levels: :func:`sample_log_normal` truncated to ``(sigma_n, sigma_max]`` per
    sample. Every draw lies strictly above its sample's ``sigma_n`` (none is wasted at
    ``sigma = sigma_n``, where the ambient loss is identically 0); with ``sigma_n = 0`` it is
    EDM's distribution (capped at ``sigma_max``)."""
    s = sigma_n.to(torch.float64)
    if (s >= sigma_max).any():
        raise ValueError(
            f"sigma_n must be below the model's sigma_max={sigma_max}; got max sigma_n={s.max():.4g}"
        )
    sigma = sample_log_normal(s, sigma_max, p_mean, p_std, generator)
    # Guard against rounding at the lower end: stay strictly above sigma_n.
    sigma = torch.maximum(sigma, s * (1 + 1e-6) + 1e-12).clamp_max(sigma_max)
    return sigma.to(sigma_n.dtype)


def ambient_loss(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor | float,
    sigma: Tensor,
    noise: Tensor | None = None,
    sigma_data: float = 0.5,
    weight_cap: float = 1.0,
) -> LossTerms:
    """Ambient denoising score matching (VE), learns ``D = E[x0 | x_sigma]`` for ``sigma > sigma_n``.

        x     = y + sqrt(sigma^2 - s^2) * eta                    (law of x_sigma)
        r     = (sigma^2 - s^2) / sigma^2
        y_hat = r * D(x, sigma) + (s^2 / sigma^2) * x             (= E[y | x] when D = E[x0 | x])
        loss  = lambda(sigma) * min(1 / r^2, weight_cap) * mean((y_hat - y)^2)

    ``y_hat - y = r (D - x0_amb)`` with ``x0_amb = (sigma^2 y - s^2 x) / (sigma^2 - s^2)``, so
    ``weight_cap = 1`` is the paper's weighting ``lambda r^2 ||D - x0_amb||^2`` (bounded, no
    division), and a larger cap moves towards the x0-space weight ``lambda ||D - x0_amb||^2``
    (whose variance explodes as sigma -> s) while capping the factor ``1/r^2`` at ``weight_cap``.
    With ``s = 0``: ``r = 1`` and this is exactly :func:`dsm_loss`. (The paper's printed
    Theorem 3.1 has ``r (D - x)`` in place of ``r D``; that variant has the wrong minimiser.)"""
    if weight_cap < 1.0 or not math.isfinite(weight_cap):
        raise ValueError(f"weight_cap must be finite and >= 1, got {weight_cap}")
    s = as_levels(sigma_n, y)
    sigma = as_levels(sigma, y)
    if noise is None:
        noise = torch.randn_like(y)
    x = add_noise_ve(y, s, sigma, noise)
    denoised = denoiser(x, sigma)
    s2, sig2 = bcast(s, y) ** 2, bcast(sigma, y) ** 2
    y_hat = (sig2 - s2) / sig2 * denoised + s2 / sig2 * x
    r2 = ((sigma**2 - s**2) / sigma**2) ** 2
    weight = edm_weight(sigma, sigma_data) / torch.maximum(r2, torch.full_like(r2, 1 / weight_cap))
    return LossTerms(weight * _mean_sq(y_hat - y), x, sigma, denoised)


def dsm_loss(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor | None = None,
    sigma_data: float = 0.5,
) -> LossTerms:
    """Denoising score matching (EDM): ``lambda(sigma) * mean((D(x0 + sigma eta, sigma) - x0)^2)``.
    It is :func:`ambient_loss` at ``sigma_n = 0``."""
    return ambient_loss(denoiser, x0, 0.0, sigma, noise, sigma_data)


def ambient_loss_vp(
    denoiser: Denoiser,
    y: Tensor,
    s: Tensor | float,
    v: Tensor,
    noise: Tensor | None = None,
    weight: Tensor | float = 1.0,
) -> LossTerms:
    """Ambient score matching in the VP convention (Theorem A.5), ``D(x, v) = E[x0 | x_v = x]``:

        x     = sqrt((1 - v^2)/(1 - s^2)) y + sqrt((v^2 - s^2)/(1 - s^2)) eta
        y_hat = (v^2 - s^2) / (v^2 sqrt(1 - s^2)) * D(x, v) + (s^2 / v^2) sqrt((1 - v^2)/(1 - s^2)) * x
        loss  = weight * mean((y_hat - y)^2)

    Under ``x_ve = x / sqrt(1 - v^2)``, ``sigma = v / sqrt(1 - v^2)`` the residual is exactly
    ``sqrt(1 - s^2)`` times the VE residual of :func:`ambient_loss`."""
    s = as_levels(s, y)
    v = as_levels(v, y)
    if noise is None:
        noise = torch.randn_like(y)
    x = add_noise_vp(y, s, v, noise)
    denoised = denoiser(x, v)
    sb, vb = bcast(s, y), bcast(v, y)
    y_hat = ((vb**2 - sb**2) / (vb**2 * torch.sqrt(1 - sb**2)) * denoised
             + sb**2 / vb**2 * torch.sqrt((1 - vb**2) / (1 - sb**2)) * x)
    return LossTerms(as_levels(weight, y) * _mean_sq(y_hat - y), x, v, denoised)


def sure_loss(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor | float,
    probe: Tensor | None = None,
    fd_eps: float = 1e-3,
) -> LossTerms:
    """Stein's unbiased risk estimate (prior-work baseline): learns ``E[x0 | x_{sigma_n}]`` at the
    data level only. Per dimension (d = number of entries),

        SURE = ( ||D(y) - y||^2 - d s^2 + 2 s^2 div D(y) ) / d,    E[SURE] = E||D(y) - x0||^2 / d,

    with ``D(y) = D(y, s)`` and the divergence by Hutchinson's estimator with a finite difference,
    ``div D(y) ~ b . (D(y + eps b) - D(y)) / eps``, ``b ~ N(0, I)``. Costs two network calls."""
    s = as_levels(sigma_n, y)
    if probe is None:
        probe = torch.randn_like(y)
    both = denoiser(torch.cat([y, y + fd_eps * probe]), torch.cat([s, s]))
    denoised, shifted = both.chunk(2)
    div = (probe * (shifted - denoised)).flatten(1).sum(dim=1) / fd_eps
    d = y[0].numel()
    loss = (_mean_sq(denoised - y) * d - d * s**2 + 2 * s**2 * div) / d
    return LossTerms(loss, y, s, denoised)


def consistency_loss(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor,
    sigma_next: Tensor,
    teacher: Tensor | None = None,
    teacher_grad: bool = False,
    single_backward: bool = True,
    noise: tuple[Tensor, Tensor] | None = None,
    substeps: int = 1,
    generator: torch.Generator | None = None,
) -> LossTerms:
    """Unbiased two-draw consistency estimator of ``||E[D(X', sigma')] - D(x, sigma)||^2``:

        T        = D(x, sigma)                                   (teacher; one evaluation)
        X'_1,2   = two independent draws of the model's ancestral chain from (x, sigma) to
                   sigma' in ``substeps`` geometric steps (the first step uses T)
        loss     = < D(X'_1, sigma') - T,  D(X'_2, sigma') - T > / d

    One substep is ``reverse_step(x, T, sigma -> sigma', eta = 1)``; more substeps make a
    large jump follow the model's own reverse process instead of one Gaussian step (whose law
    is concentrated on the posterior mean). Independence of the two draws keeps the estimator
    unbiased for that chain's law; that law is the true transition only for a linear posterior
    mean or small steps, so across a large jump with few substeps even the exact denoiser of a
    mixture does not score 0 (``benchmarks/consistency_exact_teacher.py`` measures the bias).

    Signed: its mean is 0 exactly when ``D`` is consistent along the step. The draws are
    treated as data (no gradient through the sampling path). ``teacher`` reuses an evaluation
    made elsewhere (e.g. by the ambient loss at the same ``x, sigma``); ``teacher_grad``
    lets the gradient reach the teacher too. With ``single_backward`` the second draw is
    evaluated without a graph and the gradient is taken through the first only, doubled:
    ``2 <grad D(X'_1), D(X'_2) - T>`` is still unbiased by symmetry of the draws, and the
    returned value equals the estimator. Cost: 2 forward calls (+1 if no teacher is given,
    + 2 (substeps - 1) without a graph), backward through 1 (or 2) of them. ``noise`` (one
    tensor per draw) fixes the draws of a single substep; otherwise ``generator`` draws them."""
    sigma = as_levels(sigma, x)
    sigma_next = as_levels(sigma_next, x)
    if teacher is None:
        teacher = denoiser(x, sigma)
    if not teacher_grad:
        teacher = teacher.detach()
    if noise is not None and substeps != 1:
        raise ValueError("fixed noise is only supported for substeps=1")
    with torch.no_grad():
        drawn = torch.cat([x, x])
        denoised = torch.cat([teacher, teacher]).detach()
        ratio = sigma_next / sigma
        for k in range(substeps):
            hi = torch.cat([sigma * ratio ** (k / substeps)] * 2)
            lo = torch.cat([sigma * ratio ** ((k + 1) / substeps)] * 2)
            if k > 0:
                denoised = denoiser(drawn, hi)
            z = (torch.cat(noise) if noise is not None else
                 torch.randn(drawn.shape, generator=generator, device=x.device, dtype=x.dtype))
            drawn = reverse_step(drawn, denoised, hi, lo, 1.0, z)
    levels = torch.cat([sigma_next, sigma_next])
    d = x[0].numel()
    if single_backward:
        first = denoiser(drawn[: x.shape[0]], sigma_next)
        with torch.no_grad():
            second = denoiser(drawn[x.shape[0]:], sigma_next)
        a, b = first - teacher, second - teacher
        value = (a * b).flatten(1).sum(1) / d
        surrogate = 2 * (a * b.detach()).flatten(1).sum(1) / d
        loss = surrogate - surrogate.detach() + value.detach()
        return LossTerms(loss, drawn, levels, torch.cat([first, second]))
    out = denoiser(drawn, levels)
    a, b = (out - torch.cat([teacher, teacher])).chunk(2)
    return LossTerms((a * b).flatten(1).sum(1) / d, drawn, levels, out)


def own_samples(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor | float,
    lift: float = 1.1,
    steps: int = 8,
    sigma_min: float = 0.002,
    generator: torch.Generator | None = None,
    rho: float = math.inf,
    eta: float = 0.0,
    stop: Tensor | None = None,
) -> Tensor:
    """The model's own draws from the data, the targets of :func:`own_sample_loss` (no graph):

        x1     = y + sqrt(lift^2 - 1) * s * z                          (a draw of x at lift * s)
        x0_hat = probability-flow ODE of the model, dx/dsigma = (x - D(x, sigma)) / sigma, from
                 lift * s to 0 (``steps`` steps of the 2nd-order multistep solver
                 :func:`ambient.samplers.sample_multistep` on the schedule
                 ``edm_sigmas(steps + 1, sigma_min, lift * s, rho)`` (geometric for rho = inf),
                 then D(., sigma_min))

    ``eta > 0`` replaces the ODE by the solver's stochastic steps (``eta = 1``: the reverse SDE,
    posterior sampling of ``x0`` given the lifted data; see
    :func:`ambient.samplers.sample_multistep`).
    ``stop`` (per-sample levels in ``(0, lift * s)``): the draws end at ``x_stop`` instead, after
    ``steps + 1`` steps of the same schedule shape from ``lift * s`` to ``stop`` (the schedule is
    homogeneous in its ends, so it is ``stop * edm_sigmas(steps + 2, 1, lift * s / stop, rho)``
    without its final 0). ``steps + 1`` forward evaluations (``y`` and ``sigma_n`` per sample)."""
    if lift < 1:
        raise ValueError(f"lift must be >= 1 (the draws start at or above sigma_n), got {lift}")
    s = as_levels(sigma_n, y)
    if stop is None:
        sigmas = edm_sigmas(steps + 1, sigma_min, lift * s, rho)
    else:
        end = as_levels(stop, y).to(torch.float64)
        sigmas = end * edm_sigmas(steps + 2, 1.0, lift * s / end, rho)[:-1]
    with torch.no_grad():
        noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        x = add_noise_ve(y, s, lift * s, noise)
        return sample_multistep(denoiser, x, sigmas.to(y.dtype), eta=eta, generator=generator)


def own_sample_loss(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor | float,
    sigma_next: Tensor,
    lift: float = 1.1,
    steps: int = 8,
    sigma_min: float = 0.002,
    sigma_data: float = 0.5,
    generator: torch.Generator | None = None,
    rho: float = math.inf,
    extrapolate: float = 0.0,
    memory: RefitMemory | None = None,
    share: float = 1.0,
    stop: float = 0.0,
) -> LossTerms:
    """Consistency as a fixed point: DSM below ``sigma_n`` on the model's own draws
    ``x0_hat`` (:func:`own_samples`, from the data lifted to ``lift * s``):

        loss   = lambda(sigma') * mean((D(x0_hat + sigma' eps, sigma') - x0_hat)^2)

    ``stop = a`` in ``(0, 1)`` stops the draws at ``a sigma'`` (``x_a = own_samples(...,
    stop=a sigma')``) and trains ``D(., sigma')`` on them with the ambient loss from that level,
    in x0-space (:func:`ambient_loss` with ``s = a sigma'``, ``weight_cap = 1 / (1 - a^2)^2``,
    so the weight is ``lambda(sigma') / (1 - a^2)^2`` on ``(y_hat - x_a)^2``); ``stop = 0`` is the
    DSM above (:func:`ambient_loss` at ``s = 0``). The fixed point is the same exact denoiser
    (the exact model's ODE carries ``p_s`` to ``p_{a sigma'}``, from which the ambient loss
    learns ``D`` at ``sigma' > a sigma'``), but the target no longer depends on the model
    between ``a sigma'`` and 0: on a Gaussian of variance ``v`` a refit that moves the model's
    variance uniformly by ``delta`` moves the variance at ``sigma'`` by ``delta (s^2 - a^2
    sigma'^2) / (v + s^2)`` instead of ``delta s^2 / (v + s^2)``, a smaller amplification of the
    fit error at the fixed point (largest just below ``s``), bought with the ambient loss's
    noisier target (its x0-space variance grows about ``1 / (1 - a^2)^2`` times).

    Its minimiser makes ``D(., sigma')`` the posterior mean of the law ``q`` of the model's own
    draws, which is the consistency property. With ``lift = 1`` (the default) the ODE starts at
    the data, exact draws of ``p_s``, and uses ``D`` only at and below ``s``; when ``D`` is the
    posterior mean of ``q`` its ODE flow maps ``q * N(0, s^2)`` to ``q``, and being invertible it
    maps ``p_s`` to ``q`` only if ``q * N(0, s^2) = p_s``, whose only solution is ``p_0``: the
    fixed point is the exact denoiser. With ``lift > 1`` fresh noise first takes the data to
    ``lift * s`` and the ambient loss, which pins ``D`` to the truth above ``s``, carries the
    draws down to ``s``. On a Gaussian of variance ``v`` one refit moves the model's variance
    towards ``v`` by the factor ``(lift s)^2 / (v + (lift s)^2)`` (the ancestral SDE:
    ``1 - (v / (v + s^2))^2``, slower), so directions where the clean data barely vary relative
    to ``s`` converge slowly, and the same slowness amplifies any error the targets carry (the
    ODE's discretisation, the network's own error) at the fixed point by about
    ``1 / (1 - factor)``: on that Gaussian (``v = 0.01``, ``s = 0.3``, lift 1.1, 6 steps) the
    fixed point's variance is 1.96 v on the EDM schedule (rho = 7) and 1.16 v on the geometric
    one (rho = inf), hence the default (1.09 v with lift 1); fewer steps shrink it (4 steps:
    0.65 v; 3: the draws collapse), and where ``v << s^2`` no step count is exact
    (``benchmarks/consistency_probes.py``, part 1b). Cost: ``steps + 1`` forward evaluations
    without a graph, then one with a graph.

    ``extrapolate = beta > 0`` extrapolates the refit in law (over-relaxation of the fixed
    point): a second, coupled set of draws ``x0_prev = own_samples(x0_hat + s z')`` follows the
    model once more from its own draws re-noised to ``s`` (a refit behind), and the loss is
    DSM on the signed law ``(1 + beta) q - beta q_prev``:

        loss   = (1 + beta) * lambda(sigma') * mean((D(x0_hat + sigma' eps, sigma') - x0_hat)^2)
                 - beta * lambda(sigma') * mean((D(x0_prev + sigma' eps, sigma') - x0_prev)^2)

    At the fixed point (``q = p_0``) both draws follow ``p_0``, so the minimiser is unchanged.
    On a Gaussian with an exact ODE a refit moves the model's variance by the factor
    ``rho = s^2 / (v + s^2)`` above; the signed law moves it by ``rho (1 - beta (1 - rho))``,
    and a relative fit error is amplified at the fixed point by ``1 / ((1 - rho)(1 + rho beta))``
    instead of ``1 / (1 - rho)``. The signed loss is not bounded below where ``q_prev``'s density
    exceeds ``(1 + beta) / beta`` times ``q``'s (far tails). Each draw behind starts from its
    own ``x0_hat``, so the two terms of a row are correlated and their difference varies little
    (drawn independently, the signed loss is too noisy: measured, it lost its gain). Twice the
    draws and two evaluations with a graph; the draws behind follow a second ODE solve after the
    first, or, given a ``memory`` that holds the last call's draws, the pairs are the kept draws
    (one optimiser step older; ``sigma'`` scaled by the ratio of their level to this row's) and
    their draws behind, in one solve with this call's new draws, which the memory keeps for the
    next call. ``share < 1`` draws behind for the first ``m = ceil(share n)`` rows only and
    puts ``beta n / m`` on their difference, the rest keeping the plain term:

        loss_i = DSM_i(x0_hat) + [i < m] (beta n / m) (DSM_i(x0_hat) - DSM_i(x0_prev))

    (the same expectation, ``n + m`` draws and rows with a graph instead of ``2n``). The returned
    ``x``, ``sigma`` and ``denoised`` hold both sets of rows."""
    if not 0 <= stop < 1:
        raise ValueError(f"stop must be in [0, 1) (the draws end at stop * sigma'), got {stop}")
    if extrapolate == 0:
        end = stop * sigma_next
        x0 = own_samples(denoiser, y, sigma_n, lift, steps, sigma_min, generator, rho,
                         stop=end if stop > 0 else None)
        eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return ambient_loss(denoiser, x0, end, sigma_next, eps, sigma_data,
                            1 / (1 - stop**2) ** 2)
    if stop > 0:
        raise ValueError("stop > 0 with extrapolate > 0 is not implemented (the draws behind end at 0)")
    s = as_levels(sigma_n, y)
    n = len(y)
    m = max(1, math.ceil(share * n))

    def renoised(draws: Tensor, levels: Tensor) -> Tensor:
        z = torch.randn(draws.shape, generator=generator, device=y.device, dtype=y.dtype)
        return draws + bcast(levels, draws) * z

    kept, kept_s = (None, None) if memory is None else (memory.draws, memory.levels)
    if (kept is not None and kept_s is not None and kept.shape[1:] == y.shape[1:]
            and kept.device == y.device):
        take = torch.arange(n, device=y.device) % len(kept)
        x0, x0_s = kept[take], kept_s[take]
        both = own_samples(denoiser, torch.cat([y, renoised(x0[:m], x0_s[:m])]),
                           torch.cat([s, x0_s[:m]]), lift, steps, sigma_min, generator, rho)
        fresh, behind = both[:n], both[n:]
        sigma_next = sigma_next * (x0_s / s)  # the same place below the kept rows' own level
    else:
        fresh = x0 = own_samples(denoiser, y, s, lift, steps, sigma_min, generator, rho)
        behind = own_samples(denoiser, renoised(x0[:m], s[:m]), s[:m], lift, steps, sigma_min,
                             generator, rho)
    if memory is not None:
        memory.draws, memory.levels = fresh, s
    eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    terms = dsm_loss(denoiser, torch.cat([x0, behind]), torch.cat([sigma_next, sigma_next[:m]]),
                     torch.cat([eps, eps[:m]]), sigma_data)
    ahead, prev = terms.loss[:n], terms.loss[n:]
    lead = ahead[:m] + extrapolate * n / m * (ahead[:m] - prev)
    return terms._replace(loss=torch.cat([lead, ahead[m:]]))
