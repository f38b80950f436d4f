"""Diagnostic: at which noise levels the default's samples go wrong (band swaps with the oracle).

On the mixture at sigma_n = 0.15 with 8x the points and 6000 steps, the default's samples
have the right bulk width about their components, but more of them are stranded between
components than the clean oracle's, and their covariance error is about twice the oracle's
(the frontier page). This trains the oracle and the default on each seed and samples hybrids
of the two: the oracle's denoiser inside one band of noise levels and the default's outside it,
and the reverse. A band whose swap takes the default's error down to the oracle's is where the
error is made: a denoiser is used at every level the sampler passes, so a band of levels is the
only thing a swap changes.

    python benchmarks/consistency_bands.py   # writes benchmarks/results/consistency_bands.md
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from ambient.data import parse_gmm_spec
from ambient.defaults import defaults_summary
from ambient.evaluate.report import Report, command_line
from ambient.samplers import Denoiser
from ambient.train import load_run
from consistency_ablation import (
    GMM,
    MAIN,
    QUICK_STEPS,
    gmm_spec,
    sample_scores,
    sampler_steps,
    train_variant,
)
from digits_benchmark import mean_sd
from pages import page

SIGMA_N = 0.15
POINTS = 131072  # 8x the ablation's, as on the eight-seed and frontier pages
STEPS = 6000
SEEDS = (0, 1, 2)
ORACLE, DEFAULT = MAIN[0], MAIN[3]
# bands of levels as multiples of sigma_n: all below it (its swap is the swap of all above it
# the other way round), then octaves
BANDS = [(0.0, 1.0), (0.0, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0),
         (4.0, math.inf)]
COLUMNS = ["denoiser", "levels (x sigma_n)", "seeds", "cov_err", "per seed", "core",
           "stranded"]


def banded(inside: Denoiser, outside: Denoiser, lo: float, hi: float) -> Denoiser:
    """The denoiser ``inside(x, sigma)`` for the rows with ``lo <= sigma < hi``, ``outside``
    for the others."""
    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.expand(len(x)) if sigma.ndim == 0 else sigma
        mask = (sigma >= lo) & (sigma < hi)
        return torch.where(mask.reshape(-1, *[1] * (x.ndim - 1)), inside(x, sigma),
                           outside(x, sigma))
    return denoiser


def band_label(lo: float, hi: float) -> str:
    return f"[{lo:g}, {hi:g})" if math.isfinite(hi) else f">= {lo:g}"


def oracle_and_default(seed: int, steps: int, points: int,
                       root: Path) -> tuple[Denoiser, Denoiser, dict[str, object]]:
    """Train the oracle and the default on ``seed`` at SIGMA_N into ``root``: their EMA
    denoisers and the run config to sample them with (sigma_n set)."""
    runs = {}
    for key, name in (("oracle", ORACLE), ("default", DEFAULT)):
        train_variant(name, SIGMA_N, steps, root / f"{key}_{seed}", seed=seed, points=points)
        runs[key] = load_run(root / f"{key}_{seed}")
    (oracle, config), (default, _) = runs["oracle"], runs["default"]
    return oracle, default, {**config, "sigma_n": {"max": SIGMA_N}}


def seed_rows(seed: int, steps: int, points: int, heun_steps: int,
              root: Path) -> list[dict[str, object]]:
    """Train the oracle and the default on ``seed`` and score them and every band swap."""
    oracle, default, config = oracle_and_default(seed, steps, points, root)
    gmm, _ = parse_gmm_spec(GMM)
    plan = [("oracle", "everywhere", oracle), ("default", "everywhere", default)]
    for lo, hi in BANDS:
        band = band_label(lo, hi)
        plan.append(("oracle inside, default outside", band,
                     banded(oracle, default, lo * SIGMA_N, hi * SIGMA_N)))
        plan.append(("default inside, oracle outside", band,
                     banded(default, oracle, lo * SIGMA_N, hi * SIGMA_N)))
    rows = []
    with torch.no_grad():
        for who, band, denoiser in plan:
            rows.append({"denoiser": who, "levels (x sigma_n)": band, "seed": seed,
                         **sample_scores(denoiser, config, gmm, heun_steps)})
            print(rows[-1], flush=True)
    return rows


def summary(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per (denoiser, band): mean ± sd over the seeds, and each seed's cov_err."""
    keys = list(dict.fromkeys((r["denoiser"], r["levels (x sigma_n)"]) for r in rows))
    out = []
    for who, band in keys:
        mine = [r for r in rows if (r["denoiser"], r["levels (x sigma_n)"]) == (who, band)]
        out.append({"denoiser": who, "levels (x sigma_n)": band, "seeds": len(mine),
                    "cov_err": mean_sd([float(r["cov_err"]) for r in mine], ".3g"),
                    "per seed": ", ".join(f"{float(r['cov_err']):.3f}" for r in mine),
                    "core": mean_sd([float(r["core"]) for r in mine], ".3g"),
                    "stranded": mean_sd([float(r["stranded"]) for r in mine], ".2g")})
    return out


def seed_arguments(argv: list[str] | None, doc: str, out: Path, quick: str = ""
                   ) -> tuple[argparse.Namespace, int, list[int]]:
    """The command line of a page trained on SEEDS for STEPS (``--quick``: QUICK_STEPS, the first
    seed; ``quick``: what else a smoke run cuts, for its help), one CPU thread: the parsed
    arguments, the steps and the seeds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_STEPS} steps, the first seed{quick}")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", default=out)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = QUICK_STEPS if args.quick else STEPS
    return args, steps, args.seeds[:1] if args.quick else args.seeds


def main(argv: list[str] | None = None) -> Path:
    args, steps, seeds = seed_arguments(argv, __doc__,
                                        page("consistency_bands.md"))
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            rows += seed_rows(seed, steps, POINTS, sampler_steps(args.quick), Path(tmp))
    report = Report("Where the default's samples go wrong: band swaps with the clean oracle")
    report.text(f"Rerun: `{command_line('benchmarks/consistency_bands.py', argv)}`. "
                f"{time.perf_counter() - start:.0f} s on one CPU thread. Mixture {gmm_spec(POINTS)}, "
                f"sigma_n = {SIGMA_N:g}, {steps} steps, seeds "
                f"{', '.join(map(str, seeds))}; 'oracle': DSM on the clean points, 'default': "
                f"ambient + the default consistency on the noisy ones (each seed: the same "
                f"models in every row). 'oracle inside, default outside' samples with the "
                f"oracle's denoiser at the levels inside the band and the default's elsewhere. "
                f"Scored like the ablation: per-component covariance error (cov_err), the "
                f"bulk's width about the nearest component over fresh draws' (core: 1 = right) "
                f"and the share of samples stranded between components (fresh draws of p0: "
                f"0.01). {__doc__.split(chr(10) + chr(10))[1]} {defaults_summary()}")
    report.table(summary(rows), COLUMNS)
    return report.write(Path(args.out), html=False)


if __name__ == "__main__":
    main()
