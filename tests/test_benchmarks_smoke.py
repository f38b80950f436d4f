"""Smoke run of every benchmark (``benchmarks/run_all.py --quick``, tiny budgets, into tmp_path):
each writes its page with the expected rows and figures, and RESULTS.md collects them all."""

from __future__ import annotations

import ast
import importlib
import math
from pathlib import Path

import pytest
import torch

from ambient.defaults import DEFAULT_CONSISTENCY, default_train_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_default_pages_do_not_depend_on_the_working_directory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every benchmark's default ``--out`` is ``pages.page(NAME)``, ``benchmarks/results/`` of
    this checkout: a default relative to the working directory (``"benchmarks/results/..."``)
    wrote the pages of a script run from inside ``benchmarks/`` into
    ``benchmarks/benchmarks/results/``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    pages = importlib.import_module("pages")
    assert pages.page("x.md") == BENCHMARKS / "results" / "x.md"
    where = {"add_shard_arguments": 1, "seed_arguments": 2}  # the position of their default page
    defaults = []
    for script in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not node.value.startswith("benchmarks/results/"), (script.name, node.value)
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name == "add_argument" and ast.unparse(node.args[0]) == "'--out'":
                defaults += [(script.name, ast.unparse(k.value)) for k in node.keywords
                             if k.arg == "default"]
            elif name in where and len(node.args) > where[name]:
                defaults.append((script.name, ast.unparse(node.args[where[name]])))
    passed_on = {("consistency_ablation.py", "out"), ("consistency_bands.py", "out")}
    assert len(defaults) >= 16
    for script, default in defaults:
        assert default.startswith("page(") or (script, default) in passed_on, (script, default)


