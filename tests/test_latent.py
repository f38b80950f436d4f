"""The latent path on tiny randomly initialised SDXL components (no hub, CPU): the UNet adapter's
conversions against exact Gaussian posteriors, the loss against the core VP loss, the noisy latent
cache, LoRA fine-tuning with consistency + resume, reloading into a pipeline, sampling, the
memorisation attack, the denoising table and the command line."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ambient import checkpoint as ck
from ambient.engine import EngineConfig
from ambient.errors import AmbientError
from ambient.latent.adapter import (
    GraphedUNetDenoisers,
    UNetConditioning,
    UNetDenoiser,
    ve_view,
    x0_from_prediction,
)
from ambient.latent.attack import center_box, masked_attack, noise_attack, score
from ambient.latent.cache import CACHE_FILE, NoisyLatents
from ambient.latent.cli import register_cli
from ambient.latent.data import list_examples, load_cropped
from ambient.latent.denoise import format_latent_table, latent_denoising_table
from ambient.latent.finetune import ATTENTION_PROJECTIONS, FinetuneConfig, add_lora, finetune
from ambient.latent.loss import latent_loss
from ambient.latent.model import LatentModel, load_lora, load_pipeline, sdxl_time_ids
from ambient.latent.sample import generate_images, generate_latents, timestep_sigmas, write_pngs
from ambient.losses import ambient_loss_vp
from ambient.noise import add_noise_vp, alphas_cumprod_scaled_linear
from ambient.objective import ConsistencyConfig

RES = 16  # pixels; the tiny VAE halves it -> 8x8 latents


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread_module():
    """The tiny models are far faster on one thread (intra-op sync costs more than it saves,
    badly so on a shared CPU); this covers the module-scoped fixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread(_deterministic_cpu):
    """One thread in each test too (after conftest's fixture, which sets two)."""
    torch.set_num_threads(1)


def _tiny_text():
    """A character-level CLIP tokenizer (written locally, no hub) and a tiny text config."""
    from transformers import CLIPTextConfig, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) for c in string.ascii_lowercase})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                            intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                            vocab_size=len(vocab), projection_dim=16, hidden_act="gelu",
                            max_position_embeddings=16)
    return tokenizer, config


def _tiny_parts(cross_attention_dim: int, **unet_kwargs) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=RES // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, transformer_layers_per_block=(1, 1),
        cross_attention_dim=cross_attention_dim, norm_num_groups=4, **unet_kwargs)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                        sample_size=RES, norm_num_groups=4)
    return {"unet": unet, "vae": vae}


