"""Default training settings, by kind of data.

The default on noisy data is the paper's exact method: ambient loss above sigma_n plus the
consistency loss below it (its settings are the ones chosen by the consistency benchmark,
``benchmarks/consistency_ablation.py``). On clean data the consistency term finds no noisy
sample and costs nothing, so the same config is plain EDM training.
"""

from __future__ import annotations

import re
from dataclasses import fields, replace

from ambient.engine import EngineConfig
from ambient.objective import ConsistencyConfig, ObjectiveConfig
from ambient.train import TrainConfig

# Chosen by benchmarks/consistency_ablation.py and benchmarks/digits_benchmark.py (see
# benchmarks/RESULTS.md): consistency as a fixed point. On a quarter of the batch the model's own
# probability-flow ODE (6 geometric steps of a 2nd-order multistep solver) takes the data itself
# (lift 1: an exact draw of p_{sigma_n}, so the draws use the model only at and below sigma_n)
# to 0, and the DSM loss on those draws trains D below sigma_n (ambient.losses.own_sample_loss),
# from half-way through training on (warm start). Lift 1 beat the previous 1.1 sigma_n (fresh
# noise first, so the draws passed through the ambient-trained model just above sigma_n, where
# it is least accurate) on every mixture figure at 6000 steps (covariance error 0.257 vs 0.315
# at sigma_n = 0.15, 1.85 vs 2.26 at 0.3; benchmarks/results/consistency_lift*.md) and tied on
# the digits at 6000 steps (closes 0.73 vs 0.75 of the Frechet gap, seed 0); the choices below
# were measured with lift 1.1. The own-sample term beat the
# two-draw estimator (start="ambient", target="below", 6 substeps) at every sigma_n of the
# mixture benchmark and on digits (options page). With lift 1 the EDM schedule without warm
# start (the previous default) scores a little better on digits at 1500 steps on the options
# page's one seed (Frechet 4.65 vs 4.83 clamped), within the seeds' spread of about 0.5. Fewer
# ODE steps (3) score better at the benchmarks' small budget but shrink the draws at the fixed
# point (benchmarks/consistency_probes.py, 1b) and fall behind when the network is trained
# longer (benchmarks/consistency_seeds.py at 6000 steps), so 6 stays. Without the warm start
# the term scores 5-10% better at the benchmarks' 1500 steps but ties at 6000, and a run costs
# about 2.2x a DSM run instead of 1.6x, so the warm start stays. The levels sigma' of the
# term follow the objective's log-normal truncated below sigma_n (levels="log-normal"): on the
# mixture over three seeds it beats log-uniform levels at every sigma_n on the covariance error
# (0.65 vs 1.06, 2.56 vs 3.26, 12.5 vs 13.9 at sigma_n = 0.15, 0.3, 0.6) and the excess errors
# below sigma_n (benchmarks/results/consistency_levels.md): log-uniform levels spend about half the
# term's rows below 10 sigma_min, where D(x, sigma) ~ x leaves little to learn.
# Ending the ODE at sigma 0.005 instead of sigma_min 0.002 (same calls) wins on the mixture with
# 8x the data (0.177 vs 0.199 at sigma_n = 0.15, 1.68 vs 1.86 at 0.3; consistency_points_steps.md)
# and ties at 1500 steps, but closes less of the digits' Frechet gap at 6000 steps on all three
# seeds (0.70, 0.53, 0.66 vs 0.73, 0.60, 0.71; digits_unet_6000_sigma_min_s*.md), so 0.002 stays.
# 8 ODE steps instead of 6 (2.36x a DSM step against 2.16x) do the same: 0.188 / 1.68 on the
# mixture, but 0.70, 0.60, 0.68 of the digits' gap (digits_unet_6000_8_steps_s*.md), so 6 stay.
# The extrapolated refit (extrapolate=1, DSM on the signed law 2 q - q_prev) errs less on the
# mixture with 8x the data on the default's rows (0.176 / 1.40 vs 0.199 / 1.86) but costs 2.74x
# a DSM step. On half the rows (the default's cost) it loses at sigma_n = 0.15 over eight seeds
# (0.271 vs 0.219; consistency_points_seeds.md). With draws behind for half the default's rows
# (extrapolate_share=0.5, 2.42x) it ties at 0.15 over eight seeds (0.223 vs 0.219) and wins at
# 0.3 (1.24 vs 1.86, two seeds; consistency_points_steps.md): the leading candidate for the
# default, not switched because switching means rerunning every page that trains the default
# (the digits pages at 6000 steps above all), which has not been done.
# Draws stopped at half the level with the ambient loss from there (stop=0.5, the default's
# calls) amplify the fit error less but train on a noisier target: better at 0.3 (1.44 vs 1.86,
# two seeds), worse at 0.15 (0.260 vs 0.199, two seeds) and 0.2 (0.649 vs 0.586, four seeds;
# consistency_points_sigma02.md), so stop stays 0.
DEFAULT_CONSISTENCY = ConsistencyConfig(weight=1.0, fraction=0.25, start="data", target="samples",
                                        substeps=6, lift=1.0, schedule="geometric", warmup=0.5,
                                        levels="log-normal")
