"""Evaluation tools: exactness, Frechet distance, features, denoising table, memorisation,
plots and reports, each against a closed form or a case whose answer is known."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import load_file

from ambient.data.digits import load_digits
from ambient.data.gmm import GaussianMixture
from ambient.errors import AmbientError
from ambient.evaluate import (
    DigitsFeatures,
    DinoV2Features,
    PixelFeatures,
    Report,
    TorchScriptFeatures,
    build_digits_features_weights,
    closest_pair,
    component_covariance_error,
    core_spread,
    covariance_noise_floor,
    denoising_table,
    exactness_table,
    excess_denoising_error,
    feature_stats,
    format_table,
    frechet_distance,
    frechet_distance_from_stats,
    get_extractor,
    heldout_baseline,
    nearest_neighbour_similarity,
    plot_bars,
    plot_excess_error,
    plot_nearest_pairs,
    plot_points,
    plot_similarity_histograms,
    posterior_memorization,
    sliced_wasserstein,
    sw_noise_floor,
    unconditional_memorization,
    valley_share,
)
from ambient.evaluate.report import command_line


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def gmm() -> GaussianMixture:
    return GaussianMixture.random(dim=3, num_components=3, mean_scale=3.0, component_scale=0.3,
                                  generator=gen(1))


def diagonal_gaussian(variances: list[float]) -> GaussianMixture:
    d = len(variances)
    return GaussianMixture(torch.ones(1), torch.zeros(1, d), torch.diag(torch.tensor(variances))[None])


# ----------------------------------------------------------------------------- exactness


def test_excess_error_of_the_analytic_denoiser_is_zero(gmm):
    excess = excess_denoising_error(gmm.denoiser, gmm, [0.05, 0.3, 2.0], n=2048, generator=gen())
    assert list(excess) == [0.05, 0.3, 2.0]
    assert all(v < 1e-9 for v in excess.values())


def test_excess_error_of_wrong_denoisers_matches_hand_computation():
    # single Gaussian N(0, diag(c)): E[x0|x] = c/(c+s^2) x, MMSE = sum_i c_i s^2/(c_i+s^2)
    c = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    g = diagonal_gaussian(c.tolist())
    delta = torch.tensor([0.1, -0.2, 0.3])
    for s in (0.5, 1.0):
        mmse = (c * s**2 / (c + s**2)).sum().item()
        # identity D(x) = x: x - E[x0|x] = s^2/(c+s^2) x, E|.|^2 = sum s^4/(c+s^2)
        want = (s**4 / (c + s**2)).sum().item() / mmse
        got = excess_denoising_error(lambda x, sigma: x, g, [s], n=20000, generator=gen())[s]
        assert got == pytest.approx(want, rel=0.03)
        # a constant offset delta: excess = |delta|^2 / MMSE
        got = excess_denoising_error(lambda x, sigma: g.denoiser(x, sigma) + delta, g, [s],
                                     n=20000, generator=gen())[s]
        assert got == pytest.approx(delta.pow(2).sum().item() / mmse, rel=0.03)


def test_exactness_table_labels_levels(gmm):
    wrong = lambda x, sigma: 1.1 * gmm.denoiser(x, sigma)  # noqa: E731
    rows = exactness_table(wrong, gmm, sigma_n=0.2, factors=(0.5, 1.0, 2.0), n=512,
                           generator=gen())
    assert [r.side for r in rows] == ["below", "at", "above"]
    assert [r.sigma for r in rows] == pytest.approx([0.1, 0.2, 0.4])
    assert all(r.excess > 0.01 for r in rows)
    exact = exactness_table(gmm.denoiser, gmm, sigma_n=0.2, n=256, generator=gen())
    assert all(r.excess < 1e-9 for r in exact)


def test_sliced_wasserstein_noise_floor_and_shift(gmm):
    floor = sw_noise_floor(gmm, 4000, generator=gen(2), repeats=3)
    same = sliced_wasserstein(gmm.sample(4000, generator=gen(3)), gmm.sample(4000, generator=gen(4)),
                              generator=gen(5))
    assert same < 2.5 * floor
    shifted = gmm.sample(4000, generator=gen(6)) + 2.0
    far = sliced_wasserstein(gmm.sample(4000, generator=gen(7)), shifted, generator=gen(8))
    # a shift v: SW^2 = E<v, theta>^2 = |v|^2 / d = 4
    assert far > 4 * floor and far == pytest.approx(2.0, abs=0.2)


def test_covariance_noise_floor_matches_the_sample_covariance_error(gmm):
    # one isotropic 2-D component: relative Frobenius error of a sample covariance of n draws has
    # mean square (d + 1) / n, and its mean a little below the root of that (Jensen)
    n = 4000
    floor = covariance_noise_floor(diagonal_gaussian([0.04, 0.04]), n, generator=gen(3),
                                   repeats=40)
    assert 0.8 * math.sqrt(3 / n) < floor < math.sqrt(3 / n)
    # a mixture: each component sees about n w_k draws, so four times the draws halve the floor
    ratio = (covariance_noise_floor(gmm, 4 * n, generator=gen(4), repeats=10)
             / covariance_noise_floor(gmm, n, generator=gen(5), repeats=10))
    assert 0.4 < ratio < 0.6


def test_sliced_wasserstein_unequal_sizes_is_exact_in_1d():
    # quantiles of {0, 1} and {0, 0.5, 1} differ by 0.5 on [1/3, 2/3): W2^2 = 0.25 / 3
    a = torch.tensor([[0.0], [1.0]])
    b = torch.tensor([[0.0], [0.5], [1.0]])
    assert sliced_wasserstein(a, b, num_projections=4) == pytest.approx(math.sqrt(1 / 12))
    assert sliced_wasserstein(b, a, num_projections=4) == pytest.approx(math.sqrt(1 / 12))


def test_component_covariance_error(gmm):
    fresh = component_covariance_error(gmm.sample(20000, generator=gen()), gmm)
    assert fresh.error < 0.08
    assert fresh.trace_ratio == pytest.approx([1, 1, 1], abs=0.06)
    assert fresh.mass == pytest.approx(gmm.weights.tolist(), abs=0.02)
    wide = GaussianMixture(gmm.weights, gmm.means, 2 * gmm.covs)
    err = component_covariance_error(wide.sample(20000, generator=gen()), gmm)
    assert err.error == pytest.approx(1.0, abs=0.1)
    assert err.trace_ratio == pytest.approx([2, 2, 2], rel=0.08)
    assert err.width_ratio == pytest.approx(math.sqrt(2), rel=0.04)
    assert "too wide" in err.summary()


def test_core_spread(gmm):
    fresh = core_spread(gmm.sample(20000, generator=gen()), gmm)
    assert fresh.core == pytest.approx(1.0, abs=0.03)
    assert fresh.stranded == pytest.approx(0.01, abs=0.004)
    wide = core_spread(GaussianMixture(gmm.weights, gmm.means, 4 * gmm.covs).sample(
        20000, generator=gen()), gmm)
    assert wide.core == pytest.approx(2.0, rel=0.05)  # std twice too wide
    assert wide.stranded > 0.3


def test_valley_share_sees_a_bridge_between_the_closest_components():
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    pair_gmm = GaussianMixture(torch.tensor([0.4, 0.4, 0.2]), means, 0.01 * torch.eye(2).repeat(3, 1, 1))
    assert closest_pair(pair_gmm) == (0, 1)
    fresh = pair_gmm.sample(200000, generator=gen())
    # each of the pair's components reaches t > 0.3 (3 std towards the other) with P = 0.00135
    assert valley_share(fresh, pair_gmm) == pytest.approx(0.8 * 0.00135, abs=4e-4)
    # a tenth of the samples spread evenly along the segment between the pair: 40% of them
    # lie in the valley's middle (0.3, 0.7); moved off the segment by more than L / 4, none
    t = torch.rand(20000, generator=gen(2))
    bridge = torch.stack([t, torch.zeros_like(t)], 1)
    joined = torch.cat([fresh[:180000], bridge])
    assert valley_share(joined, pair_gmm) == pytest.approx(0.1 * 0.4 + 0.9 * 0.00108, abs=3e-3)
    off = torch.cat([fresh[:180000], bridge + torch.tensor([0.0, 0.3])])
    assert valley_share(off, pair_gmm) == pytest.approx(0.9 * 0.00108, abs=4e-4)
    assert valley_share(joined, pair_gmm, pair=(0, 2)) < 1e-3  # another pair's valley is empty


# ----------------------------------------------------------------------------- Frechet


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 2, size=5), rng.uniform(0.1, 2, size=5)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(
        want, abs=1e-6)
    # full covariances against scipy's sqrtm
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T, b @ b.T
    ref = (((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2)
           - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real))
    assert frechet_distance_from_stats(mu1, c1, mu2, c2) == pytest.approx(ref, abs=1e-6)


def features_with_stats(mu: torch.Tensor, var: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Features whose sample mean is ``mu`` and unbiased sample covariance ``diag(var)``."""
    z = torch.randn(n, len(mu), generator=gen(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))
    return mu + math.sqrt(n - 1) * q * var.sqrt()