def test_run_all_quick_writes_every_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the folder is not a package
    run_all = importlib.import_module("run_all")
    out = run_all.main(["--quick", "--quick-dir", str(tmp_path)])
    assert out == tmp_path / "RESULTS.md"
    results = out.read_text(encoding="utf-8")
    assert "not run yet" not in results
    for _, title, _ in run_all.SECTIONS:
        assert f"## {title}" in results, title
    assert "](./digits/data_sigma0.png)" in results  # image links point into the results folder
    # pages whose commands differ only in the budget or seeds --quick overrides run once
    for page, stand_in in [("digits_unet_6000_s1.md", "digits_unet.md"),
                           ("digits_unet_6000_cap1_s0.md", "digits_unet_cap1.md"),
                           ("digits_unet_6000_sigma_min_s2.md", "digits_unet_sigma_min.md"),
                           ("digits_unet_6000_8_steps_s1.md", "digits_unet_6000_8_steps_s0.md"),
                           ("digits_unet_6000_extrapolate_s2.md",
                            "digits_unet_6000_extrapolate_s0.md"),
                           ("digits_unet_6000_share_s0.md", "digits_unet_extrapolate.md")]:
        assert f"would repeat {stand_in}'s code" in (tmp_path / page).read_text(encoding="utf-8")
    assert "not run" not in (tmp_path / "consistency_cap1_budget.md").read_text(encoding="utf-8")
    unet = (tmp_path / "digits_unet.md").read_text(encoding="utf-8")
    assert "the network {'kind': 'unet'}" in unet
    assert "full sampling closes" in unet
    assert "| the clean training digits | - |" in unet and "(default), full | 0.2 |" in unet
    options = (tmp_path / "digits_unet_options.md").read_text(encoding="utf-8")
    assert "consistency, two draws | full" in options and "(previous default) | full" in options
    assert "own samples, 3 ODE steps | full" in options and "no warm start | full" in options

    background = (tmp_path / "digits_background.md").read_text(encoding="utf-8")
    for label in ("| the clean training digits | - |", "+ N(0, 0.1^2) per pixel | - |",
                  "| ambient, no consistency | D(x, 0.2) |",
                  "| ambient + consistency (default) | full (to 0) |", "| clean-data oracle | D(x, 0.05) |"):
        assert label in background, label

    digits = (tmp_path / "digits.md").read_text(encoding="utf-8")
    for label in ("reference: the training digits themselves", "clean-data oracle",
                  "naive DSM on the noisy digits", "ambient, no consistency | truncated",
                  "ambient + consistency (default) | full", "worst MSE / oracle MSE"):
        assert label in digits, label
    assert "| ambient + consistency (default) | 0.4 | *" in digits  # levels below sigma_n marked
    pngs = {p.name for p in (tmp_path / "digits").glob("*.png")}
    assert {"data_sigma0.png", "oracle_sigma0_full.png",
            "ambient_no_consistency_sigma0.4_truncated.png"} <= pngs

    memorization = (tmp_path / "memorization.md").read_text(encoding="utf-8")
    for label in ("reference: held-out clean digits",
                  "clean-trained (DSM on the clean images) | unconditional",
                  "clean-trained (DSM on the clean images) | posterior, sigma_start=0.8",
                  "noisy-trained (ambient + consistency), sigma_n=0.4 | unconditional",
                  "fewer copies than the clean"):
        assert label in memorization, label
    pngs = {p.name for p in (tmp_path / "memorization").glob("*.png")}
    assert {"hist_unconditional.png", "hist_posterior.png", "pairs_sigma0_clean.png"} <= pngs

    consistency = (tmp_path / "consistency.md").read_text(encoding="utf-8")
    for label in ("| oracle (clean DSM) | 0.3 |", "| reference: best case from the data",
                  "*truncated sampling*", "| ambient + consistency (default: own samples) | 0.3 |",
                  "| ambient + consistency, two draws"):
        assert label in consistency, label
    assert (tmp_path / "consistency" / "excess_sigma0.3.png").exists()

    seeds = (tmp_path / "consistency_seeds.md").read_text(encoding="utf-8")
    for label in ("| oracle (clean DSM) | any", "| own samples, 3 ODE steps | 0.3 | 1 |",
                  "excess@sn/4 / no consistency"):
        assert label in seeds, label
    levels = (tmp_path / "consistency_levels.md").read_text(encoding="utf-8")
    for label in ("| own samples, log-uniform levels | 0.3 | 1 |",
                  "| own samples, log-normal levels | 0.3 | 1 |",
                  "| own samples, mixed levels | 0.3 | 1 |", "levels=log-normal"):
        assert label in levels, label
    levels = (tmp_path / "consistency_levels_budget.md").read_text(encoding="utf-8")
    assert "| own samples, log-normal levels | 0.15 | 1 |" in levels and "--steps 6000" in levels
    levels = (tmp_path / "digits_unet_levels.md").read_text(encoding="utf-8")
    assert "log-uniform levels | full" in levels and "log-normal levels | full" in levels
    mixed = (tmp_path / "digits_unet_6000_mixed_s0.md").read_text(encoding="utf-8")
    assert "own samples, mixed levels | full" in mixed
    budget = (tmp_path / "consistency_budget.md").read_text(encoding="utf-8")
    assert "| own samples, 3 ODE steps | 0.15 | 1 |" in budget and "--steps 6000" in budget
    long = (tmp_path / "consistency_long.md").read_text(encoding="utf-8")
    assert "| ambient + consistency (default: own samples) | 0.15 | 1 |" in long
    assert "--steps 24000" in long
    net = (tmp_path / "consistency_points_net.md").read_text(encoding="utf-8")
    assert "an MLP 256x4 (the ablation's is 128x3)" in net and "--net 256x4" in net
    assert "| ambient + consistency (default: own samples) | 0.15 | 1 |" in net
    steps_page = (tmp_path / "consistency_points_steps.md").read_text(encoding="utf-8")
    assert "| own samples, 12 ODE steps | 0.15 | 1 |" in steps_page
    assert "| own samples, 24 ODE steps | 0.15 | 1 |" in steps_page
    assert "| own samples, ODE to sigma 0.005 instead of 0.002 |" in steps_page
    for label in ("| own samples, 8 ODE steps |", "| own samples, fraction 0.125, 12 ODE steps",
                  "| own samples, extrapolated refit (beta 1) | 0.15 | 1 |",
                  "| own samples, extrapolated refit (beta 1), fraction 0.125",
                  "| own samples, extrapolated refit (beta 1), fraction 0.1875 | 0.15 | 1 |",
                  "| own samples, extrapolated refit (beta 1), draws behind for a quarter of the "
                  "rows | 0.15 | 1 |",
                  "| own samples, extrapolated refit (beta 1), draws behind for half the rows | "
                  "0.15 | 1 |"):
        assert label in steps_page, label
    eight_seeds = (tmp_path / "consistency_points_seeds.md").read_text(encoding="utf-8")
    assert ("| own samples, extrapolated refit (beta 1), draws behind for half the rows | 0.15 | "
            "1 |") in eight_seeds
    assert "| own samples, 8 ODE steps to sigma 0.005 | 0.15 | 1 |" in eight_seeds
    assert "| own samples, 8 ODE steps to sigma 0.005 | 0.15 | 1 |" in steps_page
    sure = (tmp_path / "consistency_points_sure.md").read_text(encoding="utf-8")
    assert "| own samples + SURE at sigma_n on a quarter of the rows | 0.15 | 1 |" in sure
    digits_sure = (tmp_path / "digits_unet_sure.md").read_text(encoding="utf-8")
    assert "SURE at sigma_n on a quarter of the rows | full" in digits_sure
    sure_fit = (tmp_path / "digits_sure_fit.md").read_text(encoding="utf-8")
    for label in ("| ambient, no consistency | 20 |",
                  "| ambient + consistency (default), SURE at sigma_n on a quarter of the rows | 10 |"):
        assert label in sure_fit, label
    for start in ("the training digits (fitted noise)", "the same digits, fresh noise"):
        assert f"| ambient + consistency (default) | {start} |" in sure_fit, start
    assert {p.name for p in (tmp_path / "digits_sure_fit").glob("*.png")} == {
        "heldout_mse.png", "sure_optimism.png"}
    for page in ("consistency_sigma_min.md", "consistency_sigma_min_budget.md"):
        text = (tmp_path / page).read_text(encoding="utf-8")
        assert "| own samples, ODE to sigma 0.005 instead of 0.002 |" in text, page
    digits_end = (tmp_path / "digits_unet_sigma_min.md").read_text(encoding="utf-8")
    assert "own samples, ODE to sigma 0.005 | full" in digits_end
    eight = (tmp_path / "digits_unet_6000_8_steps_s0.md").read_text(encoding="utf-8")
    assert "own samples, 8 ODE steps | full" in eight
    # the first page of this command in SECTIONS runs; the 6000-step one stands in
    eight = (tmp_path / "digits_unet_12000_8_steps_sigma_min_s0.md").read_text(encoding="utf-8")
    assert "own samples, 8 ODE steps to sigma 0.005 | full" in eight
    extrapolated = (tmp_path / "digits_unet_6000_extrapolate_s0.md").read_text(encoding="utf-8")
    assert "extrapolated refit (beta 1), fraction 0.125 | full" in extrapolated
    extrapolated = (tmp_path / "digits_unet_extrapolate.md").read_text(encoding="utf-8")
    assert "draws behind for half the rows | full" in extrapolated
    more_seeds = (tmp_path / "digits_unet_seeds_345.md").read_text(encoding="utf-8")
    assert "| ambient + consistency (default) | full |" in more_seeds
    assert "draws behind for half the rows | full" in more_seeds

    steps = importlib.import_module("consistency_ablation").QUICK_STEPS  # every mixture page's
    teacher = (tmp_path / "exact_teacher.md").read_text(encoding="utf-8")
    assert f"| learned | 0.3 | {steps} |" in teacher and f"| exact teacher | 0.3 | {steps} |" in teacher
    assert "| <= 1.25 sigma_n | 20 |" in teacher
    teacher = (tmp_path / "exact_teacher_0.15.md").read_text(encoding="utf-8")
    assert f"| exact teacher | 0.15 | {steps} |" in teacher and "--sigma-n 0.15 --budgets" in teacher
    plateau = (tmp_path / "consistency_plateau.md").read_text(encoding="utf-8")
    for label in ("| exact teacher | 0.002 | 6 |", "| exact teacher | 0.0005 | 24 |",
                  "| learned | 0.0005 | 6 |", "| oracle | 0.0005 | - |"):
        assert label in plateau, label
    bands = (tmp_path / "consistency_bands.md").read_text(encoding="utf-8")
    for label in ("| oracle | everywhere | 1 |", "| default | everywhere | 1 |",
                  "| oracle inside, default outside | [0.5, 1) | 1 |",
                  "| default inside, oracle outside | >= 4 | 1 |"):
        assert label in bands, label
    bridge = (tmp_path / "consistency_bridge.md").read_text(encoding="utf-8")
    for label in ("| oracle | 1 |", "| default | 1 |", "| default, exact at sigma_n | 1 |",
                  "cov_err of components 4 and 5"):
        assert label in bridge, label

    probes = (tmp_path / "consistency_probes.md").read_text(encoding="utf-8")
    lift = f"{DEFAULT_CONSISTENCY.lift:g}"
    for label in ("| fresh draws of p0 (the truth) |", f"| Gaussian posterior at {lift} sigma_n | 0.3 |",
                  "| draws by an EMA copy (half-life 50 steps) |", "| two levels sigma' per draw |",
                  "| mixture components' widest axes at sigma_n = 0.3 |",
                  "| mixture components' narrowest axes at sigma_n = 0.15 |", "| cov_err per seed |",
                  "| narrow start: truncated draws for the first 250 steps of the term | 0.3 | 2 |",
                  "| stochastic draws: the solver's reverse SDE (eta 1, posterior sampling) | 0.3 | 2 |",
                  "| half-stochastic draws (eta 0.5) |"):
        assert label in probes, label

    cost = (tmp_path / "step_cost.md").read_text(encoding="utf-8")
    for label in ("| unet | DSM |", "| unet | ambient + consistency (default: own samples) |",
                  "| mlp | SURE |"):
        assert label in cost, label
    frontier = (tmp_path / "consistency_frontier.md").read_text(encoding="utf-8")
    assert "| default | 0.15 | " in frontier and "| extrapolate-1-share-0.5 | 0.15 | " in frontier
    assert "| 8-steps-sigma-min-0.005 | 0.15 | " in frontier
    assert "| best case from the data (labels known) | 0.15 |" in frontier
    assert (tmp_path / "consistency" / "frontier.png").stat().st_size > 0
    assert float((tmp_path / "run_all_seconds.txt").read_text(encoding="utf-8")) > 0
    # every page that ran states the current defaults (only the stand-in pages are marked)
    marked = {section.split("\n", 1)[0] for section in results.split("\n## ")[1:]
              if "> Not made with the current defaults" in section}
    stand_ins = {title for page, title, _ in run_all.SECTIONS
                 if "would repeat" in (tmp_path / page).read_text(encoding="utf-8")}
    assert marked == stand_ins and len(stand_ins) == 22
    assert "> Made with another command" not in results  # --quick, --out, --shard: same command


