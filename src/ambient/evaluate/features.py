"""Feature extractors for Frechet distances and memorisation: callables that map images
``[N, C, H, W]`` in ``[-1, 1]`` to features ``[N, F]`` (float32, on the CPU).

- ``digits``: a small fixed CNN classifier for the built-in 8x8 digits, trained deterministically
  by :func:`build_digits_features_weights`; features are its 64-d penultimate layer (before ReLU).
  Shipped weights: ``ambient/assets/digits_features.safetensors``, rebuilt with
  ``python -c "from ambient.evaluate.features import build_digits_features_weights as b;
  b('src/ambient/assets/digits_features.safetensors')"``.
- ``pixels``: the flattened pixels (vectors ``[N, D]`` as they are).
- ``dinov2:DIR``: a local DINOv2 checkpoint (transformers layout), CLS token features.
- ``torchscript:FILE``: a local TorchScript network, e.g. the Inception of FID.

Nothing is downloaded: every network comes from a local path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ambient.data.digits import load_digits
from ambient.errors import AmbientError

Extractor = Callable[[Tensor], Tensor]

DIGITS_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "digits_features.safetensors"
DIGITS_ARCH = "digits-cnn-v1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_images(images: Tensor, who: str) -> None:
    if images.ndim != 4 or len(images) == 0:
        raise AmbientError(f"{who} expects a non-empty batch of images [N, C, H, W] in [-1, 1], "
                           f"got shape {list(images.shape)}")


@torch.no_grad()
def _batched(fn: Callable[[Tensor], Tensor], images: Tensor, batch_size: int,
             device: torch.device | str) -> Tensor:
    """Apply ``fn`` to ``images`` in batches on ``device``; float32 ``[N, F]`` on the CPU."""
    return torch.cat([fn(images[i:i + batch_size].to(device=device, dtype=torch.float32))
                      .flatten(1).float().cpu() for i in range(0, len(images), batch_size)])


def _to_rgb(images: Tensor, who: str) -> Tensor:
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise AmbientError(f"{who} needs 1- or 3-channel images, got {images.shape[1]} channels")
    return images


def _resize(images: Tensor, size: int | None) -> Tensor:
    """Bicubic resize (antialiased when shrinking) to ``size x size``; ``None`` keeps the size."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True)


# ----------------------------------------------------------------------------- digits


