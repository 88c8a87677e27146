"""``batch_key``: graphs built within batches or batch-balanced, per-batch size factors, on two real datasets."""

from __future__ import annotations

import importlib

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv
from scvgae_sc.cli import main
from scvgae_sc.tl._common import size_factors

#: Narrow networks, two epochs: the tests check wiring and locality, not quality.
SCVGAE_SMALL = {"hidden": 16, "decoder_hidden": 32, "progress_bar": False}
GNN_SMALL = {"hidden": 16, "latent": 8, "heads": 1, "progress_bar": False}


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _cross_batch_edges(A, labels) -> int:
    coo = sparse.coo_matrix(A)
    labels = np.asarray(labels)
    return int((labels[coo.row] != labels[coo.col]).sum())


@pytest.fixture
def batched(toy_counts):
    """toy_counts (120 cells) normalized, with an uneven batch column: 70 cells 'a', 50 cells 'b', interleaved."""
    rng = np.random.default_rng(1)
    labels = np.array(["a"] * 70 + ["b"] * 50, dtype=object)
    toy_counts.obs["batch"] = rng.permutation(labels)
    sv.pp.normalize(toy_counts)
    return toy_counts


def _global_pcs(adata, n_pcs=20):
    import scanpy as sc

    return sc.pp.pca(adata.layers["normalized"].astype(np.float32), n_comps=n_pcs, random_state=0)


# --------------------------------------------------------------------------------------------- pp.cell_graph
def test_within_no_cross_batch_edges_and_exact_neighbours(batched):
    from sklearn.neighbors import NearestNeighbors

    sv.pp.cell_graph(batched, n_neighbors=6, n_pcs=20, batch_key="batch", self_loops=True, normalize="row")
    A = batched.obsp["cell_graph_connectivities"]
    labels = batched.obs["batch"].to_numpy()
    assert _cross_batch_edges(A, labels) == 0
    np.testing.assert_array_equal(A.getnnz(axis=1), 6)  # n_neighbors entries per row, the cell itself one of them
    params = batched.uns["cell_graph"]["params"]
    assert params["batch_key"] == "batch" and params["batch_mode"] == "within"
    # each row: the 6 nearest cells of the same batch on the global PCA
    pcs = _global_pcs(batched)
    for b in ("a", "b"):
        cells = np.flatnonzero(labels == b)
        _, idx = NearestNeighbors(n_neighbors=6).fit(pcs[cells]).kneighbors(pcs[cells])
        expected = sparse.csr_matrix((np.ones(idx.size), (np.repeat(cells, 6), cells[idx.ravel()])), shape=A.shape)
        got = A[cells].astype(bool).astype(np.int8)
        assert (got != expected[cells].astype(bool).astype(np.int8)).nnz <= 0.02 * got.nnz  # ties may differ


def test_within_is_symmetric_without_row_normalization(batched):
    sv.pp.cell_graph(batched, n_neighbors=5, n_pcs=20, batch_key="batch")
    A = batched.obsp["cell_graph_connectivities"]
    assert abs(A - A.T).max() < 1e-6 and A.diagonal().max() == 0
    assert _cross_batch_edges(A, batched.obs["batch"]) == 0
    assert _cross_batch_edges(batched.obsp["cell_graph_distances"], batched.obs["batch"]) == 0


