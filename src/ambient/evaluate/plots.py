"""PNG figures for reports (matplotlib's Agg canvas through ``Figure``: no pyplot, no display,
no global state). Every function writes one file, creating its folder, and returns its path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import Tensor

from ambient.images import to_uint8


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_lines(
    series: Mapping[str, Mapping[float, float]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    vline: float | None = None,
    vline_label: str | None = None,
    markers: bool = True,
) -> Path:
    """One line per named series ``{x: y}`` (sorted by x; with ``markers``, a dot at each point),
    optional vertical line."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o" if markers else None, label=name)
    if vline is not None:
        ax.axvline(vline, color="gray", linestyle="--", label=vline_label)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    levels = sorted({x for points in series.values() for x in points})
    if logx and len(levels) <= 12:  # label the measured levels, not the log axis's minor ticks
        ax.set_xticks(levels, [f"{x:g}" for x in levels])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_points(x: Tensor, path: str | Path, title: str | None = None) -> Path:
    """Vectors ``[N, D]`` at a glance: a scatter of coordinates 0 and 1 (D >= 2; the axes name
    them, and the title says when there are more), or a histogram (D = 1)."""
    values = x.detach().reshape(len(x), -1).double().cpu().numpy()
    dim = values.shape[1]
    fig = Figure(figsize=(5, 5) if dim >= 2 else (6, 4))
    ax = fig.subplots()
    if dim >= 2:
        ax.scatter(values[:, 0], values[:, 1], s=4, alpha=0.5, linewidths=0)
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.set_aspect("equal", adjustable="datalim")
    else:
        ax.hist(values[:, 0], bins=min(100, max(10, len(values) // 20)))
        ax.set_xlabel("x[0]")
        ax.set_ylabel("count")
    suffix = f" (coordinates 0 and 1 of {dim})" if dim > 2 else ""
    ax.set_title(f"{title or f'{len(values)} samples'}{suffix}")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_excess_error(
    curves: Mapping[str, Mapping[float, float]],
    path: str | Path,
    sigma_n: float | None = None,
    title: str = "Excess denoising error vs noise level",
) -> Path:
    """Excess denoising error ``{sigma: excess}`` per method, log-log, with the data's noise
    level ``sigma_n`` marked (non-positive values are clipped to 1e-12 for the log axis)."""
    clipped = {name: {s: max(v, 1e-12) for s, v in c.items()} for name, c in curves.items()}
    return plot_lines(clipped, path, "sigma", "E|D - E[x0|x]|^2 / MMSE", title=title, logx=True,
                      logy=True, vline=sigma_n,
                      vline_label=None if sigma_n is None else f"sigma_n = {sigma_n:g}")


def plot_denoising(
    mse: Mapping[str, Mapping[float, float]],
    path: str | Path,
    sigma_n: float | None = None,
) -> Path:
    """One-step denoising MSE ``{sigma: mse}`` per model, log-log, beside the MSE of returning
    the noisy input itself (``sigma^2``, for scale) and with the data's ``sigma_n`` marked."""
    levels = sorted({s for curve in mse.values() for s in curve})
    identity = {s: s**2 for s in levels}
    marked = sigma_n if sigma_n else None
    return plot_lines({**mse, "the noisy input itself (sigma^2)": identity}, path, "sigma",
                      "MSE against the clean data", title="one-step denoising error", logx=True,
                      logy=True, vline=marked,
                      vline_label=None if marked is None else f"sigma_n = {marked:g}")


def plot_training(losses: Mapping[str, Mapping[float, float]], path: str | Path,
                  title: str | None = None) -> Path:
    """Training curves ``{step: loss}`` (as logged: window averages); the y axis is logarithmic
    when the values are positive and span more than a decade; dots at the logged steps only when
    there are few."""
    few = max((len(curve) for curve in losses.values()), default=0) <= 40
    values = [v for curve in losses.values() for v in curve.values()]
    wide = bool(values) and min(values) > 0 and max(values) > 10 * min(values)
    return plot_lines(losses, path, "step", "loss (window average)", title=title, logy=wide,
                      markers=few)


def plot_bars(
    values: Mapping[str, float],
    path: str | Path,
    ylabel: str,
    title: str | None = None,
    logy: bool = False,
) -> Path:
    """One bar per named value, labelled with the value."""
    fig = Figure(figsize=(max(4.0, 1.2 * len(values)), 4))
    ax = fig.subplots()
    bars = ax.bar(list(values), list(values.values()))
    ax.bar_label(bars, fmt="%.3g")
    ax.set_yscale("log" if logy else "linear")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_similarity_histograms(
    sims: Mapping[str, Tensor | np.ndarray | Sequence[float]],
    path: str | Path,
    thresholds: Sequence[float] = (0.9, 0.95),
    title: str = "Similarity to the nearest training image",
) -> Path:
    """Overlaid histograms of nearest-neighbour similarities, one per method, with the copy
    thresholds marked and the fraction above the highest one in each legend entry."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    values = {name: np.asarray(torch.as_tensor(v).cpu(), dtype=float) for name, v in sims.items()}
    lo = min([*(v.min() for v in values.values() if v.size), *thresholds]) - 0.01
    bins = np.linspace(lo, 1.0, 41).tolist()
    top = max(thresholds)
    for name, v in values.items():
        ax.hist(v, bins=bins, alpha=0.5, label=f"{name} ({(v > top).mean():.1%} > {top:g})")
    for t in thresholds:
        ax.axvline(t, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_nearest_pairs(
    samples: Tensor,
    train_images: Tensor,
    nearest: Tensor,
    path: str | Path,
    sims: Tensor | None = None,
    num: int = 16,
    cols: int = 4,
) -> Path:
    """Grid of pairs: each sample (left) next to its nearest training image (right), titled with
    the similarity; the ``num`` most similar pairs when ``sims`` is given, else the first."""
    order = torch.arange(len(samples)) if sims is None else torch.argsort(sims, descending=True)
    order = order[:num]
    rows = max(1, -(-len(order) // cols))
    fig = Figure(figsize=(2.2 * cols, 1.3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, order.tolist(), strict=False):
        sample, train = samples[i].cpu(), train_images[int(nearest[i])].cpu()
        gap = torch.ones(*sample.shape[:-1], 1)  # one white column between the two
        pair = torch.cat([sample, gap, train], dim=-1)
        tile = to_uint8(pair[None])[0]
        ax.imshow(tile[..., 0] if tile.shape[-1] == 1 else tile, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        if sims is not None:
            ax.set_title(f"{float(sims[i]):.3f}", fontsize=8)
    fig.suptitle("sample | nearest training image", fontsize=9)
    return _save(fig, path)
