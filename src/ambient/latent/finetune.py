"""Fine-tune a local Stable Diffusion / SDXL model with LoRA on noisy latents (paper, Section 4.2).

1. Load the model from a local diffusers folder; encode every training image once with the VAE
   and noise it once at the VP level of ``t_n`` with a per-image seed (:mod:`.cache`, kept in the
   run directory as ``noisy_latents.safetensors``).
2. Encode the captions once (text encoders frozen); SDXL also gets each image's
   micro-conditioning (original size, crop corner, target size).
3. Add LoRA adapters (peft, rank 4, ``lora_alpha = rank``, attention projections) to the UNet;
   only they train (float32 even when the frozen base runs in 16 bits).
4. Train with :func:`ambient.engine.run_training` on :func:`ambient.latent.loss.latent_loss`
   (ambient VP loss for ``t > t_n`` + consistency weighted 0.01 for ``t_n <= 500``, 1e-4 above,
   as the paper), Adam, constant lr 1e-5, batch 16, no EMA, by default.
5. Save the adapters as ``RUN_DIR/lora/pytorch_lora_weights.safetensors``, which diffusers'
   ``pipeline.load_lora_weights(RUN_DIR / "lora")`` reads.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ambient import checkpoint as ck
from ambient.defaults import DEFAULT_CONSISTENCY
from ambient.engine import EngineConfig, run_training
from ambient.errors import AmbientError
from ambient.latent.adapter import GraphedUNetDenoisers, UNetConditioning
from ambient.latent.cache import (
    CACHE_FILE,
    NoisyLatents,
    build_noisy_latents,
    cache_key,
    cached_key,
)
from ambient.latent.data import list_examples
from ambient.latent.loss import latent_loss
from ambient.latent.model import LatentModel, load_pipeline
from ambient.losses import Denoiser
from ambient.objective import ConsistencyConfig, consistency_at

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)

LORA_DIR = "lora"
ATTENTION_PROJECTIONS = ("to_k", "to_q", "to_v", "to_out.0")


def paper_consistency_weight(t_n: int) -> float:
    """The paper's consistency weights: 0.01 for ``t_n <= 500``, 1e-4 above (Appendix B)."""
    return 0.01 if t_n <= 500 else 1e-4


def paper_engine_config() -> EngineConfig:
    """Appendix B: batch 16, Adam, constant lr 1e-5 (no warm-up), no EMA, 16-bit training."""
    return EngineConfig(steps=200_000, batch_size=16, lr=1e-5, warmup_steps=0,
                        ema_halflife_steps=0.0, mixed_precision="bf16", checkpoint_every=5000)


@dataclass
class FinetuneConfig:
    """A LoRA fine-tuning run on noisy latents."""

    pretrained: str  # local diffusers SD/SDXL folder (unet/, vae/, text_encoder/, ...)
    data: str  # folder of training images (+ optional metadata.jsonl / metadata.csv captions)
    out: str  # run directory (noisy latent cache, checkpoints, lora/)
    t_n: int = 100  # timestep of the data's noise: s = sqrt(1 - alphas_cumprod[t_n]); 0 = clean
    prompt: str | None = None  # one prompt for every image (default: metadata captions, else "")
    caption_column: str = "text"  # caption field of the metadata file
    resolution: int = 1024  # square training resolution in pixels (shorter side resized, centre crop)
    rank: int = 4  # LoRA rank (lora_alpha = rank)
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS  # UNet modules that get adapters
    consistency: ConsistencyConfig | None = None  # None: the default, paper weight
    noise_seed: int = 0  # image i is noised with seed noise_seed + i
    gradient_checkpointing: bool = False  # trade compute for memory in the UNet
    encode_batch_size: int = 8  # images per VAE / text-encoder call when building the cache
    engine: EngineConfig = field(default_factory=paper_engine_config)

    def consistency_config(self) -> ConsistencyConfig:
        """The consistency settings: as given, else the pixel default with the paper's weight."""
        return self.consistency or replace(DEFAULT_CONSISTENCY, weight=paper_consistency_weight(self.t_n))


def _check(cfg: FinetuneConfig, model: LatentModel) -> None:
    top = model.num_timesteps - 2
    if not 0 <= cfg.t_n <= top:
        raise AmbientError(f"--t-n {cfg.t_n} is out of range: the model has "
                           f"{model.num_timesteps} timesteps, so t_n must lie in [0, {top}] "
                           "(the paper uses 100, 500, 800)")
    factor = model.pipe.vae_scale_factor
    if cfg.resolution < factor or cfg.resolution % factor:
        raise AmbientError(f"--resolution {cfg.resolution} must be a positive multiple of the "
                           f"VAE's downsampling factor {factor} (SDXL: 1024)")
    if cfg.rank < 1:
        raise AmbientError(f"--rank {cfg.rank} must be >= 1 (the paper uses 4)")
    if cfg.consistency_config().weight < 0:
        raise AmbientError("--consistency-weight must be >= 0 (0 switches consistency off)")
    cfg.consistency_config().validate(prefix="consistency")


