"""Output post-processing shared by the methods: from the network's prediction to the imputed matrix.

Every decision that depends on the ``output`` option lives here, for every data path (blocks of cells, the whole
matrix being one block; blocks of genes), so that a new output kind is added in this module only: name it in
:data:`OutputKind` and :data:`OUTPUT_KINDS` (the options accept what these list) and handle it in
:func:`finish_rows` (a block of cells) and :func:`finish_all_cells` (what needs all cells at once), the two steps of
scVGAE's prediction over either of its samplers, and in :func:`finish_blocks` (blocks of genes, GNNImpute).

``"fill"``
    Observed non-zeros are kept and zeros get the model's prediction (gated by the neighbourhood's detection rate,
    scaled by fitted weights, optionally mixed with the neighbourhood's mean detected value).
``"recon"``
    The whole reconstruction, mapped to the input layer's scale (scVGAE: optionally calibrated per gene).
``"denoised"``
    Every entry is the model's estimate of the cell's expression: the expected ``log1p``-normalized value of a new
    sample of its molecules, on the input layer's scale (:func:`finish_denoised`), from scVGAE's count model
    ``(1 − π) · M`` (by default its posterior given the cell's own counts, :func:`zinb_posterior`) or GNNImpute's
    decoder. Scored by :func:`~scvgae_sc.tl.score_denoising`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .._utils import median_positive
from ._common import FillWeightFit, Neighbourhood, column_blocks, gate_factor, gated, neighbourhood_at

#: The ``output`` option's type.
OutputKind = Literal["fill", "recon", "denoised"]
#: The output kinds, with what they are (the choices the options accept).
OUTPUT_KINDS: dict[str, str] = {
    "fill": "observed values kept, zeros replaced by the prediction",
    "recon": "the reconstruction everywhere, on the input layer's scale",
    "denoised": "every entry the model's expected log1p-normalized expression, on the input layer's scale",
}
#: Layers ``output="denoised"`` can be written to: how ``pp.normalize`` made them.
DENOISED_LAYERS = ("sqrt", "log1p", "total")


def prediction(out: dict, output: str, evidence: tuple | None = None):
    """What scVGAE's heads give for ``output`` (float32).

    For ``"denoised"`` the expected count ``(1 − π) · M`` at the median library, with ``M`` the posterior given the
    cells' own counts (:func:`zinb_posterior`) when ``evidence`` (the rows' ``(counts, size_factors)`` tensors) is
    given; the decoder's reconstruction otherwise.
    """
    import torch

    if output == "denoised":
        mean, pi_logits = out["mean"].float(), out["pi_logits"].float()
        if evidence is not None:
            mean = zinb_posterior(mean, out["theta"].float(), pi_logits, *evidence)
        return mean * torch.sigmoid(-pi_logits)
    return out["recon"].float()


def zinb_posterior(mean, theta, pi_logits, counts, size_factors):
    r"""Posterior mean of each cell's expression given its own counts, at the median library (float32 tensors).

    The count model is the prior: :math:`y \sim \pi\,\delta_0 + (1 - \pi)\,\mathrm{Poisson}(s\lambda)`,
    :math:`\lambda \sim \mathrm{Gamma}(\theta, \theta / M)` (the ZINB of the heads, ``s`` the cell's size
    factor). A detected count gives :math:`E[\lambda \mid y] = (\theta + y) / (\theta / M + s)`; a zero is a
    dropout with probability :math:`w = \pi / (\pi + (1 - \pi) p_0)` (:math:`p_0` the negative binomial's zero
    probability), which leaves the prior mean :math:`M`, and otherwise gives :math:`\theta / (\theta / M + s)`.
    Genes that vary little between similar cells (large :math:`\theta`) keep the model's mean; noisy ones follow
    the cell's own counts.
    """
    import torch

    sf = size_factors.float().reshape(-1, 1)
    mean = mean.clamp_min(1e-8)
    rate = theta / mean  # the prior's rate per unit of size factor
    detected = (theta + counts) / (rate + sf)
    log_p0 = theta * (torch.log(theta) - torch.log(theta + mean * sf))
    w = torch.sigmoid(pi_logits - log_p0)
    zero = w * mean + (1 - w) * theta / (rate + sf)
    return torch.where(counts > 0, detected, zero)


#: Dispersions :func:`nb_dispersion` chooses from (log-spaced; a gene's maximum-likelihood value on this grid).
NB_THETA_GRID = np.geomspace(0.05, 1000.0, 30)


def nb_posterior(mean, theta, counts, size_factors):
    """:func:`zinb_posterior` without dropout: a negative binomial prior of mean ``mean`` and dispersion ``theta``."""
    import torch

    no_dropout = torch.tensor(-60.0, device=mean.device)
    return zinb_posterior(mean, theta, no_dropout, counts, size_factors)


def nb_posterior_rows(prior, theta, evidence: Evidence, *, chunk: int = 512):
    """In place, ``chunk`` cells at a time: the prior means → :func:`nb_posterior` given the cells' counts.

    ``prior`` holds cells × genes means at the median library, ``evidence`` the cells' counts and size factors,
    ``theta`` the per-gene dispersion.
    """
    import torch

    th = torch.as_tensor(np.asarray(theta, dtype=np.float32), device=prior.device)
    for start in range(0, prior.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, prior.shape[0]))
        prior[start : start + chunk] = nb_posterior(
            prior[start : start + chunk], th, *evidence.rows(rows, prior.device)
        )
    return prior


def nb_dispersion(mean, evidence: Evidence, *, grid: np.ndarray = NB_THETA_GRID, chunk: int = 256) -> np.ndarray:
    r"""Per-gene negative-binomial dispersion of the cells' counts around ``mean``, by maximum likelihood on ``grid``.

    ``mean`` (cells × genes, a tensor) is the expected count at the median library; the counts of cell ``i`` are
    modelled as :math:`\mathrm{NB}(s_i \cdot \mathrm{mean}_i, \theta)` with :math:`s_i` its size factor
    (``evidence``). The log-likelihood is summed over cells ``chunk`` rows at a time (no cells × genes × grid
    array). Returns ``theta`` (float32, one per gene).
    """
    import torch

    n, n_genes = mean.shape
    grid_t = torch.as_tensor(grid, dtype=torch.float64, device=mean.device)
    total = torch.zeros((grid_t.numel(), n_genes), dtype=torch.float64, device=mean.device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        counts, sf = evidence.rows(rows, mean.device)
        y = counts.double()
        mu = (mean[start : start + chunk].double() * sf.double().unsqueeze(1)).clamp_min(1e-8)
        for j, t in enumerate(grid_t):
            ll = torch.lgamma(y + t) - torch.lgamma(t) + t * torch.log(t / (t + mu)) + y * torch.log(mu / (t + mu))
            total[j] += ll.sum(0)
    return grid[total.argmax(0).cpu().numpy()].astype(np.float32)


class Evidence:
    """Each cell's own counts and size factors, read a chunk of rows at a time for :func:`zinb_posterior`."""

    def __init__(self, counts, size_factors: np.ndarray) -> None:
        from scipy import sparse

        self.counts = sparse.csr_matrix(counts, dtype=np.float32)
        self.size_factors = np.asarray(size_factors, dtype=np.float32)

    def rows(self, rows, device) -> tuple:
        """``(counts, size_factors)`` of ``rows`` (indices) as dense float32 tensors on ``device``."""
        import torch

        idx = rows.cpu().numpy() if hasattr(rows, "cpu") else np.asarray(rows)
        counts = torch.from_numpy(self.counts[idx].toarray()).to(device)
        return counts, torch.from_numpy(self.size_factors[idx]).to(device)


