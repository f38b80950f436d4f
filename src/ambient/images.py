"""Image files: tensors in ``[-1, 1]`` <-> PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in ``[-1, 1]`` -> ``[N, H, W, C]`` uint8 (values outside are clipped)."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images in ``[-1, 1]`` into one ``[H', W', C]`` uint8 array
    (``nrow`` images per row, default ~sqrt(N); ``scale`` repeats pixels for small images)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected images [N, C, H, W] with C in (1, 3, 4), got {list(images.shape)}")
    tiles = to_uint8(images)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = tiles.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + col * (w + pad): pad + col * (w + pad) + w] = tiles[i]
    return grid


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write a PNG grid of ``images`` (see :func:`make_grid`); small images are upscaled so that
    a tile is at least 32 pixels tall unless ``scale`` is given."""
    if scale == 1 and images.shape[-2] < 32:
        scale = math.ceil(32 / images.shape[-2])
    grid = make_grid(images, nrow=nrow, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path
