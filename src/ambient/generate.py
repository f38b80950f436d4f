"""Draw samples from a trained run: full sampling, or truncated at the data's noise level."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ambient.errors import AmbientError
from ambient.samplers import Denoiser, SamplerName, sample


def truncation_level(config: dict[str, Any]) -> float:
    """The level truncated sampling stops at: the run's largest sigma_n."""
    level = float(config["sigma_n"]["max"])
    if level <= 0:
        raise AmbientError("truncated sampling stops at the data's noise level, but this run was "
                           "trained on clean data (sigma_n = 0); fix: drop --truncate")
    return level


def generate(
    denoiser: Denoiser,
    config: dict[str, Any],
    num: int,
    steps: int = 32,
    sampler: SamplerName = "heun",
    truncate: bool = False,
    seed: int = 0,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Tensor:
    """``num`` samples of shape ``config["sample_shape"]`` from ``N(0, sigma_max^2)`` down to 0
    (or to sigma_n, then ``D(x, sigma_n)``, with ``truncate``), in batches, on CPU."""
    if num < 1:
        raise AmbientError(f"--num must be a positive number of samples, got {num}")
    shape = tuple(config["sample_shape"])
    stop = truncation_level(config) if truncate else None
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        out.append(sample(denoiser, (n, *shape), num_steps=steps, sampler=sampler,
                          sigma_max=float(config["sigma_max"]), truncate_at=stop, generator=g,
                          device=device, progress=progress).cpu())
    return torch.cat(out)