def layer_values(x, transform: str):
    """The model input ``x`` on the input layer's scale (``expm1`` when the model works on ``log1p``)."""
    import torch

    return torch.expm1(x) if transform == "log1p" else x


def calibrate_genes(recon, x):
    """Per-gene least-squares line from ``recon`` to ``x`` (both ``(n_cells, n_genes)``), applied to ``recon``."""
    r_mean, x_mean = recon.mean(0), x.mean(0)
    rc = recon - r_mean
    var = rc.pow(2).mean(0)
    slope = (rc * (x - x_mean)).mean(0) / var.clamp_min(1e-12)
    return rc * slope + x_mean


def fill(
    recon,
    x,
    observed,
    *,
    transform: str,
    fill_gate: float,
    fill_scale: float,
    graph_weight: float = 0.0,
    rate=None,
    graph_mean=None,
):
    """In place on ``recon``: the ``output="fill"`` matrix on the input layer's scale.

    ``x`` / ``observed``: the input rows and their non-zeros, whose values are kept (``x=None``: none kept).
    A zero becomes ``(fill_scale · prediction + graph_weight · graph_mean) · min(1, rate / fill_gate)``, with the
    neighbourhood detection ``rate`` and ``graph_mean`` of :class:`~scvgae_sc.tl._common.Neighbourhood` (rows of
    them; each needed only when its option is on).
    """
    recon.clamp_(min=0)
    if transform == "log1p":
        recon.expm1_()
    if fill_scale != 1.0:
        recon.mul_(fill_scale)
    if graph_weight:
        recon.add_(graph_mean, alpha=graph_weight)
    if fill_gate > 0:
        recon.mul_(gate_factor(rate, fill_gate))
    if observed is not None and x is not None:
        recon[observed] = layer_values(x[observed], transform)
    return recon


