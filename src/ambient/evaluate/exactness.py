"""Exactness against a Gaussian mixture, whose posterior mean is known in closed form.

Three measures (MATH.md, "How to test exactness"):

- excess denoising error per level ``sigma``, with ``x0 ~ p0`` and ``x = x0 + sigma z``:

      excess(sigma) = E||D(x, sigma) - E[x0|x]||^2 / E||x0 - E[x0|x]||^2

  0 for the exact denoiser; by the orthogonality of the posterior mean,
  ``E||D - x0||^2 = (1 + excess) * MMSE``, so 0.1 means a 10% worse denoiser than the best;
- sliced Wasserstein distance between generated samples and fresh draws of ``p0``,
  compared with the same distance between two fresh draws (the noise floor);
- per-component covariance error of generated samples (too wide, too narrow, collapsed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ambient.data.gmm import GaussianMixture

Denoiser = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def excess_denoising_error(
    denoiser: Denoiser,
    gmm: GaussianMixture,
    sigmas: Sequence[float],
    n: int = 4096,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
) -> dict[float, float]:
    """``{sigma: E||D(x, sigma) - E[x0|x]||^2 / E||x0 - E[x0|x]||^2}`` with ``x0 ~ p0``,
    ``x = x0 + sigma z``, each expectation a mean over ``n`` fresh draws per level.

    The reference ``E[x0|x]`` is computed in float64; ``D`` sees float32 inputs on ``device``."""
    result: dict[float, float] = {}
    for sigma in sigmas:
        if sigma <= 0:
            raise ValueError(f"excess denoising error needs sigma > 0, got {sigma}")
        x0 = gmm.sample(n, generator=generator).double()
        x = x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        excess = mmse = 0.0
        for start in range(0, n, batch_size):
            xb, x0b = x[start:start + batch_size], x0[start:start + batch_size]
            post = gmm.posterior_mean(xb, sigma)
            levels = torch.full((len(xb),), float(sigma), device=device)
            out = denoiser(xb.float().to(device), levels).detach().cpu().double()
            excess += (out - post).pow(2).sum().item()
            mmse += (x0b - post).pow(2).sum().item()
        result[float(sigma)] = excess / mmse
    return result


def _quantile_w2_squared(a: Tensor, b: Tensor) -> Tensor:
    """Exact squared 1-D W2 between the empirical laws of the rows of ``a`` [P, Na] and
    ``b`` [P, Nb]: ``int_0^1 (F_a^-1(u) - F_b^-1(u))^2 du`` with both quantile functions
    piecewise constant (steps at ``i/Na`` and ``j/Nb``); equal sizes reduce to sorted matching."""
    a, b = a.sort(dim=1).values, b.sort(dim=1).values
    na, nb = a.shape[1], b.shape[1]
    if na == nb:
        return (a - b).pow(2).mean(1)
    steps = torch.cat([torch.arange(1, na + 1, dtype=torch.float64) / na,
                       torch.arange(1, nb + 1, dtype=torch.float64) / nb]).unique()
    widths = torch.diff(steps, prepend=torch.zeros(1, dtype=torch.float64))
    mid = steps - widths / 2
    ia = (mid * na).floor().long().clamp_max(na - 1)
    ib = (mid * nb).floor().long().clamp_max(nb - 1)
    return ((a[:, ia] - b[:, ib]).pow(2) * widths).sum(1)


def sliced_wasserstein(
    a: Tensor,
    b: Tensor,
    num_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance ``SW2 = sqrt(mean_theta W2^2(<a, theta>, <b, theta>))`` over
    ``num_projections`` uniformly random unit directions ``theta`` (float64).

    Samples are flattened to ``[N, d]``; the sizes may differ (exact 1-D quantile coupling)."""
    a = a.detach().reshape(len(a), -1).cpu().double()
    b = b.detach().reshape(len(b), -1).cpu().double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein needs equal dimensions, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    theta = torch.randn(num_projections, a.shape[1], generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    return math.sqrt(_quantile_w2_squared(theta @ a.T, theta @ b.T).mean().item())


def sw_noise_floor(
    gmm: GaussianMixture,
    n: int,
    num_projections: int = 256,
    generator: torch.Generator | None = None,
    repeats: int = 5,
) -> float:
    """Mean over ``repeats`` of :func:`sliced_wasserstein` between two independent fresh draws of
    size ``n`` from ``p0``: what a perfect sampler reaches with ``n`` samples.

    For well-separated modes the value is dominated by the multinomial imbalance of the mode
    counts (mass ``~ sqrt(w_k / n)`` moved across the distance between modes), so it decays only
    like ``n^(-1/4)`` and varies a lot from draw to draw; hence the average."""
    floors = [sliced_wasserstein(gmm.sample(n, generator=generator),
                                 gmm.sample(n, generator=generator), num_projections, generator)
              for _ in range(repeats)]
    return sum(floors) / repeats


@dataclass
class CovarianceError:
    """Per-component covariance of generated samples compared with the mixture's ``C_k``.

    ``per_component[k] = ||Cov_hat_k - C_k||_F / ||C_k||_F``; ``error`` is their mean weighted by
    the mixture weights ``w_k``; ``trace_ratio[k] = tr(Cov_hat_k) / tr(C_k)`` (1 = right size,
    4 = twice too wide in standard deviation); ``mass[k]`` is the fraction of the samples'
    posterior mass on component ``k`` (compare with ``w_k``: a dropped mode has mass 0)."""

    error: float
    per_component: list[float]
    trace_ratio: list[float]
    mass: list[float]
    weights: list[float]

    @property
    def width_ratio(self) -> float:
        """``sqrt(sum_k w_k trace_ratio_k)``: how many times too wide (in standard deviation)
        the components are on average."""
        return math.sqrt(sum(w * r for w, r in zip(self.weights, self.trace_ratio, strict=True)))

    def summary(self) -> str:
        """One line for a report, e.g. ``covariance error 0.41, components 1.40x too wide``."""
        ratio = self.width_ratio
        if ratio >= 1:
            return f"covariance error {self.error:.3g}, components {ratio:.2f}x too wide"
        return f"covariance error {self.error:.3g}, components {1 / ratio:.2f}x too narrow"


def component_covariance_error(
    samples: Tensor,
    gmm: GaussianMixture,
    sigma: float = 1e-3,
) -> CovarianceError:
    """Covariance error of ``samples`` [N, d] per mixture component (see :class:`CovarianceError`).

    Samples are assigned softly by ``gamma_ik = gmm.component_posteriors(x_i, sigma)`` at a tiny
    ``sigma``; ``Cov_hat_k`` is the ``gamma``-weighted covariance about the weighted mean. Since
    ``gamma_k(x) p0(x) = w_k N(x; mu_k, C_k)``, this estimates ``C_k`` without bias for samples of
    ``p0`` even when components overlap (hard assignment would clip their tails)."""
    x = samples.detach().reshape(len(samples), -1).cpu().double()
    if x.shape[1] != gmm.dim:
        raise ValueError(f"samples have dimension {x.shape[1]}, the mixture {gmm.dim}")
    gamma = gmm.component_posteriors(x, sigma)  # [N, K]
    mass = gamma.sum(0)
    safe_mass = mass.clamp_min(1e-12)
    mean = (gamma.T @ x) / safe_mass[:, None]  # [K, d]
    centred = x[None] - mean[:, None]  # [K, N, d]
    cov = torch.einsum("nk,kni,knj->kij", gamma, centred, centred) / safe_mass[:, None, None]
    per_comp = torch.linalg.matrix_norm(cov - gmm.covs) / torch.linalg.matrix_norm(gmm.covs)
    trace_ratio = _trace(cov) / _trace(gmm.covs)
    return CovarianceError(
        error=float((gmm.weights * per_comp).sum()),
        per_component=per_comp.tolist(),
        trace_ratio=trace_ratio.tolist(),
        mass=(mass / len(x)).tolist(),
        weights=gmm.weights.tolist(),
    )


@dataclass
class CoreSpread:
    """A robust view of generated samples' spread about the mixture's components.

    ``r2_i`` = squared Mahalanobis distance of sample ``i`` to its nearest component (by that
    component's covariance ``C_k``), compared with the same for fresh draws of ``p0``:
    ``core = sqrt(median r2 / median r2_fresh)`` (1 = right; 2 = the bulk of the samples twice
    too wide in standard deviation, whatever a few samples stranded between components do) and
    ``stranded`` = the fraction of samples beyond the fresh draws' 99% quantile of ``r2`` (0.01 =
    right)."""

    core: float
    stranded: float


def covariance_noise_floor(
    gmm: GaussianMixture,
    n: int,
    generator: torch.Generator | None = None,
    repeats: int = 20,
) -> float:
    """Mean over ``repeats`` of :func:`component_covariance_error` of ``n`` fresh draws from
    ``p0``: what a perfect sampler scores with ``n`` samples.

    For ``d``-dimensional components with about ``n w_k`` samples each, the sample covariance's
    relative Frobenius error is close to ``sqrt((d + 1) / (n w_k))`` (entries of variance
    ``2 s^4 / m`` on and ``s^4 / m`` off the diagonal for an isotropic component)."""
    return sum(component_covariance_error(gmm.sample(n, generator=generator), gmm).error
               for _ in range(repeats)) / repeats


def _nearest_r2(x: Tensor, gmm: GaussianMixture) -> Tensor:
    x = x.reshape(len(x), -1).cpu().double()
    diff = x[:, None] - gmm.means.double()[None]
    r2 = torch.einsum("nki,kij,nkj->nk", diff, torch.linalg.inv(gmm.covs.double()), diff)
    return r2.min(1).values


@torch.no_grad()
def core_spread(samples: Tensor, gmm: GaussianMixture, fresh: int = 20000) -> CoreSpread:
    """:class:`CoreSpread` of ``samples`` [N, d] against ``fresh`` draws of ``p0`` (fixed seed)."""
    reference = _nearest_r2(gmm.sample(fresh, generator=torch.Generator().manual_seed(0)), gmm)
    r2 = _nearest_r2(samples, gmm)
    return CoreSpread(core=math.sqrt(float(r2.median() / reference.median())),
                      stranded=float((r2 > torch.quantile(reference, 0.99)).double().mean()))


def closest_pair(gmm: GaussianMixture) -> tuple[int, int]:
    """The two components whose means are nearest each other (``i < j``)."""
    dist = torch.cdist(gmm.means.double(), gmm.means.double())
    dist.fill_diagonal_(math.inf)
    i, j = divmod(int(dist.argmin()), gmm.num_components)
    return min(i, j), max(i, j)


def valley_share(x: Tensor, gmm: GaussianMixture, pair: tuple[int, int] | None = None) -> float:
    """The share of ``x`` [N, d] in the valley between two components (by default the
    :func:`closest_pair`): with ``mu_i``, ``mu_j`` and ``L = ||mu_j - mu_i||``, the points whose
    projection ``t = (x - mu_i) . (mu_j - mu_i) / L^2`` lies in ``(0.3, 0.7)`` and whose
    distance to the line through the two means is below ``L / 4``. A law with separated
    components puts little mass there (the benchmarks' mixture: 0.0018); a model that joins the
    two by a bridge of samples puts more."""
    i, j = closest_pair(gmm) if pair is None else pair
    x = x.reshape(len(x), -1).cpu().double()
    start, axis = gmm.means[i].double(), (gmm.means[j] - gmm.means[i]).double()
    length = float(axis.norm())
    rel = x - start
    t = rel @ axis / length**2
    off = (rel - t[:, None] * axis).norm(dim=1)
    return float(((t > 0.3) & (t < 0.7) & (off < length / 4)).double().mean())


def _trace(m: Tensor) -> Tensor:
    return torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)


@dataclass
class ExactnessRow:
    """One level of :func:`exactness_table`: ``sigma = factor * sigma_n`` and where it lies."""

    sigma: float
    factor: float
    side: Literal["below", "at", "above"]
    excess: float


def exactness_table(
    denoiser: Denoiser,
    gmm: GaussianMixture,
    sigma_n: float,
    factors: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    n: int = 4096,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> list[ExactnessRow]:
    """Excess denoising error at ``sigma = factor * sigma_n`` for each factor, labelled below, at
    or above the data's noise level ``sigma_n`` (ambient training alone only learns above)."""
    if sigma_n <= 0:
        raise ValueError(f"exactness_table needs the data's noise level sigma_n > 0, got {sigma_n}")
    sigmas = [f * sigma_n for f in factors]
    excess = excess_denoising_error(denoiser, gmm, sigmas, n=n, generator=generator, device=device)
    return [ExactnessRow(s, f, _side(f), excess[float(s)])
            for s, f in zip(sigmas, factors, strict=True)]


def _side(factor: float) -> Literal["below", "at", "above"]:
    if factor == 1:
        return "at"
    return "below" if factor < 1 else "above"
