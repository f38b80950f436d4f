"""Is the consistency loss, or the learned model above sigma_n, what limits exactness below it?

Trains the same network with the default objective twice on the same noisy Gaussian mixture:
"learned" is the usual model; "exact teacher" wraps it so that above sigma_n the analytic
``E[x0 | x_sigma]`` replaces it (``D = analytic if sigma > sigma_n else network``). The ambient
loss then trains nothing, and only the consistency loss trains the network below sigma_n, with
a teacher and draws that are exact above sigma_n. If the exact-teacher model is no better below
sigma_n, the consistency loss itself (a backward heat equation, i.e. a deconvolution) is the
limit, not the accuracy of the ambient-trained model.

    python benchmarks/consistency_exact_teacher.py   # writes benchmarks/results/exact_teacher.md
    python benchmarks/consistency_exact_teacher.py --sigma-n 0.15 --budgets 1500 6000 24000 \
        --out benchmarks/results/exact_teacher_0.15.md   # the same at another level and budgets
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ambient.data import GaussianMixture, parse_gmm_spec, resolve_dataset
from ambient.defaults import default_train_config, defaults_summary
from ambient.engine import run_training
from ambient.evaluate.exactness import component_covariance_error, excess_denoising_error
from ambient.evaluate.report import Report, command_line
from ambient.losses import Denoiser, consistency_loss, sample_sigma_above
from ambient.nets import build_denoiser
from ambient.objective import training_loss
from ambient.samplers import sample
from ambient.train import DatasetLoss
from consistency_ablation import (
    GMM,
    PAIRS,
    POINTS,
    QUICK_STEPS,
    SAMPLER_STEPS,
    SAMPLES,
    gmm_spec,
    sampler_steps,
)
from pages import page


class ExactAbove(nn.Module):
    """``D(x, sigma)``: the mixture's analytic posterior mean for ``sigma > sigma_n`` (with
    ``at_sigma_n``, for ``sigma >= sigma_n``: then the own-sample draws' first step, taken at the
    data's level, is exact too), the wrapped network below."""

    def __init__(self, net: nn.Module, gmm: GaussianMixture, sigma_n: float,
                 at_sigma_n: bool = False) -> None:
        super().__init__()
        self.net, self.gmm, self.sigma_n, self.at_sigma_n = net, gmm, sigma_n, at_sigma_n

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Each row evaluated once, by the analytic denoiser or by the network."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        above = sigma >= self.sigma_n if self.at_sigma_n else sigma > self.sigma_n
        out = torch.empty_like(x)
        if above.any():
            out[above] = self.gmm.denoiser(x[above], sigma[above]).to(x.dtype)
        if not above.all():
            out[~above] = self.net(x[~above], sigma[~above])
        return out


def mean_consistency(model: Denoiser, y: Tensor, sigma_n: Tensor, batches: int = 50) -> float:
    """The two-draw consistency estimator (PAIRS: teacher at the ambient level, 6 substeps; its
    ideal is 0 for an exact model, whatever objective trained it), averaged over ``batches``
    batches of 512 with fixed randomness."""
    objective = default_train_config("gmm").objective
    objective.consistency = replace(objective.consistency, **PAIRS)
    g = torch.Generator().manual_seed(7)
    total = 0.0
    with torch.no_grad():
        for _ in range(batches):
            idx = torch.randint(len(y), (512,), generator=g)
            total += float(training_loss(model, y[idx], sigma_n[idx], objective, g)[1]["consistency"])
    return total / batches


def estimator_bias(sigma_n: float, rows: int = 20000) -> list[dict[str, object]]:
    """The consistency estimator's mean (0 = the ideal loss) for the exact denoiser, and for a
    wrong one (the posterior mean at sigma_n used at every level below it, i.e. truncated
    sampling's denoiser), by substeps and by how far above sigma_n the teacher may be: a loss
    that separates them poorly, or that is far from 0 at the truth, cannot train the truth."""
    gmm, _ = parse_gmm_spec(GMM)
    g = torch.Generator().manual_seed(0)
    sn = torch.full((rows,), sigma_n)
    sigma = sample_sigma_above(sn, generator=g).float()
    x = gmm.sample(rows, generator=g) + sigma[:, None] * torch.randn(rows, gmm.dim, generator=g)
    below = torch.exp(math.log(0.002) + torch.rand(rows, generator=g) * math.log(sigma_n / 0.002))

    def truncated(x: Tensor, level: Tensor) -> Tensor:
        level = torch.as_tensor(level).expand(x.shape[0])
        return gmm.denoiser(x, level.clamp_min(sigma_n))

    out = []
    for cap in (None, 2.0, 1.25):
        keep = torch.ones(rows, dtype=torch.bool) if cap is None else sigma <= cap * sigma_n
        for substeps in (1, 6, 20):
            row: dict[str, object] = {"teacher levels": "all (default)" if cap is None
                                      else f"<= {cap:g} sigma_n", "substeps": substeps,
                                      "rows": int(keep.sum())}
            for name, denoiser in (("exact D", gmm.denoiser), ("truncated D", truncated)):
                loss = consistency_loss(denoiser, x[keep], sigma[keep], below[keep],
                                        substeps=substeps,
                                        generator=torch.Generator().manual_seed(1)).loss
                row[name] = f"{loss.mean():.4f} +- {loss.std() / loss.numel() ** 0.5:.4f}"
            out.append(row)
    return out