def _tiny_sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, config = _tiny_text()
    parts = _tiny_parts(32, addition_embed_type="text_time", addition_time_embed_dim=8,
                        projection_class_embeddings_input_dim=6 * 8 + 16)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1)
    return StableDiffusionXLPipeline(
        **parts, scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer,
        text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny SDXL saved as a user's local model folder (diffusers layout)."""
    path = tmp_path_factory.mktemp("tiny-sdxl")
    _tiny_sdxl().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Four non-square RGB images with captions in metadata.jsonl."""
    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        pixels = rng.integers(0, 256, size=(20, 18, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        rows.append(json.dumps({"file_name": f"img{i}.png", "text": "a face" if i % 2 else "eyes"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def model(pretrained) -> LatentModel:
    return LatentModel(load_pipeline(pretrained), "cpu")


# ------------------------------------------------------------- adapter: exact conversions


class GaussianUNet(nn.Module):
    """Stub UNet for ``x0 ~ N(mu, c^2 I)``: returns the exact ``E[eps | x_t]`` (or v, or x0)
    at the fractional timestep ``t`` (levels interpolated linearly, as timestep_from_vp)."""

    def __init__(self, alphas_cumprod, mu: float, c: float, prediction_type: str) -> None:
        super().__init__()
        self.levels = torch.sqrt(1 - alphas_cumprod)
        self.mu, self.c, self.prediction_type = mu, c, prediction_type
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))  # sets the input dtype
        self.config = SimpleNamespace(in_channels=4)

    def posterior_mean(self, x, v):
        a = torch.sqrt(1 - v**2)
        return self.mu + self.c**2 * a / (a**2 * self.c**2 + v**2) * (x - a * self.mu)

    def forward(self, x, t, encoder_hidden_states=None, added_cond_kwargs=None):
        lo = t.floor().long().clamp(0, len(self.levels) - 2)
        v = torch.lerp(self.levels[lo], self.levels[lo + 1], t.double() - lo).view(-1, 1, 1, 1)
        x0 = self.posterior_mean(x, v)
        eps = (x - torch.sqrt(1 - v**2) * x0) / v
        out = {"epsilon": eps, "v_prediction": torch.sqrt(1 - v**2) * eps - v * x0,
               "sample": x0}[self.prediction_type]
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_adapter_recovers_exact_posterior_mean(prediction_type):
    ac = alphas_cumprod_scaled_linear()
    unet = GaussianUNet(ac, mu=0.3, c=0.7, prediction_type=prediction_type)
    denoiser = UNetDenoiser(unet, ac, prediction_type)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    levels = torch.sqrt(1 - ac)
    v = levels[0] + (levels[-1] - levels[0]) * torch.rand(6, dtype=torch.float64)  # fractional t
    expected = unet.posterior_mean(x, v.view(-1, 1, 1, 1))
    torch.testing.assert_close(denoiser(x, v), expected, rtol=1e-9, atol=1e-9)
    # VE view: D_ve(x, sigma) = E[x0 | x0 + sigma z = x] = mu + c^2 / (c^2 + sigma^2) (x - mu)
    sigma = v / torch.sqrt(1 - v**2)
    sb = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(ve_view(denoiser)(x, sigma),
                               0.3 + 0.49 / (0.49 + sb**2) * (x - 0.3), rtol=1e-9, atol=1e-9)


def test_adapter_drives_an_unconditional_unet2dmodel():
    """A plain ``UNet2DModel`` (no text) is called with the fractional timestep of ``v``."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    ac = alphas_cumprod_scaled_linear()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([250.0, 640.5])
    v = torch.lerp(torch.sqrt(1 - ac[[250, 640]]), torch.sqrt(1 - ac[[251, 641]]),
                   torch.tensor([0.0, 0.5], dtype=torch.float64)).float()
    with torch.no_grad():
        eps = unet(x, t).sample
        out = UNetDenoiser(unet, ac, "epsilon")(x, v)
    torch.testing.assert_close(out, x0_from_prediction(eps, x, v, "epsilon"), rtol=1e-4, atol=1e-4)


def test_guidance_combines_conditional_and_unconditional():
    class ShiftUNet(nn.Module):  # epsilon = encoder state: D = (x - v h) / sqrt(1 - v^2)
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(()))

        def forward(self, x, t, encoder_hidden_states=None, added_cond_kwargs=None):
            return SimpleNamespace(sample=encoder_hidden_states.view(-1, 1, 1, 1).expand_as(x))

    ac = alphas_cumprod_scaled_linear()
    cond, uncond = UNetConditioning(torch.ones(1, 1, 1)), UNetConditioning(torch.zeros(1, 1, 1))
    x, v = torch.randn(3, 2, 2, 2), torch.full((3,), 0.5)
    d_c = UNetDenoiser(ShiftUNet(), ac, "epsilon", cond)(x, v)
    d_u = UNetDenoiser(ShiftUNet(), ac, "epsilon", uncond)(x, v)
    guided = UNetDenoiser(ShiftUNet(), ac, "epsilon", cond, uncond, guidance_scale=3.0)(x, v)
    torch.testing.assert_close(guided, d_u + 3.0 * (d_c - d_u))


class _NoVAE(nn.Identity):
    dtype = torch.float32


def _stub_model(prediction_type: str = "epsilon", mu: float = 0.3, c: float = 0.7):
    ac = alphas_cumprod_scaled_linear().float()
    unet = GaussianUNet(ac.double(), mu, c, prediction_type)
    pipe = SimpleNamespace(
        unet=unet, vae=_NoVAE(), vae_scale_factor=1,
        scheduler=SimpleNamespace(alphas_cumprod=ac,
                                  config=SimpleNamespace(prediction_type=prediction_type)),
        encode_prompt=lambda prompts, *args: (torch.zeros(len(prompts), 1, 1),) * 2)
    return LatentModel(pipe, "cpu"), unet


