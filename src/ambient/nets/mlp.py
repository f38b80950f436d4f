"""Residual MLP backbone for vector data ``[N, D]``, plus the noise embedding the backbones share.

Each residual block is conditioned on the noise level through FiLM: the embedding of
``c_noise`` gives a per-feature scale and shift applied after the block's normalisation.
The output layer starts at zero, so the wrapped denoiser starts as ``D(x, sigma) = c_skip x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ambient.errors import AmbientError

_MAX_FREQ = 100.0  # highest angular frequency of the noise features (per unit of c_noise)


def zero_init(layer: nn.Module) -> nn.Module:
    """Set every parameter of ``layer`` (weight and bias) to zero; returns ``layer``."""
    for param in layer.parameters():
        nn.init.zeros_(param)
    return layer


def check_positive_int(kind: str, name: str, value: object) -> None:
    """Raise :class:`AmbientError` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AmbientError(f"{kind} backbone field {name}={value!r} must be a positive integer; "
                           f"fix: set {name} to an integer >= 1")


def check_dropout(kind: str, value: object) -> None:
    """Raise :class:`AmbientError` unless ``value`` is a probability in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise AmbientError(f"{kind} backbone field dropout={value!r} must lie in [0, 1); "
                           "fix: set dropout to e.g. 0.0 or 0.1")


def check_emb_dim(kind: str, value: object) -> None:
    """Raise :class:`AmbientError` unless ``value`` is an even integer >= 2."""
    check_positive_int(kind, "emb_dim", value)
    if value % 2:  # type: ignore[operator]
        raise AmbientError(f"{kind} backbone field emb_dim={value} must be even (cosine and sine "
                           "features); fix: set emb_dim to an even number such as 64 or 128")


class NoiseEmbedding(nn.Module):
    """``c_noise [N] -> [N, emb_dim]``: cosine/sine features at fixed geometric frequencies
    (1 to 100 radians per unit of ``c_noise``), then a two-layer MLP, ending in SiLU."""

    freqs: Tensor

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        half = emb_dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(_MAX_FREQ), half))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
        )

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise.float()[:, None] * self.freqs.float()[None, :]  # float32 even in bf16
        features = torch.cat([angles.cos(), angles.sin()], dim=1)
        return self.mlp(features.to(next(self.mlp.parameters()).dtype))


@dataclass
class MLPConfig:
    """Residual MLP: ``depth`` FiLM-conditioned blocks of width ``hidden``."""

    hidden: int = 256  # width of every residual block
    depth: int = 4  # number of residual blocks
    emb_dim: int = 64  # size of the noise-level embedding
    dropout: float = 0.0  # dropout inside each block

    def __post_init__(self) -> None:
        check_positive_int("mlp", "hidden", self.hidden)
        check_positive_int("mlp", "depth", self.depth)
        check_emb_dim("mlp", self.emb_dim)
        check_dropout("mlp", self.dropout)


class _ResidualBlock(nn.Module):
    """``h + Linear(drop(SiLU(Linear(SiLU(FiLM(LayerNorm(h)))))))``."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        z = self.norm(h) * (1 + scale) + shift
        z = self.fc2(self.drop(self.act(self.fc1(self.act(z)))))
        return h + z


class MLP(nn.Module):
    """Backbone ``F(x_in [N, *sample_shape], c_noise [N]) -> [N, *sample_shape]``.

    Samples of any shape are flattened to ``dim = prod(sample_shape)`` features."""

    def __init__(self, dim: int, config: MLPConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else MLPConfig()
        check_positive_int("mlp", "dim", dim)
        self.config = cfg
        self.embed = NoiseEmbedding(cfg.emb_dim)
        self.proj_in = nn.Linear(dim, cfg.hidden)
        self.blocks = nn.ModuleList(
            _ResidualBlock(cfg.hidden, cfg.emb_dim, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm_out = nn.LayerNorm(cfg.hidden)
        self.proj_out = nn.Linear(cfg.hidden, dim)
        zero_init(self.proj_out)

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.embed(c_noise)
        h = self.proj_in(x_in.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.proj_out(torch.nn.functional.silu(self.norm_out(h))).view_as(x_in)
