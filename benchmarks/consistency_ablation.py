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
from ambient.train import load_run, train

GMM = "gmm:dim=2,components=6,n=16384,seed=0,scale=0.1,spread=1.0"
VARIANTS = {  # name -> (method, data treated clean?, consistency overrides or None = off)
    "oracle (clean DSM)": ("dsm", True, None),
    "naive DSM on noisy": ("dsm", False, None),
    "ambient, no consistency": ("ambient", False, None),
    "ambient + consistency (default)": ("ambient", False, {}),
    "  weight 10": ("ambient", False, {"weight": 10.0}),
    "  one jump from data to below sigma_n": ("ambient", False,
                                              {"chain_steps": 0, "target": "below"}),
    "  start at ambient level, jump below": ("ambient", False, {"start": "ambient",
                                                                "target": "below"}),
    "  teacher_grad, two backward": ("ambient", False, {"teacher_grad": True,
                                                       "single_backward": False}),
}
MAIN = list(VARIANTS)[:4]


def run_variant(name: str, sigma_n: float, steps: int, root: Path) -> dict[str, object]:
    method, clean, overrides = VARIANTS[name]
    cfg = default_train_config("gmm")
    cfg.engine = replace(cfg.engine, steps=steps, checkpoint_every=steps, log_every=steps)
    cfg.objective.method = method
    cfg.objective.consistency = replace(DEFAULT_CONSISTENCY, **(overrides or {}))
    if overrides is None:
        cfg.objective.consistency.weight = 0.0
    dataset = resolve_dataset(GMM, 0.0 if clean else sigma_n, seed=0)
    run_dir = root / f"{sigma_n}_{len(list(root.iterdir()))}"
    start = time.perf_counter()
    train(cfg, dataset, run_dir, progress=False)
    seconds = time.perf_counter() - start
    denoiser, config = load_run(run_dir)
    gmm, _ = parse_gmm_spec(GMM)
    levels = [sigma_n / 4, sigma_n / 2, sigma_n, 2 * sigma_n]
    excess = excess_denoising_error(denoiser, gmm, levels, generator=torch.Generator().manual_seed(5))
    row: dict[str, object] = {"variant": name, "sigma_n": sigma_n, "sec_per_step": seconds / steps}
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
            "cov_err", "width", "step_ratio"]
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


def write(rows: list[dict[str, object]], steps: int, seconds: float, out: Path, quick: bool) -> str:
    base = {r["sigma_n"]: r["sec_per_step"] for r in rows if str(r["variant"]).startswith("oracle")}
    for r in rows:
        if r["sigma_n"] in base:
            r["step_ratio"] = r["sec_per_step"] / base[r["sigma_n"]]
    text = (f"Gaussian mixture ({GMM}), MLP 128x3, {steps} steps of batch 512 per variant, "
            f"EMA weights, 40-step Heun sampling, 4096 fresh draws per level. "
            f"Excess error: 0 = exact; width: std of samples' components / true (1 = right). "
            f"step_ratio: wall time per training step / the oracle's DSM step (same run, "
            f"noisy machine). {len(rows)} runs, {seconds:.0f} s.\n\n"
            f"Rerun: `python benchmarks/consistency_ablation.py{' --quick' if quick else ''}`\n\n"
            + to_markdown(rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/consistency.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or (200 if args.quick else 1500)
    plan = [(v, 0.3) for v in MAIN] + [(v, 0.6) for v in MAIN] + [(v, 0.3) for v in VARIANTS
                                                                   if v not in MAIN]
    if args.quick:
        plan = [(v, 0.3) for v in MAIN]
    rows: list[dict[str, object]] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name, sigma_n in plan:  # the page is rewritten after every run
            rows.append(run_variant(name, sigma_n, steps, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
            text = write(rows, steps, time.time() - t0, Path(args.out), args.quick)
    print(text)


if __name__ == "__main__":
    main()
