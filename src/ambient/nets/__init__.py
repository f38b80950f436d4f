"""Small backbones ``F(x_in [N, ...], c_noise [N]) -> [N, ...]``: an MLP for vectors, a U-Net
for images and latents, built from a sample shape and a JSON-serialisable config.

    cfg = backbone_config((1, 8, 8), base_channels=48)   # {"kind": "unet", ...}, save it as JSON
    net = build_backbone((1, 8, 8), **cfg)                # rebuilds exactly this network
    denoiser = build_denoiser((2,), hidden=128)           # EDMPrecond(MLP): D(x, sigma)
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any

from torch import nn

from ambient.errors import AmbientError
from ambient.nets.mlp import MLP, MLPConfig, NoiseEmbedding
from ambient.nets.unet import UNet, UNetConfig, check_image_size
from ambient.precond import EDMPrecond

__all__ = [
    "MLP",
    "MLPConfig",
    "NoiseEmbedding",
    "UNet",
    "UNetConfig",
    "backbone_config",
    "build_backbone",
    "build_denoiser",
]

_CONFIGS: dict[str, type[MLPConfig] | type[UNetConfig]] = {"mlp": MLPConfig, "unet": UNetConfig}


def _resolve_kind(sample_shape: tuple[int, ...], kind: str) -> str:
    """Pick ``"mlp"`` or ``"unet"`` and check that it can handle ``sample_shape``."""
    if kind not in ("auto", *_CONFIGS):
        raise AmbientError(f"unknown backbone kind {kind!r}; fix: use 'auto', 'mlp' or 'unet'")
    shape = tuple(sample_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise AmbientError(f"sample shape {shape} is not a shape of one sample; fix: pass the "
                           "shape without the batch dimension, e.g. (2,) or (3, 32, 32)")
    if kind == "auto":
        if len(shape) in (1, 3):
            return "mlp" if len(shape) == 1 else "unet"
        raise AmbientError(f"cannot pick a backbone for sample shape {shape}: 'auto' takes vectors "
                           "(D,) or images (C, H, W); fix: reshape the data to one of these "
                           "(e.g. add a channel axis, (1, H, W)) or pass kind='mlp' to flatten it")
    if kind == "unet" and len(shape) != 3:
        raise AmbientError(f"the unet backbone needs images of shape (C, H, W), got sample shape "
                           f"{shape}; fix: reshape the data to (C, H, W) or pass kind='mlp'")
    return kind


def _make_config(kind: str, overrides: dict[str, Any]) -> MLPConfig | UNetConfig:
    """Build ``kind``'s config from ``overrides``, naming any field it does not have."""
    config_cls = _CONFIGS[kind]
    valid = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        other = [k for k, cls in _CONFIGS.items()
                 if k != kind and set(unknown) <= {f.name for f in fields(cls)}]
        hint = f" ({', '.join(unknown)} belong to the {other[0]} backbone)" if other else ""
        raise AmbientError(f"unknown {kind} backbone field(s) {', '.join(unknown)}{hint}; valid "
                           f"fields: {', '.join(sorted(valid))}; fix: remove or rename them"
                           + (f", or pass kind='{other[0]}'" if other else ""))
    return config_cls(**overrides)


def backbone_config(sample_shape: tuple[int, ...], kind: str = "auto",
                    **overrides: Any) -> dict[str, Any]:
    """The full resolved config as a JSON-serialisable dict, ``"kind"`` included, so that
    ``build_backbone(sample_shape, **cfg)`` rebuilds the same network (also after a JSON round
    trip, which turns tuples into lists)."""
    kind = _resolve_kind(sample_shape, kind)
    cfg = asdict(_make_config(kind, overrides))
    return {"kind": kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}


def build_backbone(sample_shape: tuple[int, ...], kind: str = "auto",
                   **overrides: Any) -> nn.Module:
    """Backbone for samples of shape ``sample_shape`` (no batch axis): ``"auto"`` picks the MLP
    for vectors ``(D,)`` and the U-Net for images ``(C, H, W)``; ``overrides`` set config
    fields (see :class:`MLPConfig`, :class:`UNetConfig`)."""
    kind = _resolve_kind(sample_shape, kind)
    config = _make_config(kind, overrides)
    if isinstance(config, UNetConfig):
        channels, height, width = sample_shape
        check_image_size(height, width, config)
        return UNet(channels, config)
    return MLP(math.prod(sample_shape), config)


def build_denoiser(sample_shape: tuple[int, ...], kind: str = "auto", sigma_data: float = 0.5,
                   **overrides: Any) -> EDMPrecond:
    """:func:`build_backbone` wrapped as an EDM denoiser ``D(x, sigma)``."""
    return EDMPrecond(build_backbone(sample_shape, kind, **overrides), sigma_data)
