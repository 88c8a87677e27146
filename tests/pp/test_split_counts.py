from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData
from scipy import sparse

import scvgae_sc as sv


def _counts(n_cells: int = 60, n_genes: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = rng.negative_binomial(2, 0.3, size=(n_cells, n_genes)).astype(np.float32)
    C[rng.random(C.shape) < 0.5] = 0  # sparse, as UMI counts are
    return C


def _snapshot(adata: AnnData) -> tuple:
    root = adata.uns.get("scvgae_sc", {})
    return (
        adata.shape,
        sorted(adata.layers),
        list(adata.obs.columns),
        sorted(adata.uns),
        {k: sorted(v) for k, v in root.items()},
    )


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_halves_disjoint_integer_and_summing(fmt):
    C = _counts()
    adata = AnnData(sparse.csr_matrix(C) if fmt == "csr" else C.copy())
    sv.pp.split_counts(adata)
    train, test = adata.layers["mcv_train"], adata.layers["mcv_test"]
    assert sparse.issparse(train) == (fmt == "csr") and sparse.issparse(test) == (fmt == "csr")
    assert np.issubdtype(train.dtype, np.integer) and np.issubdtype(test.dtype, np.integer)
    tr = train.toarray() if fmt == "csr" else train
    te = test.toarray() if fmt == "csr" else test
    assert tr.min() >= 0 and te.min() >= 0
    np.testing.assert_array_equal(tr + te, C)
    # the molecule split of molecular cross-validation, drawn exactly so
    np.testing.assert_array_equal(tr, np.random.default_rng(0).binomial(C.astype(np.int64), 0.5))
    np.testing.assert_array_equal(adata.layers["counts"].toarray() if fmt == "csr" else adata.layers["counts"], C)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.23])
@pytest.mark.parametrize("random_state", [0, 7])
def test_sparse_and_dense_draws_agree(fraction, random_state):
    C = _counts(80, 50, seed=3)
    C[0, :] = 0  # an empty cell
    C[5, 3] = 400  # a large count (a different binomial algorithm)
    dense, csr = AnnData(C.copy()), AnnData(sparse.csr_matrix(C))
    csr.X.sort_indices()
    sv.pp.split_counts(dense, fraction=fraction, random_state=random_state)
    sv.pp.split_counts(csr, fraction=fraction, random_state=random_state)
    for half in ("mcv_train", "mcv_test"):
        np.testing.assert_array_equal(csr.layers[half].toarray(), dense.layers[half])
    np.testing.assert_array_equal(csr.obs["mcv_scored"], dense.obs["mcv_scored"])


def test_unsorted_sparse_input_gives_the_dense_draw():
    C = _counts()
    S = sparse.csr_matrix(C)
    order = np.arange(S.indptr[1])[::-1]  # reverse the first row's entries
    S.indices[: S.indptr[1]] = S.indices[order]
    S.data[: S.indptr[1]] = S.data[order]
    assert not S.has_sorted_indices
    adata = AnnData(S)
    sv.pp.split_counts(adata)
    np.testing.assert_array_equal(
        adata.layers["mcv_train"].toarray(), np.random.default_rng(0).binomial(C.astype(np.int64), 0.5)
    )


def test_reproducible_with_random_state():
    C = sparse.csr_matrix(_counts())
    a, b, c = AnnData(C.copy()), AnnData(C.copy()), AnnData(C.copy())
    sv.pp.split_counts(a, random_state=1)
    sv.pp.split_counts(b, random_state=1)
    sv.pp.split_counts(c, random_state=2)
    assert (a.layers["mcv_train"] != b.layers["mcv_train"]).nnz == 0
    assert (a.layers["mcv_train"] != c.layers["mcv_train"]).nnz > 0


def test_fraction_is_the_train_share():
    C = _counts(200, 50)
    adata = AnnData(C)
    sv.pp.split_counts(adata, fraction=0.9)
    share = adata.layers["mcv_train"].sum() / C.sum()
    assert 0.88 < share < 0.92


