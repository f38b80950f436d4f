"""Diagnostic: the default's excess covariance error is a bridge between the closest components.

The default's samples on the mixture at sigma_n = 0.15 (8x the points, 6000 steps) have about
twice the clean oracle's per-component covariance error, and the band swaps place the error
between sigma_n/4 and sigma_n. This page says where in space it lies: per component, and in
the valley between the two components whose means are nearest (0.6 apart, 4 sigma_n: at the
data's level they overlap). For each seed it trains the oracle, the default and the default
with the analytic posterior mean in place of the network at and above sigma_n ("exact at
sigma_n": its own-sample draws start with an exact step from the data), and draws 200000
samples of each. Besides the covariance error, split into the closest pair's and the other
components', it gives the share of samples in the pair's valley and what the training data
can say about it: the valley's mass after noise of sigma_n is added to the samples, against
the data's law, in standard errors of a sample of the training set's size. A bridge that
costs the covariance error much moves that mass little, so the noisy data barely show it.

    python benchmarks/consistency_bridge.py   # writes benchmarks/results/consistency_bridge.md
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ambient.data import GaussianMixture, parse_gmm_spec, resolve_dataset
from ambient.defaults import default_train_config, defaults_summary
from ambient.engine import run_training
from ambient.evaluate.exactness import (
    closest_pair,
    component_covariance_error,
    core_spread,
    valley_share,
)
from ambient.evaluate.report import Report, command_line
from ambient.generate import generate
from ambient.nets import build_denoiser
from ambient.samplers import Denoiser
from ambient.train import DatasetLoss
from consistency_ablation import GMM, gmm_spec, sampler_steps
from consistency_bands import POINTS, SIGMA_N, oracle_and_default, seed_arguments
from consistency_exact_teacher import ExactAbove
from digits_benchmark import mean_sd
from pages import page

DRAWS = 200000  # samples per model; the covariance error reads the first COV_DRAWS
COV_DRAWS = 40000
QUICK_DRAWS = 4000
COLUMNS = ["model", "seeds", "cov_err", "per seed", "closest pair", "others", "core",
           "stranded", "valley", "valley at sigma_n (se)"]


def train_exact_at(seed: int, steps: int, points: int, run_dir: Path) -> nn.Module:
    """The default objective on the noisy points with the analytic posterior mean at and above
    sigma_n (nothing to learn there, so no warm start); returns the EMA model."""
    gmm, _ = parse_gmm_spec(GMM)
    cfg = default_train_config("gmm")
    cfg.objective.consistency = replace(cfg.objective.consistency, warmup=0.0)
    engine = replace(cfg.engine, steps=steps, checkpoint_every=steps, log_every=steps, seed=seed)
    dataset = resolve_dataset(gmm_spec(points), SIGMA_N, seed=seed)
    torch.manual_seed(seed)
    net = build_denoiser((gmm.dim,), kind="mlp", hidden=cfg.net["hidden"], depth=cfg.net["depth"])
    return run_training(ExactAbove(net, gmm, SIGMA_N, at_sigma_n=True),
                        DatasetLoss(dataset, cfg.objective, steps), len(dataset), engine, run_dir,
                        progress=False)


def valley_evidence(drawn: torch.Tensor, gmm: GaussianMixture, points: int) -> float:
    """The valley's mass after noise of sigma_n is added to ``drawn``, minus the same for as
    many fresh draws of p0, in standard errors of the latter's estimate from ``points`` points:
    how many standard errors the training set's noisy data can see a bridge by."""
    g = torch.Generator().manual_seed(11)
    truth = gmm.sample(len(drawn), generator=g).double()
    noisy = [x + SIGMA_N * torch.randn(x.shape, generator=g, dtype=x.dtype)
             for x in (truth, drawn.double())]
    p, q = (valley_share(x, gmm) for x in noisy)
    return (q - p) / math.sqrt(p * (1 - p) / points)


