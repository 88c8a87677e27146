from __future__ import annotations

import importlib

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from matplotlib.figure import Figure
from scipy import sparse

import scvgae_sc as sv

emb = importlib.import_module("scvgae_sc.pl._embedding")


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _fail(*args, **kwargs):
    raise AssertionError("recomputed although cached")


def test_umap_tsne_panels_titles_legend_and_cache(imputed, monkeypatch):
    before_X = _dense(imputed.X).copy()
    before_layers = {k: _dense(v).copy() for k, v in imputed.layers.items()}
    user_pca = imputed.obsm["X_pca"].copy()
    user_conn = imputed.obsp["connectivities"].copy()

    fig = sv.pl.embedding_comparison(imputed, ["normalized", "smooth"], ("umap", "tsne"), return_fig=True)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4
    titles = [ax.get_title() for ax in panels]
    assert [t.split("\n")[0] for t in titles] == ["normalized", "smooth", "normalized", "smooth"]
    assert all("ARI" in t and "(paper)" in t for t in titles)
    assert [ax.get_xlabel() for ax in panels] == ["UMAP1", "UMAP1", "tSNE1", "tSNE1"]
    # one shared legend with every cell type, none on the panels
    assert len(fig.legends) == 1
    cats = list(imputed.obs["cell_type"].cat.categories)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == cats
    assert all(ax.get_legend() is None for ax in panels)
    # the ARI in the title is the paper protocol's
    ari = sv.tl.score_clustering(imputed, "smooth")["ari"]
    assert f"ARI {ari:.3f}" in titles[1]

    # cached, one per layer x basis, and different between layers
    for key in ("X_umap_normalized", "X_umap_smooth", "X_tsne_normalized", "X_tsne_smooth"):
        assert imputed.obsm[key].shape == (imputed.n_obs, 2)
        params = imputed.uns["scvgae_sc"]["embeddings"][key]["params"]
        assert params["n_pcs"] == 50 and params["random_state"] == 0
    assert not np.allclose(imputed.obsm["X_umap_normalized"], imputed.obsm["X_umap_smooth"])
    assert not np.allclose(imputed.obsm["X_tsne_normalized"], imputed.obsm["X_tsne_smooth"])
    assert imputed.uns["scvgae_sc"]["clustering"]["smooth"]["ari"] == pytest.approx(ari)

    # X, layers and the user's PCA and neighbours untouched
    np.testing.assert_array_equal(_dense(imputed.X), before_X)
    for k, v in before_layers.items():
        np.testing.assert_array_equal(_dense(imputed.layers[k]), v)
    np.testing.assert_array_equal(imputed.obsm["X_pca"], user_pca)
    assert (imputed.obsp["connectivities"] != user_conn).nnz == 0
    assert "X_umap" not in imputed.obsm and "X_tsne" not in imputed.obsm

    # a second call reuses the embeddings and the scores
    monkeypatch.setattr(emb, "_compute_embeddings", _fail)
    monkeypatch.setattr(sv.tl, "score_clustering", _fail)
    axes = sv.pl.embedding_comparison(imputed, ["smooth", "normalized"], ("tsne", "umap"), show=False)
    assert [ax.get_title().split("\n")[0] for ax in axes] == ["smooth", "normalized", "smooth", "normalized"]
    assert titles[1] == axes[0].get_title()


def test_cache_invalidated_by_new_data_or_params(imputed, monkeypatch):
    calls = []
    real = emb._compute_embeddings

    def counting(X, bases, **kw):
        calls.append((X.shape, tuple(bases), kw["n_pcs"]))
        return real(X, bases, **kw)

    monkeypatch.setattr(emb, "_compute_embeddings", counting)
    kw = {"basis": "pca", "score": False, "show": False}
    sv.pl.embedding_comparison(imputed, ["normalized", "smooth"], **kw)
    assert len(calls) == 2
    sv.pl.embedding_comparison(imputed, ["normalized", "smooth"], **kw)
    assert len(calls) == 2
    first = imputed.obsm["X_pca_smooth"].copy()
    imputed.layers["smooth"] = imputed.layers["smooth"][:, ::-1].copy()  # new values in the same layer
    sv.pl.embedding_comparison(imputed, ["normalized", "smooth"], **kw)
    assert len(calls) == 3  # only 'smooth' recomputed
    assert not np.allclose(np.abs(imputed.obsm["X_pca_smooth"][:, 0]), np.abs(first[:, 0]))
    sv.pl.embedding_comparison(imputed, ["normalized"], n_pcs=10, **kw)
    assert len(calls) == 4 and calls[-1][2] == 10
    assert imputed.obsm["X_pca_normalized"].shape == (imputed.n_obs, 10)


