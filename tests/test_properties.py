"""Property-based checks (hypothesis): random shapes, levels and dtypes through the losses and
the noise conversions stay finite and satisfy MATH.md's identities."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ambient import losses, noise

DTYPES = st.sampled_from([torch.float32, torch.float64])
SHAPES = st.lists(st.integers(1, 4), min_size=1, max_size=3)
LEVELS = st.floats(1e-3, 20.0, allow_nan=False)
FAST = settings(max_examples=40, deadline=None)


@FAST
@given(n=st.integers(1, 6), shape=SHAPES, dtype=DTYPES, data=st.data())
def test_ambient_loss_finite_and_dsm_at_zero(n, shape, dtype, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    y = torch.randn(n, *shape, generator=g, dtype=dtype)
    s = torch.tensor(data.draw(st.lists(st.one_of(st.just(0.0), LEVELS), min_size=n, max_size=n)),
                     dtype=dtype)
    sigma = losses.sample_sigma_above(s, generator=g)
    assert (sigma > s).all()
    cap = data.draw(st.floats(1.0, 1e3))
    out = losses.ambient_loss(lambda x, sg: torch.tanh(x), y, s, sigma, weight_cap=cap)
    assert out.loss.shape == (n,) and torch.isfinite(out.loss).all() and (out.loss >= 0).all()
    eta = torch.randn(y.shape, generator=g, dtype=dtype)
    zero = torch.zeros(n, dtype=dtype)

    def den(x, sg):
        return torch.sin(x)

    torch.testing.assert_close(losses.ambient_loss(den, y, zero, sigma, eta, weight_cap=cap).loss,
                               losses.dsm_loss(den, y, sigma, eta).loss)


@FAST
@given(n=st.integers(1, 6), dtype=DTYPES, data=st.data())
def test_ve_vp_conversions_round_trip(n, dtype, data):
    sigma = torch.tensor(data.draw(st.lists(LEVELS, min_size=n, max_size=n)), dtype=dtype)
    x = torch.randn(n, 3, dtype=dtype)
    x_vp, v = noise.ve_to_vp(x, sigma)
    assert torch.isfinite(x_vp).all() and ((v > 0) & (v < 1)).all()
    x_back, sigma_back = noise.vp_to_ve(x_vp, v)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(sigma_back, sigma, rtol=tol * 100, atol=tol)
    torch.testing.assert_close(x_back, x, rtol=tol * 100, atol=tol)


@FAST
@given(n=st.integers(1, 5), data=st.data())
def test_vp_residual_is_scaled_ve_residual(n, data):
    """MATH.md section 2: the VP ambient residual is sqrt(1 - s^2) times the VE one."""
    s = torch.tensor(data.draw(st.lists(st.floats(0.0, 0.9), min_size=n, max_size=n)),
                     dtype=torch.float64)
    frac = torch.tensor(data.draw(st.lists(st.floats(0.05, 0.95), min_size=n, max_size=n)),
                        dtype=torch.float64)
    v = s + (0.99 - s) * frac
    y_vp, eta = torch.randn(n, 2, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)
    y_ve, s_ve = noise.vp_to_ve(y_vp, s)

    def den(x, lvl):
        return torch.cos(x) * lvl[:, None]

    vp = losses.ambient_loss_vp(lambda x, vv: den(*noise.vp_to_ve(x, vv)), y_vp, s, v, eta).loss
    sigma = noise.ve_sigma_from_vp(v)
    ve = losses.ambient_loss(den, y_ve, s_ve, sigma, eta).loss / losses.edm_weight(sigma)
    torch.testing.assert_close(vp, (1 - s**2) * ve)


@FAST
@given(n=st.integers(1, 5), frac=st.floats(0.01, 0.99), level=LEVELS, dtype=DTYPES)
def test_consistency_loss_finite_for_any_step(n, frac, level, dtype):
    x = torch.randn(n, 2, dtype=dtype)
    sigma = torch.full((n,), level, dtype=dtype)
    out = losses.consistency_loss(lambda xx, sg: 0.5 * xx, x, sigma, frac * sigma)
    assert out.loss.shape == (n,) and torch.isfinite(out.loss).all()
