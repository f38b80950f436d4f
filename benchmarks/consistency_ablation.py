"""Gaussian-mixture exactness benchmark and consistency ablation (same network, same budget).

For each sigma_n (larger than the components' scale 0.1) it trains, with ``ambient.train``:
the clean-data oracle, naive DSM on the noisy data, ambient without consistency, and ambient
with each consistency variant; then it measures the excess denoising error
``E||D - E[x0|x]||^2 / E||x0 - E[x0|x]||^2`` at sigma_n/4, sigma_n/2, sigma_n, 2 sigma_n, the
per-component covariance error and width ratio of full samples (truncated samples for the
no-consistency model too), and the training time per step relative to the oracle's DSM step.

    python benchmarks/consistency_ablation.py            # writes benchmarks/results/consistency.md
    python benchmarks/consistency_ablation.py --quick    # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from ambient.data import GaussianMixture, parse_gmm_spec, resolve_dataset
from ambient.defaults import DEFAULT_CONSISTENCY, default_train_config, defaults_summary
from ambient.evaluate.exactness import (
    component_covariance_error,
    core_spread,
    covariance_noise_floor,
    excess_denoising_error,
    sliced_wasserstein,
    sw_noise_floor,
)
from ambient.evaluate.plots import plot_excess_error
from ambient.files import atomic_write_text
from ambient.generate import generate
from ambient.objective import ObjectiveConfig
from ambient.train import load_run, train
from pages import page

POINTS = 16384  # training points of the mixture (the seeds and exact-teacher pages: --points)
_GMM_NET = default_train_config("gmm").net
NET = f"{_GMM_NET['hidden']}x{_GMM_NET['depth']}"  # the gmm training default's MLP (seeds: --net)


def mlp(net: str = NET) -> dict[str, object]:
    """The network config of an MLP named ``WIDTHxDEPTH`` (e.g. "128x3")."""
    try:
        hidden, depth = (int(part) for part in net.split("x"))
    except ValueError:
        raise ValueError(f"a network is named WIDTHxDEPTH, e.g. 128x3; got {net!r}") from None
    return {"kind": "mlp", "hidden": hidden, "depth": depth}


def gmm_spec(points: int = POINTS) -> str:
    """The benchmarks' mixture with ``points`` training points (the law, and so the evaluation,
    is the same for any)."""
    return f"gmm:dim=2,components=6,n={points},seed=0,scale=0.1,spread=1.0"


GMM = gmm_spec()
QUICK_STEPS = 60  # training steps of every mixture model in a smoke run (--quick)
SAMPLES = 4000  # samples per model for the covariance error and the sliced Wasserstein distance
SAMPLER_STEPS = 40  # Heun steps of those samples
QUICK_SAMPLER_STEPS = 8  # the same in a smoke run (--quick), here and on the digits pages
# the two-draw estimator (measured, like every two-draw option, without the warm start)
PAIRS = {"start": "ambient", "target": "below", "substeps": 6, "warmup": 0.0}
DATA_SMALL_STEPS = {"start": "data", "chain_steps": 4, "target": "step", "step": 0.05,
                    "substeps": 1, "warmup": 0.0}
PREVIOUS = {"schedule": "edm", "warmup": 0.0}  # the own-sample default before the warm start
VARIANTS = {  # name -> (method, data treated clean?, consistency overrides or None = off,
    #                    objective overrides)
    "oracle (clean DSM)": ("dsm", True, None, {}),
    "naive DSM on noisy": ("dsm", False, None, {}),
    "ambient, no consistency": ("ambient", False, None, {}),
    "ambient + consistency (default: own samples)": ("ambient", False, {}, {}),
    "ambient + consistency, two draws (teacher at the ambient level, 6 substeps)": (
        "ambient", False, PAIRS, {}),
    "ambient + consistency, own samples, EDM schedule, no warm start (previous default)": (
        "ambient", False, PREVIOUS, {}),
    "ambient, no consistency, paper weighting (cap 1)": ("ambient", False, None,
                                                         {"weight_cap": 1.0}),
    "  own samples, no warm start": ("ambient", False, {"warmup": 0.0}, {}),
    "  own samples, EDM schedule (rho 7)": ("ambient", False, {"schedule": "edm"}, {}),
    "  own samples, 3 ODE steps": ("ambient", False, {"substeps": 3}, {}),
    "  own samples, 8 ODE steps": ("ambient", False, {"substeps": 8}, {}),
    "  own samples, 12 ODE steps": ("ambient", False, {"substeps": 12}, {}),
    "  own samples, 24 ODE steps": ("ambient", False, {"substeps": 24}, {}),
    "  own samples, ODE to sigma 0.005 instead of 0.002": ("ambient", False,
                                                            {"sigma_min": 0.005}, {}),
    "  own samples, 8 ODE steps to sigma 0.005": ("ambient", False,
                                                  {"substeps": 8, "sigma_min": 0.005}, {}),
    "  own samples from 2 sigma_n": ("ambient", False, {"lift": 2.0}, {}),
    "  own samples from the data (lift 1)": ("ambient", False, {"lift": 1.0}, {}),
    "  own samples from 1.1 sigma_n (lift 1.1, the previous default)": (
        "ambient", False, {"lift": 1.1}, {}),
    "  own samples, fraction 0.125, 12 ODE steps (the default's ODE calls)": (
        "ambient", False, {"fraction": 0.125, "substeps": 12}, {}),
    "  own samples, fraction 0.375": ("ambient", False, {"fraction": 0.375}, {}),
    "  own samples, fraction 0.5": ("ambient", False, {"fraction": 0.5}, {}),
    "  own samples, extrapolated refit (beta 1)": ("ambient", False, {"extrapolate": 1.0}, {}),
    "  own samples, extrapolated refit (beta 3)": ("ambient", False, {"extrapolate": 3.0}, {}),
    "  own samples, extrapolated refit (beta 1), fraction 0.125 (the default's ODE calls)": (
        "ambient", False, {"extrapolate": 1.0, "fraction": 0.125}, {}),
    "  own samples, extrapolated refit (beta 1), fraction 0.1875": (
        "ambient", False, {"extrapolate": 1.0, "fraction": 0.1875}, {}),
    "  own samples, extrapolated refit (beta 1), draws behind for a quarter of the rows": (
        "ambient", False, {"extrapolate": 1.0, "extrapolate_share": 0.25}, {}),
    "  own samples, extrapolated refit (beta 1), draws behind for half the rows": (
        "ambient", False, {"extrapolate": 1.0, "extrapolate_share": 0.5}, {}),
    "  own samples, 8 ODE steps to sigma 0.005, draws behind for half the rows": (
        "ambient", False, {"substeps": 8, "sigma_min": 0.005, "extrapolate": 1.0,
                           "extrapolate_share": 0.5}, {}),
    "  own samples, draws stopped at half the level, ambient loss from there": (
        "ambient", False, {"stop": 0.5}, {}),
    "  own samples, paper weighting (cap 1)": ("ambient", False, {}, {"weight_cap": 1.0}),
    "  own samples + SURE at sigma_n on a quarter of the rows": ("ambient", False, {},
                                                                 {"sure_weight": 1.0}),
    "  own samples, term weight 0.5": ("ambient", False, {"weight": 0.5}, {}),
    "  own samples, term weight 3": ("ambient", False, {"weight": 3.0}, {}),
    "  own samples, log-uniform levels": ("ambient", False, {"levels": "log-uniform"}, {}),
    "  own samples, log-normal levels": ("ambient", False, {"levels": "log-normal"}, {}),
    "  own samples, mixed levels": ("ambient", False, {"levels": "mixed"}, {}),
    "  two draws, one jump below (1 substep)": ("ambient", False, {**PAIRS, "substeps": 1}, {}),
    "  two draws from data, chain 4, small steps 5%": ("ambient", False, DATA_SMALL_STEPS, {}),
    "  two draws from data, no chain, one jump below": ("ambient", False, {
        **DATA_SMALL_STEPS, "chain_steps": 0, "target": "below"}, {}),
    "  two draws from data, chain 4, jump below, 4 substeps": ("ambient", False, {
        **DATA_SMALL_STEPS, "target": "below", "substeps": 4}, {}),
    "  two draws from data, chain 4, steps of 50%, 4 substeps": ("ambient", False, {
        **DATA_SMALL_STEPS, "step": 0.5, "substeps": 4}, {}),
    "  two draws, EDM weighting of the term": ("ambient", False, {**PAIRS, "weighting": "edm"}, {}),
    "  two draws, weight 10": ("ambient", False, {**PAIRS, "weight": 10.0}, {}),
    "  two draws, fraction 0.5": ("ambient", False, {**PAIRS, "fraction": 0.5}, {}),
    "  two draws, teacher_grad, two backward": ("ambient", False, {
        **PAIRS, "teacher_grad": True, "single_backward": False}, {}),
}
MAIN = list(VARIANTS)[:6]
SIGMAS = (0.3, 0.6, 0.15)  # data noise levels for the main methods (the options: the first)
SHARDS_HINT = ("(or in 2 processes: `--shard 0/2` and `--shard 1/2`; `--resume` continues a "
               "killed shard)")


def variant_objective(name: str) -> ObjectiveConfig:
    """The training objective of the variant ``name`` (also timed by step_cost.py)."""
    method, _, overrides, objective = VARIANTS[name]
    consistency = replace(DEFAULT_CONSISTENCY, **(overrides or {}))
    if overrides is None:
        consistency.weight = 0.0
    return replace(default_train_config("gmm").objective, method=method, consistency=consistency,
                   **objective)


def sampler_steps(quick: bool) -> int:
    """Heun steps of the evaluation's samples: SAMPLER_STEPS, or QUICK_SAMPLER_STEPS in a
    smoke run."""
    return QUICK_SAMPLER_STEPS if quick else SAMPLER_STEPS


def run_variant(name: str, sigma_n: float, steps: int, root: Path, seed: int = 0,
                lr: float | None = None, heun_steps: int = SAMPLER_STEPS,
                points: int = POINTS, net: str = NET) -> dict[str, object]:
    """Train the variant ``name``, an MLP ``net`` (:func:`mlp`), on the mixture's ``points``
    training points at ``sigma_n`` (``seed``: the data's noise and the training run; ``lr``:
    another learning rate) and score it, sampling with ``heun_steps``; the evaluation draws are
    the same for every seed."""
    run_dir = root / f"{sigma_n}_{len(list(root.iterdir()))}"
    seconds = train_variant(name, sigma_n, steps, run_dir, seed, lr, points, net)
    denoiser, config = load_run(run_dir)
    gmm, _ = parse_gmm_spec(GMM)
    levels = [sigma_n / 4, sigma_n / 2, sigma_n, 2 * sigma_n]
    excess = excess_denoising_error(denoiser, gmm, levels, generator=torch.Generator().manual_seed(5))
    row: dict[str, object] = {"variant": name, "sigma_n": sigma_n, "seed": seed,
                              "ms/step": 1e3 * seconds / steps}
    for lvl, label in zip(levels, ["sn/4", "sn/2", "sn", "2sn"], strict=True):
        row[f"excess@{label}"] = excess[lvl]
    config = {**config, "sigma_n": {"max": sigma_n}}
    modes = {"": False, "truncated_": True} if name == MAIN[2] else {"": False}
    for prefix, truncate in modes.items():
        scores = sample_scores(denoiser, config, gmm, heun_steps, truncate)
        row.update({prefix + key: value for key, value in scores.items()})
    return row


def train_variant(name: str, sigma_n: float, steps: int, run_dir: Path, seed: int = 0,
                  lr: float | None = None, points: int = POINTS, net: str = NET) -> float:
    """Train the variant ``name`` into ``run_dir`` as :func:`run_variant` describes; return the
    training time in seconds."""
    clean = VARIANTS[name][1]
    cfg = default_train_config("gmm")
    cfg.net = mlp(net)
    cfg.engine = replace(cfg.engine, steps=steps, checkpoint_every=steps, log_every=steps,
                         seed=seed, lr=lr or cfg.engine.lr)
    cfg.objective = variant_objective(name)
    dataset = resolve_dataset(gmm_spec(points), 0.0 if clean else sigma_n, seed=seed)
    start = time.perf_counter()
    train(cfg, dataset, run_dir, progress=False)
    return time.perf_counter() - start


def sample_scores(denoiser: Callable[[Tensor, Tensor], Tensor], config: dict[str, object],
                  gmm: GaussianMixture, heun_steps: int = SAMPLER_STEPS,
                  truncate: bool = False) -> dict[str, float]:
    """Score SAMPLES draws of ``denoiser`` (``heun_steps`` Heun steps, sampling seed 6, to 0 or
    truncated at sigma_n): per-component covariance error and width ratio, core spread and
    stranded share, sliced Wasserstein distance to fresh draws of the mixture."""
    drawn = generate(denoiser, config, SAMPLES, steps=heun_steps, seed=6, truncate=truncate)
    cov = component_covariance_error(drawn, gmm)
    spread = core_spread(drawn, gmm)
    return {"cov_err": cov.error, "width": cov.width_ratio, "core": spread.core,
            "stranded": spread.stranded,
            "sw": sliced_wasserstein(drawn, fresh_draws(gmm),
                                     generator=torch.Generator().manual_seed(8))}


@functools.cache
def noise_floors() -> str:
    """A sentence for the pages: what a perfect sampler scores with SAMPLES draws of p0, sw
    (:func:`sw_noise_floor`, mean of 5) and cov_err (:func:`covariance_noise_floor`, mean of 100)."""
    gmm, _ = parse_gmm_spec(GMM)
    g = torch.Generator().manual_seed(9)
    sw = sw_noise_floor(gmm, SAMPLES, generator=g)
    cov = covariance_noise_floor(gmm, SAMPLES, generator=g, repeats=100)
    return (f"Noise floors: {SAMPLES} fresh draws of p0 in place of a model's samples score sw "
            f"{sw:.3g} and cov_err {cov:.3g}.")


def machine() -> str:
    """What a run ran on, for its page: the torch version and the CPU threads."""
    return f"torch {torch.__version__}, {os.cpu_count()} CPU threads"


def machines(rows: list[dict[str, object]]) -> str:
    """A sentence for a page: the machines its runs were made on (rows from before this was
    recorded were made on the 2-core machine of the other pages)."""
    seen = sorted({str(r.get("machine", "the 2-core machine (not recorded)")) for r in rows})
    return f"Runs made with: {'; '.join(seen)}."


def fresh_draws(gmm: GaussianMixture) -> Tensor:
    """The fixed set of fresh p0 draws every model's samples are compared with."""
    return gmm.sample(SAMPLES, generator=torch.Generator().manual_seed(7))


