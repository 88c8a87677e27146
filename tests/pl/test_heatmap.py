from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse

import scvgae_sc as sv


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _expected_genes(adata, layer: str, n: int, groupby: str = "cell_type") -> list[str]:
    tmp = adata.copy()
    sc.tl.rank_genes_groups(tmp, groupby, layer=layer, method="wilcoxon", n_genes=n, use_raw=False)
    genes = []
    for g in tmp.obs[groupby].cat.categories:
        for name in tmp.uns["rank_genes_groups"]["names"][g][:n]:
            if name not in genes:
                genes.append(name)
    return genes


def test_panels_share_genes_ordered_and_zscored(imputed):
    before = {k: _dense(v).copy() for k, v in imputed.layers.items()}
    uns_keys = set(imputed.uns)
    fig = sv.pl.marker_heatmap(imputed, ["normalized", "smooth"], n_genes=3, vmax=100, return_fig=True)
    heat = [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape[0] > 1]
    assert len(heat) == 2
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["normalized", "smooth"]
    genes = _expected_genes(imputed, "normalized", 3)
    assert [t.get_text() for t in heat[0].get_yticklabels()] == genes
    cats = list(imputed.obs["cell_type"].cat.categories)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == cats
    codes = imputed.obs["cell_type"].cat.codes.to_numpy()
    order = np.argsort(codes, kind="stable")
    idx = imputed.var_names.get_indexer(genes)
    for ax, layer in zip(heat, ["normalized", "smooth"], strict=True):
        Z = np.asarray(ax.images[0].get_array())
        assert Z.shape == (len(genes), imputed.n_obs)
        M = _dense(imputed.layers[layer])[:, idx][order].T.astype(np.float64)
        sd = M.std(axis=1, keepdims=True)
        want = np.divide(M - M.mean(axis=1, keepdims=True), sd, out=np.zeros_like(M), where=sd > 0)
        np.testing.assert_allclose(Z, want, atol=1e-5)
    # the group bar above each panel shows cells ordered by group
    bars = [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape[0] == 1]
    assert len(bars) == 2
    np.testing.assert_array_equal(np.asarray(bars[0].images[0].get_array())[0], codes[order])
    # nothing written, nothing changed
    assert set(imputed.uns) == uns_keys
    for k, v in before.items():
        np.testing.assert_array_equal(_dense(imputed.layers[k]), v)


def test_reference_layer_and_key_added(imputed):
    axes = sv.pl.marker_heatmap(
        imputed, ["normalized", "smooth"], n_genes=2, reference_layer="smooth", key_added="markers", show=False
    )
    assert [t.get_text() for t in axes[0].get_yticklabels()] == _expected_genes(imputed, "smooth", 2)
    assert imputed.uns["markers"]["params"]["groupby"] == "cell_type"
    assert "smooth" in axes[0].get_ylabel()


def test_many_genes_labelled_by_group_and_clipped(imputed):
    axes = sv.pl.marker_heatmap(imputed, "normalized", n_genes=10, show=False)
    cats = list(imputed.obs["cell_type"].cat.categories)
    assert [t.get_text() for t in axes[0].get_yticklabels()] == cats
    Z = np.asarray(axes[0].images[0].get_array())
    assert Z.shape[0] > 60 and Z.max() <= 2.5 and Z.min() >= -2.5


def test_unlabelled_cells_left_out(imputed):
    labels = imputed.obs["cell_type"].astype(object)
    labels.iloc[:50] = None
    imputed.obs["partial"] = labels.astype("category")
    axes = sv.pl.marker_heatmap(imputed, "normalized", "partial", n_genes=2, show=False)
    assert np.asarray(axes[0].images[0].get_array()).shape[1] == imputed.n_obs - 50


@pytest.mark.parametrize(
    ("args", "kwargs", "err", "match"),
    [
        (("nope",), {}, ValueError, r"no 'nope' \(layers present"),
        (("normalized", "batch"), {}, ValueError, "no column 'batch'"),
        (("normalized",), {"reference_layer": "raw"}, ValueError, "no 'raw'"),
        (("normalized",), {"n_genes": 0}, ValueError, "n_genes"),
        (("normalized",), {"vmax": -1}, ValueError, "vmax"),
        (("normalized", "phase"), {"n_genes": 2}, None, None),
    ],
)
def test_bad_input(imputed, snapshot, args, kwargs, err, match):
    snap = snapshot(imputed)
    if err is None:  # a valid call for contrast: another categorical column
        assert len(sv.pl.marker_heatmap(imputed, *args, show=False, **kwargs)) == 1
        return
    with pytest.raises(err, match=match):
        sv.pl.marker_heatmap(imputed, *args, show=False, **kwargs)
    snap.assert_unchanged(imputed)


def test_one_group_refused(imputed):
    imputed.obs["one"] = "a"
    with pytest.raises(ValueError, match="at least 2"):
        sv.pl.marker_heatmap(imputed, "normalized", "one", show=False)


def test_stored_group_colours_used(imputed):
    from matplotlib.colors import to_hex

    cats = list(imputed.obs["cell_type"].cat.categories)
    stored = [to_hex((i / len(cats), 0.2, 1 - i / len(cats))) for i in range(len(cats))]
    imputed.uns["cell_type_colors"] = stored
    labels = imputed.obs["cell_type"].astype(object)
    labels[labels == cats[0]] = None  # the first group has no cells left
    imputed.obs["ct"] = labels.astype(pd.CategoricalDtype(cats))
    imputed.uns["ct_colors"] = stored
    fig = sv.pl.marker_heatmap(imputed, "normalized", "ct", n_genes=2, return_fig=True)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == cats[1:]
    assert [to_hex(h.get_facecolor()) for h in legend.legend_handles] == stored[1:]
