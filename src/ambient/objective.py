"""The training objective: ambient (or DSM / SURE) loss plus the consistency loss, on one batch.

Network evaluations per training step on a batch of ``B`` samples (``f`` = consistency
sub-batch fraction, ``k`` = chain steps, ``K`` = substeps):

========================================  ============================  ======================
objective                                 forward evaluations (samples)  backward passes through
========================================  ============================  ======================
DSM / naive DSM                           B                              B
ambient                                   B                              B
SURE                                      2B                             2B
ambient + SURE at the data (share u)      B + 2uB                        B + 2uB
ambient + consistency, start="data"       B + fB(k + 1 + 2K)             B + fB (single_backward)
ambient + consistency, start="ambient"    B + 2KfB (teacher shared)      B + fB (single_backward)
ambient + consistency, target="samples"   B + fB(K + 2)                  B + fB
  with extrapolate > 0 (share e)          B + (1 + e)fB(K + 2)           B + (1 + e)fB
========================================  ============================  ======================

(With ``extrapolate`` and a :class:`ambient.losses.RefitMemory`, as ``ambient train`` keeps, the
two sets of draws run as one ODE solve on ``(1 + e)fB`` rows; without one, as two in a row.)

(All but ``fB`` of the consistency evaluations run without a graph; with
``single_backward=False`` the backward covers ``B + 2fB`` samples; ``teacher_grad`` adds the
teacher's ``fB``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from ambient.errors import AmbientError
from ambient.losses import (
    Denoiser,
    RefitMemory,
    ambient_loss,
    consistency_loss,
    edm_weight,
    own_sample_loss,
    sample_log_normal,
    sample_sigma_above,
    sure_loss,
)
from ambient.samplers import EDM_RHO, reverse_step


@dataclass
class ConsistencyConfig:
    """How the consistency loss is drawn (see :func:`consistency_term`)."""

    weight: float = 0.0  # multiplier of the consistency term; 0 switches it off
    fraction: float = 0.25  # share of the batch (noisy samples only) used for the term
    start: Literal["data", "ambient"] = "data"  # where the state x at level sigma comes from
    chain_steps: int = 4  # start="data": no-grad ancestral steps of the model from sigma_n to sigma
    # sigma' = sigma(1 - step), or log-uniform below sigma_n; "samples": DSM below sigma_n on the
    # model's own ODE draws from the data lifted to lift * sigma_n (own_sample_loss; ignores
    # start, chain_steps, step, teacher_grad and single_backward)
    target: Literal["step", "below", "samples"] = "step"
    step: float = 0.05  # relative step size for target="step"
    substeps: int = 1  # ancestral substeps of each draw (no graph); "samples": ODE steps
    lift: float = 1.1  # target="samples": the draws start at lift * sigma_n
    # target="samples": levels of the draws' ODE, geometric or EDM's rho = 7 (see own_sample_loss)
    schedule: Literal["geometric", "edm"] = "geometric"
    # target="samples": over-relaxation beta of the refit, DSM on the signed law
    # (1 + beta) q - beta q_prev of the draws and of draws one refit behind (own_sample_loss)
    extrapolate: float = 0.0
    # share of the term's rows that carry the draws behind (times 1 / share on them, the same
    # expectation at fewer draws; own_sample_loss's share)
    extrapolate_share: float = 1.0
    # target="samples": the draws stop at stop * sigma' and the term is the ambient loss from
    # there (own_sample_loss's stop; 0: the draws end at 0 and the term is DSM)
    stop: float = 0.0
    warmup: float = 0.0  # share of the training steps before the term switches on (warm start)
    sigma_min: float = 0.002  # lowest level trained by consistency
    weighting: Literal["none", "edm"] = "none"  # "edm": times lambda(sigma') / lambda(sigma_n)
    # law of the levels drawn below sigma_n: log-uniform, the objective's training log-normal
    # (p_mean, p_std) truncated below sigma_n, or "mixed": either, half the rows each (draw_levels)
    levels: Literal["log-uniform", "log-normal", "mixed"] = "log-uniform"
    teacher_grad: bool = False  # let gradients reach the teacher D(x, sigma)
    single_backward: bool = True  # gradient through one draw (doubled), second draw without graph

    def validate(self, prefix: str = "objective.consistency") -> None:
        """Raise :class:`AmbientError` naming the first field with an impossible value."""
        checks = [("weight", self.weight >= 0, ">= 0 (0 switches consistency off)"),
                  ("fraction", 0 < self.fraction <= 1, "in (0, 1]"),
                  ("chain_steps", self.chain_steps >= 0, ">= 0"),
                  ("step", 0 < self.step < 1, "in (0, 1)"),
                  ("substeps", self.substeps >= 1, ">= 1"),
                  ("lift", self.lift >= 1, ">= 1 (the draws start at or above sigma_n)"),
                  ("extrapolate", self.extrapolate >= 0, ">= 0 (0: plain refit)"),
                  ("extrapolate_share", 0 < self.extrapolate_share <= 1, "in (0, 1]"),
                  ("stop", 0 <= self.stop < 1 and (self.stop == 0 or self.extrapolate == 0),
                   "in [0, 1), and 0 with extrapolate > 0"),
                  ("sigma_min", self.sigma_min > 0, "> 0"),
                  ("warmup", 0 <= self.warmup < 1, "in [0, 1)"),
                  ("schedule", self.schedule in ("geometric", "edm"), "'geometric' or 'edm'"),
                  ("levels", self.levels in ("log-uniform", "log-normal", "mixed"),
                   "'log-uniform', 'log-normal' or 'mixed'")]
        for name, ok, rule in checks:
            if not ok:
                raise AmbientError(f"{prefix}.{name} must be {rule}, got {getattr(self, name)}")


@dataclass
class ObjectiveConfig:
    """The loss of one training step."""

    method: Literal["ambient", "dsm", "sure"] = "ambient"  # dsm treats data as clean (naive baseline)
    sigma_data: float = 0.5  # EDM data scale used by the weighting
    p_mean: float = -1.2  # log-normal training levels: mean of ln sigma
    p_std: float = 1.2  # log-normal training levels: std of ln sigma
    sigma_max: float = 80.0  # largest training level
    weight_cap: float = 1.0  # ambient weighting: 1 = paper's; >1 caps the x0-space factor 1/r^2
    # method "ambient": weight of a SURE term at the data level (sure_at_data; 0 = off) and the
    # share of the noisy rows it is drawn on; only for noisy sets far larger than the network
    # can memorise (on 1438 digits it fits their noise: benchmarks/results/digits_sure_fit.md)
    sure_weight: float = 0.0
    sure_fraction: float = 0.25
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def validate(self) -> None:
        """Raise :class:`AmbientError` naming the first field with an impossible value."""
        if not (math.isfinite(self.weight_cap) and self.weight_cap >= 1):
            raise AmbientError(f"objective.weight_cap must be finite and >= 1, got {self.weight_cap}")
        for name in ("sigma_data", "p_std", "sigma_max"):
            if not getattr(self, name) > 0:
                raise AmbientError(f"objective.{name} must be > 0, got {getattr(self, name)}")
        if not (math.isfinite(self.sure_weight) and self.sure_weight >= 0):
            raise AmbientError(f"objective.sure_weight must be finite and >= 0 (0 switches the "
                               f"SURE term off), got {self.sure_weight}")
        if not 0 < self.sure_fraction <= 1:
            raise AmbientError(f"objective.sure_fraction must be in (0, 1], got "
                               f"{self.sure_fraction}")
        self.consistency.validate()


def consistency_at(cfg: ConsistencyConfig, step: int, total_steps: int) -> ConsistencyConfig:
    """The consistency settings in force at 0-based training step ``step`` of ``total_steps``:
    switched off (weight 0) while ``step < warmup * total_steps``, then ``cfg``. The warm start
    lets the model first learn ``D`` above sigma_n, so that its own draws, the targets of the
    consistency term, start from its extrapolation below sigma_n rather than from noise."""
    return replace(cfg, weight=0.0) if step < cfg.warmup * total_steps else cfg


def log_uniform(lo: Tensor, hi: Tensor, generator: torch.Generator | None) -> Tensor:
    """Per-element levels drawn log-uniformly in ``(lo, hi)``."""
    u = torch.rand(lo.shape, generator=generator, device=lo.device, dtype=lo.dtype)
    return torch.exp(torch.log(lo) + u * (torch.log(hi) - torch.log(lo)))


def draw_levels(lo: Tensor, hi: Tensor, cfg: ConsistencyConfig, generator: torch.Generator | None,
                p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """Per-element consistency levels in ``(lo, hi)``: log-uniform (``cfg.levels``
    "log-uniform"), or EDM's log-normal ``ln sigma ~ N(p_mean, p_std^2)`` truncated to
    ``(lo, hi)`` ("log-normal": below sigma_n the term then sees the levels with the density
    that DSM on clean data trains them with, instead of spending about half its rows below
    ``10 * sigma_min``, where ``D(x, sigma) ~ x`` leaves little to learn), or "mixed": each
    element from one of the two with probability 1/2, the density ``(p_lognormal + p_loguniform)
    / 2`` (the log-normal's rows near sigma_n, the log-uniform's down to ``lo``)."""
    if cfg.levels == "log-uniform":
        return log_uniform(lo, hi, generator)
    sigma = sample_log_normal(lo, hi, p_mean, p_std, generator)
    sigma = torch.minimum(torch.maximum(sigma, lo), hi).to(lo.dtype)
    if cfg.levels == "log-normal":
        return sigma
    pick = torch.rand(lo.shape, generator=generator, device=lo.device) < 0.5
    return torch.where(pick, sigma, log_uniform(lo, hi, generator))


@torch.no_grad()
def run_chain(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor,
    sigma: Tensor,
    steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``x`` at per-sample level ``sigma <= sigma_n`` by running the model's own ancestral
    chain from the data ``y`` (at ``sigma_n``) in ``steps`` geometric steps, without a graph."""
    x = y
    ratio = sigma / sigma_n
    for i in range(steps):
        hi = sigma_n * ratio ** (i / steps)
        lo = sigma_n * ratio ** ((i + 1) / steps)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = reverse_step(x, denoiser(x, hi), hi, lo, 1.0, noise)
    return x


