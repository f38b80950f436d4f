"""The training set: noisy observations ``y`` with one VE noise level ``sigma_n`` per sample.

:func:`resolve_dataset` turns a ``--data`` argument (a built-in name or a path) and a
``--sigma-n`` argument into a :class:`NoisyDataset`. Noise is drawn once, per sample, from a
generator keyed by ``(seed, sample index)`` (:func:`corrupt_once`), so a sample's noise never
depends on the batch, the order, or which other samples are present.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ambient.data.arrays import ARRAY_SUFFIXES, check_finite, load_array, warn_image_range
from ambient.data.digits import load_digits
from ambient.data.gmm import GaussianMixture
from ambient.data.images import FORMATS, OnBad, load_image_folder
from ambient.errors import AmbientError
from ambient.noise import as_levels, corrupt

# Keys of a "gmm:key=value,..." spec and their defaults (the type of a default is the key's type).
GMM_DEFAULTS: dict[str, int | float] = {
    "dim": 2,  # dimension d of the data
    "components": 8,  # number of mixture components K
    "n": 4096,  # number of training samples
    "seed": 0,  # seed of the mixture's parameters and of the clean samples
    "scale": 0.1,  # standard deviation of a component (component_scale)
    "spread": 2.0,  # standard deviation of the component means (mean_scale)
}


@dataclass
class NoisyDataset:
    """Observations for training and what is known about them. ``y`` must be finite: a NaN or
    Inf raises :class:`AmbientError` naming ``source`` and the first bad index."""

    y: Tensor  # [N, ...] float32 observations used for training (noisy)
    sigma_n: Tensor  # [N] float32 VE noise level of each sample (0 = clean sample)
    clean: Tensor | None  # ground truth when known (built-in data, --corrupt); never for training
    source: str  # origin: "digits", a canonical "gmm:..." spec (see parse_gmm_spec), or a path

    def __post_init__(self) -> None:
        if self.sigma_n.shape != (len(self.y),):
            raise ValueError(f"sigma_n must have shape [{len(self.y)}], got "
                             f"{list(self.sigma_n.shape)}")
        if self.clean is not None and self.clean.shape != self.y.shape:
            raise ValueError(f"clean must have the shape of y {list(self.y.shape)}, got "
                             f"{list(self.clean.shape)}")
        check_finite(self.y, self.source)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(D,)`` or ``(C, H, W)``."""
        return tuple(self.y.shape[1:])

    @property
    def is_image(self) -> bool:
        """Whether samples are images ``(C, H, W)``."""
        return len(self.sample_shape) == 3

    def __len__(self) -> int:
        return self.y.shape[0]


# ----------------------------------------------------------------------------- noise levels


def load_sigma_n(spec: str | float | Path, n: int) -> Tensor:
    """Per-sample noise levels ``[n]`` float32 from a number (one level for all samples) or a
    ``.npy`` file of ``n`` levels (in the order of the samples). Levels must be finite and
    ``>= 0``; errors name the value or file and the fix."""
    if isinstance(spec, str):
        try:
            value = float(spec)
        except ValueError:
            return _load_sigma_file(Path(spec).expanduser(), n)
    elif isinstance(spec, Path):
        return _load_sigma_file(spec.expanduser(), n)
    else:
        value = float(spec)
    if not np.isfinite(value) or value < 0:
        raise AmbientError(f"--sigma-n {spec}: a noise level must be a finite number >= 0 "
                           "(the standard deviation of the noise; 0 = clean data)")
    return torch.full((n,), value, dtype=torch.float32)


def _load_sigma_file(path: Path, n: int) -> Tensor:
    """Levels from a ``.npy`` file: shape ``(n,)`` or ``(n, 1)``, finite, non-negative."""
    if not path.is_file():
        raise AmbientError(f"--sigma-n {path}: neither a number nor an existing file; give a "
                           "noise level such as 0.2, or a .npy file with one level per sample")
    if path.suffix.lower() != ".npy":
        raise AmbientError(f"--sigma-n {path}: per-sample levels must be a .npy file "
                           "(np.save(path, levels), one level per sample)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise AmbientError(f"--sigma-n {path}: not a readable numeric .npy file ({e}); save the "
                           "levels with np.save(path, levels.astype(np.float32))") from e
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise AmbientError(f"--sigma-n {path}: expected a 1-D array of real numbers (one level "
                           f"per sample), got shape {list(arr.shape)} and dtype {arr.dtype}")
    if len(arr) != n:
        raise AmbientError(f"--sigma-n {path}: holds {len(arr)} levels but the data has {n} "
                           "samples; give one level per sample, in the order of the samples")
    levels = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    for bad, what in ((~torch.isfinite(levels), "non-finite (NaN or Inf)"),
                      (levels < 0, "negative")):
        count = int(bad.sum())
        if count:
            first = int(bad.nonzero()[0])
            raise AmbientError(f"--sigma-n {path}: {count} level(s) are {what}, the first at "
                               f"index {first} ({float(levels[first])}); noise levels must be "
                               "finite and >= 0 (0 = clean sample)")
    return levels


