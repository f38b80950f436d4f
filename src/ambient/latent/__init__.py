"""Latent diffusion: fine-tune Stable Diffusion / SDXL with LoRA on noisy latents (diffusers + peft).

- :mod:`.adapter`  a diffusers UNet as a VP denoiser ``D(x, v)`` and its VE view
- :mod:`.model`    a local SD/SDXL model: loading, VAE latents, text conditioning, VP levels
- :mod:`.data`, :mod:`.cache`  training images and captions; the noisy latents, made once
- :mod:`.loss`     ambient VP loss above ``t_n`` + consistency below, per batch
- :mod:`.finetune` LoRA fine-tuning on the project's training engine
- :mod:`.sample`   DDIM (full or truncated) with guidance, PNGs
- :mod:`.attack`   the memorisation attack (noised or masked training images)
- :mod:`.denoise`  the denoising table in latent and pixel space
- :mod:`.cli`      ``ambient finetune | latent-sample | latent-attack | latent-denoise``

diffusers, transformers and peft are imported only when a model is loaded.
"""

from ambient.latent.adapter import UNetConditioning, UNetDenoiser, ve_view, x0_from_prediction
from ambient.latent.attack import masked_attack, noise_attack, score
from ambient.latent.denoise import latent_denoising_table
from ambient.latent.finetune import FinetuneConfig, finetune
from ambient.latent.loss import latent_loss
from ambient.latent.model import LatentModel, load_lora, load_pipeline
from ambient.latent.sample import generate_images, generate_latents, write_pngs

__all__ = [
    "FinetuneConfig",
    "LatentModel",
    "UNetConditioning",
    "UNetDenoiser",
    "finetune",
    "generate_images",
    "generate_latents",
    "latent_denoising_table",
    "latent_loss",
    "load_lora",
    "load_pipeline",
    "masked_attack",
    "noise_attack",
    "score",
    "ve_view",
    "write_pngs",
    "x0_from_prediction",
]
