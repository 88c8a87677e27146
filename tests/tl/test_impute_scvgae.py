from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import scvgae_sc as sv

EPOCHS = 5


@pytest.fixture
def prepared(pbmc68k):
    sv.pp.filter(pbmc68k)
    sv.pp.normalize(pbmc68k)
    return pbmc68k


def test_contract_keys_scale_and_h5ad(prepared, tmp_path):
    X_before = prepared.X.copy()
    sv.tl.impute(prepared, method="scvgae", max_epochs=EPOCHS, progress_bar=False, output="fill")
    out = prepared.layers["scvgae"]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == prepared.shape
    assert np.isfinite(out).all() and out.min() >= 0
    # same scale as the input layer: observed values kept (output="fill")
    inp = prepared.layers["normalized"].toarray()
    np.testing.assert_allclose(out[inp > 0], inp[inp > 0], rtol=1e-6)
    assert prepared.obsm["X_scvgae"].shape == (prepared.n_obs, 128)
    A = prepared.obsp["scvgae_connectivities"]
    assert A.shape == (prepared.n_obs, prepared.n_obs) and A.nnz > 0
    u = prepared.uns["scvgae"]
    assert {"params", "history", "graph", "device", "runtime_s", "version"} <= set(u)
    assert u["device"] == "cpu" and u["version"] == sv.__version__
    assert len(u["history"]["loss"]) == EPOCHS and {"recon", "zinb"} <= set(u["history"])
    assert u["params"]["random_state"] == 0 and u["params"]["method"] == "scvgae"
    assert (prepared.X != X_before).nnz == 0, "X untouched"
    path = tmp_path / "imputed.h5ad"
    prepared.write_h5ad(path)
    import anndata as ad

    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["scvgae"], out)
    np.testing.assert_array_equal(back.uns["scvgae"]["history"]["loss"], u["history"]["loss"])


def test_fill_output_is_on_the_input_scale(prepared):
    """output="fill": observed values kept; imputed zeros are values of the input layer's range."""
    sv.tl.impute(prepared, method="scvgae", max_epochs=20, progress_bar=False, output="fill")
    out, inp = prepared.layers["scvgae"], prepared.layers["normalized"].toarray()
    observed = inp > 0
    np.testing.assert_array_equal(out[observed], inp[observed])
    filled = out[~observed]
    assert filled.min() >= 0 and filled.max() <= 1.5 * inp.max()
    assert inp[observed].min() / 4 < np.median(filled) < inp[observed].max()


def test_recon_output_is_calibrated_to_the_input_scale(prepared):
    sv.tl.impute(prepared, method="scvgae", max_epochs=20, progress_bar=False, output="recon")
    out, inp = prepared.layers["scvgae"], prepared.layers["normalized"].toarray()
    assert out.min() >= 0
    assert np.corrcoef(out.mean(0), inp.mean(0))[0, 1] > 0.8
    assert 0.5 < out.mean() / inp.mean() < 2
    raw = sv.tl.impute(
        prepared, method="scvgae", max_epochs=20, progress_bar=False, output="recon", calibrate=False, copy=True
    )
    assert abs(raw.layers["scvgae"].mean() / inp.mean() - 1) > abs(out.mean() / inp.mean() - 1)


def test_determinism_under_random_state(prepared):
    a = sv.tl.impute(prepared, method="scvgae", max_epochs=3, random_state=1, copy=True, progress_bar=False)
    b = sv.tl.impute(prepared, method="scvgae", max_epochs=3, random_state=1, copy=True, progress_bar=False)
    c = sv.tl.impute(prepared, method="scvgae", max_epochs=3, random_state=2, copy=True, progress_bar=False)
    np.testing.assert_array_equal(a.layers["scvgae"], b.layers["scvgae"])
    assert not np.array_equal(a.layers["scvgae"], c.layers["scvgae"])
    assert "scvgae" not in prepared.layers, "copy=True leaves the input alone"


def test_graph_key_and_key_added(prepared):
    sv.pp.cell_graph(prepared, n_neighbors=10, key_added="g")
    sv.tl.impute(prepared, method="scvgae", graph_key="g", key_added="imp", max_epochs=2, progress_bar=False)
    assert "imp" in prepared.layers and "X_imp" in prepared.obsm
    assert (prepared.obsp["imp_connectivities"] != prepared.obsp["g_connectivities"]).nnz == 0
    assert prepared.uns["imp"]["graph"]["key"] == "g"


