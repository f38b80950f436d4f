"""Digits benchmark: sample quality and denoising of models trained on noisy 8x8 digits.

For each sigma_n in {0.1, 0.2, 0.4} (pixel range [-1, 1]) it trains, with ``ambient.train`` and
the same network and budget (``default_train_config("digits")``, an MLP): naive DSM on the noisy
digits, ambient without consistency and ambient + consistency (the default); plus one clean-data
oracle shared by all levels. It reports the Frechet distance (digits features) of each model's
samples (full sampling; truncated at sigma_n too for the no-consistency model) to the held-out
clean digits, and the one-step denoising MSE on them at several levels (the paper's Table 1).
``--net unet`` uses a small UNet instead (1500 steps; its clean oracle is near exact), and
``--methods`` picks the methods (e.g. ``ambient_two_draws``, the two-draw consistency estimator, or
``ambient_previous``, the own-sample default before the warm start). ``--seeds`` repeats every
model with other training and sampling seeds (the noisy digits stay the same draw): the tables
then give the mean and standard deviation over seeds, and a summary line gives, per seed, the
share of the gap between truncated sampling and the clean oracle that full sampling closes.

    python benchmarks/digits_benchmark.py              # writes benchmarks/results/digits.md
    python benchmarks/digits_benchmark.py --quick --out /tmp/digits/digits.md   # smoke run
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from ambient.data import load_digits, resolve_dataset
from ambient.defaults import default_train_config, defaults_summary
from ambient.evaluate.features import DigitsFeatures
from ambient.evaluate.frechet import frechet_distance
from ambient.evaluate.report import Report, command_line
from ambient.evaluate.runs import DENOISING_LEVELS, evaluate_run
from ambient.images import save_grid
from ambient.train import TrainConfig, load_run, train
from consistency_ablation import PAIRS, PREVIOUS, QUICK_SAMPLER_STEPS, VARIANTS
from pages import page

SIGMAS = (0.1, 0.2, 0.4)
STEPS, QUICK_STEPS = {"mlp": 4000, "unet": 1500}, 20  # training steps per model, by network
NUM, QUICK_NUM = 1000, 100  # samples per model and sampling mode
SAMPLER_STEPS = 32  # Heun levels per sample (a smoke run: QUICK_SAMPLER_STEPS)
QUICK_BATCH = 32  # a smoke run's batch (full runs: the digits default's, 128)
PIXEL_GROUPS = ((0.0, 0.05), (0.05, 0.3), (0.3, math.inf))  # bins of the clean per-pixel std
SCRIPT = "benchmarks/digits_benchmark.py"


@dataclass(frozen=True)
class Method:
    """A training recipe: objective, whether consistency is on, and the sampling modes scored."""

    label: str
    objective: str  # "ambient" or "dsm"
    consistency: bool
    modes: tuple[str, ...]
    overrides: tuple[tuple[str, object], ...] = ()  # consistency settings other than the default
    settings: tuple[tuple[str, object], ...] = ()  # objective settings other than the default


ORACLE = Method("clean-data oracle (DSM on clean digits)", "dsm", False, ("full",))
METHODS = {
    "naive_dsm": Method("naive DSM on the noisy digits", "dsm", False, ("full",)),
    "ambient_no_consistency": Method("ambient, no consistency", "ambient", False,
                                     ("full", "truncated")),
    "ambient_consistency": Method("ambient + consistency (default)", "ambient", True, ("full",)),
    "ambient_two_draws": Method("ambient + consistency, two draws", "ambient", True, ("full",),
                                tuple(PAIRS.items())),
    "ambient_previous": Method("ambient + consistency, own samples, EDM schedule, no warm start "
                               "(previous default)", "ambient", True, ("full",),
                               tuple(PREVIOUS.items())),
    "ambient_3_steps": Method("ambient + consistency, own samples, 3 ODE steps", "ambient", True,
                              ("full",), tuple(VARIANTS["  own samples, 3 ODE steps"][2].items())),
    "ambient_no_warm_start": Method(
        "ambient + consistency, own samples, no warm start", "ambient", True, ("full",),
        tuple(VARIANTS["  own samples, no warm start"][2].items())),
    "ambient_log_uniform": Method(
        "ambient + consistency, own samples, log-uniform levels", "ambient", True, ("full",),
        tuple(VARIANTS["  own samples, log-uniform levels"][2].items())),
    "ambient_log_normal": Method(
        "ambient + consistency, own samples, log-normal levels", "ambient", True, ("full",),
        tuple(VARIANTS["  own samples, log-normal levels"][2].items())),
    "ambient_mixed_levels": Method(
        "ambient + consistency, own samples, mixed levels", "ambient", True, ("full",),
        tuple(VARIANTS["  own samples, mixed levels"][2].items())),
    "ambient_lift_1_1": Method(
        "ambient + consistency, own samples from 1.1 sigma_n (lift 1.1, the previous default)",
        "ambient", True, ("full",),
        tuple(VARIANTS["  own samples from 1.1 sigma_n (lift 1.1, the previous default)"][2].items())),
    "ambient_8_steps": Method("ambient + consistency, own samples, 8 ODE steps", "ambient", True,
                              ("full",), tuple(VARIANTS["  own samples, 8 ODE steps"][2].items())),
    "ambient_fraction_0375": Method(
        "ambient + consistency, own samples, fraction 0.375", "ambient", True, ("full",),
        tuple(VARIANTS["  own samples, fraction 0.375"][2].items())),
    "ambient_sigma_min_0005": Method(
        "ambient + consistency, own samples, ODE to sigma 0.005", "ambient", True, ("full",),
        tuple(VARIANTS["  own samples, ODE to sigma 0.005 instead of 0.002"][2].items())),
    "ambient_8_steps_sigma_min_0005": Method(
        "ambient + consistency, own samples, 8 ODE steps to sigma 0.005", "ambient", True,
        ("full",), tuple(VARIANTS["  own samples, 8 ODE steps to sigma 0.005"][2].items())),
    "ambient_extrapolated": Method(
        "ambient + consistency, own samples, extrapolated refit (beta 1)", "ambient", True,
        ("full",), tuple(VARIANTS["  own samples, extrapolated refit (beta 1)"][2].items())),
    "ambient_extrapolated_f0125": Method(
        "ambient + consistency, own samples, extrapolated refit (beta 1), fraction 0.125", "ambient",
        True, ("full",), tuple(VARIANTS["  own samples, extrapolated refit (beta 1), fraction "
                                        "0.125 (the default's ODE calls)"][2].items())),
    "ambient_extrapolated_share_05": Method(
        "ambient + consistency, own samples, extrapolated refit (beta 1), draws behind for half "
        "the rows", "ambient", True, ("full",),
        tuple(VARIANTS["  own samples, extrapolated refit (beta 1), draws behind for half the "
                       "rows"][2].items())),
    "ambient_sure": Method(
        "ambient + consistency (default), SURE at sigma_n on a quarter of the rows", "ambient",
        True, ("full",), settings=(("sure_weight", 1.0),)),
    "ambient_cap1_no_consistency": Method(
        "ambient, no consistency, paper weighting (cap 1)", "ambient", False, ("full", "truncated"),
        settings=(("weight_cap", 1.0),)),
    "ambient_cap1_consistency": Method(
        "ambient + consistency (default), paper weighting (cap 1)", "ambient", True, ("full",),
        settings=(("weight_cap", 1.0),)),
}
DEFAULT_METHODS = ("naive_dsm", "ambient_no_consistency", "ambient_consistency")
NETS = {"mlp": None, "unet": {"kind": "unet"}}  # None: the digits default network (an MLP)


@dataclass
class RunResult:
    """What one trained model gave."""

    method: Method
    sigma_n: float
    seed: int  # training and sampling seed
    seconds: float  # training wall time
    frechet: dict[str, float]  # sampling mode -> Frechet distance to the held-out digits
    denoising: dict[float, float]  # level -> one-step denoising MSE on the held-out digits
    grids: dict[str, Path]  # sampling mode -> PNG of samples
    spread: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> pixel_spread


@functools.cache
def clean_pixel_std() -> Tensor:
    """Per-pixel standard deviation of the clean training digits (loaded once)."""
    return load_digits("train").flatten(1).std(0)


def pixel_spread(images: Tensor) -> dict[str, float]:
    """Per-pixel standard deviation of ``images`` [N, 1, 8, 8], averaged over the pixels of each
    group of PIXEL_GROUPS (by the clean training digits' per-pixel std): near-constant pixels
    (the border) are where the own-sample consistency's fixed point is worst conditioned."""
    clean = clean_pixel_std()
    spread = images.flatten(1).std(0)
    out = {}
    for lo, hi in PIXEL_GROUPS:
        pick = (clean >= lo) & (clean < hi)
        name = f"clean std < {hi:g}" if lo == 0 else (f"clean std >= {lo:g}" if hi == math.inf
                                                      else f"clean std {lo:g}-{hi:g}")
        out[f"{name} ({int(pick.sum())} px)"] = float(spread[pick].mean())
    return out


def train_config(method: Method, steps: int, sigma_n: float, net: str = "mlp",
                 seed: int = 0, batch: int | None = None) -> TrainConfig:
    """The digits defaults with ``method``'s objective, the network ``net`` (a key of NETS),
    ``steps`` steps, the engine seed ``seed`` and ``batch`` (None: the default's) (no sample
    grids)."""
    cfg = default_train_config("digits")
    cfg.net = NETS[net] or cfg.net
    cfg.engine = replace(cfg.engine, steps=steps, sample_every=0, checkpoint_every=steps,
                         log_every=max(1, steps // 10), seed=seed,
                         batch_size=batch or cfg.engine.batch_size)
    cfg.objective = replace(cfg.objective, method=method.objective, **dict(method.settings))
    cfg.objective.consistency = replace(cfg.objective.consistency, **dict(method.overrides))
    if not method.consistency:
        cfg.objective.consistency.weight = 0.0
    cfg.data = {"data": "digits", "sigma_n": sigma_n, "corrupt": False, "seed": 0}
    return cfg


def run_method(name: str, method: Method, sigma_n: float, steps: int, num: int, runs: Path,
               figures: Path, net: str = "mlp", seed: int = 0, grids: bool = True,
               sampler_steps: int = SAMPLER_STEPS, batch: int | None = None) -> RunResult:
    """Train ``method`` (engine seed ``seed``, ``batch``: see :func:`train_config`) on the digits
    corrupted once at ``sigma_n``, then sample (seed ``seed``, ``sampler_steps`` Heun levels) and
    score it; with ``grids``, save its first 64 samples as PNGs."""
    run_dir = runs / f"{name}_sigma{sigma_n:g}_seed{seed}"
    start = time.perf_counter()
    train(train_config(method, steps, sigma_n, net, seed, batch),
          resolve_dataset("digits", sigma_n, seed=0), run_dir, progress=False)
    seconds = time.perf_counter() - start
    denoiser, config = load_run(run_dir)
    metrics = evaluate_run(denoiser, config, num=num, steps=sampler_steps, seed=seed,
                           modes=method.modes)
    pngs = {mode: save_grid(drawn[:64], figures / f"{name}_sigma{sigma_n:g}_{mode}.png")
            for mode, drawn in metrics.drawn.items()} if grids else {}
    return RunResult(method, sigma_n, seed, seconds,
                     {key: value for mode, m in metrics.samples.items() for key, value in
                      ((mode, m["frechet"]), (f"{mode}, unclamped", m["frechet_unclamped"]))},
                     metrics.denoising, pngs,
                     {mode: pixel_spread(drawn) for mode, drawn in metrics.drawn.items()})


def data_references(sigmas: Sequence[float], figures: Path) -> tuple[dict[float, float],
                                                                      dict[float, Path]]:
    """Frechet distance of the training digits themselves (clean: level 0, and noisy at each
    level, clamped to [-1, 1]) to the held-out clean digits, and a PNG of each."""
    extract = DigitsFeatures()
    test_feats = extract(load_digits("test"))
    frechet, grids = {}, {}
    for level in (0.0, *sigmas):
        images = resolve_dataset("digits", level, seed=0).y.clamp(-1, 1)
        frechet[level] = frechet_distance(extract(images), test_feats)
        grids[level] = save_grid(images[:64], figures / f"data_sigma{level:g}.png")
    return frechet, grids


def level_column(sigma_n: float) -> str:
    """The column (or caption) name of a training noise level."""
    return "clean data" if sigma_n == 0 else f"sigma_n={sigma_n:g}"


def mean_sd(values: Sequence[float], spec: str = ".4g", sd_spec: str = ".2g") -> str:
    """One value as is; several as ``mean ± sd`` (sample standard deviation)."""
    if len(values) == 1:
        return f"{values[0]:{spec}}"
    t = torch.tensor(values, dtype=torch.float64)
    return f"{float(t.mean()):{spec}} ± {float(t.std()):{sd_spec}}"


def frechet_rows(results: Sequence[RunResult],
                 references: dict[float, float]) -> list[dict[str, object]]:
    """One row per method and sampling mode, one column per training noise level (over seeds:
    mean ± sd)."""
    rows: dict[tuple[str, str], dict[str, object]] = {
        ("reference: the training digits themselves", "-"): {
            level_column(s): v for s, v in references.items()}}
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in results:
        for mode, value in r.frechet.items():
            values.setdefault((r.method.label, mode), {}).setdefault(
                level_column(r.sigma_n), []).append(value)
    for key, cells in values.items():
        rows[key] = {column: mean_sd(v) for column, v in cells.items()}
    return [{"method": label, "sampling": mode, **cells} for (label, mode), cells in rows.items()]


def gap_closed(results: Sequence[RunResult], suffix: str = "") -> str:
    """For each model trained on noisy digits, per seed: the share of the Frechet gap between
    truncated sampling (of the no-consistency model) and the clean oracle, both of the same
    seed, that its full sampling closes, ``(truncated - full) / (truncated - oracle)``
    (1 = as good as the oracle, 0 = no better than truncated sampling); ``suffix`` ", unclamped"
    uses the distances of the samples as drawn (not clamped to [-1, 1])."""
    full, trunc = "full" + suffix, "truncated" + suffix
    oracle = {r.seed: r.frechet[full] for r in results if r.method == ORACLE and full in r.frechet}
    truncated = {(r.seed, r.sigma_n): r.frechet[trunc] for r in results if trunc in r.frechet}
    shares: dict[tuple[str, float], list[float | None]] = {}
    for r in results:
        key = (r.seed, r.sigma_n)
        if r.method == ORACLE or key not in truncated or r.seed not in oracle:
            continue
        gap = truncated[key] - oracle[r.seed]
        share = (truncated[key] - r.frechet[full]) / gap if gap > 0 else None
        shares.setdefault((r.method.label, r.sigma_n), []).append(share)
    if not shares:
        return ("(the oracle has not run yet)" if not oracle else
                "(no truncated samples on this page so far: only the models without consistency "
                "sample truncated, so this share needs one of them in --methods)")
    lines = []
    for (label, sigma_n), v in shares.items():
        known = [x for x in v if x is not None]
        lines.append(f"- {label}, sigma_n={sigma_n:g}: full sampling closes "
                     f"{mean_sd(known, '.2f', '.2f') if known else 'nothing measurable'} of the "
                     f"gap (per seed: {', '.join('no gap' if x is None else f'{x:.2f}' for x in v)})")
    if any(None in v for v in shares.values()):
        lines.append("- (no gap: on that seed truncated sampling already scores at or below the "
                     "oracle; the mean is over the other seeds)")
    return "\n".join(lines)


def spread_rows(results: Sequence[RunResult]) -> list[dict[str, object]]:
    """:func:`pixel_spread` of the clean training digits, then of each model's samples per
    sampling mode (mean over seeds)."""
    rows: list[dict[str, object]] = [{"samples": "the clean training digits", "sigma_n": "-",
                                      **pixel_spread(load_digits("train"))}]
    groups: dict[tuple[str, str, float], list[dict[str, float]]] = {}
    for r in results:
        for mode, spread in r.spread.items():
            groups.setdefault((r.method.label, mode, r.sigma_n), []).append(spread)
    for (label, mode, sigma_n), spreads in groups.items():
        rows.append({"samples": f"{label}, {mode}", "sigma_n": sigma_n,
                     **{k: sum(d[k] for d in spreads) / len(spreads) for k in spreads[0]}})
    return rows


def seed_means(results: Sequence[RunResult]) -> list[RunResult]:
    """One result per method and sigma_n, its denoising MSEs and training time averaged over
    the seeds (Frechet distances and grids: the first seed's)."""
    groups: dict[tuple[Method, float], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.method, r.sigma_n), []).append(r)
    return [replace(rs[0], seconds=sum(r.seconds for r in rs) / len(rs),
                    denoising={s: sum(r.denoising[s] for r in rs) / len(rs)
                               for s in rs[0].denoising})
            for rs in groups.values()]


def by_method(result: RunResult) -> tuple[int, float]:
    """Sort key: the oracle, then the methods in the order of METHODS, each by sigma_n."""
    order = [ORACLE, *METHODS.values()]
    return order.index(result.method), result.sigma_n


def _cell(value: float, below: bool) -> str:
    """An MSE cell; levels below the model's sigma_n in italics."""
    text = f"{value:.4g}"
    return f"*{text}*" if below else text


def denoising_markdown(results: Sequence[RunResult]) -> str:
    """Two markdown tables (rows: models; columns: levels): the one-step denoising MSE, and its
    ratio to the oracle's MSE at the same level."""
    oracle = next((r.denoising for r in results if r.sigma_n == 0), None)
    head = "| model | sigma_n | " + " | ".join(f"sigma={s:g}" for s in DENOISING_LEVELS) + " |"
    rule = "|---|---:|" + "---:|" * len(DENOISING_LEVELS)
    mse, ratio = [head, rule], [head, rule]
    for r in sorted(results, key=by_method):
        start = f"| {r.method.label} | {r.sigma_n:g} | "
        mse.append(start + " | ".join(_cell(r.denoising[s], s < r.sigma_n)
                                      for s in DENOISING_LEVELS) + " |")
        if oracle is not None:
            ratio.append(start + " | ".join(_cell(r.denoising[s] / oracle[s], s < r.sigma_n)
                                            for s in DENOISING_LEVELS) + " |")
    text = "\n".join(mse) + "\n"
    if oracle is not None:
        text += "\nThe same, divided by the oracle's MSE at that level (1 = as good as a model " \
                "trained on clean digits):\n\n" + "\n".join(ratio) + "\n"
    return text


def claim_summary(results: Sequence[RunResult]) -> str:
    """For each ambient model: the worst MSE ratio to the oracle at levels above its sigma_n."""
    oracle = next((r.denoising for r in results if r.sigma_n == 0), None)
    if oracle is None:
        return "(the oracle has not run yet)"
    lines = []
    for r in results:
        above = [s for s in DENOISING_LEVELS if s > r.sigma_n]
        if r.method.objective != "ambient" or not above:
            continue
        worst = max(r.denoising[s] / oracle[s] for s in above)
        lines.append(f"- {r.method.label}, sigma_n={r.sigma_n:g}: worst MSE / oracle MSE at "
                     f"levels above sigma_n ({', '.join(f'{s:g}' for s in above)}) = {worst:.3f}")
    return "\n".join(lines)


def write_report(results: Sequence[RunResult], references: tuple[dict[float, float],
                                                                 dict[float, Path]],
                 rerun: str, steps: int, num: int, seconds: float, out: Path,
                 net: str = "mlp", sampler_steps: int = SAMPLER_STEPS,
                 batch: int | None = None) -> Path:
    """Render ``out`` (markdown, images relative to it) from the runs finished so far."""
    frechet, data_grids = references
    report = Report("Digits benchmark: sample quality and denoising from noisy digits")
    seeds = sorted({r.seed for r in results})
    report.text(f"Rerun: `{rerun}`. {len(results)} models trained so far, total time "
                f"{seconds:.0f} s (one CPU thread, shared machine). Seeds (training and "
                f"sampling; the noisy digits are the same draw): {', '.join(map(str, seeds))}"
                + ("; cells are the mean ± standard deviation over them, the denoising tables "
                   "and times the mean." if len(seeds) > 1 else "."))
    report.text(f"Data: the {len(load_digits('train'))} scikit-learn training digits (8x8, "
                f"range [-1, 1]), each corrupted once with Gaussian noise of std sigma_n; scored "
                f"against the {len(load_digits('test'))} held-out clean digits. Every model is "
                f"`default_train_config('digits')` (batch "
                f"{batch or default_train_config('digits').engine.batch_size}, lr 1e-3, EMA) with "
                f"{'its MLP 256x4' if NETS[net] is None else f'the network {NETS[net]}'}, "
                f"trained for {steps} steps; EMA weights are evaluated. Samples: {num} per model and "
                f"mode, {sampler_steps}-level Heun from sigma_max = 80; full sampling runs to 0, "
                f"truncated sampling stops at sigma_n and outputs D(x, sigma_n).")
    report.text(defaults_summary())
    report.heading("Frechet distance to the held-out clean digits (digits features; lower is "
                   "better)")
    columns = ["method", "sampling", *(level_column(s) for s in sorted(frechet))]
    report.table(frechet_rows(results, frechet), columns)
    report.text("Sampling 'full' and 'truncated' score the samples clamped to [-1, 1], as saved "
                "images show them; the 'unclamped' rows score them as drawn (the law the model "
                "samples: clamping hides most noise on the digits' background, which sits at "
                "-1).")
    for suffix, what in (("", "clamped"), (", unclamped", "unclamped")):
        report.text(f"Share of the gap between truncated sampling and the clean oracle closed by "
                    f"full sampling, (truncated - full) / (truncated - oracle), same seed, "
                    f"{what}:")
        report.text(gap_closed(results, suffix))
    means = seed_means(results)
    report.heading("Per-pixel spread of the samples")
    report.text("Standard deviation of each pixel over the samples, averaged over the pixels in "
                "each group (grouped by the clean training digits' per-pixel std; mean over "
                "seeds). Right = the clean digits' row (a noisy pixel's std is "
                "sqrt(clean std^2 + sigma_n^2)).")
    report.table(spread_rows(results))
    report.heading("One-step denoising MSE on the held-out clean digits (the paper's Table 1)")
    report.text("mse(sigma) = mean (D(x0 + sigma z, sigma) - x0)^2 with the same noise z for "
                "every model. Italic cells: levels below the model's sigma_n, where the ambient "
                "loss gives no training signal (only consistency reaches them). Claim: models "
                "trained at different sigma_n denoise equally well at every level above their "
                "sigma_n.")
    report.text(denoising_markdown(means))
    report.text(claim_summary(means))
    report.heading("Training time")
    report.table([{"method": r.method.label, "sigma_n": r.sigma_n, "train s": r.seconds,
                   "ms/step": 1000 * r.seconds / steps} for r in means])
    report.heading("Samples (first 64)")
    for level, grid in data_grids.items():
        report.image(grid, f"training data, {level_column(level)}")
    for r in means:
        for mode, grid in r.grids.items():
            report.image(grid, f"{r.method.label}, {level_column(r.sigma_n)}, {mode} sampling")
    return report.write(out, html=False)


def plan(sigmas: Sequence[float], methods: Sequence[str] = DEFAULT_METHODS,
         seeds: Sequence[int] = (0,)) -> list[tuple[str, Method, float, int]]:
    """Per seed: the oracle first, then every method at every level."""
    return [(name, method, s, seed) for seed in seeds
            for name, method, s in [("oracle", ORACLE, 0.0)] + [
                (name, METHODS[name], s) for s in sigmas for name in methods]]


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark; the results page is rewritten after every model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps and samples")
    parser.add_argument("--steps", type=int, help=f"training steps per model (default by network "
                                                  f"{STEPS}; --quick: {QUICK_STEPS})")
    parser.add_argument("--num", type=int, help=f"samples per model (default {NUM}; "
                                                f"--quick: {QUICK_NUM})")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS),
                        help="training noise levels sigma_n")
    parser.add_argument("--net", choices=sorted(NETS), default="mlp",
                        help="the network of every model (default: the digits default, an MLP)")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS),
                        default=list(DEFAULT_METHODS), help="methods besides the clean oracle")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training and sampling seeds of every model (--quick: the first)")
    parser.add_argument("--out", type=Path, default=page("digits.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # --quick (the smoke run) overrides the budget given by --steps / --num
    steps = QUICK_STEPS if args.quick else args.steps or STEPS[args.net]
    num = QUICK_NUM if args.quick else args.num or NUM
    sampler_steps = QUICK_SAMPLER_STEPS if args.quick else SAMPLER_STEPS
    batch = QUICK_BATCH if args.quick else None
    seeds = args.seeds[:1] if args.quick else args.seeds
    rerun = command_line(SCRIPT, argv)
    figures = args.out.with_suffix("")
    t0 = time.time()
    references = data_references(args.sigmas, figures)
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory() as runs:
        for name, method, sigma_n, seed in plan(args.sigmas, args.methods, seeds):
            results.append(run_method(name, method, sigma_n, steps, num, Path(runs), figures,
                                      args.net, seed, grids=seed == seeds[0],
                                      sampler_steps=sampler_steps, batch=batch))
            print(f"{method.label}, sigma_n={sigma_n:g}, seed {seed}: frechet "
                  f"{results[-1].frechet}", flush=True)
            out = write_report(results, references, rerun, steps, num, time.time() - t0,
                               args.out, args.net, sampler_steps, batch)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
