from __future__ import annotations

import importlib

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv
from scvgae_sc.tl._common import size_factors

gnn_module = importlib.import_module("scvgae_sc.tl._models._gnnimpute")

EPOCHS = 4
#: A narrow network for tests that train for a while (the published widths are tested in the contract test).
SMALL = {"hidden": 64, "latent": 16, "progress_bar": False, "output": "fill"}  # the fill's tests; see below


@pytest.fixture
def prepared(pbmc68k):
    sv.pp.filter(pbmc68k)
    sv.pp.normalize(pbmc68k, method="total", key_added="total")
    return pbmc68k


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def test_contract_keys_graph_history_and_h5ad(prepared, tmp_path):
    X_before = prepared.X.copy()
    sv.tl.impute(prepared, method="gnnimpute", layer="total", max_epochs=EPOCHS, progress_bar=False, output="fill")
    out = prepared.layers["gnnimpute"]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == prepared.shape
    assert np.isfinite(out).all() and out.min() >= 0
    # output="fill": observed values are kept, on the input layer's scale
    inp = _dense(prepared.layers["total"])
    np.testing.assert_allclose(out[inp > 0], inp[inp > 0], rtol=1e-6)
    assert (prepared.X != X_before).nnz == 0, "X untouched"

    assert prepared.obsm["X_gnnimpute"].shape == (prepared.n_obs, 50)
    A = prepared.obsp["gnnimpute_connectivities"]
    assert sparse.issparse(A) and A.shape == (prepared.n_obs,) * 2
    np.testing.assert_array_equal(A.getnnz(axis=1), 5)  # 5 entries per row, the cell itself one of them
    assert (A.diagonal() > 0).all()
    np.testing.assert_allclose(np.asarray(A.sum(axis=1)).ravel(), 1, rtol=1e-5)

    u = prepared.uns["gnnimpute"]
    assert {"params", "history", "graph", "device", "runtime_s", "version"} <= set(u)
    assert u["device"] == "cpu" and u["version"] == sv.__version__ and u["runtime_s"] > 0
    p = u["params"]
    assert p["method"] == "gnnimpute" and p["random_state"] == 0 and p["layer"] == "total"
    assert p["n_neighbors"] == 5 and p["heads"] == 3 and p["patience"] == "auto" and p["lr"] == 2e-3
    assert p["precision"] == "auto" and p["precision_used"] in ("32", "bf16")
    assert p["n_train"] + p["n_val"] + p["n_test"] == prepared.n_obs
    assert (p["n_train"], p["n_val"], p["n_test"]) == (420, 140, 140)
    assert u["graph"]["n_neighbors"] == 5 and u["graph"]["normalize"] == "row"
    h = u["history"]
    assert {"loss", "mse", "masked", "val_loss", "val_mse", "best_epoch", "stopped_epoch", "test_mse"} <= set(h)
    assert len(h["loss"]) == len(h["val_loss"]) == EPOCHS
    assert int(h["best_epoch"]) == int(np.argmin(h["val_loss"]))
    assert int(h["stopped_epoch"]) == EPOCHS - 1 and not bool(h["stopped_early"])
    assert np.isfinite(h["test_mse"])

    path = tmp_path / "imputed.h5ad"
    prepared.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["gnnimpute"], out)
    np.testing.assert_array_equal(back.obsm["X_gnnimpute"], prepared.obsm["X_gnnimpute"])
    np.testing.assert_array_equal(back.uns["gnnimpute"]["history"]["val_loss"], h["val_loss"])
    assert int(back.uns["gnnimpute"]["history"]["best_epoch"]) == int(h["best_epoch"])
    assert list(back.uns["gnnimpute"]["params"]["split"]) == [0.6, 0.2, 0.2]