def test_results_mark_pages_made_with_other_defaults(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    run_all = importlib.import_module("run_all")
    from ambient.defaults import defaults_summary

    (tmp_path / "step_cost.md").write_text(f"cost page. {defaults_summary()}\n", encoding="utf-8")
    (tmp_path / "consistency.md").write_text("# Its title\n\nan old page, levels=log-uniform\n",
                                             encoding="utf-8")
    text = run_all.assemble(tmp_path, tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    sections = {s.split("\n", 1)[0]: s for s in text.split("\n## ")[1:]}
    marker = "> Not made with the current defaults"
    old = sections["Gaussian-mixture exactness and consistency ablation"]
    assert marker in old and "Rerun: `python benchmarks/consistency_ablation.py`" in old
    assert "Its title" not in old and "an old page" in old  # the page's own title is dropped
    assert marker not in sections["Training-step cost of every objective and consistency option"]
    assert "not run yet" in sections["Digits: sample quality (Frechet distance) and the denoising "
                                     "table"]  # a missing page is not marked
    # a GPU page is marked when it states other defaults, not when it states none
    (tmp_path / "step_cost_gpu.md").write_text("cost on a GPU. Objective defaults used: old\n",
                                               encoding="utf-8")
    (tmp_path / "step_cost_gpu_b4096.md").write_text(f"cost. {defaults_summary()}\n",
                                                     encoding="utf-8")
    (tmp_path / "latent_gpu.md").write_text("SDXL on a GPU, its own settings\n", encoding="utf-8")
    text = run_all.assemble(tmp_path, tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    sections = {s.split("\n", 1)[0]: s for s in text.split("\n## ")[1:]}
    assert marker in sections["On a GPU: training-step cost at batch 128"]
    assert marker not in sections["On a GPU: training-step cost at batch 4096"]
    assert marker not in sections["On a GPU: SDXL at real size, fine-tuning step and sampling"]

    # a page whose rerun line runs other arguments than run_all's command is marked
    command = " ".join(run_all.COMMAND["digits_unet.md"])
    (tmp_path / "digits_unet.md").write_text(
        f"Rerun: `python benchmarks/{command} --out x.md --quick`. {defaults_summary()}\n",
        encoding="utf-8")
    (tmp_path / "digits_unet_options.md").write_text(  # and made with other defaults
        "Rerun: `python benchmarks/digits_benchmark.py --net unet`. levels=log-uniform\n",
        encoding="utf-8")
    text = run_all.assemble(tmp_path, tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    sections = {s.split("\n", 1)[0]: s for s in text.split("\n## ")[1:]}
    other = "> Made with another command than run_all's"
    assert other not in sections["Digits with a small UNet (a near-exact clean oracle), sigma_n = "
                                 "0.2, three seeds"]
    options = sections["Digits with a small UNet: other consistency options (one seed)"]
    assert other in options and marker in options
    assert "run_all now runs `python benchmarks/digits_benchmark.py --net unet --sigmas 0.2 " \
        "--methods" in options


def test_digits_seeds_are_summarised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over seeds the Frechet cells are mean ± sd, the gap share is per seed against that seed's
    oracle and truncated samples, and the denoising MSEs are averaged."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    digits = importlib.import_module("digits_benchmark")
    nocons, cons = digits.METHODS["ambient_no_consistency"], digits.METHODS["ambient_consistency"]

    def result(method: object, sigma_n: float, seed: int, frechet: dict[str, float],
               mse: float) -> object:
        return digits.RunResult(method, sigma_n, seed, 10.0 * (seed + 1), frechet, {0.1: mse}, {})

    results = []
    for seed, (oracle, truncated, full) in enumerate([(4.0, 5.0, 4.5), (4.2, 5.2, 4.4)]):
        results += [result(digits.ORACLE, 0.0, seed, {"full": oracle}, 1.0),
                    result(nocons, 0.2, seed, {"full": 4.8, "truncated": truncated}, 3.0 + seed),
                    result(cons, 0.2, seed, {"full": full}, 2.0)]
    gaps = digits.gap_closed(results)
    assert "ambient + consistency (default), sigma_n=0.2: full sampling closes 0.65 ± 0.21" in gaps
    assert "(per seed: 0.50, 0.80)" in gaps and "no gap" not in gaps
    rows = {(r["method"], r["sampling"]): r for r in digits.frechet_rows(results, {0.0: 3.0})}
    assert rows[(cons.label, "full")]["sigma_n=0.2"] == "4.45 ± 0.071"
    means = {r.method: r for r in digits.seed_means(results)}
    assert means[nocons].denoising == {0.1: 3.5} and means[nocons].seconds == 15.0
    # a seed whose truncated samples already score below its oracle has no gap to close
    results += [result(digits.ORACLE, 0.0, 2, {"full": 5.0}, 1.0),
                result(nocons, 0.2, 2, {"full": 4.8, "truncated": 4.9}, 3.0),
                result(cons, 0.2, 2, {"full": 4.0}, 2.0)]
    gaps = digits.gap_closed(results)
    assert "closes 0.65 ± 0.21 of the gap (per seed: 0.50, 0.80, no gap)" in gaps
    assert "(no gap: on that seed truncated sampling already scores" in gaps and "nan" not in gaps
    # a page without a model that samples truncated says why it has no share, not "not run yet"
    assert digits.gap_closed(results[1:2]) == "(the oracle has not run yet)"
    assert "only the models without consistency sample truncated" in digits.gap_closed(
        [results[0], results[2]])


def test_consistency_seeds_are_paired(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixture options over seeds: mean ± sd cells, and each seed's excess error divided by the
    no-consistency model's at that same seed (not by the mean over seeds)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    seeds = importlib.import_module("consistency_seeds")

    def row(name: str, seed: int, excess: float, cov: float) -> dict[str, object]:
        metrics = {m: 1.0 for m in seeds.METRICS}
        return {**metrics, "variant": name, "sigma_n": 0.3, "seed": seed, "excess@sn/4": excess,
                "excess@sn/2": excess, "cov_err": cov, "seconds": 1.0}

    rows = [row(seeds.NO_CONSISTENCY, 0, 1.0, 5.0), row(seeds.NO_CONSISTENCY, 1, 4.0, 7.0),
            row(seeds.DEFAULT, 0, 0.5, 3.0), row(seeds.DEFAULT, 1, 1.0, 4.0)]
    table = seeds.summarise(rows)
    line = next(x for x in table.splitlines() if x.startswith(f"| {seeds.DEFAULT} |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "2" and cells[3] == "0.75 ± 0.35"  # seeds, excess@sn/4
    assert cells[5] == "3.5 ± 0.71"  # cov_err
    assert cells[-2] == cells[-1] == "0.375 ± 0.18"  # per seed: 0.5 and 0.25
    nocons = next(x for x in table.splitlines() if x.startswith(f"| {seeds.NO_CONSISTENCY} |"))
    assert nocons.rstrip().endswith("|  |  |")  # no ratio to itself
    # the cap-1 candidate is paired with the cap-1 no-consistency model, which has no ratio
    cap1, cap1_none = seeds.CANDIDATES["cap1"], seeds.CANDIDATES["cap1-none"]
    table = seeds.summarise([*rows, row(cap1_none, 0, 2.0, 1.0), row(cap1, 0, 0.5, 1.0)])
    line = next(x for x in table.splitlines() if x.startswith(f"| {cap1.strip()} |"))
    assert line.rstrip().endswith("| 0.25 | 0.25 |")
    line = next(x for x in table.splitlines() if x.startswith(f"| {cap1_none} |"))
    assert line.rstrip().endswith("|  |  |")
    assert set(seeds.BASELINE) == set(seeds.CANDIDATES.values())  # every candidate is paired
    # each sigma_n ends with the best case its data allow: covariance cells only
    best = table.splitlines()[-1]
    cells = [c.strip() for c in best.strip("|").split("|")]
    assert cells[0].startswith("reference: best case") and cells[1] == "0.3"
    assert len(cells) == 12 and cells[5] and cells[6] and not any(cells[2:5] + cells[7:])


def test_more_points_lower_the_best_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deconvolution's best case (labels known) errs less with more noisy points: at
    sigma_n = 0.3 the benchmarks' 16384 points allow about 0.41, four times as many about 0.20."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    ablation = importlib.import_module("consistency_ablation")
    few = ablation.deconvolution_reference(0.3, seeds=2)["cov_err"]
    many = ablation.deconvolution_reference(0.3, seeds=2, points=4 * ablation.POINTS)["cov_err"]
    assert many < 0.75 * few


def test_mlp_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mixture pages' --net names an MLP WIDTHxDEPTH; the default is the gmm training
    default's network, and a bad name says what a name looks like."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    ablation = importlib.import_module("consistency_ablation")
    assert ablation.mlp("256x4") == {"kind": "mlp", "hidden": 256, "depth": 4}
    assert ablation.mlp() == default_train_config("gmm").net
    with pytest.raises(ValueError, match="WIDTHxDEPTH"):
        ablation.mlp("256")


def test_a_killed_shard_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume keeps the shard's results and runs only what no shard holds yet; without it the
    shard starts over (and leaves the other shards' results alone)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    ablation = importlib.import_module("consistency_ablation")
    ran: list[tuple[str, float, int]] = []

    def fake_run(name: str, sigma_n: float, steps: int, tmp: Path, seed: int,
                 heun_steps: int, points: int, net: str) -> dict[str, object]:
        assert heun_steps == ablation.SAMPLER_STEPS  # run_shard's default: the full evaluation
        assert points == ablation.POINTS and net == ablation.NET  # the benchmarks' data and MLP
        ran.append((name, sigma_n, seed))
        return {"variant": name, "sigma_n": sigma_n, "seed": seed}

    monkeypatch.setattr(ablation, "run_variant", fake_run)
    out = tmp_path / "page.md"
    plan = [(name, 0.3, 0) for name in "abcde"]  # shard 0 of 2: a, c, e
    (tmp_path / "page.shard1.jsonl").write_text('{"variant": "c", "sigma_n": 0.3, "seed": 0}\n')
    (tmp_path / "page.shard0.jsonl").write_text('{"variant": "a", "sigma_n": 0.3, "seed": 0}\n')
    pages: list[int] = []
    ablation.run_shard(plan, 1, out, 0, 2, lambda rows: str(pages.append(len(rows))), resume=True)
    assert ran == [("e", 0.3, 0)] and pages == [3]  # a kept, c held by shard 1, e run
    ran.clear()
    ablation.run_shard(plan, 1, out, 0, 2, lambda rows: "", resume=False)
    assert ran == [("a", 0.3, 0), ("c", 0.3, 0), ("e", 0.3, 0)]
    assert len(ablation.read_rows(out)) == 4  # shard 1's c is left alone


def test_the_last_page_written_holds_every_shards_results(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard whose page is being made while the other shard appends its last result writes
    again from the fresh results, so the page left last is never a stale one."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    ablation = importlib.import_module("consistency_ablation")
    out = tmp_path / "page.md"
    (tmp_path / "page.shard0.jsonl").write_text('{"variant": "a"}\n')
    written: list[list[str]] = []

    def write_page(rows: list[dict[str, object]]) -> str:
        if not written:  # the other shard appends while this page is made
            with (tmp_path / "page.shard1.jsonl").open("a") as f:
                f.write('{"variant": "b"}\n')
        written.append([str(r["variant"]) for r in rows])
        ablation.atomic_write_text(out, " ".join(written[-1]))
        return out.read_text()

    assert ablation.refresh_page(out, write_page) == "a b"
    assert written == [["a"], ["a", "b"]] and out.read_text() == "a b"
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_gaussian_fixed_point_of_the_refit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probes' root finder agrees with iterating the refit (test_losses: 1.16 v for v = 0.01,
    sigma_n = 0.3, 6 steps, lift 1.1; the default lift 1 settles closer), many ODE steps are
    exact where v is not small, and 3 steps shrink."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probes = importlib.import_module("consistency_probes")
    assert probes.gaussian_fixed_point(0.01, 0.3, 6, lift=1.1) == pytest.approx(1.16, abs=0.01)
    assert probes.gaussian_fixed_point(0.01, 0.3, 6, lift=1.0) == pytest.approx(1.09, abs=0.01)
    assert probes.gaussian_fixed_point(0.01, 0.15, 24) == pytest.approx(1.0, abs=0.01)
    assert probes.gaussian_fixed_point(0.01, 0.15, 3) < 0.5



def test_an_ode_ending_higher_settles_closer_on_the_mixture_axes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ending the own-sample ODE at sigma 0.005 instead of 0.002 (6 steps, same calls) brings the
    exact network's fixed point closer to the truth along the mixture components' narrowest axes
    (std 0.05) at sigma_n = 0.15 and 0.3, and along their widest (std 0.1) at 0.15."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    fixed_point = importlib.import_module("consistency_probes").gaussian_fixed_point
    for v, sigma_n, default, higher in [(0.0025, 0.15, 1.099, 0.979), (0.0025, 0.3, 2.085, 1.619),
                                        (0.01, 0.15, 0.928, 0.955)]:
        assert fixed_point(v, sigma_n, 6, lift=1.0) == pytest.approx(default, abs=0.002)
        assert fixed_point(v, sigma_n, 6, lift=1.0, sigma_min=0.005) == pytest.approx(
            higher, abs=0.002)


def test_refit_amplifies_a_fit_error_by_the_deconvolution_factor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit that widens every law by a relative e moves the refit's fixed point by
    e (1 + (lift sigma_n)^2 / v) once the ODE is exact (many steps), computed in closed form;
    the slope holds for a larger e too (the fixed point is linear in e there)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    probes = importlib.import_module("consistency_probes")
    for v, sigma_n, error in [(0.01, 0.3, 1e-3), (0.01, 0.3, 0.05), (0.4, 0.2, 1e-3)]:
        exact = 1 + (probes.LIFT * sigma_n) ** 2 / v  # 10 and 1.1 at the default lift 1
        assert probes.amplification(v, sigma_n, 48, error) == pytest.approx(exact, rel=0.02)


def test_digits_pixel_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-pixel spread of the clean digits is their per-pixel std averaged by group, and
    it scales with the images (so twice too wide samples read twice the clean row)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    digits = importlib.import_module("digits_benchmark")
    clean = digits.load_digits("train")
    base = digits.pixel_spread(clean)
    assert list(base) == ["clean std < 0.05 (11 px)", "clean std 0.05-0.3 (8 px)",
                          "clean std >= 0.3 (45 px)"]
    assert list(base.values()) == sorted(base.values())  # the groups are ordered by clean std
    doubled = digits.pixel_spread(2 * clean)
    assert all(doubled[k] == pytest.approx(2 * base[k]) for k in base)


def test_run_all_passes_pages_relative_to_the_repository(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """The scripts echo ``--out`` in their pages' rerun lines: run_all gives it as typed from
    the repository root (where it runs them), and absolute only outside the repository."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    run_all = importlib.import_module("run_all")
    assert run_all.out_argument(run_all.RESULTS / "digits.md") == "benchmarks/results/digits.md"
    assert run_all.out_argument(tmp_path / "digits.md") == str((tmp_path / "digits.md").resolve())


def test_run_all_runs_every_page_once_per_smoke_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every page but those run alone after them (the step cost, then the summary drawn from it)
    is a parallel job, and --quick's key of a command drops only the options --quick
    overrides."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    run_all = importlib.import_module("run_all")
    assert run_all.LAST == ["step_cost.md", "consistency_frontier.md"]
    pages = {page for page, _, _ in run_all.SECTIONS} - set(run_all.LAST)
    assert {page for page, _ in run_all.parallel_jobs()} == pages
    assert run_all.smoke_key("digits_unet_6000_s2.md") == run_all.smoke_key("digits_unet.md")
    assert run_all.smoke_key("consistency_long.md") == (
        "consistency_seeds.py", "--sigmas", "0.15", "--candidates", "none", "default")


def test_quick_jobs_under_only_touch_just_the_chosen_pages(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """With --only, a chosen page whose smoke run repeats another chosen page's gets the
    stand-in line, and pages that were not chosen get no file at all."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    run_all = importlib.import_module("run_all")
    chosen = ["digits_unet.md", "digits_unet_6000_s2.md", "consistency_long.md"]
    jobs = run_all.quick_jobs(tmp_path, run_all.parallel_jobs(2, chosen))
    # digits_unet (first in SECTIONS) runs and stands in for the 6000-step page; the mixture
    # page runs, both its shards
    assert sorted(page for page, _ in jobs) == ["consistency_long.md"] * 2 + ["digits_unet.md"]
    stand_in = "digits_unet_6000_s2.md"
    assert "would repeat digits_unet.md" in (tmp_path / stand_in).read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == [stand_in]


def test_latent_gpu_benchmark_runs_the_real_path_on_tiny_components(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``latent_gpu.py --tiny`` (the CPU stand-in of the GPU benchmark): a saved SDXL folder,
    fine-tuning with and without consistency (and CUDA graphs, which on the CPU pass every call
    through) and with gradient checkpointing, the forward
    timing and ``ambient latent-sample``; every setting gets a time and a ratio, and the
    assembled RESULTS.md takes the GPU pages found in the results folder."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("PYTHONPATH", str(BENCHMARKS.parent / "src"))  # for the sampling CLI
    latent_gpu = importlib.import_module("latent_gpu")
    out = latent_gpu.main(["--tiny", "--batches", "2", "--steps", "3", "--images", "4",
                           "--forward-batches", "1", "--out", str(tmp_path / "latent_gpu.md")])
    page = out.read_text(encoding="utf-8")
    rows = [line.split("|")[1:-1] for line in page.splitlines() if line.startswith("| 2 |")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        ("no", "off"), ("no", "default"), ("yes", "off"), ("yes", "default"),
        ("no", "default, without CUDA graphs")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    assert [r[4].strip() for r in rows[:4:2]] == ["1.00", "1.00"]  # ratios to the same batch
    assert "| 1 |" in page and "2 PNG files" in page
    run_all = importlib.import_module("run_all")
    results = run_all.assemble(tmp_path, tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    assert "## On a GPU: SDXL at real size, fine-tuning step and sampling" in results
    assert "On a GPU: training-step cost at batch 128" not in results  # absent pages are skipped


def test_consistency_bands_swap_by_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """A band swap uses one denoiser for the rows whose level lies in [lo, hi), the other for
    the rest, row by row, for a shared level or one level per row."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bands = importlib.import_module("consistency_bands")
    swap = bands.banded(lambda x, s: torch.ones_like(x), lambda x, s: torch.zeros_like(x),
                        0.1, 0.2)
    x = torch.randn(4, 2)
    out = swap(x, torch.tensor([0.05, 0.1, 0.15, 0.2]))
    assert out[:, 0].tolist() == [0.0, 1.0, 1.0, 0.0] and out.shape == x.shape
    assert swap(x, torch.tensor(0.15)).eq(1).all() and swap(x, torch.tensor(0.3)).eq(0).all()
    assert bands.band_label(0.5, 1.0) == "[0.5, 1)" and bands.band_label(4.0, math.inf) == ">= 4"


def test_consistency_bridge_valley_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    """The evidence against a bridge is about 0 standard errors for draws of p0 and large for a
    law with a bridge of samples between the closest components."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bridge = importlib.import_module("consistency_bridge")
    from ambient.data import parse_gmm_spec
    from ambient.evaluate import closest_pair

    gmm, _ = parse_gmm_spec(bridge.GMM)
    draws = gmm.sample(100000, generator=torch.Generator().manual_seed(4)).double()
    assert abs(bridge.valley_evidence(draws, gmm, 131072)) < 5
    i, j = closest_pair(gmm)
    t = torch.rand(5000, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    joined = torch.cat([draws[:95000], gmm.means[i] + t * (gmm.means[j] - gmm.means[i])])
    assert bridge.valley_evidence(joined, gmm, 131072) > 10


def test_exact_above_includes_sigma_n_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact-teacher wrapper hands the level sigma_n itself to the analytic posterior mean
    only with ``at_sigma_n`` (the bridge page's model), the levels below to the network."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    teacher = importlib.import_module("consistency_exact_teacher")
    from ambient.data import parse_gmm_spec

    gmm, _ = parse_gmm_spec(teacher.GMM)
    net = torch.nn.Identity()
    x = torch.randn(3, 2, dtype=torch.float64)
    levels = torch.tensor([0.1, 0.15, 0.2], dtype=torch.float64)
    exact = gmm.denoiser(x, levels)
    for at, analytic in ((False, [False, False, True]), (True, [False, True, True])):
        model = teacher.ExactAbove(lambda x, s: net(x), gmm, 0.15, at_sigma_n=at)
        out = model(x, levels)
        for row, use in enumerate(analytic):
            assert torch.allclose(out[row], exact[row] if use else x[row]), (at, row)


def test_consistency_frontier_pairs_by_seed(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The at-a-glance page reads the step-cost table and divides each seed's covariance error
    by that seed's oracle's and its excess error by that seed's no-consistency model's."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    frontier = importlib.import_module("consistency_frontier")
    seeds = importlib.import_module("consistency_seeds")
    default = seeds.CANDIDATES["default"]
    (tmp_path / "step_cost.md").write_text(
        "| network | objective | ms / step | ratio to DSM | images / s |\n|---|---|---:|---:|---:|\n"
        "| unet | DSM | 60.0 | 1.00 | 2000 |\n"
        f"| unet | {default.strip()} | 130.0 | 2.17 | 900 |\n"
        f"| mlp | {default.strip()} | 28.0 | 2.10 | 4600 |\n", encoding="utf-8")
    assert frontier.step_costs(tmp_path / "step_cost.md") == {
        ("unet", "DSM"): 1.0, ("unet", default.strip()): 2.17, ("mlp", default.strip()): 2.1}

    def row(name: str, seed: int, cov: float, excess: float) -> dict[str, object]:
        return {"variant": name, "sigma_n": 0.15, "seed": seed, "cov_err": cov,
                "excess@sn/4": excess, "core": 1.0 + seed / 10, "stranded": 0.02}

    rows = [row(frontier.ORACLE, 0, 0.1, 0.0), row(frontier.ORACLE, 1, 0.2, 0.0),
            row(seeds.CANDIDATES["none"], 0, 1.0, 0.4), row(seeds.CANDIDATES["none"], 1, 1.0, 0.8),
            row(default, 0, 0.15, 0.02), row(default, 1, 0.2, 0.02)]
    records = frontier.option_rows(rows, frontier.step_costs(tmp_path / "step_cost.md"))
    assert [r["key"] for r in records] == ["default"]  # no consistency has no step cost row
    (record,) = records
    assert record["cost"] == {"unet": 2.17, "mlp": 2.1}
    assert record["cov"] == pytest.approx([1.5, 1.0]) and record["excess"] == pytest.approx(
        [0.05, 0.025])
    assert record["core"] == pytest.approx([1.0, 1.1]) and record["stranded"] == [0.02, 0.02]
    table = frontier.table(records, {0.15: 0.8}, {"core": [1.0], "stranded": [0.01]})
    assert ("| default | 0.15 | 2.17x / 2.10x | 1.25 ± 0.35 | 0.037 ± 0.018 | 1.05 ± 0.071 | "
            "0.02 ± 0 | yes |") in table
    assert "| clean oracle | any | 1x | 1 | - | 1 | 0.01 | - |" in table
