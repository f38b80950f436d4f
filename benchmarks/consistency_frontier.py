"""The consistency options at a glance: step cost against exactness, with the targets marked.

Reads two pages already written in the results folder and runs nothing new:

* the step-cost page (``step_cost.py``): each option's step time as a ratio to a DSM step;
* the mixture page with 8x the points (``consistency_points_steps.md``, two seeds, 6000
  steps): each option's per-component covariance error and its excess denoising error at
  sigma_n / 4, paired by seed with the clean oracle's and the no-consistency model's.

For every option it plots the covariance error as a multiple of the clean oracle's (the
issue's target: at most 1.25x) against the step cost (at most 2.5x), one panel per sigma_n,
with the target region shaded and the best case the data allow (component labels known) drawn
as a line, and tabulates the same with the excess ratio beside it (target: at most 0.5) and
where the covariance error lies: the width of the samples' bulk about their components (core,
1 = right) and the share stranded between components (fresh draws of p0: 0.01), beside the
oracle's.

    python benchmarks/consistency_frontier.py   # writes benchmarks/results/consistency_frontier.md
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from statistics import mean

from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from ambient.defaults import defaults_summary
from ambient.files import atomic_write_text
from consistency_ablation import MAIN, deconvolution_reference, read_rows
from consistency_seeds import BASELINE, CANDIDATES
from digits_benchmark import mean_sd
from pages import page

COST_TARGET, COV_TARGET, EXCESS_TARGET = 2.5, 1.25, 0.5
POINTS_PAGE = "consistency_points_steps.md"  # its rows: the options at 8x the points
POINTS = 131072
NETWORKS = ("unet", "mlp")  # the step-cost page's networks, in its order
ORACLE = MAIN[0]
SPREAD = ("core", "stranded")  # where the covariance error lies (consistency_ablation.core_spread)


def step_costs(page: Path) -> dict[tuple[str, str], float]:
    """``{(network, objective): ratio to DSM}`` from the step-cost page's table rows
    ``| network | objective | ms / step | ratio | images / s |``."""
    costs = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in NETWORKS and re.fullmatch(r"[\d.]+", cells[3]):
            costs[(cells[0], cells[1])] = float(cells[3])
    return costs


def option_rows(rows: list[dict[str, object]], costs: dict[tuple[str, str], float],
                ) -> list[dict[str, object]]:
    """One record per (option, sigma_n) of ``rows`` that has a step cost: its key in
    CANDIDATES, the costs per network, and, per seed (paired with that seed's oracle and
    no-consistency model), its covariance error over the oracle's and its excess error at
    sigma_n / 4 over the no-consistency model's, and (unpaired) its core width and stranded
    share."""
    by = {(r["variant"], float(r["sigma_n"]), r["seed"]): r for r in rows}
    oracle = {r["seed"]: float(r["cov_err"]) for r in rows if r["variant"] == ORACLE}
    out = []
    for key, name in CANDIDATES.items():
        cost = {net: costs.get((net, name.strip())) for net in NETWORKS}
        if cost["unet"] is None:
            continue  # no consistency: not a row of the step-cost table's options
        for sigma_n in sorted({float(r["sigma_n"]) for r in rows if r["variant"] == name}):
            mine = [r for r in rows if r["variant"] == name and float(r["sigma_n"]) == sigma_n
                    and r["seed"] in oracle and (BASELINE[name], sigma_n, r["seed"]) in by]
            if not mine:
                continue
            out.append({
                "key": key, "sigma_n": sigma_n, "cost": cost,
                "cov": [float(r["cov_err"]) / oracle[r["seed"]] for r in mine],
                "excess": [float(r["excess@sn/4"])
                           / float(by[(BASELINE[name], sigma_n, r["seed"])]["excess@sn/4"])
                           for r in mine],
                **{field: [float(r[field]) for r in mine] for field in SPREAD}})
    return sorted(out, key=lambda r: r["sigma_n"])  # stable: CANDIDATES' order within


def plot(records: list[dict[str, object]], floors: dict[float, float], path: Path) -> Path:
    """One panel per sigma_n: covariance error / the oracle's (log scale) against the UNet's
    step cost, the target region shaded, the best case from the data as a dashed line; each
    option numbered in CANDIDATES' order, the numbers' key under the panels."""
    sigmas = sorted({float(r["sigma_n"]) for r in records})
    keys = list(dict.fromkeys(str(r["key"]) for r in records))
    fig = Figure(figsize=(6.0 * len(sigmas), 5.6))
    axes = fig.subplots(1, len(sigmas), squeeze=False)[0]
    for ax, sigma_n in zip(axes, sigmas, strict=True):
        mine = [r for r in records if r["sigma_n"] == sigma_n]
        xs = [float(r["cost"]["unet"]) for r in mine]
        ys = [mean(r["cov"]) for r in mine]
        ax.fill_between([0.9, COST_TARGET], 0.9, COV_TARGET, color="tab:green", alpha=0.15,
                        label=f"target: cost <= {COST_TARGET}x, error <= {COV_TARGET}x")
        ax.axhline(floors[sigma_n], color="gray", linestyle="--",
                   label=f"best case from the data (labels known): {floors[sigma_n]:.2f}x")
        for r, x, y in zip(mine, xs, ys, strict=True):
            default = r["key"] == "default"
            ax.errorbar([x], [y], yerr=[[y - min(r["cov"])], [max(r["cov"]) - y]],
                        fmt="*" if default else "o", markersize=14 if default else 6,
                        color="tab:red" if default else "tab:blue", capsize=3,
                        label="the default" if default else None)
            ax.annotate(str(keys.index(str(r["key"])) + 1), (x, y), textcoords="offset points",
                        xytext=(5, 3), fontsize=8)
        ax.set_xlim(0.9 * min([*xs, 1.5]), max([*xs, COST_TARGET]) * 1.08)
        ax.set_ylim(0.9, max([*ys, floors[sigma_n], COV_TARGET]) * 1.6)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("training-step cost / DSM step (digits UNet, CPU)")
        ax.set_ylabel("covariance error / clean oracle's (mean; bar: the seeds' range)")
        ax.set_title(f"sigma_n = {sigma_n:g}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
    fig.text(0.02, -0.02, "   ".join(f"{i}: {key}" for i, key in enumerate(keys, 1)),
             fontsize=8, wrap=True, va="top")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def table(records: list[dict[str, object]], floors: dict[float, float],
          oracle: dict[str, list[float]]) -> str:
    """The markdown table of the records, one line per option and sigma_n, and whether each
    meets the cost, covariance and excess targets; ``oracle``: the clean oracle's SPREAD
    figures, its line."""
    lines = ["| option | sigma_n | step cost (UNet / MLP) | covariance error / oracle's | "
             "excess at sigma_n/4 / no consistency's | core width | stranded | "
             "within all three targets |",
             "|---|---:|---:|---:|---:|---:|---:|---|",
             f"| clean oracle | any | 1x | 1 | - | {mean_sd(oracle['core'], '.3g')} | "
             f"{mean_sd(oracle['stranded'], '.2g')} | - |"]
    for r in records:
        cost, cov, excess = r["cost"], r["cov"], r["excess"]
        mlp_cost = f"{cost['mlp']:.2f}x" if cost["mlp"] is not None else "-"
        met = (cost["unet"] <= COST_TARGET and mean(cov) <= COV_TARGET
               and mean(excess) <= EXCESS_TARGET)
        lines.append(f"| {r['key']} | {r['sigma_n']:g} | {cost['unet']:.2f}x / {mlp_cost} | "
                     f"{mean_sd(cov, '.2f')} | {mean_sd(excess, '.3f')} | "
                     f"{mean_sd(r['core'], '.3g')} | {mean_sd(r['stranded'], '.2g')} | "
                     f"{'yes' if met else 'no'} |")
    for sigma_n, floor in sorted(floors.items()):
        lines.append(f"| best case from the data (labels known) | {sigma_n:g} | - | {floor:.2f} "
                     f"| - | - | - | - |")
    return "\n".join(lines)


def write(results: Path, out: Path) -> str:
    """Write the page ``out`` and its figure (in ``out``'s folder) from the pages in
    ``results``; return the page's text."""
    cost_page, points_page = results / "step_cost.md", results / POINTS_PAGE
    missing = [p.name for p in (cost_page, points_page) if not p.exists()]
    if missing:
        raise SystemExit(f"consistency_frontier: {', '.join(missing)} missing in {results}: "
                         f"run step_cost.py and consistency_seeds.py for them first (run_all.py "
                         f"does)")
    rows = read_rows(points_page)
    records = option_rows(rows, step_costs(cost_page))
    if not records:
        raise SystemExit(f"consistency_frontier: no option of {points_page} has both a clean "
                         f"oracle row and a step cost in {cost_page}")
    oracle_rows = [r for r in rows if r["variant"] == ORACLE]
    oracle = mean(float(r["cov_err"]) for r in oracle_rows)
    floors = {s: float(deconvolution_reference(s, points=POINTS)["cov_err"]) / oracle
              for s in sorted({float(r["sigma_n"]) for r in records})}
    figure = plot(records, floors, out.parent / "consistency" / "frontier.png")
    seeds = sorted({int(r["seed"]) for r in rows if r["variant"] == ORACLE})
    text = (f"Every consistency option measured on the mixture with 8x the points "
            f"({POINTS_PAGE}: seeds {', '.join(map(str, seeds))}, 6000 steps) and on the "
            f"step-cost page, side by side: its training-step cost as a multiple of a DSM step "
            f"against its samples' per-component covariance error as a multiple of the clean "
            f"oracle's at the same seed (mean over seeds; the bars span the seeds). The shaded "
            f"box is the issue's target (cost at most {COST_TARGET}x, error at most "
            f"{COV_TARGET}x the oracle's); the dashed line is what a method that knows the "
            f"component labels and Gaussian form reaches from the same noisy points (mean of 5 "
            f"training sets over the oracle's mean error), so where it lies above the box no "
            f"method can reach the box at this sample size. The star is the default. The table "
            f"adds the excess denoising error at sigma_n/4 over the no-consistency model's "
            f"(target: at most {EXCESS_TARGET}) and where the covariance error lies: the "
            f"samples' core width (the bulk's spread about the nearest component over fresh "
            f"draws' of p0: 1 = right) and the share stranded between components (beyond fresh "
            f"draws' 99% quantile: 0.01 = right), mean ± sd over the seeds. "
            f"{defaults_summary()}\n\n"
            f"Rerun: `python benchmarks/consistency_frontier.py` (reads step_cost.md and "
            f"{POINTS_PAGE}; rerun those first to refresh it).\n\n"
            f"![step cost against covariance error](consistency/{figure.name})\n\n"
            + table(records, floors, {field: [float(r[field]) for r in oracle_rows]
                                      for field in SPREAD}) + "\n")
    atomic_write_text(out, text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=page("consistency_frontier.md"))
    args = parser.parse_args()
    out = Path(args.out)
    print(write(out.parent, out))


if __name__ == "__main__":
    main()