def test_short_run_recovers_masked_values_on_the_input_scale(prepared):
    """A short CPU run beats leaving hidden values at zero, and its output is on the input layer's scale."""
    sv.pp.mask_dropouts(prepared, layer="total", random_state=0)
    sv.tl.impute(
        prepared,
        method="gnnimpute",
        layer="masked",
        counts_layer="masked_counts",
        max_epochs=150,
        lr=0.01,  # the published 1e-3 needs hundreds of epochs
        **{**SMALL, "output": "recon"},
    )
    raw = sv.tl.score_imputation(prepared, "masked", truth_layer="total")
    imp = sv.tl.score_imputation(prepared, "gnnimpute", truth_layer="total")
    assert imp["mse"] < 0.5 * raw["mse"]
    assert imp["pearson"] > 0.5
    # the reconstruction of observed entries is close to the input layer (not to counts, not to log1p)
    inp = _dense(prepared.layers["masked"])
    rec = prepared.layers["gnnimpute"]
    obs = inp > 0
    assert np.corrcoef(rec[obs], inp[obs])[0, 1] > 0.8
    ratio = rec[obs].sum() / inp[obs].sum()
    assert 0.6 < ratio < 1.2, ratio  # shrunk towards the gene means, as any MSE fit is
    per_cell = rec.sum(axis=1) / _dense(prepared.layers["total"]).sum(axis=1)
    # above 1: the reconstruction adds its predictions at the zeros (1.25 in float32, 1.33 in bf16 here); on the
    # log1p scale the ratio would be a small fraction, on the count scale the slope below would be ~1
    assert 0.8 < np.median(per_cell) < 1.5, np.median(per_cell)
    # on the count scale (layer × size factor) the per-cell ratio would grow with the size factor (slope 1)
    sf = size_factors(prepared.layers["masked_counts"])
    slope = np.polyfit(np.log(sf), np.log(per_cell), 1)[0]
    assert abs(slope) < 0.4, slope


def test_determinism_and_copy(snapshot, prepared):
    kw = {"method": "gnnimpute", "layer": "total", "max_epochs": 3, "copy": True, **SMALL}
    snap = snapshot(prepared)
    a = sv.tl.impute(prepared, random_state=1, **kw)
    b = sv.tl.impute(prepared, random_state=1, **kw)
    c = sv.tl.impute(prepared, random_state=2, **kw)
    assert isinstance(a, ad.AnnData) and a is not prepared
    np.testing.assert_array_equal(a.layers["gnnimpute"], b.layers["gnnimpute"])
    np.testing.assert_array_equal(a.obsm["X_gnnimpute"], b.obsm["X_gnnimpute"])
    np.testing.assert_array_equal(a.uns["gnnimpute"]["history"]["loss"], b.uns["gnnimpute"]["history"]["loss"])
    assert not np.array_equal(a.layers["gnnimpute"], c.layers["gnnimpute"])
    assert "gnnimpute" not in prepared.layers and "gnnimpute" not in prepared.uns, "copy=True leaves the input alone"
    assert "X_gnnimpute" not in prepared.obsm and "gnnimpute_connectivities" not in prepared.obsp
    snap.assert_unchanged(prepared)


def test_options_documented():
    opts = gnn_module.gnnimpute_options()
    assert opts == gnn_module.DEFAULTS and opts is not gnn_module.DEFAULTS
    doc = gnn_module.gnnimpute_options.__doc__
    for k in opts:
        assert f"``{k}``" in doc, k
    published = {"n_neighbors": 5, "n_pcs": 50, "weight_decay": 5e-4}
    published.update(hidden=512, latent=50, heads=3, dropout=0.5, split=(0.6, 0.2, 0.2))
    assert {k: opts[k] for k in published} == published
    # the training is faster than the published one (patience 200, lr 1e-3, float32), which the docstring names
    assert (opts["patience"], opts["lr"], opts["precision"]) == ("auto", 2e-3, "auto")
    assert (gnn_module.PATIENCE, gnn_module.PATIENCE_GRAPH_FILL) == (100, 50)
    assert 'patience=200, lr=1e-3, precision="32"' in doc
    assert gnn_module.MAX_EPOCHS == 3000