def finish_rows(recon, x_rows, stats, *, output: str, transform: str, **fill_kwargs):
    """A block of cells of the imputed matrix (before :func:`finish_all_cells`), from its prediction ``recon``.

    In place for ``output="fill"`` (:func:`fill`); the other outputs are finished by :func:`finish_all_cells`.
    ``x_rows``: the block's model input; ``stats``: its ``(rate, graph_mean)``, either ``None`` when unused (tensors
    on the device of ``recon``). ``fill_kwargs``: ``fill_gate``, ``fill_scale`` and ``graph_weight``.
    """
    if output != "fill":
        return recon
    rate, graph_mean = stats
    return fill(recon, x_rows, x_rows > 0, transform=transform, rate=rate, graph_mean=graph_mean, **fill_kwargs)


def finish_all_cells(imputed, x, blocks, *, output: str, calibrate: bool, transform: str) -> None:
    """In place on the matrix of :func:`finish_rows` blocks: what needs all cells at once.

    ``output="recon"``: the per-gene calibration (:func:`calibrate_genes`, ``calibrate``), then ``≥ 0`` and, on
    ``log1p``, back to the layer's scale; ``"denoised"``: ``≥ 0``. ``imputed`` and the model input ``x`` are both
    device tensors (finished at once, float32) or both host arrays, finished in ``blocks`` of genes (calibrated in
    float64) and of cells (``blocks(n)``: a list of slices covering ``n``).
    """
    import torch

    if output == "fill":
        return
    host = isinstance(imputed, np.ndarray)
    out, x = (torch.from_numpy(a) if host else a for a in (imputed, x))
    if calibrate and output == "recon":
        for cols in blocks(out.shape[1]):
            r, xc = out[:, cols], x[:, cols]
            r.copy_(calibrate_genes(r.double(), xc.double()) if host else calibrate_genes(r, xc))
    for rows in blocks(out.shape[0]):
        block = out[rows].clamp_(min=0)
        if transform == "log1p" and output == "recon":
            block.expm1_()


def fit_fill_flat(
    recon, target, flat, graph, *, fill_gate: float, fill_hops: int, graph_fill: bool, symmetric: bool = True
) -> tuple[float, float]:
    """Fill weights ``(fill_scale, graph_weight)`` from a prediction on the input layer's scale, at flat entries.

    ``recon`` is the network's output for the input without the entries ``flat`` (flat indices of observed
    non-zeros of ``target``, the input layer); the neighbourhood statistics (a walk on the symmetrized graph with
    ``symmetric``) are computed without them too, on blocks of genes.
    """
    pred = recon.float().reshape(-1)[flat].clamp_min(0)
    graph_col = None
    if fill_gate > 0 or graph_fill:
        visible = target > 0
        visible.view(-1)[flat] = False
        hood = Neighbourhood(graph, target.device, fill_hops, symmetric=symmetric)
        rate, graph_mean = neighbourhood_at(hood, target, visible, flat, with_mean=graph_fill)
        pred = gated(pred, rate, fill_gate)
        graph_col = gated(graph_mean, rate, fill_gate) if graph_fill else None
        del visible, hood
    fit = FillWeightFit(graph_fill)
    fit.add(pred, graph_col, target.reshape(-1)[flat])
    return fit.weights()