def test_balanced_neighbours_from_every_batch(batched):
    """k = (n_neighbors - 1) // n_batches nearest cells from each batch (own batch: besides itself), plus itself."""
    from sklearn.neighbors import NearestNeighbors

    sv.pp.cell_graph(
        batched, n_neighbors=9, n_pcs=20, batch_key="batch", batch_mode="balanced", self_loops=True, normalize="row"
    )
    A = batched.obsp["cell_graph_connectivities"].tocsr()
    labels = batched.obs["batch"].to_numpy()
    k = (9 - 1) // 2
    np.testing.assert_array_equal(A.getnnz(axis=1), 1 + 2 * k)
    assert (A.diagonal() > 0).all()
    pcs = _global_pcs(batched)
    for i in range(batched.n_obs):
        nbrs = A.indices[A.indptr[i] : A.indptr[i + 1]]
        others = nbrs[nbrs != i]
        for b in ("a", "b"):
            from_b = set(others[labels[others] == b])
            assert len(from_b) == k, f"cell {i} has {len(from_b)} neighbours from batch {b!r}, expected {k}"
            pool = np.flatnonzero((labels == b) & (np.arange(len(labels)) != i))
            _, idx = NearestNeighbors(n_neighbors=k).fit(pcs[pool]).kneighbors(pcs[i : i + 1])
            assert len(from_b & set(pool[idx[0]])) >= k - 1  # the nearest ones (a tie may swap the last)
    assert batched.uns["cell_graph"]["params"]["batch_mode"] == "balanced"


def test_balanced_symmetric_graph_mixes_batches(batched):
    sv.pp.cell_graph(batched, n_neighbors=15, n_pcs=20, batch_key="batch", batch_mode="balanced")
    A = batched.obsp["cell_graph_connectivities"].tocsr()
    labels = batched.obs["batch"].to_numpy()
    assert abs(A - A.T).max() < 1e-6
    for i in range(batched.n_obs):
        nbrs = A.indices[A.indptr[i] : A.indptr[i + 1]]
        assert set(labels[nbrs]) == {"a", "b"}
        assert (A.getnnz(axis=1) >= 14).all()


@pytest.mark.parametrize("mode", ["within", "balanced"])
def test_single_batch_is_the_graph_without_batches(batched, mode):
    batched.obs["one"] = "only"
    sv.pp.cell_graph(batched, n_neighbors=7, n_pcs=20, key_added="plain")
    sv.pp.cell_graph(batched, n_neighbors=7, n_pcs=20, key_added="one", batch_key="one", batch_mode=mode)
    for suffix in ("connectivities", "distances"):
        a, b = batched.obsp[f"plain_{suffix}"], batched.obsp[f"one_{suffix}"]
        assert (a != b).nnz == 0


def test_integer_and_categorical_labels(batched):
    codes = (batched.obs["batch"] == "b").astype(int).to_numpy()
    batched.obs["int_batch"] = codes
    batched.obs["cat_batch"] = batched.obs["batch"].astype("category").cat.add_categories(["unused"])
    sv.pp.cell_graph(batched, n_neighbors=5, n_pcs=20, batch_key="batch", key_added="s")
    for key in ("int_batch", "cat_batch"):
        sv.pp.cell_graph(batched, n_neighbors=5, n_pcs=20, batch_key=key, key_added=key)
        assert (batched.obsp[f"{key}_connectivities"] != batched.obsp["s_connectivities"]).nnz == 0


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (None, {"batch_key": "nope"}, "no column 'nope'"),
        (None, {"batch_key": 3}, "batch_key must be"),
        ("nan", {"batch_key": "batch"}, "missing label"),
        (None, {"batch_key": "batch", "batch_mode": "mixed"}, "batch_mode must be"),
        (None, {"batch_key": "batch", "method": "kernel"}, "needs method='knn'"),
        ("tiny", {"batch_key": "batch", "n_neighbors": 5}, r"'tiny' \(4 cells\) is too small"),
        ("tiny", {"batch_key": "batch", "n_neighbors": 15, "batch_mode": "balanced"}, r"'tiny' \(4 cells\)"),
    ],
)
@pytest.mark.parametrize("copy", [False, True])
def test_cell_graph_refusals_leave_adata_unchanged(batched, snapshot, setup, kwargs, message, copy):
    if setup == "nan":
        batched.obs["batch"] = batched.obs["batch"].astype(object)
        batched.obs.iloc[3, batched.obs.columns.get_loc("batch")] = np.nan
    elif setup == "tiny":
        batched.obs.iloc[:4, batched.obs.columns.get_loc("batch")] = "tiny"
    snap = snapshot(batched)
    uns_keys = set(batched.uns)
    with pytest.raises((ValueError, TypeError), match=message):
        sv.pp.cell_graph(batched, n_pcs=20, copy=copy, **kwargs)
    snap.assert_unchanged(batched)
    assert set(batched.uns) == uns_keys and "cell_graph_connectivities" not in batched.obsp


