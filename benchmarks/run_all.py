"""Run every benchmark and assemble benchmarks/RESULTS.md from their outputs.

    python benchmarks/run_all.py              # all benchmarks (about 19 h on 2 CPU cores)
    python benchmarks/run_all.py --quick      # smoke versions into a temp folder (minutes;
                                              # pages differing only in --steps / --seeds once)
    python benchmarks/run_all.py --assemble   # only rebuild RESULTS.md from benchmarks/results/
    python benchmarks/run_all.py --only consistency_lift.md --workers 16 --shards 8
                                              # some pages, on a machine with more cores

The single-threaded training benchmarks run --workers at a time (default two, one per core
here); the step-cost benchmark, which times steps on 2 threads, runs alone after them. The
pages of GPU_SECTIONS need a CUDA GPU and are not run here (`bash benchmarks/gpu_checks.sh
OUT`, or the command on each page); RESULTS.md collects those present in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ambient.defaults import defaults_summary, states_current_defaults
from pages import RESULTS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUDGET = ["--steps", "6000", "--seeds", "0", "1", "--sigmas", "0.15", "0.3"]  # 4x, two seeds


def seed_pages(name: str, title: str, candidates: list[str],
               endings: tuple[str, str] = (", three seeds", " at four times the training budget"),
               ) -> list[tuple[str, str, list[str]]]:
    """The two mixture pages comparing ``candidates`` (consistency_seeds.py): NAME.md at the
    seeds page's budget and NAME_budget.md at four times it, titled ``title`` + each ending."""
    return [(f"{name}{tag}.md", title + ending,
             ["consistency_seeds.py", *budget, "--candidates", *candidates])
            for tag, ending, budget in zip(("", "_budget"), endings, ([], BUDGET), strict=True)]


def points_command(steps: int, seeds: int, sigma_n: str, candidates: list[str]) -> list[str]:
    """consistency_seeds.py on the mixture with 8 times the training points (131072): ``steps``
    steps, seeds 0 to ``seeds - 1``, one ``sigma_n``, ``candidates`` (in the order of the pages'
    rerun lines)."""
    return ["consistency_seeds.py", "--steps", str(steps), "--seeds", *map(str, range(seeds)),
            "--sigmas", sigma_n, "--candidates", *candidates, "--points", "131072"]


EIGHT_STEPS_SIGMA_MIN = ": the own-sample ODE in 8 steps to sigma 0.005 (the default: 6 steps to 0.002)"
# the digits UNet pages at longer budgets, one per seed, longest first:
# (steps, page tag, methods, title ending, seeds)
DIGITS_LONG = [
    (12000, "", ["ambient_no_consistency", "ambient_consistency"], "", (0,)),
    (12000, "_8_steps_sigma_min", ["ambient_no_consistency", "ambient_8_steps_sigma_min_0005"],
     EIGHT_STEPS_SIGMA_MIN, (0,)),
    # seed 1: the two head to head only (the oracle and each option), to save an hour of training
    (12000, "", ["ambient_consistency"], "", (1,)),
    (12000, "_8_steps_sigma_min", ["ambient_8_steps_sigma_min_0005"], EIGHT_STEPS_SIGMA_MIN, (1,)),
    (6000, "", ["ambient_no_consistency", "ambient_consistency"], "", (0, 1, 2)),
    (6000, "_cap1", ["ambient_cap1_no_consistency", "ambient_cap1_consistency"],
     ", paper's ambient weighting (weight cap 1)", (0, 1, 2)),
    (6000, "_sigma_min", ["ambient_no_consistency", "ambient_sigma_min_0005"],
     ": the own-sample ODE to sigma 0.005 (the default: 0.002)", (0, 1, 2)),
    (6000, "_8_steps", ["ambient_no_consistency", "ambient_8_steps"],
     ": the own-sample ODE in 8 steps (the default: 6)", (0, 1, 2)),
    (6000, "_extrapolate", ["ambient_no_consistency", "ambient_extrapolated_f0125"],
     ": the extrapolated refit (beta 1) on half the default's rows", (0, 1, 2)),
    (6000, "_share", ["ambient_no_consistency", "ambient_extrapolated_share_05"],
     ": the extrapolated refit (beta 1) with draws behind for half the default's rows", (0, 1, 2)),
    (6000, "_8_steps_sigma_min", ["ambient_no_consistency", "ambient_8_steps_sigma_min_0005"],
     EIGHT_STEPS_SIGMA_MIN, (0, 1, 2))]
