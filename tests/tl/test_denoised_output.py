"""``output="denoised"``: the expected-log mapping, every data path, saved models and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.stats import poisson

import scvgae_sc as sv
from scvgae_sc.tl._models import ImputationModel
from scvgae_sc.tl._output import denoise_scale, expected_log1p, finish_denoised
from scvgae_sc.tl._score_denoising import _Scale, _to_linear

FAST = {"max_epochs": 2, "progress_bar": False, "random_state": 0, "hidden": 16, "decoder_hidden": 32}
FAST_GNN = {"max_epochs": 3, "progress_bar": False, "random_state": 0, "hidden": 16, "latent": 8}


@pytest.mark.parametrize("lam", [0.0, 1e-4, 0.3, 0.999, 1.0, 4.9, 5.0, 12.0, 24.9, 25.0, 60.0, 400.0])
def test_expected_log1p_is_the_poisson_average(lam):
    y = np.arange(0, 4000)
    exact = float((poisson.pmf(y, lam) * np.log1p(y)).sum())
    assert expected_log1p(np.array([lam]))[0] == pytest.approx(exact, abs=1e-4)


def test_expected_log1p_lies_below_the_log_of_the_mean():
    lam = np.array([0.1, 1.0, 10.0])
    assert (expected_log1p(lam) < np.log1p(lam)).all()  # Jensen: the log of the mean overstates few molecules


def _counts(n=30, g=12, seed=0):
    rng = np.random.default_rng(seed)
    return sparse.csr_matrix(rng.poisson(rng.gamma(1.0, 2.0, (n, g)) * rng.uniform(0.5, 2, (n, 1))))


@pytest.mark.parametrize("kind", ["log1p", "total"])
def test_finish_denoised_on_median_library_layers(kind):
    mu = np.random.default_rng(1).gamma(1.0, 2.0, (30, 12)).astype(np.float32)
    out = mu.copy()
    finish_denoised(out, denoise_scale(_counts(), kind, source="counts"), chunk=7)
    expected = expected_log1p(mu) if kind == "log1p" else np.expm1(expected_log1p(mu))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_sqrt_layer_round_trips_through_the_scoring_map():
    """On a sqrt layer the value is placed so that score_denoising's inverse of that layer gives expm1 of the
    expected log1p of a count drawn at the cell's own library, back at the scoring library."""
    C = _counts()
    lib = np.asarray(C.sum(1)).ravel().astype(np.float64)
    log_lib = np.asarray(C.log1p().sum(1)).ravel()
    s = float(np.median(log_lib[log_lib > 0]))
    mu = np.random.default_rng(2).gamma(1.0, 2.0, C.shape).astype(np.float32)
    scale = denoise_scale(C, "sqrt", source="counts")
    V = mu.copy()
    finish_denoised(V, scale)
    t = 100.0
    P = _to_linear(V.astype(np.float64), _Scale("sqrt", s, "layer"), lib, log_lib, t)
    depth = lib / np.median(lib[lib > 0])
    np.testing.assert_allclose(P, np.expm1(expected_log1p(mu * depth[:, None])) * (t / lib)[:, None], rtol=1e-4)


def test_layer_source():
    """A fit of a total layer is a mean, mapped like expected counts; a fit of a log1p layer is kept."""
    C = _counts()
    mu = np.random.default_rng(3).gamma(1.0, 2.0, C.shape).astype(np.float32)
    from_counts, from_layer = mu.copy(), mu.copy()
    finish_denoised(from_counts, denoise_scale(C, "total", source="counts"))
    finish_denoised(from_layer, denoise_scale(C, "total", source="layer"))
    np.testing.assert_array_equal(from_layer, from_counts)
    kept = mu.copy()
    finish_denoised(kept, denoise_scale(C, "log1p", source="layer"))
    np.testing.assert_array_equal(kept, mu)


def test_unknown_layer_refused():
    with pytest.raises(ValueError, match="output='denoised' needs an input layer written by"):
        denoise_scale(_counts(), None, source="counts")


@pytest.fixture
def normalized(pbmc68k):
    sv.pp.normalize(pbmc68k)
    sv.pp.normalize(pbmc68k, method="log1p", key_added="log1p")
    return pbmc68k


@pytest.mark.parametrize("layer", ["normalized", "log1p"])
@pytest.mark.parametrize("batching", ["full", "subgraph"])
def test_scvgae_denoised_every_entry(normalized, layer, batching):
    sv.tl.impute(normalized, method="scvgae", layer=layer, output="denoised", batching=batching, **FAST)
    Y = normalized.layers["scvgae"]
    X = normalized.layers[layer]
    assert Y.shape == X.shape and np.isfinite(Y).all() and (Y >= 0).all()
    assert (Y[X.toarray() == 0] > 0).mean() > 0.99  # every entry is an estimate, zeros included
    assert normalized.uns["scvgae"]["params"]["output"] == "denoised"


