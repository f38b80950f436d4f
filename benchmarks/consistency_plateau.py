"""Where the own-sample fixed point settles: learning rate and ODE steps, with an exact teacher.

With the analytic posterior mean above sigma_n (``consistency_exact_teacher.py``) the default's
covariance error on the mixture at sigma_n = 0.15 stays well above the clean oracle's (the
exact-teacher pages). This trains that exact-teacher model at 6000 steps
with lower learning rates (less SGD noise in the model whose draws are the targets) and with 24
ODE steps instead of 6 (a more exact ODE: the 6-step geometric ODE shrinks the draws a little,
``consistency_probes.py`` part 1b), beside the learned default and the clean oracle at the
default and a lower learning rate. One seed (0); the rows at the default learning rate repeat
runs of the exact-teacher and budget pages.

    python benchmarks/consistency_plateau.py   # writes benchmarks/results/consistency_plateau.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ambient.defaults import default_train_config, defaults_summary
from ambient.evaluate.report import Report, command_line
from consistency_ablation import GMM, MAIN, QUICK_STEPS, run_variant, sampler_steps
from consistency_exact_teacher import run
from pages import page

SIGMA_N = 0.15
LOW_LR = 5e-4
# (model, learning rate or None for the default, ODE steps or None for the default)
PLAN = [("exact teacher", None, None), ("exact teacher", 1e-3, None),
        ("exact teacher", LOW_LR, None), ("exact teacher", 2.5e-4, None),
        ("exact teacher", LOW_LR, 24), ("learned", None, None), ("learned", LOW_LR, None),
        ("oracle", None, None), ("oracle", LOW_LR, None)]
COLUMNS = ["model", "lr", "ODE steps", "excess@sn/4", "excess@sn/2", "excess@sn", "cov_err",
           "width", "train+eval s"]


def plateau_row(model: str, lr: float | None, ode_steps: int | None, steps: int,
                root: Path, heun_steps: int) -> dict[str, object]:
    """One model of PLAN trained ``steps`` steps at SIGMA_N and scored like the ablation
    (sampled with ``heun_steps``)."""
    defaults = default_train_config("gmm")
    start = time.perf_counter()
    if model == "oracle":  # clean data: no consistency term, so no ODE steps
        row = run_variant(MAIN[0], SIGMA_N, steps, root, lr=lr, heun_steps=heun_steps)
    else:
        row = run(model, SIGMA_N, steps, root, lr=lr, ode_steps=ode_steps, heun_steps=heun_steps)
    return {**row, "model": model, "lr": lr or defaults.engine.lr,
            "ODE steps": "-" if model == "oracle" else
            ode_steps or defaults.objective.consistency.substeps,
            "train+eval s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_STEPS} steps")
    parser.add_argument("--out", default=page("consistency_plateau.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = QUICK_STEPS if args.quick else 6000
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for model, lr, ode_steps in PLAN:
            rows.append(plateau_row(model, lr, ode_steps, steps, Path(tmp),
                                    sampler_steps(args.quick)))
            print(rows[-1], flush=True)
    report = Report("The own-sample fixed point's plateau: learning rate and ODE steps")
    rerun = command_line("benchmarks/consistency_plateau.py", argv)
    report.text(f"Rerun: `{rerun}`. "
                f"{sum(float(r['train+eval s']) for r in rows):.0f} s on one CPU thread. Mixture {GMM} "
                f"at sigma_n = {SIGMA_N:g}, {steps} steps of batch 512, seed 0, the default "
                f"objective; 'exact teacher': the analytic posterior mean above sigma_n (see "
                f"the exact-teacher pages); 'oracle': DSM on the clean data. "
                f"{__doc__.split(chr(10) + chr(10))[1]} {defaults_summary()}")
    report.table(rows, COLUMNS)
    return report.write(Path(args.out), html=False)


if __name__ == "__main__":
    main()