def test_balanced_accepts_batches_too_small_for_within(batched):
    batched.obs.iloc[:4, batched.obs.columns.get_loc("batch")] = "tiny"  # 3 batches: k = (9 - 1) // 3 = 2
    sv.pp.cell_graph(batched, n_neighbors=9, n_pcs=20, batch_key="batch", batch_mode="balanced")
    A = batched.obsp["cell_graph_connectivities"].tocsr()
    labels = batched.obs["batch"].to_numpy()
    assert all(set(labels[A.indices[A.indptr[i] : A.indptr[i + 1]]]) == {"a", "b", "tiny"} for i in range(len(labels)))


# ------------------------------------------------------------------------------------------- size factors
def test_size_factors_per_batch():
    rng = np.random.default_rng(0)
    shallow = rng.poisson(2.0, (40, 30))
    deep = rng.poisson(6.0, (25, 30))  # about three times the depth
    counts = sparse.csr_matrix(np.vstack([shallow, deep]))
    labels = np.array(["s"] * 40 + ["d"] * 25, dtype=object)
    per_batch = size_factors(counts, labels)
    np.testing.assert_allclose(per_batch[:40], size_factors(sparse.csr_matrix(shallow)), rtol=1e-6)
    np.testing.assert_allclose(per_batch[40:], size_factors(sparse.csr_matrix(deep)), rtol=1e-6)
    for part in (per_batch[:40], per_batch[40:]):
        assert abs(np.median(part) - 1) < 0.05
    pooled = size_factors(counts)
    assert np.median(pooled[40:]) > 1.5 * np.median(pooled[:40]), "without batches the deep batch stands out"
    np.testing.assert_array_equal(size_factors(counts, np.zeros(65, dtype=int)), pooled)


def test_size_factors_cells_without_counts_get_one():
    counts = np.array([[0, 0], [2, 2], [4, 4], [0, 0], [1, 0]])
    sf = size_factors(counts, ["x", "x", "x", "y", "y"])
    np.testing.assert_allclose(sf, [1, 2 / 3, 4 / 3, 1, 1])


# ------------------------------------------------------------------------- two real datasets, concatenated
@pytest.fixture(scope="module")
def _two_datasets(_pbmc68k_cached, _pbmc3k_cached) -> ad.AnnData:
    """pbmc68k (700 cells) and 300 random pbmc3k cells on their 763 shared genes; obs['dataset'] names the source."""
    a, b = _pbmc68k_cached, _pbmc3k_cached
    genes = a.var_names.intersection(b.var_names)
    assert len(genes) > 700
    rng = np.random.default_rng(0)
    b = b[np.sort(rng.choice(b.n_obs, 300, replace=False)), genes].copy()
    a = a[:, genes].copy()
    for x in (a, b):
        x.obs = x.obs[["cell_type"]].astype(str)
    both = ad.concat({"pbmc68k": a, "pbmc3k": b}, label="dataset", index_unique="-")
    both.X = sparse.csr_matrix(both.X, dtype=np.float32)
    sv.pp.normalize(both)
    sv.pp.normalize(both, method="total", key_added="total")
    return both


@pytest.fixture
def two_datasets(_two_datasets) -> ad.AnnData:
    return _two_datasets.copy()


def _shuffle_within(adata: ad.AnnData, layer: str, cells: np.ndarray, seed: int = 0) -> ad.AnnData:
    """A copy with ``layer``'s rows of ``cells`` permuted among themselves (per-gene statistics unchanged)."""
    out = adata.copy()
    X = _dense(out.layers[layer]).copy()
    X[cells] = X[np.random.default_rng(seed).permutation(cells)]
    out.layers[layer] = X
    return out


