"""Datasets: Gaussian mixtures with exact posteriors, arrays, image folders, the digits, and the
noisy training set (:class:`NoisyDataset`, :func:`resolve_dataset`)."""

from ambient.data.arrays import load_array
from ambient.data.dataset import (
    NoisyDataset,
    corrupt_once,
    load_sigma_n,
    parse_gmm_spec,
    per_sample_noise,
    resolve_dataset,
)
from ambient.data.digits import load_digits
from ambient.data.gmm import GaussianMixture
from ambient.data.images import load_image_folder

__all__ = [
    "GaussianMixture",
    "NoisyDataset",
    "corrupt_once",
    "load_array",
    "load_digits",
    "load_image_folder",
    "load_sigma_n",
    "parse_gmm_spec",
    "per_sample_noise",
    "resolve_dataset",
]
