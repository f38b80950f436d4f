"""SDXL at real size on a GPU: time and peak memory of a LoRA fine-tuning step of `ambient
finetune` with and without the consistency term, and sampling with `ambient latent-sample`.

No weights can be downloaded here, so every component is built from SDXL base 1.0's published
architecture (UNet 2.6B parameters, VAE, CLIP ViT-L and ViT-bigG text encoders) with random
weights and saved as a local diffusers folder; the time and memory of a step do not depend on
the weights' values (the losses and images are meaningless). The tokenizers are a local
character-level vocabulary (the encoders keep SDXL's 49408-token embeddings). Then
:func:`ambient.latent.finetune.finetune`, the function behind `ambient finetune`, trains a few
steps per setting on synthetic images with a one-step metrics window; a step's time is the
median over the steps after the first two, its ratio is to the same batch without consistency
(the ambient loss alone, the cost of a plain DSM step). The consistency term is the default
(`ambient.defaults.DEFAULT_CONSISTENCY` with the paper's weight), switched on from the first step.

    python benchmarks/latent_gpu.py          # a CUDA GPU: writes benchmarks/results/latent_gpu.md
    python benchmarks/latent_gpu.py --forward-only --forward-batches 1 2 4 16 \
        --out benchmarks/results/latent_forward.md   # UNet forward latency (launch-bound or not)
    python benchmarks/latent_gpu.py --tiny   # the same path on tiny components (CPU smoke run)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ambient.defaults import DEFAULT_CONSISTENCY
from ambient.evaluate.report import command_line
from ambient.latent.finetune import (
    FinetuneConfig,
    finetune,
    paper_consistency_weight,
    paper_engine_config,
    weight_dtype,
)
from pages import page

# SDXL base 1.0 (unet/, vae/, text_encoder/, text_encoder_2/ configs) and a tiny stand-in.
SDXL = {
    "unet": dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
    "vae": dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    "text_encoder": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                         num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu",
                         vocab_size=49408, max_position_embeddings=77),
    "text_encoder_2": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                           num_hidden_layers=32, projection_dim=1280, hidden_act="gelu",
                           vocab_size=49408, max_position_embeddings=77),
    "resolution": 1024,
}
TINY = {
    "unet": dict(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(8, 16),
                 attention_head_dim=(2, 4), transformer_layers_per_block=(1, 1),
                 cross_attention_dim=32, use_linear_projection=True, norm_num_groups=4,
                 addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=6 * 8 + 16),
    "vae": dict(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, sample_size=16,
                norm_num_groups=4),
    "text_encoder": dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_hidden_layers=2, projection_dim=16, hidden_act="gelu",
                         vocab_size=64, max_position_embeddings=77),
    "resolution": 16,
}
TINY["text_encoder_2"] = TINY["text_encoder"]
CAPTIONS = ("a red square", "a blue circle on grey", "green stripes", "a face")


@dataclass
class Setting:
    """One timed fine-tuning configuration."""

    batch: int
    checkpointing: bool
    consistency: bool
    graphs: bool = True  # EngineConfig.cuda_graphs (the default): the draws replay CUDA graphs

    @property
    def label(self) -> str:
        return (f"batch {self.batch}, {'with' if self.checkpointing else 'no'} gradient "
                f"checkpointing, {'with' if self.consistency else 'no'} consistency"
                + ("" if self.graphs else ", without CUDA graphs"))

    @property
    def term(self) -> str:
        """The table's consistency column."""
        if not self.consistency:
            return "off"
        return "default" if self.graphs else "default, without CUDA graphs"


