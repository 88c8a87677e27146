"""Count likelihoods (negative binomial, zero-inflated negative binomial) and masked reductions.

Stable, log-space formulations in the style of scvi-tools' ``log_zinb_positive`` /
``log_nb_positive`` (``scvi.distributions._negative_binomial``), written for *negative*
log-likelihoods with a choice of reduction.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["masked_mean", "nb_nll", "reduce", "zinb_nll"]

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
