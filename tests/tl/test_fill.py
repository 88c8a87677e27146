"""The shared fill helpers: neighbourhood statistics over several graph steps and the fitted fill weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

from scvgae_sc.tl._common import (
    FillWeightFit,
    Neighbourhood,
    fill_weights_from_sums,
    fit_fill_weights,
)


def _graph(n: int, seed: int) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    A = sparse.random(n, n, density=0.08, random_state=seed, format="csr", dtype=np.float32)
    A.data = rng.random(A.nnz).astype(np.float32) + 0.1
    A = A + A.T
    A.setdiag(0)
    A.eliminate_zeros()
    return sparse.csr_matrix(A)


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_neighbourhood_rate_and_mean_by_hand(hops):
    """Rate and mean detected value equal a dense computation with (D^-1 (A + I))^hops."""
    n, g = 40, 9
    rng = np.random.default_rng(hops)
    X = ((rng.random((n, g)) < 0.3) * rng.gamma(2.0, 1.0, size=(n, g))).astype(np.float32)
    A = _graph(n, seed=hops)
    W = A.toarray() + np.eye(n)
    P = np.linalg.matrix_power(W / W.sum(1, keepdims=True), hops)
    obs = (X > 0).astype(np.float64)
    rate, mean = Neighbourhood(A, torch.device("cpu"), hops)(torch.from_numpy(X), torch.from_numpy(X > 0))
    np.testing.assert_allclose(rate.numpy(), P @ obs, rtol=1e-5, atol=1e-6)
    expected = np.where(P @ obs > 0, (P @ X) / np.maximum(P @ obs, 1e-300), 0.0)
    np.testing.assert_allclose(mean.numpy(), expected, rtol=1e-4, atol=1e-5)
    # the mean of detected values lies between their smallest and largest value in each column
    assert (mean.numpy() <= X.max(0) + 1e-5).all()


def test_fill_weights_are_the_least_squares_solution():
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, 1.0, 500), rng.gamma(2.0, 1.0, 500)
    t = 0.3 * a + 0.8 * b + rng.normal(0, 0.1, 500)
    w = fit_fill_weights(*(torch.from_numpy(v) for v in (a, b, t)))
    np.testing.assert_allclose(w, np.linalg.lstsq(np.c_[a, b], t, rcond=None)[0], rtol=1e-8)
    # without the graph column: one factor
    w1 = fit_fill_weights(torch.from_numpy(a), None, torch.from_numpy(t))
    assert w1[1] == 0.0 and w1[0] == pytest.approx(float(a @ t / (a @ a)))


@pytest.mark.parametrize("graph_fill", [True, False])
def test_fill_weights_accumulated_over_chunks(graph_fill):
    """Chunks of NumPy columns (cell subgraphs) give the one-shot fit of the tensors (the whole matrix)."""
    rng = np.random.default_rng(2)
    a, b = rng.gamma(2.0, 1.0, 600), rng.gamma(2.0, 1.0, 600)
    t = 0.6 * a + 0.3 * b + rng.normal(0, 0.1, 600)
    fit = FillWeightFit(graph_fill)
    for part in np.array_split(np.arange(600), 7):
        fit.add(a[part], b[part] if graph_fill else None, t[part])
    whole = fit_fill_weights(torch.from_numpy(a), torch.from_numpy(b) if graph_fill else None, torch.from_numpy(t))
    np.testing.assert_allclose(fit.weights(), whole, rtol=1e-10)
    assert FillWeightFit(graph_fill).weights() == ((0.0, 0.0) if graph_fill else (1.0, 0.0))  # nothing added


def test_fill_weights_stay_non_negative():
    """A column that would get a negative weight is dropped: the better single non-negative fit is kept."""
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 1.0, 400)
    b = a + rng.normal(0, 0.05, 400)  # nearly collinear: unconstrained least squares would oppose them
    t = 2.0 * a - 0.5 * b
    w = fit_fill_weights(*(torch.from_numpy(v) for v in (a, b, t)))
    assert min(w) == 0.0 and max(w) > 0
    single = [(a @ t / (a @ a), 0.0), (0.0, b @ t / (b @ b))]
    best = min(single, key=lambda u: np.sum((u[0] * a + u[1] * b - t) ** 2))
    np.testing.assert_allclose(w, best, rtol=1e-8)
    # all-zero columns give zero weights, never a division by zero
    assert fill_weights_from_sums(0.0, 0.0, 0.0, 0.0, 0.0) == (0.0, 0.0)


@pytest.mark.parametrize("hops", [1, 3])
def test_chunked_neighbourhood_rows_equal_the_whole_matrix(hops):
    """The subgraph path's statistics (rows at a time, the first steps walked once) are the full computation."""
    from scvgae_sc.tl._models._scvgae_samplers import neighbourhood_rows

    n, g = 50, 8
    rng = np.random.default_rng(7)
    x = ((rng.random((n, g)) < 0.4) * rng.gamma(2.0, 1.0, size=(n, g))).astype(np.float32)
    A = _graph(n, seed=7)
    rows = np.array([4, 0, 49, 12])
    rate, mean = neighbourhood_rows(A, x, hops=hops, transform="log1p", with_mean=True)(rows)
    full_rate, full_mean = Neighbourhood(A, torch.device("cpu"), hops)(
        torch.expm1(torch.from_numpy(x)), torch.from_numpy(x > 0)
    )
    np.testing.assert_allclose(rate, full_rate.numpy()[rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, full_mean.numpy()[rows], rtol=1e-4, atol=1e-5)
