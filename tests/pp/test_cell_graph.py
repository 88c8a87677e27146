from __future__ import annotations

import importlib

import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv


@pytest.fixture
def normed(toy_counts):
    sv.pp.normalize(toy_counts)
    return toy_counts


def test_knn_contract(normed):
    sv.pp.cell_graph(normed, n_neighbors=10, n_pcs=20)
    A = normed.obsp["cell_graph_connectivities"]
    D = normed.obsp["cell_graph_distances"]
    assert sparse.isspmatrix_csr(A) and A.shape == (normed.n_obs,) * 2
    assert D.shape == A.shape
    assert normed.uns["cell_graph"]["connectivities_key"] == "cell_graph_connectivities"
    assert normed.uns["cell_graph"]["distances_key"] == "cell_graph_distances"
    params = normed.uns["cell_graph"]["params"]
    assert params["method"] == "knn" and params["n_neighbors"] == 10 and params["random_state"] == 0
    assert abs(A - A.T).max() < 1e-6, "knn graph is symmetric unless normalize='row'"
    assert A.diagonal().max() == 0, "no self loops by default"
    assert (A.getnnz(axis=1) >= 9).all(), "each cell keeps its 9 nearest other cells"
    assert (A.data > 0).all() and (A.data <= 1).all()


def test_gnnimpute_graph_definition(normed):
    """DESIGN: kneighbors_graph(k=5, include_self=True), row-normalized: 5 entries per row, self included."""
    sv.pp.cell_graph(normed, n_neighbors=5, self_loops=True, normalize="row", key_added="g")
    A = normed.obsp["g_connectivities"]
    np.testing.assert_array_equal(A.getnnz(axis=1), 5)
    assert (A.diagonal() > 0).all()
    np.testing.assert_allclose(np.asarray(A.sum(1)).ravel(), 1, rtol=1e-5)
    # the same neighbour sets as an exact kNN on the same PCA
    import scanpy as sc
    from sklearn.neighbors import kneighbors_graph

    pcs = sc.pp.pca(normed.layers["normalized"].astype(np.float32), n_comps=50, random_state=0)
    ref = kneighbors_graph(pcs, 5, include_self=True)
    assert (A.astype(bool) != ref.astype(bool)).nnz <= 0.02 * A.nnz  # ties may differ


def test_kernel_is_the_papers(normed):
    sv.pp.cell_graph(normed, method="kernel", key_added="k")
    A = normed.obsp["k_connectivities"]
    X = normed.layers["normalized"].toarray().astype(np.float64)
    S = X @ X.T
    thr = np.percentile(S.astype(np.float32), 85)
    expected = np.where(S > thr, S, 0)
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(A.toarray(), expected, rtol=1e-4, atol=1e-4)
    assert "k_distances" not in normed.obsp and "distances_key" not in normed.uns["k"]


def test_kernel_refused_above_memory_limit(normed):
    with pytest.raises(ValueError, match="GB"):
        sv.pp.cell_graph(normed, method="kernel", max_memory=1e3)
    assert "cell_graph_connectivities" not in normed.obsp


def test_determinism_and_sparse_dense_parity(normed):
    a = sv.pp.cell_graph(normed, copy=True, random_state=3)
    b = sv.pp.cell_graph(normed, copy=True, random_state=3)
    assert (a.obsp["cell_graph_connectivities"] != b.obsp["cell_graph_connectivities"]).nnz == 0
    dense = normed.copy()
    dense.layers["normalized"] = dense.layers["normalized"].toarray()
    c = sv.pp.cell_graph(dense, copy=True, random_state=3)
    assert (
        a.obsp["cell_graph_connectivities"].astype(bool) != c.obsp["cell_graph_connectivities"].astype(bool)
    ).nnz == 0


def test_pynndescent_path_above_exact_limit():
    """Above 8,192 cells (pynndescent 0.7 + scanpy 1.11 broke there); our approximate path builds a kNN graph."""
    import anndata as ad

    rng = np.random.default_rng(0)
    n = 9000
    centers = rng.normal(0, 5, (6, 20))
    X = (centers[rng.integers(0, 6, n)] + rng.normal(0, 1, (n, 20))).astype(np.float32)
    adata = ad.AnnData(np.abs(X))
    sv.pp.cell_graph(adata, layer=None, n_neighbors=10, n_pcs=10)
    A = adata.obsp["cell_graph_connectivities"]
    assert A.shape == (n, n) and (A.getnnz(axis=1) >= 9).all()
    # and scanpy's own neighbors works beside it with the pinned pynndescent
    import scanpy as sc

    sc.pp.neighbors(adata, n_neighbors=10, use_rep="X", transformer="pynndescent")
    assert adata.obsp["connectivities"].shape == (n, n)


def test_balanced_batches_above_exact_limit(monkeypatch, toy_counts):
    """batch_mode='balanced' queries other batches with pynndescent above the exact limit (lowered here; it runs
    right after the test above, which pays numba's compilation)."""
    cg = importlib.import_module("scvgae_sc.pp._cell_graph")
    sv.pp.normalize(toy_counts)
    X = toy_counts.layers["normalized"]
    labels = np.random.default_rng(1).permutation(np.array(["a"] * 70 + ["b"] * 50, dtype=object))
    exact, _ = cg.compute_graph(X, n_neighbors=9, n_pcs=20, batch=labels, batch_mode="balanced")
    monkeypatch.setattr(cg, "EXACT_KNN_MAX_CELLS", 10)
    approx, _ = cg.compute_graph(X, n_neighbors=9, n_pcs=20, batch=labels, batch_mode="balanced")
    assert approx.shape == exact.shape
    assert approx.astype(bool).multiply(exact.astype(bool)).nnz > 0.9 * exact.nnz
    assert (approx.getnnz(axis=1) >= 8).all()
    coo = approx.tocoo()
    assert (labels[coo.row] != labels[coo.col]).any() and (labels[coo.row] == labels[coo.col]).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_neighbors": 200}, "too few"),
        ({"n_neighbors": 1}, "n_neighbors"),
        ({"method": "delaunay"}, "method"),
        ({"normalize": "sym"}, "normalize"),
        ({"layer": "nope"}, "no layer 'nope'"),
        ({"method": "kernel", "percentile": 100}, "percentile"),
    ],
)
def test_bad_input(normed, kwargs, match):
    before = set(normed.obsp), set(normed.uns)
    with pytest.raises(ValueError, match=match):
        sv.pp.cell_graph(normed, **kwargs)
    assert (set(normed.obsp), set(normed.uns)) == before


def test_nan_layer_refused(normed):
    normed.layers["normalized"].data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sv.pp.cell_graph(normed)


def test_view_refused_copy_works(normed):
    with pytest.raises(ValueError, match="view"):
        sv.pp.cell_graph(normed[:60])
    out = sv.pp.cell_graph(normed[:60], copy=True)
    assert out.obsp["cell_graph_connectivities"].shape == (60, 60)
