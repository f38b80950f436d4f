"""Frechet distance between two feature sets (FID when the features are Inception's, FD_DINOv2
with DINOv2's), in float64 with a real symmetric matrix square root:

    FD = ||mu_1 - mu_2||^2 + tr(C_1) + tr(C_2) - 2 tr((C_1^{1/2} C_2 C_1^{1/2})^{1/2})

``tr((C_1 C_2)^{1/2})`` equals the last trace because ``C_1 C_2`` is similar to the symmetric
PSD matrix ``M = C_1^{1/2} C_2 C_1^{1/2}``; both square roots come from ``eigh`` with eigenvalues
clamped at 0, so no complex parts or ``sqrtm`` failures on singular covariances.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def feature_stats(feats: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` (divided by ``N - 1``) of ``feats`` [N, F],
    both float64."""
    x = torch.as_tensor(feats).detach().cpu().double()
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be [N, F] with N >= 2, got shape {list(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _sqrt_psd(m: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix via ``eigh`` (negative rounding -> 0)."""
    eig, basis = torch.linalg.eigh(0.5 * (m + m.T))
    return (basis * eig.clamp_min(0.0).sqrt()) @ basis.T


def frechet_distance_from_stats(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike,
                                cov2: ArrayLike) -> float:
    """Frechet distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)`` (formula in the module
    docstring), clamped at 0 against rounding."""
    mu1, mu2 = (torch.as_tensor(m).double() for m in (mu1, mu2))
    cov1, cov2 = (torch.as_tensor(c).double() for c in (cov1, cov2))
    root1 = _sqrt_psd(cov1)
    m = root1 @ cov2 @ root1
    cross = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0.0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross
    return max(fd.item(), 0.0)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Frechet distance between the Gaussians fitted (:func:`feature_stats`) to two feature sets
    ``[N_a, F]`` and ``[N_b, F]``."""
    return frechet_distance_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))
