"""Diagnostic: why the SURE term at sigma_n helps the mixture but hurts the digits.

The SURE option (``objective.sure_weight``) trains ``D(., sigma_n)`` on the noisy data by
Stein's unbiased risk estimate. On the mixture (131072 noisy points) it lowers the covariance
error; on the UNet digits page (1438 noisy digits) it makes the full samples much worse and the
one-step error at sigma_n 4.4x the oracle's (``digits_unet_sure.md``). SURE is unbiased for a
denoiser chosen without looking at the noise it is scored on, not for one fitted to that noise:
a network that learns the noisy training digits themselves can output ``D(y_i) = y_i`` with
no slope around them, which SURE scores ``-sigma_n^2`` per pixel (better than any real
denoiser) while its true error is ``sigma_n^2``.

This trains ``digits_benchmark.py``'s UNet recipe (1500 steps, seed 0, sigma_n = 0.2) with and
without the SURE term, with and without the default consistency, and scores the EMA weights at
every kept checkpoint: SURE on the noisy training digits (what the term minimises, averaged over
several probes), the true error ``mean (D(y_i, sigma_n) - x_i)^2`` on those same noisy digits
(their clean versions are known), and the error at sigma_n on the held-out clean digits with
fresh noise (the one-step column of the digits pages). A fitted-noise denoiser shows as
training SURE falling below its true training error, the held-out error rising with it.

A second table asks whether the fitted noise reaches the consistency term: the default's term
trains on the model's own ODE draws started at the noisy training digits, where ``D(., sigma_n)``
is fitted. For each model's last checkpoint it draws them (the default's ODE settings) from the
training digits and from the same clean digits with fresh noise, and gives the share of the
noise that ``D(., sigma_n)`` keeps (the regression coefficient of ``D(y) - x`` on ``y - x``), the
draws' error against the clean digits and their share of values in the background band, where
leftover noise lands. Fresh noise is what a denoiser that had not fitted the training noise
would see.

    python benchmarks/digits_sure_fit.py   # writes benchmarks/results/digits_sure_fit.md
    python benchmarks/digits_sure_fit.py --quick --out /tmp/sf/digits_sure_fit.md
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ambient.checkpoint import checkpoint_step, list_checkpoints
from ambient.data import load_digits, resolve_dataset
from ambient.defaults import defaults_summary
from ambient.evaluate.plots import plot_lines
from ambient.evaluate.report import Report, command_line
from ambient.losses import Denoiser, own_samples, sure_loss
from ambient.objective import ConsistencyConfig
from ambient.train import load_run, train
from digits_background import BAND, background_share
from digits_benchmark import METHODS, QUICK_BATCH, QUICK_STEPS, STEPS, Method, train_config
from pages import page

SIGMA_N = 0.2
# checkpoints scored per run (evenly spaced), Hutchinson probes per SURE figure, and the
# training / held-out digits scored (None: all): a full run, and a smoke run (--quick)
SCORING = {"full": (6, 8, None), "quick": (2, 1, 64)}
SURE_ALONE = Method("ambient, no consistency, SURE at sigma_n on a quarter of the rows", "ambient",
                    False, ("full",), settings=(("sure_weight", 1.0),))
# the models, with their names in the plots' legends
MODELS = {METHODS["ambient_no_consistency"]: "ambient", SURE_ALONE: "ambient + SURE",
          METHODS["ambient_consistency"]: "default", METHODS["ambient_sure"]: "default + SURE"}
COLUMNS = ["model", "step", "SURE, training digits", "MSE, training digits",
           "SURE - MSE, training digits", "MSE, held-out digits"]
DRAW_COLUMNS = ["model", "draws start at", "noise kept by D(., sigma_n)",
                "draws' MSE to the clean digits", f"draws' values in {BAND}"]


def mean_sure(denoiser: Denoiser, y: Tensor, probes: int, generator: torch.Generator) -> float:
    """SURE of ``D(., SIGMA_N)`` on ``y``, per pixel, averaged over rows and ``probes`` probes."""
    levels = torch.full((len(y),), SIGMA_N)
    return sum(float(sure_loss(denoiser, y, levels, torch.randn(y.shape, generator=generator))
                     .loss.mean()) for _ in range(probes)) / probes


def mse(denoiser: Denoiser, y: Tensor, x0: Tensor) -> float:
    """``mean (D(y, SIGMA_N) - x0)^2`` per pixel."""
    return float((denoiser(y, torch.full((len(y),), SIGMA_N)) - x0).pow(2).mean())


def draw_rows(label: str, denoiser: Denoiser, cons: ConsistencyConfig, y: Tensor,
              clean: Tensor) -> list[dict[str, object]]:
    """The second table's rows of one model: the own-sample draws (``cons``'s lift, ODE steps and
    lowest level) from the noisy training digits ``y`` and from ``clean`` with fresh noise."""
    fresh = clean + SIGMA_N * torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    out: list[dict[str, object]] = []
    for start_name, start in (("the training digits (fitted noise)", y),
                              ("the same digits, fresh noise", fresh)):
        with torch.no_grad():
            first = denoiser(start, torch.full((len(start),), SIGMA_N))
            draws = own_samples(denoiser, start, SIGMA_N, cons.lift, cons.substeps,
                                cons.sigma_min, torch.Generator().manual_seed(3))
        noise = start - clean
        out.append({"model": label, "draws start at": start_name,
                    "noise kept by D(., sigma_n)":
                        float(((first - clean) * noise).sum() / noise.pow(2).sum()),
                    "draws' MSE to the clean digits": float((draws - clean).pow(2).mean()),
                    f"draws' values in {BAND}": background_share(draws)})
    return out


def curve(method: Method, steps: int, root: Path, batch: int | None,
          scoring: tuple[int, int, int | None]) -> tuple[list[dict[str, object]],
                                                          list[dict[str, object]]]:
    """Train ``method`` keeping ``scoring``'s checkpoints, then score each one's EMA weights on
    its digits with its probes (a value of SCORING); and the last one's :func:`draw_rows`."""
    checkpoints, probes, count = scoring
    cfg = train_config(method, steps, SIGMA_N, "unet", 0, batch)
    every = max(1, steps // checkpoints)
    cfg.engine = replace(cfg.engine, checkpoint_every=every, keep_checkpoints=checkpoints + 1)
    data = resolve_dataset("digits", SIGMA_N, seed=0)
    assert data.clean is not None  # built-in digits keep their clean versions
    run_dir = root / method.label.replace(" ", "_")
    train(cfg, data, run_dir, progress=False)
    y, clean, test = data.y[:count], data.clean[:count], load_digits("test")[:count]
    test_noisy = test + SIGMA_N * torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
    rows: list[dict[str, object]] = []
    for step in sorted(map(checkpoint_step, list_checkpoints(run_dir))):
        denoiser, _ = load_run(run_dir, step=step)
        with torch.no_grad():
            fit = mean_sure(denoiser, y, probes, torch.Generator().manual_seed(2))
            train_mse = mse(denoiser, y, clean)
            rows.append({"model": method.label, "step": step,
                         "SURE, training digits": fit, "MSE, training digits": train_mse,
                         "SURE - MSE, training digits": fit - train_mse,
                         "MSE, held-out digits": mse(denoiser, test_noisy, test)})
        print(rows[-1], flush=True)
    return rows, draw_rows(method.label, denoiser, cfg.objective.consistency, y, clean)


def plots(rows: list[dict[str, object]], folder: Path) -> list[Path]:
    """Held-out error and SURE's optimism on the training digits against the step, by model."""
    out = []
    for column, name in (("MSE, held-out digits", "heldout_mse.png"),
                         ("SURE - MSE, training digits", "sure_optimism.png")):
        series = {short: {float(r["step"]): float(r[column])  # type: ignore[arg-type]
                          for r in rows if r["model"] == m.label} for m, short in MODELS.items()}
        out.append(plot_lines(series, folder / name, "training step", column,
                              title=f"digits UNet at sigma_n = {SIGMA_N:g}, D(., sigma_n)"))
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps")
    parser.add_argument("--out", type=Path, default=page("digits_sure_fit.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, batch = (QUICK_STEPS, QUICK_BATCH) if args.quick else (STEPS["unet"], None)
    scoring = SCORING["quick" if args.quick else "full"]
    report = Report("Why the SURE term at sigma_n hurts the digits")
    report.text(f"Rerun: `{command_line('benchmarks/digits_sure_fit.py', argv)}`. "
                + " ".join(__doc__.split("\n\n")[1:4]) + f" {steps} steps"
                f"{f' of batch {batch}' if batch else ''}; {scoring[1]} probes per SURE figure"
                f"{f'; the first {scoring[2]} digits of each set' if scoring[2] else ''}; every "
                "figure is per pixel. " + defaults_summary())
    with tempfile.TemporaryDirectory() as root:
        curves = [curve(method, steps, Path(root), batch, scoring) for method in MODELS]
    rows = [row for fit, _ in curves for row in fit]
    report.table(rows, COLUMNS)
    report.text("The own-sample draws (the default consistency's targets) of each model's last "
                "checkpoint, from the noisy training digits and from the same digits with fresh "
                "noise (see above):")
    report.table([row for _, draws in curves for row in draws], DRAW_COLUMNS)
    for path in plots(rows, args.out.with_suffix("")):
        report.image(path, path.stem.replace("_", " "))
    return report.write(args.out, html=False)


if __name__ == "__main__":
    main()
