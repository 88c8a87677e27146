from __future__ import annotations

import importlib

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv

mask_module = importlib.import_module("scvgae_sc.pp._mask")


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _layered(toy_counts: ad.AnnData, *, dense: bool = False) -> ad.AnnData:
    """toy counts with 'counts' and a sqrt-style 'normalized' layer, plus genes with 0, 3 and 4 non-zeros."""
    C = toy_counts.X.toarray().astype(np.int32)
    C[:, 0] = 0
    C[:, 1] = 0
    C[:3, 1] = [1, 2, 5]  # 3 non-zeros: never masked
    C[:, 2] = 0
    C[:4, 2] = 7  # 4 non-zeros: floor(rate * 4) masked
    N = np.sqrt(np.log1p(C)).astype(np.float32)
    adata = toy_counts.copy()
    if dense:
        adata.X = C.copy()
        adata.layers["counts"] = C
        adata.layers["normalized"] = N
    else:
        adata.X = sparse.csr_matrix(C)
        adata.layers["counts"] = sparse.csr_matrix(C)
        adata.layers["normalized"] = sparse.csr_matrix(N)
    return adata


def _snapshot(adata: ad.AnnData) -> dict:
    return {
        "shape": adata.shape,
        "X": _dense(adata.X).copy(),
        "layers": {k: (type(v), _dense(v).copy()) for k, v in adata.layers.items()},
        "uns": repr(dict(adata.uns)),
    }


def _assert_unchanged(adata: ad.AnnData, before: dict) -> None:
    after = _snapshot(adata)
    assert after["shape"] == before["shape"]
    np.testing.assert_array_equal(after["X"], before["X"])
    assert after["layers"].keys() == before["layers"].keys()
    for k, (t, v) in before["layers"].items():
        assert after["layers"][k][0] is t
        np.testing.assert_array_equal(after["layers"][k][1], v)
    assert after["uns"] == before["uns"]


# ---------------------------------------------------------------------------------------------------


def test_contract_keys(toy_counts, tmp_path):
    adata = _layered(toy_counts)
    assert sv.pp.mask_dropouts(adata) is None
    for key in ("masked", "masked_counts", "masked_mask"):
        assert key in adata.layers
    M = adata.layers["masked_mask"]
    assert isinstance(M, sparse.csr_matrix)
    assert M.dtype == bool
    assert sparse.issparse(adata.layers["masked"])
    assert sparse.issparse(adata.layers["masked_counts"])
    assert adata.layers["masked"].dtype == np.float32
    assert adata.layers["masked_counts"].dtype == np.int32
    params = adata.uns["scvgae_sc"]["mask_dropouts"]["masked"]
    assert params["rate"] == 0.1
    assert params["layer"] == "normalized"
    assert params["counts_layer"] == "counts"
    assert params["random_state"] == 0
    assert params["n_masked"] == M.nnz
    adata.write_h5ad(tmp_path / "masked.h5ad")
    back = ad.read_h5ad(tmp_path / "masked.h5ad")
    assert (_dense(back.layers["masked_mask"]) == _dense(M)).all()
    assert back.uns["scvgae_sc"]["mask_dropouts"]["masked"]["n_masked"] == M.nnz


