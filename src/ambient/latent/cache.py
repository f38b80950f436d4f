"""The noisy training latents, made once and cached in the run directory (safetensors).

Each image ``i`` is encoded once, ``z0 = E(x_i)``, and noised once with its own fixed seed:

    y_i = sqrt(1 - s^2) z0 + s eps_i,    eps_i ~ N(0, I) from seed (noise_seed + i),
    s   = sqrt(1 - alphas_cumprod[t_n])  (s = 0 for t_n = 0: clean latents)

(:func:`ambient.noise.add_noise_vp` from level 0 to ``s``). Training only ever sees ``y``; the
clean latents are not stored. The file also holds SDXL's micro-conditioning per image and, in
its metadata, a key of everything the latents depend on: a cache whose key differs is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ambient.latent.data import Example, load_cropped
from ambient.latent.model import LatentModel, sdxl_time_ids
from ambient.noise import add_noise_vp

CACHE_FILE = "noisy_latents.safetensors"


def cache_key(examples: list[Example], resolution: int, t_n: int, noise_seed: int,
              pretrained: str) -> str:
    """Hash of the files (path, size), the resolution, t_n, the noise seed and the model path."""
    files = [(str(e.path), e.path.stat().st_size) for e in examples]
    blob = json.dumps([files, resolution, t_n, noise_seed, pretrained])
    return hashlib.sha256(blob.encode()).hexdigest()


@torch.no_grad()
def build_noisy_latents(
    model: LatentModel,
    examples: list[Example],
    resolution: int,
    t_n: int,
    noise_seed: int,
    path: Path,
    key: str,
    batch_size: int = 8,
) -> None:
    """Encode, noise (formula in the module docstring) and write ``latents`` ``[N, C, h, w]``
    (float32) and ``time_ids`` ``[N, 6]`` to ``path`` atomically."""
    s = model.data_level(t_n)
    latents, time_ids = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        loaded = [load_cropped(e.path, resolution) for e in chunk]
        z0 = model.encode(torch.stack([pixels for pixels, _, _ in loaded])).cpu()
        eps = torch.stack([
            torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(noise_seed + i))
            for i in range(start, start + len(chunk))])
        latents.append(add_noise_vp(z0, 0.0, s, eps))
        time_ids += [sdxl_time_ids(size, crop, (resolution, resolution))
                     for _, size, crop in loaded]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"latents": torch.cat(latents).contiguous(), "time_ids": torch.stack(time_ids)},
              str(tmp), metadata={"key": key, "t_n": str(t_n), "vp_level": repr(s)})
    os.replace(tmp, path)


def cached_key(path: Path) -> str | None:
    """The key stored in an existing cache file, or None."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("key")


class NoisyLatents:
    """Read access to a cache file; latents are read lazily, row by row (memory-mapped), so a
    large dataset need not fit in memory."""

    def __init__(self, path: Path) -> None:
        self._file = safe_open(str(path), framework="pt")
        self.time_ids = self._file.get_tensor("time_ids")

    def __len__(self) -> int:
        return len(self.time_ids)

    def __getitem__(self, index: Tensor) -> Tensor:
        """Latents of rows ``index`` (CPU, float32)."""
        rows = self._file.get_slice("latents")
        return torch.cat([rows[i:i + 1] for i in index.tolist()])
