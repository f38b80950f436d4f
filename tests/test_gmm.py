"""The Gaussian mixture's closed forms against brute-force and autograd."""

import pytest
import torch

from ambient.data import GaussianMixture


@pytest.fixture
def gmm():
    return GaussianMixture.random(3, 4, component_scale=0.3, generator=torch.Generator().manual_seed(1))


def test_score_is_gradient_of_log_density(gmm):
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    sigma = torch.rand(10, dtype=torch.float64) + 0.1
    (grad,) = torch.autograd.grad(gmm.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(gmm.score(x.detach(), sigma), grad)


def test_tweedie_posterior_mean_and_score_agree(gmm):
    x = 2 * torch.randn(10, 3, dtype=torch.float64)
    sigma = torch.rand(10, dtype=torch.float64) + 0.05
    torch.testing.assert_close(gmm.posterior_mean(x, sigma),
                               x + sigma[:, None] ** 2 * gmm.score(x, sigma))


def test_posterior_mean_matches_monte_carlo(gmm):
    """E[x0 | x_sigma in a small ball] from joint samples ~ the closed form."""
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample(400_000, generator=g).double()
    sigma = 0.5
    x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    anchor = x[:1]
    near = (x - anchor).norm(dim=1) < 0.2
    assert near.sum() > 200
    mc = x0[near].mean(0)
    closed = gmm.posterior_mean(x[near], sigma).mean(0)
    torch.testing.assert_close(mc, closed, atol=0.06, rtol=0)


def test_sample_moments(gmm):
    x = gmm.sample(200_000, generator=torch.Generator().manual_seed(3)).double()
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)


def test_vp_denoiser_is_ve_denoiser_after_change_of_variables(gmm):
    x0 = gmm.sample(8).double()
    z = torch.randn_like(x0)
    v = torch.full((8,), 0.7, dtype=torch.float64)
    x_vp = (1 - v[:, None] ** 2).sqrt() * x0 + v[:, None] * z
    sigma = v / (1 - v**2).sqrt()
    torch.testing.assert_close(gmm.denoiser_vp(x_vp, v), gmm.denoiser(x0 + sigma[:, None] * z, sigma))


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 1), torch.ones(2, 1, 1))
    with pytest.raises(ValueError, match="weights \\[K\\]"):
        GaussianMixture(torch.tensor([1.0]), torch.zeros(2, 1), torch.ones(2, 1, 1))
