from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

import scvgae_sc as sv


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    return sv.datasets.pbmc68k()


@pytest.fixture(scope="module")
def reduced() -> ad.AnnData:
    return sc.datasets.pbmc68k_reduced()


def test_shape_and_counts(adata):
    assert adata.shape == (700, 765)
    assert sparse.isspmatrix_csr(adata.X)
    assert adata.X.dtype == np.float32
    data = adata.X.data
    assert data.min() > 0  # explicit zeros eliminated
    np.testing.assert_array_equal(data, np.round(data))
    assert adata.raw is None
    assert len(adata.layers) == 0 and len(adata.obsm) == 0 and len(adata.obsp) == 0
    assert isinstance(adata.uns["source"], str)


def test_labels_and_names(adata, reduced):
    assert adata.obs["cell_type"].dtype == "category"
    assert adata.obs["cell_type"].cat.categories.size == 10
    np.testing.assert_array_equal(adata.obs["cell_type"].to_numpy(), reduced.obs["bulk_labels"].to_numpy())
    assert list(adata.obs_names) == list(reduced.obs_names)
    assert list(adata.var_names) == list(reduced.raw.var_names)
    np.testing.assert_array_equal(adata.obs["n_counts_original"].to_numpy(), reduced.obs["n_counts"].to_numpy())


def test_counts_reproduce_raw(adata, reduced):
    # normalize each cell to 1e4 per its original library size, then log1p: that is raw.X
    norm = adata.X.toarray().astype(np.float64) / adata.obs["n_counts_original"].to_numpy()[:, None] * 1e4
    np.testing.assert_allclose(np.log1p(norm), reduced.raw.X.toarray(), atol=1e-3)
    # the same sparsity pattern
    assert adata.X.nnz == reduced.raw.X.nnz


def test_new_object_each_call():
    a = sv.datasets.pbmc68k()
    b = sv.datasets.pbmc68k()
    assert a is not b and a.X is not b.X
    a.X.data[:] = 0
    a.obs["cell_type"] = "x"
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    c = sv.datasets.pbmc68k()
    assert c.X.data.min() > 0
    assert c.obs["cell_type"].cat.categories.size == 10
    assert c.var_names[0] == b.var_names[0]


def test_writes_h5ad(adata, tmp_path):
    adata.write_h5ad(tmp_path / "pbmc68k.h5ad")
    back = ad.read_h5ad(tmp_path / "pbmc68k.h5ad")
    assert back.shape == adata.shape
    assert (back.X != adata.X).nnz == 0
