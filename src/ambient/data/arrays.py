"""NumPy files (``.npy`` / ``.npz``) -> float32 tensors ``[N, D]`` or ``[N, C, H, W]``."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ambient.errors import AmbientError

ARRAY_SUFFIXES = (".npy", ".npz")
NPZ_KEYS = ("x", "y", "data")  # accepted names of the data array in an .npz with several arrays

MAP_BYTES = 1 << 30  # a float32 .npy at least this large is memory-mapped, not read into memory
_CHUNK = 1 << 24  # values per block when scanning a (possibly mapped) array
_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}  # how the files start (np.load's own test)
_SHAPES = "(N, D) vectors, (N, H, W) or (N, C, H, W) images"


def load_array(path: str | Path, finite: bool = True) -> Tensor:
    """Load an ``.npy`` / ``.npz`` file as float32 ``[N, D]`` or ``[N, C, H, W]``.

    A float32 ``.npy`` of :data:`MAP_BYTES` or more is memory-mapped copy-on-write: rows are read
    from disk when used and shared between the processes of a multi-GPU run, and nothing is
    ever written back to the file (do not rewrite the file while a run reads it).
    ``(N, H, W)`` gains a channel axis. An ``.npz`` must hold a single array or one named
    ``x``, ``y`` or ``data``. Pickled (object) arrays are never loaded. Non-finite values
    (checked unless ``finite`` is False, for a caller that checks them itself), unsupported
    shapes and dtypes raise :class:`AmbientError` naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise AmbientError(f"{path}: no such file (expected a .npy or .npz array)")
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise AmbientError(
            f"{path}: unsupported file type {path.suffix!r}; arrays must be .npy or .npz "
            "(np.save / np.savez)"
        )
    arr = _read(path)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise AmbientError(
            f"{path}: dtype {arr.dtype} is not a real number type; save the data as float32, "
            "e.g. np.save(path, x.astype(np.float32))"
        )
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    x = _check_shape(x, path)
    if finite:
        check_finite(x, path)
    return x


def _read(path: Path) -> np.ndarray:
    """The one data array of ``path``; errors explain pickles, corrupt files and npz keys."""
    with path.open("rb") as f:
        magic = f.read(len(_MAGIC[".npy"]))
    if not magic.startswith(_MAGIC[path.suffix.lower()]):
        raise AmbientError(f"{path}: not a readable NumPy file (it does not start like a "
                           f"{path.suffix} file); re-save it with np.save / np.savez")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="c" if _mappable(path) else None)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            key = _npz_key(list(loaded.files), path)
            return loaded[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if "allow_pickle" in str(e) or "Python objects" in str(e):
            raise AmbientError(
                f"{path} holds Python objects (dtype=object), which are never loaded "
                "(allow_pickle=False, for safety); save a numeric array instead, e.g. "
                "np.save(path, np.asarray(x, dtype=np.float32))"
            ) from e
        raise AmbientError(f"{path}: not a readable NumPy file ({e}); re-save it with "
                           "np.save / np.savez") from e


def _mappable(path: Path) -> bool:
    """An ``.npy`` of at least :data:`MAP_BYTES`: mapped, it is read only where used; if it is
    float32 in C order the tensor is the mapping itself (else :func:`load_array` converts it,
    reading it whole, as for a smaller file)."""
    return path.suffix.lower() == ".npy" and path.stat().st_size >= MAP_BYTES


def _npz_key(keys: list[str], path: Path) -> str:
    """The data array's name in an ``.npz``: its only array, else the only one in NPZ_KEYS."""
    if len(keys) == 1:
        return keys[0]
    accepted = ", ".join(repr(k) for k in NPZ_KEYS[:-1]) + f" or {NPZ_KEYS[-1]!r}"
    if not keys:
        raise AmbientError(f"{path}: the .npz file holds no arrays; save the data with "
                           "np.savez(path, x=x)")
    named = [k for k in keys if k in NPZ_KEYS]
    if len(named) == 1:
        return named[0]
    listing = ", ".join(repr(k) for k in keys)
    which = "several of the accepted names" if named else "none of the accepted names"
    raise AmbientError(
        f"{path}: the .npz file holds {len(keys)} arrays ({listing}) with {which} "
        f"{accepted}; the data array must be the only array or the only one named "
        f"{accepted}, e.g. np.savez(path, x=data)"
    )


def _check_shape(x: Tensor, path: Path) -> Tensor:
    """``(N, D)`` and ``(N, C, H, W)`` pass; ``(N, H, W)`` gains a channel axis."""
    shape = list(x.shape)
    if x.ndim == 1:
        raise AmbientError(f"{path}: shape {shape} has one axis; the array must be {_SHAPES}. "
                           "For N scalars save x.reshape(-1, 1)")
    if x.ndim not in (2, 3, 4):
        raise AmbientError(f"{path}: shape {shape} is not supported; the array must be {_SHAPES}")
    if x.shape[0] == 0:
        raise AmbientError(f"{path}: shape {shape} holds no samples (N = 0)")
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim == 4 and x.shape[1] > 4 and x.shape[2] > 4 and x.shape[3] in (1, 3, 4):
        raise AmbientError(
            f"{path}: shape {shape} looks channels-last (N, H, W, C); the array must be "
            "(N, C, H, W): save x.transpose(0, 3, 1, 2)"
        )
    return x


def nonfinite(x: Tensor) -> tuple[int, tuple[int, ...] | None]:
    """The number of NaN/Inf values of ``x`` and the index of the first one (None if none),
    scanned in blocks of samples (a mapped array is read once, never held whole)."""
    rows = max(1, _CHUNK // max(1, x[0].numel()))
    count, first = 0, None
    for start in range(0, len(x), rows):
        bad = ~torch.isfinite(x[start:start + rows])
        found = int(bad.sum())
        if found and first is None:
            at = np.unravel_index(int(bad.flatten().nonzero()[0]), bad.shape)
            first = (start + int(at[0]), *(int(i) for i in at[1:]))
        count += found
    return count, first


def check_finite(x: Tensor, source: str | Path) -> None:
    """Raise naming ``source``, the number of NaN/Inf values and the index of the first one."""
    count, first = nonfinite(x)
    if first is not None:
        raise AmbientError(
            f"{source}: {count} non-finite value(s) (NaN or Inf); the first is at index {first} "
            f"(sample {first[0]}). Fix or drop those samples, e.g. "
            "x = x[np.isfinite(x).reshape(len(x), -1).all(axis=1)]"
        )


def warn_image_range(x: Tensor, noise_level: float, source: str) -> None:
    """Warn when images look like ``[0, 255]`` or ``[0, 1]`` instead of ``[-1, 1]``.

    ``noise_level`` (the largest sigma_n of ``x``) widens the tolerated range: noisy
    ``[-1, 1]`` images spread to about ``1 + 6 sigma_n``. Nothing is rescaled."""
    lo, hi = float(x.min()), float(x.max())
    margin = 8.0 * noise_level
    seen = f"{source}: image values span [{lo:.3g}, {hi:.3g}]"
    if hi > 2.0 + margin and hi > 20.0:
        warnings.warn(f"{seen}, which looks like [0, 255]; the model expects images in [-1, 1] "
                      "(and sigma_n on that scale). Rescale the file, e.g. x / 127.5 - 1",
                      stacklevel=3)
    elif margin < 0.5 and lo >= -margin and hi <= 1.0 + margin and hi > 0.5:
        warnings.warn(f"{seen}, which looks like [0, 1]; the model expects images in [-1, 1] "
                      "(and sigma_n on that scale). Rescale the file, e.g. 2 * x - 1",
                      stacklevel=3)