def test_graph_key_key_added_and_options(prepared):
    sv.pp.cell_graph(prepared, layer="total", n_neighbors=8, key_added="g")
    opts = {"precision": "bf16", "mask_rate": 0.0, "output": "recon", "split": (0.5, 0.3, 0.2), "heads": 2}
    sv.tl.impute(
        prepared, method="gnnimpute", layer="total", graph_key="g", key_added="imp", max_epochs=2, **{**SMALL, **opts}
    )
    assert "imp" in prepared.layers and "X_imp" in prepared.obsm and "imp" in prepared.uns
    out = prepared.layers["imp"]
    assert out.shape == prepared.shape and np.isfinite(out).all() and out.min() >= 0
    assert (prepared.obsp["imp_connectivities"] != prepared.obsp["g_connectivities"]).nnz == 0
    u = prepared.uns["imp"]
    assert u["graph"]["key"] == "g" and u["params"]["graph_key"] == "g"
    assert (u["params"]["n_train"], u["params"]["n_val"], u["params"]["n_test"]) == (350, 210, 140)
    assert "masked" not in u["history"], "mask_rate=0: no masked term"
    for k, v in opts.items():
        assert u["params"][k] == (list(v) if isinstance(v, tuple) else v)


def test_early_stopping_restores_best(prepared):
    sv.tl.impute(prepared, method="gnnimpute", layer="total", max_epochs=60, patience=2, lr=0.05, **SMALL)
    h = prepared.uns["gnnimpute"]["history"]
    assert bool(h["stopped_early"]) and len(h["val_loss"]) < 60
    assert int(h["stopped_epoch"]) - int(h["best_epoch"]) == 2
    assert int(h["best_epoch"]) == int(np.argmin(h["val_loss"]))


def test_warns_on_non_linear_layer(prepared, monkeypatch):
    sv.pp.normalize(prepared, method="log1p", key_added="log1p")
    messages = []
    monkeypatch.setattr(gnn_module.logg, "warning", lambda msg, **kw: messages.append(msg))
    sv.tl.impute(prepared, method="gnnimpute", layer="log1p", max_epochs=1, **SMALL)
    assert any("linear normalized counts" in m and "'log1p'" in m for m in messages)
    assert prepared.layers["gnnimpute"].shape == prepared.shape, "it still runs"
    messages.clear()
    sv.tl.impute(prepared, method="gnnimpute", layer="total", max_epochs=1, **SMALL)
    assert not messages


def test_split_cells():
    rng = np.random.default_rng(0)
    tr, va, te = gnn_module.split_cells(100, (0.6, 0.2, 0.2), rng)
    assert (tr.sum(), va.sum(), te.sum()) == (60, 20, 20)
    np.testing.assert_array_equal(tr.astype(int) + va + te, 1)
    tr2, _, _ = gnn_module.split_cells(100, (0.6, 0.2, 0.2), np.random.default_rng(0))
    np.testing.assert_array_equal(tr, tr2)
    tr, va, te = gnn_module.split_cells(10, (0.6, 0.2, 0.2), rng)
    assert (tr.sum(), va.sum(), te.sum()) == (6, 2, 2)


