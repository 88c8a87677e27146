"""The fused loss functions and the fused add-back equal their unfused definitions, values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from scvgae_sc.nn import SCVGAE, masked_mean, scvgae_loss, squared_errors, zinb_nll, zinb_nll_heads

N, G = 40, 25


def _zinb_case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    heads = torch.randn(N, 3 * G, generator=g, dtype=dtype) * 3
    heads[0, 0], heads[1, 2 * G + 1], heads[2, G + 3] = 20.0, -20.0, 40.0  # beyond the clamp, and an extreme logit
    heads[3, 2 * G + 5] = 14.0  # near-Poisson dispersion
    counts = torch.poisson(torch.rand(N, G, generator=g, dtype=dtype) * 6)
    counts *= torch.rand(N, G, generator=g, dtype=dtype) < 0.5
    counts[4, 4], counts[0, 0] = 900.0, 0.0  # a large count; a zero under a clamped mean
    sf = torch.rand(N, generator=g, dtype=dtype) + 0.3
    return heads, counts, sf


def _zinb_reference(heads, counts, sf, clamp=15.0):
    lm, pi, lt = heads.split(G, dim=1)
    eps = 1e-300 if heads.dtype == torch.float64 else 1e-8
    mean = torch.exp(lm.clamp(-clamp, clamp)) * sf[:, None]
    return zinb_nll(counts, mean, torch.exp(lt.clamp(-clamp, clamp)), pi, eps=eps)


@pytest.mark.parametrize("weight", [1.0, 0.95])
def test_zinb_nll_heads_matches_zinb_nll(weight):
    heads, counts, sf = _zinb_case(torch.float64)
    h_ref = heads.clone().requires_grad_()
    h_fused = heads.clone().requires_grad_()
    ref = weight * _zinb_reference(h_ref, counts, sf)
    ref.backward()
    fused = zinb_nll_heads(h_fused, counts, sf, weight=weight)
    fused.backward()
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_fused.grad, h_ref.grad, rtol=1e-10, atol=1e-12)
    # no gradient where the clamp holds the log-mean / log-dispersion, but the dropout logit has one
    assert h_fused.grad[0, 0] == 0 and h_fused.grad[1, 2 * G + 1] == 0 and h_fused.grad[2, G + 3] != 0


def test_zinb_nll_heads_float32_and_scaled_backward():
    heads, counts, sf = _zinb_case(torch.float32, seed=1)
    h_truth = heads.double().requires_grad_()
    (3.0 * _zinb_reference(h_truth, counts.double(), sf.double())).backward()
    h_ref = heads.clone().requires_grad_()
    h_fused = heads.clone().requires_grad_()
    (3.0 * _zinb_reference(h_ref, counts, sf)).backward()
    (3.0 * zinb_nll_heads(h_fused, counts, sf)).backward()  # grad_output 3: the copying backward path
    truth = h_truth.grad.float()
    err_fused = (h_fused.grad - truth).abs().max()
    err_ref = (h_ref.grad - truth).abs().max()
    # float32 cancellation in the dispersion gradient at large theta limits both the same way (measured, 1 and 2
    # threads: fused 1e-6 to 1e-5, autograd through zinb_nll 2e-6 to 3e-5, against a largest gradient of 0.48)
    scale = truth.abs().max()
    assert err_fused < 1e-4 * scale and err_ref < 1e-4 * scale
    # without size factors and with another clamp
    ref = _zinb_reference(heads, counts, torch.ones(N), clamp=4.0)
    torch.testing.assert_close(zinb_nll_heads(heads, counts, None, log_clamp=4.0), ref, rtol=1e-5, atol=1e-6)


def test_zinb_nll_heads_gradcheck():
    g = torch.Generator().manual_seed(2)
    heads = torch.randn(5, 3 * 4, generator=g, dtype=torch.float64, requires_grad=True)
    counts = torch.poisson(torch.rand(5, 4, generator=g, dtype=torch.float64) * 4)
    sf = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda h: 0.7 * zinb_nll_heads(h, counts, sf), (heads,))


def test_zinb_nll_heads_bad_shapes():
    with pytest.raises(ValueError, match="3 · n_genes"):
        zinb_nll_heads(torch.zeros(4, 10), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="3 · n_genes"):
        zinb_nll_heads(torch.zeros(4, 9), torch.zeros(4, 4))


@pytest.mark.parametrize("with_subset", [True, False])
def test_squared_errors_matches_masked_means(with_subset):
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(N, G, generator=g, dtype=torch.float64)
    target = torch.randn(N, G, generator=g, dtype=torch.float64)
    subset = torch.rand(N, G, generator=g) < 0.1 if with_subset else None
    p_ref = pred.clone().requires_grad_()
    p_fused = pred.clone().requires_grad_()
    se = (p_ref - target).pow(2)
    ref_all, ref_sub = masked_mean(se), masked_mean(se, subset) if with_subset else torch.zeros(())
    (0.05 * ref_all + 2.0 * ref_sub).backward()
    total, mean_all, mean_sub = squared_errors(p_fused, target, subset, weight=0.05, subset_weight=2.0)
    total.backward()
    torch.testing.assert_close(mean_all, ref_all.detach())
    torch.testing.assert_close(mean_sub, ref_sub.detach().to(mean_sub.dtype))
    torch.testing.assert_close(total, (0.05 * ref_all + 2.0 * ref_sub).detach())
    torch.testing.assert_close(p_fused.grad, p_ref.grad)
    assert not mean_all.requires_grad and not mean_sub.requires_grad


def test_squared_errors_edge_cases():
    pred = torch.randn(4, 3, requires_grad=True)
    target = torch.randn(4, 3)
    total, mean_all, mean_sub = squared_errors(pred, target, torch.zeros(4, 3, dtype=torch.bool), subset_weight=5.0)
    assert mean_sub == 0  # an empty subset contributes nothing
    torch.testing.assert_close(total, mean_all)
    (2.0 * total).backward()  # grad_output 2
    torch.testing.assert_close(pred.grad, 4.0 * (pred - target).detach() / 12)
    with pytest.raises(TypeError, match="boolean"):
        squared_errors(pred, target, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="one shape"):
        squared_errors(pred, target[:2])


def _reference_add_back(model, recon, x, cell_index):
    """The add-back written out with the modules' own layers (BatchNorm1d over genes, per-cell standardization)."""
    xf = x.float()
    mean = xf.mean(dim=1, keepdim=True)
    var = xf.var(dim=1, unbiased=False, keepdim=True)
    cell = (xf - mean) * torch.rsqrt(var + 1e-5) * model.cell_scale(cell_index) + model.cell_shift(cell_index)
    return recon + model.gene_norm(xf) + cell