# ----------------------------------------------------------------------------- corruption


def _mix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser: a bijection of ``uint32`` that scrambles the bits."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def per_sample_noise(indices: Tensor | Sequence[int], sample_shape: Sequence[int],
                     seed: int) -> Tensor:
    """Standard normal noise ``[len(indices), *sample_shape]`` float32; row ``j`` is a function
    of ``(seed, indices[j], sample_shape)`` only.

    Each row comes from its own generator seeded with a 32-bit key that is a bijection of
    the index for a fixed seed (torch's CPU generator keeps 32 bits of a seed), so distinct
    samples never share a stream. ``seed`` is taken modulo ``2**32``."""
    idx = torch.as_tensor(indices)
    if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex():
        raise ValueError(f"indices must be a 1-D integer tensor, got {idx.dtype} "
                         f"{list(idx.shape)}")
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= 2**32):
        raise ValueError("indices must lie in [0, 2**32)")
    seed_key = _mix32(np.array([seed % 2**32], dtype=np.uint64))
    keys = _mix32(_mix32(idx.cpu().numpy()) ^ seed_key)
    shape = tuple(sample_shape)
    out = torch.empty(len(idx), *shape)
    gen = torch.Generator()
    for row, key in zip(out, keys.tolist(), strict=True):
        gen.manual_seed(key)
        torch.randn(shape, generator=gen, out=row)
    return out


def corrupt_once(x0: Tensor, sigma_n: Tensor | float, seed: int,
                 indices: Tensor | Sequence[int] | None = None) -> Tensor:
    """Nature's corruption ``y_i = x0_i + sigma_n_i * z_i``, ``z_i = per_sample_noise(i)``.

    ``indices`` are the samples' positions in the full dataset (default ``0 .. N-1``): a
    subset or permutation corrupted with its original indices gets the same noise per
    sample. ``sigma_n`` is a scalar or ``[N]``."""
    if indices is None:
        indices = torch.arange(len(x0))
    idx = torch.as_tensor(indices)
    if idx.shape != (len(x0),):
        raise ValueError(f"indices must have shape [{len(x0)}], got {list(idx.shape)}")
    levels = as_levels(sigma_n, x0)
    noise = per_sample_noise(idx, x0.shape[1:], seed).to(x0.device, x0.dtype)
    return corrupt(x0, levels, noise)


# ----------------------------------------------------------------------------- Gaussian mixtures


def _gmm_params(spec: str) -> dict[str, int | float]:
    """Parse ``gmm`` / ``gmm:key=value,...`` into GMM_DEFAULTS updated with the given keys."""
    name, _, rest = spec.partition(":")
    valid = ", ".join(GMM_DEFAULTS)
    if name.strip() != "gmm":
        raise AmbientError(f"--data {spec!r}: a Gaussian-mixture spec starts with 'gmm', "
                           f"e.g. 'gmm:dim=2,components=8' (keys: {valid})")
    params = dict(GMM_DEFAULTS)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq:
            raise AmbientError(f"--data {spec!r}: {item!r} is not key=value; write e.g. "
                               f"'gmm:dim=2,components=8' (keys: {valid})")
        if key not in GMM_DEFAULTS:
            raise AmbientError(f"--data {spec!r}: unknown key {key!r}; valid keys: {valid}")
        kind = type(GMM_DEFAULTS[key])
        try:
            params[key] = kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise AmbientError(f"--data {spec!r}: {key}={value!r} must be {what}") from None
        if key != "seed" and not (math.isfinite(params[key]) and params[key] > 0):
            raise AmbientError(f"--data {spec!r}: {key}={value} must be a finite number > 0")
    return params


def gmm_spec(params: dict[str, int | float]) -> str:
    """The canonical spec string with every key, e.g. ``gmm:dim=2,components=8,...``."""
    return "gmm:" + ",".join(f"{k}={params[k]}" for k in GMM_DEFAULTS)


def _build_gmm(params: dict[str, int | float]) -> tuple[GaussianMixture, torch.Generator]:
    """The mixture of ``params`` and the generator (seeded with ``seed``) that drew it."""
    gen = torch.Generator().manual_seed(int(params["seed"]))
    mixture = GaussianMixture.random(int(params["dim"]), int(params["components"]),
                                     mean_scale=float(params["spread"]),
                                     component_scale=float(params["scale"]), generator=gen)
    return mixture, gen


