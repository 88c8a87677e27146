from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse
from scipy.special import expit

from .._constants import CELL_TYPE
from .._utils import params_for_uns, seed_everything

__all__ = ["simulate"]

#: Splatter's defaults for the gamma distribution of gene base means (``mean.shape``, ``mean.rate``).
_MEAN_SHAPE = 0.6
_MEAN_RATE = 0.3
#: Degrees of freedom of the per-gene scaled inverse chi-square on the BCV (Splatter's ``bcv.df``).
_BCV_DF = 60.0
#: Entries per row chunk of the generation loop (~4 M: a few tens of MB of temporaries).
_CHUNK_ENTRIES = 1 << 22
#: Non-zero entries drawn to solve the dropout midpoint.
_MID_SAMPLE = 200_000


def _check_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def _check_real(
    value: object, name: str, *, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r}).")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value:g}.")
    return value


def _solve_dropout_mid(log_mu: np.ndarray, target: float, shape: float) -> float:
    """Midpoint ``m`` with ``mean(expit(shape · (log_mu − m))) = target``, by bisection.

    With ``shape < 0`` the mean increases with ``m`` from 0 to 1.
    """
    width = 40.0 / abs(shape)
    lo, hi = float(log_mu.min()) - width, float(log_mu.max()) + width
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if expit(shape * (log_mu - mid)).mean() < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-9:
            break
    return 0.5 * (lo + hi)


