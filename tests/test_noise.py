"""Noise-level conventions: VE <-> VP round trips, DDPM schedules, adding noise."""

import pytest
import torch

from ambient import noise


def test_ve_vp_round_trip():
    x = torch.randn(16, 3, dtype=torch.float64)
    sigma = torch.rand(16, dtype=torch.float64) * 10 + 1e-3
    x_vp, v = noise.ve_to_vp(x, sigma)
    assert torch.all((v > 0) & (v < 1))
    x_back, sigma_back = noise.vp_to_ve(x_vp, v)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(sigma_back, sigma)


def test_vp_state_law_matches_ve():
    """x_vp = sqrt(1 - v^2) x0 + v z  maps to  x_ve = x0 + sigma z (same x0, z)."""
    x0, z = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    v = torch.full((8,), 0.6, dtype=torch.float64)
    x_ve, sigma = noise.vp_to_ve((1 - v[:, None] ** 2).sqrt() * x0 + v[:, None] * z, v)
    torch.testing.assert_close(x_ve, x0 + sigma[:, None] * z)


def test_sdxl_schedule_levels():
    """MATH.md: SDXL's scaled-linear schedule gives t=100 -> v ~ 0.325, 500 -> 0.85, 800 -> 0.98."""
    ac = noise.alphas_cumprod_scaled_linear()
    v = noise.vp_from_timestep(torch.tensor([100, 500, 800]), ac)
    torch.testing.assert_close(v, torch.tensor([0.325, 0.85, 0.98], dtype=torch.float64),
                               atol=0.01, rtol=0)
    # diffusers' Euler sigma is the VE sigma of the same level.
    torch.testing.assert_close(noise.ve_sigma_from_timestep(500, ac),
                               ((1 - ac[500]) / ac[500]).sqrt())


@pytest.mark.parametrize("schedule", [noise.alphas_cumprod_scaled_linear,
                                      noise.alphas_cumprod_linear])
def test_timestep_round_trip(schedule):
    ac = schedule()
    t = torch.tensor([0, 1, 17, 100, 500, 998, 999])
    back = noise.timestep_from_vp(noise.vp_from_timestep(t, ac), ac)
    torch.testing.assert_close(back, t.to(torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="timesteps must lie"):
        noise.vp_from_timestep(1000, ac)


def test_add_noise_ve_has_law_of_x_sigma():
    """y at level s, then add_noise_ve to sigma: total noise std is sigma (per sample)."""
    n, d = 200_000, 1
    s = torch.where(torch.arange(n) % 2 == 0, 0.0, 0.3)
    y = s[:, None] * torch.randn(n, d)
    x = noise.add_noise_ve(y, s, torch.full((n,), 0.5), torch.randn(n, d))
    for parity in (0, 1):
        assert x[parity::2].std().item() == pytest.approx(0.5, rel=0.01)


def test_add_noise_vp_has_law_of_x_v():
    n = 200_000
    x0 = 2.0 + 0.1 * torch.randn(n, 1, dtype=torch.float64)
    s, v = 0.3, 0.8
    z1, z2 = torch.randn(n, 1, dtype=torch.float64), torch.randn(n, 1, dtype=torch.float64)
    y = (1 - s**2) ** 0.5 * x0 + s * z1
    x = noise.add_noise_vp(y, s, v, z2)
    assert x.mean().item() == pytest.approx((1 - v**2) ** 0.5 * 2.0, rel=0.01)
    assert x.var().item() == pytest.approx((1 - v**2) * 0.01 + v**2, rel=0.01)


def test_levels_shape_is_checked():
    with pytest.raises(ValueError, match="one per sample"):
        noise.as_levels(torch.ones(3), torch.zeros(4, 2))
