"""Backbones: shapes, zero-initialised output, gradient flow, determinism, errors, JSON config
round trip, and a quick check that an MLP denoiser learns a 2-D Gaussian's posterior mean."""

from __future__ import annotations

import json

import pytest
import torch

from ambient.errors import AmbientError
from ambient.losses import dsm_loss
from ambient.nets import (
    MLP,
    MLPConfig,
    UNet,
    UNetConfig,
    backbone_config,
    build_backbone,
    build_denoiser,
)
from ambient.precond import EDMPrecond

SMALL_UNET = {"base_channels": 8, "emb_dim": 16, "blocks_per_level": 1}
SMALL_MLP = {"hidden": 32, "depth": 2, "emb_dim": 16}

CASES = [  # (sample shape, overrides, backbone class)
    ((2,), SMALL_MLP, MLP),
    ((1, 8, 8), {}, UNet),  # the default digits network
    ((3, 32, 32), {**SMALL_UNET, "channel_mult": (1, 2, 2), "attention_levels": (2,)}, UNet),
    ((4, 16, 16), {**SMALL_UNET, "attention_levels": (1,), "attention_heads": 2}, UNet),
]


def _params(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in net.named_parameters()}


@pytest.mark.parametrize(("shape", "overrides", "cls"), CASES)
def test_output_shape_and_zero_init(shape, overrides, cls):
    denoiser = build_denoiser(shape, **overrides)
    assert isinstance(denoiser, EDMPrecond) and isinstance(denoiser.backbone, cls)
    x = torch.randn(3, *shape)
    sigma = torch.tensor([0.01, 0.5, 20.0])
    assert denoiser.backbone(x, torch.log(sigma) / 4).shape == x.shape
    c_skip = (0.25 / (sigma**2 + 0.25)).reshape(-1, *[1] * len(shape))
    torch.testing.assert_close(denoiser(x, sigma), c_skip * x)


def test_mlp_flattens_any_sample_shape():
    net = build_backbone((2, 3), kind="mlp", **SMALL_MLP)
    assert net(torch.randn(5, 2, 3), torch.zeros(5)).shape == (5, 2, 3)


@pytest.mark.parametrize(("shape", "overrides", "cls"), CASES)
def test_gradients_reach_every_parameter(shape, overrides, cls):
    net = build_backbone(shape, **overrides)
    with torch.no_grad():  # move zero-initialised layers off zero so every path carries signal
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    x = torch.randn(4, *shape)
    net(x, torch.randn(4)).square().mean().backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead


def test_noise_level_changes_the_output():
    net = build_backbone((1, 8, 8), **SMALL_UNET)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([-1.0, 1.0]))
    assert not torch.allclose(out[0], out[1])


def _seeded_net(shape: tuple[int, ...], seed: int) -> torch.nn.Module:
    """Build under ``seed``; zero-initialised layers get seeded values too (non-trivial output)."""
    torch.manual_seed(seed)
    net = build_backbone(shape)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_deterministic_under_seed(shape):
    x, c = torch.randn(4, *shape), torch.randn(4)
    net_a, net_b, net_c = _seeded_net(shape, 123), _seeded_net(shape, 123), _seeded_net(shape, 7)
    sd_a, sd_b = net_a.state_dict(), net_b.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert torch.equal(net_a(x, c), net_b(x, c))
    assert not torch.equal(net_a(x, c), net_c(x, c))


@pytest.mark.parametrize(("shape", "overrides"), [
    ((2,), {}),
    ((1, 8, 8), {}),
    ((3, 32, 32), {"channel_mult": (1, 2, 2), "attention_levels": (1, 2), "dropout": 0.1}),
    ((4, 8, 8), {"kind": "unet", "base_channels": 16, "norm_groups": 4}),
    ((1, 8, 8), {"kind": "mlp", "hidden": 64}),
])
def test_config_json_round_trip(shape, overrides):
    cfg = backbone_config(shape, **overrides)
    assert cfg["kind"] == overrides.get("kind", "mlp" if len(shape) == 1 else "unet")
    loaded = json.loads(json.dumps(cfg))
    assert loaded == cfg
    rebuilt = build_backbone(list(shape), **loaded)
    assert _params(rebuilt) == _params(build_backbone(shape, **overrides))
    assert backbone_config(shape, **loaded) == cfg