def test_denoised_to_file_and_from_a_saved_model(normalized, tmp_path):
    path = tmp_path / "denoised.npy"
    model = sv.tl.impute(normalized, method="scvgae", output="denoised", filename=path, return_model=True, **FAST)
    assert model.denoised_source == "counts"
    model.save(tmp_path / "m")
    on_disk = np.load(path)
    np.testing.assert_array_equal(on_disk, np.asarray(normalized.layers["scvgae"]))
    model = ImputationModel.load(tmp_path / "m")
    np.testing.assert_allclose(model.predict(normalized), on_disk, rtol=1e-5, atol=1e-6)


def test_denoised_with_batch_key(normalized):
    normalized.obs["batch"] = np.where(np.arange(normalized.n_obs) % 2, "a", "b")
    sv.tl.impute(normalized, method="scvgae", output="denoised", batch_key="batch", **FAST)
    assert np.isfinite(normalized.layers["scvgae"]).all()


@pytest.mark.parametrize("batching", ["full", "subgraph"])
def test_gnnimpute_denoised(normalized, batching):
    sv.pp.normalize(normalized, method="total", key_added="total")
    sv.tl.impute(normalized, method="gnnimpute", layer="total", output="denoised", batching=batching, **FAST_GNN)
    Y = normalized.layers["gnnimpute"]
    assert np.isfinite(Y).all() and (Y >= 0).all()


def test_denoised_refused_on_a_layer_of_unknown_normalization(normalized, snapshot):
    normalized.layers["mine"] = normalized.layers["log1p"].copy()
    snap = snapshot(normalized)
    with pytest.raises(ValueError, match="needs an input layer written by scvgae_sc.pp.normalize"):
        sv.tl.impute(normalized, method="scvgae", layer="mine", output="denoised", **FAST)
    snap.assert_unchanged(normalized)


def test_denoised_beats_no_imputation_under_mcv(pbmc68k):
    """The yardstick itself: on held-out molecules the denoised layer scores better than its input."""
    sv.pp.filter(pbmc68k)
    sv.pp.split_counts(pbmc68k, random_state=0)
    sv.pp.normalize(pbmc68k, method="log1p", counts_layer="mcv_train", key_added="train_log1p")
    opts = {**FAST, "max_epochs": 30, "alpha": 0.0, "mask_rate": 0.0, "lr": 3e-3}
    sv.tl.impute(pbmc68k, method="scvgae", layer="train_log1p", counts_layer="mcv_train", output="denoised", **opts)
    none = sv.tl.score_denoising(pbmc68k, "mcv_train")["mcv"]
    denoised = sv.tl.score_denoising(pbmc68k, "scvgae")["mcv"]
    print(f"MCV: none {none:.4f}, denoised {denoised:.4f}")
    assert denoised < 0.8 * none


# ---------------------------------------------------------------------------------------------------------------
# the posterior given each cell's own counts (posterior=True)


def _posterior_by_quadrature(m, theta, pi, y, s):
    """E[λ | y] under π δ0 + (1 − π) Poisson(sλ), λ ~ Gamma(θ, θ / m), by numerical integration over λ."""
    from scipy.integrate import quad
    from scipy.stats import gamma

    def weight(lam):
        return gamma.pdf(lam, theta, scale=m / theta) * ((1 - pi) * poisson.pmf(y, s * lam) + (pi if y == 0 else 0.0))

    num = quad(lambda lam: lam * weight(lam), 0, np.inf, limit=200)[0]
    return num / quad(weight, 0, np.inf, limit=200)[0]


@pytest.mark.parametrize(
    ("m", "theta", "pi", "y", "s"),
    [(2.0, 1.5, 0.0, 3, 1.0), (0.5, 0.7, 0.0, 0, 2.0), (3.0, 4.0, 0.3, 0, 0.5), (1.0, 2.0, 0.6, 5, 1.3)],
)
def test_zinb_posterior_is_the_bayes_posterior_mean(m, theta, pi, y, s):
    import torch

    from scvgae_sc.tl._output import zinb_posterior

    def t(v):
        return torch.tensor([[float(v)]])

    logit = np.log(pi / (1 - pi)) if pi > 0 else -30.0
    got = zinb_posterior(t(m), t(theta), t(logit), t(y), torch.tensor([s])).item()
    assert got == pytest.approx(_posterior_by_quadrature(m, theta, pi, y, s), rel=1e-3)


