"""The ``ambient`` command line: train, sample, denoise, evaluate, demo (and the latent path).

Every user-fixable problem is an :class:`~ambient.errors.AmbientError`, printed as one line
(``ambient: error: ...``) with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ambient import __version__
from ambient.errors import AmbientError
from ambient.files import atomic_write_text
from ambient.samplers import SamplerName


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# ----------------------------------------------------------------------------- train


def read_config_file(path: str) -> dict[str, Any]:
    """A ``--config`` file: YAML or JSON (safe loaders only), a mapping at the top."""
    p = Path(path)
    if not p.is_file():
        raise AmbientError(f"config file {p} does not exist; fix: check the path of --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise AmbientError(f"config file {p} is not valid YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise AmbientError(f"config file {p} must hold a mapping (keys engine, objective, net), "
                           f"got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def build_train_config(args: argparse.Namespace) -> Any:
    """Defaults <- ``--config`` file <- command-line flags, validated by ``config_from_dict``."""
    from ambient.defaults import default_train_config
    from ambient.train import config_from_dict, config_to_dict

    cfg = config_to_dict(default_train_config(args.data))
    if args.config:
        cfg = _merge(cfg, read_config_file(args.config))
    flags: dict[str, Any] = {"engine": {}, "objective": {"consistency": {}}, "net": {}}
    for flag, (section, key) in {
        "steps": ("engine", "steps"), "batch_size": ("engine", "batch_size"),
        "lr": ("engine", "lr"), "cooldown": ("engine", "cooldown"), "seed": ("engine", "seed"),
        "mixed_precision": ("engine", "mixed_precision"),
        "checkpoint_every": ("engine", "checkpoint_every"),
        "sample_every": ("engine", "sample_every"), "method": ("objective", "method"),
    }.items():
        if getattr(args, flag) is not None:
            flags[section][key] = getattr(args, flag)
    if args.consistency_weight is not None:
        flags["objective"]["consistency"]["weight"] = args.consistency_weight
    if args.no_cuda_graphs:
        flags["engine"]["cuda_graphs"] = False
    if args.net is not None:
        flags["net"]["kind"] = args.net
    cfg = _merge(cfg, flags)
    cfg["data"] = {"data": args.data, "sigma_n": args.sigma_n, "corrupt": args.corrupt,
                   "seed": args.data_seed}
    return config_from_dict(cfg)


def cmd_train(args: argparse.Namespace) -> int:
    from ambient.data import resolve_dataset
    from ambient.train import train

    cfg = build_train_config(args)
    dataset = resolve_dataset(args.data, args.sigma_n, corrupt=args.corrupt, seed=args.data_seed,
                              on_bad=args.on_bad)
    train(cfg, dataset, Path(args.out), resume=args.resume, init_from=args.init_from)
    print(f"trained: {args.out} (sample with: ambient sample {args.out} --num 64 --out samples.npy)")
    return 0


# ----------------------------------------------------------------------------- sample / denoise


def _output_path(out: str, suffix: str = ".npy",
                 what: str = "a .npy array (a PNG is written beside it: a grid of images, or a "
                             "scatter of vectors)") -> Path:
    """``--out`` of sample, denoise and evaluate, checked before any work is done."""
    path = Path(out)
    if path.suffix != suffix:
        raise AmbientError(f"--out {out}: the output is written as {what}; fix: give it the "
                           f"suffix {suffix}, e.g. {path.with_suffix(suffix).name}")
    if path.is_dir():
        raise AmbientError(f"--out {out}: a folder is there; fix: name a file such as "
                           f"{(path / 'out').with_suffix(suffix)}")
    return path


def _save_output(x: torch.Tensor, path: Path, config: dict[str, Any]) -> None:
    from ambient.images import save_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, x.numpy())
    tmp.replace(path)
    msg = f"wrote {path} {list(x.shape)}"
    if len(config["sample_shape"]) == 3:
        msg += f" and {save_grid(x[:256], path.with_suffix('.png'))}"
    elif len(config["sample_shape"]) == 1:
        from ambient.evaluate.plots import plot_points

        msg += f" and {plot_points(x, path.with_suffix('.png'), f'{len(x)} rows of {path.name}')}"
    print(msg)


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The run's EMA denoiser from its newest checkpoint, or the kept one of ``--step``."""
    from ambient.train import load_run

    return load_run(Path(args.run_dir), step=args.step)