BUDGET_TIMES = {6000: "four", 12000: "eight"}  # the digits UNet's default budget is 1500 steps

SECTIONS = [  # (results page, title, the command that writes it: script and arguments)
    ("consistency_frontier.md", "The consistency options at a glance: step cost against "
     "exactness on the mixture", ["consistency_frontier.py"]),
    ("step_cost.md", "Training-step cost of every objective and consistency option",
     ["step_cost.py"]),
    ("consistency.md", "Gaussian-mixture exactness and consistency ablation",
     ["consistency_ablation.py"]),
    ("consistency_seeds.md", "Gaussian mixture: the close consistency options over three seeds",
     ["consistency_seeds.py"]),
    *seed_pages("consistency_levels", "Gaussian mixture: the consistency term's levels below "
                "sigma_n, log-uniform vs log-normal vs mixed",
                ["none", "log-uniform", "log-normal", "mixed"],
                (" (the default), three seeds", ", at four times the training budget")),
    ("consistency_budget.md", "Gaussian mixture: the default vs 3 ODE steps and no warm start at "
     "four times the training budget",
     ["consistency_seeds.py", *BUDGET, "--candidates", "none", "default", "no-warm-start",
      "3-steps"]),
    *seed_pages("consistency_cap1", "Gaussian mixture: the paper's ambient weighting (weight "
                "cap 1) vs the default's cap 10", ["none", "default", "cap1-none", "cap1"]),
    *seed_pages("consistency_lift", "Gaussian mixture: the own-sample draws started at the data "
                "(lift 1, the default) vs lifted to 1.1 sigma_n (the previous default)",
                ["none", "default", "lift-1.1"]),
    *seed_pages("consistency_fraction", "Gaussian mixture: the share of the batch the "
                "consistency term draws from (fraction 0.25, the default, vs 0.375 and 0.5)",
                ["none", "default", "fraction-0.375", "fraction-0.5"]),
    *seed_pages("consistency_sigma_min", "Gaussian mixture: the own-sample ODE to sigma 0.005 vs "
                "0.002 (the default)", ["none", "default", "sigma-min-0.005"]),
    ("consistency_long.md", "Gaussian mixture at sigma_n = 0.15: the default at 16 times the "
     "training budget (24000 steps, one seed)",
     ["consistency_seeds.py", "--steps", "24000", "--seeds", "0", "--sigmas", "0.15",
      "--candidates", "none", "default"]),
    ("consistency_points.md", "Gaussian mixture with 8 times the training points (131072): the "
     "default vs no consistency at four times the training budget",
     ["consistency_seeds.py", *BUDGET, "--candidates", "none", "default", "--points", "131072"]),
    ("consistency_points_seeds.md", "Gaussian mixture at sigma_n = 0.15 with 8 times the training "
     "points (131072), eight seeds: the default, the extrapolated refit (beta 1, on half the "
     "rows, and with draws behind for half the default's rows) and the own-sample ODE in 8 steps "
     "to sigma 0.005 vs no consistency at four times the training budget",
     points_command(6000, 8, "0.15", ["none", "default", "extrapolate-1-fraction-0.125",
                                      "extrapolate-1-share-0.5", "8-steps-sigma-min-0.005"])),
    ("consistency_points_seeds_long.md", "Gaussian mixture at sigma_n = 0.15 with 8 times the "
     "training points (131072), eight seeds at 16 times the training budget (24000 steps): the "
     "default vs the clean-data oracle trained as long",
     points_command(24000, 8, "0.15", ["default"])),
    ("consistency_points_seeds_96k.md", "Gaussian mixture at sigma_n = 0.15 with 8 times the "
     "training points (131072), four seeds at 64 times the training budget (96000 steps): the "
     "default vs the clean-data oracle trained as long",
     points_command(96000, 4, "0.15", ["default"])),
    ("consistency_points_steps_long.md", "Gaussian mixture at sigma_n = 0.15 with 8 times the "
     "training points (131072), eight seeds at 16 times the training budget (24000 steps): the "
     "own-sample ODE in 24 steps, and in 8 steps to sigma 0.005 (the default: 6 steps to 0.002), "
     "and the extrapolated refit (beta 1, draws behind for half the rows) vs the clean-data "
     "oracle trained as long",
     points_command(24000, 8, "0.15", ["24-steps", "8-steps-sigma-min-0.005", "extrapolate-1-share-0.5"])),
    ("consistency_points_sigma02_long.md", "Gaussian mixture at sigma_n = 0.2 with 8 times the "
     "training points (131072), four seeds at 16 times the training budget (24000 steps): the "
     "default, the own-sample ODE in 8 steps to sigma 0.005 and the extrapolated refit (beta 1, "
     "draws behind for half the rows) vs the clean-data oracle trained as long",
     points_command(24000, 4, "0.2", ["default", "8-steps-sigma-min-0.005", "extrapolate-1-share-0.5"])),
    ("consistency_points_sigma02.md", "Gaussian mixture at sigma_n = 0.2 with 8 times the training "
     "points (131072), four seeds: the default, the extrapolated refit (beta 1, draws behind "
     "for half the rows), the own-sample ODE in 8 steps to sigma 0.005, both together, and draws "
     "stopped at half the level, vs no consistency at four times the training budget",
     points_command(6000, 4, "0.2", ["none", "default", "extrapolate-1-share-0.5",
                                     "8-steps-sigma-min-0.005",
                                     "8-steps-sigma-min-0.005-share-0.5", "stop-0.5"])),
    ("consistency_points_sure.md", "Gaussian mixture at sigma_n = 0.15 with 8 times the training "
     "points (131072), five seeds: a SURE term at sigma_n on a quarter of the rows besides the "
     "default consistency, against the default, at four times the training budget",
     points_command(6000, 5, "0.15", ["default", "sure"])),
    ("consistency_points_net.md", "Gaussian mixture at sigma_n = 0.15 with 8 times the training "
     "points (131072) and an MLP 256x4 (the ablation's is 128x3): the default vs no consistency "
     "at four times the training budget",
     ["consistency_seeds.py", "--steps", "6000", "--seeds", "0", "1", "--sigmas", "0.15",
      "--candidates", "none", "default", "--points", "131072", "--net", "256x4"]),
    ("consistency_points_steps.md", "Gaussian mixture with 8 times the training points "
     "(131072): the own-sample ODE, 6 steps to sigma 0.002 (the default) vs 8, 12 and 24 steps, "
     "vs 6 and 8 steps to 0.005 and 12 steps on half the rows, and the extrapolated refit (beta "
     "1, on the default's rows, on half and on three quarters of them, and with draws behind for "
     "a quarter or half of the default's rows, and with 8 steps to 0.005 as well), a SURE term at "
     "sigma_n besides the default, the term's weight 0.5 and 3 instead of 1, and draws stopped at "
     "half the level (the ambient loss from there), at four times the training budget",
     ["consistency_seeds.py", *BUDGET, "--candidates", "none", "default", "8-steps",
      "12-steps", "24-steps", "sigma-min-0.005", "8-steps-sigma-min-0.005",
      "fraction-0.125-12-steps", "extrapolate-1",
      "extrapolate-1-fraction-0.125", "extrapolate-1-fraction-0.1875", "extrapolate-1-share-0.25",
      "extrapolate-1-share-0.5", "8-steps-sigma-min-0.005-share-0.5", "sure", "weight-0.5",
      "weight-3", "stop-0.5", "--points", "131072"]),
    ("exact_teacher.md", "Diagnostic: consistency with an exact teacher above sigma_n",
     ["consistency_exact_teacher.py"]),
    ("exact_teacher_0.15.md", "Diagnostic: consistency with an exact teacher above sigma_n = "
     "0.15, up to 24000 steps",
     ["consistency_exact_teacher.py", "--sigma-n", "0.15", "--budgets", "1500", "6000", "24000"]),
    ("exact_teacher_points.md", "Diagnostic: consistency with an exact teacher above sigma_n = "
     "0.15, with 8 times the training points (131072)",
     ["consistency_exact_teacher.py", "--sigma-n", "0.15", "--budgets", "6000", "--points",
      "131072"]),
    ("consistency_plateau.md", "Diagnostic: the exact-teacher plateau at sigma_n = 0.15 against "
     "the learning rate and the ODE steps", ["consistency_plateau.py"]),
    ("consistency_bands.md", "Diagnostic: at which noise levels the default's samples go wrong "
     "(band swaps with the clean oracle, sigma_n = 0.15, 8 times the points)",
     ["consistency_bands.py"]),
    ("consistency_bridge.md", "Diagnostic: where in space the default's covariance error lies (a "
     "bridge between the closest components, sigma_n = 0.15, 8 times the points)",
     ["consistency_bridge.py"]),
    ("consistency_probes.md", "Diagnostic: probes of the own-sample fixed point",
     ["consistency_probes.py"]),
    ("digits.md", "Digits: sample quality (Frechet distance) and the denoising table",
     ["digits_benchmark.py"]),
    ("digits_unet.md", "Digits with a small UNet (a near-exact clean oracle), sigma_n = 0.2, "
     "three seeds",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "1", "2",
      "--methods", "ambient_no_consistency", "ambient_consistency"]),
    ("digits_unet_levels.md", "Digits with a small UNet: the consistency term's levels below "
     "sigma_n, log-uniform vs log-normal (the default), three seeds",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "1", "2",
      "--methods", "ambient_no_consistency", "ambient_log_uniform", "ambient_log_normal"]),
    ("digits_unet_fraction.md", "Digits with a small UNet: the consistency term's fraction of the "
     "batch 0.375 (the default: 0.25), three seeds",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "1", "2",
      "--methods", "ambient_no_consistency", "ambient_fraction_0375"]),
    ("digits_unet_sigma_min.md", "Digits with a small UNet: the own-sample ODE to sigma 0.005 "
     "(the default: 0.002), three seeds",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "1", "2",
      "--methods", "ambient_no_consistency", "ambient_sigma_min_0005"]),
    ("digits_unet_extrapolate.md", "Digits with a small UNet: the extrapolated refit (beta 1) "
     "with draws behind for half the default's rows, three seeds",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "1", "2",
      "--methods", "ambient_no_consistency", "ambient_extrapolated_share_05"]),
    ("digits_unet_seeds_345.md", "Digits with a small UNet: the default and the extrapolated "
     "refit with draws behind for half the default's rows, three more seeds (3, 4, 5)",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "3", "4", "5",
      "--methods", "ambient_no_consistency", "ambient_consistency",
      "ambient_extrapolated_share_05"]),
    ("digits_unet_seeds_6789.md", "Digits with a small UNet: the default and the extrapolated "
     "refit with draws behind for half the default's rows, four more seeds (6, 7, 8, 9)",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "6", "7", "8", "9",
      "--methods", "ambient_no_consistency", "ambient_consistency",
      "ambient_extrapolated_share_05"]),
    ("digits_unet_sure.md", "Digits with a small UNet: a SURE term at sigma_n on a quarter of "
     "the rows besides the default consistency, three seeds",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "1", "2",
      "--methods", "ambient_no_consistency", "ambient_sure"]),
    ("digits_sure_fit.md", "Diagnostic: why the SURE term at sigma_n hurts the digits (it fits "
     "the noisy training digits)", ["digits_sure_fit.py"]),
    ("digits_unet_cap1.md", "Digits with a small UNet, paper's ambient weighting (weight cap 1), "
     "three seeds",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "1", "2",
      "--methods", "ambient_cap1_no_consistency", "ambient_cap1_consistency"]),
    *[(f"digits_unet_{steps}{tag}_s{seed}.md", f"Digits with a small UNet at "
       f"{BUDGET_TIMES[steps]} times the training budget ({steps} steps){title}, seed {seed}",
       ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", str(seed), "--steps",
        str(steps), "--methods", *methods])
      for steps, tag, methods, title, seeds in DIGITS_LONG for seed in seeds],
    ("digits_unet_6000_lift1_s0.md", "Digits with a small UNet at four times the training budget "
     "(6000 steps): the own-sample draws lifted to 1.1 sigma_n (the previous default), seed 0",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "--steps", "6000",
      "--methods", "ambient_no_consistency", "ambient_lift_1_1"]),
    ("digits_unet_6000_mixed_s0.md", "Digits with a small UNet at four times the training budget "
     "(6000 steps): the consistency term's levels below sigma_n, mixed (half log-normal, half "
     "log-uniform), seed 0",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--seeds", "0", "--steps", "6000",
      "--methods", "ambient_no_consistency", "ambient_mixed_levels"]),
    ("digits_unet_options.md", "Digits with a small UNet: other consistency options (one seed)",
     ["digits_benchmark.py", "--net", "unet", "--sigmas", "0.2", "--methods",
      "ambient_no_consistency", "ambient_previous", "ambient_two_draws", "ambient_3_steps",
      "ambient_no_warm_start"]),
    ("digits_background.md", "Diagnostic: where the default's Frechet gap on the digits comes "
     "from", ["digits_background.py"]),
    ("memorization.md", "Memorization: clean-trained vs noisy-trained",
     ["memorization_benchmark.py"]),
]
GPU_SECTIONS = [  # (results page, title): written on a GPU by the command each page names
    ("step_cost_gpu.md", "On a GPU: training-step cost at batch 128"),
    ("step_cost_gpu_b4096.md", "On a GPU: training-step cost at batch 4096"),
    ("latent_gpu.md", "On a GPU: SDXL at real size, fine-tuning step and sampling"),
    ("latent_forward.md", "On a GPU: SDXL UNet forward latency by batch size"),
]
COMMAND = {page: command for page, _, command in SECTIONS}
# pages run after all the others, alone, in this order: the step cost (timed on 2 threads),
# then the summary drawn from it and the mixture pages (it trains nothing)
LAST = ["step_cost.md", "consistency_frontier.md"]
# what --quick passes a page's command: "--quick" (the smoke version), except for the pages
# that have none: the step cost times one round, the summary reads the smoke pages as they are
QUICK_ARGS = {"step_cost.md": ["--rounds", "1"], "consistency_frontier.md": []}
STATED = defaults_summary().split(":")[0]  # how a page begins to state its training defaults
# single-threaded jobs, longest first: (results page, run in shards). A sharded page's runs are
# split over --shards processes (consistency_ablation.py / consistency_seeds.py --shard K/N)
JOBS = [
    *[(f"digits_unet_{steps}{tag}_s{seed}.md", False) for steps, tag, _, _, seeds in DIGITS_LONG
      for seed in seeds],
    ("digits_unet_6000_mixed_s0.md", False),
    ("digits_unet_6000_lift1_s0.md", False),
    ("exact_teacher_0.15.md", False),
    ("exact_teacher_points.md", False),
    ("consistency_plateau.md", False),
    ("consistency_bands.md", False),
    ("consistency_bridge.md", False),
    *[(f"{name}.md", True)
      for name in ("consistency_points_seeds_96k", "consistency", "consistency_seeds",
                   "consistency_budget", "consistency_long", "consistency_points_seeds_long",
                   "consistency_points_seeds", "consistency_points_steps_long",
                   "consistency_points_sigma02_long", "consistency_points_sigma02",
                   "consistency_points_sure",
                   "consistency_points_steps",
                   "consistency_points_net",
                   "consistency_cap1_budget",
                   "consistency_levels_budget", "consistency_lift_budget", "consistency_points",
                   "consistency_fraction_budget", "consistency_cap1", "consistency_levels",
                   "consistency_lift", "consistency_fraction", "consistency_sigma_min",
                   "consistency_sigma_min_budget")],
    ("digits_unet.md", False),
    ("digits_unet_levels.md", False),
    ("digits_unet_cap1.md", False),
    ("digits_unet_fraction.md", False),
    ("digits_unet_extrapolate.md", False),
    ("digits_unet_seeds_345.md", False),
    ("digits_unet_seeds_6789.md", False),
    ("digits_unet_sure.md", False),
    ("digits_sure_fit.md", False),
    ("digits_unet_sigma_min.md", False),
    ("digits_unet_options.md", False),
    ("digits.md", False),
    ("digits_background.md", False),
    ("exact_teacher.md", False),
    ("consistency_probes.md", False),
    ("memorization.md", False),
]


