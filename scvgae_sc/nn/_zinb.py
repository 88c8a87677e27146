"""Count likelihoods (negative binomial, zero-inflated negative binomial) and masked reductions.

Stable, log-space formulations in the style of scvi-tools' ``log_zinb_positive`` /
``log_nb_positive`` (``scvi.distributions._negative_binomial``), written for *negative*
log-likelihoods with a choice of reduction.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["masked_mean", "nb_nll", "reduce", "squared_errors", "zinb_nll", "zinb_nll_heads"]

Reduction = Literal["mean", "sum", "none"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` over the entries selected by ``mask``.

    Parameters
    ----------
    values
        Any tensor.
    mask
        ``None`` (plain mean), a boolean tensor or a non-negative float weight tensor broadcastable to
        ``values`` — e.g. ``(n_cells, n_genes)`` for entry masks or ``(n_cells, 1)`` for a subset of cells.
        Entries outside a boolean mask never contribute, even when they are not finite.

    Returns
    -------
    A scalar tensor. An empty mask gives ``0`` (still attached to the graph).
    """
    if mask is None:
        return values.mean()
    mask = mask.to(values.device)
    if mask.dtype == torch.bool:
        mask = mask.expand_as(values)
        total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
        count = mask.sum()
    else:
        weight = mask.to(values.dtype).expand_as(values)
        total = (values * weight).sum()
        count = weight.sum()
    return total / count.clamp_min(1e-12).to(values.dtype)


def reduce(values: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Apply ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``) to ``values``."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _nb_log_terms(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log NB(0 | mu, theta), log NB(x | mu, theta))``, both elementwise.

    ``theta · log(theta / (theta + mu))`` is computed as ``-theta · log1p(mu / theta)``, which stays accurate
    when ``theta ≫ mu`` (the Poisson limit) where the difference of two logarithms loses every digit.
    """
    theta_eps = theta + eps
    log_theta_mu_eps = torch.log(theta_eps + mu)
    # log NB(0) = theta * log(theta / (theta + mu))
    log_nb_zero = -theta * torch.log1p(mu / theta_eps)
    log_nb = (
        log_nb_zero
        + x * (torch.log(mu + eps) - log_theta_mu_eps)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )
    return log_nb_zero, log_nb


def nb_nll(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    eps: float = 1e-8,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Negative log-likelihood of a negative binomial with mean ``mu`` and inverse dispersion ``theta``.

    ``Var = mu + mu² / theta``; in scipy's terms ``nbinom(n=theta, p=theta / (theta + mu))``.

    Parameters
    ----------
    x
        Observed counts (non-negative; need not be integers for the gradient, but the likelihood is that of
        integer counts).
    mu
        Mean, positive, broadcastable to ``x``.
    theta
        Inverse dispersion, positive, broadcastable to ``x``.
    eps
        Numerical stabilizer added inside logarithms.
    reduction
        ``"mean"`` (over all entries), ``"sum"`` or ``"none"`` (elementwise).

    Returns
    -------
    The reduced negative log-likelihood.
    """
    _, log_nb = _nb_log_terms(x, mu, theta, eps)
    return reduce(-log_nb, reduction)