def _ddim_gaussian_std(sigmas: list[float], c2: float) -> float:
    """Std of ``x - mu`` after DDIM (VE Euler) steps along ``sigmas`` for ``N(mu, c2)`` data, from
    the VP prior: each step multiplies it by ``1 - (s - s') s / (c2 + s^2)``."""
    std = math.sqrt(1 + sigmas[0] ** 2)
    for s, s_next in itertools.pairwise(sigmas):
        std *= 1 - (s - s_next) * s / (c2 + s * s)
    return std


def test_ddim_and_truncated_sampling_of_exact_denoiser_follow_the_gaussian_laws():
    """With the exact denoiser of N(0.3, 0.7^2): 25-step DDIM gives N(0.3, std^2) with std the
    exact DDIM recursion (0.65, -> 0.7 with more steps); truncated sampling at t_n outputs
    D(x, sigma_n) = mu + c^2 / (c^2 + sigma_n^2) (x - mu)."""
    model, _ = _stub_model("v_prediction")
    gen = torch.Generator().manual_seed(0)
    sigmas = timestep_sigmas(model.alphas_cumprod, 25).tolist()
    full = generate_latents(model, [""] * 256, guidance_scale=1.0, resolution=4, generator=gen)
    assert abs(full.mean().item() - 0.3) < 0.02
    assert abs(full.std().item() / _ddim_gaussian_std([*sigmas, 0.0], 0.49) - 1) < 0.02
    many = timestep_sigmas(model.alphas_cumprod, 500).tolist()
    assert _ddim_gaussian_std([*many, 0.0], 0.49) == pytest.approx(0.7, rel=0.005)
    t_n = 500
    sigmas = timestep_sigmas(model.alphas_cumprod, 25, t_n).tolist()
    trunc = generate_latents(model, [""] * 256, guidance_scale=1.0, resolution=4,
                             truncate_t_n=t_n, generator=gen)
    expected = _ddim_gaussian_std(sigmas, 0.49) * 0.49 / (0.49 + sigmas[-1] ** 2)
    assert abs(trunc.mean().item() - 0.3) < 0.02
    assert abs(trunc.std().item() / expected - 1) < 0.02


# ------------------------------------------------------------------------ loading, errors


def test_pretrained_dir_errors(tmp_path, pretrained, faces):
    with pytest.raises(AmbientError, match="not a folder"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "unet").mkdir()
    with pytest.raises(AmbientError, match=r"missing unet/config\.json, vae/config\.json"):
        load_pipeline(tmp_path)
    cfg = FinetuneConfig(pretrained=str(pretrained), data=str(faces), out=str(tmp_path / "r"),
                         t_n=1000, resolution=RES)
    with pytest.raises(AmbientError, match=r"--t-n 1000 is out of range"):
        finetune(cfg, progress=False)
    with pytest.raises(AmbientError, match="--data"):
        list_examples(tmp_path / "nothing-here")


def test_captions_and_sdxl_crop(faces, tmp_path):
    examples = list_examples(faces)
    assert [e.caption for e in examples] == ["eyes", "a face", "eyes", "a face"]
    assert {e.caption for e in list_examples(faces, prompt="a photo")} == {"a photo"}
    pixels, size, crop = load_cropped(examples[0].path, RES)
    assert pixels.shape == (3, RES, RES) and pixels.min() >= -1 and pixels.max() <= 1
    assert size == (20, 18) and crop == (1, 0)  # 20x18 -> 18x16 -> centre crop 16x16
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (4, 4)).save(bad / "x.png")
    (bad / "metadata.csv").write_text("file_name,text\nother.png,hi\n")
    with pytest.raises(AmbientError, match=r"no row for x\.png"):
        list_examples(bad)


# ---------------------------------------------------------------------------------- loss


