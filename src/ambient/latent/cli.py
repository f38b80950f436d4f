"""Command-line subcommands of the latent path: ``finetune``, ``latent-sample``,
``latent-attack``, ``latent-denoise``.

:func:`register_cli` adds them to ``ambient``'s subparsers; each sets ``func`` (call
``args.func(args)``, which returns an exit code and raises
:class:`~ambient.errors.AmbientError` for mistakes a user can fix).
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import replace
from pathlib import Path

import torch

from ambient.defaults import DEFAULT_CONSISTENCY
from ambient.errors import AmbientError
from ambient.samplers import SamplerName

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the latent subcommands to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "finetune", help="fine-tune Stable Diffusion / SDXL with LoRA on noisy latents",
        description="Encode the images once, noise the latents once at timestep --t-n, and train "
                    "LoRA adapters with the ambient loss + consistency (paper, Section 4.2).")
    p.add_argument("--pretrained", required=True, help="local diffusers SD/SDXL model folder")
    p.add_argument("--data", required=True,
                   help="folder of training images (captions: metadata.jsonl/csv, or --prompt)")
    p.add_argument("--t-n", type=int, required=True,
                   help="timestep of the data's noise (paper: 100, 500, 800; 0 = clean)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--prompt", help="one prompt for every image (default: captions, else empty)")
    p.add_argument("--caption-column", default="text", help="caption field of the metadata file")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--steps", type=int, default=200_000, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=16, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (constant)")
    p.add_argument("--consistency-weight", type=float,
                   help="weight of the consistency loss (default 0.01 for t_n <= 500, else 1e-4; "
                        "0 disables it)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="bf16",
                   help="autocast precision (default bf16, as the paper's 16-bit training)")
    p.add_argument("--resolution", type=int, default=1024, help="square training resolution")
    p.add_argument("--gradient-checkpointing", action="store_true", help="save GPU memory")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="run the consistency draws without CUDA graphs (slower)")
    p.add_argument("--checkpoint-every", type=int, default=5000, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0, help="seed of batches and training noise")
    p.add_argument("--noise-seed", type=int, default=0, help="image i is noised with seed N + i")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=_finetune)

    p = subparsers.add_parser("latent-sample", help="sample a (fine-tuned) latent model",
                              description="DDIM (25 steps) with classifier-free guidance; full "
                                          "or truncated at t_n; PNGs in --out.")
    _model_args(p)
    p.add_argument("--prompt", action="append", default=None,
                   help="text prompt (repeat for several; default: the empty prompt)")
    p.add_argument("--negative-prompt", help="negative prompt for guidance")
    p.add_argument("--num", type=int, default=4, help="images per prompt")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--sampler", choices=typing.get_args(SamplerName), default="ddim",
                   help="ODE solver (default ddim)")
    p.add_argument("--truncate", action="store_true",
                   help="truncated sampling at the run's t_n (or --t-n): output D(x, t_n)")
    p.add_argument("--t-n", type=int, help="timestep for --truncate (default: the run's t_n)")
    p.add_argument("--resolution", type=int, default=1024, help="image side in pixels")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.set_defaults(func=_sample)

    p = subparsers.add_parser(
        "latent-attack", help="memorisation attack: posterior samples of noised training images",
        description="Noise each training latent to --t-start (paper: 900), sample the posterior, "
                    "and report each sample's nearest-neighbour similarity in feature space; "
                    "--mask-fraction instead hides a centred box and fills it in.")
    _model_args(p)
    p.add_argument("--data", required=True, help="folder of training images")
    p.add_argument("--features", required=True,
                   help="feature extractor: dinov2:DIR (local DINOv2, as the paper), "
                        "torchscript:FILE or pixels")
    p.add_argument("--t-start", type=int, default=900, help="timestep of the noised latents")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--sampler", choices=typing.get_args(SamplerName), default="ddim",
                   help="ODE solver (default ddim)")
    p.add_argument("--mask-fraction", type=float,
                   help="masked variant: hide a centred box of this fraction of the side and "
                        "fill it in from pure noise (--t-start and --sampler apply to the noise "
                        "attack only)")
    p.add_argument("--num", type=int, help="use only the first NUM images")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for samples and results.json")
    p.set_defaults(func=_attack)

    p = subparsers.add_parser("latent-denoise", help="denoising table in latent and pixel space",
                              description="One-step denoising of held-out images at several "
                                          "timesteps (paper, Table 1).")
    _model_args(p)
    p.add_argument("--data", required=True, help="folder of held-out images")
    p.add_argument("--timesteps", type=int, nargs="+", default=[900, 800, 500, 100])
    p.add_argument("--num", type=int, default=32, help="number of images (paper: 32)")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output file (.md table; a .json is written too)")
    p.set_defaults(func=_denoise)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run directory of 'ambient finetune' (gives --pretrained, "
                                 "--lora and t_n)")
    p.add_argument("--pretrained", help="local diffusers SD/SDXL model folder")
    p.add_argument("--lora", help="LoRA folder to load (default with --run: RUN/lora)")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="UNet and text encoder precision "
                   "(default float16 on a GPU, float32 on the CPU)")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_model(args: argparse.Namespace):
    """The model named by ``--run`` / ``--pretrained`` / ``--lora`` and the run's t_n (or None)."""
    from ambient.latent.finetune import LORA_DIR, run_settings
    from ambient.latent.model import LatentModel, load_lora, load_pipeline

    pretrained, lora, t_n = args.pretrained, args.lora, None
    if args.run:
        settings = run_settings(args.run)
        pretrained = pretrained or settings["pretrained"]
        lora = lora or str(Path(args.run) / LORA_DIR)
        t_n = settings["t_n"]
    if not pretrained:
        raise AmbientError("no model given: pass --pretrained DIR (and --lora DIR) or --run RUN_DIR")
    device = _device()
    dtype = DTYPES[args.dtype] if args.dtype else (
        torch.float16 if device.type == "cuda" else torch.float32)
    pipe = load_pipeline(pretrained, dtype)
    if lora:
        load_lora(pipe, lora)
    return LatentModel(pipe, device), t_n


