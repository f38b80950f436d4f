"""Gaussian mixtures: exact ground truth for every formula of the project.

``p0 = sum_k w_k N(mu_k, C_k)`` has ``p_sigma = sum_k w_k N(mu_k, C_k + sigma^2 I)`` and

    E[x0 | x_sigma = x] = sum_k gamma_k(x) (mu_k + C_k (C_k + sigma^2 I)^-1 (x - mu_k)),
    gamma_k(x) = w_k N(x; mu_k, C_k + sigma^2 I) / p_sigma(x),
    grad log p_sigma(x) = (E[x0 | x] - x) / sigma^2 = -sum_k gamma_k (C_k + sigma^2 I)^-1 (x - mu_k).

With ``C_k = U_k diag(l_k) U_k^T`` every inverse is diagonal in ``U_k``'s basis, so levels can
differ per sample. Computation is in float64; results come back in the input's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor

from ambient.noise import as_levels, vp_to_ve


@dataclass
class GaussianMixture:
    """Mixture with weights ``[K]``, means ``[K, d]`` and full covariances ``[K, d, d]``."""

    weights: Tensor
    means: Tensor
    covs: Tensor

    def __post_init__(self) -> None:
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.covs = torch.as_tensor(self.covs, dtype=torch.float64)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covs.shape != (k, d, d):
            raise ValueError(
                f"GaussianMixture needs weights [K], means [K, d], covs [K, d, d]; got "
                f"{list(self.weights.shape)}, {list(self.means.shape)}, {list(self.covs.shape)}"
            )
        if (self.weights < 0).any() or not torch.isclose(self.weights.sum(),
                                                         torch.tensor(1.0, dtype=torch.float64)):
            raise ValueError("GaussianMixture weights must be non-negative and sum to 1")
        self.covs = 0.5 * (self.covs + self.covs.transpose(1, 2))
        self._eig, self._basis = torch.linalg.eigh(self.covs)
        if (self._eig < -1e-10).any():
            raise ValueError("GaussianMixture covariances must be positive semi-definite")
        self._eig = self._eig.clamp_min(0.0)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def random(
        cls,
        dim: int,
        num_components: int,
        mean_scale: float = 2.0,
        component_scale: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> GaussianMixture:
        """A random mixture: means ``~ N(0, mean_scale^2 I)``, random full covariances with
        eigenvalues in ``component_scale^2 * [0.25, 1]``, Dirichlet-like weights."""
        g = generator
        means = mean_scale * torch.randn(num_components, dim, generator=g, dtype=torch.float64)
        q, _ = torch.linalg.qr(torch.randn(num_components, dim, dim, generator=g,
                                           dtype=torch.float64))
        eig = component_scale**2 * (0.25 + 0.75 * torch.rand(num_components, dim, generator=g,
                                                              dtype=torch.float64))
        covs = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
        w = 0.5 + torch.rand(num_components, generator=g, dtype=torch.float64)
        return cls(w / w.sum(), means, covs)

    @overload
    def sample(self, n: int, generator: torch.Generator | None = None,
               return_labels: Literal[False] = False) -> Tensor: ...
    @overload
    def sample(self, n: int, generator: torch.Generator | None,
               return_labels: Literal[True]) -> tuple[Tensor, Tensor]: ...
    @overload
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               return_labels: Literal[True]) -> tuple[Tensor, Tensor]: ...

    def sample(
        self, n: int, generator: torch.Generator | None = None, return_labels: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` draws from ``p0`` (float32), optionally with their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        root = self._basis * self._eig.sqrt().unsqueeze(1)  # U diag(sqrt(l))
        x = self.means[labels] + torch.einsum("nij,nj->ni", root[labels], z)
        x = x.float()
        return (x, labels) if return_labels else x

    def _terms(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """Per component: log(w_k N(x; mu_k, C_k + s^2 I)) [N, K], the coordinates of x - mu_k in
        U_k [N, K, d], and the variances l_k + s^2 [N, K, d]."""
        x64 = x.to(torch.float64)
        s2 = as_levels(sigma, x64).pow(2)
        z = torch.einsum("kji,nkj->nki", self._basis, x64[:, None, :] - self.means[None])
        var = self._eig[None] + s2[:, None, None]
        log_norm = -0.5 * (z**2 / var).sum(-1) - 0.5 * torch.log(var).sum(-1)
        log_norm = log_norm - 0.5 * self.dim * math.log(2 * math.pi)
        return log_norm + torch.log(self.weights)[None], z, var

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """``log p_sigma(x)`` [N] (sigma may be per sample)."""
        logs, _, _ = self._terms(x, sigma)
        return torch.logsumexp(logs, dim=1).to(x.dtype)

    def component_posteriors(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``gamma_k(x)`` [N, K]: posterior probability of each component given ``x_sigma = x``."""
        logs, _, _ = self._terms(x, sigma)
        return torch.softmax(logs, dim=1)

    def posterior_mean(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``E[x0 | x_sigma = x]`` [N, d] (the optimal denoiser)."""
        logs, z, var = self._terms(x, sigma)
        gamma = torch.softmax(logs, dim=1)
        shrunk = torch.einsum("kij,nkj->nki", self._basis, z * self._eig[None] / var)
        comp_mean = self.means[None] + shrunk
        return (gamma[..., None] * comp_mean).sum(1).to(x.dtype)

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """``grad log p_sigma(x)`` [N, d]."""
        logs, z, var = self._terms(x, sigma)
        gamma = torch.softmax(logs, dim=1)
        per_comp = -torch.einsum("kij,nkj->nki", self._basis, z / var)
        return (gamma[..., None] * per_comp).sum(1).to(x.dtype)

    def denoiser(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """The analytic VE denoiser ``D(x, sigma) = E[x0 | x_sigma = x]``."""
        return self.posterior_mean(x, sigma)

    def denoiser_vp(self, x: Tensor, v: Tensor | float) -> Tensor:
        """The analytic VP denoiser ``E[x0 | sqrt(1 - v^2) x0 + v z = x]``."""
        return self.posterior_mean(*vp_to_ve(x, v))