def test_latent_loss_equals_core_vp_loss_on_the_diffusers_unet(model):
    ac = model.alphas_cumprod
    y = torch.randn(2, 4, RES // 2, RES // 2)
    time_ids = sdxl_time_ids((RES, RES), (0, 0), (RES, RES))[None]
    cond, _ = model.conditioning(["a face", "eyes"], time_ids)
    t_n = 100
    loss, stats = latent_loss(lambda c: model.denoiser(c), y, cond, ac, t_n,
                              ConsistencyConfig(weight=0.0), torch.Generator().manual_seed(3))
    # replay the draws: integer t in (t_n, T), then the noise
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(t_n + 1, ac.numel(), (2,), generator=gen)
    noise = torch.randn(y.shape, generator=gen)
    s, v = math.sqrt(1 - ac[t_n].item()), torch.sqrt(1 - ac[t]).float().view(-1, 1, 1, 1)
    core = ambient_loss_vp(model.denoiser(cond), y, s, v.flatten(), noise).loss.mean()
    # by hand: the UNet at integer t, epsilon -> x0, Theorem A.5's y_hat
    x = torch.sqrt((1 - v**2) / (1 - s**2)) * y + torch.sqrt((v**2 - s**2) / (1 - s**2)) * noise
    with torch.no_grad():
        eps = model.pipe.unet(x, t, **cond.unet_kwargs()).sample
    x0 = (x - v * eps) / torch.sqrt(1 - v**2)
    y_hat = ((v**2 - s**2) / (v**2 * math.sqrt(1 - s**2)) * x0
             + s**2 / v**2 * torch.sqrt((1 - v**2) / (1 - s**2)) * x)
    by_hand = (y_hat - y).pow(2).mean()
    torch.testing.assert_close(loss, core, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss, by_hand, rtol=1e-4, atol=0)
    assert stats["ambient"] == stats["loss"]


def _graphed_setup(model, device: str):
    """The tiny UNet on ``device``, two conditionings of two rows each, a batch of latents."""
    import copy

    unet = copy.deepcopy(model.pipe.unet).to(device)
    time_ids = sdxl_time_ids((RES, RES), (0, 0), (RES, RES))[None]
    conds = [model.conditioning(prompts, time_ids)[0].to(device)
             for prompts in (["a face", "eyes"], ["eyes", "a nose"])]
    x = torch.randn(2, 4, RES // 2, RES // 2, generator=torch.Generator().manual_seed(0))
    return unet, conds, x.to(device), torch.tensor([0.3, 0.6], device=device)


def test_graphed_unet_denoisers_pass_through_on_the_cpu(model):
    unet, conds, x, v = _graphed_setup(model, "cpu")
    denoisers = GraphedUNetDenoisers(model.alphas_cumprod, model.prediction_type, None)
    d = denoisers.make(unet, conds[0])
    eager = UNetDenoiser(unet, model.alphas_cumprod, model.prediction_type, conds[0])
    with torch.no_grad():
        assert torch.equal(d(x, v), eager(x, v))
    assert d(x, v).grad_fn is not None and denoisers.graphs.recorded == {}
    with pytest.raises(ValueError, match="conditioning fields"):
        denoisers.make(unet, UNetConditioning(encoder_hidden_states=conds[0].encoder_hidden_states))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_unet_denoisers_replay_with_each_calls_conditioning(model):
    """One graph for both conditionings: the conditioning is an input of the graph, not a
    constant recorded in it."""
    unet, conds, x, v = _graphed_setup(model, "cuda")
    denoisers = GraphedUNetDenoisers(model.alphas_cumprod, model.prediction_type, None)
    with torch.no_grad():
        for cond in conds + conds:
            want = UNetDenoiser(unet, model.alphas_cumprod, model.prediction_type, cond)(x, v)
            torch.testing.assert_close(denoisers.make(unet, cond)(x, v), want, rtol=1e-4,
                                       atol=1e-4)
    assert len(denoisers.graphs.recorded) == 1


def test_latent_loss_adds_the_weighted_consistency_term(model):
    y = torch.randn(2, 4, RES // 2, RES // 2)
    cond, _ = model.conditioning(["a face", "eyes"], sdxl_time_ids((RES, RES), (0, 0), (RES, RES))[None])
    for start in ("data", "ambient"):
        cfg = ConsistencyConfig(weight=0.5, fraction=0.5, start=start, chain_steps=2)
        _, stats = latent_loss(lambda c: model.denoiser(c), y, cond, model.alphas_cumprod, 500,
                               cfg, torch.Generator().manual_seed(0))
        assert torch.isfinite(stats["consistency"])
        torch.testing.assert_close(stats["loss"], stats["ambient"] + 0.5 * stats["consistency"])


def test_stable_diffusion_2_v_prediction_model(tmp_path):
    """An SD 1.x/2.x layout (one text encoder, no micro-conditioning), v-prediction."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer, config = _tiny_text()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type="v_prediction", steps_offset=1, clip_sample=False)
    StableDiffusionPipeline(**_tiny_parts(16), scheduler=scheduler, tokenizer=tokenizer,
                            text_encoder=CLIPTextModel(config), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(tmp_path)
    sd = LatentModel(load_pipeline(tmp_path), "cpu")
    assert not sd.is_sdxl and sd.prediction_type == "v_prediction"
    cond, _ = sd.conditioning(["a face", "eyes"])
    _, stats = latent_loss(lambda c: sd.denoiser(c), torch.randn(2, 4, RES // 2, RES // 2), cond,
                           sd.alphas_cumprod, 100, ConsistencyConfig(weight=0.01), None)
    assert torch.isfinite(stats["loss"]) and "consistency" in stats
    images = generate_images(sd, ["a face"], num_steps=2, guidance_scale=3.0, resolution=RES)
    assert images.shape == (1, 3, RES, RES) and torch.isfinite(images).all()


# -------------------------------------------------------- fine-tune, reload, sample, attack


@pytest.fixture(scope="module")
def run(pretrained, faces, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    engine = EngineConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=0, ema_halflife_steps=0,
                          checkpoint_every=2, log_every=1)
    cfg = FinetuneConfig(pretrained=str(pretrained), data=str(faces), out=str(out), t_n=100,
                         resolution=RES, consistency=ConsistencyConfig(weight=0.01, fraction=0.5,
                                                                       chain_steps=1),
                         engine=engine)
    finetune(cfg, progress=False)
    return out


def test_noisy_latents_are_made_once_with_fixed_per_image_noise(run, model, faces):
    cache = NoisyLatents(run / CACHE_FILE)
    assert len(cache) == 4
    examples = list_examples(faces)
    s = math.sqrt(1 - model.alphas_cumprod[100].item())
    for i in (0, 3):
        z0 = model.encode(load_cropped(examples[i].path, RES)[0][None])
        eps = torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(cache[torch.tensor([i])], add_noise_vp(z0, 0.0, s, eps[None]))
    torch.testing.assert_close(cache.time_ids[0], torch.tensor([20.0, 18, 1, 0, RES, RES]))


def test_lora_reloads_into_a_pipeline(run, pretrained, model):
    """The adapters saved for diffusers give the same UNet as the engine's newest checkpoint."""
    from safetensors.torch import load_file

    saved = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert saved and all(k.startswith("unet.") and ".lora." in k for k in saved)  # diffusers keys
    assert any(k.endswith("lora.up.weight") and v.abs().max() > 0 for k, v in saved.items())
    pipe = load_pipeline(pretrained)
    load_lora(pipe, run / "lora")
    reference = load_pipeline(pretrained).unet
    add_lora(reference, 4, ATTENTION_PROJECTIONS)
    trained = load_file(ck.list_checkpoints(run)[0] / "model.safetensors")
    assert len(trained) == len(saved)
    assert not reference.load_state_dict(trained, strict=False).unexpected_keys
    x, t = torch.randn(1, 4, RES // 2, RES // 2), torch.tensor([500.0])
    cond, _ = model.conditioning(["a face"], sdxl_time_ids((RES, RES), (0, 0), (RES, RES))[None])
    with torch.no_grad():
        base = model.pipe.unet(x, t, **cond.unet_kwargs()).sample
        tuned = pipe.unet(x, t, **cond.unet_kwargs()).sample
        expected = reference(x, t, **cond.unet_kwargs()).sample
    assert not torch.allclose(base, tuned)
    torch.testing.assert_close(tuned, expected)
    with pytest.raises(AmbientError, match="--lora"):
        load_lora(pipe, run)


def test_resume_continues_and_reuses_the_cache(run, pretrained, faces):
    mtime = (run / CACHE_FILE).stat().st_mtime_ns
    engine = EngineConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=0, ema_halflife_steps=0,
                          checkpoint_every=1, log_every=1)
    cfg = FinetuneConfig(pretrained=str(pretrained), data=str(faces), out=str(run), t_n=100,
                         resolution=RES, consistency=ConsistencyConfig(weight=0.0), engine=engine)
    with pytest.raises(AmbientError, match="--resume"):
        finetune(cfg, progress=False)
    finetune(cfg, resume=True, progress=False)
    assert (run / CACHE_FILE).stat().st_mtime_ns == mtime
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_sampling_attack_and_denoising_table_with_the_finetuned_model(run, pretrained, faces,
                                                                       tmp_path):
    pipe = load_pipeline(pretrained)
    load_lora(pipe, run / "lora")
    tuned = LatentModel(pipe, "cpu")
    full = generate_images(tuned, ["a face", "eyes"], num_steps=3, guidance_scale=2.0,
                           resolution=RES)
    trunc = generate_images(tuned, ["a face"], num_steps=3, guidance_scale=2.0,
                            truncate_t_n=100, resolution=RES)
    assert full.shape == (2, 3, RES, RES) and trunc.shape == (1, 3, RES, RES)
    assert torch.isfinite(full).all() and full.abs().max() <= 1
    assert len(write_pngs(full, tmp_path / "png")) == 2

    images = torch.stack([load_cropped(e.path, RES)[0] for e in list_examples(faces)])
    embed = lambda im: torch.nn.functional.avg_pool2d(im, 4).flatten(1)  # noqa: E731
    result = score(noise_attack(tuned, images, t_start=900, num_steps=3), images, embed)
    assert result.samples.shape == images.shape and result.sims.shape == (4,)
    assert set(result.summary()) == {"mean_similarity", "nearest_is_source", "above_0.9",
                                     "above_0.95"}
    box = center_box(RES, 0.5, tuned.pipe.vae_scale_factor)
    masked = masked_attack(tuned, images, box, num_steps=3)
    assert torch.isfinite(masked).all() and score(masked, images, embed, box).nearest.shape == (4,)

    rows = latent_denoising_table(tuned, images, timesteps=(900, 100))
    assert [r["t"] for r in rows] == [900, 100]
    assert rows[1]["latent_mse"] < rows[0]["latent_mse"]
    assert "| 100 |" in format_latent_table(rows)


def test_cli(run, faces, tmp_path):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["latent-sample", "--run", str(run), "--truncate", "--num", "1",
                              "--steps", "2", "--resolution", str(RES), "--out",
                              str(tmp_path / "s")])
    assert args.func(args) == 0 and len(list((tmp_path / "s").glob("*.png"))) == 1
    args = parser.parse_args(["latent-attack", "--run", str(run), "--data", str(faces),
                              "--features", "pixels", "--steps", "2", "--num", "2",
                              "--resolution", str(RES), "--out", str(tmp_path / "a")])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    assert len(report["similarity"]) == 2
    args = parser.parse_args(["latent-denoise", "--run", str(run), "--data", str(faces),
                              "--timesteps", "500", "--num", "2", "--resolution", str(RES),
                              "--out", str(tmp_path / "table.md")])
    assert args.func(args) == 0 and (tmp_path / "table.json").is_file()
    args = parser.parse_args(["finetune", "--pretrained", str(tmp_path), "--data", str(faces),
                              "--t-n", "100", "--out", str(tmp_path / "r"), "--no-cuda-graphs"])
    assert args.no_cuda_graphs
    with pytest.raises(AmbientError, match="not a diffusers Stable Diffusion layout"):
        args.func(args)


def test_load_cropped_applies_exif_orientation(sideways_jpeg):
    pixels, size, _ = load_cropped(sideways_jpeg, 4)
    assert size == (6, 4) and pixels.shape == (3, 4, 4)