# Ambient weighting lambda(sigma) * min(1/r^2, 10): learns D near sigma_n better than the
# paper's lambda * r^2 (which vanishes as sigma -> sigma_n), same measurement (1500 steps).
# Trained 6000 steps on the 1438 digits the paper's weighting (cap 1) denoises better at every
# level (benchmarks/results/digits_unet_6000_cap1_s*.md vs digits_unet_6000_s*.md): the large
# weights near sigma_n fit the noise there. Everywhere else cap 1 is worse with the default
# consistency: on the mixture at 1500 and 6000 steps (consistency_cap1*.md) and on the digits
# at 1500 steps (digits_unet_cap1.md), so the default stays 10.
DEFAULT_WEIGHT_CAP = 10.0


def default_train_config(data: str) -> TrainConfig:
    """Defaults for ``ambient train --data DATA`` before ``--config`` and flags apply."""
    engine = EngineConfig()
    net: dict[str, object] = {"kind": "auto"}
    if data.startswith("gmm"):
        engine = EngineConfig(steps=4000, batch_size=512, lr=2e-3)
        net = {"kind": "mlp", "hidden": 128, "depth": 3}
    elif data == "digits":
        engine = EngineConfig(steps=6000, batch_size=128, lr=1e-3, sample_every=1000)
        net = {"kind": "mlp", "hidden": 256, "depth": 4}
    objective = ObjectiveConfig(weight_cap=DEFAULT_WEIGHT_CAP,
                                consistency=replace(DEFAULT_CONSISTENCY))
    return TrainConfig(engine=engine, objective=objective, net=net)


def defaults_summary() -> str:
    """One line naming the objective settings of the defaults (for benchmark pages)."""
    objective = default_train_config("digits").objective
    consistency = ", ".join(f"{k}={v}" for k, v in vars(objective.consistency).items())
    return (f"Objective defaults used: ambient weight_cap={objective.weight_cap:g}; "
            f"consistency: {consistency}.")


def states_current_defaults(text: str) -> bool:
    """Whether ``text`` states the current defaults as :func:`defaults_summary` writes them. A
    consistency field missing from the statement was added after it was written; it matches
    where its current default is its dataclass default (the behaviour before it existed)."""
    found = re.search(r"Objective defaults used: ambient weight_cap=([^;]+); consistency: (.*?)\."
                      r"(?:\s|$)", text)
    objective = default_train_config("digits").objective
    if found is None or found[1] != f"{objective.weight_cap:g}":
        return False
    stated = dict(item.split("=", 1) for item in found[2].split(", "))
    before = {f.name: str(f.default) for f in fields(ConsistencyConfig)}
    current = {name: str(value) for name, value in vars(objective.consistency).items()}
    return set(stated) <= set(current) and all(stated.get(name, before[name]) == value
                                              for name, value in current.items())