def test_frechet_distance_of_feature_sets():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.5, 1.0, -1.0])
    v1, v2 = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.3, 0.5, 4.0])
    a = features_with_stats(mu1.double(), v1.double(), 500, 0)
    b = features_with_stats(mu2.double(), v2.double(), 300, 1)
    mean, cov = feature_stats(a)
    assert torch.allclose(mean, mu1.double()) and torch.allclose(cov, torch.diag(v1).double())
    want = ((mu1 - mu2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(want.item(), abs=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a.numpy(), a.float()) == pytest.approx(0.0, abs=1e-4)


# ----------------------------------------------------------------------------- features


def test_digits_features_are_deterministic_and_accurate(tmp_path):
    images, labels = load_digits("test", return_labels=True)
    feats = DigitsFeatures()
    out = feats(images)
    assert out.shape == (len(images), 64) and out.dtype == torch.float32
    assert torch.equal(out, feats(images)) and torch.equal(out, get_extractor("digits")(images))
    assert (feats.logits(images).argmax(1) == labels).float().mean() > 0.9
    assert feats.info["test_accuracy"] > 0.9
    with pytest.raises(AmbientError, match=r"\[N, 1, 8, 8\]"):
        feats(torch.zeros(2, 3, 16, 16))


def test_digits_feature_builder_is_reproducible(tmp_path):
    short = [build_digits_features_weights(tmp_path / f"w{i}.safetensors", epochs=1)
             for i in range(2)]
    assert short[0] == short[1]
    assert (tmp_path / "w0.safetensors").read_bytes() == (tmp_path / "w1.safetensors").read_bytes()
    acc = build_digits_features_weights(tmp_path / "full.safetensors")
    assert acc > 0.9
    assert DigitsFeatures(tmp_path / "full.safetensors").info["test_accuracy"] == round(acc, 4)
    assert set(load_file(tmp_path / "full.safetensors")) == set(DigitsFeatures().net.state_dict())


def test_missing_digits_weights_is_a_user_error(tmp_path):
    with pytest.raises(AmbientError, match="build_digits_features_weights"):
        DigitsFeatures(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AmbientError, match="not a safetensors file"):
        DigitsFeatures(tmp_path / "junk.safetensors")


def test_pixel_features_and_unknown_extractor():
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    assert torch.equal(PixelFeatures()(x), x.reshape(3, 16))
    assert isinstance(get_extractor("pixels"), PixelFeatures)
    with pytest.raises(AmbientError, match="dinov2:DIR"):
        get_extractor("inception-from-the-internet")


@pytest.fixture
def tiny_dinov2(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, image_size=32, patch_size=8)
    model = Dinov2Model(config).eval()
    model.save_pretrained(tmp_path / "dino")
    return tmp_path / "dino", model


def test_dinov2_features_from_a_local_checkpoint(tiny_dinov2):
    path, model = tiny_dinov2
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    feats = DinoV2Features(path)
    out = feats(images)
    assert out.shape == (5, 32) and feats.image_size == 32
    assert torch.equal(out, get_extractor(f"dinov2:{path}")(images))
    # by hand: 3 channels, bicubic to 32, [0, 1], ImageNet normalisation, CLS token
    x = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(32, 32),
                                        mode="bicubic", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model(pixel_values=((x + 1) / 2 - mean) / std).last_hidden_state[:, 0]
    assert torch.allclose(out, want, atol=1e-5)


def test_dinov2_bad_directories_are_user_errors(tmp_path):
    from transformers import BertConfig

    with pytest.raises(AmbientError, match=r"config\.json"):
        DinoV2Features(tmp_path / "missing")
    BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(AmbientError, match="not a DINOv2 checkpoint"):
        DinoV2Features(tmp_path / "bert")


class ScriptedStats(torch.nn.Module):
    """A stand-in for FID's Inception: per-channel means, or their square as 'features'."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        means = x.mean(dim=(2, 3))
        return means * means if return_features else means


class ScriptedSize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([x.shape[2], x.shape[3]]).expand(x.shape[0], 2).float()


def test_torchscript_features(tmp_path):
    torch.jit.save(torch.jit.script(ScriptedStats()), tmp_path / "stats.pt")
    torch.jit.save(torch.jit.script(ScriptedSize()), tmp_path / "size.pt")
    images = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 1, 8, 8)
    out = TorchScriptFeatures(tmp_path / "stats.pt")(images)  # [-1, 1] -> [0, 255], squared
    assert out.shape == (3, 3)
    assert torch.allclose(out, torch.tensor([0.0, 127.5, 255.0]).pow(2)[:, None].expand(3, 3),
                          rtol=1e-4, atol=1e-3)
    unit = TorchScriptFeatures(tmp_path / "stats.pt", input_range=(0.0, 1.0), image_size=None)
    assert torch.allclose(unit(images), torch.tensor([0.0, 0.25, 1.0])[:, None].expand(3, 3))
    assert get_extractor(f"torchscript:{tmp_path / 'size.pt'}")(images[:1]).tolist() == [[299, 299]]
    (tmp_path / "junk.pt").write_text("not a network")
    with pytest.raises(AmbientError, match="TorchScript"):
        TorchScriptFeatures(tmp_path / "junk.pt")
    with pytest.raises(AmbientError, match="not found"):
        TorchScriptFeatures(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- denoising table


def test_denoising_table():
    clean = load_digits("test")[:100]
    identity = denoising_table(lambda x, s: x, clean, [0.1, 0.5], seed=3, batch_size=32)
    z = torch.randn(clean.shape, generator=gen(3))
    for s, mse in identity.items():
        assert mse == pytest.approx(s**2 * z.pow(2).mean().item(), rel=1e-5)
    zero = denoising_table(lambda x, s: torch.zeros_like(x), clean, [0.1, 0.5])
    assert zero[0.1] == pytest.approx(clean.pow(2).mean().item(), rel=1e-5) == zero[0.5]
    text = format_table({"identity": identity, "zero": zero})
    lines = text.strip().splitlines()
    assert lines[0] == "| method | sigma=0.1 | sigma=0.5 |" and len(lines) == 4
    assert lines[2].startswith("| identity | **")


# ----------------------------------------------------------------------------- memorisation


def test_nearest_neighbour_similarity_is_brute_force_cosine():
    s, t = torch.randn(50, 6), torch.randn(70, 6)
    sims, idx = nearest_neighbour_similarity(s, t, batch_size=16)
    cos = torch.nn.functional.cosine_similarity(s[:, None], t[None], dim=-1)
    assert torch.allclose(sims, cos.max(1).values, atol=1e-6)
    assert torch.equal(idx, cos.argmax(1))
    assert (sims >= -1).all() and (sims <= 1).all()
    centred, _ = nearest_neighbour_similarity(s, t, center=True)
    m = t.mean(0)
    cos = torch.nn.functional.cosine_similarity(s[:, None] - m, t[None] - m, dim=-1)
    assert torch.allclose(centred, cos.max(1).values, atol=1e-6)


def test_heldout_baseline_separates_copies_from_new_digits():
    train, test = load_digits("train"), load_digits("test")[:100]
    raw = heldout_baseline(test, train, PixelFeatures())
    centred = heldout_baseline(test, train, PixelFeatures(), center=True)
    copies = heldout_baseline(train[:100], train, PixelFeatures(), center=True)
    assert raw.above_095 > 0.3 > centred.above_095  # raw cosines of 8x8 digits are all high
    assert copies.above_095 == 1.0 and copies.nearest.tolist() == list(range(100))


def test_memorization_of_a_copying_model():
    train = load_digits("train")[:40]
    copy = lambda x, sigma: train[7].expand_as(x)  # noqa: E731  (always returns one image)
    post = posterior_memorization(copy, train, PixelFeatures(), sigma_start=5.0, num_steps=4,
                                  indices=[0, 7, 9], generator=gen(), center=True)
    assert post.above_095 == 1.0 and post.nearest.tolist() == [7, 7, 7]
    assert post.sims == pytest.approx(torch.ones(3), abs=1e-6)
    assert post.summary()["nearest_is_source"] == pytest.approx(1 / 3)
    masked = posterior_memorization(copy, train, DigitsFeatures(), sigma_start=5.0, num_steps=4,
                                    box_fraction=0.5, batch_size=16, generator=gen())
    assert len(masked.sims) == 40 and masked.fraction_above(0.95) == 1.0
    uncond = unconditional_memorization(copy, train, PixelFeatures(), num=5, num_steps=4,
                                        generator=gen())
    assert uncond.samples.shape == (5, 1, 8, 8) and uncond.above_090 == 1.0
    assert uncond.sources is None


def test_memorization_of_a_non_copying_model():
    train = load_digits("train")[:40]
    shrink = lambda x, sigma: x / (1 + sigma[:, None, None, None] ** 2)  # noqa: E731  (N(0, I) prior)
    res = unconditional_memorization(shrink, train, PixelFeatures(), num=20, num_steps=8,
                                     sampler="euler", generator=gen())
    assert res.above_090 == 0.0
    assert (res.sims >= -1).all() and (res.sims <= 1).all()


# ----------------------------------------------------------------------------- plots, report


def test_plots_and_report(tmp_path):
    curves = {"ambient": {0.1: 0.2, 0.5: 0.01, 1.0: 0.0}, "oracle": {0.1: 1e-3, 0.5: 1e-3}}
    paths = [
        plot_excess_error(curves, tmp_path / "plots" / "excess.png", sigma_n=0.5),
        plot_similarity_histograms({"a": torch.rand(50), "b": np.random.rand(50)},
                                   tmp_path / "plots" / "sims.png"),
        plot_nearest_pairs(load_digits("test")[:6], load_digits("train")[:10],
                           torch.arange(6), tmp_path / "pairs.png", sims=torch.rand(6), num=5),
        plot_bars({"naive": 3.0, "ambient": 1.0}, tmp_path / "bars.png", ylabel="FD"),
        plot_points(torch.randn(200, 3), tmp_path / "scatter.png"),
        plot_points(torch.randn(200, 1), tmp_path / "histogram.png", title="one coordinate"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    gmm = GaussianMixture.random(2, 2, generator=gen())
    rows = exactness_table(gmm.denoiser, gmm, 0.5, factors=(0.5, 2.0), n=64, generator=gen())
    report = (Report("Evaluation | test").heading("Exactness").text("Below *and* above.")
              .table(rows).table([["a|b", 1.23456789]], columns=["name", "value"]))
    for p in paths:
        report.image(p, caption=p.stem)
    md = report.write(tmp_path / "out")
    assert md == tmp_path / "out" / "report.md"
    text = md.read_text()
    assert text.startswith("# Evaluation | test\n")
    assert "| sigma | factor | side | excess |" in text and "| a\\|b | 1.235 |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(paths) and all(not link.startswith("/") for link in links)
    assert all((md.parent / link).is_file() for link in links)
    page = (tmp_path / "out" / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == links and "<td>a|b</td>" in page
    assert sorted(p.name for p in md.parent.iterdir()) == ["report.html", "report.md"]


def test_command_line_quotes_what_the_shell_would_split():
    line = command_line("benchmarks/x.py", ["--out", "my results/x.md", "--seeds", "0", "1"])
    assert line == "python benchmarks/x.py --out 'my results/x.md' --seeds 0 1"
    assert command_line("benchmarks/x.py", []) == "python benchmarks/x.py"


def test_training_log_skips_a_cut_line_and_names_a_bad_one(tmp_path):
    from ambient.evaluate.run_report import read_training_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 25, "loss": 2.0, "lr": 0.001, "ambient": 1.5}\n'
                   '{"step": 50, "loss": 1.0, "lr": 0.001, "ambient": 0.75, "consistency": 0.25}\n'
                   '{"step": 75, "lo')  # a kill cut the last record short
    assert read_training_log(tmp_path) == {"loss": {25.0: 2.0, 50.0: 1.0},
                                           "ambient": {25.0: 1.5, 50.0: 0.75},
                                           "consistency": {50.0: 0.25}}
    log.write_text('{"step": 25, "loss": 2.0}\nnot json\n{"step": 50, "loss": 1.0}\n')
    with pytest.raises(AmbientError, match=r"metrics.jsonl, line 2"):
        read_training_log(tmp_path)
    assert read_training_log(tmp_path / "elsewhere") == {}
