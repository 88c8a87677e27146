"""Models saved by the package before the per-method classes (format 1.0) load and predict the same matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import scvgae_sc as sv

SAVED = Path(__file__).resolve().parents[1] / "data" / "saved_models"


@pytest.fixture(scope="module")
def adata():
    """The cells the saved models were trained on: the first 120 pbmc68k cells, filtered and normalized."""
    a = sv.datasets.pbmc68k()[:120].copy()
    sv.pp.filter(a)
    sv.pp.normalize(a)
    sv.pp.normalize(a, method="total", key_added="total")
    return a


@pytest.mark.parametrize("method", ["scvgae", "gnnimpute"])
def test_model_saved_before_loads_and_predicts_the_same(adata, method):
    model = sv.tl.ImputationModel.load(SAVED / f"{method}_model")
    assert isinstance(model, sv.tl.ImputationModel) and type(model) is sv.tl.ImputationModel.registered(method)
    assert model.method == method
    imputed = model.predict(adata, device="cpu")
    np.testing.assert_allclose(imputed, np.load(SAVED / f"{method}_imputed.npy"), rtol=1e-5, atol=1e-6)
    latent = model.get_latent_representation(adata, device="cpu")
    assert latent.shape == (adata.n_obs, {"scvgae": 8, "gnnimpute": 4}[method])  # the saved models' widths
    again = adata.copy()
    model.impute(again, device="cpu")
    np.testing.assert_array_equal(again.obsm[f"X_{method}"], latent)


def test_unreadable_model_is_refused_clearly(tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(SAVED / "scvgae_model", folder)
    config = (folder / "model.json").read_text().replace('"method": "scvgae"', '"method": "magic"')
    (folder / "model.json").write_text(config)
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        sv.tl.ImputationModel.load(folder)


def test_model_with_missing_settings_is_refused_clearly(tmp_path):
    import json
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(SAVED / "gnnimpute_model", folder)
    config = json.loads((folder / "model.json").read_text())
    del config["module_kwargs"]["n_genes"]
    (folder / "model.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        sv.tl.ImputationModel.load(folder)
