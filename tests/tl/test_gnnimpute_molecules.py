"""GNNImpute's ``objective="molecules"`` (training on molecule splits) and its posterior, the denoised default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scvgae_sc as sv
from scvgae_sc.tl._models._gnnimpute_samplers import MoleculeSplit
from scvgae_sc.tl._output import NB_THETA_GRID, Evidence, nb_dispersion

FAST = {"max_epochs": 4, "progress_bar": False, "random_state": 0, "hidden": 16, "latent": 8}


@pytest.fixture
def total(pbmc68k):
    sv.pp.filter(pbmc68k)
    sv.pp.normalize(pbmc68k, method="total", key_added="total")
    return pbmc68k


def test_molecule_split_halves_the_counts():
    gen = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((40, 30), 3.0), generator=gen)
    counts[:, 0] = 0
    sf = counts.sum(1) / counts.sum(1).median()
    mean, std = torch.rand(30), torch.rand(30) + 0.5
    split = MoleculeSplit(counts, sf, mean, std, fraction=0.5, gen=gen)
    x_in, held_out, factors = split.draw()
    part = torch.expm1(x_in * std + mean) * sf.unsqueeze(1) * 0.5  # undo the input's normalization
    torch.testing.assert_close(part + held_out, counts, rtol=0, atol=1e-3)
    assert torch.all(held_out >= 0) and torch.all(held_out <= counts)
    assert torch.allclose(held_out, held_out.round()) and torch.all(held_out[:, 0] == 0)
    assert 0.45 < float(held_out.sum() / counts.sum()) < 0.55
    torch.testing.assert_close(factors, sf * 0.5)
    assert not torch.equal(split.draw()[1], held_out)  # a fresh split each call


def test_nb_dispersion_finds_the_simulated_dispersion():
    rng = np.random.default_rng(0)
    n, thetas = 3000, np.array([0.5, 2.0, 20.0])
    mean = rng.uniform(1, 5, size=(n, 3))
    sf = rng.uniform(0.5, 2.0, size=n)
    mu = mean * sf[:, None]
    counts = rng.negative_binomial(thetas, thetas / (thetas + mu)).astype(np.float32)
    evidence = Evidence(counts, sf)
    fitted = nb_dispersion(torch.from_numpy(mean.astype(np.float32)), evidence, chunk=700)
    assert fitted.dtype == np.float32 and set(fitted) <= set(NB_THETA_GRID.astype(np.float32))
    np.testing.assert_allclose(fitted, thetas, rtol=0.5)
    whole = nb_dispersion(torch.from_numpy(mean.astype(np.float32)), evidence, chunk=n)
    np.testing.assert_array_equal(fitted, whole)


def test_denoised_default_trains_on_molecules(total):
    sv.tl.impute(total, method="gnnimpute", layer="total", **FAST)
    params, hist = total.uns["gnnimpute"]["params"], total.uns["gnnimpute"]["history"]
    assert params["objective_used"] == "molecules" and params["posterior_used"] is True
    assert params.get("patience_used") is None and params["n_train"] == total.n_obs and params["n_val"] == 0
    assert len(hist["loss"]) == 4 and "val_loss" not in hist and "test_mse" not in hist
    Y = total.layers["gnnimpute"]
    assert np.isfinite(Y).all() and (Y >= 0).all()


def test_other_outputs_and_layers_keep_the_published_objective(total):
    sv.pp.normalize(total, key_added="sqrt")
    sv.tl.impute(total, method="gnnimpute", layer="total", output="fill", key_added="fill", **FAST)
    sv.tl.impute(total, method="gnnimpute", layer="sqrt", key_added="sqrt_out", **FAST)
    for key in ("fill", "sqrt_out"):
        params = total.uns[key]["params"]
        assert params["objective_used"] == "reconstruct" and params["posterior_used"] is False
        assert "val_loss" in total.uns[key]["history"]


def test_patience_brings_back_early_stopping(total):
    sv.tl.impute(total, method="gnnimpute", layer="total", patience=2, **{**FAST, "max_epochs": 30})
    params, hist = total.uns["gnnimpute"]["params"], total.uns["gnnimpute"]["history"]
    assert params["objective_used"] == "molecules" and params["patience_used"] == 2
    assert params["n_val"] > 0 and len(hist["val_loss"]) == len(hist["loss"])


def test_posterior_option(total):
    sv.tl.impute(total, method="gnnimpute", layer="total", key_added="post", **FAST)
    sv.tl.impute(total, method="gnnimpute", layer="total", key_added="prior", posterior=False, **FAST)
    assert total.uns["prior"]["params"]["posterior_used"] is False
    np.testing.assert_array_equal(total.obsm["X_post"], total.obsm["X_prior"])  # the same network
    assert not np.allclose(total.layers["post"], total.layers["prior"])


def test_subgraph_training_is_deterministic(total):
    kw = {**FAST, "batching": "subgraph", "batch_size": 128}
    sv.tl.impute(total, method="gnnimpute", layer="total", key_added="a", **kw)
    sv.tl.impute(total, method="gnnimpute", layer="total", key_added="b", **kw)
    np.testing.assert_array_equal(total.layers["a"], total.layers["b"])
    assert total.uns["a"]["params"]["objective_used"] == "molecules"


def test_molecules_beat_reconstruction_under_mcv(pbmc68k):
    """Trained on molecule splits, the denoised output scores far better on held-out molecules."""
    sv.pp.filter(pbmc68k)
    sv.pp.split_counts(pbmc68k, random_state=0)
    sv.pp.normalize(pbmc68k, method="total", counts_layer="mcv_train", key_added="train")
    opts = {"max_epochs": 30, "progress_bar": False, "random_state": 0, "layer": "train", "counts_layer": "mcv_train"}
    sv.tl.impute(pbmc68k, method="gnnimpute", key_added="molecules", **opts)
    sv.tl.impute(pbmc68k, method="gnnimpute", key_added="prior", posterior=False, **opts)
    sv.tl.impute(pbmc68k, method="gnnimpute", key_added="reconstruct", objective="reconstruct", **opts)
    scores = {k: sv.tl.score_denoising(pbmc68k, k)["mcv"] for k in ("molecules", "prior", "reconstruct", "train")}
    print("MCV:", {k: round(v, 4) for k, v in scores.items()})
    assert scores["molecules"] < scores["prior"] < scores["reconstruct"]
    assert scores["molecules"] < 0.8 * scores["train"]