def weight_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """Frozen weights in 16 bits when training in mixed precision on a GPU, else float32."""
    if device.type != "cuda" or mixed_precision == "no":
        return torch.float32
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16


@torch.no_grad()
def encode_captions(model: LatentModel, captions: list[str],
                    batch_size: int) -> tuple[UNetConditioning, Tensor]:
    """Encode each distinct caption once: a table of conditioning rows (on the CPU, no
    time_ids) and, per caption, its row ``[N]``."""
    distinct = list(dict.fromkeys(captions))
    parts = [model.conditioning(distinct[i:i + batch_size])[0].to("cpu")
             for i in range(0, len(distinct), batch_size)]
    table = parts[0]
    for part in parts[1:]:
        table = table.cat(part)
    row = {c: i for i, c in enumerate(distinct)}
    return table, torch.tensor([row[c] for c in captions])


def add_lora(unet: UNet2DConditionModel, rank: int, target_modules: tuple[str, ...]) -> None:
    """Freeze ``unet`` and add peft LoRA adapters (``r = lora_alpha = rank``, Gaussian A, zero B:
    the model starts exactly at the pretrained one); the adapters are float32."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(target_modules)))
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def save_lora(pipe, unet: UNet2DConditionModel, out_dir: Path) -> Path:
    """Write ``unet``'s adapters in diffusers' format (``pytorch_lora_weights.safetensors``) so
    that ``pipeline.load_lora_weights(out_dir)`` reads them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    type(pipe).save_lora_weights(str(out_dir), unet_lora_layers=layers,
                                 unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    return out_dir


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run the fine-tuning described in the module docstring; returns the ``lora/`` folder."""
    from accelerate import PartialState

    out = Path(cfg.out)
    if ck.list_checkpoints(out) and not resume:
        raise AmbientError(f"{out} already holds checkpoints; pass --resume to continue that run "
                           "or choose a new --out")
    examples = list_examples(cfg.data, cfg.prompt, cfg.caption_column)
    state = PartialState()
    dtype = weight_dtype(cfg.engine.mixed_precision, state.device)
    pipe = load_pipeline(cfg.pretrained, dtype)
    model = LatentModel(pipe, state.device)
    _check(cfg, model)

    cache = out / CACHE_FILE
    key = cache_key(examples, cfg.resolution, cfg.t_n, cfg.noise_seed,
                    str(Path(cfg.pretrained).resolve()))
    with state.main_process_first():
        if state.is_main_process and cached_key(cache) != key:
            out.mkdir(parents=True, exist_ok=True)
            logger.info("encoding and noising %d images at t_n=%d -> %s", len(examples),
                        cfg.t_n, cache)
            build_noisy_latents(model, examples, cfg.resolution, cfg.t_n, cfg.noise_seed, cache,
                                key, cfg.encode_batch_size)
    latents = NoisyLatents(cache)
    table, caption_row = encode_captions(model, [e.caption for e in examples],
                                         cfg.encode_batch_size)
    for part in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if part is not None:
            part.to("cpu")  # not needed while training

    unet = pipe.unet
    add_lora(unet, cfg.rank, cfg.target_modules)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    consistency = cfg.consistency_config()
    denoisers = GraphedUNetDenoisers(model.alphas_cumprod, model.prediction_type, dtype,
                                     cfg.engine.cuda_graphs)

    def loss_fn(net: nn.Module, index: Tensor, generator: torch.Generator | None, step: int):
        rows = index.cpu()
        y = latents[rows].to(index.device)
        cond = table.select(caption_row[rows])
        if model.is_sdxl:
            cond.time_ids = latents.time_ids[rows]

        def make_denoiser(c: UNetConditioning) -> Denoiser:
            return denoisers.make(net, c)

        return latent_loss(make_denoiser, y, cond, model.alphas_cumprod, cfg.t_n,
                           consistency_at(consistency, step, cfg.engine.steps), generator)

    settings = {k: v for k, v in asdict(cfg).items() if k != "engine"}
    settings.update(consistency=asdict(consistency), pretrained=str(Path(cfg.pretrained).resolve()),
                    data=str(Path(cfg.data).resolve()))
    trained = run_training(unet, loss_fn, len(latents), cfg.engine, out, resume,
                           run_config={"finetune": settings}, progress=progress)
    lora_dir = out / LORA_DIR
    if state.is_main_process:
        save_lora(pipe, trained, lora_dir)
    state.wait_for_everyone()
    return lora_dir


def run_settings(run_dir: str | Path) -> dict:
    """The ``finetune`` settings a run directory was trained with (from its ``config.json``)."""
    config = ck.read_run_config(Path(run_dir))
    if "finetune" not in config:
        raise AmbientError(f"{run_dir}/config.json has no 'finetune' section: not a run of "
                           "'ambient finetune'; pass --pretrained and --lora instead")
    return config["finetune"]