@pytest.mark.parametrize(
    ("mutate", "kwargs", "exc", "match"),
    [
        (lambda a: a.layers["total"].data.__setitem__(0, np.nan), {}, ValueError, "NaN"),
        (lambda a: a.layers.__setitem__("counts", a.layers["counts"] * 0.5), {}, ValueError, "non-integer"),
        (None, {"counts_layer": "total"}, ValueError, "non-integer"),
        (None, {"layer": "nope"}, ValueError, "no layer 'nope'"),
        (None, {"device": "cuda"}, ValueError, "CUDA"),
        (None, {"graph_key": "missing"}, ValueError, "No graph 'missing'"),
        (None, {"split": (0.8, 0.0, 0.2), "patience": 5}, ValueError, "0 validation"),
        (None, {"split": (1.0, 0.0, 0.0), "objective": "reconstruct"}, ValueError, "validation"),
        (sv.pp.normalize, {"objective": "molecules", "layer": "normalized"}, ValueError, "objective='molecules'"),
        (None, {"split": (0.6, 0.2, 0.3)}, ValueError, "sum to 1"),
        (None, {"split": (0.6, 0.4)}, ValueError, "three"),
        (None, {"n_neighbors": 700}, ValueError, "n_neighbors"),
        (None, {"n_neighbors": 1}, ValueError, "n_neighbors"),
        (None, {"mask_rate": 1.0}, ValueError, "mask_rate"),
        (None, {"dropout": -0.1}, ValueError, "dropout"),
        (None, {"lr": 0}, ValueError, "lr"),
        (None, {"patience": 0}, ValueError, "patience"),
        (None, {"patience": "long"}, ValueError, "patience"),
        (None, {"output": "dense"}, ValueError, "output"),
        (None, {"precision": "16"}, ValueError, "precision"),
        (None, {"alpha": 0.5}, TypeError, "Unknown option"),
    ],
)
def test_bad_input_leaves_adata_unchanged(snapshot, prepared, mutate, kwargs, exc, match):
    if mutate is not None:
        mutate(prepared)
    kwargs = {"method": "gnnimpute", "layer": "total", "max_epochs": 1, "progress_bar": False, **kwargs}
    snap = snapshot(prepared)
    with pytest.raises(exc, match=match):
        sv.tl.impute(prepared, **kwargs)
    snap.assert_unchanged(prepared)


@pytest.mark.parametrize(
    ("n_cells", "kwargs", "match"),
    [
        (9, {"patience": 5}, "at least 10 cells"),
        (10, {"n_neighbors": 10}, "n_neighbors"),
        (12, {"split": (0.95, 0.02, 0.03), "objective": "reconstruct"}, "0 validation"),
    ],
)
def test_too_few_cells(snapshot, prepared, n_cells, kwargs, match):
    small = prepared[:n_cells].copy()
    snap = snapshot(small)
    with pytest.raises(ValueError, match=match):
        sv.tl.impute(small, method="gnnimpute", layer="total", max_epochs=1, progress_bar=False, **kwargs)
    snap.assert_unchanged(small)


def test_graph_of_wrong_size_refused(snapshot, prepared, monkeypatch):
    """anndata keeps obsp aligned, so a mismatched graph can only come from elsewhere: the runner refuses it too."""
    inputs_module = importlib.import_module("scvgae_sc.tl._inputs")
    sv.pp.cell_graph(prepared, layer="total", n_neighbors=5, key_added="g")
    wrong = sparse.identity(prepared.n_obs - 1, format="csr", dtype=np.float32)
    monkeypatch.setattr(inputs_module, "graph_from_key", lambda adata, key: (wrong, {"key": key}))
    snap = snapshot(prepared)
    with pytest.raises(ValueError, match="699 × 699.*700 cells"):
        sv.tl.impute(prepared, method="gnnimpute", layer="total", graph_key="g", max_epochs=1, progress_bar=False)
    snap.assert_unchanged(prepared)


def test_interrupt_leaves_adata_untouched(snapshot, prepared, monkeypatch):
    from scvgae_sc.nn import Trainer

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    snap = snapshot(prepared)
    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="interrupted"):
        sv.tl.impute(prepared, method="gnnimpute", layer="total", max_epochs=2, progress_bar=False)
    snap.assert_unchanged(prepared)