def parallel_jobs(shards: int = 2, only: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """The (results page, extra arguments) processes of JOBS, in its order: a sharded page as
    ``shards`` processes (``--shard K/shards``, shard by shard, so the first ``shards`` jobs
    each hold a share of the longest sharded page), the others as one; ``only``: just these
    pages."""
    unknown = sorted(set(only or []) - {page for page, _ in JOBS})
    if unknown:
        raise SystemExit(f"run_all: --only {' '.join(unknown)}: no such page (the pages: "
                         f"{', '.join(page for page, _ in JOBS)})")
    return [(page, ["--shard", f"{k}/{shards}"] if sharded else [])
            for page, sharded in JOBS if only is None or page in only
            for k in (range(shards) if sharded else [0])]


# options whose values every script's --quick replaces (--steps) or cuts to one (--seeds)
QUICK_OVERRIDES = ("--steps", "--seeds")


def smoke_key(page: str) -> tuple[str, ...]:
    """The command of ``page`` as ``--quick`` runs it: without the options of QUICK_OVERRIDES
    and their values. Pages with the same key would repeat one smoke run."""
    key, overridden = [], False
    for arg in COMMAND[page]:
        if arg.startswith("--"):
            overridden = arg in QUICK_OVERRIDES
        if not overridden:
            key.append(arg)
    return tuple(key)


def quick_jobs(results: Path, jobs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """``jobs`` less the pages whose smoke run repeats an earlier job's page (same
    :func:`smoke_key`); each of those gets a one-line page naming the page that stands for it.
    Pages outside ``jobs`` (not chosen by ``--only``) get nothing."""
    first: dict[tuple[str, ...], str] = {}
    chosen = {page for page, _ in jobs}
    for page in [page for page, _, _ in SECTIONS if page in chosen]:
        stand_in = first.setdefault(smoke_key(page), page)
        if stand_in != page:
            (results / page).write_text(
                f"--quick: not run; its smoke run would repeat {stand_in}'s code (the commands "
                f"differ only in {' / '.join(QUICK_OVERRIDES)}, whose values --quick replaces "
                f"or cuts to one seed).\n",
                encoding="utf-8")
    return [job for job in jobs if first[smoke_key(job[0])] == job[0]]


def out_argument(path: Path) -> str:
    """``--out`` for a page: relative to the repository root when inside it (the scripts run
    there and echo their arguments in the page's rerun line, which must read as typed)."""
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def run(page: str, extra: list[str], quick: bool, results: Path) -> None:
    """Run the command of ``page`` (plus ``extra`` arguments) from the repository root, writing
    the page into ``results`` (``quick``: with the page's QUICK_ARGS, by default ``--quick``)."""
    script, *args = COMMAND[page]
    cmd = [sys.executable, str(HERE / script), *args, *extra, "--out",
           out_argument(results / page)]
    if quick:
        cmd += QUICK_ARGS.get(page, ["--quick"])
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"run_all: {page} {' '.join(extra)} took {time.perf_counter() - start:.0f} s", flush=True)


# options of a rerun line that set how a page runs, not what it measures: the smoke budget,
# the output, the processes, the step-cost timing's repetitions (number of values they take)
RUN_OPTIONS = {"--quick": 0, "--resume": 0, "--out": 1, "--shard": 1, "--rounds": 1}


def rerun_command(text: str) -> list[str] | None:
    """The script and arguments of a page's "Rerun: `python benchmarks/...`" line, less the
    options of RUN_OPTIONS; None for a page without one."""
    found = re.search(r"Rerun: `python benchmarks/([^`]*)`", text)
    if found is None:
        return None
    tokens, kept = found.group(1).split(), []
    while tokens:
        token = tokens.pop(0)
        if token in RUN_OPTIONS:
            del tokens[:RUN_OPTIONS[token]]
        else:
            kept.append(token)
    return kept


def assemble(results: Path, out: Path) -> Path:
    """Write ``out`` from the pages in ``results`` (image links made relative to ``out``)."""
    timing = results / "run_all_seconds.txt"
    parts = ["# Benchmark results", "",
             "Every table below is written by the script named under it; rebuild this page with "
             "`python benchmarks/run_all.py` (or `--assemble` to only collect the outputs in "
             "benchmarks/results/). Figures are from runs on a shared 2-core CPU machine, no GPU, except "
             "the sections titled 'On a GPU' at the end (their pages name the GPU and the "
             "command; `bash benchmarks/gpu_checks.sh OUT` runs them all) and the mixture pages "
             "whose 'Runs made with' line names another machine (the same scripts on more "
             "cores, e.g. `run_all.py --only PAGE... --workers 16 --shards 8`)."]
    if timing.exists():
        minutes = float(timing.read_text(encoding="utf-8")) / 60
        parts.append(f"The last full `python benchmarks/run_all.py` took {minutes:.0f} min.")
    parts.append("")
    current = defaults_summary()
    parts += ["Pages state the training defaults they ran with. A page that does not state the "
              "current ones (a GPU page: that states other ones) is marked, and its rows called "
              "the default are the default of its time (rerun its command to refresh it; a setting added "
              "since a page was made counts as its value before, the dataclass default). "
              "Current: " + current, ""]
    prefix = results.resolve().relative_to(out.parent.resolve()).as_posix()
    gpu_pages = [(name, title) for name, title in GPU_SECTIONS if (results / name).exists()]
    for name, title in [(name, title) for name, title, _ in SECTIONS] + gpu_pages:
        path = results / name
        text = (path.read_text(encoding="utf-8") if path.exists()
                else f"(not run yet: {prefix}/{name} is missing)")
        text = re.sub(r"^#+ .*\n", "", text, count=1)  # the page's own title
        command = rerun_command(text)
        ours = f"`python benchmarks/{' '.join(COMMAND[name])}`" if name in COMMAND else None
        stale = not states_current_defaults(text) and (ours or STATED in text)  # GPU: if stated
        if path.exists() and stale:
            text = (f"> Not made with the current defaults (this page states other ones, or "
                    f"none): its rows called the default are the default of its time. Rerun: "
                    f"{ours or 'the command it names, on a CUDA GPU'}.\n\n{text}")
        if ours and command not in (None, COMMAND[name]):
            text = (f"> Made with another command than run_all's (the page's rerun line names "
                    f"it); run_all now runs {ours}.\n\n{text}")
        text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)  # its headings one level down
        text = re.sub(r"(!\[[^\]]*\]\()(?!https?:|/)", rf"\1{prefix}/", text)
        parts += [f"## {title}", "", text, ""]
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--assemble", action="store_true")
    parser.add_argument("--quick-dir", type=Path, default=None,
                        help="with --quick: the folder for the smoke pages and their RESULTS.md "
                             "(default: a new temporary folder)")
    parser.add_argument("--only", nargs="+", metavar="PAGE", default=None,
                        help="run just these pages (e.g. consistency_lift.md), then assemble; "
                             "step_cost.md and consistency_frontier.md run only if named")
    parser.add_argument("--workers", type=int, default=2,
                        help="single-threaded jobs at a time (default 2: one per core here)")
    parser.add_argument("--shards", type=int, default=2,
                        help="processes per sharded mixture page (default 2)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.shards < 1:
        parser.error("--workers and --shards take a positive number")
    results, out = RESULTS, HERE / "RESULTS.md"
    if args.quick:  # never overwrite the committed results with smoke figures
        results = args.quick_dir or Path(tempfile.mkdtemp(prefix="ambient_bench_"))
        results.mkdir(parents=True, exist_ok=True)
        out = results / "RESULTS.md"
    if not args.assemble:
        start = time.perf_counter()
        only = [page for page in args.only if page not in LAST] if args.only else None
        jobs = parallel_jobs(args.shards, only)
        jobs = quick_jobs(results, jobs) if args.quick else jobs
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(lambda job: run(*job, args.quick, results), jobs))
        for page in LAST:
            if not args.only or page in args.only:
                run(page, [], args.quick, results)
        if not args.only:  # the time of a full run
            (results / "run_all_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n",
                                                         encoding="utf-8")
    print(f"wrote {assemble(results, out)}")
    return out


if __name__ == "__main__":
    main()
