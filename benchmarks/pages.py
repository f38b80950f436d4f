"""Where the benchmark pages go: ``benchmarks/results/`` of this checkout, from any working
directory (a default ``--out`` relative to the working directory wrote pages run from inside
``benchmarks/`` into ``benchmarks/benchmarks/results/``). An ``--out`` given on the command line
is a path as typed, relative to the working directory."""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def page(name: str) -> Path:
    """The default ``--out`` of a benchmark script: ``benchmarks/results/NAME``."""
    return RESULTS / name
