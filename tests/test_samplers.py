"""Samplers driven by the analytic denoiser of a Gaussian mixture reproduce the right laws."""

import math

import pytest
import torch

from ambient import samplers
from ambient.data import GaussianMixture
from ambient.evaluate.exactness import component_covariance_error, sliced_wasserstein

N = 4000


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.random(2, 4, mean_scale=1.5, component_scale=0.15,
                                  generator=torch.Generator().manual_seed(3))


def _floor(a_fn, seed):
    """SW between two independent draws of the same law (the two-sample noise floor)."""
    g = torch.Generator().manual_seed(seed)
    return sliced_wasserstein(a_fn(g), a_fn(g), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("sampler", "steps"), [("heun", 40), ("ddim", 100), ("euler", 200),
                                             ("multistep", 40)])
def test_full_sampling_reproduces_mixture(gmm, sampler, steps):
    g = torch.Generator().manual_seed(1)
    out = samplers.sample(gmm.denoiser, (N, 2), num_steps=steps, sampler=sampler, generator=g)
    floor = _floor(lambda gg: gmm.sample(N, generator=gg), seed=2)
    sw = sliced_wasserstein(out, gmm.sample(N, generator=g), generator=torch.Generator().manual_seed(0))
    assert sw < 1.5 * floor, f"{sampler}: SW {sw:.4f} vs floor {floor:.4f}"
    assert component_covariance_error(out, gmm).width_ratio == pytest.approx(1.0, abs=0.1)


def test_truncated_sampling_gives_law_of_posterior_mean(gmm):
    """Stopping at s and outputting D(x_s, s) draws E[x0 | x_s]: tighter components."""
    s = 0.3
    g = torch.Generator().manual_seed(4)
    out = samplers.sample(gmm.denoiser, (N, 2), num_steps=40, truncate_at=s, generator=g)

    def posterior_mean_draws(gg):
        x0 = gmm.sample(N, generator=gg)
        return gmm.denoiser(x0 + s * torch.randn(x0.shape, generator=gg), s)

    floor = _floor(posterior_mean_draws, seed=5)
    sw = sliced_wasserstein(out, posterior_mean_draws(g), generator=torch.Generator().manual_seed(0))
    assert sw < 1.5 * floor
    expected = component_covariance_error(posterior_mean_draws(g), gmm).width_ratio
    got = component_covariance_error(out, gmm).width_ratio
    assert got < 0.8, "truncated samples should be visibly tighter than p0's components"
    assert got == pytest.approx(expected, rel=0.1)


def test_posterior_sampling_from_noised_data_returns_to_p0(gmm):
    g = torch.Generator().manual_seed(6)
    x0 = gmm.sample(N, generator=g)
    out = samplers.posterior_sample(gmm.denoiser, x0, sigma_start=1.0, num_steps=100,
                                    sampler="euler", generator=g)
    floor = _floor(lambda gg: gmm.sample(N, generator=gg), seed=7)
    assert sliced_wasserstein(out, gmm.sample(N, generator=g),
                              generator=torch.Generator().manual_seed(0)) < 1.5 * floor
    # From a tiny level the sample stays next to its start; from a huge one it forgets it.
    near = samplers.posterior_sample(gmm.denoiser, x0[:200], sigma_start=0.01, num_steps=10,
                                     generator=g)
    assert (near - x0[:200]).norm(dim=1).mean() < 0.05


def test_multistep_sde_samples_the_posterior_of_a_gaussian():
    """eta = 1 is posterior sampling: from one point y at level s under the prior N(0, v I), the
    draws have mean v / (v + s^2) y and variance v s^2 / (v + s^2) (closed form); eta = 0 maps
    y to one point."""
    v, s = 0.04, 0.3
    gauss = GaussianMixture(torch.ones(1), torch.zeros(1, 2), v * torch.eye(2)[None])
    y = torch.tensor([0.5, -0.2], dtype=torch.float64).expand(N, 2)
    sigmas = samplers.edm_sigmas(40, 0.002, s)
    g = torch.Generator().manual_seed(9)
    out = samplers.sample_multistep(gauss.denoiser, y, sigmas, eta=1.0, generator=g)
    torch.testing.assert_close(out.mean(0), v / (v + s**2) * y[0], atol=0.01, rtol=0)
    torch.testing.assert_close(out.var(0), torch.full((2,), v * s**2 / (v + s**2),
                                                      dtype=torch.float64), atol=0, rtol=0.08)
    flow = samplers.sample_multistep(gauss.denoiser, y[:5], sigmas)
    assert torch.allclose(flow, flow[:1].expand(5, 2))
    assert torch.allclose(samplers.sample_multistep(gauss.denoiser, y[:5], sigmas, eta=0.0,
                                                    generator=g), flow)


def test_reverse_step_matches_ancestral_formula():
    x, d = torch.randn(5, 3), torch.randn(5, 3)
    z = torch.randn(5, 3)
    sigma, nxt = torch.full((5,), 2.0), torch.full((5,), 0.5)
    got = samplers.reverse_step(x, d, sigma, nxt, 1.0, z)
    mean = x - (4.0 - 0.25) / 4.0 * (x - d)
    std = (4.0 - 0.25) ** 0.5 * 0.5 / 2.0
    torch.testing.assert_close(got, mean + std * z)
    # eta = 0 is the probability-flow Euler step x + (s' - s)(x - D)/s.
    torch.testing.assert_close(samplers.reverse_step(x, d, sigma, nxt, 0.0),
                               x + (0.5 - 2.0) * (x - d) / 2.0)


def test_edm_sigmas_schedule():
    s = samplers.edm_sigmas(10, 0.002, 80.0)
    assert s.shape == (11,) and s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002)
    assert s[-1] == 0 and torch.all(s[:-1] > s[1:])
    with pytest.raises(ValueError):
        samplers.edm_sigmas(0)


def test_edm_sigmas_rho_inf_is_the_geometric_limit():
    geo = samplers.edm_sigmas(7, 0.002, 0.33, rho=math.inf)
    ratios = geo[:-2] / geo[1:-1]
    assert geo[0] == pytest.approx(0.33) and geo[-2] == pytest.approx(0.002) and geo[-1] == 0
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    assert torch.allclose(samplers.edm_sigmas(7, 0.002, 0.33, rho=1e6), geo, rtol=1e-4)


def test_per_sample_schedules_match_one_schedule_per_sample(gmm):
    tops = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    grid = samplers.edm_sigmas(6, 0.002, tops)
    assert grid.shape == (7, 3)
    for j, top in enumerate(tops.tolist()):
        assert torch.allclose(grid[:, j], samplers.edm_sigmas(6, 0.002, top))
    with pytest.raises(ValueError):
        samplers.edm_sigmas(6, 0.002, torch.tensor([1.0, 0.001]))
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for run in (samplers.sample_heun, samplers.sample_ddim, samplers.sample_multistep):
        batched = run(gmm.denoiser, x, grid)
        for j in range(3):
            assert torch.allclose(batched[j], run(gmm.denoiser, x[j:j + 1], grid[:, j])[0])