def cmd_sample(args: argparse.Namespace) -> int:
    from ambient.generate import generate

    path = _output_path(args.out)
    denoiser, config = _load(args)
    x = generate(denoiser, config, args.num, steps=args.steps, sampler=args.sampler,
                 truncate=args.truncate, seed=args.seed, progress=True)
    _save_output(x, path, config)
    return 0


def cmd_denoise(args: argparse.Namespace) -> int:
    from ambient.data import load_array

    path = _output_path(args.out)
    denoiser, config = _load(args)
    x = load_array(args.input)
    if tuple(x.shape[1:]) != tuple(config["sample_shape"]):
        raise AmbientError(f"--input {args.input}: samples have shape {list(x.shape[1:])} but the "
                           f"model was trained on {config['sample_shape']}; fix: pass data of the "
                           "training shape")
    if not 0 < args.sigma < float(config["sigma_max"]):
        raise AmbientError(f"--sigma {args.sigma}: must lie in (0, {config['sigma_max']}), the "
                           "levels the model was trained on")
    with torch.no_grad():
        out = torch.cat([denoiser(b, torch.full((len(b),), args.sigma)) for b in x.split(1024)])
    _save_output(out, path, config)
    return 0


# ----------------------------------------------------------------------------- evaluate / demo


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ambient.evaluate.run_report import metrics_dict, write_run_report
    from ambient.evaluate.runs import (
        default_features,
        evaluate_run,
        require_reference_compatible,
    )

    out = None if args.out is None else _output_path(args.out, ".json", "the metrics as JSON")
    report_dir = None if args.report is None else Path(args.report)
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise AmbientError(f"--report {report_dir}: a file is there; fix: name a folder (it is "
                           "created) for report.md, report.html and their figures")
    denoiser, config = _load(args)
    features = args.features
    if config.get("source") != "digits" and not str(config.get("source", "")).startswith("gmm"):
        if args.reference is None:
            raise AmbientError("this run's data have no built-in ground truth; fix: pass "
                               "--reference (clean data: an image folder or an array file)")
        features = features or default_features(config)
        require_reference_compatible(config, features)
    metrics = evaluate_run(denoiser, config, num=args.num, steps=args.steps, seed=args.seed,
                           features=features or "digits", reference=args.reference,
                           progress=True)
    text = json.dumps(metrics_dict(metrics), indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text + "\n")
    print(text)
    if report_dir is not None:
        report = write_run_report(Path(args.run_dir), config, metrics, report_dir)
        print(f"report: {report}", file=sys.stderr)  # stdout stays one JSON document
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ambient.demo import run_demo

    report = run_demo(Path(args.out), quick=args.quick)
    print(f"report: {report}")
    return 0


