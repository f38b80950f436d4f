"""One-step denoising on held-out clean data (the analogue of the paper's Table 1):

    mse(sigma) = mean over images and pixels of (D(x0 + sigma z, sigma) - x0)^2

with the same seeded noise draw ``z`` at every sigma and for every model, so the rows of a
table differ only by the models. A model exact at ``sigma`` reaches the MMSE there; a model
trained without consistency is only trained above the data's noise level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def denoising_table(
    denoiser: Denoiser,
    clean: Tensor,
    sigmas: Sequence[float],
    seed: int = 0,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> dict[float, float]:
    """``{sigma: mse(sigma)}`` (formula in the module docstring) for clean images ``[N, ...]``;
    ``z`` is drawn once from ``seed``. ``D`` sees float32 batches on ``device``."""
    clean = clean.detach().float().cpu()
    z = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    table: dict[float, float] = {}
    for sigma in sigmas:
        total = 0.0
        for start in range(0, len(clean), batch_size):
            x0 = clean[start:start + batch_size]
            x = x0 + sigma * z[start:start + batch_size]
            levels = torch.full((len(x),), float(sigma), device=device)
            out = denoiser(x.to(device), levels).detach().cpu().double()
            total += (out - x0.double()).pow(2).sum().item()
        table[float(sigma)] = total / clean.numel()
    return table


def format_table(rows: Mapping[str, Mapping[float, float]], digits: int = 4) -> str:
    """Markdown table: one row per method, one column per sigma (the union of all sigmas;
    ``-`` where a method has no value), the lowest value of each column in bold."""
    sigmas = sorted({s for row in rows.values() for s in row})
    best = {s: min(row[s] for row in rows.values() if s in row) for s in sigmas}

    def cell(row: Mapping[float, float], s: float) -> str:
        if s not in row:
            return "-"
        text = f"{row[s]:.{digits}g}"
        return f"**{text}**" if len(rows) > 1 and row[s] == best[s] else text

    lines = ["| method | " + " | ".join(f"sigma={s:g}" for s in sigmas) + " |",
             "|---|" + "---:|" * len(sigmas)]
    lines += [f"| {name} | " + " | ".join(cell(row, s) for s in sigmas) + " |"
              for name, row in rows.items()]
    return "\n".join(lines) + "\n"
