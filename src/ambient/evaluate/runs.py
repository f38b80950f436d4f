"""Evaluate a trained run against what is known about its data (chosen from the run's source).

* Gaussian-mixture data (``gmm:...``): excess denoising error per level against the exact
  posterior mean, and full / truncated samples against fresh draws of p0 (sliced Wasserstein
  with its noise floor, per-component covariance error with its noise floor).
* The built-in digits: Frechet distance (digits features) of full / truncated samples to the
  held-out clean digits, and the one-step denoising table on them.
* Anything else: Frechet distance to a reference set the user gives (``reference``), with the
  chosen feature extractor (:func:`default_features` when none is chosen), and the one-step
  denoising table on it when its samples have the run's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ambient.data import load_array, load_image_folder, parse_gmm_spec
from ambient.data.digits import load_digits
from ambient.errors import AmbientError
from ambient.evaluate.denoising import denoising_table
from ambient.evaluate.exactness import (
    component_covariance_error,
    covariance_noise_floor,
    exactness_table,
    sliced_wasserstein,
    sw_noise_floor,
)
from ambient.evaluate.features import get_extractor
from ambient.evaluate.frechet import frechet_distance
from ambient.generate import generate
from ambient.samplers import Denoiser

DENOISING_LEVELS = (0.05, 0.1, 0.2, 0.4, 0.8)


@dataclass
class RunMetrics:
    """Figures for one run: ``samples`` holds one dict of metrics per sampling mode."""

    samples: dict[str, dict[str, float]] = field(default_factory=dict)
    excess: dict[float, float] = field(default_factory=dict)  # gmm: sigma -> excess error
    denoising: dict[float, float] = field(default_factory=dict)  # images: sigma -> MSE
    drawn: dict[str, Tensor] = field(default_factory=dict)  # the samples themselves
    reference: Tensor | None = None  # clean data the samples are scored against (gmm: fresh draws)


def load_reference(spec: str) -> Tensor:
    """A reference set from an array file or an image folder."""
    path = Path(spec)
    return load_image_folder(path) if path.is_dir() else load_array(path)


def evaluate_run(
    denoiser: Denoiser,
    config: dict[str, Any],
    num: int = 1000,
    steps: int = 32,
    seed: int = 0,
    features: str = "digits",
    reference: str | None = None,
    modes: tuple[str, ...] = ("full", "truncated"),
    progress: bool = False,
) -> RunMetrics:
    """Metrics of a run (see module docstring). ``modes``: "full" and/or "truncated" sampling
    (truncated only when the run's data were noisy); ``progress``: a progress bar per batch of
    samples."""
    source = str(config.get("source", ""))
    noisy = float(config["sigma_n"]["max"]) > 0
    modes = tuple(m for m in modes if m == "full" or noisy)
    metrics = RunMetrics()
    for mode in modes:
        metrics.drawn[mode] = generate(denoiser, config, num, steps=steps, seed=seed,
                                       truncate=mode == "truncated", progress=progress)
    if source.startswith("gmm"):
        gmm, _ = parse_gmm_spec(source)
        g = torch.Generator().manual_seed(seed + 1)
        floor = sw_noise_floor(gmm, num, generator=g)
        cov_floor = covariance_noise_floor(gmm, num, generator=g)
        metrics.reference = gmm.sample(num, generator=g)  # one reference set for every mode
        for mode, drawn in metrics.drawn.items():
            cov = component_covariance_error(drawn, gmm)
            metrics.samples[mode] = {
                "sliced_wasserstein": sliced_wasserstein(drawn, metrics.reference, generator=g),
                "sw_noise_floor": floor, "covariance_error": cov.error,
                "covariance_noise_floor": cov_floor,
                "width_ratio": cov.width_ratio}
        level = float(config["sigma_n"]["max"]) or 0.2
        metrics.excess = {row.sigma: row.excess for row in exactness_table(
            denoiser, gmm, level, generator=torch.Generator().manual_seed(seed + 2))}
        return metrics
    if source == "digits":
        ref = load_digits("test")
    elif reference is not None:
        ref = load_reference(reference)
    else:
        return metrics
    shape = tuple(config["sample_shape"])
    if features == "pixels" and tuple(ref.shape[1:]) != shape:
        raise AmbientError(f"the reference {reference} holds samples of shape "
                           f"{list(ref.shape[1:])}, but this run's have shape {list(shape)}; fix: "
                           "pass a reference of the training data's shape")
    metrics.reference = ref
    extract = get_extractor(features)
    ref_feats = extract(ref)
    for mode, drawn in metrics.drawn.items():
        if len(shape) == 1:  # vectors: no pixel range to clamp to
            metrics.samples[mode] = {"frechet": frechet_distance(extract(drawn), ref_feats)}
            continue
        metrics.samples[mode] = {  # clamped: as saved images show them; unclamped: as drawn
            "frechet": frechet_distance(extract(drawn.clamp(-1, 1)), ref_feats),
            "frechet_unclamped": frechet_distance(extract(drawn), ref_feats)}
    if tuple(ref.shape[1:]) == shape:
        metrics.denoising = denoising_table(denoiser, ref, DENOISING_LEVELS, seed=seed)
    return metrics


def default_features(config: dict[str, Any]) -> str:
    """The feature extractor used when none is chosen: ``digits`` for 8x8 single-channel images,
    ``pixels`` (the coordinates themselves) for vectors; other images need a choice."""
    shape = tuple(config["sample_shape"])
    if shape == (1, 8, 8):
        return "digits"
    if len(shape) == 1:
        return "pixels"
    raise AmbientError(f"this run's samples are images of shape {list(shape)}: choose the "
                       "features of the Frechet distance; fix: pass --features dinov2:DIR (a local "
                       "DINOv2), torchscript:FILE (e.g. the Inception of FID) or pixels")


def require_reference_compatible(config: dict[str, Any], features: str) -> None:
    """Fail early when the digits features are asked for on data that are not 8x8 digits."""
    if features == "digits" and tuple(config["sample_shape"]) != (1, 8, 8):
        raise AmbientError(f"--features digits works on 8x8 single-channel images, but this run's "
                           f"samples have shape {config['sample_shape']}; fix: pass --features "
                           "pixels, dinov2:DIR or torchscript:FILE")