def test_gnnimpute_within_batches_on_two_datasets(two_datasets, tmp_path):
    """Within batches, a cell's prediction depends on its own batch only: shuffling the other dataset's cells among
    themselves (same per-gene statistics, so the same z-scoring) leaves it bit-identical; without batch_key it
    does not (cells with pbmc3k neighbours change)."""
    adata = two_datasets
    labels = adata.obs["dataset"].to_numpy()
    model = sv.tl.impute(
        adata, method="gnnimpute", layer="total", batch_key="dataset", max_epochs=2, return_model=True, **GNN_SMALL
    )
    out = adata.layers["gnnimpute"]
    assert out.shape == adata.shape and np.isfinite(out).all()
    assert adata.obsm["X_gnnimpute"].shape == (adata.n_obs, 8)
    A = adata.obsp["gnnimpute_connectivities"]
    assert _cross_batch_edges(A, labels) == 0
    np.testing.assert_array_equal(A.getnnz(axis=1), 5)
    u = adata.uns["gnnimpute"]
    assert u["params"]["batch_key"] == "dataset" and u["params"]["batch_mode"] == "within"
    assert u["graph"]["batch_mode"] == "within" and u["graph"]["n_batches"] == 2
    adata.write_h5ad(tmp_path / "batched.h5ad")

    # the saved model: same matrix after a round trip, and the locality of its predictions
    model.save(tmp_path / "model")
    loaded = sv.tl.ImputationModel.load(tmp_path / "model")
    assert loaded.params["batch_key"] == "dataset"
    np.testing.assert_array_equal(loaded.predict(adata, device="cpu"), out)
    first, second = np.flatnonzero(labels == "pbmc68k"), np.flatnonzero(labels == "pbmc3k")
    shuffled = loaded.predict(_shuffle_within(adata, "total", second), device="cpu")
    np.testing.assert_array_equal(shuffled[first], out[first])
    assert not np.array_equal(shuffled[second], out[second])

    plain = sv.tl.impute(
        adata, method="gnnimpute", layer="total", key_added="plain", max_epochs=2, return_model=True, **GNN_SMALL
    )
    assert _cross_batch_edges(adata.obsp["plain_connectivities"], labels) > 0
    assert "batch_key" not in adata.uns["plain"]["params"] and "batch_mode" not in adata.uns["plain"]["params"]
    base = plain.predict(adata, device="cpu")
    moved = plain.predict(_shuffle_within(adata, "total", second), device="cpu")
    assert not np.array_equal(moved[first], base[first])


def test_scvgae_within_and_balanced_on_two_datasets(two_datasets, monkeypatch):
    """scVGAE trains on the graph pp.cell_graph builds with the same batches, and on per-batch size factors."""
    adata = two_datasets
    labels = adata.obs["dataset"].to_numpy()
    runner = importlib.import_module("scvgae_sc.tl._models._scvgae")
    seen = []

    def recording(counts, batch=None):
        seen.append(None if batch is None else np.asarray(batch))
        return size_factors(counts, batch)

    monkeypatch.setattr(runner, "size_factors", recording)
    sv.tl.impute(adata, method="scvgae", batch_key="dataset", max_epochs=2, **SCVGAE_SMALL)
    # training and the denoised output's posterior both use the per-batch size factors
    assert len(seen) == 2 and all(s is not None and np.array_equal(s, labels) for s in seen)
    out = adata.layers["scvgae"]
    assert out.shape == adata.shape and np.isfinite(out).all() and out.min() >= 0
    A = adata.obsp["scvgae_connectivities"]
    assert _cross_batch_edges(A, labels) == 0
    # the same graph as pp.cell_graph on the input layer with the same batches (sqrt layer: no transform)
    sv.pp.cell_graph(adata, batch_key="dataset")
    assert (A != adata.obsp["cell_graph_connectivities"]).nnz == 0
    assert adata.uns["scvgae"]["params"]["batch_key"] == "dataset"

    sv.tl.impute(
        adata,
        method="scvgae",
        batch_key="dataset",
        key_added="bal",
        max_epochs=2,
        batch_mode="balanced",
        **SCVGAE_SMALL,
    )
    B = adata.obsp["bal_connectivities"].tocsr()
    for i in range(B.shape[0]):
        assert set(labels[B.indices[B.indptr[i] : B.indptr[i + 1]]]) == {"pbmc68k", "pbmc3k"}
    assert adata.uns["bal"]["graph"]["batch_mode"] == "balanced"
    assert adata.uns["bal"]["params"]["batch_mode"] == "balanced"


