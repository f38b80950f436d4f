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
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ambient.data import parse_gmm_spec, resolve_dataset
from ambient.defaults import DEFAULT_CONSISTENCY, default_train_config
from ambient.evaluate.exactness import component_covariance_error, excess_denoising_error
from ambient.generate import generate
from ambient.objective import ObjectiveConfig
from ambient.train import load_run, train

GMM = "gmm:dim=2,components=6,n=16384,seed=0,scale=0.1,spread=1.0"
DATA_SMALL_STEPS = {"start": "data", "chain_steps": 4, "target": "step", "step": 0.05,
                    "substeps": 1}
VARIANTS = {  # name -> (method, data treated clean?, consistency overrides or None = off,
    #                    objective overrides)
    "oracle (clean DSM)": ("dsm", True, None, {}),
    "naive DSM on noisy": ("dsm", False, None, {}),
    "ambient, no consistency": ("ambient", False, None, {}),
    "ambient + consistency (default)": ("ambient", False, {}, {}),
    "ambient, no consistency, paper weighting (cap 1)": ("ambient", False, None,
                                                         {"weight_cap": 1.0}),
    "  start at ambient level, one jump below (1 substep)": ("ambient", False, {"substeps": 1}, {}),
    "  start at data, chain 4, small steps 5%": ("ambient", False, DATA_SMALL_STEPS, {}),
    "  start at data, no chain, one jump below": ("ambient", False, {
        **DATA_SMALL_STEPS, "chain_steps": 0, "target": "below"}, {}),
    "  start at data, chain 4, jump below, 4 substeps": ("ambient", False, {
        **DATA_SMALL_STEPS, "target": "below", "substeps": 4}, {}),
    "  start at data, chain 4, steps of 50%, 4 substeps": ("ambient", False, {
        **DATA_SMALL_STEPS, "step": 0.5, "substeps": 4}, {}),
    "  EDM weighting of the term": ("ambient", False, {"weighting": "edm"}, {}),
    "  weight 10": ("ambient", False, {"weight": 10.0}, {}),
    "  fraction 0.5": ("ambient", False, {"fraction": 0.5}, {}),
    "  teacher_grad, two backward": ("ambient", False, {"teacher_grad": True,
                                                       "single_backward": False}, {}),
}
MAIN = list(VARIANTS)[:4]


def variant_objective(name: str) -> ObjectiveConfig:
    """The training objective of the variant ``name`` (also timed by step_cost.py)."""
    method, _, overrides, objective = VARIANTS[name]
    consistency = replace(DEFAULT_CONSISTENCY, **(overrides or {}))
    if overrides is None:
        consistency.weight = 0.0
    return replace(default_train_config("gmm").objective, method=method, consistency=consistency,
                   **objective)


def run_variant(name: str, sigma_n: float, steps: int, root: Path) -> dict[str, object]:
    clean = VARIANTS[name][1]
    cfg = default_train_config("gmm")
    cfg.engine = replace(cfg.engine, steps=steps, checkpoint_every=steps, log_every=steps)
    cfg.objective = variant_objective(name)
    dataset = resolve_dataset(GMM, 0.0 if clean else sigma_n, seed=0)
    run_dir = root / f"{sigma_n}_{len(list(root.iterdir()))}"
    start = time.perf_counter()
    train(cfg, dataset, run_dir, progress=False)
    seconds = time.perf_counter() - start
    denoiser, config = load_run(run_dir)
    gmm, _ = parse_gmm_spec(GMM)
    levels = [sigma_n / 4, sigma_n / 2, sigma_n, 2 * sigma_n]
    excess = excess_denoising_error(denoiser, gmm, levels, generator=torch.Generator().manual_seed(5))
    row: dict[str, object] = {"variant": name, "sigma_n": sigma_n, "ms/step": 1e3 * seconds / steps}
    for lvl, label in zip(levels, ["sn/4", "sn/2", "sn", "2sn"], strict=True):
        row[f"excess@{label}"] = excess[lvl]
    config = {**config, "sigma_n": {"max": sigma_n}}
    drawn = generate(denoiser, config, 4000, steps=40, seed=6)
    cov = component_covariance_error(drawn, gmm)
    row["cov_err"], row["width"] = cov.error, cov.width_ratio
    if name == "ambient, no consistency":
        cov_t = component_covariance_error(generate(denoiser, config, 4000, steps=40, seed=6,
                                                    truncate=True), gmm)
        row["truncated_cov_err"], row["truncated_width"] = cov_t.error, cov_t.width_ratio
    return row


def to_markdown(rows: list[dict[str, object]]) -> str:
    cols = ["variant", "sigma_n", "excess@sn/4", "excess@sn/2", "excess@sn", "excess@2sn",
            "cov_err", "width", "ms/step"]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
        if "truncated_width" in r:
            lines.append(f"| ambient, no consistency, *truncated sampling* | {r['sigma_n']} | | | | | "
                         f"{r['truncated_cov_err']:.3g} | {r['truncated_width']:.3g} | |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, object]], steps: int, out: Path, quick: bool) -> str:
    order = {(name, sn): i for i, (name, sn) in enumerate(plan_for(quick))}
    rows = sorted(rows, key=lambda r: order.get((r["variant"], r["sigma_n"]), len(order)))
    total = sum(float(r["seconds"]) for r in rows)
    text = (f"Gaussian mixture ({GMM}), MLP 128x3, {steps} steps of batch 512 per variant, "
            f"EMA weights, 40-step Heun sampling, 4096 fresh draws per level; one seed each. "
            f"Excess error: 0 = exact. width: std of the samples' components / the truth "
            f"(1 = right, 3.16 = the law of x at sigma_n = 0.3). ms/step is wall time on a "
            f"shared machine (2 runs in parallel): use benchmarks/step_cost.py for cost ratios. "
            f"{len(rows)} runs, {total:.0f} s of training + evaluation.\n\n"
            f"Rerun: `python benchmarks/consistency_ablation.py{' --quick' if quick else ''}` "
            f"(or in 2 processes: `--shard 0/2` and `--shard 1/2`).\n\n" + to_markdown(rows))
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return text


def plan_for(quick: bool) -> list[tuple[str, float]]:
    if quick:
        return [(v, 0.3) for v in MAIN]
    return ([(v, 0.3) for v in MAIN] + [(v, 0.6) for v in MAIN]
            + [(v, 0.3) for v in VARIANTS if v not in MAIN])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th variant from K")
    parser.add_argument("--out", default="benchmarks/results/consistency.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or (200 if args.quick else 1500)
    k, n = (int(p) for p in args.shard.split("/"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mine = out.with_suffix(f".shard{k}.jsonl")
    for stale in out.parent.glob(out.stem + ".shard*.jsonl"):
        if n == 1 or stale == mine:
            stale.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for name, sigma_n in plan_for(args.quick)[k::n]:  # the page is rewritten after every run
            start = time.time()
            row = run_variant(name, sigma_n, steps, Path(tmp))
            row["seconds"] = time.time() - start
            print(json.dumps(row), flush=True)
            with mine.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            rows = [json.loads(line) for shard in sorted(out.parent.glob(out.stem + ".shard*.jsonl"))
                    for line in shard.read_text(encoding="utf-8").splitlines() if line]
            text = write(rows, steps, out, args.quick)
    print(text)


if __name__ == "__main__":
    main()
