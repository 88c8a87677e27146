from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit

from scvgae_sc.nn import masked_mean, nb_nll, zinb_nll


def _reference(x, mu, theta, logits):
    """log NB and log ZINB from scipy, in float64."""
    log_nb = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    pi = expit(logits)
    log_zinb = np.where(x == 0, np.logaddexp(np.log(pi), np.log1p(-pi) + log_nb), np.log1p(-pi) + log_nb)
    return log_nb, log_zinb


@pytest.fixture
def params():
    """Random parameters covering zeros, counts up to 1e4, theta 1e-3 … 1e4, mu 1e-4 … 1e5."""
    rng = np.random.default_rng(0)
    n = 3000
    mu = 10 ** rng.uniform(-4, 5, n)
    theta = 10 ** rng.uniform(-3, 4, n)
    logits = rng.normal(0, 4, n)
    x = np.where(rng.random(n) < 0.3, 0.0, np.round(10 ** rng.uniform(0, 4, n)))
    # the extreme corners explicitly
    corners = [(0, 1e-4, 1e-3), (0, 1e5, 1e4), (1e4, 1e5, 1e-3), (1e4, 1e-4, 1e4), (1, 1e-4, 1e4), (1e4, 1e4, 1e4)]
    for x_, mu_, theta_ in corners:
        x, mu, theta, logits = (np.append(x, x_), np.append(mu, mu_), np.append(theta, theta_), np.append(logits, 0))
    return x, mu, theta, logits


def _t(a, dtype=torch.float64):
    return torch.tensor(a, dtype=dtype)


def test_zinb_matches_scipy_float64(params):
    x, mu, theta, logits = params
    log_nb, log_zinb = _reference(x, mu, theta, logits)
    got = zinb_nll(_t(x), _t(mu), _t(theta), _t(logits), eps=1e-12, reduction="none").numpy()
    np.testing.assert_allclose(-got, log_zinb, rtol=1e-8, atol=1e-6)
    got_nb = nb_nll(_t(x), _t(mu), _t(theta), eps=1e-12, reduction="none").numpy()
    np.testing.assert_allclose(-got_nb, log_nb, rtol=1e-8, atol=1e-6)


def test_float32_agrees_with_float64(params):
    x, mu, theta, logits = params
    _, log_zinb = _reference(x, mu, theta, logits)
    f32 = [_t(a, torch.float32) for a in (x, mu, theta, logits)]
    got = zinb_nll(*f32, reduction="none")
    assert got.dtype == torch.float32
    got = got.double().numpy()
    assert np.isfinite(got).all()
    # lgamma(x + theta) - lgamma(theta) cancels for large theta: relative, not absolute, accuracy
    np.testing.assert_array_less(np.abs(got + log_zinb), 2e-3 * np.maximum(1.0, np.abs(log_zinb)))
    np.testing.assert_allclose(
        zinb_nll(*f32).item(), zinb_nll(*(_t(a) for a in (x, mu, theta, logits))).item(), rtol=1e-4
    )


def test_large_negative_logits_is_nb(params):
    x, mu, theta, _ = params
    logits = torch.full((len(x),), -40.0, dtype=torch.float64)
    z = zinb_nll(_t(x), _t(mu), _t(theta), logits, reduction="none")
    nb = nb_nll(_t(x), _t(mu), _t(theta), reduction="none")
    # pi = e^-40 only matters for zeros that the NB itself makes nearly impossible
    keep = (_t(x) > 0) | (nb < 20)
    torch.testing.assert_close(z[keep], nb[keep], rtol=1e-10, atol=1e-10)
    zero = _t(x) == 0
    assert (z[zero] <= nb[zero] + 1e-9).all()  # the zero-inflation only ever adds mass at 0


def test_reductions(params):
    x, mu, theta, logits = (_t(a) for a in params)
    none = zinb_nll(x, mu, theta, logits, reduction="none")
    assert none.shape == x.shape
    torch.testing.assert_close(zinb_nll(x, mu, theta, logits), none.mean())
    torch.testing.assert_close(zinb_nll(x, mu, theta, logits, reduction="sum"), none.sum())
    torch.testing.assert_close(nb_nll(x, mu, theta, reduction="sum"), nb_nll(x, mu, theta, reduction="none").sum())
    with pytest.raises(ValueError, match="reduction"):
        zinb_nll(x, mu, theta, logits, reduction="max")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite(dtype):
    x = torch.tensor([0, 0, 0, 1, 5, 1e4, 1e4, 0, 3], dtype=dtype)
    raw_mu = torch.log(torch.tensor([1e-8, 1e5, 1.0, 1e-6, 3.0, 1e5, 1e-2, 1e-3, 2.0], dtype=dtype))
    raw_theta = torch.log(torch.tensor([1e-3, 1e4, 1.0, 1e4, 1e-3, 1e-3, 1e4, 1e-3, 2.0], dtype=dtype))
    logits = torch.tensor([-50.0, 50.0, 0.0, 30.0, -30.0, 3.0, -3.0, 50.0, -50.0], dtype=dtype)
    raw_mu.requires_grad_(True)
    raw_theta.requires_grad_(True)
    logits.requires_grad_(True)
    loss = zinb_nll(x, raw_mu.exp(), raw_theta.exp(), logits, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss)
    for p in (raw_mu, raw_theta, logits):
        assert torch.isfinite(p.grad).all()
    raw_mu.grad = None
    raw_theta.grad = None
    nb_nll(x, raw_mu.exp(), raw_theta.exp()).backward()
    assert torch.isfinite(raw_mu.grad).all() and torch.isfinite(raw_theta.grad).all()


def test_broadcasting():
    x = torch.tensor([[0.0, 2.0, 7.0], [1.0, 0.0, 3.0]])
    mu = torch.tensor([[1.0, 2.0, 5.0], [1.0, 0.5, 3.0]])
    theta = torch.tensor([2.0, 1.0, 10.0])  # per gene
    logits = torch.tensor([[-1.0], [0.5]])  # per cell
    got = zinb_nll(x, mu, theta, logits, reduction="none")
    full = zinb_nll(x, mu, theta.expand(2, 3), logits.expand(2, 3), reduction="none")
    torch.testing.assert_close(got, full)


def test_masked_mean():
    v = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert masked_mean(v).item() == pytest.approx(2.5)
    m = torch.tensor([[True, False, True], [False, False, True]])
    assert masked_mean(v, m).item() == pytest.approx((0 + 2 + 5) / 3)
    rows = torch.tensor([[False], [True]])
    assert masked_mean(v, rows).item() == pytest.approx(4.0)
    w = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    assert masked_mean(v, w).item() == pytest.approx((0 + 6) / 4)
    # non-finite values outside a boolean mask do not leak in
    bad = v.clone()
    bad[0, 1] = float("nan")
    bad[1, 0] = float("inf")
    assert masked_mean(bad, m).item() == pytest.approx((0 + 2 + 5) / 3)
    # an empty mask gives 0, still differentiable
    p = v.clone().requires_grad_(True)
    out = masked_mean(p, torch.zeros_like(m))
    out.backward()
    assert out.item() == 0.0 and torch.equal(p.grad, torch.zeros_like(v))
