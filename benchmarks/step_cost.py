"""Training-step cost of each objective as a ratio to a DSM step (same network, same batch).

Rounds are interleaved (one step of every objective per round) so that load on a shared
machine hits all of them alike; the median over rounds is reported. Also: images/s of the
digits UNet and MLP and the process's peak resident memory (on a GPU also its peak allocated
memory; each timed step then ends with a device synchronisation). The model is called through
:class:`ambient.graphs.GraphedInference`, as ``ambient train`` calls it: on a GPU the calls
without autograd (the consistency term's own draws) replay CUDA graphs, and the default's row
is timed once more without them; on the CPU it passes every call through.

    python benchmarks/step_cost.py                  # writes benchmarks/results/step_cost.md
    python benchmarks/step_cost.py --device cuda --out benchmarks/results/step_cost_gpu.md
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from ambient.data.digits import load_digits
from ambient.defaults import DEFAULT_WEIGHT_CAP, defaults_summary
from ambient.evaluate.report import command_line
from ambient.graphs import GraphedInference
from ambient.losses import RefitMemory
from ambient.nets import build_denoiser
from ambient.objective import ObjectiveConfig, training_loss
from consistency_ablation import VARIANTS, variant_objective
from pages import page

OBJECTIVES = {  # the plain objectives, then every option of the consistency ablation
    "DSM": ObjectiveConfig(method="dsm"),
    "ambient": ObjectiveConfig(weight_cap=DEFAULT_WEIGHT_CAP),
    "SURE": ObjectiveConfig(method="sure"),
    # (left out: the weight-cap variants and those that only change the term's weight, which
    # scale the ambient loss or the term, not the work)
    **{name.strip(): variant_objective(name)
       for name, (method, _, overrides, objective) in VARIANTS.items()
       if method == "ambient" and overrides is not None and "weight_cap" not in objective
       and set(overrides) != {"weight"}},
}
DEFAULT = "ambient + consistency (default: own samples)"


def time_steps(net_kind: str, batch: int, rounds: int, device: torch.device) -> dict[str, float]:
    y = (load_digits("train") + 0.2 * torch.randn(1438, 1, 8, 8)).to(device)
    sigma_n = torch.full((len(y),), 0.2, device=device)
    torch.manual_seed(0)
    model = build_denoiser((1, 8, 8), kind=net_kind).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    graphed = GraphedInference(model)
    runs = {name: (cfg, graphed) for name, cfg in OBJECTIVES.items()}
    memories = {name: RefitMemory() for name in runs}  # as `ambient train` keeps one per run
    if device.type == "cuda":
        runs[f"{DEFAULT}, without CUDA graphs"] = (OBJECTIVES[DEFAULT], model)
    times: dict[str, list[float]] = {k: [] for k in runs}
    g = torch.Generator(device).manual_seed(0)
    for r in range(rounds + 2):
        for name, (cfg, denoiser) in runs.items():
            idx = torch.randint(len(y), (batch,), generator=g, device=device)
            start = time.perf_counter()
            loss, _ = training_loss(denoiser, y[idx], sigma_n[idx], cfg, g, memories[name])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r >= 2:  # warm-up rounds excluded
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=page("step_cost.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (f"{args.threads} CPU threads" if device.type == "cpu"
             else f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    rerun = command_line("benchmarks/step_cost.py")
    lines = [f"Digits (8x8) at sigma_n = 0.2, batch {args.batch}, median of {args.rounds} "
             f"interleaved rounds, {where}. {defaults_summary()}",
             "",
             f"Rerun: `{rerun}`", "",
             "| network | objective | ms / step | ratio to DSM | images / s |",
             "|---|---|---:|---:|---:|"]
    for kind in ("unet", "mlp"):
        med = time_steps(kind, args.batch, args.rounds, device)
        for name, sec in med.items():
            lines.append(f"| {kind} | {name} | {sec * 1e3:.1f} | {sec / med['DSM']:.2f} | "
                         f"{args.batch / sec:.0f} |")
        print("\n".join(lines[-len(med):]), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += ["", f"Peak resident memory of the benchmark process: {peak:.0f} MiB."]
    if device.type == "cuda":
        lines[-1] += f" Peak GPU memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB."
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
