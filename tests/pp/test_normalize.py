from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv


def _dense(X):
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def test_contract_keys_and_x_untouched(toy_counts):
    X_before = toy_counts.X.copy()
    toy_counts.raw = toy_counts
    sv.pp.normalize(toy_counts)
    assert set(toy_counts.layers) == {"counts", "normalized"}
    np.testing.assert_array_equal(_dense(toy_counts.X), _dense(X_before))
    np.testing.assert_array_equal(_dense(toy_counts.raw.X), _dense(X_before))
    np.testing.assert_array_equal(_dense(toy_counts.layers["counts"]), _dense(X_before))
    info = toy_counts.uns["scvgae_sc"]["normalize"]["normalized"]
    assert info["method"] == "sqrt" and info["counts_layer"] == "counts" and info["target_sum"] > 0
    assert toy_counts.layers["normalized"].dtype == np.float32


def test_sqrt_is_the_papers(toy_counts):
    sv.pp.normalize(toy_counts)
    C = _dense(toy_counts.layers["counts"]).astype(np.float64)
    Y = np.log1p(C)
    rs = Y.sum(1)
    expected = np.sqrt(Y / rs[:, None] * np.median(rs))
    np.testing.assert_allclose(_dense(toy_counts.layers["normalized"]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["log1p", "total"])
def test_total_and_log1p(toy_counts, method):
    sv.pp.normalize(toy_counts, method=method, key_added=method)
    C = _dense(toy_counts.layers["counts"]).astype(np.float64)
    lib = C.sum(1)
    expected = C / lib[:, None] * np.median(lib)
    if method == "log1p":
        expected = np.log1p(expected)
    np.testing.assert_allclose(_dense(toy_counts.layers[method]), expected, rtol=1e-5, atol=1e-5)


def test_several_layers_share_counts(toy_counts):
    sv.pp.normalize(toy_counts)
    toy_counts.X = toy_counts.layers["normalized"].copy()  # X no longer counts: the counts layer is read
    sv.pp.normalize(toy_counts, method="total", key_added="total")
    assert {"counts", "normalized", "total"} <= set(toy_counts.layers)
    assert set(toy_counts.uns["scvgae_sc"]["normalize"]) == {"normalized", "total"}


def test_sparse_dense_parity(toy_counts):
    dense = toy_counts.copy()
    dense.X = dense.X.toarray()
    for method in ("sqrt", "log1p", "total"):
        a = sv.pp.normalize(toy_counts, method=method, copy=True)
        b = sv.pp.normalize(dense, method=method, copy=True)
        assert sparse.issparse(a.layers["normalized"]) and isinstance(b.layers["normalized"], np.ndarray)
        np.testing.assert_allclose(_dense(a.layers["normalized"]), b.layers["normalized"], rtol=1e-5, atol=1e-6)


def test_all_zero_cell_stays_zero(toy_counts):
    X = toy_counts.X.toarray()
    X[0] = 0
    toy_counts.X = sparse.csr_matrix(X)
    sv.pp.normalize(toy_counts)
    Y = _dense(toy_counts.layers["normalized"])
    assert np.isfinite(Y).all() and (Y[0] == 0).all()


@pytest.mark.parametrize(
    ("value", "match"),
    [(-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite"), (0.5, "non-integer")],
)
def test_refuses_non_counts(toy_counts, value, match):
    toy_counts.X = toy_counts.X.astype(np.float32)
    toy_counts.X.data[3] = value
    before = toy_counts.copy()
    with pytest.raises(ValueError, match=match):
        sv.pp.normalize(toy_counts)
    assert list(toy_counts.layers) == [] and "scvgae_sc" not in toy_counts.uns
    np.testing.assert_array_equal(toy_counts.X.toarray(), before.X.toarray())


def test_bad_arguments(toy_counts):
    with pytest.raises(ValueError, match="method"):
        sv.pp.normalize(toy_counts, method="scran")
    with pytest.raises(ValueError, match="overwrite the counts"):
        sv.pp.normalize(toy_counts, key_added="counts")
    with pytest.raises(ValueError, match="view"):
        sv.pp.normalize(toy_counts[:10])
    out = sv.pp.normalize(toy_counts[:10], copy=True)
    assert out.n_obs == 10 and "normalized" in out.layers
    toy_counts.layers["counts"] = toy_counts.X.astype(np.float32) * 0.5
    with pytest.raises(ValueError, match="layers\\['counts'\\]"):
        sv.pp.normalize(toy_counts)
