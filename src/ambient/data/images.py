"""Folders of image files -> ``[N, C, H, W]`` float32 in ``[-1, 1]``."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ambient.errors import AmbientError

OnBad = Literal["skip", "error"]  # what load_image_folder does with an unreadable file
FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF")  # PIL format names that are read
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L"}  # all others are colour
_ALPHA_MODES = {"LA", "RGBA", "PA", "RGBa", "La"}


@dataclass
class _Image:
    """One decoded file: pixels ``[H, W, C]`` (``C`` 1 or 3) scaled by ``1 / peak``."""

    path: Path
    pixels: np.ndarray
    peak: float
    had_alpha: bool


def load_image_folder(
    path: str | Path,
    on_bad: OnBad = "skip",
    recursive: bool = True,
) -> Tensor:
    """Read every PNG/JPEG/BMP/WEBP/TIFF file under ``path`` (sorted by path) as
    ``[N, C, H, W]`` float32 in ``[-1, 1]``.

    Hidden files and folders (name starting with ``.``) are ignored. Files that are not
    readable images (corrupt, truncated, other formats) are skipped with one warning that
    counts them, or raise naming the file when ``on_bad="error"``. If any image is colour
    all become RGB (C = 3), else all stay grayscale (C = 1); alpha channels are dropped.
    All images must share one size."""
    if on_bad not in ("skip", "error"):
        raise ValueError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise AmbientError(f"{folder}: not a folder (expected a folder of image files)")
    files = _list_files(folder, recursive)
    images, bad = [], []
    for file in files:
        try:
            images.append(_read(file))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if on_bad == "error":
                raise AmbientError(
                    f"{file}: not a readable {'/'.join(FORMATS)} image ({e}); remove or "
                    "re-save it, or skip unreadable files (on_bad='skip')"
                ) from e
            bad.append((file, e))
    where = f"{folder}{'' if recursive else ' (not recursive)'}"
    if not images:
        found = f"{len(files)} file(s) but none is a readable image" if files else "no files"
        raise AmbientError(f"{where}: {found}; the folder must hold {'/'.join(FORMATS)} images")
    if bad:
        example, err = bad[0]
        warnings.warn(f"{folder}: skipped {len(bad)} of {len(files)} file(s) that are not readable "
                      f"images, e.g. {example} ({err})", stacklevel=2)
    _check_sizes(images, folder)
    return _stack(images, folder)


def _list_files(folder: Path, recursive: bool) -> list[Path]:
    """Non-hidden files under ``folder``, sorted; hidden folders are not entered."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in candidates
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def upright(img: Image.Image) -> Image.Image:
    """The decoded image turned as its EXIF orientation tag says (phone photos store pixels
    sideways and a tag to rotate them); images without the tag are returned as decoded."""
    img.load()
    return ImageOps.exif_transpose(img)


def _read(file: Path) -> _Image:
    """Decode one file fully (so truncation is caught) into grayscale or RGB pixels."""
    with Image.open(file, formats=FORMATS) as opened:
        img = upright(opened)
        mode = img.mode
        if mode == "F":
            raise ValueError("32-bit float pixels (mode F) are not supported; save as .npy")
        had_alpha = mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info)
        if mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grayscale
            return _Image(file, np.asarray(img, dtype=np.float32)[..., None], 65535.0, had_alpha)
        gray = mode in _GRAY_MODES
        pixels = np.asarray(img.convert("L" if gray else "RGB"))
    return _Image(file, pixels[..., None] if gray else pixels, 255.0, had_alpha)


def _check_sizes(images: list[_Image], folder: Path) -> None:
    """Raise naming two files of different sizes, with counts, and suggest a resize."""
    sizes = Counter(im.pixels.shape[:2] for im in images)
    if len(sizes) == 1:
        return
    (common, n_common), (other, n_other) = sizes.most_common(2)
    first = next(im.path for im in images if im.pixels.shape[:2] == common)
    odd = next(im.path for im in images if im.pixels.shape[:2] == other)
    h, w = common
    raise AmbientError(
        f"{folder}: images have {len(sizes)} different sizes, e.g. {first} is {w}x{h} "
        f"(width x height, like {n_common} images) but {odd} is {other[1]}x{other[0]} "
        f"(like {n_other}); resize all images to one size first, e.g. with PIL: "
        f"Image.open(f).resize(({w}, {h})).save(f)"
    )


def _stack(images: list[_Image], folder: Path) -> Tensor:
    """Stack into ``[N, C, H, W]`` in ``[-1, 1]``, turning grayscale into RGB if any image is
    colour; says once what was converted."""
    channels = max(im.pixels.shape[2] for im in images)
    n_gray = sum(im.pixels.shape[2] == 1 for im in images)
    n_alpha = sum(im.had_alpha for im in images)
    if channels == 3 and n_gray:
        warnings.warn(f"{folder}: {n_gray} of {len(images)} images are grayscale and the others "
                      "colour; converted the grayscale ones to RGB (C = 3)", stacklevel=3)
    if n_alpha:
        warnings.warn(f"{folder}: dropped the alpha (transparency) channel of {n_alpha} "
                      "image(s)", stacklevel=3)
    h, w = images[0].pixels.shape[:2]
    out = torch.empty(len(images), channels, h, w)
    for row, im in zip(out, images, strict=True):
        row.copy_(torch.from_numpy(im.pixels.astype(np.float32)).permute(2, 0, 1))
        row.mul_(2.0 / im.peak).sub_(1.0)
    return out