def add_fill_rows(fit: FillWeightFit, recon, x_rows, hidden, rate, graph_col, *, transform: str, fill_gate: float):
    """Add a block of cells to a fill-weight fit: their reconstruction ``recon`` of the input with entries hidden.

    ``x_rows``: the block's model input before hiding, ``hidden`` its hidden entries, ``rate`` its neighbourhood
    detection rate and ``graph_col`` the gated neighbourhood mean at the hidden entries (:func:`gated`), both
    computed without them (``None`` when unused); tensors on one device.
    """
    pred = fill(recon, None, None, transform=transform, fill_gate=fill_gate, fill_scale=1.0, rate=rate)[hidden]
    fit.add(pred, graph_col, layer_values(x_rows[hidden], transform))


def finish_blocks(
    pred,
    target,
    graph,
    *,
    output: str,
    fill_gate: float = 0.0,
    fill_scale: float = 1.0,
    fill_hops: int = 1,
    graph_weight: float = 0.0,
    fill_symmetric: bool = False,
):
    """The imputed matrix from a prediction ``pred`` on the input layer's scale and the input layer ``target``.

    Gene block by gene block: the neighbourhood statistics never exist for the whole matrix at once.
    ``fill_symmetric``: the neighbourhood is a walk on the symmetrized, unweighted graph.
    """
    import torch

    if output != "fill":
        return pred
    imputed = pred * fill_scale
    hood = None
    if fill_gate > 0 or graph_weight:
        hood = Neighbourhood(graph, target.device, fill_hops, symmetric=fill_symmetric)
    for cols in column_blocks(*target.shape):
        t = target[:, cols]
        observed = t > 0
        values = imputed[:, cols]
        if hood is not None:
            rate, graph_mean = hood(t if graph_weight else None, observed)
            if graph_weight:
                values = values + graph_weight * graph_mean
            values = gated(values, rate, fill_gate)
        imputed[:, cols] = torch.where(observed, t, values)
    return imputed


# --------------------------------------------------------------------------------------------------
# output="denoised": from expected counts to the input layer's scale
# --------------------------------------------------------------------------------------------------

#: Poisson means below each bound are summed up to the paired count (the tail beyond is below 1e-9);
#: larger means use the moment expansion of :func:`expected_log1p`.
_SUM_TIERS = ((1.0, 14), (5.0, 30), (25.0, 75))


def expected_log1p(lam: np.ndarray) -> np.ndarray:
    r""":math:`E[\log(1 + Y)]` for :math:`Y \sim \mathrm{Poisson}(\lambda)`, elementwise (float64).

    Summed over the counts for :math:`\lambda < 25`; above, the expansion in the central moments of the Poisson
    distribution to fourth order (absolute error below 1e-4 there).
    """
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    out = np.empty_like(lam)
    low = 0.0
    for high, y_max in _SUM_TIERS:
        sel = (lam >= low) & (lam < high)
        if sel.any():
            out[sel] = _poisson_sum(lam[sel], y_max)
        low = high
    big = lam >= low
    if big.any():
        m = lam[big]
        u = 1.0 + m
        out[big] = np.log(u) - m / (2 * u**2) + m / (3 * u**3) - (m + 3 * m**2) / (4 * u**4)
    return out