def parse_gmm_spec(spec: str) -> tuple[GaussianMixture, int]:
    """``"gmm"`` or ``"gmm:dim=2,components=8,n=4096,seed=0,scale=0.1,spread=2.0"`` (any
    subset of keys, defaults in GMM_DEFAULTS) -> the deterministic mixture and the number of
    samples. The same spec always gives the same mixture."""
    params = _gmm_params(spec)
    return _build_gmm(params)[0], int(params["n"])


# ----------------------------------------------------------------------------- resolution


def _accepted_kinds() -> str:
    return (f"--data takes a {'/'.join(ARRAY_SUFFIXES)} array file ((N, D) vectors, (N, H, W) "
            f"or (N, C, H, W) images), a folder of {'/'.join(FORMATS)} images, or a built-in "
            f"dataset: 'digits' or 'gmm[:key=value,...]' (default {gmm_spec(GMM_DEFAULTS)})")


def _builtin(data: str) -> tuple[Tensor, str] | None:
    """Clean samples and source of a built-in dataset name, or None for a path."""
    if data == "digits":
        x0, source = load_digits("train"), "digits"
    elif data == "gmm" or data.startswith("gmm:"):
        params = _gmm_params(data)
        mixture, gen = _build_gmm(params)
        x0, source = mixture.sample(int(params["n"]), generator=gen), gmm_spec(params)
    else:
        return None
    if Path(data).exists():
        warnings.warn(f"--data {data!r} is the built-in dataset, not the file or folder of that "
                      f"name here; write ./{data} to use the file or folder", stacklevel=3)
    return x0, source


def _load_path(path: Path, on_bad: OnBad) -> Tensor:
    """Samples of a user file or folder."""
    if not path.exists():
        raise AmbientError(f"--data {path}: no such file or folder. {_accepted_kinds()}")
    if path.is_dir():
        return load_image_folder(path, on_bad=on_bad)
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise AmbientError(f"--data {path}: unsupported file type {path.suffix!r}. "
                           f"{_accepted_kinds()}")
    return load_array(path, finite=False)  # NoisyDataset checks what it is built from


def resolve_dataset(data: str, sigma_n: str | float | None, corrupt: bool = False,
                    seed: int = 0, on_bad: OnBad = "skip") -> NoisyDataset:
    """Build the training set from ``--data``, ``--sigma-n``, ``--corrupt`` and ``--seed``.

    - Built-in ``digits`` / ``gmm[:...]`` data are clean and always corrupted once at
      ``sigma_n`` (None or 0 keeps them clean: the clean-data oracle); ``clean`` is kept.
    - A user file or image folder is taken as already noisy at ``sigma_n`` (required; 0 if
      clean), unless ``corrupt``: then it is clean ground truth, corrupted once at
      ``sigma_n > 0``, and kept in ``clean``.

    ``sigma_n`` is a number or a ``.npy`` file of per-sample levels (:func:`load_sigma_n`);
    noise comes from :func:`corrupt_once` with ``seed``."""
    builtin = _builtin(data)
    if builtin is not None:
        x0, source = builtin
        levels = load_sigma_n(0.0 if sigma_n is None else sigma_n, len(x0))
        y = corrupt_once(x0, levels, seed) if bool((levels > 0).any()) else x0.clone()
        return NoisyDataset(y, levels, x0, source)

    path = Path(data).expanduser()
    x = _load_path(path, on_bad)
    check_range = x.ndim == 4 and not path.is_dir()  # image folders are [-1, 1] by construction
    if corrupt:
        levels = load_sigma_n(0.0 if sigma_n is None else sigma_n, len(x))
        if not bool((levels > 0).any()):
            raise AmbientError(f"{path}: --corrupt adds noise to clean data and needs "
                               f"--sigma-n > 0 (got {sigma_n}); give the noise level to add, "
                               "e.g. --sigma-n 0.2, or drop --corrupt if the data is noisy")
        if check_range:
            warn_image_range(x, 0.0, str(path))
        return NoisyDataset(corrupt_once(x, levels, seed), levels, x, str(path))

    if sigma_n is None:
        raise AmbientError(f"{path}: give --sigma-n, the noise level of your data, or 0 if it is "
                           "clean (or --corrupt --sigma-n S to add noise to clean data)")
    levels = load_sigma_n(sigma_n, len(x))
    top = float(levels.max())
    if check_range:
        warn_image_range(x, top, str(path))
    if path.is_dir() and top > 0:
        warnings.warn(f"{path}: image files store 8-bit pixels, so noise at sigma_n up to {top:g} "
                      "was clipped to [-1, 1] and rounded and is no longer exactly Gaussian, "
                      "which the ambient loss assumes; keep noisy data as float32 .npy files",
                      stacklevel=2)
    return NoisyDataset(x, levels, None, str(path))