class DigitsNet(nn.Module):
    """8x8 digit classifier: 2 conv layers (32, 64 channels, each with a 2x2 max-pool), a 64-d
    linear embedding (the features) and a linear 10-way head on its ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
        )
        self.embed = nn.Linear(64 * 2 * 2, 64)
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.embed(self.convs(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.features(x)))


def build_digits_features_weights(
    path: str | Path = DIGITS_WEIGHTS,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> float:
    """Train :class:`DigitsNet` on ``load_digits("train")`` and save it to ``path`` (safetensors,
    atomic); returns the accuracy on ``load_digits("test")``.

    Reproducible: fixed seed for the initialisation and the shuffles (the global RNG is left
    untouched), one CPU thread, Adam with cross-entropy and a random shift of up to one pixel
    (background padding) as augmentation. Takes a few seconds."""
    images, labels = load_digits("train", return_labels=True)
    test_images, test_labels = load_digits("test", return_labels=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = DigitsNet()
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
            padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
            shifted = torch.stack([padded[:, :, dy:dy + 8, dx:dx + 8]
                                   for dy in range(3) for dx in range(3)])  # [9, N, 1, 8, 8]
            for _ in range(epochs):
                perm = torch.randperm(len(images), generator=gen)
                shift = torch.randint(0, 9, (len(images),), generator=gen)
                for i in range(0, len(images), batch_size):
                    idx = perm[i:i + batch_size]
                    loss = F.cross_entropy(net(shifted[shift[idx], idx]), labels[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                sched.step()
            net.eval()
            with torch.no_grad():
                accuracy = (net(test_images).argmax(1) == test_labels).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        # one metadata key: safetensors writes several in random order, breaking byte equality
        info = {"arch": DIGITS_ARCH, "seed": seed, "epochs": epochs,
                "test_accuracy": round(accuracy, 4)}
        save_file(state, tmp, metadata={"ambient": json.dumps(info, sort_keys=True)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return accuracy


class DigitsFeatures:
    """64-d penultimate features of the fixed digits classifier, for ``[N, 1, 8, 8]`` images."""

    name = "digits"

    def __init__(self, weights: str | Path = DIGITS_WEIGHTS, device: torch.device | str = "cpu",
                 batch_size: int = 1024) -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise AmbientError(f"digits feature weights {weights} not found: rebuild them with "
                               "ambient.evaluate.features.build_digits_features_weights(path)")
        try:
            with safe_open(weights, framework="pt") as f:
                info = json.loads((f.metadata() or {}).get("ambient", "{}"))
        except SafetensorError as err:
            raise AmbientError(f"digits feature weights {weights} are not a safetensors file "
                               f"({err}); rebuild with build_digits_features_weights") from err
        if info.get("arch") != DIGITS_ARCH:
            raise AmbientError(f"{weights}: metadata field 'arch' is {info.get('arch')!r}, "
                               f"expected {DIGITS_ARCH!r}; rebuild with "
                               "build_digits_features_weights")
        self.info = info
        self.net = DigitsNet()
        self.net.load_state_dict(load_file(weights))
        self.net.eval().to(device)
        self.device = device
        self.batch_size = batch_size

    def _check(self, images: Tensor) -> None:
        _check_images(images, "digits features")
        if tuple(images.shape[1:]) != (1, 8, 8):
            raise AmbientError(f"digits features need [N, 1, 8, 8] images, got "
                               f"{list(images.shape)}; use 'pixels', 'dinov2:DIR' or "
                               "'torchscript:FILE' for other images")

    def __call__(self, images: Tensor) -> Tensor:
        self._check(images)
        return _batched(self.net.features, images, self.batch_size, self.device)

    def logits(self, images: Tensor) -> Tensor:
        """Class logits ``[N, 10]`` (e.g. to check which digits a model generates)."""
        self._check(images)
        return _batched(self.net, images, self.batch_size, self.device)


# ----------------------------------------------------------------------------- pixels


class PixelFeatures:
    """The flattened samples: pixels ``[N, C*H*W]`` of images, or vectors ``[N, D]`` as they are
    (so ``pixels`` also scores runs on vector data against a reference array)."""

    name = "pixels"

    def __call__(self, images: Tensor) -> Tensor:
        if images.ndim not in (2, 4) or len(images) == 0:
            raise AmbientError(f"pixel features expect a non-empty batch of vectors [N, D] or "
                               f"images [N, C, H, W], got shape {list(images.shape)}")
        return images.detach().reshape(len(images), -1).float().cpu()


# ----------------------------------------------------------------------------- DINOv2


class DinoV2Features:
    """CLS token of a local DINOv2 checkpoint (a directory saved by transformers'
    ``save_pretrained``: ``config.json`` + weights).

    Preprocessing: grayscale -> 3 channels, bicubic resize to ``image_size`` (default
    ``min(224, config.image_size)``: 224 for the released models), ``[-1, 1] -> [0, 1]``, then
    ImageNet mean/std normalisation, which the network was trained with (the official ambient
    code feeds un-normalised images)."""

    name = "dinov2"

    def __init__(self, local_dir: str | Path, image_size: int | None = None,
                 device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        from transformers import AutoModel

        local_dir = Path(local_dir)
        config_file = local_dir / "config.json"
        if not config_file.is_file():
            raise AmbientError(f"DINOv2 checkpoint {local_dir}: no config.json there; pass a "
                               "directory saved with save_pretrained (e.g. a local copy of "
                               "facebook/dinov2-base)")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type not in ("dinov2", "dinov2_with_registers"):
            raise AmbientError(f"{config_file}: field 'model_type' is {model_type!r}, not a "
                               "DINOv2 checkpoint; pass a DINOv2 directory")
        try:
            self.model = AutoModel.from_pretrained(local_dir, local_files_only=True)
        except OSError as err:
            raise AmbientError(f"DINOv2 checkpoint {local_dir}: cannot load weights ({err}); "
                               "the directory needs the model's weight file") from err
        self.model.float().eval().to(device)
        self.image_size = image_size or min(224, self.model.config.image_size)
        self.device = device
        self.batch_size = batch_size
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def _embed(self, images: Tensor) -> Tensor:
        x = _resize(_to_rgb(images, "DINOv2 features"), self.image_size)
        x = ((x + 1) / 2 - self._mean) / self._std
        return self.model(pixel_values=x).pooler_output

    def __call__(self, images: Tensor) -> Tensor:
        _check_images(images, "DINOv2 features")
        return _batched(self._embed, images, self.batch_size, self.device)


# ----------------------------------------------------------------------------- TorchScript


class TorchScriptFeatures:
    """Features of a local TorchScript network (``torch.jit.load``), e.g. FID's Inception-v3
    ``inception-2015-12-05.pt`` as shipped by NVIDIA (stylegan2-ada) and clean-fid.

    Images become 3-channel, are resized (bicubic, antialiased) to ``image_size`` (299 for
    Inception; ``None`` keeps the size) and mapped linearly from ``[-1, 1]`` to
    ``input_range``: ``(0, 255)`` for the NVIDIA/clean-fid Inception, which takes float images in
    0..255; use ``(-1, 1)`` or ``(0, 1)`` for scripts that expect those. If the script's
    ``forward`` has a ``return_features`` argument (the NVIDIA Inception does) it is called
    with ``return_features=True`` (the 2048-d pool features instead of logits)."""

    name = "torchscript"

    def __init__(self, path: str | Path, image_size: int | None = 299,
                 input_range: tuple[float, float] = (0.0, 255.0),
                 device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        path = Path(path)
        if not path.is_file():
            raise AmbientError(f"TorchScript feature network {path} not found; pass a local file "
                               "saved with torch.jit.save (e.g. inception-2015-12-05.pt)")
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as err:
            raise AmbientError(f"{path} is not a TorchScript file torch.jit.load can read "
                               f"({err}); save the network with torch.jit.save") from err
        args = [a.name for a in self.module.forward.schema.arguments]
        self._kwargs = {"return_features": True} if "return_features" in args else {}
        self.image_size = image_size
        self.input_range = input_range
        self.device = device
        self.batch_size = batch_size

    def _embed(self, images: Tensor) -> Tensor:
        lo, hi = self.input_range
        x = _resize(_to_rgb(images, "TorchScript features"), self.image_size)
        return self.module(lo + (x + 1) / 2 * (hi - lo), **self._kwargs)

    def __call__(self, images: Tensor) -> Tensor:
        _check_images(images, "TorchScript features")
        return _batched(self._embed, images, self.batch_size, self.device)


def get_extractor(spec: str, device: torch.device | str = "cpu") -> Extractor:
    """``"digits"``, ``"pixels"``, ``"dinov2:DIR"``, ``"torchscript:FILE"``; a bare existing
    directory is read as DINOv2 and a bare existing file as TorchScript."""
    kind, _, where = spec.partition(":")
    if spec == "digits":
        return DigitsFeatures(device=device)
    if spec == "pixels":
        return PixelFeatures()
    if kind == "dinov2" and where:
        return DinoV2Features(where, device=device)
    if kind == "torchscript" and where:
        return TorchScriptFeatures(where, device=device)
    if Path(spec).is_dir():
        return DinoV2Features(spec, device=device)
    if Path(spec).is_file():
        return TorchScriptFeatures(spec, device=device)
    raise AmbientError(f"unknown feature extractor {spec!r}: use 'digits', 'pixels', "
                       "'dinov2:DIR' (local DINOv2 checkpoint) or 'torchscript:FILE' (e.g. the "
                       "FID Inception)")
