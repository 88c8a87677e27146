from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

import scvgae_sc as sv

KEYS = {"mcv", "pearson", "op_mse", "op_poisson", "n_cells"}


@pytest.fixture(scope="module")
def _simulated() -> AnnData:
    return sv.datasets.simulate(300, 150, n_groups=3, dropout=0.0, random_state=0)


@pytest.fixture
def split(_simulated) -> AnnData:
    """Simulated counts split into halves, with the train half normalized three ways."""
    adata = _simulated.copy()
    sv.pp.split_counts(adata)
    for method in ("sqrt", "log1p", "total"):
        sv.pp.normalize(adata, method=method, counts_layer="mcv_train", key_added=method)
    return adata


def _fake_imputation(adata: AnnData, key: str, values, *, layer: str, counts_layer: str = "mcv_train", **params):
    """Record a layer as ``tl.impute`` does (what the scorer reads): ``layers[key]`` and ``uns[key]``."""
    adata.layers[key] = values
    adata.uns[key] = {
        "params": {"method": "copy", "layer": layer, "counts_layer": counts_layer, **params},
        "graph": {"key": params.get("graph_key", "")},
    }


def _snapshot(adata: AnnData) -> tuple:
    root = adata.uns.get("scvgae_sc", {})
    return (
        adata.shape,
        sorted(adata.layers),
        list(adata.obs.columns),
        sorted(adata.uns),
        {k: sorted(v) for k, v in root.items()},
        sorted(adata.obsp),
    )


def _mcv_reference(train, test, P) -> float:
    """The loss written out: dense, all entries of the cells with both halves non-empty."""
    l1, l2 = train.sum(axis=1), test.sum(axis=1)
    ok = (l1 > 0) & (l2 > 0)
    t = np.median(l1[ok])
    T = np.log1p(test[ok] / l2[ok, None] * t)
    return float(np.mean((np.log1p(P[ok]) - T) ** 2))


def test_no_imputation_matches_the_protocol(split):
    train = split.layers["mcv_train"].toarray().astype(np.float64)
    test = split.layers["mcv_test"].toarray().astype(np.float64)
    scores = sv.tl.score_denoising(split, "mcv_train")
    assert set(scores) == KEYS
    lib = train.sum(axis=1)
    t = np.median(lib[(lib > 0) & (test.sum(axis=1) > 0)])
    P = train / np.where(lib > 0, lib, 1)[:, None] * t
    assert scores["mcv"] == pytest.approx(_mcv_reference(train, test, P), rel=1e-10)
    assert scores["n_cells"] == int(split.obs["mcv_scored"].sum())
    # the OpenProblems definitions, written out
    ok = split.obs["mcv_scored"].to_numpy()
    tr, te = train[ok], test[ok]
    op_mse = np.mean(
        (np.log1p(te / te.sum(1, keepdims=True) * 1e4) - np.log1p(tr / tr.sum(1, keepdims=True) * 1e4)) ** 2
    )
    Pc = tr * te.sum() / tr.sum()
    assert scores["op_mse"] == pytest.approx(op_mse, rel=1e-9)
    assert scores["op_poisson"] == pytest.approx(np.mean(Pc - te * np.log(Pc + 1e-6)), rel=1e-9)
    assert 0 < scores["pearson"] < 1


@pytest.mark.parametrize("layer", ["sqrt", "log1p", "total"])
def test_every_normalization_of_the_train_half_scores_as_no_imputation(split, layer):
    base = sv.tl.score_denoising(split, "mcv_train")
    scores = sv.tl.score_denoising(split, layer)
    for k in ("mcv", "pearson", "op_mse", "op_poisson"):
        assert scores[k] == pytest.approx(base[k], rel=1e-5), k


@pytest.mark.parametrize("layer", ["sqrt", "log1p", "total", "mcv_train"])
def test_a_method_that_copies_its_input_scores_as_no_imputation(split, layer):
    _fake_imputation(split, "copied", split.layers[layer].copy(), layer=layer)
    assert sv.tl.score_denoising(split, "copied") == sv.tl.score_denoising(split, layer)
    assert sv.tl.score_denoising(split, "copied")["mcv"] == pytest.approx(
        sv.tl.score_denoising(split, "mcv_train")["mcv"], rel=1e-5
    )