def test_scored_flag_and_record():
    C = _counts()
    C[0, :] = 0
    C[0, 0] = 1  # one molecule: one half is empty
    C[1, :] = 0  # no molecules
    adata = AnnData(C)
    sv.pp.split_counts(adata, fraction=0.5, random_state=3, key_added="split")
    scored = adata.obs["split_scored"].to_numpy()
    assert scored.dtype == bool and not scored[0] and not scored[1]
    lib1 = adata.layers["split_train"].sum(axis=1)
    lib2 = adata.layers["split_test"].sum(axis=1)
    np.testing.assert_array_equal(scored, (lib1 > 0) & (lib2 > 0))
    assert adata.n_obs == C.shape[0], "cells are kept"
    rec = adata.uns["scvgae_sc"]["split_counts"]["split"]
    assert rec["fraction"] == 0.5 and rec["random_state"] == 3 and rec["counts_layer"] == "counts"
    assert rec["train_layer"] == "split_train" and rec["test_layer"] == "split_test"
    assert rec["scored_key"] == "split_scored" and rec["n_scored"] == int(scored.sum())
    assert list(rec["shape"]) == list(C.shape)


def test_existing_counts_layer_is_used_and_x_untouched(tmp_path):
    C = _counts()
    adata = AnnData(np.log1p(C), layers={"raw": C.copy()})
    X_before = adata.X.copy()
    sv.pp.split_counts(adata, counts_layer="raw")
    np.testing.assert_array_equal(adata.X, X_before)
    np.testing.assert_array_equal(adata.layers["mcv_train"] + adata.layers["mcv_test"], C)
    assert "counts" not in adata.layers
    path = tmp_path / "split.h5ad"
    adata.write_h5ad(path)
    import anndata as ad

    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["mcv_train"], adata.layers["mcv_train"])
    assert (
        back.uns["scvgae_sc"]["split_counts"]["mcv"]["train_digest"]
        == (adata.uns["scvgae_sc"]["split_counts"]["mcv"]["train_digest"])
    )


def test_copy_leaves_the_input_alone():
    adata = AnnData(_counts())
    before = _snapshot(adata)
    out = sv.pp.split_counts(adata, copy=True)
    assert _snapshot(adata) == before
    assert "mcv_train" in out.layers and "counts" in out.layers


def test_random_state_none_draws_and_is_not_recorded():
    adata = AnnData(_counts())
    sv.pp.split_counts(adata, random_state=None)
    assert "random_state" not in adata.uns["scvgae_sc"]["split_counts"]["mcv"]


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (lambda C: AnnData(C + 0.5), {}, "non-integer"),
        (lambda C: AnnData(C - 1), {}, "negative"),
        (lambda C: AnnData(sparse.csr_matrix(C * 0.7 + np.float32(0.1) * (C > 0))), {}, "non-integer"),
        (lambda C: AnnData(C, layers={"counts": -C}), {}, "negative"),
        (lambda C: AnnData(C), {"fraction": 0.0}, "between 0 and 1"),
        (lambda C: AnnData(C), {"fraction": 1.0}, "between 0 and 1"),
        (lambda C: AnnData(C), {"fraction": 1.5}, "between 0 and 1"),
        (lambda C: AnnData(C), {"fraction": -0.1}, "between 0 and 1"),
        (lambda C: AnnData(np.log1p(C)), {"counts_layer": "missing"}, "non-integer"),
        (lambda C: AnnData(obs={"a": np.arange(C.shape[0])}, var={"b": np.arange(C.shape[1])}), {}, "X is None"),
        (lambda C: AnnData(C), {"counts_layer": "mcv_train"}, "half of the split"),
    ],
)
def test_bad_input_is_refused_and_adata_unchanged(make, kwargs, match):
    adata = make(_counts())
    before = _snapshot(adata)
    with pytest.raises(ValueError, match=match):
        sv.pp.split_counts(adata, **kwargs)
    assert _snapshot(adata) == before


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"fraction": "0.5"}, TypeError), ({"fraction": True}, TypeError), ({"random_state": 1.5}, TypeError)],
)
def test_bad_types(kwargs, error):
    adata = AnnData(_counts())
    before = _snapshot(adata)
    with pytest.raises(error):
        sv.pp.split_counts(adata, **kwargs)
    assert _snapshot(adata) == before


def test_view_is_refused():
    adata = AnnData(_counts())
    with pytest.raises(ValueError, match="view"):
        sv.pp.split_counts(adata[:10])