# ----------------------------------------------------------------------------- parser


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The run a command uses (read by :func:`_load`): its directory and ``--step``."""
    p.add_argument("run_dir")
    p.add_argument("--step", type=int, default=None,
                   help="use the kept checkpoint of this step (default: the newest)")


SAMPLER_STEPS_HELP = ("noise levels of the sampler's EDM schedule, sigma_max to 0 (default 32; "
                      "heun calls the network about twice per level)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ambient",
        description="Train diffusion models that sample the clean distribution from noisy data.")
    parser.add_argument("--version", action="version", version=f"ambient {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    from ambient.defaults import default_train_config

    base, gmm, digits = (default_train_config(d).engine for d in ("", "gmm", "digits"))
    p = sub.add_parser("train", help="train a model on noisy (or clean) data")
    p.add_argument("--data", required=True,
                   help="a .npy/.npz array (N, D) or (N, C, H, W), a folder of images, or a "
                        "built-in dataset: digits, gmm[:dim=2,components=8,...]")
    p.add_argument("--sigma-n", default=None,
                   help="noise level of the data (VE, data units): a number, or a .npy of "
                        "per-sample levels (0 = clean sample)")
    p.add_argument("--corrupt", action="store_true",
                   help="the data are clean: add noise at --sigma-n once (fixed seed per sample) "
                        "and train only on the noisy copy")
    p.add_argument("--out", required=True, help="run directory (created)")
    p.add_argument("--method", choices=["ambient", "dsm", "sure"], default=None,
                   help="ambient (default: exact, with consistency), dsm (treat data as clean: "
                        "the oracle on clean data, the naive baseline on noisy data), sure")
    p.add_argument("--consistency-weight", type=float, default=None,
                   help="weight of the consistency loss (0 = ambient without consistency)")
    p.add_argument("--init-from", default=None,
                   help="warm start: initialise the weights from another run directory")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help=f"optimiser steps in total (default {base.steps}; digits {digits.steps})")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"global batch, split over processes (default {base.batch_size}; gmm "
                        f"{gmm.batch_size})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate after a {base.warmup_steps}-step warm-up (default "
                        f"{base.lr:g}; gmm {gmm.lr:g})")
    p.add_argument("--cooldown", type=float, default=None,
                   help="share of the last steps over which the learning rate falls linearly "
                        "to 0 (default 0: constant after the warm-up)")
    p.add_argument("--seed", type=int, default=None, help="training seed")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the one-time corruption")
    p.add_argument("--net", choices=["auto", "mlp", "unet"], default=None,
                   help="denoiser network (default auto: a UNet for images, an MLP for "
                        "vectors; the digits default is an MLP)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                   help="autocast precision of the forward passes (default no)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="on a GPU, run the consistency draws without CUDA graphs (slower)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None,
                   help=f"steps between checkpoints (default {base.checkpoint_every}; one is "
                        "always written at the end and on a signal)")
    p.add_argument("--sample-every", type=int, default=None,
                   help=f"steps between sample grids in the run directory (default "
                        f"{base.sample_every}: none; digits {digits.sample_every})")
    p.add_argument("--on-bad", choices=["skip", "error"], default="skip",
                   help="unreadable files in an image folder: skip them (counted) or stop")
    p.add_argument("--config", default=None, help="YAML/JSON file of engine/objective/net settings")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run")
    _add_run_arguments(p)
    p.add_argument("--num", type=_positive_int, default=64, help="samples to draw (default 64)")
    p.add_argument("--out", required=True,
                   help="output .npy (a PNG beside it: a grid of images, a scatter of vectors)")
    p.add_argument("--steps", type=_positive_int, default=32, help=SAMPLER_STEPS_HELP)
    p.add_argument("--sampler", choices=typing.get_args(SamplerName), default="heun",
                   help="ODE solver: heun (default; 2nd order, two calls per level), euler, "
                        "ddim or multistep (2nd order); the last three call once per level")
    p.add_argument("--truncate", action="store_true",
                   help="stop at the data's noise level and output D(x, sigma_n)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("denoise", help="apply D(x, sigma) to inputs")
    _add_run_arguments(p)
    p.add_argument("--input", required=True, help=".npy/.npz of inputs (N, ...)")
    p.add_argument("--sigma", type=float, required=True, help="the inputs' noise level")
    p.add_argument("--out", required=True, help="output .npy of the denoised inputs")
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("evaluate", help="metrics of a run against its data's ground truth")
    _add_run_arguments(p)
    p.add_argument("--num", type=_positive_int, default=1000,
                   help="samples to draw (default 1000)")
    p.add_argument("--steps", type=_positive_int, default=32, help=SAMPLER_STEPS_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--features", default=None,
                   help="features of the Frechet distance: digits, pixels, dinov2:DIR or "
                        "torchscript:FILE (default: digits for 8x8 images, pixels, the "
                        "coordinates, for vectors; other images need a choice)")
    p.add_argument("--reference", default=None,
                   help="clean reference data for a run without built-in ground truth: an image "
                        "folder or an array file (.npy/.npz) of the training data's shape")
    p.add_argument("--out", default=None, help="also write the metrics as JSON to this .json file")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write a report to this folder: report.md and report.html with the "
                        "training curve, sample grids or scatters, the metrics and the denoising "
                        "error against the noise level")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="noisy digits -> two models -> report (about 5 min on CPU)")
    p.add_argument("--out", default="demo_out", help="report folder (default demo_out)")
    p.add_argument("--quick", action="store_true", help="a 1-minute smoke version")
    p.set_defaults(func=cmd_demo)

    try:
        from ambient.latent.cli import register_cli
    except ImportError:  # the latent extra (diffusers, peft, transformers) is not installed
        pass
    else:
        register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from ambient.engine import TrainingInterrupted, leave_process_group

    try:
        return args.func(args)
    except TrainingInterrupted as e:  # SIGTERM / Ctrl-C: a final checkpoint was written
        print(f"ambient: {e}", file=sys.stderr)
        return e.exit_code
    except AmbientError as e:
        print(f"ambient: error: {e}", file=sys.stderr)
        return 2
    finally:
        leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