def _poisson_sum(lam: np.ndarray, y_max: int) -> np.ndarray:
    """``sum_y P(Y = y) log(1 + y)`` for ``y = 1 … y_max`` (the term ``y = 0`` is zero).

    The probabilities by the recurrence ``P(y) = P(y - 1) · λ / y`` from ``P(0) = exp(-λ)``: one exponential per
    entry instead of one per term (``λ < 25`` here, so ``P(0)`` does not underflow).
    """
    p = np.exp(-lam)
    total = np.zeros_like(lam)
    for y in range(1, y_max + 1):
        p *= lam
        p *= 1.0 / y
        total += p * np.log1p(y)
    return total


def denoise_scale(counts, normalization: str | None, *, source: str) -> dict:
    """How :func:`finish_denoised` maps a model's prediction to the input layer (saved with the model).

    Parameters
    ----------
    counts
        The training counts (cells × genes); per-cell factors are kept for ``"sqrt"`` layers only, whose rows are
        scaled cell by cell.
    normalization
        How ``pp.normalize`` made the input layer: ``"sqrt"``, ``"log1p"`` or ``"total"``.
    source
        ``"counts"``: the prediction is an expected count at the median library (scVGAE's count model);
        ``"layer"``: it is a least-squares fit of the input layer (GNNImpute's decoder): a mean on a ``total``
        layer, mapped like expected counts; already the expected value on a ``log1p`` or ``sqrt`` layer, kept.
    """
    if normalization not in DENOISED_LAYERS:
        raise ValueError(
            "output='denoised' needs an input layer written by scvgae_sc.pp.normalize (method 'sqrt', 'log1p' or "
            f"'total'), whose normalization it reproduces; this layer's is {normalization!r}. Normalize the counts "
            "with pp.normalize and impute that layer, or use output='recon'."
        )
    scale: dict = {"kind": normalization, "source": source}
    if normalization == "sqrt":
        from scipy import sparse

        C = sparse.csr_matrix(counts, dtype=np.float64)
        lib = np.asarray(C.sum(axis=1)).ravel()
        C.data = np.log1p(C.data)
        log_lib = np.asarray(C.sum(axis=1)).ravel()
        scale["depth"] = (lib / median_positive(lib)).tolist()
        scale["log_depth"] = (log_lib / median_positive(log_lib)).tolist()
    return scale


def finish_denoised(imputed: np.ndarray, scale: dict, *, chunk: int = 1024) -> None:
    r"""In place, ``chunk`` rows at a time: ``output="denoised"`` on the input layer's scale.

    The output is the expected ``log1p``-normalized expression of a new sample of the cell's molecules, written on
    the input layer's scale. From an expected count :math:`\mu` at the median library (scVGAE's count model, or a
    least-squares fit of a ``total`` layer) it is :math:`E[\log(1 + Y)]`, :math:`Y \sim \mathrm{Poisson}(\mu)`, on
    a ``log1p`` layer and its ``expm1`` on a ``total`` layer; on a ``sqrt`` layer the count is drawn at the cell's
    own library and :math:`E[\log(1 + Y)]` is scaled as the layer scaled that cell's :math:`\log(1 + C)` row. A
    least-squares fit of a ``log1p`` or ``sqrt`` layer (GNNImpute's decoder) already estimates that expectation
    and is kept. This is what :func:`~scvgae_sc.tl.score_denoising` scores; :math:`\log(1 + \mu)` would
    overstate every entry of few molecules.
    """
    kind = scale["kind"]
    depth = np.asarray(scale.get("depth", []), dtype=np.float64)
    log_depth = np.asarray(scale.get("log_depth", []), dtype=np.float64)
    for start in range(0, imputed.shape[0], chunk):
        rows = slice(start, start + chunk)
        v = np.maximum(imputed[rows].astype(np.float64), 0.0)
        if scale["source"] == "counts" or kind == "total":  # a mean: take it to the expected log value
            if kind == "sqrt":
                v = np.sqrt(expected_log1p(v * depth[rows, None]) / np.maximum(log_depth[rows, None], 1e-12))
            else:
                v = expected_log1p(v)
                v = np.expm1(v) if kind == "total" else v
        imputed[rows] = v  # (a fit of a log1p or sqrt layer already estimates its expected value)