@pytest.mark.parametrize("training", [True, False])
def test_add_back_matches_batchnorm(training):
    g = torch.Generator().manual_seed(4)
    model = SCVGAE(G, N, hidden=8, decoder_hidden=16)
    with torch.no_grad():
        model.gene_norm.weight.uniform_(0.5, 1.5, generator=g)
        model.gene_norm.bias.normal_(generator=g)
        model.gene_norm.running_mean.normal_(generator=g)
        model.gene_norm.running_var.uniform_(0.5, 2.0, generator=g)
        model.cell_scale.weight.uniform_(0.5, 1.5, generator=g)
        model.cell_shift.weight.normal_(generator=g)
    ref_model = copy.deepcopy(model)
    model.train(training)
    ref_model.train(training)
    rows = torch.tensor([0, 3, 5, 8, 13, 21, 34])
    x = torch.rand(len(rows), G, generator=g) * 3
    recon = torch.randn(len(rows), G, generator=g)
    r1, r2 = recon.clone().requires_grad_(), recon.clone().requires_grad_()
    out = model._add_back(r1, x, rows)
    ref = _reference_add_back(ref_model, r2, x, rows)
    torch.testing.assert_close(out, ref)
    weights = torch.randn(out.shape, generator=g)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(r1.grad, r2.grad)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters(), strict=True):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(model.gene_norm, name), getattr(ref_model.gene_norm, name), msg=name)


def test_scvgae_loss_fused_equals_unfused():
    """The default (fused) objective equals the masked-mean formulation, gradients included."""
    g = torch.Generator().manual_seed(5)
    counts = torch.poisson(torch.rand(N, G, generator=g) * 4)
    sf = counts.sum(1) / counts.sum(1).median()
    x = torch.sqrt(torch.log1p(counts))
    src = torch.arange(N).repeat_interleave(2)
    dst = torch.cat([(torch.arange(N) + 1) % N, (torch.arange(N) + 2) % N])
    ei = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    hidden = (counts > 0) & (torch.rand(N, G, generator=g) < 0.2)
    torch.manual_seed(0)
    model = SCVGAE(G, N, hidden=8, decoder_hidden=16, decoder_input="latent")
    ref_model = copy.deepcopy(model)
    grads, losses = [], []
    for m, fused in ((model, True), (ref_model, False)):
        torch.manual_seed(1)  # the same dropout masks
        out = m(x, ei)
        all_entries = torch.ones(N, G, dtype=torch.bool)
        masks = {} if fused else {"recon_mask": all_entries, "zinb_mask": all_entries}
        comps = scvgae_loss(out, x, counts, sf, alpha=0.3, hidden=hidden, hidden_weight=0.5, **masks)
        comps["loss"].backward()
        losses.append({k: v.item() for k, v in comps.items()})
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert losses[0].keys() == losses[1].keys() == {"loss", "recon", "zinb", "masked"}
    for k in losses[0]:
        assert losses[0][k] == pytest.approx(losses[1][k], rel=1e-5), k
    for k in grads[1]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-7, msg=k)


def test_zinb_nll_heads_without_gradient():
    """Under no_grad (or for a tensor that needs none) only the loss is computed, and it is the same."""
    heads, counts, sf = _zinb_case(torch.float32, seed=6)
    with_grad = zinb_nll_heads(heads.clone().requires_grad_(), counts, sf)
    with torch.no_grad():
        plain = zinb_nll_heads(heads, counts, sf)
    assert not plain.requires_grad
    torch.testing.assert_close(plain, with_grad.detach())