def _neighbourhood_by_hand(adata, key: str, X: np.ndarray, hops: int) -> tuple[np.ndarray, np.ndarray]:
    """Detection rate and mean detected value over ``hops`` steps of the graph the method stored, densely."""
    W = adata.obsp[f"{key}_connectivities"].toarray() + np.eye(adata.n_obs)
    P = np.linalg.matrix_power(W / W.sum(1, keepdims=True), hops)
    rate = P @ (X > 0)
    return rate, np.where(rate > 0, (P @ X) / np.maximum(rate, 1e-300), 0.0)


def test_fill_gate_and_scale(prepared):
    """The gate only lowers fill values where neighbours rarely detect the gene; fitted weights are recorded."""
    kw = {"max_epochs": 5, "progress_bar": False, "copy": True, "random_state": 3, "output": "fill"}
    plain = sv.tl.impute(prepared, method="scvgae", fill_gate=0.0, fill_scale="none", **kw)
    gated = sv.tl.impute(prepared, method="scvgae", fill_gate=0.5, fill_scale="none", **kw)
    fitted = sv.tl.impute(prepared, method="scvgae", fill_gate=0.5, fill_scale="fit", graph_fill=False, **kw)
    joint = sv.tl.impute(prepared, method="scvgae", fill_gate=0.5, fill_scale="fit", **kw)
    auto = sv.tl.impute(prepared, method="scvgae", fill_gate=0.5, **kw)  # sqrt layer: the model's own scale
    inp = prepared.layers["normalized"].toarray()
    observed = inp > 0
    assert plain.uns["scvgae"]["params"]["fill_scale_used"] == 1.0
    assert auto.uns["scvgae"]["params"]["fill_scale_used"] == 1.0
    assert auto.uns["scvgae"]["params"]["graph_weight_used"] == 0.0  # no fit, no graph weight
    np.testing.assert_array_equal(auto.layers["scvgae"], gated.layers["scvgae"])
    for out in (plain, gated, fitted, joint):
        np.testing.assert_array_equal(out.layers["scvgae"][observed], inp[observed])
    p, g = plain.layers["scvgae"][~observed], gated.layers["scvgae"][~observed]
    assert (g <= p + 1e-6).all() and (g < p - 1e-6).any()
    # the gate's rate is over fill_hops=2 graph steps: where it reaches 0.5 the fill is the full prediction
    rate, mean = _neighbourhood_by_hand(gated, "scvgae", inp, hops=2)
    full = rate[~observed] >= 0.5
    np.testing.assert_allclose(g[full], p[full], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g[~full], p[~full] * rate[~observed][~full] / 0.5, rtol=1e-4, atol=1e-6)
    scale = fitted.uns["scvgae"]["params"]["fill_scale_used"]
    assert scale > 0 and scale != 1.0 and fitted.uns["scvgae"]["params"]["graph_weight_used"] == 0.0
    np.testing.assert_allclose(fitted.layers["scvgae"][~observed], g * scale, rtol=1e-5, atol=1e-6)
    # graph_fill: a zero is w_model · prediction + w_graph · the 2-step neighbourhood mean, gated
    w_model, w_graph = (joint.uns["scvgae"]["params"][k] for k in ("fill_scale_used", "graph_weight_used"))
    assert w_model >= 0 and w_graph >= 0 and w_model + w_graph > 0
    expected = w_model * g + w_graph * (mean * np.minimum(rate / 0.5, 1.0))[~observed]
    np.testing.assert_allclose(joint.layers["scvgae"][~observed], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [{"fill_gate": 1.5}, {"fill_gate": -0.1}, {"fill_scale": "yes"}, {"fill_hops": 0}])