def test_fill_gate_and_scale(prepared):
    """The gate only lowers fill values; a fitted scale is recorded and applied to the fill values only."""
    kw = {"layer": "total", "max_epochs": 3, "copy": True, "random_state": 1, "graph_fill": False, **SMALL}
    plain = sv.tl.impute(prepared, method="gnnimpute", fill_gate=0.0, **kw)
    gated = sv.tl.impute(prepared, method="gnnimpute", fill_gate=0.6, **kw)
    fitted = sv.tl.impute(prepared, method="gnnimpute", fill_gate=0.6, fill_scale="fit", **kw)
    inp = prepared.layers["total"].toarray()
    observed = inp > 0
    for out in (plain, gated, fitted):
        np.testing.assert_array_equal(out.layers["gnnimpute"][observed], inp[observed])
    assert gated.uns["gnnimpute"]["params"]["fill_scale_used"] == 1.0  # "auto": trained on the layer's scale
    p, g = plain.layers["gnnimpute"][~observed], gated.layers["gnnimpute"][~observed]
    assert (g <= p + 1e-5).all() and (g < p - 1e-5).any()
    scale = fitted.uns["gnnimpute"]["params"]["fill_scale_used"]
    assert scale > 0 and scale != 1.0
    np.testing.assert_allclose(fitted.layers["gnnimpute"][~observed], g * scale, rtol=1e-5, atol=1e-5)
    assert fitted.uns["gnnimpute"]["params"]["graph_weight_used"] == 0.0
    # graph_fill="auto" (the default) on a "total" layer: w_model · prediction + w_graph · mean detected value
    # over 3 steps of a walk on the symmetrized, unweighted kNN graph, gated over the same neighbourhood
    kw.pop("graph_fill")
    joint = sv.tl.impute(prepared, method="gnnimpute", fill_gate=0.6, **kw)
    params = joint.uns["gnnimpute"]["params"]
    w_model, w_graph = params["fill_scale_used"], params["graph_weight_used"]
    assert params["graph_fill_used"] and w_model >= 0 and w_graph > 0
    A = joint.obsp["gnnimpute_connectivities"].toarray()
    W = ((A + A.T + np.eye(prepared.n_obs)) > 0).astype(float)
    P = np.linalg.matrix_power(W / W.sum(1, keepdims=True), 3)
    rate = P @ observed
    mean = np.where(rate > 0, (P @ inp) / np.maximum(rate, 1e-300), 0.0)
    expected = (w_model * p + w_graph * mean[~observed]) * np.minimum(rate[~observed] / 0.6, 1.0)
    np.testing.assert_allclose(joint.layers["gnnimpute"][~observed], expected, rtol=1e-4, atol=1e-4)


def test_graph_fill_auto_only_on_linear_layers(prepared):
    """``graph_fill="auto"`` adds the graph's estimate on ``"total"`` layers only; it needs the masking to fit."""
    kw = {"max_epochs": 2, "copy": True, "random_state": 0, **SMALL}
    sqrt = sv.pp.normalize(prepared, method="sqrt", key_added="sq", copy=True)
    out = sv.tl.impute(sqrt, method="gnnimpute", layer="sq", **kw)  # warns: not linear counts
    assert out.uns["gnnimpute"]["params"]["graph_fill_used"] is False
    assert out.uns["gnnimpute"]["params"]["graph_weight_used"] == 0.0
    assert out.uns["gnnimpute"]["params"]["patience_used"] == gnn_module.PATIENCE
    out = sv.tl.impute(prepared, method="gnnimpute", layer="total", mask_rate=0.0, **kw)
    assert out.uns["gnnimpute"]["params"]["graph_fill_used"] is False
    assert out.uns["gnnimpute"]["params"]["patience_used"] == gnn_module.PATIENCE
    with pytest.raises(TypeError, match="graph_fill"):
        sv.tl.impute(prepared, method="gnnimpute", layer="total", graph_fill="yes", **kw)


def test_patience_auto_follows_the_graph_term(prepared, monkeypatch):
    """``patience="auto"``: the shorter patience where the fill has the graph term, and early stopping uses it."""
    kw = {"max_epochs": 40, "copy": True, "random_state": 0, "lr": 0.05, **SMALL}
    monkeypatch.setattr(gnn_module, "PATIENCE_GRAPH_FILL", 2)
    monkeypatch.setattr(gnn_module, "PATIENCE", 30)
    out = sv.tl.impute(prepared, method="gnnimpute", layer="total", **kw)
    params, hist = out.uns["gnnimpute"]["params"], out.uns["gnnimpute"]["history"]
    assert params["patience"] == "auto" and params["graph_fill_used"] and params["patience_used"] == 2
    # stopped 2 epochs after the best one, well before max_epochs
    assert len(hist["loss"]) < 40 and int(hist["stopped_epoch"]) - int(hist["best_epoch"]) == 2
    explicit = sv.tl.impute(prepared, method="gnnimpute", layer="total", patience=3, **kw)
    assert explicit.uns["gnnimpute"]["params"]["patience_used"] == 3


