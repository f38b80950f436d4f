"""The report of ``ambient evaluate RUN --report DIR``: a run at a glance.

``DIR/report.md`` and ``report.html`` show, from :class:`ambient.evaluate.runs.RunMetrics` and
the run's own files: the training curve (``metrics.jsonl``: the loss and each of its terms,
log scale), the samples of each sampling mode (an image grid, or a scatter of vectors), the
sample metrics table, the one-step denoising MSE against the level (images and user data) or
the excess denoising error (Gaussian mixtures), both with the data's ``sigma_n`` marked, and
``metrics.json``: the same figures as the command prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ambient.engine import RECORD_FIELDS
from ambient.errors import AmbientError
from ambient.evaluate.plots import plot_denoising, plot_excess_error, plot_points, plot_training
from ambient.evaluate.report import Report
from ambient.evaluate.runs import RunMetrics
from ambient.files import atomic_write_text
from ambient.images import save_grid

_MODES = {"reference": "the clean data the samples are scored against",
          "full": "full sampling (to sigma = 0)",
          "truncated": "truncated sampling (stopped at sigma_n: E[x0 | x_sigma_n])"}


def metrics_dict(metrics: RunMetrics) -> dict[str, Any]:
    """The figures of ``metrics`` as JSON-ready dicts (levels as strings): what ``ambient
    evaluate`` prints and ``--out`` / ``--report`` write."""
    return {"samples": metrics.samples,
            "excess_denoising_error": {str(k): v for k, v in metrics.excess.items()},
            "denoising_mse": {str(k): v for k, v in metrics.denoising.items()}}


def read_training_log(run_dir: Path) -> dict[str, dict[float, float]]:
    """``{name: {step: value}}`` of the loss and its terms from ``run_dir/metrics.jsonl``
    (empty when the run logged nothing). A line cut short by a kill is skipped; a line that is
    not a JSON record is an error naming the file and the line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    curves: dict[str, dict[float, float]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # the last line of a killed run may be cut short
                continue
            raise AmbientError(f"{path}, line {number}: not a JSON record ({err}); fix: delete "
                               "the line (the training curve only)") from err
        if not isinstance(record, dict) or "step" not in record:
            raise AmbientError(f"{path}, line {number}: a record needs a 'step' field; fix: "
                               "delete the line (the training curve only)")
        for name, value in record.items():
            if name not in RECORD_FIELDS and isinstance(value, int | float) and math.isfinite(value):
                curves.setdefault(name, {})[float(record["step"])] = float(value)
    return curves


def write_run_report(run_dir: Path, config: dict[str, Any], metrics: RunMetrics,
                     out: Path) -> Path:
    """Write ``out/report.md`` (and ``.html``, the PNGs and ``metrics.json``); returns the
    markdown's path."""
    out = Path(out)
    sigma_n = float(config["sigma_n"]["max"])
    shape = tuple(config["sample_shape"])
    step = config.get("checkpoint", {}).get("step")
    report = Report(f"ambient evaluate: {Path(run_dir).name}")
    report.text(f"Run {run_dir}, data {config.get('source', '?')} "
                f"({config.get('num_examples', '?')} samples of shape {list(shape)}, noise level "
                f"sigma_n up to {sigma_n:g}), checkpoint of step {step}, EMA weights.")

    curves = read_training_log(run_dir)
    if curves:
        report.heading("Training")
        report.image(plot_training(curves, out / "training.png", "training loss and its terms"),
                     "the loss and its terms, as logged in metrics.jsonl")

    if metrics.drawn:
        report.heading("Samples")
        reference = {} if metrics.reference is None else {"reference": metrics.reference}
        for mode, drawn in {**reference, **metrics.drawn}.items():
            label = _MODES.get(mode, mode)
            if len(shape) == 3:
                path = save_grid(drawn[:64].clamp(-1, 1), out / f"samples_{mode}.png")
            else:
                path = plot_points(drawn, out / f"samples_{mode}.png", label)
            first = ", the first 64 shown" if len(shape) == 3 and len(drawn) > 64 else ""
            report.image(path, f"{label}: {len(drawn)} samples{first}")
        if metrics.samples:
            report.table([{"sampling": mode, **scores} for mode, scores in metrics.samples.items()])

    if metrics.denoising:
        report.heading("Denoising")
        report.image(plot_denoising({"D(x0 + sigma z, sigma)": metrics.denoising},
                                    out / "denoising.png", sigma_n),
                     "one-step denoising MSE of the reference data, per noise level")
        report.table([{"sigma": s, "mse": v} for s, v in metrics.denoising.items()])
    if metrics.excess:
        report.heading("Exactness")
        report.image(plot_excess_error({"this run": metrics.excess}, out / "excess_error.png",
                                       sigma_n=sigma_n or None),
                     "excess denoising error against the exact posterior mean (0 = exact)")
        report.table([{"sigma": s, "excess": v} for s, v in metrics.excess.items()])

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics_dict(metrics), indent=2) + "\n")
    return report.write(out)
