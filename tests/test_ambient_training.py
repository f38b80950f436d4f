"""A tiny MLP trained on noisy mixture samples: ambient beats naive training above sigma_n."""

import torch

from ambient.data import GaussianMixture
from ambient.evaluate.exactness import excess_denoising_error
from ambient.nets import build_denoiser
from ambient.objective import ObjectiveConfig, training_loss


def _fit(y, sigma_n, method, steps=400, seed=0):
    torch.manual_seed(seed)
    model = build_denoiser((2,), hidden=64, depth=2, emb_dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = ObjectiveConfig(method=method)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(y), (256,), generator=g)
        loss, _ = training_loss(model, y[idx], sigma_n[idx], cfg, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_ambient_mlp_beats_naive_above_sigma_n():
    gmm = GaussianMixture.random(2, 3, mean_scale=1.0, component_scale=0.15,
                                 generator=torch.Generator().manual_seed(2))
    s = 0.4
    g = torch.Generator().manual_seed(1)
    x0 = gmm.sample(8192, generator=g)
    y = x0 + s * torch.randn(x0.shape, generator=g)
    sigma_n = torch.full((len(y),), s)
    levels = [0.5, 0.8, 1.5]
    ambient = excess_denoising_error(_fit(y, sigma_n, "ambient"), gmm, levels,
                                     generator=torch.Generator().manual_seed(3))
    naive = excess_denoising_error(_fit(y, sigma_n, "dsm"), gmm, levels,
                                   generator=torch.Generator().manual_seed(3))
    for sigma in levels:
        assert ambient[sigma] < 0.5 * naive[sigma], (sigma, ambient, naive)