@pytest.mark.parametrize("bad", [{"fill_gate": 2.0}, {"fill_scale": "yes"}, {"fill_hops": 0}])
def test_fill_options_validated(snapshot, prepared, bad):
    snap = snapshot(prepared)
    with pytest.raises(ValueError, match=next(iter(bad))):
        sv.tl.impute(prepared, method="gnnimpute", layer="total", max_epochs=1, **SMALL, **bad)
    snap.assert_unchanged(prepared)


def test_neighbourhood_statistics_by_gene_blocks(monkeypatch):
    """``neighbourhood_at`` (gene blocks) gives the whole-matrix statistics at the requested entries."""
    import torch

    from scvgae_sc.tl._common import Neighbourhood, column_blocks, neighbourhood_at

    rng = np.random.default_rng(0)
    n, g = 40, 37
    A = sparse.random(n, n, density=0.1, random_state=1, format="csr", dtype=np.float32)
    values = torch.from_numpy((rng.random((n, g)) * (rng.random((n, g)) < 0.4)).astype(np.float32))
    visible = values > 0
    flat = torch.from_numpy(rng.choice(n * g, 200, replace=False))
    hood = Neighbourhood(A, torch.device("cpu"), 3, symmetric=True)
    rate, mean = hood(values, visible)
    blocks = column_blocks(n, g, elements=n * 5)
    assert len(blocks) == 3 and blocks[0] == slice(0, 16) and blocks[-1] == slice(32, 37)  # at least 16 columns
    import scvgae_sc.tl._common as common

    monkeypatch.setattr(common, "column_blocks", lambda r, c: column_blocks(r, c, elements=r * 16))
    rate_at, mean_at = neighbourhood_at(hood, values, visible, flat)
    no_mean = neighbourhood_at(hood, values, visible, flat, with_mean=False)
    np.testing.assert_allclose(rate_at, rate.reshape(-1)[flat], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mean_at, mean.reshape(-1)[flat], rtol=1e-6, atol=1e-7)
    assert no_mean[1] is None
    np.testing.assert_array_equal(no_mean[0], rate_at)


def test_fill_by_gene_blocks_matches(prepared, monkeypatch):
    """The fill computed over small blocks of genes is the one computed over the whole matrix."""
    import scvgae_sc.tl._common as common
    import scvgae_sc.tl._output as output_module

    kw = {"layer": "total", "max_epochs": 2, "copy": True, "random_state": 0, "fill_gate": 0.3, **SMALL}
    whole = sv.tl.impute(prepared, method="gnnimpute", **kw)
    original = common.column_blocks
    small = lambda r, c, elements=None: original(r, c, elements=r * 100)  # noqa: E731
    monkeypatch.setattr(common, "column_blocks", small)
    monkeypatch.setattr(output_module, "column_blocks", small)
    blocks = sv.tl.impute(prepared, method="gnnimpute", **kw)
    assert len(small(*prepared.shape)) > 5
    for k in ("fill_scale_used", "graph_weight_used"):
        assert blocks.uns["gnnimpute"]["params"][k] == pytest.approx(whole.uns["gnnimpute"]["params"][k], rel=1e-5)
    np.testing.assert_allclose(blocks.layers["gnnimpute"], whole.layers["gnnimpute"], rtol=1e-5, atol=1e-5)


def test_default_output_is_denoised(prepared):
    """The default writes every entry (zeros included), on the linear layer's scale, non-negative."""
    small = {k: v for k, v in SMALL.items() if k != "output"}
    sv.tl.impute(prepared, method="gnnimpute", layer="total", max_epochs=3, **small)
    assert prepared.uns["gnnimpute"]["params"]["output"] == "denoised"
    out, inp = prepared.layers["gnnimpute"], prepared.layers["total"].toarray()
    assert (out >= 0).all() and (out[inp == 0] > 0).mean() > 0.99
