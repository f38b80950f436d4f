"""Training images for the latent path: files, captions, SDXL-style resize and crop.

Captions come from ``metadata.jsonl`` (one JSON object per line) or ``metadata.csv`` in the
image folder, with a ``file_name`` column (path relative to the folder) and a caption column
(default ``text``): the layout of Hugging Face ``imagefolder`` datasets. A fixed prompt replaces
them; with neither every caption is the empty prompt (unconditional, as the paper's FFHQ runs).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ambient.data.images import upright
from ambient.errors import AmbientError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Example:
    """One training image and its caption."""

    path: Path
    caption: str


def list_examples(folder: str | Path, prompt: str | None = None,
                  caption_column: str = "text") -> list[Example]:
    """Images under ``folder`` (recursive, sorted, hidden files skipped) with their captions:
    ``prompt`` if given, else from the folder's metadata file, else ``""``."""
    root = Path(folder)
    if not root.is_dir():
        raise AmbientError(f"--data {root}: not a folder; pass a folder of image files "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    files = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise AmbientError(f"--data {root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    captions = None if prompt is not None else read_captions(root, caption_column)
    examples = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if captions is not None and rel not in captions:
            raise AmbientError(f"{root}: the metadata file has no row for {rel}; add a row "
                               f"(file_name={rel}, {caption_column}=...) or pass --prompt")
        caption = prompt if prompt is not None else (captions or {}).get(rel, "")
        examples.append(Example(path, caption))
    return examples


def read_captions(folder: Path, column: str = "text") -> dict[str, str] | None:
    """``{file_name: caption}`` from ``folder/metadata.jsonl`` or ``metadata.csv``; None if
    neither exists."""
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.is_file():
        rows, source = [], jsonl
        for number, line in enumerate(jsonl.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise AmbientError(f"{jsonl}:{number}: not valid JSON ({err}); each line must "
                                       'be an object like {"file_name": "a.png", "text": "..."}'
                                       ) from err
    elif table.is_file():
        with open(table, newline="") as f:
            rows, source = list(csv.DictReader(f)), table
    else:
        return None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "file_name" not in row or column not in row:
            raise AmbientError(f"{source}: row {number} lacks the field 'file_name' or "
                               f"'{column}'; every row needs both (or pass --prompt)")
    return {Path(row["file_name"]).as_posix(): str(row[column]) for row in rows}


def load_cropped(path: Path, resolution: int) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
    """Read an image as RGB, resize its shorter side to ``resolution`` (Lanczos) and take the
    centre ``resolution x resolution`` crop. Returns the pixels ``[3, R, R]`` in ``[-1, 1]``, the
    original size ``(h, w)`` and the crop's top-left corner ``(top, left)`` in the resized image
    (SDXL's micro-conditioning)."""
    try:
        with Image.open(path) as im:
            image = upright(im).convert("RGB")
    except (OSError, ValueError) as err:
        raise AmbientError(f"{path}: not a readable image ({err}); remove or re-save it") from err
    w, h = image.size
    scale = resolution / min(h, w)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    return pixels / 127.5 - 1.0, (h, w), (top, left)


def load_images(paths: list[Path], resolution: int) -> Tensor:
    """Several images as ``[N, 3, R, R]`` in ``[-1, 1]`` (see :func:`load_cropped`)."""
    return torch.stack([load_cropped(p, resolution)[0] for p in paths])