def _check_timestep(flag: str, t: int, model) -> None:
    top = model.num_timesteps - 1
    if not 0 < t < top:
        raise AmbientError(f"{flag} {t} is out of range: the model's timesteps are 0..{top}, "
                           f"pass a value in [1, {top - 1}]")


def _images(args: argparse.Namespace, limit: int | None):
    from ambient.latent.data import list_examples, load_images

    paths = [e.path for e in list_examples(args.data, prompt="")][:limit]
    return load_images(paths, args.resolution)


def _finetune(args: argparse.Namespace) -> int:
    from ambient.latent.finetune import FinetuneConfig, finetune, paper_engine_config

    engine = replace(paper_engine_config(), steps=args.steps, batch_size=args.batch_size,
                     lr=args.lr, mixed_precision=args.mixed_precision,
                     checkpoint_every=args.checkpoint_every, seed=args.seed,
                     cuda_graphs=not args.no_cuda_graphs)
    consistency = None
    if args.consistency_weight is not None:
        consistency = replace(DEFAULT_CONSISTENCY, weight=args.consistency_weight)
    cfg = FinetuneConfig(pretrained=args.pretrained, data=args.data, out=args.out, t_n=args.t_n,
                         prompt=args.prompt, caption_column=args.caption_column,
                         resolution=args.resolution, rank=args.rank, consistency=consistency,
                         noise_seed=args.noise_seed,
                         gradient_checkpointing=args.gradient_checkpointing, engine=engine)
    lora_dir = finetune(cfg, resume=args.resume)
    print(f"LoRA adapters written to {lora_dir}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from ambient.latent.sample import generate_images, write_pngs

    model, run_t_n = _load_model(args)
    t_n = None
    if args.truncate:
        t_n = args.t_n if args.t_n is not None else run_t_n
        if t_n is None:
            raise AmbientError("--truncate needs the data's timestep: pass --t-n T or --run RUN_DIR")
        _check_timestep("--t-n", t_n, model)
    prompts = [p for p in (args.prompt or [""]) for _ in range(args.num)]
    images = generate_images(model, prompts, batch_size=args.batch_size, seed=args.seed,
                             num_steps=args.steps, guidance_scale=args.guidance,
                             truncate_t_n=t_n, resolution=args.resolution, sampler=args.sampler,
                             negative_prompt=args.negative_prompt)
    paths = write_pngs(images, args.out)
    print(f"{len(paths)} images written to {args.out}")
    return 0


def _attack(args: argparse.Namespace) -> int:
    from ambient.evaluate.features import get_extractor
    from ambient.latent.attack import center_box, masked_attack, noise_attack, score
    from ambient.latent.sample import write_pngs

    embedder = get_extractor(args.features, device=_device())
    model, _ = _load_model(args)
    _check_timestep("--t-start", args.t_start, model)
    images = _images(args, args.num)
    box = None
    if args.mask_fraction is not None:
        if not 0 < args.mask_fraction <= 1:
            raise AmbientError(f"--mask-fraction {args.mask_fraction} must lie in (0, 1]")
        box = center_box(args.resolution, args.mask_fraction, model.pipe.vae_scale_factor)
        samples = masked_attack(model, images, box, num_steps=args.steps,
                                batch_size=args.batch_size, seed=args.seed)
    else:
        samples = noise_attack(model, images, args.t_start, args.steps, args.sampler,
                               batch_size=args.batch_size, seed=args.seed)
    result = score(samples, images, embedder, box)
    write_pngs(samples, args.out, prefix="posterior")
    report = {"summary": result.summary(), "box": box,
              "similarity": result.sims.tolist(), "nearest": result.nearest.tolist()}
    (Path(args.out) / "results.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    return 0


def _denoise(args: argparse.Namespace) -> int:
    from ambient.latent.denoise import format_latent_table, latent_denoising_table

    model, _ = _load_model(args)
    for t in args.timesteps:
        _check_timestep("--timesteps", t, model)
    rows = latent_denoising_table(model, _images(args, args.num), tuple(args.timesteps),
                           batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = format_latent_table(rows)
    out.write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(table)
    return 0
