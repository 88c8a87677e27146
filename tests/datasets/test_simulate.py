from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv
from scvgae_sc.datasets import _simulate


@pytest.fixture(scope="module")
def sim() -> ad.AnnData:
    return sv.datasets.simulate(600, 200, n_groups=4, dropout=0.3, random_state=1)


def _check_invariants(adata: ad.AnnData) -> None:
    X, true = adata.X, adata.layers["true_counts"]
    for M in (X, true):
        assert sparse.isspmatrix_csr(M)
        assert M.dtype == np.float32
        assert M.shape == adata.shape
        np.testing.assert_array_equal(M.data, np.round(M.data))
        assert M.data.size == 0 or M.data.min() > 0
    # X is the true counts with some entries zeroed: same values where X is non-zero
    assert (X > true).nnz == 0
    rows, cols = X.nonzero()
    np.testing.assert_array_equal(np.asarray(X[rows, cols]).ravel(), np.asarray(true[rows, cols]).ravel())
    mu = adata.layers["true_mean"]
    assert isinstance(mu, np.ndarray) and mu.dtype == np.float32 and mu.shape == adata.shape
    assert (mu > 0).all()
    # the expected library of cell i is library_size · size_factor_i
    expected = adata.uns["simulate"]["library_size"] * adata.obs["size_factor"].to_numpy()
    np.testing.assert_allclose(mu.sum(axis=1, dtype=np.float64), expected, rtol=1e-4)


def test_outputs(sim):
    assert sim.shape == (600, 200)
    _check_invariants(sim)
    assert list(sim.obs_names[:2]) == ["cell1", "cell2"] and sim.obs_names.is_unique
    assert list(sim.var_names[:2]) == ["gene1", "gene2"] and sim.var_names.is_unique
    assert list(sim.obs["cell_type"].cat.categories) == ["group1", "group2", "group3", "group4"]
    assert (sim.obs["cell_type"].value_counts() == 150).all()  # balanced groups
    expected_var = {"base_mean", "bcv", *(f"de_factor_group{k}" for k in range(1, 5))}
    assert expected_var <= set(sim.var.columns)
    params = sim.uns["simulate"]
    assert params["n_cells"] == 600 and params["random_state"] == 1
    assert all(v is not None for v in params.values())
    # genuinely sparse count data
    assert 0.05 < sim.X.nnz / np.prod(sim.shape) < 0.9


def test_de_factors(sim):
    factors = sim.var[[f"de_factor_group{k}" for k in range(1, 5)]].to_numpy()
    assert (factors > 0).all()
    frac_de = (factors != 1).mean()
    assert 0.05 < frac_de < 0.15  # de_prob = 0.1
    assert (factors > 1).any() and (factors < 1).any()


@pytest.mark.parametrize("dropout", [0.1, 0.3, 0.6])
def test_dropout_fraction(dropout):
    adata = sv.datasets.simulate(1000, 200, n_groups=3, dropout=dropout)
    true = adata.layers["true_counts"]
    observed = 1 - adata.X.nnz / true.nnz
    assert abs(observed - dropout) < 0.02
    assert adata.uns["simulate"]["dropout_observed"] == pytest.approx(observed)
    # lowly expressed entries drop more often than highly expressed ones
    mu = adata.layers["true_mean"]
    rows, cols = true.nonzero()
    dropped = np.asarray(adata.X[rows, cols]).ravel() == 0
    low = mu[rows, cols] < np.median(mu[rows, cols])
    assert dropped[low].mean() > dropped[~low].mean()


def test_no_dropout():
    adata = sv.datasets.simulate(200, 50, n_groups=2, dropout=0)
    assert (adata.X != adata.layers["true_counts"]).nnz == 0
    assert adata.X is not adata.layers["true_counts"]
    assert "dropout_mid" not in adata.uns["simulate"]


def test_poisson_when_bcv_zero():
    adata = sv.datasets.simulate(300, 40, n_groups=2, bcv=0.0, dropout=0.2)
    _check_invariants(adata)


def test_chunked_paths(monkeypatch):
    # many row chunks, many dropout blocks and the sampled midpoint
    monkeypatch.setattr(_simulate, "_CHUNK_ENTRIES", 1000)
    monkeypatch.setattr(_simulate, "_MID_SAMPLE", 2000)
    adata = sv.datasets.simulate(500, 60, n_groups=3, dropout=0.4)
    assert adata.layers["true_counts"].nnz > 2000
    _check_invariants(adata)
    assert abs(adata.uns["simulate"]["dropout_observed"] - 0.4) < 0.03


def test_larger():
    adata = sv.datasets.simulate(5000, 500, n_groups=5, dropout=0.3)
    assert adata.shape == (5000, 500)
    assert abs(adata.uns["simulate"]["dropout_observed"] - 0.3) < 0.01
    assert adata.obs["cell_type"].cat.categories.size == 5


def test_deterministic():
    a = sv.datasets.simulate(200, 50, n_groups=3, random_state=7)
    b = sv.datasets.simulate(200, 50, n_groups=3, random_state=7)
    c = sv.datasets.simulate(200, 50, n_groups=3, random_state=8)
    assert (a.X != b.X).nnz == 0
    assert (a.layers["true_counts"] != b.layers["true_counts"]).nnz == 0
    np.testing.assert_array_equal(a.layers["true_mean"], b.layers["true_mean"])
    assert a.obs["cell_type"].equals(b.obs["cell_type"])
    assert (a.X != c.X).nnz > 0
    assert not np.array_equal(a.layers["true_mean"], c.layers["true_mean"])


def test_random_state_none():
    adata = sv.datasets.simulate(50, 20, n_groups=2, random_state=None)
    assert adata.shape == (50, 20)
    assert "random_state" not in adata.uns["simulate"]


def test_as_many_groups_as_cells():
    adata = sv.datasets.simulate(6, 10, n_groups=6)
    assert (adata.obs["cell_type"].value_counts() == 1).all()


def test_writes_h5ad(sim, tmp_path):
    sim.write_h5ad(tmp_path / "sim.h5ad")
    back = ad.read_h5ad(tmp_path / "sim.h5ad")
    assert (back.X != sim.X).nnz == 0
    assert back.uns["simulate"]["dropout"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_cells": 0}, ValueError, "n_cells"),
        ({"n_genes": -3}, ValueError, "n_genes"),
        ({"n_groups": 0}, ValueError, "n_groups"),
        ({"n_cells": 3, "n_groups": 4}, ValueError, "n_groups"),
        ({"n_cells": 10.0}, TypeError, "n_cells"),
        ({"n_genes": True}, TypeError, "n_genes"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"dropout": -0.1}, ValueError, "dropout"),
        ({"dropout": float("nan")}, ValueError, "dropout"),
        ({"dropout": "0.3"}, TypeError, "dropout"),
        ({"de_prob": 1.5}, ValueError, "de_prob"),
        ({"de_scale": -1}, ValueError, "de_scale"),
        ({"library_size": 0}, ValueError, "library_size"),
        ({"bcv": -0.1}, ValueError, "bcv"),
        ({"dropout_shape": 1.0}, ValueError, "dropout_shape"),
        ({"random_state": 1.5}, TypeError, "random_state"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"n_cells": 20, "n_genes": 10, "n_groups": 2} | kwargs
    with pytest.raises(error, match=match):
        sv.datasets.simulate(**args)