def test_config_defaults_are_complete():
    assert backbone_config((2,)) == {"kind": "mlp", "hidden": 256, "depth": 4, "emb_dim": 64,
                                     "dropout": 0.0}
    cfg = backbone_config((1, 8, 8))
    assert cfg["kind"] == "unet" and cfg["channel_mult"] == [1, 2]
    assert UNetConfig(channel_mult=[1, 2, 2]).channel_mult == (1, 2, 2)
    assert MLPConfig().hidden == 256


@pytest.mark.parametrize(("call", "words"), [
    (lambda: build_backbone((1, 10, 10), channel_mult=(1, 2, 2)),
     ["10x10", "divisible by 2^2 = 4", "resize", "channel_mult"]),
    (lambda: build_backbone((2,), base_channels=8), ["base_channels", "kind='unet'"]),
    (lambda: build_backbone((1, 8, 8), widht=3), ["widht", "valid fields", "base_channels"]),
    (lambda: backbone_config((2,), kind="transformer"), ["transformer", "'mlp'"]),
    (lambda: build_backbone((8, 8)), ["(8, 8)", "(1, H, W)"]),
    (lambda: build_backbone((2,), kind="unet"), ["(C, H, W)", "(2,)"]),
    (lambda: build_backbone((0, 4)), ["(0, 4)"]),
    (lambda: build_backbone((1, 8, 8), base_channels=12), ["norm_groups=8", "12"]),
    (lambda: build_backbone((1, 8, 8), attention_levels=(2,)), ["attention_levels", "[2]"]),
    (lambda: build_backbone((1, 8, 8), channel_mult=[]), ["channel_mult"]),
    (lambda: build_backbone((2,), hidden=0), ["hidden=0"]),
    (lambda: build_backbone((2,), emb_dim=7), ["emb_dim=7", "even"]),
    (lambda: build_backbone((2,), dropout=1.5), ["dropout=1.5"]),
])
def test_errors_name_the_problem_and_the_fix(call, words):
    with pytest.raises(AmbientError) as info:
        call()
    message = str(info.value)
    assert "fix" in message
    for word in words:
        assert word in message


def test_unet_checks_image_size_at_call_time():
    net = build_backbone((1, 8, 8), **SMALL_UNET)
    with pytest.raises(AmbientError, match="9x8"):
        net(torch.randn(1, 1, 9, 8), torch.zeros(1))


def test_mlp_denoiser_learns_gaussian_posterior_mean():
    """DSM on x0 ~ N(mu, diag(std^2)): a few hundred Adam steps take the loss from its zero-init
    value to within 10% of the Bayes loss of the exact posterior mean
    ``(std^2 x + sigma^2 mu) / (std^2 + sigma^2)``."""
    torch.set_num_threads(1)  # a tiny network: one thread is faster on a shared CPU
    mu, std = torch.tensor([1.5, -1.0]), torch.tensor([0.3, 0.6])

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = mu + std * torch.randn(n, 2)
        return x0, torch.exp(-1.2 + 1.2 * torch.randn(n)), torch.randn(n, 2)

    def bayes(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s2 = s[:, None] ** 2
        return (std**2 * x + s2 * mu) / (std**2 + s2)

    denoiser = build_denoiser((2,), hidden=64, depth=2, emb_dim=32)
    opt = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    held_out = draw(4096)
    with torch.no_grad():
        start = dsm_loss(denoiser, *held_out).loss.mean()
        optimum = dsm_loss(bayes, *held_out).loss.mean()
    for _ in range(250):
        loss = dsm_loss(denoiser, *draw(256)).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = dsm_loss(denoiser, *held_out).loss.mean()
    assert start > 2 * optimum
    assert end < 1.1 * optimum, (start.item(), end.item(), optimum.item())