def test_scores_recomputed_for_new_labels(imputed, monkeypatch):
    sv.pl.embedding_comparison(imputed, ["normalized"], "pca", show=False)
    calls = []
    real = sv.tl.score_clustering

    def counting(*args, **kwargs):
        calls.append(kwargs["protocol"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sv.tl, "score_clustering", counting)
    sv.pl.embedding_comparison(imputed, ["normalized"], "pca", show=False)
    assert calls == []
    sv.pl.embedding_comparison(imputed, ["normalized"], "pca", score="leiden", show=False)
    assert calls == ["leiden"]
    imputed.obs["cell_type"] = imputed.obs["cell_type"].sample(frac=1, random_state=0).to_numpy()
    axes = sv.pl.embedding_comparison(imputed, ["normalized"], "pca", score="leiden", show=False)
    assert calls == ["leiden", "leiden"]
    assert float(axes[0].get_title().split("ARI ")[1].split(" ")[0]) < 0.1  # shuffled labels


def test_failure_leaves_adata_unchanged(imputed, snapshot, monkeypatch):
    snap = snapshot(imputed)

    def boom(*args, **kwargs):
        raise RuntimeError("clustering failed")

    monkeypatch.setattr(sv.tl, "score_clustering", boom)
    with pytest.raises(RuntimeError, match="clustering failed"):
        sv.pl.embedding_comparison(imputed, ["normalized", "smooth"], "pca", show=False)
    snap.assert_unchanged(imputed)
    assert "embeddings" not in imputed.uns["scvgae_sc"]


def test_cache_survives_h5ad_round_trip(imputed, tmp_path, monkeypatch):
    sv.pl.embedding_comparison(imputed, ["normalized", "smooth"], "pca", show=False)
    path = tmp_path / "a.h5ad"
    imputed.write_h5ad(path)
    back = ad.read_h5ad(path)
    monkeypatch.setattr(emb, "_compute_embeddings", _fail)
    monkeypatch.setattr(sv.tl, "score_clustering", _fail)
    axes = sv.pl.embedding_comparison(back, ["normalized", "smooth"], "pca", show=False)
    assert all("ARI" in ax.get_title() for ax in axes)


def test_default_layers_are_inputs_then_imputations(imputed):
    axes = sv.pl.embedding_comparison(imputed, basis="pca", score=False, show=False)
    # scvgae imputed 'normalized', gnnimpute imputed 'total'; 'smooth' was not made by tl.impute
    assert [ax.get_title() for ax in axes] == ["normalized", "total", "scvgae", "gnnimpute"]


def test_default_layers_without_imputation(pbmc68k):
    sv.pp.normalize(pbmc68k)
    axes = sv.pl.embedding_comparison(pbmc68k, basis="pca", score=False, show=False)
    assert [ax.get_title() for ax in axes] == ["normalized"]
    del pbmc68k.layers["normalized"]
    with pytest.raises(ValueError, match="layers present: 'counts'"):
        sv.pl.embedding_comparison(pbmc68k, basis="pca", show=False)


def test_missing_layers_named_in_one_error(imputed, snapshot):
    snap = snapshot(imputed)
    with pytest.raises(ValueError, match=r"no 'gnnimpute2', 'magic' \(layers present: 'counts', 'normalized'"):
        sv.pl.embedding_comparison(imputed, ["normalized", "gnnimpute2", "magic"], show=False)
    snap.assert_unchanged(imputed)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"basis": "diffmap"}, ValueError, "basis must be one of"),
        ({"basis": ("pca", "pca")}, ValueError, "more than once"),
        ({"layers": ["smooth", "smooth"]}, ValueError, "more than once"),
        ({"layers": []}, ValueError, "empty"),
        ({"layers": [3]}, TypeError, "layer names"),
        ({"color": "CD3D"}, ValueError, "color must be a column of adata.obs"),
        ({"labels_key": "nope"}, ValueError, "no column 'nope'"),
        ({"score": "kmeans"}, ValueError, "score must be"),
        ({"score": "kmeans", "color": None}, ValueError, "score must be"),
        ({"score": "leiden", "color": None}, ValueError, "needs labels"),
        ({"n_pcs": 1}, ValueError, "n_pcs must be an integer >= 2"),
        ({"ncols": 0}, ValueError, "ncols"),
        ({"save": 3}, TypeError, "save must be"),
        ({"title": "x"}, TypeError, "sets 'title'"),
    ],
)
def test_bad_input(imputed, snapshot, kwargs, err, match):
    snap = snapshot(imputed)
    kw = {"layers": ["normalized", "smooth"], "basis": "pca", "show": False, **kwargs}
    with pytest.raises(err, match=match):
        sv.pl.embedding_comparison(imputed, **kw)
    snap.assert_unchanged(imputed)


