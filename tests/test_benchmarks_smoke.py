"""Smoke runs of the digits, memorization and exact-teacher benchmarks (tiny budgets, into
tmp_path): each writes its results page with the expected rows and figures."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``benchmarks/NAME.py`` (the folder is not a package)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


def test_digits_benchmark_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("digits_benchmark", monkeypatch)
    out = bench.main(["--quick", "--steps", "5", "--num", "16", "--sigmas", "0.4",
                      "--out", str(tmp_path / "digits.md")])
    text = out.read_text(encoding="utf-8")
    assert out == tmp_path / "digits.md"
    assert "Rerun: `python benchmarks/digits_benchmark.py --quick --steps 5" in text
    for label in ("reference: the training digits themselves", "clean-data oracle",
                  "naive DSM on the noisy digits", "ambient, no consistency | truncated",
                  "ambient + consistency (default) | full"):
        assert label in text, label
    assert "| model | sigma_n | sigma=0.05 | sigma=0.1 | sigma=0.2 | sigma=0.4 | sigma=0.8 |" in text
    assert "| ambient + consistency (default) | 0.4 | *" in text  # levels below sigma_n marked
    assert "worst MSE / oracle MSE at levels above sigma_n (0.8)" in text
    pngs = {p.name for p in (tmp_path / "digits").glob("*.png")}
    assert {"data_sigma0.png", "oracle_sigma0_full.png",
            "ambient_no_consistency_sigma0.4_truncated.png"} <= pngs


def test_memorization_benchmark_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("memorization_benchmark", monkeypatch)
    out = bench.main(["--quick", "--steps", "5", "--num", "16", "--train-size", "32",
                      "--sigmas", "0.4", "--out", str(tmp_path / "memorization.md")])
    text = out.read_text(encoding="utf-8")
    assert "Rerun: `python benchmarks/memorization_benchmark.py --quick" in text
    for label in ("reference: held-out clean digits",
                  "clean-trained (DSM on the clean images) | unconditional",
                  "clean-trained (DSM on the clean images) | posterior, sigma_start=0.8",
                  "noisy-trained (ambient + consistency), sigma_n=0.4 | unconditional",
                  "reference: held-out digits at sigma_n=0.4", "fewer copies than the clean"):
        assert label in text, label
    assert "| model | test | mean_similarity | above_0.9 | above_0.95 | nearest_is_source |" in text
    pngs = {p.name for p in (tmp_path / "memorization").glob("*.png")}
    assert {"hist_unconditional.png", "hist_posterior.png", "hist_noisy_training_set.png",
            "pairs_sigma0_clean.png", "pairs_sigma0.4_noisy.png"} <= pngs


def test_exact_teacher_benchmark_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("consistency_exact_teacher", monkeypatch)
    out = bench.main(["--quick", "--out", str(tmp_path / "exact_teacher.md")])
    text = out.read_text(encoding="utf-8")
    assert "Rerun: `python benchmarks/consistency_exact_teacher.py --quick`" in text
    assert "| learned | 0.3 | 100 |" in text and "| exact teacher | 0.3 | 100 |" in text
    assert "| <= 1.25 sigma_n | 20 |" in text
