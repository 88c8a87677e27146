"""Subgraph mini-batch training and chunked prediction of scVGAE (``batching="subgraph"``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from torch_geometric.nn.conv.gcn_conv import gcn_norm

import scvgae_sc as sv
from scvgae_sc.nn import SCVGAE
from scvgae_sc.tl._common import edge_tensors
from scvgae_sc.tl._models._scvgae import predict_scvgae
from scvgae_sc.tl._models._scvgae_samplers import CellSubgraphSampler, WholeGraphSampler
from scvgae_sc.tl._subgraph import SubgraphSampler, gcn_adjacency

EPOCHS = 3


def _graph(n: int, seed: int = 0) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    A = sparse.random(n, n, density=0.15, random_state=rng, format="csr", dtype=np.float32)
    A = A.maximum(A.T).tocsr()
    A.setdiag(np.where(rng.random(n) < 0.3, 0.5, 0.0))  # some existing self loops, as a graph may have
    A.eliminate_zeros()
    return A


def test_gcn_adjacency_matches_pyg_gcn_norm():
    A = _graph(40)
    ei, ew = edge_tensors(A, torch.device("cpu"))
    ei, ew = gcn_norm(ei, ew, 40, add_self_loops=True)
    dense = torch.zeros(40, 40)
    dense[ei[1], ei[0]] = ew  # row = target
    np.testing.assert_allclose(gcn_adjacency(A).toarray(), dense.numpy(), rtol=1e-5, atol=1e-7)


def test_neighbourhood_is_exact_for_the_batch():
    P = gcn_adjacency(_graph(60, seed=1))
    sampler = SubgraphSampler(P)
    Z = np.random.default_rng(2).normal(size=(60, 7)).astype(np.float32)
    rows = np.array([5, 17, 3, 42])
    nodes, P_local = sampler.neighbourhood(rows, "cpu")
    np.testing.assert_array_equal(nodes[:4], rows)
    assert len(np.unique(nodes)) == len(nodes)
    got = torch.sparse.mm(P_local, torch.from_numpy(Z[nodes])).numpy()
    np.testing.assert_allclose(got, (P @ Z)[rows], rtol=1e-5, atol=1e-6)
    # the buffer is left clean for the next batch
    assert (sampler._position == -1).all()
    np.testing.assert_allclose(sampler.propagate(rows, Z), (P @ Z)[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("output", "graph_fill"), [("fill", {}), ("fill", {"fill_hops": 2, "graph_weight": 0.7}), ("recon", {})]
)
def test_chunked_subgraph_prediction_equals_full_graph_prediction(output, graph_fill):
    """Prediction from sparse rows of the graph, chunk by chunk, is the full-graph computation."""
    n, g = 90, 25
    rng = np.random.default_rng(3)
    x = (rng.random((n, g)) < 0.4) * rng.gamma(2.0, 1.0, size=(n, g)).astype(np.float32)
    x = x.astype(np.float32)
    A = _graph(n, seed=4)
    torch.manual_seed(0)
    model = SCVGAE(g, n, hidden=8, decoder_hidden=16, decoder_input="latent")
    kw = {"output": output, "calibrate": True, "transform": "log1p", "fill_gate": 0.4, "fill_scale": 1.3, **graph_fill}
    full, z_full = predict_scvgae(model, WholeGraphSampler(torch.from_numpy(x), A, chunk=32), **kw)
    sub, z_sub = predict_scvgae(model, CellSubgraphSampler(x, A, device="cpu", chunk=32), **kw)
    np.testing.assert_allclose(z_sub, z_full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sub, full, rtol=1e-4, atol=1e-4)


@pytest.fixture
def masked(pbmc68k):
    sv.pp.filter(pbmc68k)
    sv.pp.normalize(pbmc68k, method="total", key_added="total")
    sv.pp.mask_dropouts(pbmc68k, layer="total")
    return pbmc68k


def _impute(adata, **kw):
    kw = {"max_epochs": EPOCHS, "progress_bar": False, "batch_size": 128, "output": "fill", **kw}
    sv.tl.impute(adata, method="scvgae", layer="masked", counts_layer="masked_counts", **kw)


def test_subgraph_training_contract_determinism_and_recovery(masked):
    _impute(masked, batching="subgraph", key_added="a", max_epochs=15)
    _impute(masked, batching="subgraph", key_added="b", max_epochs=15)
    out = masked.layers["a"]
    assert out.shape == masked.shape and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out, masked.layers["b"])  # same seed, same result on CPU
    params = masked.uns["a"]["params"]
    assert params["batching_used"] == "subgraph" and params["batching"] == "subgraph"
    assert len(masked.uns["a"]["history"]["loss"]) == 15
    assert {"recon", "zinb", "masked"} <= set(masked.uns["a"]["history"])
    # observed values are kept; hidden ones are recovered better than by the zeros of the masked layer
    inp = masked.layers["masked"].toarray()
    np.testing.assert_allclose(out[inp > 0], inp[inp > 0], rtol=1e-6)  # expm1(log1p(x)) in float32
    imputed = sv.tl.score_imputation(masked, "a", truth_layer="total")
    unimputed = sv.tl.score_imputation(masked, "masked", truth_layer="total")
    assert imputed["mse"] < 0.8 * unimputed["mse"]
    assert imputed["pearson"] > 0.5


def test_auto_batching_follows_the_memory_budget(masked, tmp_path):
    import scanpy as sc

    from scvgae_sc.tl._models import SCVGAEModel

    DENSE_COPIES = {"scvgae": SCVGAEModel.dense_copies}
    DENSE_COPIES_SUBGRAPH = {"scvgae": SCVGAEModel.dense_copies_subgraph}

    size = masked.n_obs * masked.n_vars * 4
    old = sc.settings.verbosity
    sc.settings.verbosity = "info"
    try:
        _impute(masked, key_added="small", max_memory=(DENSE_COPIES_SUBGRAPH["scvgae"] + 1) * size)
        _impute(masked, key_added="big", max_memory=(DENSE_COPIES["scvgae"] + 1) * size)
    finally:
        sc.settings.verbosity = old
    assert masked.uns["small"]["params"]["batching_used"] == "subgraph"
    assert masked.uns["big"]["params"]["batching_used"] == "full"
    budget = (DENSE_COPIES_SUBGRAPH["scvgae"] - 0.5) * size
    with pytest.raises(ValueError, match="GB of memory.*Or pass filename="):
        _impute(masked, key_added="none", max_memory=budget)
    assert "none" not in masked.layers
    # the result on disk saves one dense copy: the same budget then suffices
    _impute(masked, key_added="on_disk", max_memory=budget, filename=tmp_path / "x.npy")
    assert masked.uns["on_disk"]["params"]["batching_used"] == "subgraph"


def test_variational_needs_full_batching(masked):
    with pytest.raises(ValueError, match="variational=True"):
        _impute(masked, batching="subgraph", variational=True)


def test_filename_writes_the_result_to_disk(masked, tmp_path):
    path = tmp_path / "imputed.npy"
    _impute(masked, batching="subgraph", key_added="disk", filename=path)
    _impute(masked, batching="subgraph", key_added="memory")
    on_disk = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(on_disk, masked.layers["memory"])
    np.testing.assert_array_equal(masked.layers["disk"], masked.layers["memory"])
    assert masked.uns["disk"]["params"]["filename"] == str(path)
    back = tmp_path / "a.h5ad"
    masked.write_h5ad(back)  # an array mapped from the file is written like any other
    with pytest.raises(ValueError, match="exists"):
        _impute(masked, key_added="again", filename=path)
    assert "again" not in masked.layers
    # the full-batch path writes its result to the file too
    path2 = tmp_path / "full.npy"
    _impute(masked, batching="full", key_added="full_disk", filename=path2)
    np.testing.assert_array_equal(np.load(path2), masked.layers["full_disk"])


def test_saved_subgraph_model_reproduces_its_output(masked, tmp_path):
    model = sv.tl.impute(
        masked,
        method="scvgae",
        layer="masked",
        counts_layer="masked_counts",
        max_epochs=EPOCHS,
        progress_bar=False,
        batching="subgraph",
        batch_size=128,
        return_model=True,
    )
    model.save(tmp_path / "m")
    again = sv.tl.ImputationModel.load(tmp_path / "m").predict(masked)
    np.testing.assert_array_equal(again, masked.layers["scvgae"])


def test_gnnimpute_subgraph_training(masked):
    """GNNImpute on subgraphs: deterministic, recovers hidden values, chosen by ``auto`` when memory is short."""
    from scvgae_sc.tl._models import GNNImputeModel

    DENSE_COPIES_SUBGRAPH = {"gnnimpute": GNNImputeModel.dense_copies_subgraph}

    kw = {"method": "gnnimpute", "layer": "masked", "counts_layer": "masked_counts", "progress_bar": False}
    kw.update(max_epochs=12, batch_size=128, objective="reconstruct")
    size = masked.n_obs * masked.n_vars * 4
    sv.tl.impute(masked, key_added="g1", max_memory=(DENSE_COPIES_SUBGRAPH["gnnimpute"] + 1) * size, **kw)
    sv.tl.impute(masked, key_added="g2", batching="subgraph", **kw)
    assert masked.uns["g1"]["params"]["batching_used"] == "subgraph"
    np.testing.assert_array_equal(masked.layers["g1"], masked.layers["g2"])
    hist = masked.uns["g1"]["history"]
    assert len(hist["loss"]) == 12 and len(hist["val_loss"]) == 12 and "masked" in hist
    assert hist["val_loss"][-1] < hist["val_loss"][0]
    imputed = sv.tl.score_imputation(masked, "g1", truth_layer="total")
    unimputed = sv.tl.score_imputation(masked, "masked", truth_layer="total")
    assert imputed["mse"] < 0.8 * unimputed["mse"]


def test_gnnimpute_chunked_forward_equals_the_whole_graph_forward():
    from scvgae_sc.nn import GNNImputeModule
    from scvgae_sc.tl._models._gnnimpute_samplers import forward_chunked

    n, g = 70, 20
    A = _graph(n, seed=5)
    torch.manual_seed(0)
    model = GNNImputeModule(g, hidden=16, latent=4, heads=2).eval()
    x = torch.randn(n, g)
    sf = torch.rand(n) + 0.5
    ei, _ = edge_tensors(A, torch.device("cpu"))
    with torch.no_grad():
        full = model(x, ei, sf)
        chunked = forward_chunked(model, x, A, sf, chunk=16)
    np.testing.assert_allclose(chunked["z"].numpy(), full["z"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked["recon"].numpy(), full["recon"].numpy(), rtol=1e-5, atol=1e-5)
