"""The close candidates for the consistency default on the Gaussian mixture, over seeds.

One seed of the ablation (``consistency_ablation.py``) cannot rank options that differ by 10-20%.
This trains each candidate at every sigma_n of the ablation for several seeds (the data's
noise and the training run; the network, budget and evaluation draws are the ablation's) and
reports mean ± sd over seeds, plus, per seed, the ratio of each candidate's excess error to the
no-consistency model's at the same seed (the issue's target: at most 0.5). The clean oracle is
trained once per seed (it does not depend on sigma_n).

    python benchmarks/consistency_seeds.py   # writes benchmarks/results/consistency_seeds.md
    python benchmarks/consistency_seeds.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ambient.defaults import defaults_summary
from ambient.files import atomic_write_text
from consistency_ablation import (
    MAIN,
    NET,
    POINTS,
    QUICK_STEPS,
    SHARDS_HINT,
    SIGMAS,
    add_shard_arguments,
    deconvolution_reference,
    gmm_spec,
    machines,
    mlp,
    noise_floors,
    refresh_page,
    run_shard,
    sampler_steps,
)
from digits_benchmark import mean_sd
from pages import page

NO_CONSISTENCY, DEFAULT = MAIN[2], MAIN[3]
CANDIDATES = {"none": NO_CONSISTENCY, "default": DEFAULT,
              "no-warm-start": "  own samples, no warm start",
              "3-steps": "  own samples, 3 ODE steps",
              "8-steps": "  own samples, 8 ODE steps",
              "12-steps": "  own samples, 12 ODE steps",
              "24-steps": "  own samples, 24 ODE steps",
              "sigma-min-0.005": "  own samples, ODE to sigma 0.005 instead of 0.002",
              "8-steps-sigma-min-0.005": "  own samples, 8 ODE steps to sigma 0.005",
              "fraction-0.125-12-steps": "  own samples, fraction 0.125, 12 ODE steps (the default's "
              "ODE calls)",
              "fraction-0.375": "  own samples, fraction 0.375",
              "fraction-0.5": "  own samples, fraction 0.5",
              "cap1-none": "ambient, no consistency, paper weighting (cap 1)",
              "cap1": "  own samples, paper weighting (cap 1)",
              "log-uniform": "  own samples, log-uniform levels",
              "log-normal": "  own samples, log-normal levels",
              "mixed": "  own samples, mixed levels",
              "lift-1.1": "  own samples from 1.1 sigma_n (lift 1.1, the previous default)",
              "extrapolate-1": "  own samples, extrapolated refit (beta 1)",
              "extrapolate-1-fraction-0.125": "  own samples, extrapolated refit (beta 1), "
              "fraction 0.125 (the default's ODE calls)",
              "extrapolate-1-fraction-0.1875": "  own samples, extrapolated refit (beta 1), "
              "fraction 0.1875",
              "extrapolate-1-share-0.25": "  own samples, extrapolated refit (beta 1), draws "
              "behind for a quarter of the rows",
              "extrapolate-1-share-0.5": "  own samples, extrapolated refit (beta 1), draws "
              "behind for half the rows",
              "8-steps-sigma-min-0.005-share-0.5": "  own samples, 8 ODE steps to sigma 0.005, "
              "draws behind for half the rows",
              "stop-0.5": "  own samples, draws stopped at half the level, ambient loss from "
              "there",
              "sure": "  own samples + SURE at sigma_n on a quarter of the rows",
              "weight-0.5": "  own samples, term weight 0.5",
              "weight-3": "  own samples, term weight 3"}
# the no-consistency model each candidate's excess ratio is paired with (same ambient
# weighting: the cap-1 candidates the cap-1 one); a baseline is paired with itself and its
# ratio cells stay blank
BASELINE = {name: CANDIDATES["cap1-none" if key.startswith("cap1") else "none"]
            for key, name in CANDIDATES.items()}
# the seeds page's candidates (the bare command); the other pages name theirs with --candidates
CLOSE_OPTIONS = ["none", "default", "no-warm-start", "3-steps", "fraction-0.5"]
METRICS = ["excess@sn/4", "excess@sn/2", "cov_err", "width", "core", "stranded", "sw"]
RATIOS = ["excess@sn/4", "excess@sn/2"]


def plan_for(seeds: list[int], sigmas: list[float],
             candidates: list[str]) -> list[tuple[str, float, int]]:
    """Per seed: the oracle, then every candidate (keys of CANDIDATES) at every sigma_n."""
    return ([(MAIN[0], sigmas[0], seed) for seed in seeds]
            + [(CANDIDATES[key], sigma_n, seed) for seed in seeds for sigma_n in sigmas
               for key in candidates])


def summarise(rows: list[dict[str, object]], points: int = POINTS) -> str:
    """The markdown table: one line per (sigma_n, candidate), mean ± sd of each metric over the
    seeds present, and the per-seed excess ratio to the no-consistency model (paired by seed);
    per sigma_n, the best case the ``points`` noisy points allow (its covariance figures)."""
    by = {(r["variant"], r["sigma_n"], r["seed"]): r for r in rows}
    cols = (["variant", "sigma_n", "seeds"] + METRICS
            + [f"{m} / no consistency" for m in RATIOS])
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    oracle = [r for r in rows if r["variant"] == MAIN[0]]
    if oracle:
        lines.append(f"| {MAIN[0]} | any (excess: at {oracle[0]['sigma_n']:g}'s levels) | "
                     f"{len(oracle)} | "
                     + " | ".join(mean_sd([float(r[m]) for r in oracle], ".3g") for m in METRICS)
                     + " |" + " |" * len(RATIOS))
    for sigma_n in sorted({float(r["sigma_n"]) for r in rows if r["variant"] != MAIN[0]}):
        for name in CANDIDATES.values():
            mine = [r for r in rows if r["variant"] == name and r["sigma_n"] == sigma_n]
            if not mine:
                continue
            ratios = []
            base = BASELINE[name]
            for metric in RATIOS:
                paired = [float(r[metric]) / float(by[(base, sigma_n, r["seed"])][metric])
                          for r in mine if (base, sigma_n, r["seed"]) in by]
                ratios.append(mean_sd(paired, ".3g") if paired and name != base else "")
            lines.append(f"| {name.strip()} | {sigma_n:g} | {len(mine)} | "
                         + " | ".join(mean_sd([float(r[m]) for r in mine], ".3g") for m in METRICS)
                         + " | " + " | ".join(ratios) + " |")
        best = deconvolution_reference(sigma_n, points=points)
        lines.append(f"| {best['variant']} | {sigma_n:g} | | | | {best['cov_err']:.3g} | "
                     f"{best['width']:.3g} |" + " |" * (len(cols) - 7))
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, object]], steps: int, seeds: list[int], out: Path,
          flags: str, heun_steps: int, points: int = POINTS, net: str = NET) -> str:
    network = (f"the ablation's MLP {NET} and evaluation" if net == NET else
               f"an MLP {net} (the ablation's is {NET}) and the ablation's evaluation")
    text = (f"Gaussian mixture ({gmm_spec(points)}), {network} "
            f"({heun_steps}-step Heun sampling), {steps} steps of batch 512 per run, seeds "
            f"{', '.join(map(str, seeds))} (the data's noise and the training run; seed 0 is the "
            f"ablation's run). Cells: mean ± sd over seeds. The "
            f"ratio columns divide each seed's excess error by the no-consistency model's at the "
            f"same seed (target: at most 0.5; for the cap-1 candidate, the cap-1 no-consistency "
            f"model's). {len(rows)} runs, "
            f"{sum(float(r['seconds']) for r in rows):.0f} s of training + evaluation "
            f"({machines(rows)}) Step-cost "
            f"ratios of these options: see the step-cost table. {noise_floors()} The 'best "
            f"case' rows: what the {points} noisy points allow a method that knows the "
            f"component labels and Gaussian form (each component's noisy sample covariance "
            f"minus sigma_n^2 I, sampled and scored like the models; mean of 5 training sets). "
            f"{defaults_summary()}\n\n"
            f"Rerun: `python benchmarks/consistency_seeds.py{flags}` {SHARDS_HINT}.\n\n"
            + summarise(rows, points))
    atomic_write_text(out, text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shard_arguments(parser, page("consistency_seeds.md"))
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--sigmas", type=float, nargs="+", default=None,
                        help=f"data noise levels (default: the ablation's {list(SIGMAS)})")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES),
                        default=CLOSE_OPTIONS)
    parser.add_argument("--points", type=int, default=POINTS,
                        help=f"training points of the mixture (default {POINTS})")
    parser.add_argument("--net", default=NET,
                        help=f"the MLP's hidden width x depth (default {NET})")
    args = parser.parse_args()
    try:
        mlp(args.net)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(1)
    # --quick (the smoke run) overrides the budget: QUICK_STEPS steps, one seed, the first sigma_n
    steps = QUICK_STEPS if args.quick else args.steps or 1500
    seeds = [0] if args.quick else args.seeds or [0, 1, 2]
    sigmas = (args.sigmas or list(SIGMAS))[:1 if args.quick else None]
    k, n = (int(p) for p in args.shard.split("/"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = " ".join(["", *(["--quick"] if args.quick else []),
                      *([f"--steps {args.steps}"] if args.steps else []),
                      *(["--seeds", *map(str, args.seeds)] if args.seeds else []),
                      *(["--sigmas", *map(str, args.sigmas)] if args.sigmas else []),
                      *(["--candidates", *args.candidates]
                        if args.candidates != CLOSE_OPTIONS else []),
                      *([f"--points {args.points}"] if args.points != POINTS else []),
                      *([f"--net {args.net}"] if args.net != NET else []),
                      *([f"--out benchmarks/results/{out.name}"]
                        if out.name != Path(parser.get_default("out")).name else [])])
    heun_steps = sampler_steps(args.quick)

    def write_page(rows: list[dict[str, object]]) -> str:
        return write(rows, steps, seeds, out, flags, heun_steps, args.points, args.net)

    if args.assemble:
        print(refresh_page(out, write_page))
        return
    run_shard(plan_for(seeds, sigmas, args.candidates), steps, out, k, n, write_page,
              args.resume, heun_steps, args.points, args.net)

if __name__ == "__main__":
    main()