def build_sdxl(spec: dict, folder: Path, device: torch.device, dtype: torch.dtype) -> int:
    """Save a randomly initialised SDXL with the architecture ``spec`` as a diffusers folder
    (UNet and text encoders in ``dtype``, the VAE in float32); returns the UNet's parameter
    count. Built on ``device`` (fast random initialisation on a GPU)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) for c in string.ascii_lowercase})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)

    def text_config(name: str) -> CLIPTextConfig:
        return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **spec[name])

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec["unet"]).to(dtype)
        vae = AutoencoderKL(**spec["vae"])
        text_encoder = CLIPTextModel(text_config("text_encoder")).to(dtype)
        text_encoder_2 = CLIPTextModelWithProjection(text_config("text_encoder_2")).to(dtype)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(folder)
    count = sum(p.numel() for p in unet.parameters())
    del pipe, unet, vae, text_encoder, text_encoder_2
    free_memory()
    return count


def write_images(folder: Path, count: int, resolution: int) -> None:
    """``count`` smooth random colour images with captions (metadata.jsonl)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(count):
        coarse = torch.rand(1, 3, 8, 8, generator=gen)
        image = torch.nn.functional.interpolate(coarse, size=resolution, mode="bilinear")[0]
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        rows.append(json.dumps({"file_name": f"{i:03d}.png", "text": CAPTIONS[i % len(CAPTIONS)]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_setting(setting: Setting, model: Path, data: Path, resolution: int, out: Path, t_n: int,
                 steps: int, mixed_precision: str) -> dict[str, float | str]:
    """Fine-tune ``steps`` steps in ``setting``; its median step time (after two warm-up steps),
    images/s, peak GPU memory and the run's last loss, or the error that stopped it."""
    consistency = replace(DEFAULT_CONSISTENCY, warmup=0.0,
                          weight=paper_consistency_weight(t_n) if setting.consistency else 0.0)
    engine = replace(paper_engine_config(), steps=steps, batch_size=setting.batch, log_every=1,
                     checkpoint_every=steps, mixed_precision=mixed_precision,
                     cuda_graphs=setting.graphs)
    cfg = FinetuneConfig(pretrained=str(model), data=str(data), out=str(out), t_n=t_n,
                         resolution=resolution,
                         consistency=consistency, gradient_checkpointing=setting.checkpointing,
                         engine=engine)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    error = None
    try:
        finetune(cfg, progress=False)
    except torch.cuda.OutOfMemoryError as err:
        error = f"out of GPU memory ({str(err).splitlines()[0][:60]})"
    free_memory()  # after the except block, which keeps the failed step's tensors alive
    if error:
        return {"error": error}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = statistics.median(setting.batch / r["images_per_s"] for r in records[2:])
    return {"seconds": seconds, "images_per_s": setting.batch / seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "loss": records[-1]["loss"], "consistency": records[-1].get("consistency", 0.0)}


@torch.no_grad()
def forward_latency(model: Path, batches: list[int], dtype: torch.dtype, device: torch.device,
                    rank: int = 4) -> list[str]:
    """Table rows: per batch size, the wall time of one no-grad forward of the saved UNet with
    LoRA adapters (as the consistency term's own-sample draws call it), synchronised, and the
    time until the call returns (launching its kernels from Python); median of 5 after 2
    warm-ups. Equal times mean the GPU waits for Python: the call is launch-bound."""
    from diffusers import UNet2DConditionModel

    from ambient.latent.finetune import ATTENTION_PROJECTIONS, add_lora

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype)
    add_lora(unet, rank, ATTENTION_PROJECTIONS)
    unet.to(device)
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 4, cfg.sample_size, cfg.sample_size, device=device, dtype=dtype)
        cond = {"encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim,
                                                     device=device, dtype=dtype),
                "added_cond_kwargs": {
                    "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
                    "time_ids": torch.ones(batch, 6, device=device, dtype=dtype)}}
        t = torch.full((batch,), 500.0, device=device)
        walls, launches = [], []
        for i in range(7):
            sync()
            start = time.perf_counter()
            unet(x, t, **cond)
            launched = time.perf_counter() - start
            sync()
            if i >= 2:
                walls.append(time.perf_counter() - start)
                launches.append(launched)
        rows.append(f"| {batch} | {statistics.median(walls) * 1e3:.0f} | "
                    f"{statistics.median(launches) * 1e3:.0f} |")
        print(rows[-1], flush=True)
    del unet
    free_memory()
    return rows