def scores(denoiser: Denoiser, config: dict[str, object], gmm: GaussianMixture, draws: int,
           heun_steps: int, points: int) -> dict[str, float]:
    """cov_err over every component, the closest pair and the others (each a weight-averaged
    relative Frobenius error), core and stranded share, the valley share and its evidence."""
    with torch.no_grad():
        drawn = generate(denoiser, config, draws, steps=heun_steps, seed=6)
    cov = component_covariance_error(drawn[:COV_DRAWS], gmm)
    pair = closest_pair(gmm)
    weights = gmm.weights.tolist()

    def part(keep: list[int]) -> float:
        return (sum(weights[k] * cov.per_component[k] for k in keep)
                / sum(weights[k] for k in keep))

    spread = core_spread(drawn[:COV_DRAWS], gmm)
    return {"cov_err": cov.error, "closest pair": part(list(pair)),
            "others": part([k for k in range(gmm.num_components) if k not in pair]),
            "core": spread.core, "stranded": spread.stranded,
            "valley": valley_share(drawn, gmm),
            "valley at sigma_n (se)": valley_evidence(drawn, gmm, points)}


def seed_rows(seed: int, steps: int, points: int, draws: int, heun_steps: int,
              root: Path) -> list[dict[str, object]]:
    """Train the three models on ``seed`` and score each."""
    gmm, _ = parse_gmm_spec(GMM)
    oracle, default, config = oracle_and_default(seed, steps, points, root)
    models = {"oracle": oracle, "default": default,
              "default, exact at sigma_n": train_exact_at(seed, steps, points,
                                                          root / f"exact_{seed}")}
    rows = []
    for key, model in models.items():
        rows.append({"model": key, "seed": seed,
                     **scores(model, config, gmm, draws, heun_steps, points)})
        print(rows[-1], flush=True)
    return rows


def summary(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per model: mean ± sd over the seeds, and each seed's cov_err."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        row: dict[str, object] = {"model": model, "seeds": len(mine),
                                  "per seed": ", ".join(f"{float(r['cov_err']):.3f}" for r in mine)}
        for key in COLUMNS[2:]:
            if key != "per seed":
                row[key] = mean_sd([float(r[key]) for r in mine], ".3g")
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> Path:
    args, steps, seeds = seed_arguments(argv, __doc__,
                                        page("consistency_bridge.md"),
                                        f", {QUICK_DRAWS} draws")
    draws = QUICK_DRAWS if args.quick else DRAWS
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            rows += seed_rows(seed, steps, POINTS, draws, sampler_steps(args.quick), Path(tmp))
    gmm, _ = parse_gmm_spec(GMM)
    i, j = closest_pair(gmm)
    fresh = gmm.sample(draws, generator=torch.Generator().manual_seed(3))
    report = Report("Where the default's covariance error lies: a bridge between the closest "
                    "components")
    report.text(
        f"Rerun: `{command_line('benchmarks/consistency_bridge.py', argv)}`. "
        f"{time.perf_counter() - start:.0f} s on one CPU thread. Mixture {gmm_spec(POINTS)}, "
        f"sigma_n = {SIGMA_N:g}, {steps} steps, seeds {', '.join(map(str, seeds))}; 'oracle': "
        f"DSM on the clean points; 'default': ambient + the default consistency on the noisy "
        f"ones; 'default, exact at sigma_n': the same with the mixture's analytic posterior mean "
        f"in place of the network at and above sigma_n (no warm start). {draws} samples per "
        f"model ({sampler_steps(args.quick)}-step Heun); cov_err (per-component covariance "
        f"error, weight-averaged), core and stranded (as on the ablation page) read the first "
        f"{min(COV_DRAWS, draws)} (the other pages' 4000 draws of p0 score cov_err 0.055). "
        f"'closest pair': cov_err of components {i} and {j} (means "
        f"{float((gmm.means[i] - gmm.means[j]).norm()):.2f} apart), 'others': of the rest. "
        f"valley: share of the samples between those two (ambient.evaluate.valley_share; "
        f"{draws} fresh draws of p0: {valley_share(fresh, gmm):.4f}). 'valley at sigma_n (se)': "
        f"the valley's mass once noise of sigma_n is added to the samples, minus the same for "
        f"as many fresh draws of p0, in standard errors of a {POINTS}-point sample: how "
        f"clearly the noisy training data show the bridge. "
        f"{__doc__.split(chr(10) + chr(10))[1]} {defaults_summary()}")
    report.table(summary(rows), COLUMNS)
    return report.write(Path(args.out), html=False)


if __name__ == "__main__":
    main()