def test_the_same_prediction_scores_the_same_on_every_scale(split):
    """A smooth prediction (each group's mean profile), written on each layer's scale, maps back to one score."""
    train = split.layers["mcv_train"].toarray().astype(np.float64)
    lib = train.sum(axis=1)
    groups = split.obs["cell_type"].to_numpy()
    profile = np.zeros_like(train)
    for g in np.unique(groups):
        m = train[groups == g].sum(axis=0)
        profile[groups == g] = m / m.sum()
    expected = profile * lib[:, None]  # on each cell's train library, linear
    rec = split.uns["scvgae_sc"]["normalize"]
    on_scale = {
        "mcv_train": expected,
        "total": expected / lib[:, None] * rec["total"]["target_sum"],
        "log1p": np.log1p(expected / lib[:, None] * rec["log1p"]["target_sum"]),
        "sqrt": np.sqrt(np.log1p(expected) * rec["sqrt"]["target_sum"] / np.log1p(train).sum(axis=1)[:, None]),
    }
    scores = {}
    for layer, values in on_scale.items():
        _fake_imputation(split, f"smooth_{layer}", values.astype(np.float32), layer=layer)
        scores[layer] = sv.tl.score_denoising(split, f"smooth_{layer}")
    test = split.layers["mcv_test"].toarray().astype(np.float64)
    t = np.median(lib[split.obs["mcv_scored"].to_numpy()])
    reference = _mcv_reference(train, test, profile * t)
    for layer, s in scores.items():
        for k in ("mcv", "pearson", "op_mse", "op_poisson"):
            assert s[k] == pytest.approx(scores["total"][k], rel=1e-4), (layer, k)
        assert s["mcv"] == pytest.approx(reference, rel=1e-4), layer
    assert scores["total"]["mcv"] < sv.tl.score_denoising(split, "mcv_train")["mcv"], "smoothing helps here"


def test_true_means_score_better_than_the_raw_train_half(split):
    mu = np.asarray(split.layers["true_mean"], dtype=np.float64)
    target = split.uns["scvgae_sc"]["normalize"]["total"]["target_sum"]
    _fake_imputation(split, "truth", (mu / mu.sum(axis=1, keepdims=True) * target).astype(np.float32), layer="total")
    truth, raw = sv.tl.score_denoising(split, "truth"), sv.tl.score_denoising(split, "mcv_train")
    assert truth["mcv"] < 0.8 * raw["mcv"]
    assert truth["pearson"] > raw["pearson"]
    assert truth["op_mse"] < raw["op_mse"] and truth["op_poisson"] < raw["op_poisson"]


def test_sparse_and_dense_layers_score_the_same(split):
    dense = split.copy()
    for k in ("mcv_train", "mcv_test", "total"):
        dense.layers[k] = dense.layers[k].toarray()
    assert sv.tl.score_denoising(dense, "total") == pytest.approx(sv.tl.score_denoising(split, "total"))


def test_key_added_stores_the_scores(split, tmp_path):
    scores = sv.tl.score_denoising(split, "log1p", key_added="denoising_log1p")
    assert split.uns["denoising_log1p"] == scores
    split.write_h5ad(tmp_path / "scored.h5ad")


def test_scores_after_writing_and_reading_h5ad(pbmc68k, tmp_path):
    import anndata as ad

    sv.pp.filter(pbmc68k)
    sv.pp.split_counts(pbmc68k)
    sv.pp.normalize(pbmc68k, method="sqrt", counts_layer="mcv_train", key_added="train_sqrt")
    sv.tl.impute(
        pbmc68k, method="scvgae", layer="train_sqrt", counts_layer="mcv_train", max_epochs=1, progress_bar=False
    )
    pbmc68k.write_h5ad(tmp_path / "split.h5ad")
    back = ad.read_h5ad(tmp_path / "split.h5ad")
    for layer in ("mcv_train", "train_sqrt", "scvgae"):
        assert sv.tl.score_denoising(back, layer) == pytest.approx(sv.tl.score_denoising(pbmc68k, layer)), layer


def test_split_and_score_with_fraction_09(_simulated):
    adata = _simulated.copy()
    sv.pp.split_counts(adata, fraction=0.9, key_added="op")
    s = sv.tl.score_denoising(adata, "op_train", split_key="op")
    assert set(s) == KEYS and s["n_cells"] > 0


def test_scores_in_blocks_equal_one_block(split, monkeypatch):
    from scvgae_sc.tl import _score_denoising

    whole = sv.tl.score_denoising(split, "sqrt")
    monkeypatch.setattr(_score_denoising, "_BLOCK_ENTRIES", 7 * split.n_vars)
    blocks = sv.tl.score_denoising(split, "sqrt")
    for k in KEYS:
        assert blocks[k] == pytest.approx(whole[k], rel=1e-9), k