def zinb_nll(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    pi_logits: torch.Tensor,
    eps: float = 1e-8,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Negative log-likelihood of a zero-inflated negative binomial.

    ``P(x) = pi · [x = 0] + (1 - pi) · NB(x | mu, theta)`` with ``pi = sigmoid(pi_logits)``. Computed in log
    space as scvi-tools does: ``log(1 - pi) = -softplus(pi_logits)``, and for zeros
    ``log(pi + (1 - pi) NB(0)) = softplus(-pi_logits + log NB(0)) - softplus(-pi_logits)`` — no probability is
    ever formed, so extreme logits and dispersions stay finite.

    Parameters
    ----------
    x
        Observed counts.
    mu
        NB mean (for raw counts: size factor × normalized mean), positive.
    theta
        Inverse dispersion, positive.
    pi_logits
        Logits of the zero-inflation (dropout) probability.
    eps
        Numerical stabilizer added inside logarithms.
    reduction
        ``"mean"`` (over all entries), ``"sum"`` or ``"none"`` (elementwise).

    Returns
    -------
    The reduced negative log-likelihood.
    """
    x, mu, theta, pi_logits = torch.broadcast_tensors(x, mu, theta, pi_logits)
    softplus_neg = F.softplus(-pi_logits)  # -log(pi)
    # log NB(0) = theta * log(theta / (theta + mu)), see _nb_log_terms
    log_nb_zero = -theta * torch.log1p(mu / (theta + eps))
    log_lik = F.softplus(log_nb_zero - pi_logits) - softplus_neg  # log(pi + (1 - pi) NB(0)), right for zeros
    # The lgamma terms are needed only where x > 0: count data are mostly zeros, so compute them on the
    # non-zero entries alone (gathered by flat index, found once) and scatter them back; same values, a
    # fraction of the work.
    idx = torch.nonzero(x.reshape(-1) >= eps).squeeze(1)

    def take(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1).index_select(0, idx)

    _, log_nb = _nb_log_terms(take(x), take(mu), take(theta), eps)
    log_nonzero = log_nb - take(pi_logits) - take(softplus_neg)  # log(1 - pi) + log NB(x)
    log_lik = log_lik.reshape(-1).index_put((idx,), log_nonzero).reshape(log_lik.shape)
    return reduce(-log_lik, reduction)


def _pass_on(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """A gradient stored by a fused forward pass, scaled by ``grad_output``.

    Itself, without a copy, when ``grad_output`` is 1 (the fused term enters the total loss as a plain summand).
    """
    if grad_output.numel() == 1 and float(grad_output) == 1.0:
        return grad
    return grad * grad_output


class _FusedZINB(torch.autograd.Function):
    """Mean ZINB NLL of ``counts`` from the raw head output, with its gradient computed in the forward pass.

    See :func:`zinb_nll_heads`. The gradient has a closed form in the log-parameters, so the forward pass
    computes it alongside the loss, mostly in place (about half the full-size elementwise passes of autograd
    through :func:`zinb_nll`, and one saved tensor instead of about ten); the backward pass only scales it.
    """

    @staticmethod
    def forward(ctx, heads, counts, log_sf, log_clamp, weight):  # noqa: D102
        n, width = heads.shape
        g = width // 3
        c = log_clamp
        log_mean, pi_logits, log_theta = heads.split(g, dim=1)
        grad = torch.empty_like(heads)
        g_mean, g_pi, g_theta = grad.split(g, dim=1)

        # count data are mostly zeros: the lgamma / digamma terms are computed at the non-zeros only
        nz = torch.nonzero(counts > 0)
        flat = nz[:, 0] * g + nz[:, 1]  # flat positions in (n, n_genes) tensors
        flat3 = nz[:, 0] * width + nz[:, 1]  # ... in (n, 3 · n_genes) ones (+ g, + 2g for the 2nd, 3rd block)
        del nz

        def at(t):
            return t.reshape(-1).index_select(0, flat)

        x = at(counts)
        pi_nz = heads.reshape(-1).index_select(0, flat3 + g)

        log_mu = log_mean.clamp(-c, c)
        if log_sf is not None:
            log_mu = log_mu.add_(log_sf)
        log_th = log_theta.clamp(-c, c)
        theta = log_th.exp()
        q = log_mu.exp().div_(theta)  # mu / theta
        l1 = torch.log1p(q)  # log(1 + mu / theta)
        th_nz = at(theta)
        log_r_nz = at(log_mu).sub_(at(log_th)).sub_(at(l1))  # log r, r = mu / (theta + mu)
        del log_mu, log_th
        w = q.add_(1.0).reciprocal_()  # 1 - r = theta / (theta + mu)
        w_nz = at(w)
        lnb0 = l1.mul_(theta).neg_()  # log NB(0) = -theta · log1p(mu / theta)
        a = theta.sub_(w.mul_(theta))  # theta · r
        del w, q, l1, theta

        u = lnb0 - pi_logits  # log NB(0) - logit(pi)
        spn = F.softplus(-pi_logits)  # -log(pi)
        ll = F.softplus(u).sub_(spn)  # log(pi + (1 - pi) NB(0)): right at the zeros
        # log(1 - pi) + log NB(x) at the non-zeros
        ll_nz = at(lnb0).add_(x * log_r_nz).sub_(pi_nz).sub_(at(spn))
        ll_nz += torch.lgamma(x + th_nz) - torch.lgamma(th_nz) - torch.lgamma(x + 1.0)
        total = ll.reshape(-1).index_copy_(0, flat, ll_nz).sum()
        del ll, ll_nz, log_r_nz, pi_nz
        n_entries = max(n * g, 1)
        if not ctx.needs_input_grad[0]:  # e.g. under torch.no_grad(): the loss only
            return total * (-weight / n_entries)

        # derivatives of the log-likelihood in (log mean, logit pi, log theta). At the zeros, with
        # s = sigmoid(log NB(0) - logit pi): (-s · theta · r, sigmoid(-pi) - s, s · (log NB(0) + theta · r)).
        # At the non-zeros the same with s = 1, plus x · (1 - r) for the mean and
        # theta · (digamma(x + theta) - digamma(theta)) - x · (1 - r) for the dispersion.
        s = u.sigmoid_()
        s.reshape(-1).index_fill_(0, flat, 1.0)
        torch.sub(spn.neg_().expm1_().neg_(), s, out=g_pi)  # sigmoid(-pi) = 1 - exp(-softplus(-pi))
        torch.mul(a, s, out=g_mean).neg_()
        torch.mul(lnb0.add_(a), s, out=g_theta)
        del s, spn, a, lnb0
        xw = x * w_nz
        flat_grad = grad.view(-1)
        flat_grad.index_add_(0, flat3, xw)
        xw.neg_().add_(th_nz * (torch.digamma(x + th_nz) - torch.digamma(th_nz)))
        flat_grad.index_add_(0, flat3 + 2 * g, xw)
        # no gradient where the clamp was active (checked with one min / max pass; rarely the case)
        for raw, g_raw in ((log_mean, g_mean), (log_theta, g_theta)):
            lo, hi = torch.aminmax(raw)
            if lo < -c or hi > c:
                g_raw.masked_fill_(raw.abs() > c, 0.0)
        grad.mul_(-weight / n_entries)
        ctx.save_for_backward(grad)
        return total * (-weight / n_entries)

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return _pass_on(grad, grad_output), None, None, None, None


def zinb_nll_heads(
    heads: torch.Tensor,
    counts: torch.Tensor,
    size_factors: torch.Tensor | None = None,
    log_clamp: float = 15.0,
    weight: float = 1.0,
) -> torch.Tensor:
    """Mean ZINB negative log-likelihood from raw head outputs, fused (one saved tensor, analytic gradient).

    The same function as ``zinb_nll(counts, sf · exp(clamp(L_mean)), exp(clamp(L_theta)), Pi)`` with
    ``reduction="mean"`` (up to its ``eps`` stabilizers), where ``heads = [L_mean | Pi | L_theta]`` is the
    ``(n, 3 · n_genes)`` output of :class:`~scvgae_sc.nn.SCVGAE`'s head layer and ``clamp`` bounds the
    log-mean and log-dispersion to ``[-log_clamp, log_clamp]`` (no gradient outside, as :func:`torch.clamp`).
    The log-likelihood's derivatives in the log-parameters have a closed form (digamma at the non-zero counts
    only), so the forward pass computes them with the loss and the backward pass scales them: far fewer
    passes over the ``n × n_genes`` entries than autograd through :func:`zinb_nll`.

    Parameters
    ----------
    heads
        ``(n, 3 · n_genes)`` float tensor: log of the normalized mean, dropout logits, log of the inverse
        dispersion, side by side.
    counts
        ``(n, n_genes)`` observed counts (no gradient).
    size_factors
        ``(n,)`` or ``(n, 1)`` positive per-cell size factors multiplying the mean; ``None`` means 1.
    log_clamp
        Bound on the log-mean and log-dispersion.
    weight
        Factor on the result. A loss that enters an objective as ``weight · NLL`` is best computed here with
        its weight: then the backward pass hands the stored gradient on without another ``n × 3 · n_genes``
        tensor.

    Returns
    -------
    A scalar tensor: ``weight`` times the NLL averaged over all ``n × n_genes`` entries.
    """
    if heads.dim() != 2 or heads.shape[1] % 3 or counts.shape != (heads.shape[0], heads.shape[1] // 3):
        raise ValueError(
            f"heads must be (n, 3 · n_genes) and counts (n, n_genes); got {tuple(heads.shape)} and "
            f"{tuple(counts.shape)}."
        )
    dtype = heads.dtype if heads.dtype == torch.float64 else torch.float32
    log_sf = None
    if size_factors is not None:
        sf = size_factors.to(dtype).reshape(-1, 1)
        log_sf = sf.clamp_min(torch.finfo(dtype).tiny).log()
    return _FusedZINB.apply(
        heads.to(dtype).contiguous(), counts.to(dtype).contiguous(), log_sf, float(log_clamp), float(weight)
    )


class _FusedSquaredErrors(torch.autograd.Function):
    """``w_all · mean(d²) + w_sub · mean over the entries of ``subset`` of d²`` for ``d = pred - target``.

    See :func:`squared_errors`. One ``(n, n_genes)`` tensor (``d``, turned into the gradient in place) instead of
    the half dozen autograd needs for two masked means.
    """

    @staticmethod
    def forward(ctx, pred, target, subset, w_all, w_sub):  # noqa: D102
        d = pred - target
        flat = d.view(-1)
        n_all = max(flat.numel(), 1)
        mean_all = torch.dot(flat, flat) / n_all
        total = mean_all * w_all
        if subset is not None:
            idx = torch.nonzero(subset.reshape(-1)).squeeze(1)
            d_sub = flat.index_select(0, idx)
            n_sub = max(int(idx.numel()), 1)
            mean_sub = torch.dot(d_sub, d_sub) / n_sub
            total = total + mean_sub * w_sub
        else:
            mean_sub = torch.zeros((), dtype=d.dtype, device=d.device)
        flat.mul_(2.0 * w_all / n_all)
        if subset is not None and w_sub:
            flat.index_add_(0, idx, d_sub, alpha=2.0 * w_sub / n_sub)
        ctx.save_for_backward(d)
        ctx.mark_non_differentiable(mean_all, mean_sub)
        return total, mean_all, mean_sub

    @staticmethod
    def backward(ctx, grad_output, _g_all, _g_sub):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return _pass_on(grad, grad_output), None, None, None, None


def squared_errors(
    pred: torch.Tensor,
    target: torch.Tensor,
    subset: torch.Tensor | None = None,
    *,
    weight: float = 1.0,
    subset_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted sum of two mean squared errors sharing one difference, fused.

    ``weight · mean((pred - target)²) + subset_weight · mean over subset((pred - target)²)`` — e.g. the
    reconstruction error over all entries and over the entries hidden from the input. The same function as two
    :func:`masked_mean` calls, with a closed-form gradient kept in one ``pred``-sized tensor (the backward pass
    hands it on without a copy when the result is a plain term of the total loss).

    Parameters
    ----------
    pred, target
        Same-shape float tensors; ``target`` gets no gradient.
    subset
        Boolean tensor of ``pred``'s shape selecting the entries of the second mean, or ``None`` (no second term).
        An empty subset contributes 0.
    weight, subset_weight
        The two weights.

    Returns
    -------
    ``(total, mean_all, mean_subset)``: the weighted sum (differentiable) and the two unweighted means
    (detached; ``mean_subset`` is 0 without a subset).
    """
    if pred.shape != target.shape or (subset is not None and subset.shape != pred.shape):
        raise ValueError(
            f"pred, target and subset must have one shape; got {tuple(pred.shape)}, {tuple(target.shape)}"
            + (f", {tuple(subset.shape)}." if subset is not None else ".")
        )
    if subset is not None and subset.dtype != torch.bool:
        raise TypeError(f"subset must be a boolean tensor, got {subset.dtype}.")
    dtype = pred.dtype if pred.dtype == torch.float64 else torch.float32
    return _FusedSquaredErrors.apply(
        pred.to(dtype).contiguous(), target.to(dtype).contiguous(), subset, float(weight), float(subset_weight)
    )