def test_zinb_posterior_limits():
    import torch

    from scvgae_sc.tl._output import zinb_posterior

    m, y, s = torch.full((1, 3), 2.0), torch.tensor([[0.0, 4.0, 9.0]]), torch.tensor([1.5])
    no_dropout = torch.full((1, 3), -30.0)
    stiff = zinb_posterior(m, torch.full((1, 3), 1e6), no_dropout, y, s)  # no variation between cells: the prior
    torch.testing.assert_close(stiff, m, rtol=1e-3, atol=1e-3)
    loose = zinb_posterior(m, torch.full((1, 3), 1e-4), no_dropout, y, s)  # all variation: the cell's own counts
    torch.testing.assert_close(loose, y / s, rtol=1e-3, atol=1e-3)
    dropout = zinb_posterior(m, torch.full((1, 3), 2.0), torch.full((1, 3), 30.0), y, s)  # a zero is a dropout
    assert dropout[0, 0].item() == pytest.approx(2.0, rel=1e-4)


def test_posterior_option_changes_only_the_denoised_output(normalized):
    sv.tl.impute(normalized, method="scvgae", key_added="post", **FAST)
    sv.tl.impute(normalized, method="scvgae", key_added="prior", posterior=False, **FAST)
    post, prior = normalized.layers["post"], normalized.layers["prior"]
    assert normalized.uns["post"]["params"]["posterior_used"] is True
    assert normalized.uns["prior"]["params"]["posterior_used"] is False
    assert np.isfinite(post).all() and not np.allclose(post, prior)
    # the cell's own counts pull the estimate: it correlates better with the input than the prior does
    x = normalized.layers["normalized"].toarray().ravel()
    assert np.corrcoef(post.ravel(), x)[0, 1] > np.corrcoef(prior.ravel(), x)[0, 1]
    sv.tl.impute(normalized, method="scvgae", key_added="fill", output="fill", posterior=True, **FAST)
    assert normalized.uns["fill"]["params"]["posterior_used"] is False


@pytest.mark.parametrize("method", ["scvgae", "gnnimpute"])
@pytest.mark.parametrize("batching", ["full", "subgraph"])
def test_posterior_saved_model_needs_the_counts(normalized, tmp_path, batching, method):
    sv.pp.normalize(normalized, method="total", key_added="total")
    kw = {"layer": "total", **FAST_GNN} if method == "gnnimpute" else FAST
    model = sv.tl.impute(normalized, method=method, batching=batching, return_model=True, **kw)
    assert normalized.uns[method]["params"]["posterior_used"] is True
    model.save(tmp_path / "m")
    model = ImputationModel.load(tmp_path / "m")
    np.testing.assert_allclose(model.predict(normalized), normalized.layers[method], rtol=1e-4, atol=1e-5)
    del normalized.layers["counts"]
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\] \(the counts it was trained with\) is needed"):
        model.predict(normalized)


def test_posterior_lowers_the_mcv_loss(pbmc68k):
    """Combining the count model with the cell's own counts scores better on held-out molecules."""
    sv.pp.filter(pbmc68k)
    sv.pp.split_counts(pbmc68k, random_state=0)
    sv.pp.normalize(pbmc68k, counts_layer="mcv_train", key_added="train")
    opts = {**FAST, "max_epochs": 30, "layer": "train", "counts_layer": "mcv_train"}
    sv.tl.impute(pbmc68k, method="scvgae", key_added="post", **opts)
    sv.tl.impute(pbmc68k, method="scvgae", key_added="prior", posterior=False, **opts)
    post, prior = (sv.tl.score_denoising(pbmc68k, k)["mcv"] for k in ("post", "prior"))
    print(f"MCV: posterior {post:.4f}, prior {prior:.4f}")
    assert post < prior


def test_options_the_output_does_not_read_are_named(normalized, monkeypatch):
    import scvgae_sc.tl._impute as impute_module

    said = []
    monkeypatch.setattr(impute_module.logg, "warning", lambda msg, *a, **k: said.append(msg))
    sv.tl.impute(normalized, method="scvgae", fill_gate=0.2, calibrate=False, posterior=True, **FAST)
    assert len(said) == 1 and said[0].startswith("fill_gate, calibrate: not used with output='denoised'")
    said.clear()
    sv.tl.impute(normalized, method="scvgae", output="fill", fill_gate=0.2, posterior=False, **FAST)
    assert said == ["posterior: not used with output='fill' (see tl.scvgae_options()); ignored"]
    said.clear()
    sv.tl.impute(normalized, method="scvgae", output="recon", calibrate=False, **FAST)
    assert said == []