@pytest.mark.parametrize(
    ("rate", "floor"), [(0.1, lambda n: n // 10), (0.25, lambda n: n // 4), (0.5, lambda n: n // 2)]
)
def test_per_gene_counts(toy_counts, rate, floor):
    adata = _layered(toy_counts)
    sv.pp.mask_dropouts(adata, rate=rate, key_added="m")
    nnz = np.asarray((adata.layers["counts"] != 0).sum(axis=0)).ravel()
    expected = np.where(nnz > 3, floor(nnz), 0)
    got = np.asarray(adata.layers["m_mask"].sum(axis=0)).ravel()
    np.testing.assert_array_equal(got, expected)
    assert got[0] == 0 and got[1] == 0  # 0 and 3 non-zeros
    assert got[2] == floor(4)
    assert adata.uns["scvgae_sc"]["mask_dropouts"]["m"]["n_genes_masked"] == int((expected > 0).sum())


def test_masked_entries_zeroed_everywhere_else_kept(toy_counts):
    adata = _layered(toy_counts)
    sv.pp.mask_dropouts(adata, rate=0.3)
    M = _dense(adata.layers["masked_mask"])
    C, N = _dense(adata.layers["counts"]), _dense(adata.layers["normalized"])
    assert (C[M] != 0).all()  # drawn from the non-zeros
    for out, orig in ((adata.layers["masked"], N), (adata.layers["masked_counts"], C)):
        D = _dense(out)
        assert (D[M] == 0).all()
        np.testing.assert_array_equal(D[~M], orig[~M])
        assert (out.data != 0).all()  # no explicit zeros
    # the counts layer and the masked layer hide the same entries
    np.testing.assert_array_equal(_dense(adata.layers["masked"]) != 0, _dense(adata.layers["masked_counts"]) != 0)


def test_sparse_dense_parity(toy_counts):
    a_sp, a_de = _layered(toy_counts), _layered(toy_counts, dense=True)
    sv.pp.mask_dropouts(a_sp, random_state=3)
    sv.pp.mask_dropouts(a_de, random_state=3)
    assert isinstance(a_de.layers["masked"], np.ndarray)
    assert isinstance(a_de.layers["masked_mask"], sparse.csr_matrix)
    for key in ("masked", "masked_counts", "masked_mask"):
        np.testing.assert_array_equal(_dense(a_sp.layers[key]), _dense(a_de.layers[key]))


def test_csc_and_explicit_zeros(toy_counts):
    ref = _layered(toy_counts)
    sv.pp.mask_dropouts(ref)
    adata = _layered(toy_counts)
    C = sparse.csc_matrix(adata.layers["counts"])
    # an explicit zero stored in the counts is not a non-zero
    C = sparse.csc_matrix((np.append(C.data, 0), (np.append(C.tocoo().row, 5), np.append(C.tocoo().col, 0))), C.shape)
    assert C.nnz == adata.layers["counts"].nnz + 1
    adata.layers["counts"] = C
    adata.layers["normalized"] = sparse.csc_matrix(adata.layers["normalized"])
    sv.pp.mask_dropouts(adata)
    assert adata.layers["masked"].format == "csc"
    for key in ("masked", "masked_counts", "masked_mask"):
        np.testing.assert_array_equal(_dense(adata.layers[key]), _dense(ref.layers[key]))


def test_deterministic(toy_counts):
    masks = []
    for seed in (0, 0, 1):
        adata = _layered(toy_counts)
        sv.pp.mask_dropouts(adata, random_state=seed)
        masks.append(_dense(adata.layers["masked_mask"]))
    np.testing.assert_array_equal(masks[0], masks[1])
    assert masks[0].sum() == masks[2].sum()
    assert (masks[0] != masks[2]).any()


def test_copy_and_view(toy_counts):
    adata = _layered(toy_counts)
    before = _snapshot(adata)
    out = sv.pp.mask_dropouts(adata, copy=True)
    assert isinstance(out, ad.AnnData)
    assert "masked" in out.layers
    _assert_unchanged(adata, before)
    view = adata[:60]
    out = sv.pp.mask_dropouts(view, copy=True)
    assert out.n_obs == 60 and not out.is_view
    assert "masked" not in adata.layers


def test_layer_pattern_differs(toy_counts):
    adata = _layered(toy_counts, dense=True)
    N = adata.layers["normalized"].copy()
    N[N == 0] = 0.5  # a layer that is non-zero everywhere (e.g. a shifted matrix)
    adata.layers["normalized"] = N
    sv.pp.mask_dropouts(adata)
    M = _dense(adata.layers["masked_mask"])
    assert (_dense(adata.layers["counts"])[M] != 0).all()  # still drawn from the counts' non-zeros
    assert (adata.layers["masked"][M] == 0).all()
    assert (adata.layers["masked"][~M] == N[~M]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layer": "nope"}, ValueError, "no layer 'nope'"),
        ({"counts_layer": "raw_counts"}, ValueError, "no counts layer 'raw_counts'"),
        ({"rate": 0}, ValueError, "between 0 and 1"),
        ({"rate": 1}, ValueError, "between 0 and 1"),
        ({"rate": -0.1}, ValueError, "between 0 and 1"),
        ({"rate": 1.5}, ValueError, "between 0 and 1"),
        ({"rate": float("nan")}, ValueError, "between 0 and 1"),
        ({"rate": "0.1"}, TypeError, "rate"),
        ({"rate": True}, TypeError, "rate"),
        ({"random_state": "0"}, TypeError, "random_state"),
        ({"key_added": ""}, TypeError, "key_added"),
        ({"key_added": "normalized"}, ValueError, "overwritten"),
        ({"counts_layer": "masked_counts", "layer": "normalized"}, ValueError, "no counts layer|overwritten"),
    ],
)
def test_bad_arguments(toy_counts, kwargs, error, match):
    adata = _layered(toy_counts)
    before = _snapshot(adata)
    with pytest.raises(error, match=match):
        sv.pp.mask_dropouts(adata, **kwargs)
    _assert_unchanged(adata, before)


def test_remask_input_collision(toy_counts):
    adata = _layered(toy_counts)
    sv.pp.mask_dropouts(adata)
    before = _snapshot(adata)
    with pytest.raises(ValueError, match="overwritten"):
        sv.pp.mask_dropouts(adata, layer="masked", counts_layer="masked_counts")
    _assert_unchanged(adata, before)
    sv.pp.mask_dropouts(adata, layer="masked", counts_layer="masked_counts", key_added="masked2")  # fine


def test_view_inplace_refused(toy_counts):
    adata = _layered(toy_counts)
    view = adata[:50]
    with pytest.raises(ValueError, match="view"):
        sv.pp.mask_dropouts(view)
    assert view.is_view
    assert "masked" not in adata.layers


def test_backed_refused(toy_counts, tmp_path):
    _layered(toy_counts).write_h5ad(tmp_path / "toy.h5ad")
    backed = ad.read_h5ad(tmp_path / "toy.h5ad", backed="r")
    try:
        with pytest.raises(ValueError, match="backed"):
            sv.pp.mask_dropouts(backed)
    finally:
        backed.file.close()


def test_not_anndata():
    with pytest.raises(TypeError, match="AnnData"):
        sv.pp.mask_dropouts(np.ones((3, 3)))


def test_nan_in_layer(toy_counts):
    adata = _layered(toy_counts, dense=True)
    adata.layers["normalized"][0, 0] = np.nan
    before = _snapshot(adata)
    with pytest.raises(ValueError, match="NaN"):
        sv.pp.mask_dropouts(adata)
    _assert_unchanged(adata, before)


def test_negative_counts(toy_counts):
    adata = _layered(toy_counts, dense=True)
    adata.layers["counts"][0, 3] = -1
    before = _snapshot(adata)
    with pytest.raises(ValueError, match="negative"):
        sv.pp.mask_dropouts(adata)
    _assert_unchanged(adata, before)


@pytest.mark.parametrize("n_cells", [3, 9])
def test_too_sparse(n_cells):
    # every gene has at most n_cells non-zeros: with rate 0.1 nothing reaches floor(0.1 * nnz) >= 1
    C = np.ones((n_cells, 5), dtype=np.int32)
    adata = ad.AnnData(C.copy(), layers={"counts": C.copy(), "normalized": C.astype(np.float32)})
    before = _snapshot(adata)
    with pytest.raises(ValueError, match="too sparse or too small"):
        sv.pp.mask_dropouts(adata)
    _assert_unchanged(adata, before)


def test_shape_mismatch(toy_counts, monkeypatch):
    # anndata itself keeps layers aligned; guard against matrices that bypass it
    adata = _layered(toy_counts)
    before = _snapshot(adata)
    real = mask_module.get_layer

    def fake(adata, layer, **kwargs):
        X = real(adata, layer, **kwargs)
        return X[:, :-1] if layer == "counts" else X

    monkeypatch.setattr(mask_module, "get_layer", fake)
    with pytest.raises(ValueError, match=r"shape \(120, 60\).*shape \(120, 59\)"):
        sv.pp.mask_dropouts(adata)
    _assert_unchanged(adata, before)
