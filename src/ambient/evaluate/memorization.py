"""Memorisation: how close are generated images to their nearest training image?

Similarity is the cosine ``<f(a), f(b)> / (|f(a)| |f(b)|)`` of embeddings ``f`` (DINOv2 in the
paper; any extractor of :mod:`ambient.evaluate.features`), and a sample counts as a copy above
0.95 (near copy above 0.9). Two attacks:

- posterior (the paper's test): noise a training image to a high level ``sigma_start`` and run
  the reverse process from there (:func:`ambient.samplers.posterior_sample`); a memorising model
  returns the training image. The masked variant starts inpainting-style: inside a centred box
  the start is pure noise ``sigma_start z``, elsewhere the image noised to ``sigma_start``
  (``x = y + sigma_start z``); the reverse process then runs unconditionally.
- unconditional (Somepalli et al. 2023): fresh samples against the whole training set.

The thresholds were set for DINOv2 on large images. Small or simple images are close to each
other anyway: held-out 8x8 digits have a raw-pixel nearest-neighbour cosine of 0.95 on average
(58% above 0.95), 0.87 (6%) with centred features (``center=True``: the training features' mean
is subtracted from both sides). Compare a model's similarities with :func:`heldout_baseline`,
the same measure for clean images the model never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ambient.samplers import SamplerName, posterior_sample, sample

Denoiser = Callable[[Tensor, Tensor], Tensor]
Embed = Callable[[Tensor], Tensor]


@torch.no_grad()
def nearest_neighbour_similarity(
    sample_feats: Tensor, train_feats: Tensor, batch_size: int = 1024, center: bool = False
) -> tuple[Tensor, Tensor]:
    """For each sample, the cosine similarity to its nearest training embedding and that
    embedding's index: ``sims[i] = max_j cos(s_i - m, t_j - m)``, ``idx[i] = argmax_j`` (both
    ``[N]``), with ``m`` the mean training embedding if ``center`` else 0."""
    s = sample_feats.detach().reshape(len(sample_feats), -1).float().cpu()
    t = train_feats.detach().reshape(len(train_feats), -1).float().cpu()
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"sample features have {s.shape[1]} dimensions, training features "
                         f"{t.shape[1]}")
    if center:
        mean = t.mean(0)
        s, t = s - mean, t - mean
    s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    best = [(s[i:i + batch_size] @ t.T).max(dim=1) for i in range(0, len(s), batch_size)]
    sims = torch.cat([b.values for b in best]).clamp(-1.0, 1.0)
    return sims, torch.cat([b.indices for b in best])


@dataclass
class MemorizationResult:
    """``sims[i]``: cosine similarity of sample ``i`` to its nearest training image, whose index
    is ``nearest[i]``; ``sources[i]``: the training image the posterior attack started from
    (``None`` for unconditional samples)."""

    samples: Tensor
    sims: Tensor
    nearest: Tensor
    sources: Tensor | None = None

    def fraction_above(self, threshold: float) -> float:
        """Fraction of samples whose nearest-neighbour similarity exceeds ``threshold``."""
        return (self.sims > threshold).float().mean().item()

    @property
    def above_090(self) -> float:
        return self.fraction_above(0.9)

    @property
    def above_095(self) -> float:
        return self.fraction_above(0.95)

    def summary(self) -> dict[str, float]:
        """Mean similarity and fractions above 0.9 / 0.95 (and, for the posterior attack, how
        often the nearest training image is the one the attack started from)."""
        out = {"mean_similarity": self.sims.mean().item(), "above_0.9": self.above_090,
               "above_0.95": self.above_095}
        if self.sources is not None:
            out["nearest_is_source"] = (self.nearest == self.sources).float().mean().item()
        return out


def _box_mask(shape: Sequence[int], fraction: float) -> Tensor:
    """``[1, 1, H, W]`` mask with ones on a centred box of ``round(fraction * H) x
    round(fraction * W)`` pixels."""
    h, w = shape[-2], shape[-1]
    bh, bw = round(fraction * h), round(fraction * w)
    mask = torch.zeros(1, 1, h, w)
    mask[..., (h - bh) // 2:(h - bh) // 2 + bh, (w - bw) // 2:(w - bw) // 2 + bw] = 1.0
    return mask


def posterior_memorization(
    denoiser: Denoiser,
    train_images: Tensor,
    embed: Embed,
    sigma_start: float,
    num_steps: int = 32,
    indices: Sequence[int] | Tensor | None = None,
    box_fraction: float = 0.0,
    sampler: SamplerName = "euler",
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    center: bool = False,
) -> MemorizationResult:
    """Posterior attack from the training images ``train_images[indices]`` (default all) at level
    ``sigma_start``; ``box_fraction > 0`` is the masked variant (a centred box of that fraction of
    the height and width starts as pure noise). Samples and the whole training set are embedded
    with ``embed`` and compared by :func:`nearest_neighbour_similarity` (``center`` as there).
    ``generator`` must live on ``device``."""
    if not 0.0 <= box_fraction <= 1.0:
        raise ValueError(f"box_fraction must be in [0, 1], got {box_fraction}")
    train_images = train_images.detach().float().cpu()
    sources = torch.arange(len(train_images)) if indices is None else torch.as_tensor(indices)
    keep = 1.0 - _box_mask(train_images.shape, box_fraction)
    samples = []
    for start in range(0, len(sources), batch_size):
        y = train_images[sources[start:start + batch_size]] * keep
        out = posterior_sample(denoiser, y.to(device), sigma_start, num_steps=num_steps,
                               sampler=sampler, generator=generator)
        samples.append(out.detach().cpu())
    result = _compare(torch.cat(samples), train_images, embed, center)
    result.sources = sources
    return result


def unconditional_memorization(
    denoiser: Denoiser,
    train_images: Tensor,
    embed: Embed,
    num: int,
    num_steps: int = 32,
    sampler: SamplerName = "heun",
    sigma_max: float = 80.0,
    truncate_at: float | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    center: bool = False,
) -> MemorizationResult:
    """``num`` unconditional samples (:func:`ambient.samplers.sample`; ``truncate_at`` for models
    trained without consistency) against their nearest training images (``center`` as in
    :func:`nearest_neighbour_similarity`); ``generator`` must live on ``device``."""
    train_images = train_images.detach().float().cpu()
    samples = []
    for start in range(0, num, batch_size):
        shape = (min(batch_size, num - start), *train_images.shape[1:])
        out = sample(denoiser, shape, num_steps=num_steps, sampler=sampler, sigma_max=sigma_max,
                     truncate_at=truncate_at, generator=generator, device=device)
        samples.append(out.detach().cpu())
    return _compare(torch.cat(samples), train_images, embed, center)


def heldout_baseline(heldout_images: Tensor, train_images: Tensor, embed: Embed,
                     center: bool = False) -> MemorizationResult:
    """The same measure for clean held-out images against the training set: the similarities a
    model reaches by generating new images of the data's law without copying any."""
    return _compare(heldout_images.detach().float().cpu(), train_images.detach().float().cpu(),
                    embed, center)


def _compare(samples: Tensor, train_images: Tensor, embed: Embed,
             center: bool) -> MemorizationResult:
    sims, nearest = nearest_neighbour_similarity(embed(samples), embed(train_images),
                                                 center=center)
    return MemorizationResult(samples=samples, sims=sims, nearest=nearest)
