"""The losses against closed-form ground truth (Gaussian mixtures), as MATH.md prescribes."""

import math
from dataclasses import replace

import pytest
import torch

from ambient import losses, noise
from ambient.data import GaussianMixture
from ambient.errors import AmbientError
from ambient.objective import ConsistencyConfig, ObjectiveConfig, sure_at_data, training_loss
from ambient.samplers import reverse_step

G = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.random(2, 3, mean_scale=1.5, component_scale=0.3, generator=G(0))


def _noisy_data(gmm, n, sigma_n, seed):
    g = G(seed)
    x0 = gmm.sample(n, generator=g).double()
    s = noise.as_levels(torch.as_tensor(sigma_n, dtype=torch.float64), x0)
    y = x0 + s[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eta = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0, y, s, eta


def _directions(x, sigma):
    """Perturbations h(x, sigma): constants, a linear map, and a nonlinear one."""
    return {
        "e1": torch.tensor([1.0, 0.0], dtype=x.dtype).expand_as(x),
        "-e2": torch.tensor([0.0, -1.0], dtype=x.dtype).expand_as(x),
        "x": x,
        "tanh": torch.tanh(x[:, [1, 0]]),
    }


def printed_typo_ambient_loss(denoiser, y, s, sigma, eta):
    """Theorem 3.1 as printed: r (D - x) + s^2/sigma^2 x - y (wrong minimiser: D* + x)."""
    x = noise.add_noise_ve(y, s, sigma, eta)
    r = ((sigma**2 - s**2) / sigma**2)[:, None]
    resid = r * (denoiser(x, sigma) - x) + (s**2 / sigma**2)[:, None] * x - y
    return resid.pow(2).mean(1)


SIGMA_N_CASES = {
    "scalar": 0.4,
    "per_sample": torch.tensor([0.0, 0.2, 0.4, 0.8]).repeat_interleave(25_000).double(),
}


@pytest.mark.parametrize("case", list(SIGMA_N_CASES))
@pytest.mark.parametrize("ratio", [1.25, 2.0, 4.0])
def test_analytic_denoiser_minimises_ambient_loss_ve(gmm, case, ratio):
    n = 100_000
    _, y, s, eta = _noisy_data(gmm, n, SIGMA_N_CASES[case], seed=1)
    sigma = torch.where(s > 0, ratio * s, torch.full_like(s, 0.5))
    best = losses.ambient_loss(gmm.denoiser, y, s, sigma, eta).loss.mean()
    x = noise.add_noise_ve(y, s, sigma, eta)
    for name, h in _directions(x, sigma).items():
        for delta in (0.05, -0.05):
            def perturbed(xx, ss, h=h, delta=delta):
                return gmm.denoiser(xx, ss) + delta * h
            worse = losses.ambient_loss(perturbed, y, s, sigma, eta).loss.mean()
            assert worse > best, f"direction {name} delta {delta} lowered the loss"


@pytest.mark.parametrize("ratio", [1.25, 2.0, 4.0])
def test_printed_typo_variant_is_not_minimised_by_posterior_mean(gmm, ratio):
    """The typo's loss is lower at D* + x than at D*: its minimiser is wrong (MATH.md)."""
    _, y, s, eta = _noisy_data(gmm, 50_000, 0.4, seed=2)
    sigma = ratio * s
    at_truth = printed_typo_ambient_loss(gmm.denoiser, y, s, sigma, eta).mean()
    shifted = printed_typo_ambient_loss(lambda xx, ss: gmm.denoiser(xx, ss) + xx, y, s, sigma, eta)
    assert shifted.mean() < 0.5 * at_truth
    # ...while the correct loss rejects the same shift.
    good = losses.ambient_loss(gmm.denoiser, y, s, sigma, eta).loss.mean()
    bad = losses.ambient_loss(lambda xx, ss: gmm.denoiser(xx, ss) + xx, y, s, sigma, eta).loss.mean()
    assert bad > 2 * good


@pytest.mark.parametrize("case", ["scalar", "per_sample_vp"])
@pytest.mark.parametrize("ratio", [1.25, 2.0])
def test_analytic_denoiser_minimises_ambient_loss_vp(gmm, case, ratio):
    n = 100_000
    g = G(4)
    x0 = gmm.sample(n, generator=g).double()
    if case == "scalar":
        s = torch.full((n,), 0.3, dtype=torch.float64)
    else:
        s = torch.tensor([0.0, 0.2, 0.5, 0.7], dtype=torch.float64).repeat_interleave(n // 4)
    y = (1 - s[:, None] ** 2).sqrt() * x0 + s[:, None] * torch.randn(x0.shape, generator=g,
                                                                   dtype=torch.float64)
    eta = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.where(s > 0, (ratio * s).clamp_max(0.95), torch.full_like(s, 0.5))
    best = losses.ambient_loss_vp(gmm.denoiser_vp, y, s, v, eta).loss.mean()
    x = noise.add_noise_vp(y, s, v, eta)
    for name, h in _directions(x, v).items():
        for delta in (0.05, -0.05):
            def perturbed(xx, vv, h=h, delta=delta):
                return gmm.denoiser_vp(xx, vv) + delta * h
            worse = losses.ambient_loss_vp(perturbed, y, s, v, eta).loss.mean()
            assert worse > best, f"direction {name} delta {delta} lowered the VP loss"


def test_vp_loss_equals_ve_loss_under_change_of_variables(gmm):
    """Same y, noise and any denoiser: VP residual = sqrt(1 - s^2) * VE residual."""
    n = 64
    g = G(5)
    x0 = gmm.sample(n, generator=g).double()
    s_vp = torch.rand(n, generator=g, dtype=torch.float64) * 0.6
    v = s_vp + (0.99 - s_vp) * torch.rand(n, generator=g, dtype=torch.float64)
    z, eta = torch.randn_like(x0), torch.randn_like(x0)
    y_vp = (1 - s_vp[:, None] ** 2).sqrt() * x0 + s_vp[:, None] * z
    y_ve, s_ve = noise.vp_to_ve(y_vp, s_vp)
    sigma = noise.ve_sigma_from_vp(v)

    def any_denoiser(x, level):  # deliberately not the posterior mean
        return torch.sin(x) * (1 + level[:, None])

    def vp_view(x, vv):
        return any_denoiser(*noise.vp_to_ve(x, vv))

    vp = losses.ambient_loss_vp(vp_view, y_vp, s_vp, v, eta)
    ve = losses.ambient_loss(any_denoiser, y_ve, s_ve, sigma, eta)
    # ambient_loss weights by lambda(sigma) (weight_cap = 1): undo it.
    ve_resid = ve.loss / losses.edm_weight(sigma)
    torch.testing.assert_close(vp.loss, (1 - s_vp**2) * ve_resid)
    torch.testing.assert_close(noise.vp_to_ve(vp.x, v)[0], ve.x)


def test_ambient_loss_at_zero_noise_is_edm_dsm(gmm):
    x0, _, _, eta = _noisy_data(gmm, 32, 0.0, seed=6)
    sigma = torch.rand(32, dtype=torch.float64) * 3 + 0.01

    def den(x, sg):
        return 0.7 * x + sg[:, None]

    amb = losses.ambient_loss(den, x0, torch.zeros(32, dtype=torch.float64), sigma, eta)
    explicit = losses.edm_weight(sigma) * (den(x0 + sigma[:, None] * eta, sigma) - x0).pow(2).mean(1)
    torch.testing.assert_close(amb.loss, explicit)
    torch.testing.assert_close(losses.dsm_loss(den, x0, sigma, eta).loss, explicit)
    # Any weight_cap is the same at s = 0 (r = 1).
    torch.testing.assert_close(losses.ambient_loss(den, x0, 0.0, sigma, eta, weight_cap=50).loss,
                               explicit)


def test_weight_cap_interpolates_between_paper_and_x0_weighting():
    y = torch.ones(3, 2, dtype=torch.float64)
    s = torch.full((3,), 1.0, dtype=torch.float64)
    sigma = torch.tensor([1.01, 1.5, 10.0], dtype=torch.float64)
    eta = torch.zeros_like(y)

    def den(x, sg):
        return torch.zeros_like(x)

    paper = losses.ambient_loss(den, y, s, sigma, eta).loss
    capped = losses.ambient_loss(den, y, s, sigma, eta, weight_cap=4.0).loss
    r2 = ((sigma**2 - s**2) / sigma**2) ** 2
    torch.testing.assert_close(capped / paper, torch.minimum(1 / r2, torch.full_like(r2, 4.0)))
    with pytest.raises(ValueError, match="weight_cap"):
        losses.ambient_loss(den, y, s, sigma, eta, weight_cap=0.5)


def test_sample_sigma_above_is_strictly_above_and_edm_at_zero():
    g = G(7)
    s = torch.tensor([0.0, 0.05, 0.2, 1.0, 5.0]).repeat_interleave(20_000)
    sigma = losses.sample_sigma_above(s, generator=g)
    assert torch.isfinite(sigma).all()
    assert (sigma > s).all() and (sigma <= 80.0).all()
    log0 = sigma[s == 0].log()
    assert log0.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log0.std().item() == pytest.approx(1.2, abs=0.03)
    # Truncation keeps the log-normal shape above s: median of the truncated law.
    normal = torch.distributions.Normal(-1.2, 1.2)
    lo = normal.cdf(torch.tensor(0.2).log())
    expected_median = normal.icdf((lo + 1) / 2).exp()
    assert sigma[s == 0.2].median().item() == pytest.approx(expected_median.item(), rel=0.03)
    # Every ambient loss at these levels is finite (no division by zero anywhere).
    y = torch.randn(s.shape[0], 2)
    out = losses.ambient_loss(lambda x, sg: x * 0.5, y, s, sigma, weight_cap=100.0)
    assert torch.isfinite(out.loss).all()
    with pytest.raises(ValueError, match="sigma_max"):
        losses.sample_sigma_above(torch.tensor([80.0]))


_NORMAL = torch.distributions.Normal(0.0, 1.0)


def _log_normal_cdf(x: float, p_mean: float, p_std: float) -> float:
    """P(sigma <= x) for ``ln sigma ~ N(p_mean, p_std^2)``."""
    return _NORMAL.cdf(torch.tensor((math.log(x) - p_mean) / p_std)).item()


def _truncated_log_normal_median(lo: float, hi: float, p_mean: float, p_std: float) -> float:
    """Closed-form median of ``ln sigma ~ N(p_mean, p_std^2)`` truncated to ``(lo, hi)``."""
    a, b = (_log_normal_cdf(x, p_mean, p_std) for x in (lo, hi))
    return math.exp(p_mean + p_std * _NORMAL.icdf(torch.tensor((a + b) / 2)).item())


def _truncated_log_normal_cdf(x: float, lo: float, hi: float, p_mean: float, p_std: float) -> float:
    """Closed-form P(sigma <= x) for ``ln sigma ~ N(p_mean, p_std^2)`` truncated to ``(lo, hi)``."""
    a, b, c = (_log_normal_cdf(v, p_mean, p_std) for v in (lo, hi, x))
    return (c - a) / (b - a)


def test_sample_log_normal_between_bounds_has_the_truncated_law():
    lo = torch.tensor([0.002, 0.05]).repeat_interleave(20_000)
    hi = torch.tensor([0.15, 0.3]).repeat_interleave(20_000)
    sigma = losses.sample_log_normal(lo, hi, -1.2, 1.2, generator=G(3))
    assert sigma.dtype == torch.float64 and bool(((sigma > lo) & (sigma < hi)).all())
    for lo_k, hi_k in ((0.002, 0.15), (0.05, 0.3)):
        part = sigma[lo == lo_k]
        expected = _truncated_log_normal_median(lo_k, hi_k, -1.2, 1.2)
        assert part.median().item() == pytest.approx(expected, rel=0.02)
    # a float upper bound and no lower bound: the untruncated log-normal below hi
    free = losses.sample_log_normal(torch.zeros(40_000), 1e6, 0.5, 0.7, generator=G(4)).log()
    assert free.mean().item() == pytest.approx(0.5, abs=0.02)
    assert free.std().item() == pytest.approx(0.7, abs=0.02)


def test_sure_is_unbiased_for_the_denoising_risk(gmm):
    """E[SURE(D)] = E||D(y) - x0||^2 / d for any (smooth) D, here the analytic one and a wrong one."""
    n, s = 400_000, 0.5
    x0, y, sv, _ = _noisy_data(gmm, n, s, seed=8)
    probe = torch.randn(y.shape, generator=G(9), dtype=torch.float64)
    for den in (gmm.denoiser, lambda x, sg: 0.5 * torch.tanh(x)):
        sure = losses.sure_loss(den, y, sv, probe=probe, fd_eps=1e-4).loss
        risk = (den(y, sv) - x0).pow(2).mean(1)
        se = (sure - risk).std() / n**0.5
        assert abs(sure.mean() - risk.mean()) < 4 * se + 1e-3


def test_sure_at_data_trains_the_data_level_on_noisy_rows_only():
    """The SURE term at the data level draws ``ceil(fraction * m)`` of the ``m`` noisy rows; on a
    Gaussian ``x0 ~ N(0, v)`` its mean for ``D(y) = a y`` is ``lambda(s) E||a y - x0||^2 =
    lambda(s) (a^2 (v + s^2) - 2 a v + v)``, least at the posterior mean's ``a = v / (v + s^2)``."""
    n, v, s = 200_000, 0.3, 0.4
    x0 = v**0.5 * torch.randn(n, 1, generator=G(1), dtype=torch.float64)
    sigma_n = torch.where(torch.arange(n) % 2 == 0, s, 0.0).to(torch.float64)
    y = x0 + sigma_n[:, None] * torch.randn(n, 1, generator=G(2), dtype=torch.float64)
    weight = losses.edm_weight(torch.tensor(s, dtype=torch.float64)).item()
    means = {}
    for a in (0.3, v / (v + s * s), 0.9):
        rows = sure_at_data(lambda x, sg, a=a: a * x, y, sigma_n, 0.5, generator=G(3))
        assert rows is not None and len(rows) == n // 4  # half of the n / 2 noisy rows
        means[a] = rows.mean().item()
        risk = weight * (a * a * (v + s * s) - 2 * a * v + v)
        assert means[a] == pytest.approx(risk, rel=0.03)
    assert min(means, key=means.get) == pytest.approx(v / (v + s * s))
    assert sure_at_data(lambda x, sg: x, y, torch.zeros(n, dtype=torch.float64), 0.5) is None
    cfg = ObjectiveConfig(weight_cap=10.0, sure_weight=2.0)
    net = lambda x, sg: 0.5 * x  # noqa: E731
    loss, stats = training_loss(net, y[:64], sigma_n[:64], cfg, generator=G(4))
    plain, _ = training_loss(net, y[:64], sigma_n[:64], replace(cfg, sure_weight=0.0),
                             generator=G(4))
    assert loss.item() == pytest.approx(plain.item() + 2.0 * stats["sure"].item())
    for bad, field in ((replace(cfg, sure_weight=-1.0), "sure_weight"),
                       (replace(cfg, sure_fraction=0.0), "sure_fraction")):
        with pytest.raises(AmbientError, match=f"objective.{field}"):
            bad.validate()


# ----------------------------------------------------------------------------- consistency


def _one_gaussian():
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    return GaussianMixture(torch.ones(1), torch.tensor([[1.0, -0.5]]), cov[None])


def test_consistency_estimator_vanishes_for_linear_posterior_mean_any_step():
    """One Gaussian: D* is affine in x, so E[D*(X')] = D*(E[X']) = D*(x) for any step size and
    any number of ancestral substeps (each substep's mean is exact for an affine D*)."""
    gauss = _one_gaussian()
    n = 200_000
    x = gauss.sample(n, generator=G(10)).double() + 0.8 * torch.randn(n, 2, dtype=torch.float64)
    sigma = torch.full((n,), 0.8, dtype=torch.float64)
    for frac, substeps in [(0.9, 1), (0.5, 1), (0.05, 1), (0.5, 3), (0.05, 5)]:
        est = losses.consistency_loss(gauss.denoiser, x, sigma, frac * sigma,
                                      single_backward=False, substeps=substeps).loss
        assert abs(est.mean()) < 4 * est.std() / n**0.5


def test_consistency_estimator_small_for_mixture_small_steps(gmm):
    """Mixture: a small ancestral step is consistent to first order; the estimator's mean is ~0
    compared with the same quantity for a deliberately inconsistent denoiser."""
    n = 100_000
    x0 = gmm.sample(n, generator=G(11)).double()
    sigma = torch.full((n,), 0.5, dtype=torch.float64)
    x = x0 + 0.5 * torch.randn(x0.shape, generator=G(12), dtype=torch.float64)

    def inconsistent(xx, sg):
        return gmm.denoiser(xx, sg) + 3.0 * sg[:, None]

    good = losses.consistency_loss(gmm.denoiser, x, sigma, 0.95 * sigma,
                                   single_backward=False).loss
    bad = losses.consistency_loss(inconsistent, x, sigma, 0.95 * sigma, single_backward=False).loss
    assert abs(good.mean()) < 4 * good.std() / n**0.5 + 1e-4
    assert bad.mean() > 20 * abs(good.mean())


def test_consistency_estimator_matches_direct_computation(gmm):
    """For an inconsistent denoiser, E[estimator | x] = ||E[D(X')] - D(x)||^2 / d."""
    x = torch.tensor([[0.3, -0.2], [1.5, 0.5], [-1.0, 1.0]], dtype=torch.float64)
    sigma, sigma_next = 0.6, 0.3

    def inconsistent(xx, sg):
        return gmm.denoiser(xx, sg) * (1 + 0.5 * sg[:, None]) + 0.2 * sg[:, None] ** 2

    m = 200_000
    for i in range(len(x)):
        xi = x[i: i + 1].expand(m, 2)
        sg = torch.full((m,), sigma, dtype=torch.float64)
        teacher = inconsistent(xi, sg)
        draws = reverse_step(xi, teacher, sigma, sigma_next, 1.0, torch.randn(m, 2, dtype=torch.float64))
        direct = (inconsistent(draws, torch.full((m,), sigma_next, dtype=torch.float64)).mean(0)
                  - teacher[0]).pow(2).mean()
        est = losses.consistency_loss(inconsistent, xi, sg, torch.full((m,), sigma_next,
                                      dtype=torch.float64), single_backward=False).loss
        assert est.mean().item() == pytest.approx(direct.item(), rel=0.05, abs=3 * est.std().item() / m**0.5)


def test_single_backward_has_same_value_and_unbiased_gradient():
    """The one-draw gradient (doubled) has the two-draw gradient's expectation; values agree."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def den(x, sg):
        return net(torch.cat([x, sg[:, None]], 1))

    n = 50_000
    x = torch.randn(n, 2)
    sigma = torch.full((n,), 0.7)
    noise_pair = (torch.randn(n, 2), torch.randn(n, 2))
    grads = {}
    for single in (False, True):
        net.zero_grad()
        out = losses.consistency_loss(den, x, sigma, 0.5 * sigma, noise=noise_pair,
                                      single_backward=single)
        out.loss.mean().backward()
        grads[single] = (out.loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[True][0], grads[False][0])
    rel = (grads[True][1] - grads[False][1]).norm() / grads[False][1].norm()
    assert rel < 0.1


def test_own_sample_draws_contract_towards_the_truth_as_stated():
    """Data N(0, v I) at level s; a model exact for N(0, w I) (D = w / (w + sigma^2) x) draws,
    by its ODE from lift * s, N(0, w (v + s1^2) / (w + s1^2)) with s1 = lift * s: the truth at
    w = v, strictly between v and w otherwise (the contraction the docstring states)."""
    v, s, lift, n = 0.04, 0.3, 1.1, 200_000
    s1 = lift * s
    y = (v + s**2) ** 0.5 * torch.randn(n, 2, generator=G(20), dtype=torch.float64)
    tiny = torch.full((n,), 1e-4, dtype=torch.float64)  # DSM input ~ the draw itself
    for w in (v, 0.09, 0.25):
        model = lambda x, sg, w=w: w / (w + sg[:, None] ** 2) * x  # noqa: E731
        terms = losses.own_sample_loss(model, y, s, tiny, lift=lift, steps=16, generator=G(21))
        expected = w * (v + s1**2) / (w + s1**2)
        assert terms.x.var().item() == pytest.approx(expected, rel=0.015)
    assert v < 0.09 * (v + s1**2) / (0.09 + s1**2) < 0.09


@pytest.mark.parametrize(("rho", "low", "high"), [(7.0, 1.85, 2.05), (math.inf, 1.05, 1.25)])
def test_own_sample_fixed_point_bias_of_the_ode_schedule(rho, low, high):
    """The figures own_sample_loss's docstring states: on N(0, v) data (v = 0.01, s = 0.3, lift
    1.1, 6 steps) the variance w the refits converge to, w = Var(draws of the model exact for
    N(0, w)), is 1.96 v on the EDM schedule and 1.16 v on the geometric one (the map is linear
    in the data, so one data point gives the gain exactly)."""
    v, s, lift = 0.01, 0.3, 1.1
    one = torch.ones(1, 1, dtype=torch.float64)
    x1 = one + ((lift * s) ** 2 - s**2) ** 0.5 * torch.randn(1, 1, generator=G(0), dtype=torch.float64)
    w = v
    for _ in range(2000):  # contraction ~0.92 per refit
        model = lambda x, sg, w=w: w / (w + sg[:, None] ** 2) * x  # noqa: E731
        draw = losses.own_sample_loss(model, one, s, torch.full((1,), 1e-4, dtype=torch.float64),
                                      lift=lift, steps=6, generator=G(0), rho=rho).x
        gain = (draw / x1).item()  # the first noise drawn lifts y = 1 to x1
        w = gain**2 * (v + (lift * s) ** 2)
    assert low < w / v < high


@pytest.mark.parametrize(("beta", "kept", "share"), [(0.0, False, 1.0), (1.0, False, 1.0),
                                                     (3.0, False, 1.0), (1.0, True, 1.0),
                                                     (3.0, True, 1.0), (1.0, False, 0.25),
                                                     (1.0, True, 0.25)])
def test_extrapolated_refit_minimiser_is_the_signed_laws_denoiser(beta, kept, share):
    """own_sample_loss(extrapolate=beta) on N(0, v) data at s, with draws by a model exact for
    N(0, w): over linear denoisers ``a x`` at sigma', the loss is minimised by the posterior mean
    of the signed law, ``a = U / (U + sigma'^2)`` with ``U = (1 + beta) T(w) - beta N(w)``,
    ``T(w) = w (v + s^2) / (w + s^2)`` (a refit) and ``N(w) = w (T(w) + s^2) / (w + s^2)`` (a
    refit of the re-noised draws), whether the draws behind start from this call's draws or
    (``kept``) from a RefitMemory of the last call's, and whether every row has one or (``share``
    0.25) a quarter of them, weighted 4 times; at w = v it is the truth, and the variance
    moves towards v by the factor ``rho (1 - beta (1 - rho))``, ``rho = s^2 / (v + s^2)``, to
    first order."""
    v, s, sig, n = 0.01, 0.3, 0.13, 400_000  # sigma'^2 near the variances: a sensitive gain
    y = torch.randn(n, 1, generator=G(30), dtype=torch.float64)
    y = (v + s**2) ** 0.5 * y / y.square().mean().sqrt()  # the data's second moment exactly
    level = torch.full((n,), sig, dtype=torch.float64)
    rho = s**2 / (v + s**2)
    for w in (v, 2 * v):
        def model(x: torch.Tensor, sg: torch.Tensor, a: float, w: float = w) -> torch.Tensor:
            # the draws run without a graph (the model exact for N(0, w)); the DSM term with one
            return a * x if torch.is_grad_enabled() else w / (w + sg[:, None] ** 2) * x

        last = losses.RefitMemory()
        losses.own_sample_loss(lambda x, sg: model(x, sg, 1.0), y, s, level, lift=1.0, steps=32,
                               generator=G(32), extrapolate=beta, memory=last)

        def loss_at(a: float, last: losses.RefitMemory = last) -> float:
            memory = losses.RefitMemory(last.draws, last.levels) if kept else None
            return losses.own_sample_loss(lambda x, sg: model(x, sg, a), y, s, level, lift=1.0,
                                          steps=32, generator=G(31), extrapolate=beta,
                                          memory=memory, share=share).loss.mean().item()

        f0, f1, f2 = (loss_at(a) for a in (0.0, 0.5, 1.0))  # exactly quadratic in a
        curvature, slope = 2 * (f2 - 2 * f1 + f0), f2 - f0
        best = 0.5 - slope / (2 * curvature)
        t = w * (v + s**2) / (w + s**2)
        u = (1 + beta) * t - beta * w * (t + s**2) / (w + s**2)
        # measured within 0.0015; at w = 2 v a refit alone (beta 0) misses beta 1's by 0.021,
        # and beta on a quarter of the rows without their weight 4 by 0.016
        assert best == pytest.approx(u / (u + sig**2), abs=3e-3)
    w = 1.001 * v  # the signed law's variance, to first order in w - v
    t = w * (v + s**2) / (w + s**2)
    u = (1 + beta) * t - beta * w * (t + s**2) / (w + s**2)
    assert (u - v) / (w - v) == pytest.approx(rho * (1 - beta * (1 - rho)), abs=0.01)



@pytest.mark.parametrize("stop", [0.0, 0.5, 0.8])
def test_draws_stopped_above_zero_train_the_refit_with_a_smaller_gain(stop):
    """own_sample_loss(stop=a) on N(0, v) data at s, with draws by a model exact for N(0, w):
    the ODE ends at sigma'' = a sigma', where the draws have variance
    ``W = (v + s^2)(w + sigma''^2) / (w + s^2)``, and over linear denoisers ``g x`` at sigma' the
    ambient loss from sigma'' is minimised by the posterior mean of N(0, U), ``U = W -
    sigma''^2``: the truth at w = v, and a refit moves the variance towards v by the factor
    ``(s^2 - sigma''^2) / (v + s^2)`` (a = 0: ``s^2 / (v + s^2)``, the plain refit, whose loss
    is DSM on the draws to 0)."""
    v, s, sig, n = 0.01, 0.3, 0.2, 200_000
    y = torch.randn(n, 1, generator=G(30), dtype=torch.float64)
    y = (v + s**2) ** 0.5 * y / y.square().mean().sqrt()  # the data's second moment exactly
    level = torch.full((n,), sig, dtype=torch.float64)
    low = stop * sig
    for w in (v, 2 * v):
        def model(x: torch.Tensor, sg: torch.Tensor, g: float, w: float = w) -> torch.Tensor:
            return g * x if torch.is_grad_enabled() else w / (w + sg[:, None] ** 2) * x

        def loss_at(g: float) -> float:
            return losses.own_sample_loss(lambda x, sg: model(x, sg, g), y, s, level, lift=1.0,
                                          steps=16, generator=G(31), stop=stop).loss.mean().item()

        f0, f1, f2 = (loss_at(g) for g in (0.0, 0.5, 1.0))  # exactly quadratic in g
        best = 0.5 - (f2 - f0) / (4 * (f2 - 2 * f1 + f0))
        u = (v + s**2) * (w + low**2) / (w + s**2) - low**2
        assert best == pytest.approx(u / (u + sig**2), abs=3e-3)
    w = 1.001 * v  # the refit's factor, to first order in w - v
    u = (v + s**2) * (w + low**2) / (w + s**2) - low**2
    assert (u - v) / (w - v) == pytest.approx((s**2 - low**2) / (v + s**2), abs=1e-3)
    if stop == 0:  # the plain refit's loss: DSM on the draws to 0, as before the option
        def exact(x: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
            return model(x, sg, 0.3, v)

        gen = G(31)
        draws = losses.own_samples(exact, y, s, 1.0, 16, generator=gen)
        eps = torch.randn(y.shape, generator=gen, dtype=y.dtype)
        torch.testing.assert_close(
            losses.own_sample_loss(exact, y, s, level, lift=1.0, steps=16, generator=G(31)).loss,
            losses.dsm_loss(exact, draws, level, eps).loss, rtol=0, atol=0)
    with pytest.raises(ValueError, match="stop"):
        losses.own_sample_loss(lambda x, sg: x, y[:4], s, level[:4], stop=1.0)
    with pytest.raises(AmbientError, match="stop"):
        ConsistencyConfig(stop=0.5, extrapolate=1.0).validate()


def test_extrapolated_refit_with_memory_solves_once():
    """With a RefitMemory holding the last call's draws, the draws behind share one ODE solve
    with the new ones (steps + 1 calls without a graph on 2n rows, one with a graph), the memory
    then holds the new draws; without a memory it takes two solves in a row. Kept rows of
    another data level train sigma' scaled by the ratio of the levels. With share 0.25, draws
    behind for a quarter of the rows only (one solve on 8 + 2 rows, 8 + 2 rows with a graph).
    An extrapolate < 0 or a share outside (0, 1] is refused."""
    y, s = torch.randn(8, 2, generator=G(40)), 0.3
    level = torch.full((8,), 0.1)
    calls: list[tuple[bool, int]] = []
    graphed: list[torch.Tensor] = []

    def spy(x: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
        calls.append((torch.is_grad_enabled(), len(x)))
        if torch.is_grad_enabled():
            graphed.append(sg)
        return 0.5 * x

    memory = losses.RefitMemory()
    for expected in ([(False, 8)] * 8 + [(True, 16)], [(False, 16)] * 4 + [(True, 16)]):
        calls.clear()
        losses.own_sample_loss(spy, y, s, level, lift=1.0, steps=3, generator=G(41),
                               extrapolate=1.0, memory=memory)
        assert calls == expected
        assert memory.draws is not None and memory.draws.shape == y.shape
        memory.levels = torch.full((8,), 2 * s)  # as if kept from rows at twice this level
    torch.testing.assert_close(graphed[0], torch.full((16,), 0.1))
    torch.testing.assert_close(graphed[1], torch.full((16,), 0.2))
    calls.clear()
    out = losses.own_sample_loss(spy, y, s, level, lift=1.0, steps=3, generator=G(41),
                                 extrapolate=1.0, memory=memory, share=0.25)
    assert calls == [(False, 10)] * 4 + [(True, 10)] and out.loss.shape == (8,)
    with pytest.raises(AmbientError, match="extrapolate"):
        ConsistencyConfig(extrapolate=-1.0).validate()
    for share in (0.0, 1.5):
        with pytest.raises(AmbientError, match="extrapolate_share"):
            ConsistencyConfig(extrapolate_share=share).validate()


def test_own_sample_draws_of_the_exact_denoiser_follow_p0():
    """The fixed point is exact: with D = E[x0 | x] of a mixture, the draws from the data lifted
    above sigma_n have the law p0 (same criterion as the full samplers' test)."""
    from ambient.evaluate.exactness import component_covariance_error, sliced_wasserstein

    mix = GaussianMixture.random(2, 4, mean_scale=1.5, component_scale=0.15, generator=G(3))
    n, s = 4000, 0.3
    _, y, _, _ = _noisy_data(mix, n, s, seed=22)
    tiny = torch.full((n,), 1e-4, dtype=torch.float64)
    draws = losses.own_sample_loss(mix.denoiser, y, s, tiny, steps=16, generator=G(23)).x

    def sw(a, b):
        return sliced_wasserstein(a.float(), b.float(), generator=G(0))

    floor = sw(mix.sample(n, generator=G(24)), mix.sample(n, generator=G(25)))
    assert sw(draws, mix.sample(n, generator=G(26))) < 1.5 * floor
    assert component_covariance_error(draws.float(), mix).width_ratio == pytest.approx(1.0, abs=0.1)


def test_own_sample_loss_in_the_objective():
    """target='samples' trains D below sigma_n only, through one graph; a lift < 1 is refused."""
    from ambient.nets import MLP, MLPConfig
    from ambient.objective import ConsistencyConfig, consistency_rows
    from ambient.precond import EDMPrecond

    torch.manual_seed(0)
    model = EDMPrecond(MLP(2, MLPConfig(hidden=16, depth=2)), 0.5)
    y, sigma_n = torch.randn(64, 2), torch.full((64,), 0.3)
    seen = []

    def spy(x, sigma):
        seen.append((torch.is_grad_enabled(), sigma.detach().clone()))
        return model(x, sigma)

    cfg = ConsistencyConfig(weight=1.0, target="samples", substeps=3)
    loss = consistency_rows(spy, y, sigma_n, cfg, generator=G(1))
    assert loss.shape == (64,) and torch.isfinite(loss).all()
    graphed = [sg for grad, sg in seen if grad]
    assert len(seen) == 3 + 2 and len(graphed) == 1  # K + 1 draws without a graph, 1 with
    assert bool((graphed[0] < 0.3).all()) and bool((graphed[0] >= cfg.sigma_min).all())
    loss.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="lift"):
        consistency_rows(model, y, sigma_n, ConsistencyConfig(target="samples", lift=0.9))


@pytest.mark.parametrize("target", ["samples", "below"])
def test_consistency_levels_follow_the_chosen_law(target):
    """levels="log-normal": the levels below sigma_n follow the objective's log-normal (here
    p_mean 0.5, p_std 0.7, passed through) truncated to (sigma_min, sigma_n); "log-uniform": the
    median is the geometric mean of the bounds; "mixed": half of each, so P(sigma' <= that
    geometric mean) = (F_lognormal(it) + 1/2) / 2."""
    from ambient.objective import ConsistencyConfig, consistency_rows

    n, s = 8000, 0.3
    y, sigma_n = torch.randn(n, 2), torch.full((n,), s)
    for levels, p_mean, p_std in (("log-normal", 0.5, 0.7), ("log-normal", -1.2, 1.2),
                                  ("log-uniform", -1.2, 1.2), ("mixed", -1.2, 1.2)):
        seen = []

        def spy(x, sigma, seen=seen):
            if torch.is_grad_enabled():
                seen.append(torch.as_tensor(sigma).expand(x.shape[0]).clone())
            return 0.9 * x

        cfg = ConsistencyConfig(weight=1.0, target=target, start="ambient", substeps=1,
                                levels=levels)
        ambient = (y, torch.full((n,), 0.6), 0.9 * y)
        consistency_rows(spy, y, sigma_n, cfg, ambient, generator=G(2), p_mean=p_mean,
                         p_std=p_std)
        drawn = torch.cat(seen).double()
        assert bool((drawn >= cfg.sigma_min).all()) and bool((drawn <= s).all())
        if levels == "mixed":
            middle = math.sqrt(cfg.sigma_min * s)
            below = (_truncated_log_normal_cdf(middle, cfg.sigma_min, s, p_mean, p_std) + 0.5) / 2
            assert (drawn <= middle).double().mean().item() == pytest.approx(below, abs=0.03)
            continue
        expected = (_truncated_log_normal_median(cfg.sigma_min, s, p_mean, p_std)
                    if levels == "log-normal" else math.sqrt(cfg.sigma_min * s))
        assert drawn.median().item() == pytest.approx(expected, rel=0.04), levels
