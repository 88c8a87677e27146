from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv


def test_pbmc3k_paper_shape(pbmc3k):
    X_before = pbmc3k.X.copy()
    sv.pp.filter(pbmc3k)
    assert pbmc3k.shape == (2024, 3857)
    # values untouched: the kept block of the original matrix
    assert pbmc3k.uns["scvgae_sc"]["filter"]["n_obs_before"] == 2638
    assert X_before.sum() >= pbmc3k.X.sum() > 0


def test_masks_computed_on_unfiltered_matrix(toy_counts):
    X = toy_counts.X.toarray()
    X[:5, :] = 0  # five empty cells
    X[5, :] = 1  # one cell detecting every gene
    toy_counts.X = sparse.csr_matrix(X)
    out = sv.pp.filter(toy_counts, min_cell_fraction=0.5, min_gene_fraction=0.5, copy=True)
    genes = (X > 0).sum(0) > int(0.5 * X.shape[0])
    cells = (X > 0).sum(1) > int(0.5 * X.shape[1])
    assert out.shape == (cells.sum(), genes.sum())
    np.testing.assert_array_equal(out.X.toarray(), X[cells][:, genes])
    assert toy_counts.shape == X.shape  # copy=True leaves the input alone


def test_sparse_dense_parity(toy_counts):
    dense = toy_counts.copy()
    dense.X = dense.X.toarray()
    a = sv.pp.filter(toy_counts, min_cell_fraction=0.3, min_gene_fraction=0.3, copy=True)
    b = sv.pp.filter(dense, min_cell_fraction=0.3, min_gene_fraction=0.3, copy=True)
    assert a.shape == b.shape
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda a: a.X.data.__setitem__(0, -1), "negative"),
        (lambda a: a.X.data.__setitem__(0, np.nan), "NaN"),
    ],
)
def test_bad_values(toy_counts, mutate, match):
    toy_counts.X = toy_counts.X.astype(np.float32)
    mutate(toy_counts)
    before = toy_counts.copy()
    with pytest.raises(ValueError, match=match):
        sv.pp.filter(toy_counts)
    assert toy_counts.shape == before.shape


def test_bad_arguments_and_objects(toy_counts):
    with pytest.raises(ValueError, match="fraction"):
        sv.pp.filter(toy_counts, min_cell_fraction=1.5)
    with pytest.raises(TypeError, match="AnnData"):
        sv.pp.filter(toy_counts.X)
    with pytest.raises(ValueError, match="view"):
        sv.pp.filter(toy_counts[:50])
    view = toy_counts[:50]
    assert sv.pp.filter(view, copy=True).n_obs <= 50
    empty = toy_counts[:0].copy()
    with pytest.raises(ValueError, match="at least"):
        sv.pp.filter(empty)
    zeros = toy_counts.copy()
    zeros.X = sparse.csr_matrix(zeros.shape, dtype=np.float32)
    with pytest.raises(ValueError, match="remove every"):
        sv.pp.filter(zeros)
    assert zeros.shape == toy_counts.shape


def test_backed_refused(toy_counts, tmp_path):
    import anndata as ad

    path = tmp_path / "toy.h5ad"
    toy_counts.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="to_memory"):
        sv.pp.filter(backed)
    backed.file.close()