def test_fill_options_validated(prepared, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        sv.tl.impute(prepared, method="scvgae", max_epochs=1, progress_bar=False, **bad)
    with pytest.raises(TypeError, match="graph_fill"):
        sv.tl.impute(prepared, method="scvgae", max_epochs=1, progress_bar=False, graph_fill="yes")


@pytest.mark.parametrize(
    "options",
    [
        {"graph": "kernel"},
        {"variational": True, "decoder_input": "mean", "heads": "linear", "add_back": False, "output": "recon"},
        {"precision": "bf16", "mask_rate": 0.0},
    ],
)
def test_options_run(prepared, options):
    sv.tl.impute(prepared, method="scvgae", max_epochs=2, progress_bar=False, **options)
    out = prepared.layers["scvgae"]
    assert out.shape == prepared.shape and np.isfinite(out).all()
    for k, v in options.items():
        assert prepared.uns["scvgae"]["params"][k] == v


def test_short_run_lowers_masked_error(prepared):
    """A short CPU run recovers hidden values better than leaving them at zero."""
    sv.pp.normalize(prepared, method="total", key_added="total")
    sv.pp.mask_dropouts(prepared, layer="total", random_state=0)
    sv.tl.impute(
        prepared, method="scvgae", layer="masked", counts_layer="masked_counts", max_epochs=40, progress_bar=False
    )
    assert prepared.uns["scvgae"]["params"]["transform_used"] == "log1p"
    raw = sv.tl.score_imputation(prepared, "masked", truth_layer="total")
    imp = sv.tl.score_imputation(prepared, "scvgae", truth_layer="total")
    assert imp["mse"] < raw["mse"]
    assert imp["pearson"] > 0.3


def test_interrupt_leaves_adata_untouched(snapshot, prepared, monkeypatch):
    from scvgae_sc.nn import Trainer

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    snap = snapshot(prepared)
    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sv.tl.impute(prepared, method="scvgae", max_epochs=2, progress_bar=False)
    snap.assert_unchanged(prepared)


@pytest.mark.parametrize(
    ("mutate", "kwargs", "exc", "match"),
    [
        (lambda a: a.layers["normalized"].data.__setitem__(0, np.nan), {}, ValueError, "NaN"),
        (lambda a: a.layers.__setitem__("counts", a.layers["counts"] * 0.5), {}, ValueError, "non-integer"),
        (None, {"layer": "nope"}, ValueError, "no layer 'nope'"),
        (None, {"counts_layer": "normalized"}, ValueError, "non-integer"),
        (None, {"device": "cuda"}, ValueError, "CUDA"),
        (None, {"device": "tpu"}, ValueError, "device"),
        (None, {"method": "magic"}, ValueError, "method"),
        (None, {"max_epochs": 0}, ValueError, "max_epochs"),
        (None, {"n_neighbors": 5000}, ValueError, "too few"),
        (None, {"alpha": 2.0}, ValueError, "alpha"),
        (None, {"decoder": "big"}, TypeError, "Unknown option"),
        (None, {"graph_key": "missing"}, ValueError, "No graph 'missing'"),
    ],
)
def test_bad_input(snapshot, prepared, mutate, kwargs, exc, match):
    if mutate is not None:
        mutate(prepared)
    kwargs = {"method": "scvgae", "max_epochs": 1, "progress_bar": False, **kwargs}
    snap = snapshot(prepared)
    with pytest.raises(exc, match=match):
        sv.tl.impute(prepared, **kwargs)
    snap.assert_unchanged(prepared)


def test_graph_of_wrong_size_refused(prepared):
    prepared.obsp["g_connectivities"] = sparse.identity(prepared.n_obs, format="csr")
    prepared.uns["g"] = {"connectivities_key": "g_connectivities"}
    small = prepared[:100].copy()
    small.uns["g"] = {"connectivities_key": "other"}
    with pytest.raises(ValueError, match="No graph"):
        sv.tl.impute(small, method="scvgae", graph_key="g", max_epochs=1)


def test_too_few_cells(prepared):
    tiny = prepared[:10].copy()
    with pytest.raises(ValueError, match="too few"):
        sv.tl.impute(tiny, method="scvgae", max_epochs=1)


def test_view_and_type(prepared):
    with pytest.raises(ValueError, match="view"):
        sv.tl.impute(prepared[:100], method="scvgae", max_epochs=1)
    with pytest.raises(TypeError, match="AnnData"):
        sv.tl.impute(prepared.X, method="scvgae")


def test_default_output_is_denoised_with_its_training(prepared):
    """Default output="denoised": every entry estimated, on the input layer's range; "auto" training resolved."""
    sv.tl.impute(prepared, method="scvgae", max_epochs=5, progress_bar=False)
    p = prepared.uns["scvgae"]["params"]
    assert p["output"] == "denoised" and (p["alpha_used"], p["mask_rate_used"], p["lr_used"]) == (0.0, 0.0, 3e-3)
    out, inp = prepared.layers["scvgae"], prepared.layers["normalized"].toarray()
    assert (out[inp == 0] > 0).all() and out.max() <= 1.5 * inp.max()
    sv.tl.impute(prepared, method="scvgae", progress_bar=False, output="fill", max_epochs=2, key_added="fill")
    p = prepared.uns["fill"]["params"]
    assert (p["alpha_used"], p["mask_rate_used"], p["lr_used"], p["max_epochs_used"]) == (0.05, 0.1, 1e-3, 2)


def test_raw_counts_in_X_are_normalized_into_the_default_layer(pbmc68k, caplog):
    """No layers at all and counts in X: the default layer is made (and said), then imputed."""
    X_before = pbmc68k.X.copy()
    out = sv.tl.impute(pbmc68k, method="scvgae", max_epochs=2, progress_bar=False, copy=True)
    assert "normalized" not in pbmc68k.layers and "counts" not in pbmc68k.layers  # copy=True: input untouched
    assert {"normalized", "counts", "scvgae"} <= set(out.layers)
    assert out.uns["scvgae_sc"]["normalize"]["normalized"]["method"] == "sqrt"
    assert out.uns["scvgae_sc"]["normalize"]["normalized"]["by_impute"] is True
    assert (out.X != X_before).nnz == 0
    sv.tl.impute(pbmc68k, method="gnnimpute", max_epochs=2, progress_bar=False)
    assert pbmc68k.uns["scvgae_sc"]["normalize"]["normalized"]["method"] == "total"


def test_raw_counts_refusals(pbmc68k, snapshot):
    pbmc68k.X = pbmc68k.X.astype(np.float32) * 0.5  # not counts
    snap = snapshot(pbmc68k)
    with pytest.raises(ValueError, match="does not hold raw counts"):
        sv.tl.impute(pbmc68k, method="scvgae", max_epochs=2, progress_bar=False)
    snap.assert_unchanged(pbmc68k)
    with pytest.raises(ValueError, match="no layer .mine."):  # a layer named explicitly is never made
        sv.tl.impute(pbmc68k, method="scvgae", layer="mine", max_epochs=2, progress_bar=False)


def test_an_error_after_normalizing_leaves_adata_as_it_was(pbmc68k, snapshot):
    snap = snapshot(pbmc68k)
    with pytest.raises(ValueError):
        sv.tl.impute(pbmc68k, method="scvgae", max_epochs=2, progress_bar=False, graph_key="missing")
    snap.assert_unchanged(pbmc68k)


def test_default_normalization_lives_in_one_place(pbmc68k, monkeypatch):
    """tl.impute reads DEFAULT_NORMALIZATION (and its docstring says what it holds); a counts layer is used first."""
    from scvgae_sc._constants import DEFAULT_NORMALIZATION

    for method, norm in DEFAULT_NORMALIZATION.items():
        assert f'``pp.normalize(method="{norm}")`` for ``"{method}"``' in sv.tl.impute.__doc__
    monkeypatch.setitem(DEFAULT_NORMALIZATION, "scvgae", "log1p")
    pbmc68k.layers["counts"] = pbmc68k.X.copy()
    pbmc68k.X = np.log1p(pbmc68k.X.astype(np.float32))  # not counts: the counts layer is read instead
    X_before = pbmc68k.X.copy()
    sv.tl.impute(pbmc68k, method="scvgae", max_epochs=2, progress_bar=False)
    assert pbmc68k.uns["scvgae_sc"]["normalize"]["normalized"]["method"] == "log1p"
    assert (pbmc68k.X != X_before).nnz == 0


def test_undo_keeps_an_existing_counts_layer(pbmc68k, snapshot):
    pbmc68k.layers["counts"] = pbmc68k.X.copy()
    snap = snapshot(pbmc68k)
    with pytest.raises(ValueError):
        sv.tl.impute(pbmc68k, method="scvgae", max_epochs=2, progress_bar=False, graph_key="missing")
    snap.assert_unchanged(pbmc68k)
    pbmc68k.layers["counts"] = pbmc68k.layers["counts"].astype(np.float32) * 0.5  # not counts
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\] does not hold raw counts"):
        sv.tl.impute(pbmc68k, method="scvgae", max_epochs=2, progress_bar=False)