def test_impute_single_batch_equals_no_batch(two_datasets):
    adata = two_datasets[two_datasets.obs["dataset"] == "pbmc3k"].copy()
    sv.tl.impute(adata, method="scvgae", batch_key="dataset", key_added="one", max_epochs=2, **SCVGAE_SMALL)
    sv.tl.impute(adata, method="scvgae", key_added="none", max_epochs=2, **SCVGAE_SMALL)
    np.testing.assert_array_equal(adata.layers["one"], adata.layers["none"])


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (None, {"batch_key": "nope"}, "no column 'nope'"),
        ("nan", {"batch_key": "dataset"}, "missing label"),
        ("tiny", {"batch_key": "dataset", "method": "gnnimpute"}, r"'tiny' \(3 cells\) is too small"),
        ("tiny", {"batch_key": "dataset", "method": "scvgae"}, r"'tiny' \(3 cells\) is too small"),
        (None, {"batch_key": "dataset", "method": "scvgae", "graph": "kernel"}, "needs method='knn'"),
        (None, {"batch_key": "dataset", "method": "gnnimpute", "batch_mode": "all"}, "batch_mode must be one of"),
    ],
)
def test_impute_refusals_leave_adata_unchanged(pbmc68k, snapshot, setup, kwargs, message):
    adata = pbmc68k[:60].copy()
    adata.obs["dataset"] = np.repeat(["one", "two"], 30)
    sv.pp.normalize(adata)
    if setup == "nan":
        adata.obs["dataset"] = adata.obs["dataset"].astype(object)
        adata.obs.iloc[5, adata.obs.columns.get_loc("dataset")] = None
    elif setup == "tiny":
        adata.obs["dataset"] = adata.obs["dataset"].astype(str)
        adata.obs.iloc[:3, adata.obs.columns.get_loc("dataset")] = "tiny"
    kwargs = {"method": "scvgae", **kwargs}
    opts = SCVGAE_SMALL if kwargs["method"] == "scvgae" else GNN_SMALL
    snap = snapshot(adata)
    with pytest.raises((ValueError, TypeError), match=message):
        sv.tl.impute(adata, max_epochs=1, **opts, **kwargs)
    snap.assert_unchanged(adata)


def test_graph_key_with_batch_key_uses_the_given_graph(two_datasets):
    adata = two_datasets
    sv.pp.cell_graph(adata, batch_key="dataset", batch_mode="balanced", key_added="g")
    sv.tl.impute(adata, method="scvgae", graph_key="g", batch_key="dataset", max_epochs=1, **SCVGAE_SMALL)
    assert (adata.obsp["scvgae_connectivities"] != adata.obsp["g_connectivities"]).nnz == 0
    assert adata.uns["scvgae"]["graph"]["params"]["batch_mode"] == "balanced"


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_batch_key(pbmc68k, tmp_path, capsys):
    adata = pbmc68k[:140].copy()
    adata.obs["dataset"] = np.repeat(["one", "two"], 70)
    sv.pp.normalize(adata)
    adata.write_h5ad(tmp_path / "in.h5ad")
    args = ["impute", str(tmp_path / "in.h5ad"), "--method", "scvgae", "--max-epochs", "1", "-q"]
    args += ["--option", "hidden=8", "--option", "decoder_hidden=8"]
    assert main([*args, "-o", str(tmp_path / "out.h5ad"), "--batch-key", "dataset"]) == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.uns["scvgae"]["params"]["batch_key"] == "dataset"
    assert _cross_batch_edges(out.obsp["scvgae_connectivities"], out.obs["dataset"].to_numpy()) == 0
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "bad.h5ad"), "--batch-key", "donor"]) == 1
    assert "no column 'donor'" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5ad").exists()
