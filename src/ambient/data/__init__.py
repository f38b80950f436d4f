"""Datasets: Gaussian mixtures with exact posteriors, arrays, image folders, the digits."""

from ambient.data.gmm import GaussianMixture

__all__ = ["GaussianMixture"]
