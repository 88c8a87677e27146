"""The masked task's model-free baseline (benchmarks/baselines.py::knn_fill)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def smoothing():
    spec = importlib.util.spec_from_file_location("bench_baselines", BENCH / "baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def adata():
    a = sv.datasets.pbmc68k()
    sv.pp.filter(a)
    sv.pp.normalize(a)
    return a


def test_fill_is_the_neighbourhood_mean_of_non_zeros(smoothing, adata):
    a = adata.copy()
    X = a.layers["normalized"]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    Y = smoothing.knn_fill(a, "normalized", n_neighbors=15)
    assert Y.shape == X.shape and Y.dtype == np.float32
    observed = X > 0
    np.testing.assert_array_equal(Y[observed], X[observed].astype(np.float32))  # observed values kept

    # one zero by hand: the mean of the gene's non-zero values among the cell and its graph neighbours
    C = a.obsp["smooth15_connectivities"].tocsr()
    cells, genes = np.nonzero(~observed)
    for cell, gene in list(zip(cells, genes, strict=True))[:: max(1, len(cells) // 50)]:
        hood = np.append(C.indices[C.indptr[cell] : C.indptr[cell + 1]], cell)
        values = X[hood, gene]
        expected = values[values > 0].mean() if (values > 0).any() else 0.0
        assert Y[cell, gene] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert (Y[~observed] > 0).mean() > 0.3  # it does fill


def test_gate_scales_fills_down_where_the_neighbourhood_rarely_detects(smoothing, adata):
    a = adata.copy()
    free = smoothing.knn_fill(a, "normalized", n_neighbors=15)
    gated = smoothing.knn_fill(a, "normalized", n_neighbors=15, gate=0.4)
    X = a.layers["normalized"]
    observed = (X.toarray() if sparse.issparse(X) else np.asarray(X)) > 0
    np.testing.assert_array_equal(gated[observed], free[observed])
    assert np.all(gated[~observed] <= free[~observed] + 1e-6)
    assert (gated[~observed] < free[~observed] - 1e-6).any()


def test_two_step_fill_averages_over_the_walk(smoothing, adata):
    """hops=2: each zero gets the 2-step random-walk mean of the gene's detected values (weights by hand)."""
    a = adata.copy()
    X = a.layers["normalized"]
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)
    Y = smoothing.knn_fill(a, "normalized", n_neighbors=15, hops=2)
    B = (a.obsp["smooth15_connectivities"] > 0).toarray() + np.eye(a.n_obs)
    P = B / B.sum(1, keepdims=True)
    P2 = P @ P
    observed = X > 0
    rate = P2 @ observed
    expected = np.where(observed, X, (P2 @ X) / np.maximum(rate, 1e-12))
    np.testing.assert_allclose(Y, expected, rtol=1e-4, atol=1e-5)
    one_step = smoothing.knn_fill(a, "normalized", n_neighbors=15)
    assert (Y[~observed] > 0).mean() > (one_step[~observed] > 0).mean()  # the wider walk fills more zeros
