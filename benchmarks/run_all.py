"""Run every benchmark and assemble benchmarks/RESULTS.md from their outputs.

    python benchmarks/run_all.py              # all benchmarks (about 30 min on 2 CPU cores)
    python benchmarks/run_all.py --quick      # smoke versions (minutes)
    python benchmarks/run_all.py --assemble   # only rebuild RESULTS.md from benchmarks/results/
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SECTIONS = [  # (results file, title, script)
    ("step_cost.md", "Training-step cost (issue: training engine)", "step_cost.py"),
    ("consistency.md", "Gaussian-mixture exactness and consistency ablation", "consistency_ablation.py"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--assemble", action="store_true")
    args = parser.parse_args()
    if not args.assemble:
        for _, _, script in SECTIONS:
            cmd = [sys.executable, str(HERE / script)]
            if args.quick and script != "step_cost.py":
                cmd.append("--quick")
            subprocess.run(cmd, check=True)
    parts = ["# Benchmark results", "",
             "Every table below is written by the script named under it; rebuild this page with "
             "`python benchmarks/run_all.py` (or `--assemble` to only collect the outputs in "
             "benchmarks/results/). Figures are from one run on a shared 2-core CPU machine.", ""]
    for name, title, _ in SECTIONS:
        path = HERE / "results" / name
        parts += [f"## {title}", "", path.read_text(encoding="utf-8") if path.exists()
                  else f"(not run yet: {path} is missing)", ""]
    (HERE / "RESULTS.md").write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
