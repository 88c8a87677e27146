"""scVGAE's ``objective="molecules"`` (training on molecule splits of the counts), the denoised default."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

import scvgae_sc as sv
from scvgae_sc.tl._models._plans import LayerMolecules
from scvgae_sc.tl._models._scvgae_samplers import BinomialCounts, scvgae_sampler

FAST = {"max_epochs": 3, "progress_bar": False, "random_state": 0, "hidden": 16, "decoder_hidden": 16}


@pytest.fixture
def counts():
    rng = np.random.default_rng(0)
    C = rng.poisson(rng.gamma(0.5, 2.0, size=(60, 40))).astype(np.float32)
    C[:, 0] = 0
    C[3] = 0  # a cell without molecules
    return C


@pytest.mark.parametrize("method", ["sqrt", "log1p", "total"])
@pytest.mark.parametrize("transform", ["none", "log1p"])
def test_all_molecules_normalize_as_the_layer(counts, method, transform):
    adata = ad.AnnData(X=sparse.csr_matrix(counts))
    sv.pp.normalize(adata, method=method, key_added="layer")
    layer = adata.layers["layer"]
    molecules = LayerMolecules.from_layer(layer, method, fraction=0.5, transform=transform)
    dense = layer.toarray() if sparse.issparse(layer) else np.asarray(layer)
    from_dense = LayerMolecules.from_layer(dense, method, fraction=0.5, transform=transform)
    assert from_dense.target == pytest.approx(molecules.target, rel=1e-6)
    expected = np.log1p(dense) if transform == "log1p" else dense
    C = torch.from_numpy(counts)
    flat = torch.nonzero(C.reshape(-1) > 0).squeeze(1)
    got = torch.zeros_like(C)
    got.view(-1)[flat] = molecules.normalize(C.reshape(-1)[flat].clone(), flat // C.shape[1], C.shape[0])
    got = got.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batching", ["full", "subgraph"])
def test_split_molecules_is_disjoint_and_fresh(counts, batching):
    graph = sparse.random(60, 60, density=0.1, random_state=0, format="csr") + sparse.eye(60, format="csr")
    sf = np.maximum(counts.sum(1) / np.median(counts.sum(1)), 1e-3).astype(np.float32)
    sampler = scvgae_sampler(
        batching, counts, graph, torch.device("cpu"), chunk=16, counts=counts, size_factors=sf, random_state=0
    )

    class Raw(LayerMolecules):  # the part as counts, to check the split itself
        def normalize(self, values, rows, n_cells):
            return values

    module = sv.nn.SCVGAE(40, 60, hidden=8, decoder_hidden=8, heads="linear")
    raw = Raw(0.5, "total", 1.0, "none")

    def dense(a):
        a = a.toarray() if sparse.issparse(a) else a
        return np.array(a.numpy() if isinstance(a, torch.Tensor) else a)

    x_in, held_out = (dense(a) for a in sampler.split_molecules(module, 0, raw))
    np.testing.assert_array_equal(x_in + held_out, counts)
    assert (x_in >= 0).all() and (held_out >= 0).all() and np.array_equal(held_out, np.round(held_out))
    assert 0.45 < held_out.sum() / counts.sum() < 0.55
    assert not np.array_equal(dense(sampler.split_molecules(module, 1, raw)[1]), held_out)


@pytest.fixture
def sqrt_layer(pbmc68k):
    sv.pp.filter(pbmc68k)
    sv.pp.normalize(pbmc68k, key_added="sqrt")
    return pbmc68k


def test_denoised_default_trains_on_molecules(sqrt_layer):
    sv.tl.impute(sqrt_layer, method="scvgae", layer="sqrt", **FAST)
    params = sqrt_layer.uns["scvgae"]["params"]
    assert params["objective_used"] == "molecules" and params["posterior_used"] is True
    assert params["mask_rate_used"] == 0 and len(sqrt_layer.uns["scvgae"]["history"]["loss"]) == 3
    Y = sqrt_layer.layers["scvgae"]
    assert np.isfinite(Y).all() and (Y >= 0).all()


def test_molecules_and_reconstruction_train_differently(sqrt_layer):
    sv.tl.impute(sqrt_layer, method="scvgae", layer="sqrt", key_added="mol", **FAST)
    sv.tl.impute(sqrt_layer, method="scvgae", layer="sqrt", objective="reconstruct", key_added="rec", **FAST)
    assert sqrt_layer.uns["rec"]["params"]["objective_used"] == "reconstruct"
    assert not np.allclose(sqrt_layer.layers["mol"], sqrt_layer.layers["rec"])


def test_masking_or_other_outputs_keep_the_reconstruction(sqrt_layer):
    sv.tl.impute(sqrt_layer, method="scvgae", layer="sqrt", mask_rate=0.1, key_added="masked", **FAST)
    sv.tl.impute(sqrt_layer, method="scvgae", layer="sqrt", output="recon", key_added="recon", **FAST)
    for key in ("masked", "recon"):
        assert sqrt_layer.uns[key]["params"]["objective_used"] == "reconstruct"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"zinb_target": "normalized"}, "zinb_target='normalized'"),
        ({"output": "fill"}, "mask_rate=0.1"),
    ],
)
def test_molecules_refused_where_it_cannot_run(sqrt_layer, options, reason):
    before = set(sqrt_layer.layers)
    with pytest.raises(ValueError, match="objective='molecules'") as err:
        sv.tl.impute(sqrt_layer, method="scvgae", layer="sqrt", objective="molecules", **options, **FAST)
    assert reason in str(err.value) and set(sqrt_layer.layers) == before


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_binomial_counts_draws_the_binomial(fraction):
    values = torch.tensor([0.0, 1.0, 2.0, 4.0, 5.0, 30.0]).repeat(50_000)
    thinning = BinomialCounts(values, fraction)
    gen = torch.Generator().manual_seed(0)
    kept = torch.empty(2, values.numel())
    kept[:, thinning.order] = torch.stack([thinning.draw(gen), thinning.draw(gen)])
    assert torch.equal(kept, kept.round()) and bool((kept >= 0).all()) and bool((kept <= values).all())
    by_count = kept.reshape(2, -1, 6)
    mean, var = by_count.mean(dim=(0, 1)), by_count[0].var(dim=0)
    counts = values[:6]
    torch.testing.assert_close(mean, counts * fraction, rtol=0.02, atol=0.01)
    torch.testing.assert_close(var, counts * fraction * (1 - fraction), rtol=0.05, atol=0.01)
    assert not torch.equal(kept[0], kept[1])