def pick_rows(sigma_n: Tensor, fraction: float, floor: float,
              generator: torch.Generator | None = None) -> Tensor:
    """Indices of a sub-batch: ``ceil(fraction * m)`` of the ``m`` samples whose level is above
    ``floor`` (clean samples need no consistency or SURE), drawn at random."""
    eligible = torch.nonzero(sigma_n > floor).flatten()
    count = math.ceil(fraction * eligible.numel())
    order = torch.randperm(eligible.numel(), generator=generator, device=eligible.device)
    return eligible[order[:count].to(eligible.device)]


def consistency_rows(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor,
    cfg: ConsistencyConfig,
    ambient: tuple[Tensor, Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    sigma_data: float = 0.5,
    sigma_floor: float = 0.0,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    memory: RefitMemory | None = None,
) -> Tensor:
    """Per-sample consistency loss of every row of ``y`` (VE levels ``sigma_n > 0``). Every level
    below is drawn by :func:`draw_levels` (``cfg.levels``; "law" below), ``p_mean`` and ``p_std``
    being the objective's training log-normal.

    start="data": sigma ~ law(floor, sigma_n), x from :func:`run_chain` (as the
    theorem states: states of the model's own reverse process started at the data).
    start="ambient": ``ambient = (x, sigma, D(x, sigma))`` of the ambient loss (shared teacher).
    Then sigma' = sigma (1 - step) (target="step") or law(floor, min(sigma, sigma_n))
    (target="below"), and :func:`ambient.losses.consistency_loss` from (x, sigma) to sigma'.
    ``floor = max(cfg.sigma_min, sigma_floor)``. weighting="edm" multiplies the loss by
    ``lambda(sigma') / lambda(sigma_n)`` (EDM weight), so that errors at small levels count as
    much, in the network's output scale, as at the data level.

    target="samples" instead: sigma' ~ law(floor, sigma_n) and
    :func:`ambient.losses.own_sample_loss` (DSM on the model's own draws from ``y``; ``memory``
    keeps the draws between steps for ``cfg.extrapolate > 0``)."""
    lowest = max(cfg.sigma_min, sigma_floor)
    floor = torch.full_like(sigma_n, lowest)
    if cfg.target == "samples":
        sigma_next = draw_levels(floor, sigma_n, cfg, generator, p_mean, p_std)
        rho = math.inf if cfg.schedule == "geometric" else EDM_RHO
        loss = own_sample_loss(denoiser, y, sigma_n, sigma_next, cfg.lift, cfg.substeps,
                               lowest, sigma_data, generator, rho, cfg.extrapolate, memory,
                               cfg.extrapolate_share, cfg.stop).loss
        return _weighted(loss, sigma_next, sigma_n, cfg, sigma_data)
    teacher = None
    if cfg.start == "data":
        sigma = draw_levels(floor, sigma_n, cfg, generator, p_mean, p_std)
        x = run_chain(denoiser, y, sigma_n, sigma, cfg.chain_steps, generator)
    elif ambient is None:
        raise ValueError("consistency start='ambient' needs the ambient loss's x, sigma, denoised")
    else:
        x, sigma, teacher = ambient
    if cfg.target == "step":
        sigma_next = sigma * (1 - cfg.step)
    else:
        sigma_next = draw_levels(floor, torch.minimum(sigma, sigma_n), cfg, generator, p_mean,
                                 p_std)
    loss = consistency_loss(denoiser, x, sigma, sigma_next, teacher=teacher,
                            teacher_grad=cfg.teacher_grad, single_backward=cfg.single_backward,
                            substeps=cfg.substeps, generator=generator).loss
    return _weighted(loss, sigma_next, sigma_n, cfg, sigma_data)


def _weighted(loss: Tensor, sigma_next: Tensor, sigma_n: Tensor, cfg: ConsistencyConfig,
              sigma_data: float) -> Tensor:
    if cfg.weighting == "edm":
        return loss * edm_weight(sigma_next, sigma_data) / edm_weight(sigma_n, sigma_data)
    return loss


def consistency_term(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor,
    cfg: ConsistencyConfig,
    ambient: tuple[Tensor, Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    sigma_data: float = 0.5,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    memory: RefitMemory | None = None,
) -> Tensor | None:
    """:func:`consistency_rows` on the sub-batch :func:`pick_rows` draws (``cfg.fraction`` of the
    rows above ``cfg.sigma_min``), or None if the batch has no noisy sample."""
    pick = pick_rows(sigma_n, cfg.fraction, cfg.sigma_min, generator)
    if pick.numel() == 0:
        return None
    rows = None if ambient is None else (ambient[0][pick], ambient[1][pick], ambient[2][pick])
    return consistency_rows(denoiser, y[pick], sigma_n[pick], cfg, rows, generator, sigma_data,
                            p_mean=p_mean, p_std=p_std, memory=memory)


def sure_at_data(denoiser: Denoiser, y: Tensor, sigma_n: Tensor, fraction: float,
                 sigma_data: float = 0.5,
                 generator: torch.Generator | None = None) -> Tensor | None:
    """Per-row SURE at the data's own level on ``fraction`` of the noisy rows (None if none):

        lambda(s) * SURE(D(., s); y),   E[SURE] = E||D(y, s) - x0||^2 / d

    (:func:`ambient.losses.sure_loss`, ``lambda`` the EDM weight). The ambient loss trains
    ``D(., sigma)`` only above ``s``, with a weight that vanishes as ``sigma -> s``; this term
    trains ``D(., s)`` itself, without bias, from the noisy data alone. That is the level where
    the own-sample draws take their first step (lift 1). Two forward evaluations with a graph
    per row. SURE is unbiased only for a denoiser not fitted to the noise it is scored on: a
    network that can memorise the noisy set learns to game it (on 1438 noisy digits the
    training SURE goes negative and the true error at ``s`` rises past the noisy input's;
    ``benchmarks/results/digits_sure_fit.md``)."""
    pick = pick_rows(sigma_n, fraction, 0.0, generator)
    if pick.numel() == 0:
        return None
    s = sigma_n[pick]
    probe = torch.randn(y[pick].shape, generator=generator, device=y.device, dtype=y.dtype)
    return sure_loss(denoiser, y[pick], s, probe).loss * edm_weight(s, sigma_data)


def training_loss(
    denoiser: Denoiser,
    y: Tensor,
    sigma_n: Tensor,
    cfg: ObjectiveConfig,
    generator: torch.Generator | None = None,
    memory: RefitMemory | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss of one step and its detached parts for logging (no device sync here).
    ``memory``: kept by the caller between steps (:class:`ambient.losses.RefitMemory`).

    ambient: ``mean(ambient_loss) + weight * mean(consistency)``; dsm: the data treated as clean
    (the oracle on clean data, the naive baseline on noisy data); sure: SURE at sigma_n."""
    if cfg.method == "sure":
        loss = sure_loss(denoiser, y, sigma_n).loss.mean()
        return loss, {"loss": loss.detach(), "sure": loss.detach()}
    levels = torch.zeros_like(sigma_n) if cfg.method == "dsm" else sigma_n
    sigma = sample_sigma_above(levels, cfg.p_mean, cfg.p_std, cfg.sigma_max, generator)
    noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    amb = ambient_loss(denoiser, y, levels, sigma, noise, cfg.sigma_data, cfg.weight_cap)
    loss = amb.loss.mean()
    stats = {"ambient" if cfg.method == "ambient" else "dsm": loss.detach()}
    if cfg.method == "ambient" and cfg.sure_weight > 0:
        sure = sure_at_data(denoiser, y, sigma_n, cfg.sure_fraction, cfg.sigma_data, generator)
        if sure is not None:
            loss = loss + cfg.sure_weight * sure.mean()
            stats["sure"] = sure.mean().detach()
    cons_cfg = cfg.consistency
    if cfg.method == "ambient" and cons_cfg.weight > 0:
        cons = consistency_term(denoiser, y, sigma_n, cons_cfg, (amb.x, amb.sigma, amb.denoised),
                                generator, cfg.sigma_data, cfg.p_mean, cfg.p_std, memory)
        if cons is not None:
            cons_mean = cons.mean()
            loss = loss + cons_cfg.weight * cons_mean
            stats["consistency"] = cons_mean.detach()
    stats["loss"] = loss.detach()
    return loss, stats
