"""Evaluation: exactness against Gaussian mixtures, Frechet distances on pluggable features,
the one-step denoising table, memorisation (nearest-neighbour similarity), plots and reports."""

from ambient.evaluate.denoising import denoising_table, format_table
from ambient.evaluate.exactness import (
    CoreSpread,
    CovarianceError,
    ExactnessRow,
    closest_pair,
    component_covariance_error,
    core_spread,
    covariance_noise_floor,
    exactness_table,
    excess_denoising_error,
    sliced_wasserstein,
    sw_noise_floor,
    valley_share,
)
from ambient.evaluate.features import (
    DigitsFeatures,
    DinoV2Features,
    PixelFeatures,
    TorchScriptFeatures,
    build_digits_features_weights,
    get_extractor,
)
from ambient.evaluate.frechet import feature_stats, frechet_distance, frechet_distance_from_stats
from ambient.evaluate.memorization import (
    MemorizationResult,
    heldout_baseline,
    nearest_neighbour_similarity,
    posterior_memorization,
    unconditional_memorization,
)
from ambient.evaluate.plots import (
    plot_bars,
    plot_excess_error,
    plot_lines,
    plot_nearest_pairs,
    plot_points,
    plot_similarity_histograms,
)
from ambient.evaluate.report import Report

__all__ = [
    "CoreSpread",
    "CovarianceError",
    "DigitsFeatures",
    "DinoV2Features",
    "ExactnessRow",
    "MemorizationResult",
    "PixelFeatures",
    "Report",
    "TorchScriptFeatures",
    "build_digits_features_weights",
    "closest_pair",
    "component_covariance_error",
    "core_spread",
    "covariance_noise_floor",
    "denoising_table",
    "exactness_table",
    "excess_denoising_error",
    "feature_stats",
    "format_table",
    "frechet_distance",
    "frechet_distance_from_stats",
    "get_extractor",
    "heldout_baseline",
    "nearest_neighbour_similarity",
    "plot_bars",
    "plot_excess_error",
    "plot_lines",
    "plot_nearest_pairs",
    "plot_points",
    "plot_similarity_histograms",
    "posterior_memorization",
    "sliced_wasserstein",
    "sw_noise_floor",
    "unconditional_memorization",
    "valley_share",
]
