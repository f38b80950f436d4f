"""A local Stable Diffusion / SDXL model as the latent path sees it: VAE latents, the schedule's
VP levels, text conditioning and the UNet as a denoiser.

Latents follow the diffusers convention ``z = (E(x) - shift_factor) * scaling_factor``, with
``E(x)`` the mean of the VAE's posterior (deterministic: an image has one latent), and
``x = D(z / scaling_factor + shift_factor)``. The VAE always runs in float32 (SDXL's VAE
overflows in float16).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ambient.errors import AmbientError
from ambient.latent.adapter import UNetConditioning, UNetDenoiser
from ambient.latent.loss import data_level
from ambient.noise import ve_sigma_from_timestep

REQUIRED = ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json",
            "text_encoder/config.json", "tokenizer")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the file diffusers' load_lora_weights reads
LAYOUT_HINT = ("a local diffusers model folder (e.g. a copy of stabilityai/stable-diffusion-xl-base-1.0"
               " or a pipeline.save_pretrained output) with unet/, vae/, scheduler/, text_encoder/, "
               "tokenizer/ and, for SDXL, text_encoder_2/ and tokenizer_2/")


def check_pretrained_dir(path: str | Path) -> Path:
    """Return ``path`` if it holds a diffusers SD/SDXL layout, else raise :class:`AmbientError`."""
    root = Path(path)
    if not root.is_dir():
        raise AmbientError(f"--pretrained {root}: not a folder; pass {LAYOUT_HINT}")
    missing = [name for name in REQUIRED if not (root / name).exists()]
    if missing:
        raise AmbientError(f"--pretrained {root}: not a diffusers Stable Diffusion layout, missing "
                           f"{', '.join(missing)}; pass {LAYOUT_HINT}")
    if (root / "text_encoder_2").exists() != (root / "tokenizer_2").exists():
        raise AmbientError(f"--pretrained {root}: SDXL needs both text_encoder_2/ and tokenizer_2/ "
                           f"(found only one); pass {LAYOUT_HINT}")
    return root


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32):
    """Build a ``StableDiffusionXLPipeline`` (if ``text_encoder_2/`` exists) or a
    ``StableDiffusionPipeline`` from the component folders of ``path`` (no ``model_index.json``
    needed, nothing downloaded, no safety checker), with a ``DDIMScheduler`` on the model's
    schedule (``clip_sample=False``: latents are not in [-1, 1]). UNet and text encoders in
    ``dtype``, the VAE in float32."""
    try:
        from diffusers import (
            AutoencoderKL,
            DDIMScheduler,
            StableDiffusionPipeline,
            StableDiffusionXLPipeline,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    except ImportError as err:
        raise AmbientError(f"the latent path needs diffusers, transformers and peft ({err}); "
                           "install them with: pip install 'ambient[latent]'") from err

    root = check_pretrained_dir(path)
    try:
        parts = {
            "unet": UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype),
            "vae": AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32),
            "scheduler": DDIMScheduler.from_pretrained(root, subfolder="scheduler",
                                                       clip_sample=False),
            "tokenizer": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(root, subfolder="text_encoder",
                                                          dtype=dtype),
        }
        if (root / "text_encoder_2").exists():
            parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2")
            parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                root, subfolder="text_encoder_2", dtype=dtype)
    except (OSError, ValueError) as err:
        raise AmbientError(f"--pretrained {root}: cannot load the model ({err}); pass "
                           f"{LAYOUT_HINT}") from err
    if "text_encoder_2" in parts:
        return StableDiffusionXLPipeline(**parts)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def load_lora(pipe, lora_dir: str | Path) -> None:
    """``pipe.load_lora_weights(lora_dir)`` (diffusers' ``pytorch_lora_weights.safetensors``)
    with a clear error for a wrong folder."""
    lora_dir = Path(lora_dir)
    hint = "pass the lora/ folder written by 'ambient finetune' (RUN_DIR/lora)"
    if not (lora_dir / LORA_WEIGHTS).is_file():
        raise AmbientError(f"--lora {lora_dir}: no {LORA_WEIGHTS} there; {hint}")
    try:
        pipe.load_lora_weights(str(lora_dir))
    except (ValueError, KeyError) as err:
        raise AmbientError(f"--lora {lora_dir}: not LoRA weights for this model ({err}); "
                           f"{hint}") from err


class LatentModel:
    """A diffusers SD/SDXL pipeline (``unet``, ``vae``, ``scheduler``, ``encode_prompt``) seen
    through the project's conventions: VP levels of the schedule, latents, conditioning, and the
    UNet as :class:`~ambient.latent.adapter.UNetDenoiser`."""

    def __init__(self, pipe, device: torch.device | str | None = None) -> None:
        self.pipe = pipe
        self.device = torch.device(device) if device is not None else pipe.unet.device
        pipe.unet.to(self.device)
        pipe.vae.to(self.device)
        if pipe.vae.dtype != torch.float32:
            pipe.vae.to(torch.float32)
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(self.device)
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.to(torch.float64)
        if self.alphas_cumprod[-1] <= 0:
            raise AmbientError("the model's scheduler has zero terminal SNR (alphas_cumprod[-1] = 0),"
                               " which has no finite VE level; use a schedule without "
                               "rescale_betas_zero_snr")
        self.prediction_type = pipe.scheduler.config.prediction_type
        self.is_sdxl = getattr(pipe, "text_encoder_2", None) is not None

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def data_level(self, t: int) -> float:
        """VP level of data noised at timestep ``t`` (0 for ``t = 0``, see
        :func:`ambient.latent.loss.data_level`)."""
        return data_level(t, self.alphas_cumprod)

    def ve_sigma(self, t: int) -> float:
        """VE level of timestep ``t``: ``sqrt((1 - a_t) / a_t)``."""
        return float(ve_sigma_from_timestep(t, self.alphas_cumprod))

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 8) -> Tensor:
        """Images ``[N, 3, H, W]`` in ``[-1, 1]`` -> latents ``(mean - shift) * scaling_factor``."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        out = [vae.encode(images[i:i + batch_size].to(self.device, torch.float32)).latent_dist.mean
               for i in range(0, len(images), batch_size)]
        return ((torch.cat(out) - shift) * vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 8) -> Tensor:
        """Latents -> images ``[N, 3, H, W]`` in ``[-1, 1]`` (clamped), float32 on the CPU."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        out = [vae.decode(z.to(self.device, torch.float32) / vae.config.scaling_factor + shift)
               .sample.clamp(-1, 1).cpu()
               for z in latents.split(batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def conditioning(
        self,
        prompts: list[str],
        time_ids: Tensor | None = None,
        negative_prompt: str | None = None,
        with_uncond: bool = False,
    ) -> tuple[UNetConditioning, UNetConditioning | None]:
        """Text conditioning of ``prompts`` (one row each) from ``pipe.encode_prompt``, and the
        unconditional rows (negative or empty prompt, SDXL: zeros if ``force_zeros_for_empty_prompt``)
        when ``with_uncond``. ``time_ids`` ``[N, 6]`` or ``[1, 6]`` is SDXL's micro-conditioning
        (see :func:`sdxl_time_ids`; left None here it must be set before the UNet is called);
        it is ignored for SD 1.x/2.x."""
        if self.is_sdxl:
            pe, npe, pooled, npooled = self.pipe.encode_prompt(
                prompt=prompts, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=with_uncond, negative_prompt=negative_prompt)
            ids = None if time_ids is None else time_ids.to(self.device).expand(len(prompts), -1)
            cond = UNetConditioning(pe, pooled, ids)
            return cond, (UNetConditioning(npe, npooled, ids) if with_uncond else None)
        pe, npe = self.pipe.encode_prompt(prompts, self.device, 1, with_uncond, negative_prompt)
        return UNetConditioning(pe), (UNetConditioning(npe) if with_uncond else None)

    def denoiser(
        self,
        cond: UNetConditioning | None = None,
        uncond: UNetConditioning | None = None,
        guidance_scale: float = 1.0,
        unet: torch.nn.Module | None = None,
        dtype: torch.dtype | None = None,
    ) -> UNetDenoiser:
        """``D(x, v)`` of this model's UNet (or ``unet``, e.g. the one being trained, whose
        input ``dtype`` is then best given)."""
        return UNetDenoiser(unet if unet is not None else self.pipe.unet, self.alphas_cumprod,
                            self.prediction_type, cond, uncond, guidance_scale, dtype)


def sdxl_time_ids(
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int],
    target_size: tuple[int, int],
) -> Tensor:
    """SDXL micro-conditioning ``[orig_h, orig_w, crop_top, crop_left, target_h, target_w]``."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)
