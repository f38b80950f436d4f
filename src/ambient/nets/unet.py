"""Small U-Net backbone for images and latents ``[N, C, H, W]``.

Layout, with ``L = len(channel_mult)`` levels and ``ch_i = base_channels * channel_mult[i]``:

    conv_in -> for i < L-1: [blocks_per_level res blocks at ch_i] -> skip_i -> downsample by 2
            -> bottom: blocks_per_level res blocks at ch_{L-1}
            -> for i = L-2 .. 0: upsample by 2 to ch_i -> concat skip_i
                                 -> [blocks_per_level res blocks at ch_i]
            -> GroupNorm, SiLU, conv_out (zero-initialised)

Residual blocks take the noise embedding through FiLM (scale and shift after their second
GroupNorm); levels listed in ``attention_levels`` add self-attention after each block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ambient.errors import AmbientError
from ambient.nets.mlp import (
    NoiseEmbedding,
    check_dropout,
    check_emb_dim,
    check_positive_int,
    zero_init,
)


@dataclass
class UNetConfig:
    """U-Net hyperparameters. Defaults suit 8x8 digits on a CPU (about 0.34M parameters);
    larger images usually want more levels, e.g. ``channel_mult=(1, 2, 2)`` for 32x32."""

    base_channels: int = 32  # channels at full resolution
    channel_mult: tuple[int, ...] = (1, 2)  # channel multiplier per level; one level per entry
    blocks_per_level: int = 2  # residual blocks per level on each path (and at the bottom)
    attention_levels: tuple[int, ...] = ()  # levels (0 = full resolution) with self-attention
    attention_heads: int = 1  # heads of every self-attention layer
    emb_dim: int = 128  # size of the noise-level embedding
    dropout: float = 0.0  # dropout inside each residual block
    norm_groups: int = 8  # GroupNorm groups; must divide every level's channel count

    def __post_init__(self) -> None:
        self.channel_mult = _int_tuple("channel_mult", self.channel_mult)
        self.attention_levels = _int_tuple("attention_levels", self.attention_levels)
        check_positive_int("unet", "base_channels", self.base_channels)
        check_positive_int("unet", "blocks_per_level", self.blocks_per_level)
        check_positive_int("unet", "attention_heads", self.attention_heads)
        check_positive_int("unet", "norm_groups", self.norm_groups)
        check_emb_dim("unet", self.emb_dim)
        check_dropout("unet", self.dropout)
        mult = list(self.channel_mult)
        if not mult or min(mult) < 1:
            raise AmbientError(f"unet backbone field channel_mult={mult} must be a non-empty list "
                               "of positive integers; fix: e.g. channel_mult=[1, 2]")
        levels = len(mult)
        bad = [i for i in self.attention_levels if not 0 <= i < levels]
        if bad:
            raise AmbientError(f"unet backbone field attention_levels has level(s) {bad} but "
                               f"channel_mult={mult} gives levels 0..{levels - 1}; "
                               "fix: list only existing levels")
        for ch in self.channels:
            if ch % self.norm_groups:
                raise AmbientError(f"unet backbone: norm_groups={self.norm_groups} does not divide "
                                   f"the {ch} channels of a level (base_channels * channel_mult); "
                                   "fix: choose base_channels a multiple of norm_groups")
            if self.attention_levels and ch % self.attention_heads:
                raise AmbientError(f"unet backbone: attention_heads={self.attention_heads} does "
                                   f"not divide the {ch} channels of a level; fix: choose "
                                   "attention_heads dividing base_channels")

    @property
    def channels(self) -> list[int]:
        """Channel count of every level."""
        return [self.base_channels * m for m in self.channel_mult]

    @property
    def downsample_factor(self) -> int:
        """Total downsampling, ``2^(levels - 1)``: H and W must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)


def _int_tuple(name: str, value: object) -> tuple[int, ...]:
    """Accept a list or tuple of integers (JSON gives lists) and return a tuple."""
    items = value if isinstance(value, list | tuple) else None
    if items is None or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise AmbientError(f"unet backbone field {name}={value!r} must be a list of integers; "
                           f"fix: e.g. {name}=[1, 2]")
    return tuple(items)


def check_image_size(height: int, width: int, config: UNetConfig) -> None:
    """Raise :class:`AmbientError` unless ``H`` and ``W`` survive the U-Net's downsampling."""
    factor = config.downsample_factor
    if height % factor or width % factor:
        raise AmbientError(
            f"image size {height}x{width} does not fit the unet: with "
            f"channel_mult={list(config.channel_mult)} ({len(config.channel_mult)} levels) height "
            f"and width must be divisible by 2^{len(config.channel_mult) - 1} = {factor}; fix: "
            f"resize or crop the images to a multiple of {factor}, or use fewer channel_mult levels"
        )


class _ResBlock(nn.Module):
    """``skip(x) + conv2(drop(SiLU(FiLM(GN(conv1(SiLU(GN(x))))))))``."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class _SelfAttention(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, residual, output zero-initialised."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        zero_init(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [N, heads, H*W, c / heads]
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class _Stage(nn.Module):
    """``n_blocks`` residual blocks (``c_in -> c_out``, then ``c_out -> c_out``), each followed by
    self-attention when ``attention`` is set."""

    def __init__(self, c_in: int, c_out: int, cfg: UNetConfig, attention: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            _ResBlock(c_in if i == 0 else c_out, c_out, cfg.emb_dim, cfg.dropout, cfg.norm_groups)
            for i in range(cfg.blocks_per_level)
        )
        self.attns = nn.ModuleList(
            _SelfAttention(c_out, cfg.attention_heads, cfg.norm_groups) if attention
            else nn.Identity()
            for _ in range(cfg.blocks_per_level)
        )

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for block, attn in zip(self.blocks, self.attns, strict=True):
            h = attn(block(h, emb))
        return h


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2, then a 3x3 convolution ``c_in -> c_out``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Backbone ``F(x_in [N, C, H, W], c_noise [N]) -> [N, C, H, W]``."""

    def __init__(self, in_channels: int, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        check_positive_int("unet", "in_channels", in_channels)
        self.config = cfg
        chs = cfg.channels
        attn = set(cfg.attention_levels)
        self.embed = NoiseEmbedding(cfg.emb_dim)
        self.conv_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = chs[0]
        for i, ch in enumerate(chs[:-1]):
            self.down.append(_Stage(c_prev, ch, cfg, i in attn))
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            c_prev = ch
        self.bottom = _Stage(c_prev, chs[-1], cfg, len(chs) - 1 in attn)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        c_prev = chs[-1]
        for i in reversed(range(len(chs) - 1)):
            self.upsample.append(_Upsample(c_prev, chs[i]))
            self.up.append(_Stage(2 * chs[i], chs[i], cfg, i in attn))
            c_prev = chs[i]
        self.norm_out = nn.GroupNorm(cfg.norm_groups, chs[0])
        self.conv_out = nn.Conv2d(chs[0], in_channels, 3, padding=1)
        zero_init(self.conv_out)

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        check_image_size(x_in.shape[-2], x_in.shape[-1], self.config)
        emb = self.embed(c_noise)
        h = self.conv_in(x_in)
        skips = []
        for stage, down in zip(self.down, self.downsample, strict=True):
            h = stage(h, emb)
            skips.append(h)
            h = down(h)
        h = self.bottom(h, emb)
        for up, stage in zip(self.upsample, self.up, strict=True):
            h = stage(torch.cat([up(h), skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
