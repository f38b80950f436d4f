"""The built-in real dataset: scikit-learn's 8x8 handwritten digits (1797 images, offline)."""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
import torch
from torch import Tensor

Split = Literal["train", "test", "all"]


@overload
def load_digits(split: Split = "train", test_fraction: float = 0.2, seed: int = 0,
                return_labels: Literal[False] = False) -> Tensor: ...
@overload
def load_digits(split: Split = "train", test_fraction: float = 0.2, seed: int = 0, *,
                return_labels: Literal[True]) -> tuple[Tensor, Tensor]: ...


def load_digits(split: Split = "train", test_fraction: float = 0.2, seed: int = 0,
                return_labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Digits as ``[N, 1, 8, 8]`` float32 in ``[-1, 1]`` (``pixel / 8 - 1``; raw pixels are 0..16).

    The train/test split is a fixed permutation drawn with ``seed`` (stratification not needed:
    classes are balanced), so every module sees the same held-out images."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(images))
    index = {"test": perm[:n_test], "train": perm[n_test:], "all": torch.arange(len(images))}
    if split not in index:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    idx = index[split]
    return (images[idx], labels[idx]) if return_labels else images[idx]