def to_markdown(rows: list[dict[str, object]]) -> str:
    cols = ["variant", "sigma_n", "excess@sn/4", "excess@sn/2", "excess@sn", "excess@2sn",
            "cov_err", "width", "core", "stranded", "sw", "ms/step"]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
        if "truncated_width" in r:
            cells = [f"{r[key]:.3g}" if key in r else "" for key in
                     ("truncated_cov_err", "truncated_width", "truncated_core",
                      "truncated_stranded", "truncated_sw")]
            lines.append(f"| ambient, no consistency, *truncated sampling* | {r['sigma_n']} | | | | | "
                         + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


@functools.cache
def deconvolution_reference(sigma_n: float, seeds: int = 5,
                            points: int = POINTS) -> dict[str, object]:
    """What the data allow at best: a method that knows the mixture's component labels and
    Gaussian form estimates each component's covariance as the sample covariance of its
    ``points`` noisy points minus ``sigma_n^2 I`` (clipped to positive semi-definite), then is
    sampled and scored like the models; mean over ``seeds`` draws of the training set."""
    gmm, n = parse_gmm_spec(gmm_spec(points))
    err, width = 0.0, 0.0
    for seed in range(seeds):
        g = torch.Generator().manual_seed(100 + seed)
        x, labels = gmm.sample(n, generator=g, return_labels=True)
        y = x.double() + sigma_n * torch.randn(x.shape, generator=g, dtype=torch.float64)
        means, covs = [], []
        for k in range(gmm.num_components):
            yk = y[labels == k]
            eig, basis = torch.linalg.eigh(torch.cov(yk.T) - sigma_n**2 * torch.eye(gmm.dim,
                                                                                 dtype=torch.float64))
            means.append(yk.mean(0))
            covs.append(basis @ torch.diag(eig.clamp_min(1e-8)) @ basis.T)
        estimate = GaussianMixture(gmm.weights, torch.stack(means), torch.stack(covs))
        cov = component_covariance_error(estimate.sample(SAMPLES, generator=g), gmm)
        err, width = err + cov.error / seeds, width + cov.width_ratio / seeds
    return {"variant": "reference: best case from the data (see above)", "sigma_n": sigma_n,
            "cov_err": err, "width": width}


def write(rows: list[dict[str, object]], steps: int, out: Path, quick: bool) -> str:
    order = {(name, sn): i for i, (name, sn) in enumerate(plan_for(quick))}
    rows = sorted(rows, key=lambda r: order.get((r["variant"], r["sigma_n"]), len(order)))
    total, runs, made = sum(float(r["seconds"]) for r in rows), len(rows), machines(rows)
    rows = [out_row for r in rows for out_row in
            ([r, deconvolution_reference(float(r["sigma_n"]))] if r["variant"] == MAIN[0] else [r])]
    text = (f"Gaussian mixture ({GMM}), MLP {NET}, {steps} steps of batch 512 per variant, "
            f"EMA weights, {sampler_steps(quick)}-step Heun sampling, 4096 fresh draws per level; "
            f"one seed each. "
            f"Excess error: 0 = exact. width: std of the samples' components / the truth "
            f"(1 = right, 3.16 = the law of x at sigma_n = 0.3). core: the same for the bulk of "
            f"the samples (median Mahalanobis distance to the nearest component, 1 = right), "
            f"stranded: share of samples beyond the truth's 99% quantile of that distance (0.01 = "
            f"right; e.g. between components) (ambient.evaluate.core_spread). sw: sliced "
            f"Wasserstein-2 distance "
            f"of {SAMPLES} samples to {SAMPLES} fresh draws of p0. {noise_floors()} "
            f"ms/step is wall time on a "
            f"shared machine (2 runs in parallel): use benchmarks/step_cost.py for cost ratios. "
            f"{runs} runs, {total:.0f} s of training + evaluation ({made}) The 'best "
            f"case' rows are a "
            f"reference no method can be expected to beat (up to shrinkage): component labels "
            f"and Gaussian form known, each component's noisy sample covariance minus "
            f"sigma_n^2 I, sampled and scored like the models (mean of 5 training sets). "
            f"{defaults_summary()}\n\n"
            f"Rerun: `python benchmarks/consistency_ablation.py{' --quick' if quick else ''}` "
            f"{SHARDS_HINT}.\n\n" + to_markdown(rows)
            + excess_plots(rows, out.with_suffix("")))
    atomic_write_text(out, text)
    return text


def excess_plots(rows: list[dict[str, object]], folder: Path) -> str:
    """One excess-error-vs-sigma plot per sigma_n for the main methods; their markdown (paths
    relative to the page)."""
    labels = {"sn/4": 0.25, "sn/2": 0.5, "sn": 1.0, "2sn": 2.0}
    text = ""
    for sigma_n in sorted({float(r["sigma_n"]) for r in rows}):
        curves = {str(r["variant"]): {f * sigma_n: float(r[f"excess@{k}"]) for k, f in labels.items()}
                  for r in rows if r["variant"] in MAIN and r["sigma_n"] == sigma_n}
        if curves:
            path = plot_excess_error(curves, folder / f"excess_sigma{sigma_n:g}.png", sigma_n,
                                     title=f"Excess denoising error, sigma_n = {sigma_n:g}")
            text += f"\n![excess error vs sigma, sigma_n = {sigma_n:g}]({folder.name}/{path.name})\n"
    return text


def read_rows(out: Path) -> list[dict[str, object]]:
    """The results of every shard so far (``OUT.shardK.jsonl`` next to the page)."""
    return [json.loads(line) for shard in sorted(out.parent.glob(out.stem + ".shard*.jsonl"))
            for line in shard.read_text(encoding="utf-8").splitlines() if line]


def plan_for(quick: bool) -> list[tuple[str, float]]:
    if quick:
        return [(v, SIGMAS[0]) for v in MAIN]
    return ([(v, sigma_n) for sigma_n in SIGMAS for v in MAIN]
            + [(v, SIGMAS[0]) for v in VARIANTS if v not in MAIN])


def add_shard_arguments(parser: argparse.ArgumentParser, out: Path) -> None:
    """The options of a sharded mixture benchmark: --quick, --steps, --shard, --out, --assemble."""
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_STEPS} steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th run from K")
    parser.add_argument("--out", default=out)
    parser.add_argument("--assemble", action="store_true",
                        help="only rewrite the page from the shards' .jsonl results")
    parser.add_argument("--resume", action="store_true",
                        help="keep the shards' .jsonl results and run only the runs no shard "
                             "holds yet (after a killed run, or for a new variant)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shard_arguments(parser, page("consistency.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or (QUICK_STEPS if args.quick else 1500)
    k, n = (int(p) for p in args.shard.split("/"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write_page(rows: list[dict[str, object]]) -> str:
        return write(rows, steps, out, args.quick)

    if args.assemble:
        print(refresh_page(out, write_page))
        return
    run_shard([(name, sigma_n, 0) for name, sigma_n in plan_for(args.quick)], steps, out, k, n,
              write_page, args.resume, sampler_steps(args.quick))


def run_shard(plan: list[tuple[str, float, int]], steps: int, out: Path, k: int, n: int,
              write_page: Callable[[list[dict[str, object]]], str], resume: bool = False,
              heun_steps: int = SAMPLER_STEPS, points: int = POINTS, net: str = NET) -> None:
    """Run every ``n``-th ``(variant, sigma_n, seed)`` of ``plan`` from ``k``, appending each
    result to ``OUT.shardK.jsonl`` and rewriting the page from all shards' results after every
    run (so a killed run loses at most the run in progress). With ``resume`` every shard's
    results so far are kept and the runs they hold are skipped (so a plan that grew
    a variant runs just that one, whichever shard it now falls to). ``heun_steps``, ``points``
    and ``net``: see :func:`run_variant`."""
    mine = out.with_suffix(f".shard{k}.jsonl")
    for stale in out.parent.glob(out.stem + ".shard*.jsonl"):
        if not resume and (n == 1 or stale == mine):
            stale.unlink()
    done = {(row["variant"], row["sigma_n"], row["seed"]) for row in read_rows(out) if resume}
    text = ""
    with tempfile.TemporaryDirectory() as tmp:
        for name, sigma_n, seed in plan[k::n]:
            if (name, sigma_n, seed) in done:
                continue
            start = time.time()
            row = run_variant(name, sigma_n, steps, Path(tmp), seed, heun_steps=heun_steps,
                              points=points, net=net)
            row["seconds"] = time.time() - start
            row["machine"] = machine()
            print(json.dumps(row), flush=True)
            with mine.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            text = refresh_page(out, write_page)
    print(text)


def refresh_page(out: Path, write_page: Callable[[list[dict[str, object]]], str]) -> str:
    """Write the page from every shard's results, again until they hold still while it is
    written. Every shard calls this after each result it appends, so the last page written
    holds every result: whoever writes last re-reads after its write, which follows every
    other shard's last append (a single read could miss a row appended while the page was
    being made and leave a stale page last)."""
    rows = read_rows(out)
    while True:
        text = write_page(rows)
        latest = read_rows(out)
        if latest == rows:
            return text
        rows = latest


if __name__ == "__main__":
    main()
