"""EDM preconditioning: turn any backbone ``F(x_in, c_noise)`` into a denoiser ``D(x, sigma)``.

    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)
    c_skip = sd^2 / (sigma^2 + sd^2)      c_out = sigma sd / sqrt(sigma^2 + sd^2)
    c_in   = 1 / sqrt(sigma^2 + sd^2)      c_noise = ln(sigma) / 4

so the network's input and target both have unit variance at every level, and ``D(x, 0) = x``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ambient.noise import as_levels, bcast


class EDMPrecond(nn.Module):
    """Wrap ``backbone(x_in [N, ...], c_noise [N]) -> [N, ...]`` as ``D(x, sigma)``."""

    def __init__(
        self,
        backbone: nn.Module,  # F: same shape in and out, conditioned on c_noise [N]
        sigma_data: float = 0.5,  # standard deviation of the (clean) data
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = as_levels(sigma, x)
        s = bcast(sigma, x)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s**2 + sd2)
        c_in = 1.0 / torch.sqrt(s**2 + sd2)
        c_noise = torch.log(sigma.clamp_min(1e-6)) / 4
        out = self.backbone(c_in * x, c_noise)
        return c_skip * x + c_out * out.to(x.dtype)
