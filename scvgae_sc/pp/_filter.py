from __future__ import annotations

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from .._utils import check_adata, check_nonnegative, uns_entry


def _nonzero_per_axis(X, axis: int) -> np.ndarray:
    if sparse.issparse(X):
        X = sparse.csr_matrix(X) if axis == 1 else sparse.csc_matrix(X)
        X = X.copy()
        X.eliminate_zeros()
        return np.diff(X.indptr)
    return np.count_nonzero(np.asarray(X), axis=axis)


def filter(  # noqa: A001 - the public name, as scanpy's pp functions
    adata: AnnData,
    *,
    min_cell_fraction: float = 0.05,
    min_gene_fraction: float = 0.05,
    copy: bool = False,
) -> AnnData | None:
    """Filter genes and cells by how often they are detected, as the scVGAE paper does.

    Keeps genes that are non-zero in more than ``int(min_cell_fraction * n_cells)`` cells and cells
    that are non-zero in more than ``int(min_gene_fraction * n_genes)`` genes. Unlike calling
    :func:`scanpy.pp.filter_genes` then :func:`scanpy.pp.filter_cells`, both masks are computed on
    the *unfiltered* matrix (the paper's semantics: pbmc3k 2638 × 13714 → 2024 × 3857).

    Like ``sc.pp.filter_*`` this subsets the AnnData (its shape changes); values are not touched.
    Run it on raw counts in ``X``, before :func:`scvgae_sc.pp.normalize`.

    Parameters
    ----------
    adata
        Annotated data matrix with counts (or any non-negative expression) in ``X``.
    min_cell_fraction
        A gene is kept if it is detected in more than this fraction of cells.
    min_gene_fraction
        A cell is kept if it detects more than this fraction of genes.
    copy
        Return a filtered copy instead of subsetting ``adata`` in place.

    Returns
    -------
    Returns `None` if `copy=False`, else a new :class:`~anndata.AnnData`. Subsets ``adata`` to the kept
    cells and genes and records the thresholds and counts in
    ``adata.uns['scvgae_sc']['filter']``.

    Examples
    --------
    >>> import scvgae_sc as sv
    >>> adata = sv.datasets.pbmc68k()
    >>> sv.pp.filter(adata)
    """
    check_adata(adata, inplace=not copy)
    for name, value in (("min_cell_fraction", min_cell_fraction), ("min_gene_fraction", min_gene_fraction)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}.")
    X = adata.X
    if X is None:
        raise ValueError("adata.X is None; put the raw counts in X before filtering.")
    check_nonnegative(X, "adata.X")

    start = logg.info("filtering cells and genes by detection rate")
    n_cells, n_genes = adata.shape
    min_cells = int(min_cell_fraction * n_cells)
    min_genes = int(min_gene_fraction * n_genes)
    gene_mask = _nonzero_per_axis(X, axis=0) > min_cells
    cell_mask = _nonzero_per_axis(X, axis=1) > min_genes
    if not gene_mask.any() or not cell_mask.any():
        raise ValueError(
            f"Filtering would remove every {'gene' if not gene_mask.any() else 'cell'} "
            f"(genes need > {min_cells} expressing cells, cells need > {min_genes} detected genes). "
            "Lower min_cell_fraction / min_gene_fraction, or check that X holds counts."
        )

    if copy:
        adata = adata[cell_mask, gene_mask].copy()
    else:
        adata._inplace_subset_obs(cell_mask)
        adata._inplace_subset_var(gene_mask)
    uns_entry(adata, "filter").update(
        {
            "min_cell_fraction": float(min_cell_fraction),
            "min_gene_fraction": float(min_gene_fraction),
            "min_cells": min_cells,
            "min_genes": min_genes,
            "n_obs_before": n_cells,
            "n_vars_before": n_genes,
        }
    )
    logg.info(
        f"    finished: kept {int(cell_mask.sum())} of {n_cells} cells and {int(gene_mask.sum())} of {n_genes} genes",
        time=start,
    )
    return adata if copy else None
