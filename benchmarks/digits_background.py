"""Diagnostic: where the default's Frechet gap on the digits comes from.

On the UNet digits page (sigma_n = 0.2) full sampling of the default closes little of the
clamped Frechet gap between truncated sampling and the clean oracle, yet scores better than the
oracle unclamped. This trains the oracle, ambient without consistency and the default
(``digits_benchmark.py``'s recipes: UNet, 1500 steps, seed 0) and scores each model's samples
with the sampler stopped at several levels ``sigma_stop`` (the Heun schedule run down to
``sigma_stop``, then ``D(x, sigma_stop)``; ``sigma_stop = sigma_n`` is truncated sampling, 0 is full
sampling), and, as a reference, the clean training digits with Gaussian noise on every pixel.

Measures: the Frechet distance (digits features) of the samples clamped to [-1, 1], unclamped,
and with the background snapped (values below -0.85 set to -1, then clamped: it removes noise
around the background level -1 and little else; the data's first grey level is -0.875); the
share of pixel values in (-0.95, -0.8), where background noise lands; and the per-pixel spread
of the border pixels (clean std < 0.05).

    python benchmarks/digits_background.py   # writes benchmarks/results/digits_background.md
    python benchmarks/digits_background.py --quick --out /tmp/bg/digits_background.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ambient.data import load_digits, resolve_dataset
from ambient.defaults import defaults_summary
from ambient.evaluate.features import DigitsFeatures
from ambient.evaluate.frechet import frechet_distance
from ambient.evaluate.report import Report
from ambient.samplers import sample
from ambient.train import load_run, train
from digits_benchmark import (
    METHODS,
    NUM,
    ORACLE,
    QUICK_BATCH,
    QUICK_NUM,
    QUICK_SAMPLER_STEPS,
    QUICK_STEPS,
    SAMPLER_STEPS,
    STEPS,
    pixel_spread,
    train_config,
)
from pages import page

SIGMA_N = 0.2
SNAP, BAND = -0.85, (-0.95, -0.8)
NOISE_LEVELS = (0.05, 0.1)  # std of the noise added to the clean digits in the reference rows
MODELS = {"clean-data oracle": (ORACLE, 0.0),
          "ambient, no consistency": (METHODS["ambient_no_consistency"], SIGMA_N),
          "ambient + consistency (default)": (METHODS["ambient_consistency"], SIGMA_N)}
COLUMNS = ["samples", "output", "clamped", "unclamped", "background snapped",
           f"values in {BAND}", "border spread"]


def background_share(images: Tensor) -> float:
    """Share of pixel values in ``BAND``, where noise on the background (-1) lands."""
    return float(((images > BAND[0]) & (images < BAND[1])).float().mean())


def scores(images: Tensor, extract: DigitsFeatures, test_feats: Tensor) -> dict[str, float]:
    """The page's measures of ``images`` [N, 1, 8, 8] (see the module docstring)."""
    flat = images.flatten(1)
    snapped = torch.where(flat < SNAP, torch.full_like(flat, -1.0), flat).clamp(-1, 1)
    return {"clamped": frechet_distance(extract(images.clamp(-1, 1)), test_feats),
            "unclamped": frechet_distance(extract(images), test_feats),
            "background snapped": frechet_distance(extract(snapped.view_as(images)), test_feats),
            f"values in {BAND}": background_share(images),
            "border spread": next(iter(pixel_spread(images).values()))}  # first group


def rows(steps: int, num: int, sampler_steps: int, root: Path,
         batch: int | None = None) -> list[dict[str, object]]:
    """Reference rows (clean digits, plus noise), then every model at every stopping level
    (``sampler_steps`` Heun levels)."""
    extract = DigitsFeatures()
    test_feats = extract(load_digits("test"))
    clean = load_digits("train")
    g = torch.Generator().manual_seed(0)
    out: list[dict[str, object]] = [
        {"samples": "the clean training digits", "output": "-",
         **scores(clean, extract, test_feats)}]
    for std in NOISE_LEVELS:
        noisy = clean + std * torch.randn(clean.shape, generator=g)
        out.append({"samples": f"the clean training digits + N(0, {std:g}^2) per pixel",
                    "output": "-", **scores(noisy, extract, test_feats)})
    for label, (method, sigma_n) in MODELS.items():
        run_dir = root / label.replace(" ", "_")
        train(train_config(method, steps, sigma_n, "unet", 0, batch),
              resolve_dataset("digits", sigma_n, seed=0), run_dir, progress=False)
        denoiser, _ = load_run(run_dir)
        for stop in (SIGMA_N, SIGMA_N / 2, SIGMA_N / 4, None):
            drawn = sample(denoiser, (num, *clean.shape[1:]), sampler_steps, truncate_at=stop,
                           generator=torch.Generator().manual_seed(0))
            output = "full (to 0)" if stop is None else f"D(x, {stop:g})"
            out.append({"samples": label, "output": output,
                        **scores(drawn, extract, test_feats)})
            print(label, output, out[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps and samples")
    parser.add_argument("--out", type=Path,
                        default=page("digits_background.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, num, sampler_steps, batch = (
        (QUICK_STEPS, QUICK_NUM, QUICK_SAMPLER_STEPS, QUICK_BATCH) if args.quick
        else (STEPS["unet"], NUM, SAMPLER_STEPS, None))
    report = Report("Where the default's Frechet gap on the digits comes from")
    report.text(f"Rerun: `python benchmarks/digits_background.py{' --quick' if args.quick else ''}`"
                f". {steps} training steps per model{f' of batch {batch}' if batch else ''}, {num} "
                f"samples per row (seed 0), sigma_n = "
                f"{SIGMA_N:g}, {sampler_steps}-level Heun. " + " ".join(__doc__.split("\n\n")[1:3]) + " "
                + defaults_summary())
    with tempfile.TemporaryDirectory() as root:
        table = rows(steps, num, sampler_steps, Path(root), batch)
    report.table(table, COLUMNS)
    return report.write(args.out, html=False)


if __name__ == "__main__":
    main()