# --- refusals: a clear error, nothing written ---------------------------------------------------------------------


def _refused(adata: AnnData, layer: str, match: str, **kwargs) -> None:
    before = _snapshot(adata)
    with pytest.raises(ValueError, match=match):
        sv.tl.score_denoising(adata, layer, key_added="scores", **kwargs)
    assert _snapshot(adata) == before
    assert "scores" not in adata.uns


def test_refuses_an_unknown_split_key(split):
    _refused(split, "total", "No molecule split 'other'", split_key="other")


def test_refuses_without_any_split(_simulated):
    adata = _simulated.copy()
    sv.pp.normalize(adata, method="total")
    _refused(adata, "normalized", "No molecule split")


def test_refuses_the_test_half_the_full_counts_and_x(split):
    _refused(split, "mcv_test", "test half")
    _refused(split, "counts", "not computed from the train half")
    _refused(split, "missing", "no layer 'missing'")


def test_refuses_a_layer_normalized_from_the_full_counts(split):
    sv.pp.normalize(split, method="log1p", counts_layer="counts", key_added="full_log1p")
    _refused(split, "full_log1p", "normalized from 'counts'")


def test_refuses_a_normalized_layer_that_no_longer_matches_its_record(split):
    split.layers["total"] = split.layers["total"] * 1.5
    _refused(split, "total", "no longer matches")


def test_refuses_after_the_split_is_drawn_again(split):
    sv.pp.split_counts(split, random_state=5)  # the normalized layers belong to the old train half
    _refused(split, "total", "no longer matches")


def test_refuses_a_train_half_that_was_changed(split):
    split.layers["mcv_train"] = split.layers["counts"].copy()
    _refused(split, "mcv_train", "changed since the split")


def test_refuses_data_subset_after_the_split(split):
    subset = split[:, :100].copy()
    _refused(subset, "total", "subset after the split")


def test_refuses_imputations_that_saw_the_test_molecules(split):
    sv.pp.normalize(split, method="total", counts_layer="counts", key_added="full_total")
    _fake_imputation(split, "bad_counts", split.layers["total"].copy(), layer="total", counts_layer="counts")
    _refused(split, "bad_counts", "counts_layer='counts'")
    _fake_imputation(split, "bad_input", split.layers["full_total"].copy(), layer="full_total")
    _refused(split, "bad_input", "input layer of imputation 'bad_input'.*normalized from 'counts'")
    _fake_imputation(split, "from_x", split.layers["total"].copy(), layer=None)
    del split.uns["from_x"]["params"]["layer"]  # as recorded for layer=None
    _refused(split, "from_x", "adata.X")


def test_refuses_an_imputation_on_a_graph_built_from_the_full_counts(split):
    sv.pp.normalize(split, method="log1p", counts_layer="counts", key_added="full_log1p")
    sv.pp.cell_graph(split, layer="full_log1p", n_neighbors=5, n_pcs=10, key_added="full_graph")
    _fake_imputation(split, "imp", split.layers["total"].copy(), layer="total", graph_key="full_graph")
    split.uns["imp"]["graph"]["params"] = dict(split.uns["full_graph"]["params"])
    _refused(split, "imp", "graph 'full_graph' was built from")


def test_refuses_an_imputation_on_a_graph_built_before_the_split(_simulated):
    adata = _simulated.copy()
    sv.pp.normalize(adata, method="log1p", key_added="log1p")
    sv.pp.cell_graph(adata, layer="log1p", n_neighbors=5, n_pcs=10, key_added="g")
    sv.pp.split_counts(adata)
    # the layer's name now points at the train half, but the graph was built from the full counts
    sv.pp.normalize(adata, method="log1p", counts_layer="mcv_train", key_added="log1p")
    _fake_imputation(adata, "imp", adata.layers["log1p"].copy(), layer="log1p", graph_key="g")
    adata.uns["imp"]["graph"]["params"] = dict(adata.uns["g"]["params"])
    _refused(adata, "imp", "built before the split")


def test_refuses_a_graph_whose_layer_is_unknown(split):
    sv.pp.cell_graph(split, layer="log1p", n_neighbors=5, n_pcs=10, key_added="g")
    _fake_imputation(split, "imp", split.layers["total"].copy(), layer="total", graph_key="g")
    del split.uns["g"]["params"]
    _refused(split, "imp", "does not say which layer")


