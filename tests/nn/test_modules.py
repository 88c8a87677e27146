from __future__ import annotations

import itertools

import pytest
import torch
from torch_geometric.nn import GCNConv

from scvgae_sc.nn import SCVGAE, GNNImputeModule, scvgae_loss

N_CELLS, N_GENES = 50, 30


def random_knn_graph(n: int, k: int = 5, *, seed: int = 0, self_loops: bool = False):
    """A symmetric kNN graph on random points: (edge_index, edge_weight)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, 4, generator=g)
    dist = torch.cdist(pts, pts)
    dist.fill_diagonal_(float("inf"))
    nbrs = dist.topk(k, largest=False).indices
    src = torch.arange(n).repeat_interleave(k)
    dst = nbrs.reshape(-1)
    ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    if self_loops:
        ei = torch.cat([ei, torch.arange(n).repeat(2, 1)], dim=1)
    ei = torch.unique(ei, dim=1)
    ew = torch.rand(ei.shape[1], generator=g) + 0.5
    return ei, ew


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    counts = torch.poisson(torch.rand(N_CELLS, N_GENES, generator=g) * 4)
    sf = counts.sum(1) / counts.sum(1).median()
    x = torch.sqrt(torch.log1p(counts))
    ei, ew = random_knn_graph(N_CELLS)
    return x, counts, sf, ei, ew


def small_scvgae(**kw):
    kw.setdefault("hidden", 16)
    kw.setdefault("decoder_hidden", 32)
    return SCVGAE(N_GENES, N_CELLS, **kw)


COMBOS = list(itertools.product([False, True], ["mean", "latent"], [True, False], ["gcn", "linear"]))


@pytest.mark.parametrize(("variational", "decoder_input", "add_back", "heads"), COMBOS)
def test_scvgae_shapes(data, variational, decoder_input, add_back, heads):
    x, counts, sf, ei, ew = data
    torch.manual_seed(0)
    model = small_scvgae(variational=variational, decoder_input=decoder_input, add_back=add_back, heads=heads)
    out = model(x, ei, ew)
    assert out["recon"].shape == out["mean"].shape == out["pi_logits"].shape == out["theta"].shape == x.shape
    assert out["z"].shape == (N_CELLS, 16)
    assert (out["mean"] > 0).all() and (out["theta"] > 0).all()
    assert ("kl" in out) == variational
    if variational:
        assert out["kl"].shape == (N_CELLS,) and (out["kl"] >= 0).all()
    if not add_back:
        assert (out["recon"] >= 0).all()  # ReLU output
    losses = scvgae_loss(out, x, counts, sf)
    assert set(losses) == {"loss", "recon", "zinb"} | ({"kl"} if variational else set())
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())


def test_scvgae_variational_eval_uses_mean(data):
    x, _, _, ei, ew = data
    model = small_scvgae(variational=True, n_latent=8).eval()
    out = model(x, ei, ew)
    assert out["z"].shape == (N_CELLS, 8)
    assert torch.equal(out["z"], out["z_mu"])
    torch.testing.assert_close(model(x, ei, ew)["recon"], out["recon"])  # eval is deterministic


def test_gcn_heads_equal_gcnconv(data):
    """One propagation then linear maps == a GCNConv per head (Â (Z W) + b = (Â Z) W + b)."""
    x, _, _, ei, ew = data
    model = small_scvgae(heads="gcn", add_back=False).eval()
    out = model(x, ei, ew)
    conv = GCNConv(16, N_GENES, add_self_loops=True, normalize=True)
    with torch.no_grad():
        conv.lin.weight.copy_(model.zinb_heads.weight[:N_GENES])
        conv.bias.copy_(model.zinb_heads.bias[:N_GENES])
        log_mean = conv(out["z"], ei, ew)
    torch.testing.assert_close(torch.log(out["mean"]), log_mean, rtol=1e-4, atol=1e-5)
    # and the encoder is GCNConv's normalization with the edge weights
    enc = GCNConv(N_GENES, 16)
    with torch.no_grad():
        enc.lin.weight.copy_(model.gcn.lin.weight)
        enc.bias.copy_(model.gcn.bias)
        torch.testing.assert_close(model.gcn(x, *model.normalize_graph(ei, ew, N_CELLS)), enc(x, ei, ew))
    # edge weights matter
    assert not torch.allclose(model(x, ei)["mean"], out["mean"])


@pytest.mark.parametrize("variational", [False, True])
def test_sparse_product_matches_edge_propagation(data, variational):
    """The CSR sparse product (CPU / CUDA) is the same function, with the same gradients, as PyG's edge sums."""
    x, _, _, ei, ew = data
    torch.manual_seed(0)
    model = small_scvgae(heads="gcn", variational=variational).eval()
    graph = model.graph_operator(ei, ew, N_CELLS)
    assert graph.layout == torch.sparse_csr
    pair = model.normalize_graph(ei, ew, N_CELLS)

    def run(g, autocast):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # the forward, as the Trainer does
            z = model.encode_graph(x, g)["z"]
            h = model.propagate_graph(z, g)
            loss = h.float().pow(2).sum() + z.float().sum()
        loss.backward()
        return h.float().detach(), model.gcn.lin.weight.grad.clone()

    exact = run(pair, False)
    for a, b in zip(run(graph, False), exact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # a directed graph: row i of the sparse matrix aggregates from the sources of edges into i (PyG's direction)
    keep = ei[0] < ei[1]
    directed = model.graph_operator(ei[:, keep], ew[keep], N_CELLS)
    model.reset_cache()
    h = torch.randn(N_CELLS, 3)
    edge_sum = model.propagate_graph(h, model.normalize_graph(ei[:, keep], ew[keep], N_CELLS))
    torch.testing.assert_close(model.propagate_graph(h, directed), edge_sum, rtol=1e-5, atol=1e-6)
    # under bf16 autocast the product itself stays float32 (sparse kernels have none in bf16); the output is close
    # to float32's, and the gradients (which bf16 moves by 5-25 % in this tiny model, on either path) to PyG's
    (h16, grad16), (_, grad16_edges) = run(graph, True), run(pair, True)
    assert h16.dtype == torch.float32
    assert float((h16 - exact[0]).norm() / exact[0].norm()) < 0.02
    assert float((grad16 - grad16_edges).norm() / grad16_edges.norm()) < 0.02


def test_cell_index_minibatch(data):
    x, counts, sf, ei, ew = data
    model = small_scvgae()
    with torch.no_grad():
        model.cell_scale.weight.copy_(torch.arange(N_CELLS, dtype=torch.float32)[:, None] + 1)
        model.cell_shift.weight.copy_(torch.arange(N_CELLS, dtype=torch.float32)[:, None])
    model.eval()
    idx = torch.tensor([3, 7, 11, 20, 21, 40])
    # subgraph on idx, relabelled
    keep = torch.isin(ei[0], idx) & torch.isin(ei[1], idx)
    relabel = torch.full((N_CELLS,), -1)
    relabel[idx] = torch.arange(len(idx))
    sub_ei = relabel[ei[:, keep]]
    out = model(x[idx], sub_ei, ew[keep], cell_index=idx)
    assert out["recon"].shape == (len(idx), N_GENES)
    # the per-cell term of a row depends only on that row and its own scale/shift (gene-wise term off)
    with torch.no_grad():
        model.gene_norm.weight.zero_()
    term = model._add_back(torch.zeros(len(idx), N_GENES), x[idx], idx)
    full = model._add_back(torch.zeros(N_CELLS, N_GENES), x, None)
    torch.testing.assert_close(term, full[idx])
    row = x[idx[2]]
    expected = (row - row.mean()) / torch.sqrt(row.var(unbiased=False) + 1e-5) * (idx[2] + 1) + idx[2]
    torch.testing.assert_close(term[2], expected)
    # without cell_index a subset is refused
    with pytest.raises(ValueError, match="cell_index"):
        model(x[idx], sub_ei, ew[keep])
    losses = scvgae_loss(out, x[idx], counts[idx], sf[idx])
    assert torch.isfinite(losses["loss"])


def test_add_back_needs_n_cells():
    with pytest.raises(ValueError, match="n_cells"):
        SCVGAE(N_GENES)
    SCVGAE(N_GENES, add_back=False)
    with pytest.raises(ValueError, match="decoder_input"):
        SCVGAE(N_GENES, N_CELLS, decoder_input="z")
    with pytest.raises(ValueError, match="heads"):
        SCVGAE(N_GENES, N_CELLS, heads="gat")


@pytest.mark.parametrize(("variational", "decoder_input"), [(False, "mean"), (True, "latent")])
def test_scvgae_gradients_reach_every_parameter(data, variational, decoder_input):
    x, counts, sf, ei, ew = data
    torch.manual_seed(0)
    model = small_scvgae(variational=variational, decoder_input=decoder_input)
    out = model(x, ei, ew)
    scvgae_loss(out, x, counts, sf, alpha=0.5)["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_scvgae_loss_options(data):
    x, counts, sf, ei, ew = data
    model = small_scvgae(variational=True)
    out = model(x, ei, ew)
    full = scvgae_loss(out, x, counts, sf, alpha=0.3, kl_weight=0.5)
    expected = 0.3 * full["recon"] + 0.7 * full["zinb"] + 0.5 * full["kl"]
    torch.testing.assert_close(full["loss"], expected)
    torch.testing.assert_close(full["recon"], torch.mean((out["recon"] - x) ** 2))
    torch.testing.assert_close(full["kl"], out["kl"].mean() / N_GENES)
    # ZINB on counts with the size factors scaling the mean
    from scvgae_sc.nn import zinb_nll

    torch.testing.assert_close(
        full["zinb"], zinb_nll(counts, out["mean"] * sf[:, None], out["theta"], out["pi_logits"])
    )
    # ablations: a weight of 0 skips the term (and counts are then not needed)
    only_recon = scvgae_loss(out, x, None, None, alpha=1.0, kl_weight=0.0)
    assert set(only_recon) == {"loss", "recon"}
    torch.testing.assert_close(only_recon["loss"], full["recon"])
    only_zinb = scvgae_loss(out, x, counts, sf, alpha=0.0, kl_weight=0.0)
    assert set(only_zinb) == {"loss", "zinb"}
    with pytest.raises(ValueError, match="counts"):
        scvgae_loss(out, x, None, sf)
    with pytest.raises(ValueError, match="alpha"):
        scvgae_loss(out, x, counts, sf, alpha=1.5)
    # masks: only the selected entries count
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[::3, ::2] = True
    masked = scvgae_loss(out, x, counts, sf, recon_mask=mask, zinb_mask=mask)
    torch.testing.assert_close(masked["recon"], ((out["recon"] - x) ** 2)[mask].mean())
    nll = zinb_nll(counts, out["mean"] * sf[:, None], out["theta"], out["pi_logits"], reduction="none")
    torch.testing.assert_close(masked["zinb"], nll[mask].mean())


def test_gnnimpute_shapes_and_size_factors(data):
    x, _, sf, ei, _ = data
    torch.manual_seed(0)
    model = GNNImputeModule(N_GENES, hidden=32, latent=8, heads=2)
    out = model(x, ei, sf)
    assert out["recon"].shape == x.shape and out["z"].shape == (N_CELLS, 8)
    assert (out["recon"] >= 0).all()
    model.eval()
    plain = model(x, ei)["recon"]
    torch.testing.assert_close(model(x, ei, sf)["recon"], plain * sf[:, None])
    torch.testing.assert_close(model(x, ei, sf[:, None])["recon"], plain * sf[:, None])
    assert model.conv1.heads == 2 and not model.conv1.concat


def test_gnnimpute_self_loops_option(data):
    x, _, sf, _, _ = data
    ei, _ = random_knn_graph(N_CELLS, k=4, self_loops=True)
    torch.manual_seed(0)
    a = GNNImputeModule(N_GENES, hidden=16, latent=4, add_self_loops=False).eval()
    torch.manual_seed(0)
    b = GNNImputeModule(N_GENES, hidden=16, latent=4, add_self_loops=True).eval()
    assert not a.conv1.add_self_loops and b.conv1.add_self_loops
    # a graph that has its self loops: GATConv(add_self_loops=True) replaces them, so both agree
    torch.testing.assert_close(a(x, ei, sf)["recon"], b(x, ei, sf)["recon"])


def test_gnnimpute_gradients_and_loss(data):
    x, _, sf, ei, _ = data
    torch.manual_seed(0)
    model = GNNImputeModule(N_GENES, hidden=32, latent=8)
    out = model(x, ei, sf)
    train = torch.zeros(N_CELLS, 1, dtype=torch.bool)
    train[:30] = True
    losses = model.loss(out, x, train)
    torch.testing.assert_close(losses["loss"], ((out["recon"] - x) ** 2)[:30].mean())
    losses["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variational", [False, True])
def test_rows_equal_slices_of_the_full_forward(data, variational):
    """``rows=`` computes the heads, decoder and add-back for a batch only: the same numbers as slicing."""
    x, _, _, ei, ew = data
    torch.manual_seed(0)
    model = small_scvgae(variational=variational, decoder_input="latent").eval()
    rows = torch.tensor([3, 0, 17, 42])
    with torch.no_grad():
        full = model(x, ei, ew)
        part = model(x, ei, ew, rows=rows)
    for key in ("recon", "mean", "pi_logits", "theta") + (("kl",) if variational else ()):
        torch.testing.assert_close(part[key], full[key][rows], rtol=1e-5, atol=1e-5)
    assert part["z"].shape[0] == N_CELLS  # the latent of every cell


def _pyg_encode(model: GNNImputeModule, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """The encoder on PyG's edge-wise ``GATConv.forward`` (the reference for the sparse-product path)."""
    h = model.dropout(torch.relu(model.bn1(model.conv1(x, edge_index))))
    return model.dropout(torch.relu(model.bn2(model.conv2(h, edge_index))))


@pytest.mark.parametrize("add_self_loops", [True, False])
@pytest.mark.parametrize("directed", [False, True])
def test_sparse_attention_matches_gatconv(data, add_self_loops, directed):
    """GNNImpute's whole-graph attention by sparse products is PyG's GATConv: same output and gradients."""
    from scvgae_sc.nn import AttentionGraph

    x, _, _, ei, _ = data
    if directed:  # a kNN graph is directed: row i attends over the sources of the edges into i
        ei = ei[:, ei[0] < ei[1]]
    if not add_self_loops:  # then the graph brings its own (as pp.cell_graph(self_loops=True) does)
        ei = torch.cat([ei, torch.arange(N_CELLS).repeat(2, 1)], dim=1)
    torch.manual_seed(0)
    model = GNNImputeModule(N_GENES, hidden=16, latent=6, heads=3, dropout=0.0, attention_dropout=0.0)
    model.conv1.add_self_loops = model.conv2.add_self_loops = add_self_loops
    with torch.no_grad():  # attention far from uniform, so a wrong edge order would show
        for conv in (model.conv1, model.conv2):
            conv.att_src.normal_(0, 1.0)
            conv.att_dst.normal_(0, 1.0)
    graph = model.attention_graph(ei, N_CELLS)
    assert isinstance(graph, AttentionGraph)
    assert graph.num_edges == ei.shape[1] + (N_CELLS if add_self_loops else 0)

    def run(fn):
        model.zero_grad()
        z = fn()
        (z * torch.linspace(-1, 1, z.numel()).view_as(z)).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return z.detach(), grads

    z_ref, g_ref = run(lambda: _pyg_encode(model, x, ei))
    for fn in (lambda: model.encode(x, graph), lambda: model.encode(x, ei)):  # prebuilt graph, or sorted per call
        z, grads = run(fn)
        torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
        assert grads.keys() == g_ref.keys()
        for k, g in grads.items():
            # the GAT biases sit right before BatchNorm: their true gradient is 0 and both paths give rounding
            # noise, so compare them on the scale of their layer's weight gradient
            ref = g_ref[k.replace("bias", "lin.weight")] if k in ("conv1.bias", "conv2.bias") else g_ref[k]
            torch.testing.assert_close(g, g_ref[k], rtol=1e-4, atol=1e-5 * max(float(ref.abs().max()), 1.0), msg=k)
    # eval mode (BatchNorm running statistics): the same prediction
    model.eval()
    with torch.no_grad():
        reference = model.decoder(_pyg_encode(model, x, ei))
        torch.testing.assert_close(model(x, graph)["recon"], reference, rtol=1e-5, atol=1e-5)


def test_sparse_attention_bf16_and_dropout(data):
    """Under bf16 autocast the aggregation stays float32 and near the float32 result; attention dropout applies
    in training (different outputs per call, seeded) and not in eval mode."""
    x, _, _, ei, _ = data
    torch.manual_seed(0)
    model = GNNImputeModule(N_GENES, hidden=16, latent=6, heads=3, dropout=0.0, attention_dropout=0.5)
    graph = model.attention_graph(ei, N_CELLS)
    model.eval()
    with torch.no_grad():
        exact = model.encode(x, graph)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            approx = model.encode(x, graph)
    assert approx.dtype == torch.float32  # BatchNorm output of the float32 aggregation
    assert float((approx - exact).norm() / exact.norm()) < 0.03
    model.train()
    torch.manual_seed(1)
    a = model.encode(x, graph)
    torch.manual_seed(1)
    b = model.encode(x, graph)
    c = model.encode(x, graph)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_attention_graph_refuses_mismatched_self_loops(data):
    from scvgae_sc.nn import AttentionGraph

    x, _, _, ei, _ = data
    model = GNNImputeModule(N_GENES, hidden=8, latent=4)
    graph = AttentionGraph(ei, N_CELLS, add_self_loops=False)
    with pytest.raises(ValueError, match="add_self_loops"):
        model.encode(x, graph)


def test_attention_graph_falls_back_for_other_gat_layouts(data):
    """A GATConv the sparse path does not cover (here one with edge features) runs on PyG's own path."""
    from torch_geometric.nn import GATConv

    x, _, _, ei, _ = data
    model = GNNImputeModule(N_GENES, hidden=8, latent=4).eval()
    assert model.attention_graph(ei, N_CELLS) is not None
    model.conv2 = GATConv(8, 4, heads=3, concat=False, edge_dim=2).eval()
    assert model.attention_graph(ei, N_CELLS) is None
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x, ei), _pyg_encode(model, x, ei))