def _sample_counts(rng, library, proportions, groups, gene_bcv, bcv: float):
    """True means and counts (gamma-Poisson with the genes' BCV), in row chunks."""
    n_cells, n_genes = len(groups), proportions.shape[1]
    true_mean = np.empty((n_cells, n_genes), dtype=np.float32)
    gamma_shape = (1.0 / gene_bcv**2).astype(np.float32) if bcv > 0 else None
    gamma_scale = (gene_bcv**2).astype(np.float32) if bcv > 0 else None
    chunk = max(1, _CHUNK_ENTRIES // n_genes)
    blocks = []
    for a in range(0, n_cells, chunk):
        b = min(a + chunk, n_cells)
        mu = np.multiply(library[a:b, None], proportions[groups[a:b]], out=true_mean[a:b])
        if gamma_shape is None:
            rate = mu
        else:
            rate = rng.standard_gamma(gamma_shape, size=mu.shape, dtype=np.float32)
            rate *= mu
            rate *= gamma_scale
        counts = rng.poisson(rate)
        blocks.append(sparse.csr_matrix(counts, dtype=np.float32))
        del rate, counts
    true_counts = sparse.vstack(blocks, format="csr", dtype=np.float32)
    del blocks
    true_counts.sort_indices()
    return true_mean, true_counts


def _drop_out(rng, true_counts, true_mean, dropout: float, dropout_shape: float):
    """``(X, mid, observed)``: the counts after dropout, the logistic's midpoint and the fraction dropped."""
    mid = None
    X = true_counts.copy()
    nnz = true_counts.nnz
    if dropout > 0 and nnz:
        idx = np.arange(nnz) if nnz <= _MID_SAMPLE else rng.integers(0, nnz, size=_MID_SAMPLE)
        rows = np.searchsorted(true_counts.indptr, idx, side="right") - 1
        log_mu = np.log(true_mean[rows, true_counts.indices[idx]].astype(np.float64))
        mid = _solve_dropout_mid(log_mu, dropout, dropout_shape)
        del idx, rows, log_mu
        for a in range(0, nnz, _CHUNK_ENTRIES):
            b = min(a + _CHUNK_ENTRIES, nnz)
            rows = np.searchsorted(true_counts.indptr, np.arange(a, b), side="right") - 1
            log_mu = np.log(true_mean[rows, true_counts.indices[a:b]])
            p_drop = expit(dropout_shape * (log_mu - np.float32(mid)))
            X.data[a:b][rng.random(b - a, dtype=np.float32) < p_drop] = 0
        X.eliminate_zeros()
    elif dropout > 0:
        logg.warning("all true counts are zero; there is nothing to drop out.")
    observed = 1.0 - X.nnz / nnz if nnz else 0.0
    return X, mid, observed


def simulate(
    n_cells: int = 2000,
    n_genes: int = 2000,
    n_groups: int = 5,
    *,
    dropout: float = 0.3,
    de_prob: float = 0.1,
    de_down_prob: float = 0.5,
    de_loc: float = 0.1,
    de_scale: float = 1.0,
    library_size: float = 1500.0,
    library_scale: float = 0.3,
    bcv: float = 0.2,
    dropout_shape: float = -1.0,
    random_state: int | None = 0,
) -> AnnData:
    """Simulate UMI counts with cell groups, known true means and dropout (Splatter-style).

    Follows the model of Splatter (Zappia et al., 2017):

    1. Gene base means ``λ_j ~ Gamma(0.6, rate 0.3)`` (Splatter's defaults).
    2. Cells are split into ``n_groups`` groups of (almost) equal size, in random order. For each
       group, a fraction ``de_prob`` of the genes is differentially expressed with a factor
       ``f ~ LogNormal(de_loc, de_scale)``, inverted (``1 / f``) for a fraction ``de_down_prob``
       of them; other factors are 1.
    3. Each cell draws a library size ``L_i = library_size · s_i`` with
       ``s_i ~ LogNormal(0, library_scale)``; its true mean is
       ``μ_ij = L_i · λ_j f_gj / Σ_k λ_k f_gk``, so the expected total of a cell is ``L_i``.
    4. True counts are negative binomial as a gamma–Poisson mixture,
       ``Y_ij ~ Poisson(Gamma(1 / φ_j², scale μ_ij φ_j²))``, with the biological coefficient of
       variation ``φ_j = bcv · sqrt(60 / χ²_60)`` drawn per gene (Splatter's ``bcv.df = 60``;
       unlike Splatter, no extra ``1 / sqrt(μ)`` term is added, so ``var = μ + φ_j² μ²``).
    5. Dropout: each non-zero true count is set to zero with probability
       ``π_ij = 1 / (1 + exp(−dropout_shape · (log μ_ij − m)))``, a logistic in ``log μ`` as in
       Splatter (lowly expressed entries drop more). The midpoint ``m`` is solved by bisection so
       that the expected fraction of non-zero true counts that drop equals ``dropout`` (on a
       sample of 200,000 non-zero entries when there are more).

    The matrix is generated in row chunks of float32, so apart from the outputs only a few tens
    of MB of temporaries are held: 100,000 × 2,000 takes well under a minute.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes.
    n_groups
        Number of cell groups (types); at most ``n_cells``. Every group has at least one cell.
    dropout
        Fraction of the non-zero true counts that become zero, in ``[0, 1)``; 0 means no dropout
        (``X`` equals the true counts).
    de_prob
        Fraction of genes differentially expressed in each group.
    de_down_prob
        Fraction of the differentially expressed genes that are down-regulated.
    de_loc, de_scale
        Location and scale (of the log) of the log-normal differential-expression factors.
    library_size
        Median expected total count per cell.
    library_scale
        Standard deviation of the log library size.
    bcv
        Biological coefficient of variation (the NB dispersion is its square); 0 gives Poisson.
    dropout_shape
        Slope of the dropout logistic in ``log μ``; negative (Splatter's default −1).
    random_state
        Seed of the random numbers (same seed, same data); ``None`` for a fresh draw.

    Returns
    -------
    An :class:`~anndata.AnnData` of ``n_cells`` × ``n_genes`` (cells ``"cell1"``, ..., genes
    ``"gene1"``, ...) with

    ``X``
        The observed counts (after dropout), :class:`scipy.sparse.csr_matrix` of float32.
    ``layers["true_counts"]``
        The counts before dropout, CSR float32; ``X <= true_counts`` entrywise.
    ``layers["true_mean"]``
        The true means ``μ``, a dense float32 array: ``n_cells · n_genes · 4`` bytes
        (800 MB for 100,000 × 2,000).
    ``obs["cell_type"]``
        The group, categorical ``"group1"``, ..., ``"group{n_groups}"``.
    ``obs["size_factor"]``
        ``s_i = L_i / library_size``: the row sum of ``true_mean`` is ``library_size · s_i``.
    ``var["base_mean"]``, ``var["bcv"]``, ``var["de_factor_group1"]``, ...
        The gene base means ``λ_j``, the per-gene BCV ``φ_j`` and the DE factors of each group.
    ``uns["simulate"]``
        The parameters, plus ``dropout_mid`` (the solved midpoint ``m``, when ``dropout > 0``)
        and ``dropout_observed`` (the fraction of non-zero true counts that dropped).

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.simulate(1000, 500, n_groups=3, dropout=0.4)
    >>> adata.obs["cell_type"].cat.categories.tolist()
    ['group1', 'group2', 'group3']
    """
    n_cells = _check_int(n_cells, "n_cells")
    n_genes = _check_int(n_genes, "n_genes")
    n_groups = _check_int(n_groups, "n_groups")
    if n_groups > n_cells:
        raise ValueError(f"n_groups ({n_groups}) must not exceed n_cells ({n_cells}): each group needs a cell.")
    dropout = _check_real(dropout, "dropout", low=0.0, high=1.0, high_open=True)
    de_prob = _check_real(de_prob, "de_prob", low=0.0, high=1.0)
    de_down_prob = _check_real(de_down_prob, "de_down_prob", low=0.0, high=1.0)
    de_loc = _check_real(de_loc, "de_loc", low=-math.inf)
    de_scale = _check_real(de_scale, "de_scale", low=0.0)
    library_size = _check_real(library_size, "library_size", low=0.0, low_open=True)
    library_scale = _check_real(library_scale, "library_scale", low=0.0)
    bcv = _check_real(bcv, "bcv", low=0.0)
    dropout_shape = _check_real(dropout_shape, "dropout_shape", low=-math.inf, high=0.0, high_open=True)
    rng = seed_everything(random_state)

    start = logg.info(f"simulating {n_cells} cells × {n_genes} genes in {n_groups} groups")
    group_names = [f"group{k + 1}" for k in range(n_groups)]

    # genes: base means, per-group DE factors, per-gene BCV
    base_mean = rng.gamma(_MEAN_SHAPE, 1.0 / _MEAN_RATE, size=n_genes)
    is_de = rng.random((n_groups, n_genes)) < de_prob
    is_down = rng.random((n_groups, n_genes)) < de_down_prob
    log_fac = rng.normal(de_loc, de_scale, size=(n_groups, n_genes))
    de_factor = np.where(is_de, np.exp(np.where(is_down, -log_fac, log_fac)), 1.0)
    group_mean = base_mean[None, :] * de_factor
    proportions = (group_mean / group_mean.sum(axis=1, keepdims=True)).astype(np.float32)
    gene_bcv = bcv * np.sqrt(_BCV_DF / rng.chisquare(_BCV_DF, size=n_genes))

    # cells: balanced groups in random order, log-normal library sizes
    groups = rng.permutation(np.arange(n_cells) % n_groups)
    size_factor = rng.lognormal(0.0, library_scale, size=n_cells)
    library = (library_size * size_factor).astype(np.float32)

    true_mean, true_counts = _sample_counts(rng, library, proportions, groups, gene_bcv, bcv)
    X, mid, observed = _drop_out(rng, true_counts, true_mean, dropout, dropout_shape)

    obs = pd.DataFrame(index=pd.Index([f"cell{i + 1}" for i in range(n_cells)]))
    obs[CELL_TYPE] = pd.Categorical.from_codes(groups, categories=group_names)
    obs["size_factor"] = size_factor
    var = pd.DataFrame(index=pd.Index([f"gene{j + 1}" for j in range(n_genes)]))
    var["base_mean"] = base_mean
    var["bcv"] = gene_bcv
    for k, name in enumerate(group_names):
        var[f"de_factor_{name}"] = de_factor[k]

    adata = AnnData(X=X, obs=obs, var=var, layers={"true_counts": true_counts, "true_mean": true_mean})
    adata.uns["simulate"] = params_for_uns(
        {
            "n_cells": n_cells,
            "n_genes": n_genes,
            "n_groups": n_groups,
            "dropout": dropout,
            "de_prob": de_prob,
            "de_down_prob": de_down_prob,
            "de_loc": de_loc,
            "de_scale": de_scale,
            "library_size": library_size,
            "library_scale": library_scale,
            "bcv": bcv,
            "bcv_df": _BCV_DF,
            "mean_shape": _MEAN_SHAPE,
            "mean_rate": _MEAN_RATE,
            "dropout_shape": dropout_shape,
            "dropout_mid": mid,
            "dropout_observed": observed,
            "random_state": random_state,
        }
    )
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"{true_counts.nnz / (n_cells * n_genes):.1%} of true counts non-zero, {observed:.1%} of them dropped; "
            "added 'true_counts', 'true_mean' (adata.layers), 'simulate' (adata.uns)"
        ),
    )
    return adata