def sample(run: Path, out: Path, resolution: int, dtype: str) -> dict[str, float | int]:
    """``ambient latent-sample`` as a user types it: 2 images, 25 DDIM steps with guidance."""
    cmd = [sys.executable, "-m", "ambient.cli", "latent-sample", "--run", str(run), "--num", "2",
           "--batch-size", "2", "--steps", "25", "--resolution", str(resolution), "--dtype", dtype,
           "--prompt", CAPTIONS[0], "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return {"seconds": time.perf_counter() - start, "images": len(list(out.glob("*.png")))}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny components (a CPU smoke run)")
    parser.add_argument("--steps", type=int, default=6, help="fine-tuning steps per setting")
    parser.add_argument("--images", type=int, default=32, help="synthetic training images")
    parser.add_argument("--t-n", type=int, default=500, help="timestep of the data's noise")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="bf16")
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[],
                        help="also time one no-grad UNet forward at these batch sizes")
    parser.add_argument("--forward-only", action="store_true",
                        help="only the no-grad forward timing (no fine-tuning, no sampling)")
    parser.add_argument("--out", type=Path, default=page("latent_gpu.md"))
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        parser.error("no CUDA GPU found: this benchmark times SDXL at real size on a GPU "
                     "(use --tiny for the CPU smoke run)")
    spec = TINY if args.tiny else SDXL
    device = torch.device("cuda" if cuda else "cpu")
    dtype = weight_dtype(args.mixed_precision, device)  # the frozen weights' dtype in finetune
    dtype_name = str(dtype).removeprefix("torch.")
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.0
    where = (f"{torch.cuda.get_device_name()} ({gib:.0f} GiB)" if cuda else "CPU") + \
        f", torch {torch.__version__}"
    # every batch without gradient checkpointing, the largest also with it; the smallest also
    # with consistency but without CUDA graphs
    settings = [] if args.forward_only else [
        *(Setting(b, ckpt, cons) for b in args.batches
          for ckpt in ((False, True) if b == max(args.batches) else (False,))
          for cons in (False, True)),
        Setting(min(args.batches), False, True, graphs=False)]
    rerun = command_line("benchmarks/latent_gpu.py", argv)
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        params = build_sdxl(spec, root / "model", device, dtype)
        build_s = time.perf_counter() - start
        forward = (forward_latency(root / "model", args.forward_batches, dtype, device)
                   if args.forward_batches else [])
        write_images(root / "data", args.images, spec["resolution"])
        results: dict[str, dict] = {}
        for i, setting in enumerate(settings):
            results[setting.label] = time_setting(setting, root / "model", root / "data",
                                                  spec["resolution"], root / f"run{i}", args.t_n,
                                                  args.steps, args.mixed_precision)
            print(setting.label, results[setting.label], flush=True)
        last_ok = [i for i, s in enumerate(settings) if "error" not in results[s.label]]
        sampled = (sample(root / f"run{last_ok[-1]}", root / "samples", spec["resolution"],
                          dtype_name) if last_ok else None)
    for setting in settings:
        r = results[setting.label]
        base = results[replace(setting, consistency=False, graphs=True).label]
        if "error" in r:
            rows.append(f"| {setting.batch} | {'yes' if setting.checkpointing else 'no'} | "
                        f"{setting.term} | {r['error']} | | | |")
            continue
        ratio = f"{r['seconds'] / base['seconds']:.2f}" if "error" not in base else "-"
        rows.append(f"| {setting.batch} | {'yes' if setting.checkpointing else 'no'} | "
                    f"{setting.term} | {r['seconds']:.3f} | {ratio} | "
                    f"{r['images_per_s']:.2f} | {r['peak_gib']:.1f} |")
    lines = [
        "# SDXL at real size on a GPU: fine-tuning step and sampling"
        + (" (tiny smoke run)" if args.tiny else ""),
        "",
        f"Rerun: `{rerun}`. Device: {where}. UNet parameters: {params / 1e6:,.1f} M (random "
        f"weights, built and saved in {build_s:.0f} s); LoRA rank 4 on the attention projections; "
        f"frozen weights in {dtype_name}, mixed precision "
        f"{args.mixed_precision}; {args.images} synthetic {spec['resolution']} px images, "
        f"t_n = {args.t_n} (consistency weight {paper_consistency_weight(args.t_n)}); {args.steps} "
        "steps per setting, median step time after two warm-up steps.",
        "",
    ]
    if rows:
        lines += ["| batch | gradient checkpointing | consistency | s / step | ratio to no consistency "
                  "| images / s | peak GPU memory (GiB) |",
                  "|---:|---|---|---:|---:|---:|---:|", *rows, ""]
    if forward:
        lines += ["One no-grad forward of the UNet with its LoRA adapters (the call the consistency "
                  "term's own-sample draws make), median of 5; equal columns mean the GPU waits "
                  "for Python to launch the kernels:", "",
                  "| batch | ms, synchronised | ms until the call returns |", "|---:|---:|---:|",
                  *forward, ""]
    if sampled:
        lines.append(f"`ambient latent-sample` (2 images, 25 DDIM steps, guidance 5, "
                     f"{spec['resolution']} px, the last run's LoRA): {sampled['images']} PNG files "
                     f"in {sampled['seconds']:.0f} s including loading the model.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return args.out


if __name__ == "__main__":
    main()