def run(mode: str, sigma_n: float, steps: int, root: Path, two_draws: bool = False,
        lr: float | None = None, ode_steps: int | None = None,
        heun_steps: int = SAMPLER_STEPS, points: int = POINTS) -> dict[str, object]:
    """Train one model (``mode`` "learned" or "exact teacher"; the default objective, or with
    ``two_draws`` the two-draw consistency estimator; ``lr``: another learning rate,
    ``ode_steps``: another number of ODE steps of the own-sample draws) on the mixture's
    ``points`` noisy points and measure it (``heun_steps``: the sampler's steps)."""
    gmm, _ = parse_gmm_spec(GMM)
    cfg = default_train_config("gmm")
    if two_draws:
        cfg.objective.consistency = replace(cfg.objective.consistency, **PAIRS)
    if ode_steps is not None:
        cfg.objective.consistency = replace(cfg.objective.consistency, substeps=ode_steps)
    if mode == "exact teacher":  # nothing to learn above sigma_n: no warm start
        cfg.objective.consistency = replace(cfg.objective.consistency, warmup=0.0)
    engine = replace(cfg.engine, steps=steps, checkpoint_every=steps, log_every=steps,
                     lr=lr or cfg.engine.lr)
    dataset = resolve_dataset(gmm_spec(points), sigma_n, seed=0)
    torch.manual_seed(engine.seed)
    net = build_denoiser((gmm.dim,), kind="mlp", hidden=cfg.net["hidden"], depth=cfg.net["depth"])
    model = ExactAbove(net, gmm, sigma_n) if mode == "exact teacher" else net
    start = time.perf_counter()
    run_dir = root / f"{mode}_{sigma_n}_{steps}_{two_draws}_{lr}_{ode_steps}".replace(" ", "_")
    model = run_training(model, DatasetLoss(dataset, cfg.objective, steps), len(dataset), engine,
                         run_dir, progress=False)
    seconds = time.perf_counter() - start
    levels = [sigma_n / 4, sigma_n / 2, sigma_n, 2 * sigma_n]
    excess = excess_denoising_error(model, gmm, levels, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        drawn = sample(model, (SAMPLES, gmm.dim), num_steps=heun_steps,
                       generator=torch.Generator().manual_seed(6))
    cov = component_covariance_error(drawn, gmm)
    row: dict[str, object] = {"consistency": "two draws" if two_draws else "default",
                              "model above sigma_n": mode, "sigma_n": sigma_n, "steps": steps}
    for level, label in zip(levels, ["sn/4", "sn/2", "sn", "2sn"], strict=True):
        row[f"excess@{label}"] = excess[level]
    row.update({"cov_err": cov.error, "width": cov.width_ratio,
                "two-draw consistency loss": mean_consistency(model, dataset.y, dataset.sigma_n),
                "train s": seconds})
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_STEPS} steps")
    parser.add_argument("--sigma-n", type=float, default=0.3)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1500, 6000],
                        help="training steps of the rows (the two-draw rows: the first)")
    parser.add_argument("--points", type=int, default=POINTS,
                        help=f"training points of the mixture (default {POINTS})")
    parser.add_argument("--out", default=page("exact_teacher.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budgets = [QUICK_STEPS] if args.quick else args.budgets
    heun_steps = sampler_steps(args.quick)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(mode, args.sigma_n, steps, Path(tmp), heun_steps=heun_steps,
                    points=args.points)
                for steps in budgets for mode in ("learned", "exact teacher")]
        rows += [run(mode, args.sigma_n, budgets[0], Path(tmp), two_draws=True,
                     heun_steps=heun_steps, points=args.points)
                 for mode in ("learned", "exact teacher")]
    gmm, _ = parse_gmm_spec(GMM)
    dataset = resolve_dataset(gmm_spec(args.points), args.sigma_n, seed=0)
    exact_loss = mean_consistency(gmm.denoiser, dataset.y, dataset.sigma_n)
    report = Report("Consistency with an exact teacher above sigma_n")
    rerun = command_line("benchmarks/consistency_exact_teacher.py", argv)
    report.text(f"Rerun: `{rerun}`. "
                f"{time.perf_counter() - start:.0f} s on one CPU thread. Data: "
                f"{gmm_spec(args.points)} at sigma_n = {args.sigma_n:g}; MLP 128x3, batch 512, "
                f"EMA weights, the default objective ('two draws': with the two-draw consistency "
                f"estimator instead); {heun_steps}-step Heun sampling. 'exact teacher': the "
                f"analytic posterior mean replaces the network above sigma_n, so only the "
                f"consistency loss trains it (at and below sigma_n), from the first step (no "
                f"warm start). " + defaults_summary())
    report.table(rows)
    report.text(f"The two-draw consistency loss (its estimator, same batches and draws) of the "
                f"exact denoiser at every level: {exact_loss:.3g} (an exact loss would give 0 up "
                f"to Monte-Carlo error; see the next table).")
    report.heading("The estimator's bias and signal")
    report.text("Mean consistency loss (+- its standard error) of the exact denoiser and of a "
                "wrong one (truncated sampling's: D(x, sigma_n) at every level below sigma_n), "
                "on 20000 rows drawn like the ambient loss's (teacher level above sigma_n, target "
                "level log-uniform below it); the two-draw variant shares "
                "the ambient loss's teacher at every level. With few substeps the draws from a "
                "far teacher follow a coarse chain, so the exact denoiser is not the loss's zero; "
                "with many, the two models' losses differ by little more than their noise.")
    report.table(estimator_bias(args.sigma_n))
    out = Path(args.out)
    report.write(out, html=False)
    print(out.read_text(encoding="utf-8"))
    return out


if __name__ == "__main__":
    main()