def test_refuses_a_graph_from_x_or_an_unnamed_representation(split):
    sv.pp.cell_graph(split, layer="log1p", n_neighbors=5, n_pcs=10, key_added="g")
    del split.uns["g"]["params"]["layer"]  # as recorded for layer=None, or by sc.pp.neighbors
    _fake_imputation(split, "imp", split.layers["total"].copy(), layer="total", graph_key="g")
    _refused(split, "imp", "built from adata.X or from a representation")


def test_refuses_bad_types(split):
    before = _snapshot(split)
    with pytest.raises(TypeError):
        sv.tl.score_denoising(split, split.layers["total"])
    with pytest.raises(TypeError):
        sv.tl.score_denoising(split, "total", split_key=1)
    assert _snapshot(split) == before


# --- real imputations ---------------------------------------------------------------------------------------------


def test_pbmc3k_no_imputation_figures(pbmc3k):
    """The published figures for no imputation on pbmc3k (filtered), seed 0."""
    sv.pp.filter(pbmc3k)
    sv.pp.split_counts(pbmc3k, fraction=0.5, key_added="half")
    sv.pp.split_counts(pbmc3k, fraction=0.9, key_added="op")
    assert sv.tl.score_denoising(pbmc3k, "half_train", split_key="half")["mcv"] == pytest.approx(0.0923, abs=5e-5)
    op = sv.tl.score_denoising(pbmc3k, "op_train", split_key="op")
    assert op["op_mse"] == pytest.approx(0.895, abs=5e-4) and op["op_poisson"] == pytest.approx(0.245, abs=5e-4)


@pytest.fixture
def pbmc_split(pbmc68k) -> AnnData:
    sv.pp.filter(pbmc68k)
    sv.pp.split_counts(pbmc68k)
    sv.pp.normalize(pbmc68k, method="total", counts_layer="mcv_train", key_added="train_total")
    return pbmc68k


@pytest.mark.parametrize(("method", "normalization"), [("scvgae", "sqrt"), ("gnnimpute", "total")])
def test_each_method_on_its_own_pipeline_is_scored(pbmc_split, method, normalization):
    sv.pp.normalize(pbmc_split, method=normalization, counts_layer="mcv_train", key_added="train_norm")
    sv.tl.impute(
        pbmc_split, method=method, layer="train_norm", counts_layer="mcv_train", max_epochs=2, progress_bar=False
    )
    scores = sv.tl.score_denoising(pbmc_split, method, key_added=f"{method}_denoising")
    assert set(scores) == KEYS and np.isfinite([scores[k] for k in KEYS]).all()
    assert pbmc_split.uns[f"{method}_denoising"] == scores


def test_an_imputation_of_the_train_half_is_scored(pbmc_split):
    kw = {"method": "gnnimpute", "max_epochs": 2, "progress_bar": False}
    sv.tl.impute(pbmc_split, layer="train_total", counts_layer="mcv_train", key_added="imp", **kw)
    scores = sv.tl.score_denoising(pbmc_split, "imp")
    assert set(scores) == KEYS and np.isfinite([scores[k] for k in KEYS]).all()
    assert scores["n_cells"] == int(pbmc_split.obs["mcv_scored"].sum())
    # with a graph built from the train half, too
    sv.pp.cell_graph(pbmc_split, layer="train_total", n_neighbors=5, n_pcs=10, key_added="train_graph")
    sv.tl.impute(
        pbmc_split, layer="train_total", counts_layer="mcv_train", graph_key="train_graph", key_added="imp_g", **kw
    )
    assert np.isfinite(sv.tl.score_denoising(pbmc_split, "imp_g")["mcv"])


def test_an_imputation_of_the_full_counts_is_refused(pbmc_split):
    sv.pp.normalize(pbmc_split, method="total", key_added="full_total")
    sv.tl.impute(pbmc_split, method="gnnimpute", layer="full_total", key_added="imp", max_epochs=2, progress_bar=False)
    _refused(pbmc_split, "imp", "counts_layer='counts'")


def test_an_imputation_run_before_the_split_was_drawn_again_is_refused(pbmc_split):
    sv.tl.impute(
        pbmc_split,
        method="gnnimpute",
        layer="train_total",
        counts_layer="mcv_train",
        key_added="imp",
        max_epochs=2,
        progress_bar=False,
    )
    sv.pp.split_counts(pbmc_split, random_state=1)  # a new split: the imputation saw the old train half
    sv.pp.normalize(pbmc_split, method="total", counts_layer="mcv_train", key_added="train_total")
    _refused(pbmc_split, "imp", "was run before the split")