def test_small_data_lowers_n_pcs(imputed):
    small = imputed[:40, :12].copy()
    sv.pl.embedding_comparison(small, ["normalized", "smooth"], ("pca", "umap"), score=False, show=False)
    assert small.obsm["X_pca_smooth"].shape == (40, 11)
    assert small.uns["scvgae_sc"]["embeddings"]["X_umap_smooth"]["params"]["n_pcs"] == 11


def test_view_is_not_cached(imputed):
    view = imputed[:300]
    keys = set(view.obsm)
    axes = sv.pl.embedding_comparison(view, ["normalized", "smooth"], "pca", show=False)
    assert len(axes) == 2 and view.is_view
    assert set(view.obsm) == keys


def test_color_none_and_continuous_have_no_category_legend(imputed):
    fig = sv.pl.embedding_comparison(imputed, ["normalized", "smooth"], "pca", color=None, return_fig=True)
    assert not fig.legends and all("ARI" not in ax.get_title() for ax in fig.axes)
    fig = sv.pl.embedding_comparison(imputed, ["normalized"], "pca", color="percent_mito", return_fig=True)
    assert not fig.legends
    assert len(fig.axes) == 2  # the panel and its colorbar
    # labels from another column still give the ARI
    fig = sv.pl.embedding_comparison(
        imputed, ["normalized"], "pca", color="percent_mito", labels_key="cell_type", return_fig=True
    )
    assert "ARI" in fig.axes[0].get_title()


def test_ncols_wraps_panels(imputed):
    fig = sv.pl.embedding_comparison(
        imputed, ["normalized", "smooth", "total"], "pca", score=False, ncols=2, return_fig=True
    )
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 3
    rows = {ax.get_subplotspec().rowspan.start for ax in panels}
    assert rows == {0, 1}


def test_save_to_figdir(imputed, tmp_path):
    old = sc.settings.figdir
    sc.settings.figdir = tmp_path
    try:
        out = sv.pl.embedding_comparison(
            imputed, ["normalized", "smooth"], "pca", score=False, show=False, save="_t.png"
        )
    finally:
        sc.settings.figdir = old
    assert (tmp_path / "embedding_comparison_t.png").stat().st_size > 1000
    assert len(out) == 2


def test_stored_colours_shared_by_panels_and_legend(imputed):
    from matplotlib.colors import to_hex, to_rgba

    cats = list(imputed.obs["cell_type"].cat.categories)
    stored = [to_hex((i / len(cats), 0.5, 1 - i / len(cats))) for i in range(len(cats))]
    imputed.uns["cell_type_colors"] = stored
    fig = sv.pl.embedding_comparison(imputed, ["normalized", "smooth"], "pca", score=False, return_fig=True)
    assert [to_hex(h.get_color()) for h in fig.legends[0].legend_handles] == stored
    codes = imputed.obs["cell_type"].cat.codes.to_numpy()
    for ax in fig.axes:
        faces = ax.collections[0].get_facecolors()
        # scanpy may reorder points; every drawn colour is one of the stored ones, and all types appear
        drawn = {to_hex(c) for c in faces}
        assert drawn == {to_hex(to_rgba(stored[c])) for c in set(codes)}


def test_scanpy_legend_on_request(imputed):
    fig = sv.pl.embedding_comparison(
        imputed, ["normalized"], "pca", score=False, legend_loc="on data", size=5, return_fig=True
    )
    assert not fig.legends
    cats = set(imputed.obs["cell_type"].cat.categories)
    assert cats <= {t.get_text() for t in fig.axes[0].texts}
