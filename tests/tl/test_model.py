"""Saved models (``tl.impute(return_model=True)``, ``ImputationModel``) and the memory guard of ``tl.impute``."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

import scvgae_sc as sv
from scvgae_sc import _utils
from scvgae_sc.tl import ImputationModel

METHODS = {"scvgae": "normalized", "gnnimpute": "total"}


@pytest.fixture(scope="module")
def _trained(_pbmc68k_cached):
    """Each method trained once (2 epochs) on the filtered pbmc68k data, with its model."""
    adata = _pbmc68k_cached.copy()
    sv.pp.filter(adata)
    sv.pp.normalize(adata)
    sv.pp.normalize(adata, method="total", key_added="total")
    models = {
        m: sv.tl.impute(adata, method=m, layer=layer, max_epochs=2, progress_bar=False, return_model=True)
        for m, layer in METHODS.items()
    }
    return adata, models


@pytest.fixture
def trained(_trained):
    adata, models = _trained
    return adata.copy(), models


@pytest.mark.parametrize("method", METHODS)
def test_saved_model_reproduces_exactly(trained, method, tmp_path):
    adata, models = trained
    model = models[method]
    assert isinstance(model, ImputationModel) and model.method == method and model.layer == METHODS[method]
    assert (model.n_obs, model.n_vars) == adata.shape
    np.testing.assert_array_equal(model.predict(adata, device="cpu"), adata.layers[method])

    model.save(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert files == {"model.json", "weights.pt", "graph.npz", "history.npz"}
    config = json.loads((tmp_path / "model" / "model.json").read_text())
    assert config["method"] == method and config["package_version"] == sv.__version__
    assert config["var_names"] == list(adata.var_names) and len(config["obs_names"]) == adata.n_obs

    # a fresh AnnData read from disk, without the imputed layer: same matrix, bit for bit
    adata.write_h5ad(tmp_path / "data.h5ad")
    back = ad.read_h5ad(tmp_path / "data.h5ad")
    del back.layers[method]
    loaded = ImputationModel.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict(back, device="cpu"), adata.layers[method])

    out = loaded.impute(back, key_added="again", device="cpu", copy=True)
    assert "again" not in back.layers
    np.testing.assert_array_equal(out.layers["again"], adata.layers[method])
    np.testing.assert_array_equal(out.obsm["X_again"], adata.obsm[f"X_{method}"])
    assert (out.obsp["again_connectivities"] != adata.obsp[f"{method}_connectivities"]).nnz == 0
    u = out.uns["again"]
    assert u["params"]["method"] == method and u["params"]["layer"] == METHODS[method]
    np.testing.assert_array_equal(u["history"]["loss"], adata.uns[method]["history"]["loss"])
    assert u["from_model"] == sv.__version__ and u["device"] == "cpu"
    out.write_h5ad(tmp_path / "again.h5ad")  # everything it wrote is storable


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("scvgae", {"variational": True, "output": "recon", "graph": "kernel"}),
        ("scvgae", {"transform": "log1p", "batch_size": None, "heads": "linear"}),
        ("gnnimpute", {"output": "recon", "mask_rate": 0.0}),
    ],
)
def test_other_options_reproduce_exactly(trained, method, options, tmp_path):
    adata, _ = trained
    small = adata[:200].copy()
    model = sv.tl.impute(
        small, method=method, layer=METHODS[method], max_epochs=2, progress_bar=False, return_model=True, **options
    )
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(ImputationModel.load(tmp_path / "m").predict(small), small.layers[method])


def test_copy_returns_adata_and_model(trained):
    adata, _ = trained
    before = set(adata.layers)
    result = sv.tl.impute(adata, method="scvgae", max_epochs=1, progress_bar=False, return_model=True, copy=True)
    assert isinstance(result, tuple) and len(result) == 2
    new, model = result
    assert set(adata.layers) == before
    np.testing.assert_array_equal(model.predict(new), new.layers["scvgae"])
    assert sv.tl.impute(adata, method="scvgae", max_epochs=1, progress_bar=False, key_added="x") is None
    with pytest.raises(TypeError, match="return_model"):
        sv.tl.impute(adata, method="scvgae", max_epochs=1, return_model="yes")


def test_model_refuses_other_cells(trained, snapshot):
    adata, models = trained
    model = models["scvgae"]
    with pytest.raises(ValueError, match="trained on 700 cells"):
        model.predict(adata[:100].copy())
    renamed = adata.copy()
    renamed.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    with pytest.raises(ValueError, match="obs_names differ"):
        model.predict(renamed)
    shuffled = adata[:, ::-1].copy()
    with pytest.raises(ValueError, match="var_names differ"):
        model.predict(shuffled)
    no_layer = adata.copy()
    del no_layer.layers["normalized"]
    snap = snapshot(no_layer)
    with pytest.raises(ValueError, match="no layer 'normalized'"):
        model.impute(no_layer)
    snap.assert_unchanged(no_layer)
    with pytest.raises(ValueError, match="view"):
        model.impute(adata[:, :])


def test_save_refuses_and_overwrites(trained, tmp_path):
    _, models = trained
    model = models["gnnimpute"]
    target = tmp_path / "m"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        model.save(target)
    assert (target / "keep.txt").exists()
    model.save(target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "weights.pt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "no temporary folder left behind"
    with pytest.raises(ValueError, match="does not exist"):
        model.save(tmp_path / "missing" / "m")


def test_load_checks_format_and_version(trained, tmp_path):
    _, models = trained
    models["scvgae"].save(tmp_path / "m")
    config_file = tmp_path / "m" / "model.json"
    config = json.loads(config_file.read_text())

    config_file.write_text(json.dumps({**config, "package_version": "0.0.1"}))
    with pytest.warns(UserWarning, match="saved by scvgae-sc 0.0.1"):
        ImputationModel.load(tmp_path / "m")
    for newer in ("1.1", "2.0"):
        config_file.write_text(json.dumps({**config, "format_version": newer}))
        with pytest.raises(ValueError, match=f"format {newer}.*Upgrade"):
            ImputationModel.load(tmp_path / "m")
    config_file.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid"):
        ImputationModel.load(tmp_path / "m")
    with pytest.raises(ValueError, match="not a saved scvgae-sc model"):
        ImputationModel.load(tmp_path)


def test_memory_guard_refuses_with_the_figure(trained, snapshot, monkeypatch):
    adata, _ = trained
    snap = snapshot(adata)
    monkeypatch.setattr(_utils, "available_memory", lambda: 1e6)  # 1 MB available
    # batching="auto" falls back to subgraphs when full batch does not fit; refused with that estimate
    need = sv.tl.ImputationModel.registered("scvgae").memory(*adata.shape, batching="subgraph")
    with pytest.raises(ValueError, match=rf"needs about {need / 1e9:.2f} GB.*only 0.00 GB are available"):
        sv.tl.impute(adata, method="scvgae", max_epochs=1, progress_bar=False)
    snap.assert_unchanged(adata)
    with pytest.raises(ValueError, match="max_memory is 0.00 GB"):
        sv.tl.impute(adata, method="gnnimpute", layer="total", max_epochs=1, max_memory=1e3)
    snap.assert_unchanged(adata)
    with pytest.raises(ValueError, match="max_memory must be a positive"):
        sv.tl.impute(adata, method="scvgae", max_epochs=1, max_memory=-1)
    # an explicit max_memory overrides the estimate of what is available
    sv.tl.impute(adata, method="scvgae", max_epochs=1, progress_bar=False, max_memory=1e12)
    assert "scvgae" in adata.layers
    # unknown available memory: no check
    monkeypatch.setattr(_utils, "available_memory", lambda: None)
    sv.tl.impute(adata, method="scvgae", max_epochs=1, progress_bar=False, key_added="unchecked")


def test_available_memory_is_a_positive_number():
    avail = _utils.available_memory()
    assert avail is None or avail > 1e6


@pytest.mark.parametrize("method", METHODS)
def test_built_trained_and_applied_as_a_class(trained, method, tmp_path):
    """The class API (built from the AnnData and typed options, then trained) gives tl.impute's matrix."""
    adata, _ = trained
    cls = ImputationModel.registered(method)
    options = cls.options_class.from_kwargs(progress_bar=False)
    model = cls(adata, layer=METHODS[method], counts_layer="counts", options=options)
    assert not model.is_trained and model.adata is adata and model.options is options
    assert (model.n_obs, model.n_vars) == adata.shape and model.layer == METHODS[method]
    with pytest.raises(RuntimeError, match="not trained"):
        model.predict()
    with pytest.raises(RuntimeError, match="not trained"):
        model.save(tmp_path / "untrained")
    before = {k: v.copy() for k, v in adata.layers.items()}
    model.train(max_epochs=2, device="cpu")
    assert model.is_trained and set(adata.layers) == set(before)  # training writes nothing into adata
    # the same run as tl.impute's: the matrix it wrote, bit for bit, and the same parameters
    np.testing.assert_array_equal(model.predict(device="cpu"), adata.layers[method])
    np.testing.assert_array_equal(model.get_latent_representation(device="cpu"), adata.obsm[f"X_{method}"])
    assert model.params == adata.uns[method]["params"]
    model.save(tmp_path / "model")
    loaded = ImputationModel.load(tmp_path / "model")
    assert loaded.adata is None and loaded.is_trained
    with pytest.raises(ValueError, match="pass the AnnData"):
        loaded.predict()
    with pytest.raises(RuntimeError, match="cannot be trained again"):
        loaded.train()


def test_options_as_typed_groups_or_keywords(trained):
    adata, _ = trained
    cls = ImputationModel.registered("scvgae")
    typed = cls.options_class.from_kwargs(output="fill", fill_gate=0.2)
    by_keyword = cls(adata, options=typed, fill_gate=0.3).options  # keywords change the typed options
    assert by_keyword.as_dict()["fill_gate"] == 0.3 and by_keyword.as_dict()["output"] == "fill"
    assert cls(adata, output="fill", fill_gate=0.2).options == typed
    with pytest.raises(TypeError, match="SCVGAEOptions"):
        cls(adata, options=ImputationModel.registered("gnnimpute").options_class.from_kwargs())
    with pytest.raises(TypeError, match="Unknown option"):
        cls(adata, hiden=3)
    with pytest.raises(ValueError, match="no layer"):
        cls(adata, layer="missing")
    with pytest.raises(TypeError, match="base class"):
        ImputationModel(adata)
